"""Insertion, the deletion AUC and MuFidelity against closed forms and direct numpy."""

from __future__ import annotations

import numpy as np
import pytest

from pattern_keras.evaluation import image_degradation, insertion, mufidelity


def mean_model(batch):
    """Probabilities [1 − m, m], m the image's mean in [0, 1]: curves known by hand."""
    m = np.clip(np.asarray(batch).reshape(len(batch), -1).mean(axis=1), 0, 1)
    return np.stack([1 - m, m], axis=1)


def _images(n=3, h=6, w=6, seed=0):
    rng = np.random.default_rng(seed)
    return (0.5 + 0.5 * rng.uniform(size=(n, h, w, 1))).astype(np.float64)


def test_insertion_curve_and_auc_in_closed_form():
    x = _images()
    patch = 2
    n, h, w, _ = x.shape
    result = insertion(mean_model, x, x, patch_size=patch, fill="zero")
    # Patches restored by their summed value, largest first, into a black image: the class-1
    # probability after k steps is the sum of the k largest patch sums over H·W.
    sums = x[..., 0].reshape(n, h // patch, patch, w // patch, patch).sum(axis=(2, 4))
    ranked = -np.sort(-sums.reshape(n, -1), axis=1)
    expected = np.concatenate([np.zeros((n, 1)), np.cumsum(ranked, axis=1)], axis=1) / (h * w)
    np.testing.assert_allclose(result.per_image, expected, rtol=1e-12)
    np.testing.assert_array_equal(result.target, 1)
    steps = expected.shape[1] - 1
    auc = (expected.sum(axis=1) - 0.5 * (expected[:, 0] + expected[:, -1])) / steps
    np.testing.assert_allclose(result.auc_per_image, auc, rtol=1e-12)
    assert result.auc == pytest.approx(auc.mean())
    assert result.curve[-1] == pytest.approx(x.mean(axis=(1, 2, 3)).mean())


def test_insertion_starts_from_the_blurred_image_and_random_order_is_a_baseline():
    x = _images(h=9, w=9)
    blurred = insertion(mean_model, x, x, patch_size=3, steps=0)
    # A blur keeps the mean of an image in its interior; the first point is the blurred image's.
    assert blurred.per_image.shape == (3, 1)
    best = insertion(mean_model, x, x, patch_size=3, fill="zero")
    random = insertion(mean_model, None, x, patch_size=3, fill="zero", order="random")
    assert best.auc > random.auc
    np.testing.assert_allclose(best.curve[-1], random.curve[-1], rtol=1e-12)


def test_deletion_auc_is_the_trapezoid_area_of_its_curve():
    x = _images()
    result = image_degradation(mean_model, x, x, patch_size=2, fill="zero")
    curve = result.per_image
    steps = curve.shape[1] - 1
    direct = np.mean((curve.sum(axis=1) - 0.5 * (curve[:, 0] + curve[:, -1])) / steps)
    assert result.auc == pytest.approx(direct, rel=1e-12)


def _direct_mufidelity(model, x, attribution, result, baseline):
    """Pearson correlation per sample, computed from the result's subsets alone."""
    n = len(x)
    cells = result.cells.reshape(-1)
    scores = []
    for i in range(n):
        clean = model(x[i : i + 1])[0, result.target[i]]
        sums, drops = [], []
        for mask in result.masks[i]:
            removed = mask[cells].reshape(x.shape[1:3] + (1,) if x.ndim == 4 else x.shape[1:])
            perturbed = np.where(removed, baseline[i], x[i])
            drops.append(clean - model(perturbed[None])[0, result.target[i]])
            per_feature = attribution[i].sum(axis=-1) if x.ndim == 4 else attribution[i]
            sums.append(per_feature.reshape(-1)[mask[cells]].sum())
        np.testing.assert_allclose(result.attribution_sums[i], sums, rtol=1e-10)
        np.testing.assert_allclose(result.drops[i], drops, rtol=1e-10, atol=1e-15)
        scores.append(np.corrcoef(sums, drops)[0, 1])
    return np.array(scores)


def test_mufidelity_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(3, 10, 10, 2))
    weights = rng.normal(size=(10, 10, 2, 3))

    def softmax_model(batch):
        logits = np.einsum("nhwc,hwck->nk", np.asarray(batch, dtype=np.float64), weights)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    attribution = rng.normal(size=x.shape)
    result = mufidelity(softmax_model, attribution, x, grid=4, subsets=30, seed=2)
    assert result.masks.shape == (3, 30, 16) and np.all(result.masks.sum(axis=2) == 3)
    baseline = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    direct = _direct_mufidelity(softmax_model, x, attribution, result, baseline)
    np.testing.assert_allclose(result.per_sample, direct, rtol=1e-10)
    assert result.score == pytest.approx(direct.mean())


def test_mufidelity_is_one_for_the_exact_contributions_of_a_linear_score():
    # f = mean of the image: removing a subset costs exactly Σ (x − baseline) / size over it.
    x = _images(h=9, w=9)
    baseline = np.zeros_like(x)
    contributions = (x - baseline) / x[0].size
    result = mufidelity(mean_model, contributions, x, fill="zero", subsets=40)
    np.testing.assert_allclose(result.per_sample, 1.0, rtol=1e-12)
    np.testing.assert_allclose(result.drops, result.attribution_sums, atol=1e-12)
    assert result.masks.shape == (3, 40, 81) and np.all(result.masks.sum(axis=2) == 16)


def test_mufidelity_on_features_each_feature_a_cell():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 12))
    weights = rng.normal(size=(12, 2))

    def model(batch):
        logits = np.asarray(batch) @ weights
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    attribution = rng.normal(size=x.shape)
    result = mufidelity(model, attribution, x, subsets=25, subset_fraction=0.25)
    assert result.grid == 0 and result.masks.shape == (4, 25, 12)
    assert np.all(result.masks.sum(axis=2) == 3)
    baseline = np.broadcast_to(x.mean(axis=1, keepdims=True), x.shape)
    direct = _direct_mufidelity(model, x, attribution, result, baseline)
    np.testing.assert_allclose(result.per_sample, direct, rtol=1e-10)
    with pytest.raises(ValueError, match="blur"):
        mufidelity(model, attribution, x, fill="blur")
    with pytest.raises(ValueError, match="subset_fraction"):
        mufidelity(model, attribution, x, subset_fraction=0)
