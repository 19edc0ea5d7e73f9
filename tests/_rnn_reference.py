"""Float64 numpy references for recurrent layers: forward step by step, and the backward passes
of LRP (Arras et al. 2017's ``lrp_linear`` with ``bias_factor = 0``), Guided BackProp and
DeConvNet, written from the rule table without the library's engine.

Each cell is written out as Keras computes it, and each backward pass as the README's rule
table says a gated product, an activation, a sum and a linear map are crossed:

=============  ==============================  ======================  ====================
method         gated product ``s ⊙ gate``      tanh                    sum / linear map
=============  ==============================  ======================  ====================
LRP (z, ε)     all to ``s`` (signal-take-all)  passes                  ``lrp_linear``
Guided BP      ``max(g·gate, 0)``              ``max(g·tanh(z)/z, 0)``  gradient
DeConvNet      ``max(g, 0)``                   ``max(g, 0)``           gradient
PatternNet     ``g·gate``                      ``g·tanh(z)/z``         passes / ``A₊``, ``A₋``
=============  ==============================  ======================  ====================

PatternNet's kernels are given by shape (``patterns = {kernel shape: (A₊, A₋)}``): ``A₊`` where
the linear map's output ``z > 0``, ``A₋`` elsewhere.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lrp_linear(hin, w, b, hout, rout, bias_nb_units, eps, bias_factor=0.0):
    """Arras et al.'s reference ``lrp_linear`` (LRP_for_LSTM), batched over the first axis:
    ``hin (n, D)``, ``w (D, M)``, ``b (M,)``, ``hout (n, M)``, ``rout (n, M)``."""
    sign_out = np.where(hout >= 0, 1.0, -1.0)[:, None, :]
    numer = (
        w[None] * hin[:, :, None]
        + bias_factor * (b[None, None, :] * 1.0 + eps * sign_out * 1.0) / bias_nb_units
    )
    denom = hout[:, None, :] + eps * sign_out * 1.0
    message = numer / denom * rout[:, None, :]
    return message.sum(axis=2)


def _identity_sum(parts, total, r, eps):
    """The z/ε-rule at a sum of elementwise parts: ``lrp_linear(part, I, 0, total, R)``."""
    sign = np.where(total >= 0, 1.0, -1.0)
    return [p * r / (total + eps * sign) for p in parts]


class Rules:
    """How one method crosses the cell's ops (see the module docstring)."""

    def __init__(self, method: str, eps: float = 0.0, patterns=None) -> None:
        self.method = method
        self.eps = eps
        self.patterns = patterns or {}

    def product(self, g, gate):
        if self.method == "lrp":
            return g
        if self.method == "guided":
            return np.maximum(g * gate, 0.0)
        if self.method == "pattern":
            return g * gate
        return np.maximum(g, 0.0)

    def tanh(self, g, z):
        if self.method == "lrp":
            return g
        ratio = np.where(z == 0, 1.0, np.tanh(z) / np.where(z == 0, 1.0, z))
        if self.method == "guided":
            return np.maximum(g * ratio, 0.0)
        if self.method == "pattern":
            return g * ratio
        return np.maximum(g, 0.0)

    def linear_activation(self, g, z):
        return g

    def sum(self, parts, total, g):
        if self.method == "lrp":
            return _identity_sum(parts, total, g, self.eps)
        return [g for _ in parts]

    def linear(self, x, w, b, z, g):
        if self.method == "lrp":
            return lrp_linear(x, w, b, z, g, x.shape[1], self.eps)
        if self.method == "pattern":
            a_pos, a_neg = self.patterns[w.shape]
            positive = z > 0
            return np.where(positive, g, 0.0) @ a_pos.T + np.where(positive, 0.0, g) @ a_neg.T
        return g @ w.T


def simple_rnn_forward(x, kernel, recurrent, bias, activation, h0=None):
    n, steps, _ = x.shape
    units = recurrent.shape[0]
    h = np.zeros((n, units)) if h0 is None else h0
    record = []
    for t in range(steps):
        xh = np.concatenate([x[:, t], h], axis=1)
        z = xh @ np.concatenate([kernel, recurrent]) + bias
        h_new = np.tanh(z) if activation == "tanh" else z
        record.append(dict(xh=xh, z=z, h=h))
        h = h_new
    return h, record


def simple_rnn_backward(rules, record, kernel, recurrent, bias, activation, g_h):
    """Signals at every step's input ``(n, steps, features)`` and at ``h0``."""
    features = kernel.shape[0]
    w = np.concatenate([kernel, recurrent])
    out = []
    for step in reversed(record):
        g_z = rules.tanh(g_h, step["z"]) if activation == "tanh" else g_h
        g_xh = rules.linear(step["xh"], w, bias, step["z"], g_z)
        out.append(g_xh[:, :features])
        g_h = g_xh[:, features:]
    return np.stack(out[::-1], axis=1), g_h


def lstm_forward(x, kernel, recurrent, bias, h0=None, c0=None, mask=None):
    """``mask (n, steps)``: a masked step keeps the states (Keras's semantics)."""
    n, steps, _ = x.shape
    u = recurrent.shape[0]
    h = np.zeros((n, u)) if h0 is None else h0
    c = np.zeros((n, u)) if c0 is None else c0
    record = []
    for t in range(steps):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, zg, o = (z[:, k * u : (k + 1) * u] for k in range(4))
        i, f, o = sigmoid(i), sigmoid(f), sigmoid(o)
        g = np.tanh(zg)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        record.append(dict(x=x[:, t], h=h, c=c, i=i, f=f, o=o, zg=zg, g=g, c_new=c_new))
        if mask is not None:
            keep = mask[:, t : t + 1]
            h_new, c_new = np.where(keep, h_new, h), np.where(keep, c_new, c)
        h, c = h_new, c_new
    return h, c, record


