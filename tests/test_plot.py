"""Tests for pattern_keras.plot (pure numpy + matplotlib, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure

from pattern_keras import plot
from pattern_keras.plot import (
    explanation_grid,
    graymap,
    heatmap,
    overlay,
    project,
    save_figure,
)


def centre(cmap: str = "seismic") -> np.ndarray:
    return np.asarray(matplotlib.colormaps[cmap](0.5))[:3]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- #
# heatmap
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "shape, out_shape",
    [
        ((5, 6), (5, 6, 3)),
        ((5, 6, 3), (5, 6, 3)),
        ((2, 5, 6, 3), (2, 5, 6, 3)),
        ((2, 5, 6, 1), (2, 5, 6, 3)),
    ],
)
def test_heatmap_shapes_and_range(rng, shape, out_shape):
    out = heatmap(rng.normal(size=shape))
    assert out.shape == out_shape
    assert out.dtype == np.float64
    assert np.all(out >= 0) and np.all(out <= 1)


@pytest.mark.parametrize("cmap", ["seismic", "bwr", "coolwarm"])
def test_heatmap_zero_is_exact_centre_colour(cmap):
    out = heatmap(np.zeros((4, 4, 3)), cmap=cmap)
    assert not np.any(np.isnan(out))
    np.testing.assert_array_equal(out, np.broadcast_to(centre(cmap), out.shape))


def test_heatmap_zero_pixels_in_nonzero_map_get_centre(rng):
    a = rng.normal(size=(6, 6))
    a[2, 3] = 0.0
    out = heatmap(a)
    np.testing.assert_array_equal(out[2, 3], centre())


def test_heatmap_positive_uses_only_warm_half(rng):
    a = np.abs(rng.normal(size=(8, 8, 3)))
    a[0, 0] = 0.0
    out = heatmap(a)
    # Upper half of seismic: white -> red -> dark red, i.e. R >= G == B.
    assert np.all(out[..., 0] >= out[..., 2])
    nonzero = a.sum(-1) > 0
    assert np.all(out[..., 0][nonzero] > out[..., 2][nonzero])
    # Exactly the colours of cmap at positions in [0.5, 1].
    cm = matplotlib.colormaps["seismic"]
    s = a.sum(-1)
    pos = 0.5 + 0.5 * np.clip(s / np.percentile(s, 99.5), 0, 1)
    np.testing.assert_array_equal(out, cm(pos)[..., :3])


def test_heatmap_negative_uses_only_cool_half(rng):
    a = -np.abs(rng.normal(size=(8, 8))) - 0.1
    out = heatmap(a)
    assert np.all(out[..., 2] > out[..., 0])


def test_heatmap_symmetric_scaling_mirrors_colours(rng):
    a = rng.normal(size=(7, 9, 3))
    cm = matplotlib.colormaps["seismic"]
    s = a.sum(-1)
    t = np.clip(s / np.percentile(np.abs(s), 99.5), -1, 1)
    pos, neg = heatmap(a), heatmap(-a)
    np.testing.assert_array_equal(pos, cm((1 + t) / 2)[..., :3])
    np.testing.assert_array_equal(neg, cm((1 - t) / 2)[..., :3])
    # For seismic, mirrored positions swap red and blue on the bright side:
    # a +v pixel is (1, g, g) where the -v pixel is (g', g', 1).
    big = np.abs(t) < 0.49  # white->red / white->blue parts of seismic
    red_side = big & (t > 0)
    np.testing.assert_allclose(pos[red_side][:, 0], 1.0)
    np.testing.assert_allclose(neg[red_side][:, 2], 1.0)
    np.testing.assert_allclose(pos[red_side][:, 1], neg[red_side][:, 1], atol=1 / 64)


def test_heatmap_same_magnitude_opposite_sign_mirrored_positions():
    a = np.array([[1.0, -1.0], [0.5, -0.5]])
    out = heatmap(a, cmap="bwr", percentile=100)
    cm = matplotlib.colormaps["bwr"]
    np.testing.assert_array_equal(out[0, 0], cm(1.0)[:3])
    np.testing.assert_array_equal(out[0, 1], cm(0.0)[:3])
    np.testing.assert_array_equal(out[1, 0], cm(0.75)[:3])
    np.testing.assert_array_equal(out[1, 1], cm(0.25)[:3])


def test_heatmap_batch_images_scaled_independently(rng):
    a = rng.normal(size=(1, 5, 5, 2))
    batch = np.concatenate([a, 1000 * a, np.zeros_like(a)])
    out = heatmap(batch)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[2], np.broadcast_to(centre(), out[2].shape))
    np.testing.assert_array_equal(out[0], heatmap(a[0]))


def test_heatmap_percentile_clips_outliers():
    a = np.full((10, 10), 1.0)
    a[0, 0] = 1000.0
    out = heatmap(a, percentile=50)
    cm = matplotlib.colormaps["seismic"]
    np.testing.assert_array_equal(out[5, 5], cm(1.0)[:3])
    np.testing.assert_array_equal(out[0, 0], cm(1.0)[:3])


def test_heatmap_sparse_map_falls_back_to_max():
    a = np.zeros((20, 20))
    a[3, 4] = 2.0  # 99.5th percentile is 0
    out = heatmap(a)
    cm = matplotlib.colormaps["seismic"]
    np.testing.assert_array_equal(out[3, 4], cm(1.0)[:3])
    np.testing.assert_array_equal(out[0, 0], centre())


def test_heatmap_channel_reductions():
    a = np.zeros((1, 1, 3))
    a[0, 0] = [1.0, -3.0, 1.0]
    cm = matplotlib.colormaps["bwr"]
    # sum = -1 -> scaled to -1; abs_sum = 5 -> +1; max_abs = -3 -> -1
    np.testing.assert_array_equal(heatmap(a, "bwr", channel_reduce="sum")[0, 0], cm(0.0)[:3])
    np.testing.assert_array_equal(heatmap(a, "bwr", channel_reduce="abs_sum")[0, 0], cm(1.0)[:3])
    np.testing.assert_array_equal(heatmap(a, "bwr", channel_reduce="max_abs")[0, 0], cm(0.0)[:3])


def test_heatmap_accepts_colormap_object_and_int_input():
    cm = matplotlib.colormaps["coolwarm"]
    out = heatmap(np.array([[0, 2], [-2, 0]], dtype=np.int64), cmap=cm, percentile=100)
    np.testing.assert_array_equal(out[0, 0], cm(0.5)[:3])
    np.testing.assert_array_equal(out[0, 1], cm(1.0)[:3])


# --------------------------------------------------------------------------- #
# graymap
# --------------------------------------------------------------------------- #
def test_graymap_range_and_gray(rng):
    a = rng.normal(size=(3, 6, 7, 3))
    out = graymap(a)
    assert out.shape == (3, 6, 7, 3)
    assert out.min() >= 0 and out.max() <= 1
    assert out.max() == 1.0
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_graymap_magnitude_sign_invariant(rng):
    a = rng.normal(size=(6, 6, 3))
    np.testing.assert_array_equal(graymap(a), graymap(-a))
    m = np.abs(a).sum(-1)
    expected = np.clip(m / np.percentile(m, 99.5), 0, 1)
    np.testing.assert_allclose(graymap(a)[..., 0], expected)


def test_graymap_zero_is_black_no_nan():
    out = graymap(np.zeros((2, 4, 4, 1)))
    assert not np.any(np.isnan(out))
    np.testing.assert_array_equal(out, 0.0)


# --------------------------------------------------------------------------- #
# project
# --------------------------------------------------------------------------- #
def test_project_zero_to_half_and_extremes():
    s = np.zeros((4, 4, 3))
    s[0, 0, 0] = 2.0
    s[1, 1, 2] = -0.5
    out = project(s)
    assert out.shape == (4, 4, 3)
    assert out[2, 2, 1] == 0.5
    assert out[0, 0, 0] == 1.0
    assert out[1, 1, 2] == pytest.approx(0.5 - 0.125)
    s[3, 3, 1] = -2.0
    assert project(s)[3, 3, 1] == 0.0


def test_project_keeps_channels_and_is_per_image(rng):
    s = rng.normal(size=(2, 5, 5, 3))
    s[1] = 50 * s[0]
    out = project(s)
    assert out.shape == s.shape
    np.testing.assert_allclose(out[0], out[1])
    assert out.min() >= 0 and out.max() <= 1
    for i in range(2):
        assert np.isclose(out[i].max(), 1.0) or np.isclose(out[i].min(), 0.0)
    # channels are not mixed: channel order carries over
    np.testing.assert_allclose(out[0], 0.5 + 0.5 * s[0] / np.abs(s[0]).max())


def test_project_constant_zero_is_half_no_nan():
    out = project(np.zeros((2, 3, 3, 1)))
    assert not np.any(np.isnan(out))
    np.testing.assert_array_equal(out, 0.5)


def test_project_absmax_and_input_range():
    s = np.array([[[1.0], [-4.0]]])  # (1, 2, 1)
    out = project(s, absmax=2.0)
    np.testing.assert_allclose(out[..., 0], [[0.75, 0.0]])
    out = project(s, input_range=(-1.0, 1.0))
    np.testing.assert_allclose(out[..., 0], [[0.25, -1.0]])
    out = project(np.stack([s, s]), absmax=[1.0, 4.0])
    np.testing.assert_allclose(out[:, 0, 0, 0], [1.0, 0.625])


def test_project_bad_args():
    with pytest.raises(ValueError, match="absmax"):
        project(np.ones((2, 3, 3, 1)), absmax=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="input_range"):
        project(np.ones((3, 3, 1)), input_range=(1, 0))
    with pytest.raises(ValueError, match="rank 5"):
        project(np.ones((1, 2, 3, 3, 1)))


# --------------------------------------------------------------------------- #
# overlay
# --------------------------------------------------------------------------- #
def test_overlay_alpha_extremes_rgb(rng):
    img = rng.uniform(-3, 250, size=(6, 6, 3))
    att = rng.normal(size=(6, 6, 3))
    norm = (img - img.min()) / (img.max() - img.min())
    np.testing.assert_allclose(overlay(img, att, alpha=0.0), norm)
    np.testing.assert_array_equal(overlay(img, att, alpha=1.0), heatmap(att))
    mid = overlay(img, att, alpha=0.25)
    np.testing.assert_allclose(mid, 0.75 * norm + 0.25 * heatmap(att))


def test_overlay_grayscale_and_batch(rng):
    img = rng.uniform(0, 255, size=(2, 5, 5, 1))
    att = rng.normal(size=(2, 5, 5))[..., None]
    out = overlay(img, att, alpha=0.0)
    assert out.shape == (2, 5, 5, 3)
    for i in range(2):
        g = (img[i, ..., 0] - img[i].min()) / (img[i].max() - img[i].min())
        for c in range(3):
            np.testing.assert_allclose(out[i, ..., c], g)
    out2d = overlay(img[0, ..., 0], att[0, ..., 0], alpha=1.0)
    np.testing.assert_array_equal(out2d, heatmap(att[0, ..., 0]))


def test_overlay_errors(rng):
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.ones((4, 4, 3)), np.ones((4, 4)), alpha=1.5)
    with pytest.raises(ValueError, match=r"spatial size.*\(4, 4, 3\).*\(5, 4\)"):
        overlay(np.ones((4, 4, 3)), np.ones((5, 4)))
    with pytest.raises(ValueError, match="1 \\(grayscale\\) or 3 \\(RGB\\) channels"):
        overlay(np.ones((4, 4, 2)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="N=2.*N=3"):
        overlay(np.ones((2, 4, 4, 1)), np.ones((3, 4, 4, 1)))


# --------------------------------------------------------------------------- #
# explanation_grid / save_figure
# --------------------------------------------------------------------------- #
def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_grid_rgb_layout_titles_and_savefig(rng, tmp_path):
    images = rng.uniform(0, 1, size=(3, 8, 8, 3))
    expl = {
        "gradient": rng.normal(size=(3, 8, 8, 3)),
        "pattern.net": rng.normal(size=(3, 8, 8, 3)),
        "pattern.attribution": rng.normal(size=(3, 8, 8, 3)),
    }
    fig = explanation_grid(
        images, expl, kinds={"gradient": "graymap"}, row_labels=["a", "b", "c"], title="T"
    )
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 4 + 1  # the grid, then the colour bar
    grid = fig.axes[:12]
    assert [ax.get_title() for ax in grid[:4]] == [
        "Input",
        "gradient",
        "pattern.net",
        "pattern.attribution",
    ]
    assert all(ax.get_title() == "" for ax in grid[4:])
    for ax in grid:
        assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0
    assert [grid[i * 4].get_ylabel() for i in range(3)] == ["a", "b", "c"]
    assert fig.get_suptitle() == "T"

    # Rendered data per column: graymap, heatmap (PatternNet is signed like the others too).
    shown = [ax.get_images()[0].get_array() for ax in grid[:4]]
    np.testing.assert_allclose(shown[1], graymap(expl["gradient"])[0])
    np.testing.assert_allclose(shown[2], heatmap(expl["pattern.net"])[0])
    np.testing.assert_allclose(shown[3], heatmap(expl["pattern.attribution"])[0])

    path = tmp_path / "sub" / "dir" / "grid.png"
    fig.savefig(tmp_path / "direct.png")
    assert (tmp_path / "direct.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_figure(fig, path, dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_grayscale_inputs(rng, tmp_path):
    images = rng.uniform(0, 255, size=(2, 6, 6, 1))
    expl = {
        "PatternNet": rng.normal(size=(2, 6, 6, 1)),
        "PatternAttribution": rng.normal(size=(2, 6, 6)),
    }
    fig = explanation_grid(images, expl, kinds={"PatternNet": "project"})
    assert len(fig.axes) == 2 * 3 + 1
    assert _titles(fig)[:3] == ["Input", "PatternNet", "PatternAttribution"]
    shown = fig.axes[1].get_images()[0].get_array()
    assert shown.shape == (6, 6, 3)  # grayscale signal shown as gray RGB
    np.testing.assert_allclose(shown[..., 0], project(expl["PatternNet"])[0, ..., 0])
    save_figure(fig, tmp_path / "gray.png")
    assert (tmp_path / "gray.png").stat().st_size > 0


def test_grid_single_image(rng):
    fig = explanation_grid(
        rng.uniform(size=(5, 5, 3)), {"m": rng.normal(size=(5, 5, 3))}, colorbar=False
    )
    assert len(fig.axes) == 2


def test_grid_colorbar_is_symmetric_and_keyed(rng):
    """Signed maps: one colour bar from -max to +max with white at 0 and the sign key."""
    images = rng.uniform(size=(2, 5, 5, 1))
    fig = explanation_grid(images, {"m": rng.normal(size=(2, 5, 5, 1))})
    bar_ax = fig.axes[-1]
    bar = bar_ax._colorbar
    assert (bar.norm.vmin, bar.norm.vmax) == (-1.0, 1.0)
    assert list(bar.get_ticks()) == [-1.0, 0.0, 1.0]
    assert "red = positive, blue = negative" in bar_ax.get_ylabel()
    # Zero is the colormap's centre (white for seismic), as in heatmap().
    np.testing.assert_allclose(bar.cmap(bar.norm(0.0))[:3], heatmap(np.zeros((2, 2)))[0, 0])
    # Magnitude-only maps get no signed colour bar.
    fig = explanation_grid(images, {"m": rng.normal(size=(2, 5, 5, 1))}, kinds={"m": "graymap"})
    assert len(fig.axes) == 2 * 2


def test_default_kind_names():
    # PatternNet is signed and drawn like every other method (its sign flips with the class).
    assert plot._default_kind("pattern.net") == "heatmap"
    assert plot._default_kind("PatternNet") == "heatmap"
    assert plot._default_kind("pattern.attribution") == "heatmap"
    assert plot._default_kind("gradient") == "heatmap"


def test_grid_errors(rng):
    images = rng.uniform(size=(3, 4, 4, 3))
    good = rng.normal(size=(3, 4, 4, 3))
    with pytest.raises(ValueError, match=r"holds 2 explanation\(s\) but images holds 3"):
        explanation_grid(images, {"m": good[:2]})
    with pytest.raises(ValueError, match=r"spatial size \(5, 4\) but the images are \(4, 4\)"):
        explanation_grid(images, {"m": rng.normal(size=(3, 5, 4, 3))})
    with pytest.raises(ValueError, match="unknown kind 'contour'"):
        explanation_grid(images, {"m": good}, kinds={"m": "contour"})
    with pytest.raises(ValueError, match="not present in explanations"):
        explanation_grid(images, {"m": good}, kinds={"other": "heatmap"})
    with pytest.raises(ValueError, match="row_labels.*expected 3, received 2"):
        explanation_grid(images, {"m": good}, row_labels=["a", "b"])
    with pytest.raises(ValueError, match=r"1 \(grayscale\) or 3 \(RGB\).*x\[\.\.\., None\]"):
        explanation_grid(rng.uniform(size=(3, 4, 4)), {"m": good})
    with pytest.raises(ValueError, match=r"rank 5 with shape \(1, 3, 4, 4, 3\)"):
        explanation_grid(images[None], {"m": good})
    with pytest.raises(ValueError, match=r"received shape \(4, 4\)"):
        explanation_grid(images, {"m": rng.normal(size=(4, 4))})


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
def test_bad_inputs_raise_informative_errors():
    with pytest.raises(ValueError, match=r"\(H, W\), \(H, W, C\) or \(N, H, W, C\).*shape \(5,\)"):
        heatmap(np.ones(5))
    with pytest.raises(ValueError, match=r"rank 5"):
        graymap(np.ones((1, 2, 3, 4, 5)))
    with pytest.raises(ValueError, match="unknown channel_reduce 'mean'.*abs_sum"):
        heatmap(np.ones((3, 3, 2)), channel_reduce="mean")
    with pytest.raises(ValueError, match="unknown channel_reduce"):
        graymap(np.ones((3, 3, 2)), channel_reduce="l2")
    with pytest.raises(ValueError, match="percentile"):
        heatmap(np.ones((3, 3)), percentile=0)
    with pytest.raises(ValueError, match="colormap"):
        heatmap(np.ones((3, 3)), cmap="no-such-map")
    with pytest.raises(ValueError, match="non-finite"):
        heatmap(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="empty"):
        project(np.zeros((0, 3, 3)))
