"""Tests of pattern_keras.datasets and pattern_keras.evaluation.groundtruth."""

from __future__ import annotations

import numpy as np
import pytest

from pattern_keras.datasets import SignalDistractorData, load_digits, signal_distractor
from pattern_keras.evaluation.groundtruth import signal_cosine, topk_precision

# --- signal_distractor -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def data() -> SignalDistractorData:
    return signal_distractor(2000, seed=3)


def test_shapes_and_dtypes(data):
    n, (h, w), k = 2000, (16, 16), 3
    assert data.x.shape == data.signal.shape == (n, h, w, 1)
    assert data.x.dtype == data.signal.dtype == np.float32
    assert data.labels.shape == (n,) and np.issubdtype(data.labels.dtype, np.integer)
    assert set(np.unique(data.labels).tolist()) == {0, 1}
    assert data.signal_pattern.shape == (h, w, 1) and data.signal_pattern.dtype == np.float32
    assert data.distractor_patterns.shape == (k, h, w, 1)
    assert data.support.shape == (h, w, 1) and data.support.dtype == bool
    assert data.signal_amplitude.shape == (n,) and data.distractor_amplitude.shape == (n, k)

    other = signal_distractor(5, shape=(10, 12), n_distractors=0)
    assert other.x.shape == (5, 10, 12, 1) and other.distractor_patterns.shape == (0, 10, 12, 1)


def test_deterministic_given_seed_and_patterns_shared_across_seeds():
    a, b = signal_distractor(50, seed=7), signal_distractor(50, seed=7)
    c = signal_distractor(50, seed=8)
    for field in ("x", "labels", "signal", "signal_pattern", "distractor_patterns", "support"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x, c.x)
    # Train and test sets drawn with different seeds must share the generative patterns.
    np.testing.assert_array_equal(a.signal_pattern, c.signal_pattern)
    np.testing.assert_array_equal(a.distractor_patterns, c.distractor_patterns)
    d = signal_distractor(50, seed=7, pattern_seed=1)
    assert not np.array_equal(a.distractor_patterns, d.distractor_patterns)


def test_signal_is_signal_pattern_times_documented_amplitude(data):
    y = data.signal_amplitude
    np.testing.assert_array_equal(np.sign(y), 2 * data.labels - 1)
    assert 0.5 <= np.abs(y).min() and np.abs(y).max() <= 1.5
    expected = (y[:, None, None, None] * data.signal_pattern.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(data.signal, expected, rtol=1e-6, atol=1e-7)
    # Both classes present in roughly equal numbers.
    assert 0.45 < data.labels.mean() < 0.55


def test_x_decomposes_into_signal_distractors_and_small_noise(data):
    residual = data.x.astype(np.float64) - data.signal - data.distractors
    assert residual.std() == pytest.approx(0.05, rel=0.05)
    assert abs(residual.mean()) < 0.005
    # The distractor component carries no class information.
    for k in range(data.distractor_amplitude.shape[1]):
        assert abs(np.corrcoef(data.distractor_amplitude[:, k], data.labels)[0, 1]) < 0.1
    assert np.std(data.distractor_amplitude) == pytest.approx(1, rel=0.05)


def test_support_is_a_compact_blob_overlapped_by_louder_distractors(data):
    support = data.support[..., 0]
    assert 0.10 <= support.mean() <= 0.15
    np.testing.assert_array_equal(support, data.signal_pattern[..., 0] != 0)
    assert np.all(data.signal_pattern[..., 0][support] >= 0.5)
    # Compact: the support's bounding box is barely larger than the support.
    rows, cols = np.nonzero(support)
    box = (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert support.sum() >= 0.7 * box
    for pattern in data.distractor_patterns[..., 0]:
        on_support = np.abs(pattern[support])
        assert on_support.mean() > 0.5 * np.abs(data.signal_pattern).max()
        assert np.abs(pattern).max() > np.abs(data.signal_pattern).max()
        # Broader than the signal: substantial outside the support too.
        assert np.abs(pattern[~support]).mean() > 0.2


def test_distractors_mislead_the_naive_linear_explanation(data):
    # The least-squares weight vector, the classifier a linear model would learn, is pulled off
    # the signal direction by the distractors, while the signal is a clean linear function
    # of the data.
    x = data.x.reshape(len(data.x), -1).astype(np.float64)
    target = data.signal_amplitude
    weights, *_ = np.linalg.lstsq(x - x.mean(0), target - target.mean(), rcond=None)
    a_s = data.signal_pattern.ravel()
    cosine = abs(weights @ a_s) / np.linalg.norm(weights) / np.linalg.norm(a_s)
    assert cosine < 0.8
    assert np.corrcoef(x @ weights, target)[0, 1] > 0.95


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=0),
        dict(shape=(16,)),
        dict(shape=(1, 16)),
        dict(n_distractors=-1),
        dict(noise=-0.1),
        dict(signal_fraction=0.0),
        dict(distractor_scale=0.0),
    ],
)
def test_bad_arguments(kwargs):
    arguments = dict(n=4)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match="received"):
        signal_distractor(**arguments)


def test_load_digits():
    x, labels = load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    x3, labels3 = load_digits(n_class=3)
    assert set(labels3.tolist()) == {0, 1, 2} and len(x3) == len(labels3)


# --- groundtruth metrics ---------------------------------------------------------------------


def test_signal_cosine_hand_values():
    signal = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [3.0, -4.0], [0.0, 0.0]])
    explanation = np.array([[2.0, 0.0], [1.0, 0.0], [5.0, 0.0], [-3.0, 4.0], [1.0, 1.0]])
    np.testing.assert_allclose(
        signal_cosine(explanation, signal), [1.0, 1 / np.sqrt(2), 0.0, 1.0, 0.0]
    )
    assert not np.any(np.isnan(signal_cosine(np.zeros((2, 2)), signal[:2])))