def lstm_backward(rules, record, kernel, recurrent, bias, g_h, g_c=None):
    """Arras et al.'s LSTM backward (LRP_for_LSTM ``lrp()``), generalized to any rule set:
    ``h = o ⊙ tanh(c)``, ``c = f ⊙ c' + i ⊙ g``, ``g = tanh([x; h'] [W_c; U_c] + b_c)``."""
    u = recurrent.shape[0]
    features = kernel.shape[0]
    w = np.concatenate([kernel[:, 2 * u : 3 * u], recurrent[:, 2 * u : 3 * u]])
    b = bias[2 * u : 3 * u]
    g_c = np.zeros_like(g_h) if g_c is None else g_c
    out = []
    for s in reversed(record):
        g_c = g_c + rules.tanh(rules.product(g_h, s["o"]), s["c_new"])
        r_fc, r_ig = rules.sum([s["f"] * s["c"], s["i"] * s["g"]], s["c_new"], g_c)
        g_c_prev = rules.product(r_fc, s["f"])
        g_g = rules.product(r_ig, s["i"])
        g_zg = rules.tanh(g_g, s["zg"])
        xh = np.concatenate([s["x"], s["h"]], axis=1)
        g_xh = rules.linear(xh, w, b, s["zg"], g_zg)
        out.append(g_xh[:, :features])
        g_h, g_c = g_xh[:, features:], g_c_prev
    return np.stack(out[::-1], axis=1), g_h, g_c


def gru_forward(x, kernel, recurrent, bias, reset_after, h0=None):
    n, steps, _ = x.shape
    u = recurrent.shape[0]
    h = np.zeros((n, u)) if h0 is None else h0
    if reset_after:
        b_x, b_h = bias
    else:
        b_x, b_h = bias, np.zeros(3 * u)
    record = []
    for t in range(steps):
        xt = x[:, t]
        mx = xt @ kernel + b_x
        if reset_after:
            mh = h @ recurrent + b_h
        else:
            mh = h @ recurrent[:, : 2 * u]
        z = sigmoid(mx[:, :u] + mh[:, :u])
        r = sigmoid(mx[:, u : 2 * u] + mh[:, u : 2 * u])
        if reset_after:
            a = mx[:, 2 * u :]
            uh = mh[:, 2 * u :]
            m = r * uh
            pre = a + m
            step = dict(x=xt, h=h, z=z, r=r, a=a, uh=uh, m=m, pre=pre)
        else:
            rh = r * h
            pre = xt @ kernel[:, 2 * u :] + rh @ recurrent[:, 2 * u :] + b_x[2 * u :]
            step = dict(x=xt, h=h, z=z, r=r, rh=rh, pre=pre)
        hh = np.tanh(pre)
        h_new = z * h + (1.0 - z) * hh
        step.update(hh=hh, h_new=h_new)
        record.append(step)
        h = h_new
    return h, record


def gru_backward(rules, record, kernel, recurrent, bias, reset_after, g_h):
    """The GRU by the same rules: ``h = z ⊙ h' + (1 − z) ⊙ ĥ`` (a sum of two gated
    products), ``ĥ = tanh(pre)``; ``pre = (x W_h + b_xh) + r ⊙ (h' U_h + b_hh)`` (a sum,
    a gated product and two linear maps) with ``reset_after``, else
    ``pre = [x; r ⊙ h'] [W_h; U_h] + b_h`` (one linear map of the stacked input)."""
    u = recurrent.shape[0]
    features = kernel.shape[0]
    out = []
    for s in reversed(record):
        r_kept, r_new = rules.sum([s["z"] * s["h"], (1.0 - s["z"]) * s["hh"]], s["h_new"], g_h)
        g_prev = rules.product(r_kept, s["z"])
        g_pre = rules.tanh(rules.product(r_new, 1.0 - s["z"]), s["pre"])
        if reset_after:
            b_x, b_h = bias
            r_a, r_m = rules.sum([s["a"], s["m"]], s["pre"], g_pre)
            g_x = rules.linear(s["x"], kernel[:, 2 * u :], b_x[2 * u :], s["a"], r_a)
            g_uh = rules.product(r_m, s["r"])
            g_prev = g_prev + rules.linear(
                s["h"], recurrent[:, 2 * u :], b_h[2 * u :], s["uh"], g_uh
            )
        else:
            w = np.concatenate([kernel[:, 2 * u :], recurrent[:, 2 * u :]])
            xrh = np.concatenate([s["x"], s["rh"]], axis=1)
            g_xrh = rules.linear(xrh, w, bias[2 * u :], s["pre"], g_pre)
            g_x = g_xrh[:, :features]
            g_prev = g_prev + rules.product(g_xrh[:, features:], s["r"])
        out.append(g_x)
        g_h = g_prev
    return np.stack(out[::-1], axis=1), g_h


def dense_backward(rules, h, kernel, bias, index):
    """The head ``y = h W + b`` seeded with the selected logit's value ``y`` (LRP, Guided BP,
    DeConvNet): ``(y, signal at h)``."""
    z = h @ kernel + bias
    n = len(h)
    seed = np.zeros_like(z)
    seed[np.arange(n), index] = z[np.arange(n), index]
    return z, rules.linear(h, kernel, bias, z, seed)
