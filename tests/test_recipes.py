"""The README's recipes ("Adding a rule / a layer kind / an estimator"), each followed once.

Each test does what its recipe says, in the one place the recipe names, and checks the result
against an independent reference, so a recipe that stops working (or stops being enough) fails
here.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import pattern_keras as pk
from pattern_keras import layers as pk_layers
from pattern_keras import rules as pk_rules
from pattern_keras.analyzers import Analyzer, registry
from pattern_keras.evaluation import signal_estimator_quality
from pattern_keras.layers import registry as pk_registry
from pattern_keras.patterns import statistics
from pattern_keras.rules import (
    ActivationRule,
    BasicRule,
    Composite,
    GradientRule,
    Term,
    ZRule,
)

L = keras.layers


def bias_free_relu_net(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,))
    h = L.Dense(8, activation="relu", use_bias=False, name="d1")(x)
    h = L.Dense(5, activation="relu", use_bias=False, name="d2")(h)
    return keras.Model(x, L.Dense(3, use_bias=False, name="out")(h))


# --- Adding a rule: a BasicRule subclass, and an analyzer that is a composite ------------------


class GammaRule(BasicRule):
    """LRP-γ: contributions with the kernel ``W + γ·W⁺`` (favouring positive weights)."""

    def __init__(self, gamma: float) -> None:
        super().__init__(epsilon=0.0)
        self.gamma = gamma

    def groups(self, op, inputs, outputs):
        kernel = op.linear.kernel
        kernel = kernel + self.gamma * tf.maximum(kernel, 0.0)
        return [(None, [Term(inputs, lambda xs: [op.linear.apply(xs[0], kernel)])], None)]


class LRPGamma(Analyzer):
    seed_with_value = True
    gamma = 0.25

    def _composite(self, values):
        z = ZRule()
        return Composite(
            {
                "linear": GammaRule(self.gamma),
                "affine": z,
                "sum": z,
                "activation": ActivationRule("pass"),
                "max_pool": GradientRule(),
                "move": GradientRule(),
            }
        )


@pytest.fixture
def gamma_registered():
    registry.register_analyzer("lrp.gamma", LRPGamma)
    yield
    registry._ANALYZERS.pop("lrp.gamma")


def numpy_gamma_lrp(model, x, gamma):
    """The γ-rule written out in float64 for a bias-free Dense/ReLU network, seeded with y."""
    ws = [model.get_layer(n).kernel.numpy().astype(np.float64) for n in ("d1", "d2", "out")]
    acts = [x.astype(np.float64)]
    for w in ws[:-1]:
        acts.append(np.maximum(acts[-1] @ w, 0.0))
    y = acts[-1] @ ws[-1]
    r = np.where(np.arange(y.shape[1]) == y.argmax(1)[:, None], y, 0.0)
    for a, w in zip(reversed(acts), reversed(ws)):
        wg = w + gamma * np.maximum(w, 0.0)
        z = a @ wg
        s = np.divide(r, z, out=np.zeros_like(r), where=z != 0)
        r = a * (s @ wg.T)
    return r


def test_recipe_adding_a_rule(gamma_registered):
    model = bias_free_relu_net()
    x = np.random.default_rng(1).uniform(0, 1, (16, 6)).astype("float32")
    analyzer = pk.create_analyzer("lrp.gamma", model)
    assert isinstance(analyzer, LRPGamma)
    r = analyzer.analyze(x)
    np.testing.assert_allclose(r, numpy_gamma_lrp(model, x, 0.25), rtol=1e-4, atol=1e-6)
    y = model(x).numpy().max(1)
    keep = y > 0
    np.testing.assert_allclose(r.sum(1)[keep], y[keep], rtol=1e-4)  # conserved, bias-free
    LRPGamma.gamma = 0.0
    try:  # γ = 0 is the z-rule
        np.testing.assert_allclose(
            LRPGamma(model).analyze(x), pk.LRPZ(model).analyze(x), rtol=1e-5, atol=1e-7
        )
    finally:
        LRPGamma.gamma = 0.25


# --- Adding a layer kind: KINDS, its builder, and a rule in the composites that take it -------


class Clip(keras.layers.Layer):
    """``clip(x, -1, 1)``: neither a move, a sum, nor a rectifier: a kind of its own."""

    def call(self, x):
        return tf.clip_by_value(x, -1.0, 1.0)


def test_recipe_adding_a_layer_kind(monkeypatch):
    kinds = pk_layers.KINDS + ("clip",)
    monkeypatch.setattr(pk_layers, "KINDS", kinds)
    monkeypatch.setattr(pk_rules, "KINDS", kinds)

    def build(node, shape):
        return [
            pk_layers.Op(
                key=node.key,
                kind="clip",
                layer=node.layer,
                inputs=node.inputs,
                outputs=node.outputs,
                forward=node.call,
            )
        ]

    monkeypatch.setitem(pk_registry._REGISTRY, Clip, build)
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,))
    h = Clip(name="clip")(L.Dense(6, name="d")(inputs))
    model = keras.Model(inputs, L.Dense(3, name="out")(h))
    x = np.random.default_rng(3).normal(size=(5, 4)).astype("float32") * 3

    # A composite with a default (the gradient family) takes the new kind as its default does.
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        score = tf.reduce_sum(y * tf.one_hot(tf.argmax(y, 1), 3))
    np.testing.assert_allclose(
        pk.Gradient(model).analyze(x), tape.gradient(score, xt).numpy(), rtol=1e-5, atol=1e-7
    )
    # One without a rule for it refuses, naming the op and the kind, until it is given one.
    with pytest.raises(ValueError, match=r"No backward rule for op 'clip' of kind 'clip'"):
        pk.LRPZ(model).analyze(x)


# --- Adding an estimator: one entry of ESTIMATORS plus its derivation --------------------------


def _derive_positive(stats):
    """The positive regime's estimator for every layer, also those that keep both regimes."""
    s = stats.sums
    a, undefined = stats._regime(s["n_pos"], s["sum_y_pos"], s["sum_x_pos"], s["sum_xy_pos"])
    return a, None, {"a₊": undefined}


