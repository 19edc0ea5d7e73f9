"""LRP-z and LRP-ε in ratio form (``rules.RatioZRule``) against relevance form and float64.

:class:`~pattern_keras.LRPZ` and :class:`~pattern_keras.LRPEpsilon` carry ``s = R / x`` backward
and multiply by the input once. Here they are compared with the relevance-form rules
(``rules.ZRule``: ``R_in = x ⊙ VJP(R / stab(z))`` at every op, on the same program) on models
with every op kind the rules meet, with exact zeros where they matter (an exact cancellation
``z = 0`` feeding a sum: without the ``[z ≠ 0]`` mask relevance would leak back through it), and
with a float64 numpy reference of LRP-ε on BatchNormalization folded into the preceding Dense
layer (the canonization LRP-z/ε now use; it moves where ε enters, tested to be visible).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, assert_close
from conftest import randomize_batch_norm as _randomize_batch_norm

import pattern_keras as pk
from pattern_keras.analyzers.base import Analyzer
from pattern_keras.rules import ActivationRule, Composite, GradientRule, ZRule

L = keras.layers


class RelevanceForm(Analyzer):
    """LRP-z/ε as relevance at every op (``ZRule``), seeded with ``y``: the reference."""

    seed_with_value = True

    def __init__(self, model, epsilon=0.0, fold=True):
        self.fold_batch_norm = fold
        self.epsilon = epsilon
        super().__init__(model)

    def _composite(self, values):
        z = ZRule(self.epsilon)
        return Composite(
            {
                "linear": z,
                "affine": z,
                "sum": z,
                "activation": ActivationRule("pass"),
                "max_pool": GradientRule(),
                "move": GradientRule(),
            }
        )


def randomize_batch_norm(model, seed=0):
    _randomize_batch_norm(model, seed, gamma=(-2.0, 2.0))


def every_kind_cnn(seed=0):
    """Conv → BN → ReLU6 (saturating), a lone BN, swish, sigmoid and tanh mid-network, max and
    average pooling, an Add skip, a Concatenate, a squeeze-and-excitation gate, LayerNorm, a
    Dense on a rank-3 tensor and a linear activation."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(max_value=0.5, name="relu6")(h)  # saturates often: f(z)/z is not its gate
    skip = h
    h = L.Conv2D(6, 3, padding="same", activation="swish", name="c2")(h)
    h = L.BatchNormalization(name="bn_lone")(h)  # after a swish: stays an affine op
    h = L.Add(name="add")([h, skip])
    h = L.Activation("sigmoid", name="sig")(h)
    gate = L.GlobalAveragePooling2D(keepdims=True)(h)
    gate = L.Conv2D(6, 1, activation="sigmoid", name="se")(gate)
    h = L.Multiply(name="se_gate")([h, gate])
    a = L.MaxPooling2D(2, name="max")(h)
    b = L.AveragePooling2D(2, name="avg")(h)
    h = L.Concatenate(name="cat")([a, b])
    h = L.Conv2D(4, 3, activation="tanh", name="c3")(h)
    h = L.Reshape((4, 4), name="rows")(h)
    h = L.LayerNormalization(name="ln")(h)
    h = L.Dense(5, activation="linear", name="per_row")(h)
    h = L.Flatten()(h)
    model = keras.Model(x, L.Dense(4, name="logits")(h), name="every_kind")
    randomize_batch_norm(model, seed)
    return model


def cancelling_mlp():
    """``d1``'s first unit is ``x₀ − x₁`` (no bias): exactly 0 for the inputs below. It feeds a
    sum, not a ReLU, so only the ``[z ≠ 0]`` mask of the ratio form stops relevance there."""
    x = keras.Input((3,))
    d1 = L.Dense(2, use_bias=False, name="d1")
    other = L.Dense(2, name="other")
    h = L.Add(name="add")([d1(x), other(x)])
    model = keras.Model(x, L.Dense(2, name="out")(h))
    d1.set_weights([np.array([[1.0, 0.5], [-1.0, 0.25], [0.0, -0.75]], "float32")])
    other.set_weights(
        [np.array([[0.2, -0.4], [0.3, 0.1], [-0.5, 0.6]], "float32"), np.array([0.1, -0.2], "f")]
    )
    model.get_layer("out").set_weights(
        [np.array([[1.5, -0.5], [0.7, 0.9]], "float32"), np.array([0.05, 0.0], "float32")]
    )
    return model


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("epsilon", [0.0, 0.05])
def test_ratio_form_equals_relevance_form_on_every_op_kind(epsilon, fold):
    model = every_kind_cnn()
    x = np.random.default_rng(4).normal(size=(3, 8, 8, 3)).astype("float32")
    x[:, :4, :4, :] = 0.0  # zero patches: exact zeros in the bias-free first convolution

    class Ratio(pk.LRPEpsilon):
        fold_batch_norm = fold

    got = Ratio(model, epsilon=epsilon).analyze(x, verbose=0)
    want = RelevanceForm(model, epsilon, fold).analyze(x, verbose=0)
    assert np.abs(want).max() > 0
    assert_close(got, want, PASS)
    if epsilon == 0.0 and fold:
        assert_close(pk.LRPZ(model).analyze(x, verbose=0), want, PASS)


