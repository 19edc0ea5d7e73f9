"""An explanation that is zero for a sample comes with one warning naming the samples."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import pattern_keras as pk


@pytest.fixture(scope="module")
def gated_model():
    """Dense(4, relu) with all-ones kernel, no bias: every ReLU is off when sum(x) < 0."""
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(
        4, activation="relu", kernel_initializer="ones", bias_initializer="zeros"
    )(inputs)
    outputs = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="zeros")(hidden)
    return keras.Model(inputs, outputs)


def test_dead_samples_are_named_once(gated_model):
    x = np.array(
        [[1.0, 2.0, 3.0], [-1.0, -1.0, -1.0], [0.5, 0.5, 0.5], [-2.0, 0.0, -1.0]], np.float32
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.Gradient(gated_model).analyze(x)
    # The reference: samples 1 and 3 have every ReLU inactive, so the gradient is exactly zero.
    assert np.all(result[[1, 3]] == 0) and np.all(result[[0, 2]] != 0)
    zero_warnings = [w for w in caught if "zero everywhere" in str(w.message)]
    assert len(zero_warnings) == 1
    message = str(zero_warnings[0].message)
    assert "2 of 4 samples (indices 1, 3)" in message
    assert "ReLU" in message and issubclass(zero_warnings[0].category, RuntimeWarning)
    assert zero_warnings[0].filename == __file__  # points at the caller's line


def test_no_warning_when_every_sample_has_a_signal(gated_model):
    x = np.abs(np.random.default_rng(0).normal(size=(5, 3))).astype(np.float32) + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.LRPEpsilon(gated_model, epsilon=0.1).analyze(x)


def test_warning_for_a_dataset_too(gated_model):
    import tensorflow as tf

    x = -np.ones((3, 3), np.float32)
    with pytest.warns(RuntimeWarning, match=r"3 of 3 samples \(indices 0, 1, 2\)") as caught:
        pk.LRPZ(gated_model).analyze(tf.data.Dataset.from_tensor_slices(x).batch(2))
    assert caught[0].filename == __file__