def test_recipe_adding_an_estimator(monkeypatch, tmp_path):
    relu = statistics.ESTIMATORS["relu"]
    monkeypatch.setitem(
        statistics.ESTIMATORS,
        "positive",
        statistics.Estimator("positive", relu.sums, (), _derive_positive, "a₊ for every layer"),
    )
    keras.utils.set_random_seed(4)
    inputs = keras.Input((6,))
    h = L.Dense(8, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, L.Dense(3, name="logits")(h))
    x = np.random.default_rng(5).normal(size=(256, 6)).astype("float32")

    mine = pk.PatternComputer(model, pattern_type="positive").compute_statistics(x, verbose=0)
    both = pk.PatternComputer(model, pattern_type="relu").compute_statistics(x, verbose=0)
    patterns, reference = mine.patterns(), both.patterns()
    for key in ("hidden", "logits"):
        # The same sums as "relu"'s positive regime, so the same a₊; never an a₋.
        np.testing.assert_array_equal(patterns[key], reference[key])
        assert not patterns.has_negative(key)
        assert patterns.pattern_types[key] == "positive"
    assert reference.has_negative("logits")
    # The file format follows the table: the statistics round-trip.
    mine.save(tmp_path / "p.h5")
    again = pk.PatternStatistics.load(tmp_path / "p.h5")
    assert set(again["logits"].sums) == set(relu.sums)
    np.testing.assert_array_equal(again.patterns()["logits"], patterns["logits"])
    # An analyzer uses the new estimator by name, and the evaluation measures it.
    net = pk.PatternNet(model, pattern_type="positive").fit(x, verbose=0)
    np.testing.assert_array_equal(net.patterns["hidden"], patterns["hidden"])
    quality = signal_estimator_quality(model, x[:128], x[128:], estimators=("positive", "relu"))
    assert set(quality["hidden"]) == {"positive", "relu"}
    assert np.isfinite(quality["hidden"]["positive"])