def test_zero_pre_activation_passes_no_relevance():
    model = cancelling_mlp()
    x = np.array([[0.7, 0.7, 0.3], [-1.2, -1.2, 0.4], [0.5, -0.5, 1.0]], "float32")
    z = x @ model.get_layer("d1").kernel.numpy()
    assert np.all(z[:2, 0] == 0.0) and z[2, 0] != 0.0
    want = RelevanceForm(model).analyze(x, verbose=0)
    assert_close(pk.LRPZ(model).analyze(x, verbose=0), want, PASS)
    # Without the mask the first two rows would differ: the test can tell.
    w_out = model.get_layer("out").kernel.numpy()
    y = x @ model.get_layer("d1").kernel.numpy() + x @ model.get_layer("other").kernel.numpy()
    y = y + model.get_layer("other").bias.numpy()
    logits = y @ w_out + model.get_layer("out").bias.numpy()
    assert np.all(np.abs(w_out[0, logits[:2].argmax(1)]) > 0.1)  # d1's unit 0 matters


def bn_mlp(seed=5):
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,))
    h = L.Dense(8, name="d1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.Activation("relu")(h)
    h = L.Dense(7, name="d2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    h = L.Activation("relu")(h)
    model = keras.Model(x, L.Dense(3, name="out")(h))
    randomize_batch_norm(model, seed)
    return model


def folded_epsilon_reference(model, x, epsilon, fold=True):
    """LRP-ε in float64 on the MLP of :func:`bn_mlp`. ``fold``: BN folded into the Dense before
    it (``W·s``, ``(b − μ)·s + β``, ``s = γ/√(σ² + ε_BN)``), the ε-rule at each folded layer;
    otherwise the ε-rule at each Dense and each BN."""
    layers = []
    for dense, bn in (("d1", "bn1"), ("d2", "bn2"), ("out", None)):
        d = model.get_layer(dense)
        w, b = np.float64(d.kernel.numpy()), np.float64(d.bias.numpy())
        affine = None
        if bn is not None:
            n = model.get_layer(bn)
            gamma, beta, mean, var = (
                np.float64(v.numpy()) for v in (n.gamma, n.beta, n.moving_mean, n.moving_variance)
            )
            s = gamma / np.sqrt(var + n.epsilon)
            affine = (s, beta - mean * s)
        layers.append((w, b, affine))

    def stab(z):
        return z + epsilon * np.where(z >= 0, 1.0, -1.0)

    a = np.float64(x)
    trail = []  # (input, kernel, z) of each ε-step, forward order
    for k, (w, b, affine) in enumerate(layers):
        if affine is not None and fold:
            s, t = affine
            z = a @ (w * s) + (b * s + t)
            trail.append(("dense", a, w * s, z))
        else:
            z = a @ w + b
            trail.append(("dense", a, w, z))
            if affine is not None:
                s, t = affine
                u = z
                z = u * s + t
                trail.append(("scale", u, s, z))
        a = np.maximum(z, 0.0) if k < len(layers) - 1 else z
    idx = a.argmax(1)
    r = np.zeros_like(a)
    r[np.arange(len(a)), idx] = a[np.arange(len(a)), idx]
    for kind, inp, k, z in trail[::-1]:
        ratio = r / stab(z)
        r = inp * (ratio @ k.T if kind == "dense" else ratio * k)
    return r


@pytest.mark.parametrize("epsilon", [1e-7, 0.1, 1.0])
def test_lrp_epsilon_on_folded_batch_norm_equals_float64_reference(epsilon):
    model = bn_mlp()
    x = np.random.default_rng(6).normal(size=(8, 6)).astype("float32")
    got = pk.LRPEpsilon(model, epsilon=epsilon).analyze(x, verbose=0)
    want = folded_epsilon_reference(model, x, epsilon)
    assert_close(got, want, PASS)
    if epsilon == 1.0:  # folding moves where ε enters: visible at a large ε
        unfolded = folded_epsilon_reference(model, x, epsilon, fold=False)
        assert np.abs(unfolded - want).max() > 100 * PASS * np.abs(want).max()
    # LRP-z is the same with BatchNorm folded or not (an exact identity for ε = 0).
    assert_close(
        pk.LRPZ(model).analyze(x, verbose=0),
        folded_epsilon_reference(model, x, 0.0, fold=False),
        PASS,
    )


def test_ratio_rules_compiled_equal_eager():
    model = every_kind_cnn(seed=1)
    x = np.random.default_rng(7).normal(size=(2, 8, 8, 3)).astype("float32")
    compiled = pk.LRPEpsilon(model, epsilon=0.01).analyze(x, verbose=0)
    tf.config.run_functions_eagerly(True)
    try:
        eager = pk.LRPEpsilon(model, epsilon=0.01).analyze(x, verbose=0)
    finally:
        tf.config.run_functions_eagerly(False)
    assert_close(compiled, eager, PASS)
