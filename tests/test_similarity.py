"""The similarity measures of the sanity checks against independent references.

SSIM and HOG are written out here loop by loop from their definitions (Wang et al. 2004;
Dalal and Triggs 2005 with scikit-image's conventions), the Spearman correlation is scipy's,
the histogram entropy numpy's histogram and scipy's entropy.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pattern_keras.evaluation.similarity import (
    explanation_maps,
    histogram_entropy,
    hog_features,
    hog_similarity,
    similarity,
    spearman,
    ssim,
)


def _maps(n=3, h=9, w=11, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, h, w))
    b = 0.6 * a + rng.normal(size=(n, h, w))
    return a, b


def _ssim_reference(a, b, window):
    """SSIM of one pair, every window written out: maps scaled by their peak, data range 2,
    sample (co)variances, the mean over windows that lie inside the map."""
    a = a / np.abs(a).max()
    b = b / np.abs(b).max()
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    pad = window // 2
    values = []
    for i in range(pad, a.shape[0] - pad):
        for j in range(pad, a.shape[1] - pad):
            pa = a[i - pad : i + pad + 1, j - pad : j + pad + 1].ravel()
            pb = b[i - pad : i + pad + 1, j - pad : j + pad + 1].ravel()
            mx, my = pa.mean(), pb.mean()
            vx, vy = pa.var(ddof=1), pb.var(ddof=1)
            cov = np.cov(pa, pb, ddof=1)[0, 1]
            values.append(
                ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    return np.mean(values)


def _hog_reference(m, orientations, cell, block):
    m = m / np.abs(m).max()
    h, w = m.shape
    hist = np.zeros((h // cell, w // cell, orientations))
    for i in range(h):
        for j in range(w):
            gy = m[i + 1, j] - m[i - 1, j] if 0 < i < h - 1 else 0.0
            gx = m[i, j + 1] - m[i, j - 1] if 0 < j < w - 1 else 0.0
            if i // cell >= h // cell or j // cell >= w // cell:
                continue
            angle = np.degrees(np.arctan2(gy, gx)) % 180
            k = min(int(angle // (180 / orientations)), orientations - 1)
            hist[i // cell, j // cell, k] += np.hypot(gx, gy) / cell**2
    out = []
    for r in range(hist.shape[0] - block + 1):
        for c in range(hist.shape[1] - block + 1):
            v = hist[r : r + block, c : c + block].ravel()
            v = v / np.sqrt(np.sum(v**2) + 1e-10)
            v = np.minimum(v, 0.2)
            out.append(v / np.sqrt(np.sum(v**2) + 1e-10))
    return np.concatenate(out)


def test_spearman_is_scipys_rank_correlation_ties_included():
    a, b = _maps()
    a[0, :3] = 0.0  # ties: average ranks
    ours = spearman(a, b)
    expected = [stats.spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


@pytest.mark.parametrize("window", [None, 3, 5])
def test_ssim_matches_the_windowed_definition(window):
    a, b = _maps(h=9, w=11)
    expected = [_ssim_reference(x, y, window or 7) for x, y in zip(a, b)]
    np.testing.assert_allclose(ssim(a, b, window=window), expected, rtol=1e-10)


def test_ssim_default_window_shrinks_to_small_maps():
    a, b = _maps(h=5, w=8)
    expected = [_ssim_reference(x, y, 5) for x, y in zip(a, b)]
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-10)


def test_hog_matches_the_cellwise_definition():
    a, _ = _maps(h=13, w=10)
    features = hog_features(a, orientations=9, cell=3, block=2)
    for i in range(len(a)):
        np.testing.assert_allclose(features[i], _hog_reference(a[i], 9, 3, 2), rtol=1e-10)


def test_hog_similarity_is_the_pearson_correlation_of_the_features():
    a, b = _maps(h=16, w=16)
    fa, fb = hog_features(a), hog_features(b)
    expected = [np.corrcoef(x, y)[0, 1] for x, y in zip(fa, fb)]
    np.testing.assert_allclose(hog_similarity(a, b), expected, rtol=1e-12)


def test_equal_maps_score_exactly_one_and_scale_does_not_matter():
    a, b = _maps()
    result = similarity(a, a)
    for measure, values in result.items():
        assert np.all(values == 1.0), measure
    scaled = similarity(a, 3.0 * a)
    for measure in ("spearman_abs", "spearman", "ssim"):
        np.testing.assert_allclose(scaled[measure], 1.0, rtol=1e-12, err_msg=measure)
    # Sign matters for the signed measures only.
    flipped = similarity(a, -a)
    np.testing.assert_allclose(flipped["spearman_abs"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(flipped["spearman"], -1.0, rtol=1e-12)
    assert np.all(similarity(a, b)["ssim"] < 1)


def test_maps_sum_channels_and_non_images_refuse_image_measures():
    e = np.arange(2 * 4 * 5 * 3, dtype=float).reshape(2, 4, 5, 3)
    np.testing.assert_array_equal(explanation_maps(e), e.sum(axis=-1))
    vectors = np.random.default_rng(0).normal(size=(4, 12))
    assert set(similarity(vectors, vectors)) == {"spearman_abs", "spearman"}
    with pytest.raises(ValueError, match="not images"):
        similarity(vectors, vectors, measures=["ssim"])
    with pytest.raises(ValueError, match="measures"):
        similarity(vectors, vectors, measures=["cosine"])


def test_constant_maps_give_nan_not_a_number_made_up():
    a, b = _maps()
    b[1] = 0.0
    result = similarity(a, b)
    assert np.isnan(result["spearman"][1]) and np.isnan(result["hog"][1])
    assert np.isfinite(result["spearman"][0])


def test_histogram_entropy_is_the_entropy_of_numpys_histogram():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(4, 7, 9))
    maps[2] = rng.uniform(size=(7, 9)) ** 4
    expected = [stats.entropy(np.histogram(m, bins=100)[0]) for m in maps]
    np.testing.assert_allclose(histogram_entropy(maps), expected, rtol=1e-12)
    assert histogram_entropy(np.zeros((1, 5, 5)))[0] == 0.0
