"""The shared input checks (``pattern_keras._checks``): what they accept, what they refuse and
what they say, independently of the entry points that call them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pattern_keras import _checks

ONE = [((None, 3), "float32")]
TWO = [((None, 3), "float32"), ((None, 2, 2), "float32")]


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_int_accepts_integers_from_one(value):
    out = _checks.positive_int(value, "n")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [0, -2, 1.0, True, "3", None])
def test_positive_int_refuses_the_rest_naming_the_option(value):
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1; received"):
        _checks.positive_int(value, "n")


def test_model_inputs_casts_and_keeps_values():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    [a] = _checks.model_inputs(x, ONE, as_numpy=True)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, x)
    [t] = _checks.model_inputs([x], ONE)  # a one-element list for a one-input model
    assert tf.is_tensor(t) and t.dtype == tf.float32
    np.testing.assert_array_equal(t.numpy(), x)


@pytest.mark.parametrize(
    "x, specs, message",
    [
        (
            np.zeros((2, 4)),
            ONE,
            r"The x has shape \(2, 4\); the model expects \(batch, 3\): axis 1",
        ),
        (np.zeros((2, 3, 1)), ONE, r"The x has rank 3 .*expects rank 2"),
        (np.zeros((0, 3)), ONE, r"The x is an empty batch \(shape \(0, 3\)\)"),
        (np.array([["a"] * 3]), ONE, r"The x must be numeric.*<U1"),
        (np.zeros((2, 3)), TWO, r"2 inputs: pass a list of 2 arrays as x, got a ndarray"),
        ([np.zeros((2, 3)), np.zeros((3, 2, 2))], TWO, r"same number of samples; got 2 and 3"),
        ([np.zeros((2, 3)), np.zeros((2, 2, 3))], TWO, r"The x\[1\] has shape \(2, 2, 3\)"),
    ],
)
def test_model_inputs_refusals_say_what_came(x, specs, message):
    with pytest.raises(ValueError, match=message):
        _checks.model_inputs(x, specs, name="x")


def test_neuron_selection_and_mask():
    sel = _checks.neuron_selection([2, 0], "index", 2, num_outputs=3)
    np.testing.assert_array_equal(sel.numpy(), [2, 0])
    np.testing.assert_array_equal(_checks.neuron_selection(1, "index", 3, 3).numpy(), [1, 1, 1])
    with pytest.raises(ValueError, match="neuron_selection 3 is out of range.*0 to 2"):
        _checks.neuron_selection([3, 0], "index", 2, num_outputs=3)
    with pytest.raises(ValueError, match="only used with neuron_selection_mode='index'"):
        _checks.neuron_selection(1, "all", 2, num_outputs=3)
    y = tf.constant([[1.0, 5.0, 2.0], [7.0, -1.0, 0.0]])
    _, mask = _checks.selection_mask(y, "max_activation", None, 3)
    np.testing.assert_array_equal(mask.numpy(), [[0, 1, 0], [1, 0, 0]])
    _, mask = _checks.selection_mask(y, "index", tf.constant([2, 2]), 3)
    np.testing.assert_array_equal(mask.numpy(), [[0, 0, 1], [0, 0, 1]])
    flat, mask = _checks.selection_mask(y, "all", None, 3)
    np.testing.assert_array_equal(mask.numpy(), np.ones((2, 3)))
    np.testing.assert_array_equal(flat.numpy(), y.numpy())
    with pytest.raises(ValueError, match="neuron_selection_mode must be one of"):
        _checks.selection_mode("max")
