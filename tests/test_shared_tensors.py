"""A tensor used twice by one op (issue 22, item 1).

``Concatenate()([h, h])``, ``Add()([h, Identity()(h)])`` and the like gave the shared tensor the
total backward signal at each of its positions, so the engine counted it twice. The oracle for
every analyzer: the same op fed by two *separate* inputs that carry the same values; the
explanation of the shared input is the sum of the two explanations there (the engine sums the
signals of a tensor's uses, so this holds for every rule).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, assert_close

import pattern_keras as pk

L = keras.layers

ANALYZERS = [
    pk.Gradient,
    pk.InputTimesGradient,
    pk.DeConvNet,
    pk.GuidedBackprop,
    pk.LRPZ,
    lambda m: pk.LRPEpsilon(m, epsilon=0.01),
    pk.LRPAlpha2Beta1,
    pk.LRPZPlus,
    pk.PatternNet,
    pk.PatternAttribution,
]

# Each case: (name, the op applied to a list of two tensors).
CASES = {
    "concatenate": lambda a, b: L.Concatenate()([a, b]),
    "average": lambda a, b: L.Average()([a, b]),
    "add": lambda a, b: L.Add()([a, b]),
    "add_identity": lambda a, b: L.Add()([a, L.Identity()(b)]),
    "add_dropout": lambda a, b: L.Add()([a, L.Dropout(0.5)(b)]),
    "add_linear_activation": lambda a, b: L.Add()([a, L.Activation("linear")(b)]),
    "ops_add": lambda a, b: a + b,
}


def _models(case):
    """The model with one tensor used twice, and its twin with two separate inputs."""
    combine = CASES[case]
    # Linear before the shared use, so that the signal reaching each input is linear in the
    # signal at the shared tensor for every rule (DeConvNet's and Guided BackProp's
    # rectifications come after it, at the ReLU, on the sum of the uses).
    first = L.Dense(5, name="first")
    hidden = L.Dense(6, activation="relu", name="hidden")
    head = L.Dense(3, name="head")
    inp = keras.Input((4,))
    h = first(inp)
    shared = keras.Model(inp, head(hidden(combine(h, h))))
    a, b = keras.Input((4,)), keras.Input((4,))
    twin = keras.Model([a, b], head(hidden(combine(first(a), first(b)))))
    return shared, twin


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("make", ANALYZERS, ids=lambda m: getattr(m, "__name__", "LRPEpsilon"))
def test_a_tensor_used_twice_gets_the_sum_of_its_uses(case, make):
    keras.utils.set_random_seed(11)
    shared, twin = _models(case)
    x = np.random.default_rng(12).normal(size=(6, 4)).astype("float32")
    # The same explained neuron in both (the twin's outputs equal the shared model's).
    np.testing.assert_array_equal(shared.predict(x, verbose=0), twin.predict([x, x], verbose=0))
    one, two = make(shared), make(twin)
    if getattr(one, "needs_patterns", False):
        one.fit(x, verbose=0)
        two.fit([x, x], verbose=0)
        # Both fits saw each use of the first layer's input once per sample.
        for key in one.patterns:
            assert_close(one.patterns[key], two.patterns[key], PASS)
    r_shared = one.analyze(x)
    r_first, r_second = two.analyze([x, x])
    assert_close(r_shared, r_first + r_second, PASS)


def test_the_issue_example_gradient_and_lrp():
    """``y = 2x + 3x`` through ``Concatenate()([x, x])``: the gradient is 5, LRP-z gives y."""
    inp = keras.Input((1,))
    dense = L.Dense(1, use_bias=False)
    model = keras.Model(inp, dense(L.Concatenate()([inp, inp])))
    dense.set_weights([np.array([[2.0], [3.0]], "float32")])
    x = np.array([[1.5]], "float32")
    np.testing.assert_allclose(pk.Gradient(model).analyze(x), [[5.0]])
    np.testing.assert_allclose(pk.LRPZ(model).analyze(x), [[7.5]])


def test_add_of_a_tensor_to_itself_has_gradient_two():
    """``y = x + x``: the tape says 2 (the bug gave 4)."""
    inp = keras.Input((3,))
    model = keras.Model(inp, L.Add()([inp, inp]))
    x = tf.constant([[1.0, -2.0, 0.5]])
    analyzer = pk.Gradient(model, neuron_selection_mode="index")
    got = analyzer.analyze(x.numpy(), neuron_selection=1)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)[:, 1]
    np.testing.assert_array_equal(got, tape.gradient(y, x).numpy())
    np.testing.assert_array_equal(got, [[0.0, 2.0, 0.0]])


def test_a_product_of_a_tensor_with_itself():
    """``Multiply()([h, h])`` (``h²``, a product whose gate is its own operand): the gradient
    equals the tape (``2h·∂h``, the bug gave ``4h·∂h``), and LRP-z conserves relevance on a
    bias-free network (the gate takes none, the signal operand all)."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((4,))
    h = L.Dense(5, activation="relu", use_bias=False)(inp)
    model = keras.Model(inp, L.Dense(3, use_bias=False)(L.Multiply()([h, h])))
    x = np.random.default_rng(4).normal(size=(6, 4)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        score = tf.reduce_sum(y * tf.one_hot(tf.argmax(y, 1), 3))
    assert_close(pk.Gradient(model).analyze(x), tape.gradient(score, xt).numpy(), PASS)
    relevance = pk.LRPZ(model).analyze(x)
    assert_close(relevance.sum(axis=1), y.numpy().max(axis=1), PASS)
