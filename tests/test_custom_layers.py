"""Layers without a rule: looked into where their computation can be read, otherwise refused
when an analyzer is built (but by the gradient family); ``register_layer`` makes a user's layer
work with every analyzer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import EVERY_ANALYZER, PASS, assert_close

import pattern_keras as pk

L = keras.layers


class Unregistered(keras.layers.Layer):
    def call(self, x):
        return x * 3.0


class Scale(keras.layers.Layer):
    """An elementwise scaling with a learned per-feature factor: a fixed linear map at
    inference, registered as "sum" below."""

    def build(self, input_shape):
        self.factor = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="f")

    def call(self, x):
        return x * self.factor


class TakeHalf(keras.layers.Layer):
    """Keeps the first half of the features: pure data movement ("move")."""

    def call(self, x):
        return x[..., : x.shape[-1] // 2]

    def compute_output_shape(self, input_shape):
        return input_shape[:-1] + (input_shape[-1] // 2,)


class Rectifier(keras.layers.Layer):
    def call(self, x):
        return tf.nn.relu(x)


pk.register_layer(Scale, "sum")
pk.register_layer(TakeHalf, "move")
pk.register_layer(Rectifier, "relu")


class RawTensorFlow(keras.layers.Layer):
    """Written with TensorFlow ops, which do not take Keras's symbolic inputs: its
    computation cannot be read, and it has no rule."""

    def call(self, x):
        return tf.sin(x) * x


def unreadable_model():
    x = keras.Input((6,))
    h = RawTensorFlow(name="my_raw")(L.Dense(4)(x))
    return keras.Model(x, L.Dense(2)(h))


def unregistered_model():
    x = keras.Input((6,))
    h = Unregistered(name="my_custom")(L.Dense(4)(x))
    return keras.Model(x, L.Dense(2)(h))


GRADIENT_FAMILY = (pk.Gradient, pk.InputTimesGradient, pk.IntegratedGradients, pk.SmoothGrad)


def test_unreadable_layers_are_refused_at_construction():
    """A layer without a rule whose computation cannot be read: every analyzer but the
    gradient family refuses the model when it is built, naming the layer and why, and the
    gradient family explains it by its own gradient (never a silent gradient elsewhere)."""
    model = unreadable_model()
    for analyzer in EVERY_ANALYZER:
        if analyzer in GRADIENT_FAMILY:
            continue
        with pytest.raises(
            ValueError,
            match=r"'my_raw' of class RawTensorFlow has no rule.*could not be looked into"
            r".*gradient family",
        ):
            analyzer(model)
    with pytest.raises(ValueError, match=r"'my_raw'.*could not be looked into"):
        pk.PatternComputer(model)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        score = tf.reduce_sum(y * tf.one_hot(tf.argmax(y, 1), 2))
    assert_close(pk.Gradient(model).analyze(x), tape.gradient(score, xt).numpy(), PASS)
    assert pk.create_analyzer("smoothgrad", model).analyze(x).shape == x.shape


def test_a_layer_without_a_rule_made_of_ops_is_looked_into():
    """``x * 3.0`` in a layer of one's own: read as the graph op it is, for every analyzer."""
    model = unregistered_model()
    x = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")
    for analyzer in EVERY_ANALYZER:
        instance = analyzer(model)
        if instance.needs_patterns:
            instance.fit(x, verbose=0)
        assert instance.analyze(x).shape == x.shape


def scale_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    h = L.Dense(8, activation="relu", use_bias=False, name="d1")(x)
    h = Scale(name="scale")(h)
    h = TakeHalf(name="half")(h)
    h = Rectifier(name="rect")(L.Dense(5, use_bias=False, name="d2")(h))
    model = keras.Model(x, L.Dense(3, use_bias=False, name="out")(h))
    model.get_layer("scale").factor.assign(
        np.random.default_rng(1).uniform(0.5, 2.0, 8).astype("float32")
    )
    return model


def test_registered_layers_gradient_equals_tape():
    model = scale_model()
    x = np.random.default_rng(2).normal(size=(6, 6)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        score = tf.reduce_sum(y * tf.one_hot(tf.argmax(y, 1), 3))
    want = tape.gradient(score, xt).numpy()
    assert_close(pk.Gradient(model).analyze(x), want, PASS)


def test_registered_layers_lrp_conserves_relevance():
    """Bias-free ReLU net through Scale ("sum"), TakeHalf ("move", drops half of the features)
    and Rectifier ("relu"): the z-rule crosses Scale with R unchanged per feature, so LRP
    conserves relevance; so do α1β0 and z⁺ on positive inputs."""
    model = scale_model()
    x = np.random.default_rng(3).uniform(0, 1, size=(64, 6)).astype("float32")
    y = model(x).numpy().max(1)
    x, y = x[y > 0], y[y > 0]
    assert len(x) >= 4
    for analyzer in (pk.LRPZ(model), pk.LRPAlpha1Beta0(model), pk.LRPZPlus(model)):
        r = analyzer.analyze(x)
        assert_close(r.sum(1), y, PASS, err_msg=type(analyzer).__name__)
    # LRP-z (seeded with y) equals input × gradient (seeded with 1), here too.
    assert_close(pk.LRPZ(model).analyze(x), pk.InputTimesGradient(model).analyze(x), PASS)


def test_registered_layers_every_analyzer_runs():
    model = scale_model()
    x = np.random.default_rng(4).normal(size=(8, 6)).astype("float32")
    for cls in EVERY_ANALYZER:
        analyzer = cls(model)
        if isinstance(analyzer, (pk.PatternNet, pk.PatternAttribution)):
            analyzer.fit(x, verbose=0)
        r = analyzer.analyze(x)
        assert r.shape == x.shape and np.all(np.isfinite(r)), cls.__name__


def test_registered_subclass_is_covered():
    class SameScale(Scale):  # inherits Scale.call: computes what Scale computes
        pass

    keras.utils.set_random_seed(5)
    x_in = keras.Input((4,))
    model = keras.Model(x_in, L.Dense(2, name="d")(SameScale(name="same")(x_in)))
    model.get_layer("same").factor.assign([0.5, 1.0, -2.0, 3.0])
    # Scale's registration covers the subclass ("sum": its own VJP): d(w_j·f⊙x)/dx = f w_j.
    x = np.random.default_rng(6).normal(size=(3, 4)).astype("float32")
    y = model(x).numpy()
    w = model.get_layer("d").kernel.numpy()[:, y.argmax(1)].T  # (3, 4)
    want = np.array([0.5, 1.0, -2.0, 3.0], np.float32) * w
    np.testing.assert_allclose(pk.Gradient(model).analyze(x), want, rtol=1e-6, atol=1e-7)


def test_subclass_overriding_call_is_not_covered_by_its_base_rule():
    """A subclass that rewrites ``call`` computes something else: its base class's rule must
    not explain it (issue 20: ``ReversibleEmbedding(reverse=True)`` is no embedding lookup)."""
    from pattern_keras.layers.registry import builder_for

    class DoubleScale(Scale):
        def call(self, x):
            return 2.0 * x * self.factor

    class SameScale(Scale):
        pass

    assert builder_for(SameScale()) is builder_for(Scale())
    assert builder_for(Scale()) is not None
    assert builder_for(DoubleScale()) is None


def test_register_layer_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        pk.register_layer(Unregistered, "linear")
    with pytest.raises(TypeError, match="must be a class"):
        pk.register_layer(Unregistered(), "sum")
