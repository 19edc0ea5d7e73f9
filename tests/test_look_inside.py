"""Looking inside layers without a rule, subclassed models, and layers that cannot be read.

The oracle throughout: a model whose custom layer (or subclassed model) is looked into gives
every analyzer exactly the result of the same computation written as a functional model; the
gradient family equals the tape whatever the model; and what cannot be read is refused by the
rule-based analyzers, naming the layer, never explained by a silent gradient.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, assert_close

import pattern_keras as pk
from pattern_keras import engine

L = keras.layers
ops = keras.ops

RULE_BASED = [
    pk.DeConvNet,
    pk.GuidedBackprop,
    pk.LRPZ,
    pk.LRPAlpha2Beta1,
    pk.LRPZPlus,
    pk.DeepTaylor,
]
GRADIENT_FAMILY = [pk.Gradient, pk.InputTimesGradient, pk.IntegratedGradients, pk.SmoothGrad]


def tape_gradient(model, x):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        y = tf.reshape(y, (tf.shape(y)[0], -1))
        score = tf.reduce_sum(y * tf.one_hot(tf.argmax(y, 1), y.shape[1]))
    return tape.gradient(score, xt).numpy()


# --- A custom layer made of layers and ops ---------------------------------------------------


class Block(L.Layer):
    """A residual block of two Dense layers and graph ops, with no rule of its own."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.inner = L.Dense(units, name="inner")
        self.outer = L.Dense(units, name="outer")

    def call(self, x):
        return x + self.outer(ops.relu(self.inner(x))) * 0.5


def block_and_flat_twin():
    keras.utils.set_random_seed(7)
    inp = keras.Input((6,))
    block = Block(6, name="block")
    h = L.Dense(6, activation="relu", name="first")(inp)
    model = keras.Model(inp, L.Dense(3, name="head")(block(h)))
    # The same computation written as a functional model, sharing the weights.
    inp2 = keras.Input((6,))
    h2 = model.get_layer("first")(inp2)
    r = block.outer(ops.relu(block.inner(h2))) * 0.5
    twin = keras.Model(inp2, model.get_layer("head")(h2 + r))
    return model, twin


@pytest.mark.parametrize("make", GRADIENT_FAMILY + RULE_BASED, ids=lambda m: m.__name__)
def test_a_custom_layer_is_explained_as_its_graph(make):
    model, twin = block_and_flat_twin()
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    assert_close(make(model).analyze(x), make(twin).analyze(x), PASS)


@pytest.mark.parametrize("make", [pk.PatternNet, pk.PatternAttribution], ids=lambda m: m.__name__)
def test_patterns_inside_a_custom_layer_are_keyed_by_its_path(make):
    model, twin = block_and_flat_twin()
    x = np.random.default_rng(1).normal(size=(40, 6)).astype("float32")
    ours = make(model).fit(x, verbose=0)
    flat = make(twin).fit(x, verbose=0)
    assert sorted(ours.patterns) == ["block/inner", "block/outer", "first", "head"]
    for key in ("inner", "outer"):
        assert_close(ours.patterns[f"block/{key}"], flat.patterns[key], PASS)
    assert_close(ours.analyze(x[:5]), flat.analyze(x[:5]), PASS)


def test_a_subclassed_model_is_explained_as_its_graph():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.d1 = L.Dense(8, activation="relu", name="d1")
            self.d2 = L.Dense(3, name="d2")

        def call(self, x):
            return self.d2(self.d1(x) + 1.0)

    keras.utils.set_random_seed(3)
    net = Net()
    x = np.random.default_rng(2).normal(size=(5, 4)).astype("float32")
    net(x)
    inp = keras.Input((4,))
    twin = keras.Model(inp, net.d2(net.d1(inp) + 1.0))
    for make in (pk.Gradient, pk.LRPZ, pk.GuidedBackprop):
        assert_close(make(net).analyze(x), make(twin).analyze(x), PASS)
    analyzer = pk.PatternAttribution(net).fit(x, verbose=0)
    assert sorted(analyzer.patterns) == ["d1", "d2"]


# --- Layers that need their batch size, and constants --------------------------------------


