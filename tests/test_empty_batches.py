"""No model op ever runs on an empty batch.

On some CPUs (AMD EPYC, oneDNN) TensorFlow's convolution of 0 images returns the wrong shape,
so a model op on an empty batch fails there. The test CNN (``_fit_worker.build_cnn``) starts
with a layer that fails on an empty batch on every machine: these tests, and the distributed
ones (``tests/test_distributed.py``, where the last global batch leaves a replica an empty
shard), show that pattern_keras never calls a model with one, in the fit, in ``analyze`` and
in the evaluation code.
"""

from __future__ import annotations

import _fit_worker as worker
import numpy as np
import pytest
import tensorflow as tf

import pattern_keras as pk
from pattern_keras.evaluation import image_degradation, signal_estimator_quality
from pattern_keras.patterns import PatternComputer

EMPTY = np.zeros((0,) + worker.INPUT_SHAPE, np.float32)


@pytest.fixture(scope="module")
def cnn():
    return worker.build_cnn()


@pytest.fixture(scope="module")
def x():
    return worker.make_data(7)


def with_empty_batches(x, batch_size, first=True, last=True):
    """A dataset of ``x`` in batches, with an empty batch before and/or after them."""
    empty = tf.data.Dataset.from_tensors(EMPTY)
    data = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
    if first:
        data = empty.concatenate(data)
    return data.concatenate(empty) if last else data


def test_the_guard_layer_fails_on_an_empty_batch(cnn, x):
    """The guard is real: eagerly and compiled, the model refuses an empty batch."""
    assert cnn(x[:1]).shape == (1, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NoEmptyBatch"):
        cnn(EMPTY)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NoEmptyBatch"):
        tf.function(cnn.__call__, autograph=False)(tf.constant(EMPTY))


ANALYZERS = {
    "gradient": lambda m, x: pk.Gradient(m),
    "lrp_epsilon": lambda m, x: pk.LRPEpsilon(m),
    "deep_taylor_bounded": lambda m, x: pk.DeepTaylor(m, low=-4.0, high=5.0),
    "integrated_gradients": lambda m, x: pk.IntegratedGradients(m, steps=4),
    "smoothgrad": lambda m, x: pk.SmoothGrad(m, samples=3),
    "pattern_attribution": lambda m, x: pk.PatternAttribution(m).fit(x, verbose=0),
}


@pytest.mark.parametrize("name", sorted(ANALYZERS))
def test_analyze_skips_empty_batches(cnn, x, name):
    """A dataset with empty batches explains exactly what the array does; the compiled pass
    returns an empty result for an empty batch without calling the model."""
    analyzer = ANALYZERS[name](cnn, x)
    want = analyzer.analyze(x, batch_size=3)
    got = analyzer.analyze(with_empty_batches(x, 3))
    np.testing.assert_array_equal(got, want)  # same batches, same compiled pass
    out = analyzer._compiled_fn()([tf.constant(EMPTY)], tf.zeros((0,), tf.int32))
    assert [tuple(o.shape) for o in out] == [EMPTY.shape]
    with pytest.raises(ValueError, match="only empty batches"):
        analyzer.analyze(tf.data.Dataset.from_tensors(EMPTY))


def test_fit_skips_empty_batches(cnn, x):
    """Empty batches first and last (a dataset, a generator) add nothing: the statistics equal
    the plain fit's bit for bit, shifts included (taken from the first batch with samples)."""
    computer = PatternComputer(cnn)
    want = computer.compute_statistics(x, batch_size=3, verbose=0)

    def generator():
        yield EMPTY
        for start in range(0, len(x), 3):
            yield x[start : start + 3]
        yield EMPTY

    for data in (with_empty_batches(x, 3), generator()):
        got = computer.compute_statistics(data, verbose=0)
        assert (got.n_samples, got.n_batches) == (len(x), want.n_batches + 2)
        for key, layer in want.layers.items():
            assert got.layers[key].shift_x == layer.shift_x
            np.testing.assert_array_equal(got.layers[key].shift_y, layer.shift_y)
            for name, value in layer.sums.items():
                np.testing.assert_array_equal(got.layers[key].sums[name], value, err_msg=name)
    with pytest.raises(ValueError, match="no samples"):
        computer.compute_statistics(tf.data.Dataset.from_tensors(EMPTY).repeat(2), verbose=0)


def test_evaluation_runs_on_the_guarded_model(cnn, x):
    """The evaluation code reaches the model through partial batches only (7 samples in
    batches of 3 or 2), never an empty one."""
    quality = signal_estimator_quality(
        cnn, x, x[:3], estimators=("linear",), batch_size=2, layers=["dense"]
    )
    assert np.isfinite(quality["dense"]["linear"])
    result = image_degradation(cnn, pk.Gradient(cnn), x[:3], patch_size=5, steps=2, batch_size=2)
    assert result.per_image.shape == (3, 3)