def test_signal_cosine_on_images_and_shared_signal(data):
    np.testing.assert_allclose(signal_cosine(data.signal, data.signal), 1.0, rtol=1e-12)
    np.testing.assert_allclose(signal_cosine(-data.signal[:5], data.signal_pattern), 1.0, rtol=1e-6)
    orthogonal = np.where(data.support, 0.0, 1.0)
    np.testing.assert_array_equal(
        signal_cosine(np.broadcast_to(orthogonal, data.signal.shape), data.signal), 0.0
    )
    with pytest.raises(ValueError, match=r"\(2000, 16, 16, 1\).*\(16, 16\)"):
        signal_cosine(data.signal, np.zeros((16, 16)))
    with pytest.raises(ValueError, match="sample axis"):
        signal_cosine(np.zeros(4), np.zeros(4))


def test_topk_precision_of_support_and_complement(data):
    support = data.support
    indicator = np.broadcast_to(support, (3,) + support.shape).astype(float)
    np.testing.assert_array_equal(topk_precision(indicator, support), 1.0)
    np.testing.assert_array_equal(topk_precision(1 - indicator, support), 0.0)
    # The true signal ranks the support first for the positive class only, unless |·| is used.
    signal = data.signal[:50]
    positive = data.labels[:50] == 1
    signed = topk_precision(signal, support)
    np.testing.assert_array_equal(signed[positive], 1.0)
    assert np.all(signed[~positive] < 1.0)
    np.testing.assert_array_equal(topk_precision(signal, support, absolute=True), 1.0)


def test_topk_precision_hand_values():
    attribution = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [-9.0, 0.5, 0.4, 0.3, 0.2]])
    support = np.array([True, False, True, False, False])
    # default k = 2: sample 0 takes features 0, 1 (one hit), sample 1 features 1, 2 (one hit)
    np.testing.assert_allclose(topk_precision(attribution, support), [0.5, 0.5])
    np.testing.assert_allclose(topk_precision(attribution, support, k=3), [2 / 3, 1 / 3])
    np.testing.assert_allclose(topk_precision(attribution, support, k=1), [1.0, 0.0])
    # |·| moves the −9 of sample 1 (on the support) to the top.
    np.testing.assert_allclose(topk_precision(attribution, support, k=1, absolute=True), [1.0, 1.0])
    # Per-sample supports with their own sizes.
    per_sample = np.array([[True, True, True, False, False], [False, False, False, False, True]])
    np.testing.assert_allclose(topk_precision(attribution, per_sample), [1.0, 0.0])
    # Ties are broken by index: all-equal attributions pick the first k features.
    np.testing.assert_allclose(topk_precision(np.ones((1, 5)), support), [0.5])


@pytest.mark.parametrize(
    "attribution, support, k, message",
    [
        (np.zeros((2, 4)), np.ones(5, bool), None, r"\(2, 4\).*\(4,\).*received shape \(5,\)"),
        (np.zeros((2, 4)), np.ones(4, bool), 5, r"k must be an integer in \[1, 4\]"),
        (np.zeros((2, 4)), np.ones(4, bool), 0, r"received 0"),
        (np.zeros((2, 4)), np.zeros(4, bool), None, "empty"),
        (np.zeros(4), np.ones(4, bool), None, "sample axis"),
    ],
)
def test_topk_precision_errors(attribution, support, k, message):
    with pytest.raises(ValueError, match=message):
        topk_precision(attribution, support, k=k)


# --- signal_distractor_series ----------------------------------------------------------------


def test_series_shapes_parts_and_support():
    from pattern_keras.datasets import signal_distractor_series

    data = signal_distractor_series(400, seed=3)
    n, steps, channels, k = 400, 64, 8, 3
    assert data.x.shape == data.signal.shape == (n, steps, channels)
    assert data.x.dtype == data.signal.dtype == np.float32
    assert data.signal_pattern.shape == data.support.shape == (steps, channels)
    assert data.distractor_patterns.shape == (k, steps, channels)
    # x is signal + distractors + noise of the documented size.
    residual = data.x.astype(np.float64) - data.signal - data.distractors
    assert residual.std() == pytest.approx(0.05, rel=0.05)
    y = data.signal_amplitude
    np.testing.assert_array_equal(np.sign(y), 2 * data.labels - 1)
    expected = y[:, None, None] * data.signal_pattern.astype(np.float64)
    np.testing.assert_allclose(data.signal, expected, rtol=1e-6, atol=1e-7)
    # The burst: three adjacent channels around the middle, a quarter of the steps, peak 1.
    steps_on = np.flatnonzero(data.support.any(axis=1))
    channels_on = np.flatnonzero(data.support.any(axis=0))
    assert channels_on.tolist() == [3, 4, 5]
    assert len(steps_on) == steps // 4 and np.all(np.diff(steps_on) == 1)
    assert np.abs(data.signal_pattern).max() == pytest.approx(1.0)
    # Every distractor is louder than the signal and overlaps it in time and channels.
    for pattern in data.distractor_patterns:
        assert np.abs(pattern).max() == pytest.approx(2.0)
        assert np.abs(pattern[data.support]).max() > 0.1


def test_series_deterministic_and_patterns_shared_across_seeds():
    from pattern_keras.datasets import signal_distractor_series

    a, b, c = (signal_distractor_series(30, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    np.testing.assert_array_equal(a.distractor_patterns, c.distractor_patterns)
    with pytest.raises(ValueError, match="steps"):
        signal_distractor_series(3, steps=8)
