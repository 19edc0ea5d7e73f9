"""Backward rules: how a backward signal crosses one op.

A rule is a callable ``rule(op, inputs, outputs, upstream) -> downstream`` (lists of tensors, one
per op input / output). The engine (:mod:`pattern_keras.engine`) calls it for every op in
reverse order. Rules are small and composable; an analyzer is a choice of rule per op kind
(see :class:`Composite`).

Conventions: ``upstream`` is shaped like the op's outputs, ``downstream`` like its inputs. For a
linear op, ``outputs[0]`` is the pre-activation ``z = Wᵀx + b`` (bias included), since fused
activations are separate ops.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

from pattern_keras.layers import KINDS, Op

__all__ = [
    "vjp",
    "GradientRule",
    "LinearRule",
    "ActivationRule",
    "ZRule",
    "Composite",
]


def vjp(fn: Callable[[Sequence[Any]], Sequence[Any]], inputs: Sequence[Any],
        upstream: Sequence[Any]) -> list[Any]:
    """Vector-Jacobian product of ``fn`` at ``inputs`` with ``upstream``.

    Inside a ``tf.function`` the recomputed forward ops that the product does not need are
    pruned, and identical ones are shared with the forward pass, so this costs what the
    gradient costs.
    """
    inputs = list(inputs)
    with tf.GradientTape() as tape:
        for x in inputs:
            tape.watch(x)
        outputs = fn(inputs)
    return tape.gradient(list(outputs), inputs, output_gradients=list(upstream),
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)


class GradientRule:
    """The op's own vector-Jacobian product: what the gradient does.

    Parameters
    ----------
    held : bool
        Differentiate the op's ``held`` forward pass where it has one (LayerNormalization with
        its normalizing scale held constant: a linear map), as the pattern methods do.
    """

    def __init__(self, held: bool = False) -> None:
        self.held = bool(held)

    def __call__(self, op: Op, inputs, outputs, upstream):
        forward = op.held if (self.held and op.held is not None) else op.forward
        return vjp(forward, inputs, upstream)

    def __repr__(self) -> str:
        return "GradientRule(held=True)" if self.held else "GradientRule()"


class LinearRule:
    """Backward through a linear op with a chosen kernel: ``x ← K g``.

    Parameters
    ----------
    kernel : callable, optional
        ``kernel(op, z) -> list of (kernel tensor, mask or None)``. The signal crosses the op as
        ``Σ_i VJP_x[apply(x, K_i)](g ⊙ mask_i)``. Default: the layer's own kernel ``W``
        (the gradient). The pattern rules pass ``A`` or ``W ⊙ A``, split by regime where a layer
        keeps both.
    """

    def __init__(self, kernel: Callable[[Op, Any], list[tuple[Any, Any]]] | None = None,
                 name: str = "W") -> None:
        self.kernel = kernel
        self.name = name

    def __call__(self, op: Op, inputs, outputs, upstream):
        if op.kind != "linear":
            return vjp(op.forward, inputs, upstream)
        part = op.linear
        g = upstream[0]
        if self.kernel is None:
            kernels = [(part.kernel, None)]
        else:
            kernels = self.kernel(op, outputs[0])
        total = None
        for k, mask in kernels:
            gi = g if mask is None else g * mask
            (dx,) = vjp(lambda xs, k=k: [part.apply(xs[0], k)], inputs, [gi])
            total = dx if total is None else total + dx
        return [total]

    def __repr__(self) -> str:
        return f"LinearRule({self.name})"


class ActivationRule:
    """Backward through an activation: the rule table of the README.

    Three classes of activation op: ReLU (and ReLU6), the *gating* activations
    ``f(z) = z·g(z)`` (``op.gate`` gives ``g(z)``: leaky ReLU, PReLU, ELU, SELU, swish, hard
    swish, GELU, tanh, and a Multiply by a gate, whose second input is the gate), and the other
    activations (sigmoid, softplus, hard sigmoid). A linear activation always passes the signal.

    Parameters
    ----------
    mode : {"gate", "rectify", "gate_rectify", "pass", "pattern"}
        ``"gate"``: the exact derivative for every activation, through a gate's branch too (the
        product rule): the gradient family.
        ``"rectify"``: ReLU and gating activations pass ``max(g, 0)`` whatever the forward pass,
        nothing into a gate's branch; other activations their derivative (DeConvNet).
        ``"gate_rectify"``: ReLU gates by its own derivative, a gating activation multiplies by
        ``g(z)``, then only positive signals pass, nothing into a gate's branch; other
        activations their derivative (Guided BackProp).
        ``"pass"``: pass the signal unchanged, nothing into a gate's branch (LRP: relevance
        crosses an activation as it is).
        ``"pattern"``: ReLU gates by its own derivative (the forward gate), a gating activation
        multiplies by ``g(z)``, nothing into a gate's branch; other activations their
        derivative (PatternNet, PatternAttribution).
    """

    MODES = ("gate", "rectify", "gate_rectify", "pass", "pattern")

    def __init__(self, mode: str = "gate") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}.")
        self.mode = mode

    def __call__(self, op: Op, inputs, outputs, upstream):
        g = upstream[0]
        if op.kind != "activation":
            return vjp(op.forward, inputs, upstream)
        # Signals into a gate's branch (the second input of a product): none, except for the
        # gradient family, which differentiates the product.
        rest = [None] * (len(inputs) - 1)
        if op.activation == "linear" or self.mode == "pass":
            return [g] + rest
        if self.mode == "gate":
            return vjp(op.forward, inputs, upstream)
        relu = op.activation == "relu"
        gating = op.gate is not None
        if self.mode == "rectify" and (relu or gating):
            return [tf.nn.relu(g)] + rest
        if self.mode == "gate_rectify" and relu:
            return vjp(op.forward, inputs, [tf.nn.relu(g)])
        if self.mode in ("gate_rectify", "pattern") and gating:
            gated = g * tf.cast(op.gate(inputs), g.dtype)
            return [tf.nn.relu(gated) if self.mode == "gate_rectify" else gated] + rest
        return vjp(op.forward, inputs, upstream)

    def __repr__(self) -> str:
        return f"ActivationRule({self.mode!r})"


class ZRule:
    """LRP's z- and ε-rule on any op that is a sum of contributions.

    Relevance ``R`` at the outputs flows back as ``R_i = x_i · Σ_j ∂z_j/∂x_i · R_j / (z_j + ε·sign(z_j))``:
    for a linear layer ``x ⊙ (W (R / z))``, for Add and average pooling the share of each
    summand, for BatchNormalization the ε-rule on ``γ/σ·x + β'``. ``z`` includes the bias.
    With ``epsilon == 0`` a zero ``z`` passes no relevance (instead of a division by zero).

    Parameters
    ----------
    epsilon : float
        Stabilizer; ``sign(0) = +1``.
    """

    def __init__(self, epsilon: float = 0.0) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
        self.epsilon = float(epsilon)

    def __call__(self, op: Op, inputs, outputs, upstream):
        ratios = []
        for z, r in zip(outputs, upstream):
            if self.epsilon == 0.0:
                ratios.append(tf.math.divide_no_nan(r, z))
            else:
                # ε·sign(z) with sign(0) = +1, as one select of two scalars: fewer passes over
                # the (large) tensor than building a ±1 sign tensor and scaling it.
                eps = tf.constant(self.epsilon, z.dtype)
                ratios.append(r / (z + tf.where(z >= 0, eps, -eps)))
        # LayerNormalization: its normalizing scale held constant, a linear map (Ali et al. 2022).
        forward = op.held if op.held is not None else op.forward
        contributions = vjp(forward, inputs, ratios)
        return [x * c for x, c in zip(inputs, contributions)]

    def __repr__(self) -> str:
        return f"ZRule(epsilon={self.epsilon})"


class Composite:
    """A choice of rule per op kind: what an analyzer is.

    Parameters
    ----------
    rules : mapping
        ``{kind: rule}`` for kinds among ``"linear"``, ``"affine"``, ``"activation"``,
        ``"max_pool"``, ``"sum"``, ``"move"``. Kinds left out use :class:`GradientRule`.
    """

    def __init__(self, rules: Mapping[str, Any]) -> None:
        unknown = set(rules) - set(KINDS)
        if unknown:
            raise ValueError(f"Unknown op kinds {sorted(unknown)}; known: {KINDS}.")
        self.rules = dict(rules)
        self._default = GradientRule()

    def __call__(self, op: Op):
        return self.rules.get(op.kind, self._default)

    def __repr__(self) -> str:
        return f"Composite({self.rules})"


# ----------------------------------------------------------------------------------------------
# Rules that split contributions by sign: LRP-αβ, z⁺ and the bounded (zᴮ) rule of deep Taylor
# decomposition. They apply to linear ops only (``op.kind == "linear"``); an analyzer maps the
# other kinds to other rules (see :mod:`pattern_keras.analyzers.lrp`).

__all__ += ["AlphaBetaRule", "BoundedRule"]


def _signed_parts(t: Any) -> tuple[Any, Any]:
    """``(max(t, 0), min(t, 0))``."""
    return tf.maximum(t, 0.0), tf.minimum(t, 0.0)


def _input_vjp(op: Op, x: Any, kernel: Any, upstream: Any) -> Any:
    """``VJP_x[apply(x, kernel)](upstream)``: the transposed linear map, bias excluded."""
    (dx,) = vjp(lambda xs: [op.linear.apply(xs[0], kernel)], [x], [upstream])
    return dx


def _require_linear(op: Op, rule: Any) -> None:
    if op.kind != "linear":
        raise TypeError(f"{rule!r} applies to linear ops only; op '{op.key}' is of kind "
                        f"{op.kind!r}. Map other kinds to another rule in the Composite.")


class AlphaBetaRule:
    """LRP-αβ (Bach et al. 2015) on a linear op; with ``alpha=1, beta=0, bias=False`` the z⁺ rule.

    With contributions ``z_ij = x_i w_ij`` split by sign, ``z_j⁺ = Σ_i (z_ij)₊ (+ b_j⁺)`` and
    ``z_j⁻ = Σ_i (z_ij)₋ (+ b_j⁻)``, relevance flows back as

        ``R_i = Σ_j (α · (z_ij)₊ / z_j⁺ − β · (z_ij)₋ / z_j⁻) · R_j``.

    The positive contributions are ``x⁺ w⁺ + x⁻ w⁻`` (so inputs of either sign are handled), and
    each term is one transposed linear map: ``R⁺ = x⁺ ⊙ Wᵀ⁺(R/z⁺) + x⁻ ⊙ Wᵀ⁻(R/z⁺)``. A zero
    ``z_j⁺`` (no positive contribution) passes nothing through its term instead of dividing by
    zero. With ``α − β = 1`` relevance is conserved wherever both ``z_j⁺`` and ``z_j⁻`` are
    non-zero and the biases take no share (``bias=False``, or bias-free layers).

    Parameters
    ----------
    alpha, beta : float
        Weights of the positive and negative contributions, ``α − β = 1`` (checked by the
        analyzers, not here, so the rule can be studied with other values).
    bias : bool
        Count the bias as a contribution (``b⁺`` to ``z⁺``, ``b⁻`` to ``z⁻``; it absorbs its
        share of relevance), as iNNvestigate's ``Alpha1Beta0Rule``/``Alpha2Beta1Rule`` do.
        ``False`` ignores it (the z⁺ rule, iNNvestigate's ``ZPlusRule``).
    nonnegative_input : callable, optional
        ``nonnegative_input(op) -> bool``: the op's input is known to be ``≥ 0`` (it comes from a
        ReLU), so the ``x⁻`` terms are skipped (they are zero): half the work.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, bias: bool = True,
                 nonnegative_input: Callable[[Op], bool] | None = None) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}.")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.bias = bool(bias)
        self.nonnegative_input = nonnegative_input

    def __call__(self, op: Op, inputs, outputs, upstream):
        _require_linear(op, self)
        part = op.linear
        x, r = inputs[0], upstream[0]
        kernel = tf.cast(part.kernel, x.dtype)
        w_pos, w_neg = _signed_parts(kernel)
        nonnegative = self.nonnegative_input is not None and self.nonnegative_input(op)
        x_pos, x_neg = (x, None) if nonnegative else _signed_parts(x)
        bias = None
        if self.bias and part.bias_fn is not None:
            bias = part.to_output(tf.cast(part.bias, r.dtype), len(r.shape))

        def share(k_for_pos, k_for_neg, bias_part):
            """Relevance through one sign regime: ``Σ_j z_ij^± / z_j^± · R_j``."""
            z = part.apply(x_pos, k_for_pos)
            if x_neg is not None:
                z = z + part.apply(x_neg, k_for_neg)
            if bias_part is not None:
                z = z + bias_part
            s = tf.math.divide_no_nan(r, z)
            rel = x_pos * _input_vjp(op, x_pos, k_for_pos, s)
            if x_neg is not None:
                rel = rel + x_neg * _input_vjp(op, x_neg, k_for_neg, s)
            return rel

        relevance = self.alpha * share(w_pos, w_neg,
                                       None if bias is None else tf.maximum(bias, 0.0))
        if self.beta != 0.0:
            relevance = relevance - self.beta * share(
                w_neg, w_pos, None if bias is None else tf.minimum(bias, 0.0))
        return [relevance]

    def __repr__(self) -> str:
        return f"AlphaBetaRule(alpha={self.alpha:g}, beta={self.beta:g}, bias={self.bias})"