class ClassToken(L.Layer):
    """Prepends a learned token tiled over the batch (as ViT's patch embedding does): its call
    needs the batch size, which a symbolic input of unknown batch does not have."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), name="token")

    def call(self, x):
        batch = ops.shape(x)[0]
        return ops.concatenate([ops.tile(self.token, (batch, 1, 1)), x], axis=1)


def class_token_model():
    keras.utils.set_random_seed(4)
    inp = keras.Input((5, 4))
    h = ClassToken(name="cls")(L.Dense(4, name="embed")(inp))
    out = L.Dense(3, name="head")(L.Flatten()(L.Dense(4, activation="relu", name="mix")(h)))
    model = keras.Model(inp, out)
    model.get_layer("cls").token.assign(np.linspace(-1, 1, 4).reshape(1, 1, 4))
    return model


@pytest.mark.parametrize("n", [1, 3, 8, 13])
def test_a_layer_that_needs_its_batch_size(n):
    """Read from two traces at two batch sizes; replayed at others, eagerly and compiled."""
    model = class_token_model()
    program = engine.Program(model)
    assert [op.key for op in program.ops if op.key.startswith("cls/")]  # looked into
    assert program.captures  # the tiled token is a copy of a weight
    x = np.random.default_rng(n).normal(size=(n, 5, 4)).astype("float32")
    replay = tf.function(lambda t: engine.forward(program, [t])[program.output])
    assert_close(replay(tf.constant(x)).numpy(), model(x).numpy(), PASS)
    assert_close(pk.Gradient(model).analyze(x), tape_gradient(model, x), PASS)


def test_a_batch_dependent_layer_through_lrp():
    """LRP-z: the tiled token is a constant input of the concatenation; the twin takes it as
    a second model input, and the relevance of the data input is the same in both."""
    model = class_token_model()
    token = model.get_layer("cls").token.numpy()
    data_in, token_in = keras.Input((5, 4)), keras.Input((1, 4))
    h = L.Concatenate(axis=1)([token_in, model.get_layer("embed")(data_in)])
    twin = keras.Model(
        [data_in, token_in],
        model.get_layer("head")(L.Flatten()(model.get_layer("mix")(h))),
    )
    x = np.random.default_rng(5).normal(size=(6, 5, 4)).astype("float32")
    tokens = np.repeat(token, 6, axis=0)
    assert_close(pk.LRPZ(model).analyze(x), pk.LRPZ(twin).analyze([x, tokens])[0], PASS)


def test_weights_changed_after_a_captured_copy_is_refused():
    model = class_token_model()
    analyzer = pk.Gradient(model)
    x = np.random.default_rng(6).normal(size=(2, 5, 4)).astype("float32")
    analyzer.analyze(x)
    model.get_layer("cls").token.assign(np.zeros((1, 1, 4)))
    with pytest.raises(RuntimeError, match=r"(?s)weights.*changed.*cls/token|token"):
        analyzer.analyze(x)
    assert_close(pk.Gradient(model).analyze(x), tape_gradient(model, x), PASS)


class PositionTable(L.Layer):
    """A table broadcast to its input's shape: its output does not depend on the input's
    values, and its call needs the batch size."""

    def build(self, input_shape):
        self.table = self.add_weight(shape=tuple(input_shape[1:]), name="table")

    def call(self, x):
        return ops.broadcast_to(self.table, ops.shape(x))


def test_a_layer_of_constant_output():
    keras.utils.set_random_seed(8)
    inp = keras.Input((4, 3))
    h = L.Dense(3, name="embed")(inp)
    h = L.Add()([h, PositionTable(name="pos")(h)])
    model = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(h)))
    program = engine.Program(model)
    assert [op.kind for op in program.ops if op.key == "pos"] == ["constant"]
    x = np.random.default_rng(9).normal(size=(5, 4, 3)).astype("float32")
    assert_close(pk.Gradient(model).analyze(x), tape_gradient(model, x), PASS)
    # LRP-z splits the relevance at the sum; the table's share stays with the constant.
    assert np.all(np.isfinite(pk.LRPZ(model).analyze(x)))
    # The replay calls the layer: new weights are seen without rebuilding anything.
    analyzer = pk.Gradient(model)
    model.get_layer("pos").table.assign(np.ones((4, 3)))
    assert_close(analyzer.analyze(x), tape_gradient(model, x), PASS)


# --- What cannot be read --------------------------------------------------------------------


class RawTensorFlow(L.Layer):
    """Written with TensorFlow ops, which do not take symbolic Keras inputs: unreadable."""

    def call(self, x):
        return tf.sin(x) * x


def unreadable_model():
    keras.utils.set_random_seed(10)
    inp = keras.Input((4,))
    h = RawTensorFlow(name="raw")(L.Dense(5, name="d1")(inp))
    return keras.Model(inp, L.Dense(3, name="d2")(h))


@pytest.mark.parametrize("make", GRADIENT_FAMILY[:2], ids=lambda m: m.__name__)
def test_the_gradient_family_explains_what_cannot_be_read(make):
    model = unreadable_model()
    x = np.random.default_rng(11).normal(size=(5, 4)).astype("float32")
    want = tape_gradient(model, x)
    if make is pk.InputTimesGradient:
        want = want * x
    assert_close(make(model).analyze(x), want, PASS)


@pytest.mark.parametrize("make", RULE_BASED + [pk.PatternNet], ids=lambda m: m.__name__)
def test_rule_based_analyzers_refuse_what_cannot_be_read(make):
    with pytest.raises(ValueError, match=r"(?s)'raw'.*RawTensorFlow.*could not be looked into.*"):
        make(unreadable_model())


def test_a_probability_from_an_unreadable_call_is_warned_about():
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__(name="clf")
            self.d = L.Dense(3)

        def call(self, x):
            return tf.nn.softmax(self.d(x))  # a TensorFlow op: the call cannot be read

    keras.utils.set_random_seed(12)
    clf = Classifier()
    x = np.random.default_rng(13).normal(size=(4, 5)).astype("float32")
    clf(x)
    with pytest.warns(RuntimeWarning, match=r"(?s)probabilit.*logit"):
        result = pk.Gradient(clf).analyze(x)
    assert_close(result, tape_gradient(clf, x), PASS)
    with warnings.catch_warnings():  # a logit model: no such warning
        warnings.simplefilter("error", RuntimeWarning)
        pk.Gradient(unreadable_model()).analyze(x[:, :4])


class Inner(L.Layer):
    """Its ``compute_output_spec`` does not take an argument its ``call`` takes (as keras-hub's
    CachedMultiHeadAttention with ``cache=None``): Keras's own symbolic call fails on it."""

    def call(self, x, cache=None):
        return x * 2.0

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, dtype=x.dtype)


