"""Tests of pattern_keras.evaluation.degradation (image degradation / AOPC)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import PASS, assert_close
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from pattern_keras.evaluation.degradation import (
    DegradationResult,
    image_degradation,
    plot_degradation,
)


class Recorder:
    """A 'model' that keeps every batch it sees and answers probabilities [1 − m, m].

    m is the image's mean clipped to [0, 1], so the curve is known by hand for images in [0, 1].
    """

    def __init__(self):
        self.batches = []

    def __call__(self, batch):
        self.batches.append(np.array(batch))
        m = np.clip(batch.reshape(len(batch), -1).mean(axis=1), 0, 1)
        return np.stack([1 - m, m], axis=1)

    @property
    def images(self):
        return np.concatenate(self.batches)


class Analyzer:
    def __init__(self, attribution):
        self.attribution = attribution

    def analyze(self, x):
        return self.attribution


# --- patches and steps -----------------------------------------------------------------------


def _patch_slices(height, width, size):
    """Raster-ordered (row slice, col slice) of each patch, written out independently."""
    return [
        (slice(r, min(r + size, height)), slice(c, min(c + size, width)))
        for r in range(0, height, size)
        for c in range(0, width, size)
    ]


def test_partial_border_patches_change_exactly_the_ranked_pixels():
    # 10×10 with 3×3 patches: 4×4 = 16 patches, the last row and column 1 pixel wide.
    x = (1.0 + np.arange(100, dtype=np.float32)).reshape(1, 10, 10, 1) / 100
    patches = _patch_slices(10, 10, 3)
    assert len(patches) == 16
    sizes = sorted((p[0].stop - p[0].start) * (p[1].stop - p[1].start) for p in patches)
    assert sizes == [1] + [3] * 6 + [9] * 9

    # One score per patch, put into one pixel of it, so the sum ranks patches in a known,
    # non-raster order (border patches included).
    scores = np.array([5, 16, 2, 9, 12, 1, 14, 3, 7, 11, 4, 15, 8, 13, 6, 10], dtype=float)
    attribution = np.zeros_like(x)
    for score, (rows, cols) in zip(scores, patches):
        attribution[0, rows.start, cols.start, 0] = score
    expected_order = np.argsort(-scores)

    model = Recorder()
    result = image_degradation(model, attribution, x, patch_size=3, fill="zero", batch_size=1)
    assert result.n_patches == 16
    assert result.curve.shape == (17,) and result.per_image.shape == (1, 17)
    images = model.images[:, :, :, 0]
    assert images.shape == (17, 10, 10)
    np.testing.assert_array_equal(images[0], x[0, :, :, 0])
    for step in range(17):
        expected = np.zeros((10, 10), bool)
        for patch in expected_order[:step]:
            expected[patches[patch]] = True
        np.testing.assert_array_equal(images[step] == 0, expected, err_msg=f"step {step}")
        np.testing.assert_array_equal(images[step][~expected], x[0, :, :, 0][~expected])


def test_steps_bounds():
    x = np.random.default_rng(0).uniform(size=(2, 10, 10, 1)).astype(np.float32)
    attribution = x.copy()
    assert image_degradation(Recorder(), attribution, x, patch_size=3).curve.shape == (17,)
    full = image_degradation(Recorder(), attribution, x, patch_size=3, steps=16)
    assert full.curve.shape == (17,) and full.steps == 16
    five = image_degradation(Recorder(), attribution, x, patch_size=3, steps=5)
    assert five.per_image.shape == (2, 6)
    np.testing.assert_allclose(five.per_image, full.per_image[:, :6])
    none = image_degradation(Recorder(), attribution, x, patch_size=3, steps=0)
    assert none.curve.shape == (1,) and np.isnan(none.aopc)
    for bad in (17, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"steps must be .*\[0, 16\].*received"):
            image_degradation(Recorder(), attribution, x, patch_size=3, steps=bad)


def test_patch_larger_than_image_is_one_patch():
    x = np.full((1, 4, 5, 1), 0.8, np.float32)
    result = image_degradation(Recorder(), x, x, patch_size=9, fill="zero")
    assert result.n_patches == 1
    np.testing.assert_allclose(result.curve, [0.8, 0.0], rtol=1e-6)


def test_curve_and_aopc_by_hand():
    # 2×2 ones, 1×1 patches, zero fill: m falls 1, .75, .5, .25, 0 whatever the order.
    x = np.ones((1, 2, 2, 1), np.float32)
    result = image_degradation(Recorder(), x, x, patch_size=1, fill="zero")
    np.testing.assert_allclose(result.curve, [1, 0.75, 0.5, 0.25, 0])
    assert result.aopc == pytest.approx((0.25 + 0.5 + 0.75 + 1) / 4)
    np.testing.assert_allclose(result.aopc_per_image, [result.aopc])
    assert result.target.tolist() == [1]


def test_batch_size_does_not_change_the_result():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(5, 7, 7, 2)).astype(np.float32)
    attribution = rng.normal(size=x.shape)
    results = [
        image_degradation(Recorder(), attribution, x, patch_size=3, fill="uniform", batch_size=b)
        for b in (1, 4, 64)
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other.per_image, results[0].per_image)


# --- ranking against a model with known evidence ---------------------------------------------


def _evidence_model_and_data(n=16):
    """Class 1 iff the 12 pixels of three known 2×2 patches are bright; returns the mask too."""
    rng = np.random.default_rng(0)
    known = np.zeros((8, 8), bool)
    known[0:2, 2:4] = known[4:6, 4:6] = known[6:8, 0:2] = True
    x = rng.uniform(0, 1, size=(n, 8, 8, 1))
    x[:, known] = rng.uniform(2, 3, size=(n, known.sum(), 1))
    kernel = np.zeros((64, 2), np.float32)
    kernel[known.ravel(), 1] = 2.0
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.layers[-1].set_weights([kernel, np.array([40.0, 0.0], np.float32)])
    return model, x.astype(np.float32), known


def test_oracle_ranking_falls_faster_than_random_and_least_relevant():
    model, x, known = _evidence_model_and_data()
    oracle = np.broadcast_to(known[None, :, :, None], x.shape).astype(np.float32)
    best = image_degradation(model, oracle, x, patch_size=2)
    rand = image_degradation(model, None, x, patch_size=2, order="random")
    worst = image_degradation(model, oracle, x, patch_size=2, order="least_relevant")
    assert np.all(best.target == 1)
    assert best.curve[0] > 0.99
    # The oracle removes all evidence in 3 steps.
    assert best.curve[3] < 0.01
    assert rand.curve[3] > 0.1
    assert best.aopc > rand.aopc + 0.2
    assert rand.aopc > worst.aopc + 0.2
    # Every order ends with every patch replaced, hence at the same point.
    assert_close([rand.curve[-1], worst.curve[-1]], [best.curve[-1]] * 2, PASS)


def test_analyzer_forms_agree():
    model, x, known = _evidence_model_and_data(n=4)
    attribution = x * np.where(known, 1.0, 0.0)[None, :, :, None].astype(np.float32)
    results = [
        image_degradation(model, form, x, patch_size=2, steps=6)
        for form in (attribution, lambda images: images * (attribution / x), Analyzer(attribution))
    ]
    for other in results[1:]:
        assert_close(other.per_image, results[0].per_image, PASS)


def test_random_order_is_seeded_and_a_permutation_per_image():
    x = np.tile(np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1), (3, 1, 1, 1))

    def replacement_order(seed):
        model = Recorder()
        image_degradation(
            model, None, x, patch_size=1, order="random", seed=seed, fill="zero", batch_size=1
        )
        # 3 clean images, then steps 1..16 of each image in turn.
        zeroed = np.concatenate(
            [np.zeros((3, 1, 16), bool), model.images[3:].reshape(3, 16, 16) == 0], axis=1
        )
        newly = zeroed[:, 1:] & ~zeroed[:, :-1]
        assert np.all(newly.sum(axis=2) == 1)  # one pixel per step
        return np.argmax(newly, axis=2)  # (3, 16): pixel replaced at each step

    a, b, c = replacement_order(0), replacement_order(0), replacement_order(1)
    for row in a:
        assert sorted(row.tolist()) == list(range(16))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])


# --- model outputs ---------------------------------------------------------------------------


def _dense_pair():
    rng = np.random.default_rng(3)
    inputs = keras.Input((6, 6, 1))
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(3)
    logits = dense(flat)
    dense.set_weights([rng.normal(size=(36, 3)).astype(np.float32), np.zeros(3, np.float32)])
    return keras.Model(inputs, logits), keras.Model(inputs, keras.layers.Softmax()(logits))


def test_curve0_is_the_unperturbed_probability():
    _, probabilities_model = _dense_pair()
    x = np.random.default_rng(4).uniform(size=(7, 6, 6, 1)).astype(np.float32)
    probabilities = np.asarray(probabilities_model(x, training=False))
    result = image_degradation(probabilities_model, x, x, patch_size=2, steps=3)
    np.testing.assert_array_equal(result.target, probabilities.argmax(axis=1))
    assert_close(result.per_image[:, 0], probabilities.max(axis=1), PASS)
    assert result.curve[0] == pytest.approx(probabilities.max(axis=1).mean(), rel=1e-5)


def test_logits_and_softmax_models_give_the_same_curve():
    logits_model, probabilities_model = _dense_pair()
    x = np.random.default_rng(5).uniform(size=(6, 6, 6, 1)).astype(np.float32)
    attribution = np.random.default_rng(6).normal(size=x.shape)
    from_logits = image_degradation(logits_model, attribution, x, patch_size=2)
    from_probabilities = image_degradation(probabilities_model, attribution, x, patch_size=2)
    forced = image_degradation(
        probabilities_model, attribution, x, patch_size=2, output="probabilities"
    )
    assert_close(from_logits.per_image, from_probabilities.per_image, PASS)
    np.testing.assert_array_equal(forced.per_image, from_probabilities.per_image)
    # A softmax over probabilities flattens them: forcing "logits" on it must differ.
    double = image_degradation(probabilities_model, attribution, x, patch_size=2, output="logits")
    assert not np.allclose(double.per_image, from_probabilities.per_image, atol=1e-3)


# --- fills -----------------------------------------------------------------------------------


def _whole_image_fill(x, fill, **kwargs):
    """The image the model sees once the single patch covering x is replaced."""
    model = Recorder()
    size = max(x.shape[1:3])
    image_degradation(model, x, x, patch_size=size, fill=fill, batch_size=len(x), **kwargs)
    return model.batches[1]


def test_mean_fill_is_the_per_channel_image_mean():
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(2, 5, 5, 2)).astype(np.float32)
    x[..., 1] += 3
    filled = _whole_image_fill(x, "mean")
    expected = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    np.testing.assert_allclose(filled, expected, rtol=1e-6)


def test_zero_fill():
    x = np.random.default_rng(8).uniform(1, 2, size=(2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(_whole_image_fill(x, "zero"), 0)


def test_uniform_fill_is_seeded_noise_within_each_image_range():
    x = np.random.default_rng(9).uniform(size=(2, 6, 6, 1)).astype(np.float32)
    x[1] = 10 + 5 * x[1]
    a = _whole_image_fill(x, "uniform", seed=0)
    for image, filled in zip(x, a):
        assert image.min() <= filled.min() and filled.max() <= image.max()
        assert filled.std() > 0.1 * image.std()
    np.testing.assert_array_equal(a, _whole_image_fill(x, "uniform", seed=0))
    assert not np.allclose(a, _whole_image_fill(x, "uniform", seed=1))
    # The noise does not depend on whether the order is random too.
    model = Recorder()
    image_degradation(model, None, x, patch_size=6, fill="uniform", order="random", batch_size=2)
    np.testing.assert_array_equal(model.batches[1], a)


def test_blur_fill_smooths_and_keeps_constants():
    constant = np.full((1, 9, 9, 2), 0.3, np.float32)
    np.testing.assert_allclose(_whole_image_fill(constant, "blur"), constant, rtol=1e-6)

    checker = (np.indices((12, 12)).sum(axis=0) % 2).astype(np.float32)[None, :, :, None]
    blurred = _whole_image_fill(checker, "blur", blur_sigma=1.5)
    assert blurred.std() < 0.1 * checker.std()
    np.testing.assert_allclose(blurred.mean(), 0.5, atol=0.02)

    # One bright pixel far from the border: a normalized, symmetric bump.
    spot = np.zeros((1, 15, 15, 1), np.float32)
    spot[0, 7, 7, 0] = 1
    bump = _whole_image_fill(spot, "blur", blur_sigma=1.0)[0, :, :, 0]
    assert bump.sum() == pytest.approx(1, rel=1e-5)
    np.testing.assert_allclose(bump, bump.T, atol=1e-7)
    np.testing.assert_allclose(bump, bump[::-1, ::-1], atol=1e-7)
    assert bump[7, 7] == bump.max() and bump[7, 9] > 0
    wider = _whole_image_fill(spot, "blur", blur_sigma=2.0)[0, :, :, 0]
    assert wider[7, 7] < bump[7, 7]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=np.zeros((4, 4, 1))), r"rank 4.*\(4, 4, 1\)"),
        (dict(patch_size=0), r"patch_size must be an integer >= 1; received 0"),
        (dict(batch_size=0), r"batch_size must be an integer >= 1"),
        (dict(analyzer=np.zeros((2, 4, 4, 2))), r"shaped like x \(2, 4, 4, 1\).*\(2, 4, 4, 2\)"),
        (dict(analyzer=np.full((2, 4, 4, 1), np.nan)), r"NaN"),
        (dict(analyzer=None), r"analyzer cannot be None"),
        (
            dict(fill="noise"),
            r"fill must be one of 'mean', 'zero', 'uniform', 'blur'; received 'noise'",
        ),
        (dict(order="best"), r"order must be one of .*'random'.*received 'best'"),
        (dict(output="probs"), r"output must be one of"),
        (dict(fill="blur", blur_sigma=0.0), r"blur_sigma must be > 0"),
        (dict(model=lambda b: [b[:, 0, 0], b[:, 0, 0]]), r"single output"),
        (
            dict(model=lambda b: b.reshape(len(b), -1)[:, :1]),
            r"\(batch, classes\) with classes >= 2.*\(2, 1\)",
        ),
    ],
)
def test_bad_inputs_raise_informative_value_errors(kwargs, message):
    x = np.random.default_rng(10).uniform(size=(2, 4, 4, 1)).astype(np.float32)
    arguments = dict(model=Recorder(), analyzer=x, x=x, patch_size=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        image_degradation(**arguments)


def test_uncallable_model_or_analyzer_raise_type_error():
    x = np.zeros((1, 2, 2, 1), np.float32)
    with pytest.raises(TypeError, match="model must be"):
        image_degradation("model", x, x, patch_size=1)
    with pytest.raises(TypeError, match="analyzer must be"):
        image_degradation(Recorder(), "analyzer", x, patch_size=1)


# --- plot ------------------------------------------------------------------------------------


def test_plot_degradation_returns_a_figure_with_one_line_per_result(tmp_path):
    x = np.ones((1, 2, 2, 1), np.float32)
    results = {
        "a": image_degradation(Recorder(), x, x, patch_size=1, fill="zero"),
        "b": image_degradation(Recorder(), x, x, patch_size=1, steps=2, fill="zero"),
    }
    figure = plot_degradation(results, title="degradation")
    assert isinstance(figure, Figure)
    # Constrained layout, so the axis labels are not cut off.
    assert isinstance(figure.get_layout_engine(), ConstrainedLayoutEngine)
    (ax,) = figure.axes
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [5, 3]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), results["a"].curve)

    assert "AOPC 0.625" in ax.get_legend().get_texts()[0].get_text()
    assert ax.get_title() == "degradation"
    figure.savefig(tmp_path / "curve.png")

    other = Figure()
    given = other.add_subplot()
    assert plot_degradation(results, ax=given) is other
    with pytest.raises(ValueError, match="empty"):
        plot_degradation({})
    with pytest.raises(TypeError, match="DegradationResult"):
        plot_degradation({"a": results["a"].curve})
    assert isinstance(results["a"], DegradationResult)


def test_plot_degradation_legend_is_outside_the_curves():
    x = np.ones((1, 2, 2, 1), np.float32)
    results = {
        "a": image_degradation(Recorder(), x, x, patch_size=1, fill="zero"),
        "random": image_degradation(
            Recorder(), x, x, patch_size=1, fill="zero", order="random", seed=0
        ),
    }
    figure = plot_degradation(results)
    figure.canvas.draw()
    (ax,) = figure.axes
    legend = ax.get_legend().get_window_extent()
    axes_box = ax.get_window_extent()
    assert legend.x0 >= axes_box.x1  # beside the axes, hiding no curve
    assert ax.get_lines()[1].get_linestyle() == "--"  # the random baseline stands apart
