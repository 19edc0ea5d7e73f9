"""Region explanations: ``neuron_selection`` as output-shaped weights (a class over a region of
a segmentation map) explains ``Σ mask ⊙ output``; against the tape gradient of that sum."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, assert_close

import pattern_keras as pk

H = W = 8
CLASSES = 3


@pytest.fixture(scope="module")
def segmenter():
    """A small U-Net-like model: conv, downsampling, conv, transposed-conv upsampling, a skip
    connection, and a 1×1 conv to per-pixel class logits ``(H, W, CLASSES)``."""
    keras.utils.set_random_seed(0)
    x = keras.Input((H, W, 2))
    skip = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    h = keras.layers.MaxPooling2D()(skip)
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2DTranspose(4, 2, strides=2, activation="relu")(h)
    h = keras.layers.Concatenate()([h, skip])
    model = keras.Model(x, keras.layers.Conv2D(CLASSES, 1)(h))
    data = np.random.default_rng(0).normal(size=(3, H, W, 2)).astype("float32")
    mask = np.zeros((H, W, CLASSES), "float32")
    mask[2:6, 3:7, 1] = 1.0  # class 1 over a square
    return model, data, mask


def _tape(model, x, weights):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)
        total = tf.reduce_sum(y * weights, axis=list(range(1, len(y.shape))))
    return x.numpy(), tape.gradient(total, x).numpy(), total.numpy()


@pytest.mark.parametrize("mode", ["max_activation", "index", "all"])
def test_region_gradient_is_the_tape_gradient_of_the_masked_sum(segmenter, mode):
    model, x, mask = segmenter
    _, grad, _ = _tape(model, x, mask)
    result = pk.Gradient(model, neuron_selection_mode=mode).analyze(x, mask, verbose=0)
    assert_close(result, grad, PASS)  # the mode is ignored


def test_region_attributions(segmenter):
    model, x, mask = segmenter
    weights = np.random.default_rng(1).uniform(0, 1, (len(x), H, W, CLASSES)).astype("float32")
    xs, grad, total = _tape(model, x, weights)
    assert_close(pk.InputTimesGradient(model).analyze(x, weights, verbose=0), xs * grad, PASS)
    assert_close(pk.LRPZ(model).analyze(x, weights, verbose=0), xs * grad, PASS)
    ig = pk.IntegratedGradients(model, steps=64).analyze(x, weights, verbose=0)
    _, _, at_zero = _tape(model, np.zeros_like(x), weights)
    np.testing.assert_allclose(ig.sum(axis=(1, 2, 3)), total - at_zero, rtol=0.01)


def test_region_with_a_dataset_and_per_sample_masks(segmenter):
    model, x, _ = segmenter
    masks = (np.random.default_rng(2).uniform(size=(len(x), H, W, CLASSES)) > 0.7).astype(bool)
    _, grad, _ = _tape(model, x, masks.astype("float32"))
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(2)
    assert_close(pk.Gradient(model).analyze(dataset, masks, verbose=0), grad, PASS)


def test_weights_over_a_vector_of_logits():
    keras.utils.set_random_seed(1)
    inp = keras.Input((5,))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(4, "relu")(inp)))
    x = np.random.default_rng(3).normal(size=(4, 5)).astype("float32")
    weights = np.array([1.0, -0.5, 2.0], "float32")
    _, grad, _ = _tape(model, x, weights)
    assert_close(pk.Gradient(model).analyze(x, weights, verbose=0), grad, PASS)
    # In mode "index" a 1-D integer array stays one index per sample.
    index = pk.Gradient(model, neuron_selection_mode="index").analyze(x, [0, 1, 2, 0], verbose=0)
    _, grad0, _ = _tape(model, x, np.eye(3, dtype="float32")[[0, 1, 2, 0]])
    assert_close(index, grad0, PASS)


def test_region_selection_errors(segmenter):
    model, x, mask = segmenter
    analyzer = pk.Gradient(model)
    with pytest.raises(ValueError, match="zero everywhere"):
        analyzer.analyze(x, np.zeros_like(mask), verbose=0)
    with pytest.raises(ValueError, match="one region per sample for 2 samples; the input has 3"):
        analyzer.analyze(x, np.stack([mask, mask]), verbose=0)
    with pytest.raises(ValueError, match=r"weights shaped like the output, \(8, 8, 3\)"):
        analyzer.analyze(x, mask[:, :, :2], verbose=0)