class Outer(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = Inner(name="inner")

    def call(self, x):
        return self.inner(x, cache=None) + x


def test_a_sublayer_with_a_narrow_output_spec_is_read():
    keras.utils.set_random_seed(14)
    inp = keras.Input((3,))
    model = keras.Model(inp, L.Dense(2, name="d")(Outer(name="outer")(inp)))
    program = engine.Program(model)
    assert all(op.kind != "opaque" for op in program.ops)
    assert any(op.key.startswith("outer/inner/") for op in program.ops)
    x = np.random.default_rng(15).normal(size=(4, 3)).astype("float32")
    assert_close(pk.LRPZ(model).analyze(x), pk.InputTimesGradient(model).analyze(x), PASS)


def test_masks_reach_the_layers_that_read_them():
    """``Embedding(mask_zero=True)`` → MultiHeadAttention (which reads its inputs' masks from
    the tensors) → pooling: the replay equals ``model(x)`` for a padded batch."""
    keras.utils.set_random_seed(16)
    ids = keras.Input((6,), dtype="int32")
    e = L.Embedding(20, 8, mask_zero=True)(ids)
    a = L.MultiHeadAttention(2, 4, name="mha")(e, e)
    model = keras.Model(ids, L.Dense(3)(L.GlobalAveragePooling1D()(a)))
    x = np.random.default_rng(17).integers(1, 20, size=(4, 6)).astype("int32")
    x[0, 3:] = 0
    x[2, 1:] = 0
    program = engine.Program(model)
    for run in (lambda f: f, tf.function):
        replay = run(lambda t: engine.forward(program, [t])[program.output])
        assert_close(replay(tf.constant(x)).numpy(), model(x).numpy(), PASS)
    # The mask is in effect: the same ids without padding give another output.
    assert np.abs(model(x).numpy()[0] - model(np.where(x > 0, x, 5)).numpy()[0]).max() > 1e-4
