"""``pattern-keras analyze`` outputs (overlays, grid, arrays; several methods; one image file;
method options; progress) and ``fit`` streaming a folder of images."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from matplotlib import image as mpimg

import pattern_keras as pk
from pattern_keras import _images, cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny grayscale CNN, 12 inputs as .npy and as a folder of 8x8 PNGs (values 0..255)."""
    folder = tmp_path_factory.mktemp("analyze")
    keras.utils.set_random_seed(3)
    # Non-zero biases: without them a ReLU network is positively homogeneous and integrated
    # gradients would not depend on the number of steps.
    bias = keras.initializers.RandomNormal(stddev=0.3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv", bias_initializer=bias),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", name="hidden", bias_initializer=bias),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    model.save(folder / "model.keras")
    pixels = np.random.default_rng(4).integers(0, 256, (12, 8, 8, 1)).astype(np.uint8)
    images = folder / "images"
    images.mkdir()
    for i, image in enumerate(pixels):
        keras.utils.save_img(images / f"digit{i:02d}.png", image, scale=False)
    x = pixels.astype(np.float32) / 255.0
    np.save(folder / "x.npy", x)
    return {
        "dir": folder,
        "model_path": str(folder / "model.keras"),
        "model": model,
        "x": x,
        "images": images,
    }


def analyze(setup, out, *extra, inputs=None):
    argv = [
        "analyze",
        setup["model_path"],
        str(inputs or setup["dir"] / "x.npy"),
        "-o",
        str(out),
        *map(str, extra),
    ]
    return cli.main(argv)


