"""The segmentation example (``examples/segmentation.py``), run once with ``quick=True``.

A tiny U-Net (UpSampling2D, Concatenate skips, a per-pixel softmax) is trained for one epoch on
generated squares and discs; a class over a region is explained by an output-shaped mask as
``neuron_selection``. Checked: the generated ground truth is consistent; every heatmap has the
input's shape and is finite and non-zero; and, for each analyzer, the explanation of a region
equals the sum of the explanations of its single pixels (``Σ mask ⊙ output`` is linear in the
mask, and the per-pixel explanations are computed independently, one sample per pixel, with
per-sample masks), and of two disjoint regions the sum of the two.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import DEEP_PASS, assert_close

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "segmentation.py"


def load_example():
    spec = importlib.util.spec_from_file_location("segmentation_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    module = load_example()
    return module, module.run(quick=True, verbose=False)


def test_generated_ground_truth():
    module = load_example()
    images, labels, objects = module.make_shapes(20, 16, seed=3)
    assert images.shape == (20, 16, 16, 1) and labels.shape == objects.shape == (20, 16, 16)
    np.testing.assert_array_equal(labels > 0, objects > 0)
    for i in range(20):
        count = objects[i].max()
        assert 1 <= count <= 3
        for k in range(1, count + 1):
            assert len(np.unique(labels[i][objects[i] == k])) == 1  # one class per object
    assert set(np.unique(labels)) == {0, 1, 2}
    # Shapes are brighter than the background on average (the noise has mean 0).
    assert images[..., 0][labels > 0].mean() > images[..., 0][labels == 0].mean() + 0.5


def test_heatmaps_have_the_input_shape_and_are_finite(example, tmp_path):
    module, result = example
    shape = result["x_test"].shape[1:]
    for region, heatmaps in result["shown"]["heatmaps"].items():
        assert list(heatmaps) == list(module.ANALYZERS)
        for name, heat in heatmaps.items():
            assert heat.shape == shape, (region, name)
            assert np.all(np.isfinite(heat)), (region, name)
            assert np.abs(heat).max() > 0, (region, name)
    for name, (inside, near) in result["table"].items():
        assert 0 <= inside <= near <= 1, name
    module.save_figure(result, tmp_path / "segmentation.png")
    assert (tmp_path / "segmentation.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["Gradient", "LRP-epsilon", "PatternAttribution"])
def test_region_is_the_sum_of_its_pixels(example, name):
    _, result = example
    analyzer = result["analyzers"][name]
    shown = result["shown"]
    i, mask = shown["index"], shown["masks"]["object"]
    x = result["x_test"][i : i + 1]
    region = analyzer.analyze(x, mask, verbose=0)
    # One sample per selected output unit, each with a one-hot mask.
    units = np.argwhere(mask > 0)
    singles = np.zeros((len(units),) + mask.shape, "float32")
    singles[(np.arange(len(units)), *units.T)] = 1.0
    per_pixel = analyzer.analyze(np.repeat(x, len(units), axis=0), singles, verbose=0)
    assert_close(region, per_pixel.sum(axis=0, keepdims=True), DEEP_PASS)
    # Two disjoint sets of output units: the object's class over the object, another class
    # over the top half of the image.
    other = np.zeros_like(mask)
    other[: mask.shape[0] // 2, :, (shown["class"] + 1) % mask.shape[-1]] = 1.0
    both = analyzer.analyze(x, mask + other, verbose=0)
    assert_close(both, region + analyzer.analyze(x, other, verbose=0), DEEP_PASS)