class BoundedRule:
    """The zᴮ rule of deep Taylor decomposition (Montavon et al. 2017) for inputs in a box.

    For inputs known to lie in ``[low, high]`` (pixels, say), each neuron's root point is searched
    inside the box, which gives

        ``R_i = Σ_j z_ij / Σ_i' z_i'j · R_j``  with  ``z_ij = x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻``.

    The bias is not a contribution. For ``x`` inside the box every term is ``≥ 0``, so non-negative
    relevance stays non-negative and is conserved where the denominator is non-zero (a zero one
    passes nothing).

    Parameters
    ----------
    low, high : callable
        ``low(op)``, ``high(op)``: the bounds of the op's input, tensors broadcastable to it.
    """

    def __init__(self, low: Callable[[Op], Any], high: Callable[[Op], Any]) -> None:
        self.low = low
        self.high = high

    def __call__(self, op: Op, inputs, outputs, upstream):
        _require_linear(op, self)
        part = op.linear
        x, r = inputs[0], upstream[0]
        low = tf.broadcast_to(tf.cast(self.low(op), x.dtype), tf.shape(x))
        high = tf.broadcast_to(tf.cast(self.high(op), x.dtype), tf.shape(x))
        kernel = tf.cast(part.kernel, x.dtype)
        w_pos, w_neg = _signed_parts(kernel)
        z = part.apply(x, kernel) - part.apply(low, w_pos) - part.apply(high, w_neg)
        s = tf.math.divide_no_nan(r, z)
        relevance = (x * _input_vjp(op, x, kernel, s) - low * _input_vjp(op, low, w_pos, s)
                     - high * _input_vjp(op, high, w_neg, s))
        return [relevance]

    def __repr__(self) -> str:
        return "BoundedRule()"