def test_several_methods_write_overlays_grid_and_npz(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert analyze(setup, out, "-m", "gradient", "-m", "lrp.z", "-q") == 0
    assert capsys.readouterr().out == ""  # -q: no progress line, no progress bar
    arrays = np.load(out / "explanations.npz")
    assert sorted(arrays.files) == ["gradient", "lrp.z"]
    np.testing.assert_allclose(
        arrays["gradient"],
        pk.Gradient(setup["model"]).analyze(setup["x"], verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        arrays["lrp.z"],
        pk.LRPZ(setup["model"]).analyze(setup["x"], verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
    assert not (out / "explanations.npy").exists()
    for method in ("gradient", "lrp.z"):
        overlays = sorted(out.glob(f"*.{method}.png"))
        assert len(overlays) == 12
        assert mpimg.imread(overlays[0]).shape[:2] == (256, 256)
    grid = mpimg.imread(out / "grid.png")
    assert grid.shape[0] > 12 * 100  # 12 rows of maps, not a thumbnail


def test_overlay_shows_the_heatmap_on_the_input(setup, tmp_path):
    """The overlay is plot.overlay of input and explanation, enlarged by a whole factor."""
    out = tmp_path / "out"
    assert analyze(setup, out, "-m", "gradient", "-q") == 0
    explanation = np.load(out / "explanations.npy")
    want = pk.plot.overlay(setup["x"][0], explanation[0], alpha=0.6)
    got = mpimg.imread(out / "00000.gradient.png")[..., :3]
    np.testing.assert_allclose(got[::32, ::32], want, atol=1 / 255 + 1e-6)
    assert np.all(got[:32, :32] == got[0, 0])  # one input pixel = one 32x32 block


def test_a_folder_and_a_single_image_file(setup, tmp_path):
    out = tmp_path / "folder"
    assert (
        analyze(setup, out, "-m", "gradient", "-q", "--preprocess", "unit", inputs=setup["images"])
        == 0
    )
    folder_result = np.load(out / "explanations.npy")
    np.testing.assert_allclose(
        folder_result,
        pk.Gradient(setup["model"]).analyze(setup["x"], verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
    assert (out / "digit00.gradient.png").exists() and (out / "grid.png").exists()
    one = tmp_path / "one"
    assert (
        analyze(
            setup,
            one,
            "-m",
            "gradient",
            "-q",
            "--preprocess",
            "unit",
            inputs=setup["images"] / "digit03.png",
        )
        == 0
    )
    np.testing.assert_allclose(
        np.load(one / "explanations.npy"), folder_result[3:4], rtol=1e-5, atol=1e-6
    )
    assert sorted(p.name for p in one.glob("*.png")) == ["digit03.gradient.png", "grid.png"]


@pytest.mark.parametrize(
    "method,options,kwargs",
    [
        ("lrp.epsilon", ["--epsilon", "0.5"], {"epsilon": 0.5}),
        ("lrp.alpha_beta", ["--alpha", "2"], {"alpha": 2.0, "beta": 1.0}),
        ("lrp.alpha_beta", ["--beta", "1"], {"alpha": 2.0, "beta": 1.0}),
        ("integrated_gradients", ["--steps", "3"], {"steps": 3}),
        (
            "smoothgrad",
            ["--samples", "4", "--noise-scale", "0.3"],
            {"samples": 4, "noise_scale": 0.3},
        ),
    ],
)
def test_method_options_reach_the_analyzer(setup, tmp_path, method, options, kwargs):
    out = tmp_path / "out"
    assert analyze(setup, out, "-m", method, *options, "-q") == 0
    got = np.load(out / "explanations.npy")
    want = pk.create_analyzer(method, setup["model"], **kwargs).analyze(setup["x"], verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    default = pk.create_analyzer(method, setup["model"]).analyze(setup["x"], verbose=0)
    assert not np.allclose(got, default, rtol=1e-3, atol=1e-6), "the option changed nothing"


def test_alpha_beta_without_options_is_alpha1_beta0_and_says_so(setup, tmp_path, capsys):
    assert analyze(setup, tmp_path / "o", "-m", "lrp.alpha_beta") == 0
    assert "lrp.alpha_beta (alpha=1, beta=0)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["-m", "gradient", "--epsilon", "0.1"], "--epsilon is only used by lrp.epsilon"),
        (["-m", "lrp.z", "--steps", "4"], "--steps is only used by integrated_gradients"),
        (["-m", "lrp.alpha_beta", "--alpha", "2", "--beta", "2"], "alpha - beta = 1"),
        (["-m", "integrated_gradients", "--steps", "0"], "--steps must be an integer >= 1"),
    ],
)
def test_method_option_errors(setup, tmp_path, capsys, argv, fragment):
    assert analyze(setup, tmp_path / "o", *argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_progress_bar_in_the_api_and_the_cli(setup, tmp_path, capsys):
    analyzer = pk.Gradient(setup["model"])
    analyzer.analyze(setup["x"], batch_size=4, verbose=0)
    assert capsys.readouterr().out == ""
    analyzer.analyze(setup["x"], batch_size=4)
    assert "3/3" in capsys.readouterr().out  # Keras's Progbar, 3 batches
    assert analyze(setup, tmp_path / "o", "-m", "gradient", "--batch-size", "4") == 0
    assert "3/3" in capsys.readouterr().out
    assert analyze(setup, tmp_path / "q", "-m", "gradient", "--batch-size", "4", "-q") == 0
    assert capsys.readouterr().out == ""


# --- fit streams a folder --------------------------------------------------------------------


def test_image_batches_read_one_batch_at_a_time(setup, monkeypatch):
    files, _ = _images.list_images(str(setup["images"]))
    reads = []
    original = _images.read_image
    monkeypatch.setattr(
        _images,
        "read_image",
        lambda file, mode, size: reads.append(file) or original(file, mode, size),
    )
    batches = _images.ImageBatches(files, 5, "grayscale")
    assert len(batches) == 3 and reads == []  # nothing read up front
    assert batches[1].shape == (5, 8, 8, 1) and reads == files[5:10]
    assert batches[2].shape == (2, 8, 8, 1)
    with pytest.raises(IndexError):
        batches[3]


def test_fit_on_a_folder_equals_the_fit_on_the_array(setup, tmp_path):
    folder_fit, array_fit = tmp_path / "folder.h5", tmp_path / "array.h5"
    assert (
        cli.main(
            [
                "fit",
                setup["model_path"],
                str(setup["images"]),
                "-o",
                str(folder_fit),
                "--preprocess",
                "unit",
                "--batch-size",
                "5",
                "-q",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "fit",
                setup["model_path"],
                str(setup["dir"] / "x.npy"),
                "-o",
                str(array_fit),
                "--batch-size",
                "5",
                "-q",
            ]
        )
        == 0
    )
    a, b = pk.Patterns.load(folder_fit), pk.Patterns.load(array_fit)
    assert a.n_samples == b.n_samples == 12
    for key in b:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_fit_refuses_images_of_another_size_in_one_line(setup, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rgb_model = tmp_path / "free.keras"
    keras.Sequential(
        [
            keras.Input((None, None, 1)),
            keras.layers.Conv2D(2, 3),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(2),
        ]
    ).save(rgb_model)
    for i, size in enumerate([(8, 8), (8, 8), (9, 9)]):
        keras.utils.save_img(folder / f"im{i}.png", np.zeros((*size, 1)), scale=False)
    code = cli.main(
        [
            "fit",
            str(rgb_model),
            str(folder),
            "-o",
            str(tmp_path / "p.h5"),
            "--batch-size",
            "2",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "different sizes" in err and "--image-size" in err, err


_MEMORY_SCRIPT = """
import json, resource, sys
from pattern_keras import cli
code = cli.main(["fit", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "--batch-size", "50",
                 "-q"])
print(json.dumps({"code": code,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _peak_kb(model, folder, out):
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(model), str(folder), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, result.stderr
    return report["peak_kb"]


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kB is Linux's")
def test_fit_on_a_folder_keeps_peak_memory_flat(tmp_path):
    """2,000 images of 64x64x3 are 98 MB as float32: loading them all would show; streaming
    50 at a time must not (measured: the README states the numbers)."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(6)
    folders = {}
    for n in (200, 2000):
        folder = tmp_path / f"images{n}"
        folder.mkdir()
        for i in range(n):
            keras.utils.save_img(
                folder / f"{i:04d}.png", rng.integers(0, 256, (64, 64, 3)), scale=False
            )
        folders[n] = folder
    small = _peak_kb(tmp_path / "m.keras", folders[200], tmp_path / "a.h5")
    large = _peak_kb(tmp_path / "m.keras", folders[2000], tmp_path / "b.h5")
    grown_mb = (large - small) / 1024
    print(f"peak RSS: 200 images {small / 1024:.0f} MB, 2000 images {large / 1024:.0f} MB")
    # The 1,800 extra images are 88 MB as float32; the streamed fit must grow by far less.
    assert grown_mb < 30, f"peak memory grew by {grown_mb:.0f} MB"
