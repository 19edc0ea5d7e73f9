"""Tests of the ``pattern-keras`` command line (pattern_keras.cli), mostly in-process."""

from __future__ import annotations

import configparser
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import PASS, SPLIT, STATISTICS, assert_close
from matplotlib import image as mpimg

import pattern_keras as pk
from pattern_keras import cli
from pattern_keras.patterns import Patterns, PatternStatistics

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- fixtures --------------------------------------------------------------------------------


def _gray_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="tiny_gray",
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny grayscale model (.keras and .h5), another model, and data files."""
    folder = tmp_path_factory.mktemp("cli")
    model = _gray_model(0)
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    _gray_model(1).save(folder / "other.keras")
    x = np.random.default_rng(0).normal(size=(20, 8, 8, 1)).astype(np.float32)
    np.save(folder / "x.npy", x)
    np.save(folder / "x_no_channel.npy", x[..., 0])
    np.savez(folder / "x.npz", x=x, y=np.arange(20))
    np.savez(folder / "only.npz", images=x)
    np.savez(folder / "ambiguous.npz", a=x, b=x)
    np.save(folder / "wrong_shape.npy", np.zeros((4, 9, 9, 1), np.float32))
    (folder / "garbage.keras").write_bytes(b"this is not a zip file")
    return {
        "dir": folder,
        "model": str(folder / "model.keras"),
        "model_h5": str(folder / "model.h5"),
        "other": str(folder / "other.keras"),
        "x": x,
        "npy": str(folder / "x.npy"),
        "npy_no_channel": str(folder / "x_no_channel.npy"),
        "npz": str(folder / "x.npz"),
        "only_npz": str(folder / "only.npz"),
        "ambiguous_npz": str(folder / "ambiguous.npz"),
        "wrong_shape": str(folder / "wrong_shape.npy"),
        "garbage": str(folder / "garbage.keras"),
    }


@pytest.fixture(scope="module")
def fitted(files):
    """A pattern file fitted by the CLI on x.npy."""
    path = str(files["dir"] / "patterns.h5")
    assert cli.main(["fit", files["model"], files["npy"], "-o", path, "-q"]) == 0
    return path


def run(argv, capsys):
    """main(argv) -> (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


# --- methods ---------------------------------------------------------------------------------


def test_methods_lists_every_analyzer_with_a_description(capsys):
    code, out, _ = run(["methods"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    names = pk.analyzer_names()
    assert [line.split()[0] for line in lines] == names
    for line in lines:
        assert len(line.split(None, 1)) == 2  # a name and a description
    assert "needs --patterns" in next(l for l in lines if l.startswith("pattern.attribution"))
    # Plain text: none of the docstrings' reST markup.
    assert "`" not in out and ":class:" not in out
    assert "x ⊙ ∂y/∂x" in next(l for l in lines if l.startswith("input_t_gradient"))


def test_help_of_every_subcommand(capsys):
    for command in ("fit", "analyze", "merge", "methods", "demo"):
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0
        assert f"pattern-keras {command}" in out
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "Exit codes" in out


# --- fit -------------------------------------------------------------------------------------


def test_fit_writes_patterns_and_statistics(files, fitted):
    patterns = Patterns.load(fitted)
    model = keras.models.load_model(files["model"], compile=False)
    assert set(patterns) == set(pk.PatternComputer(model).keys) == {"conv", "logits"}
    assert patterns.n_samples == 20
    assert PatternStatistics.load(fitted).n_samples == 20
    # The same as fitting in Python.
    expected = pk.PatternComputer(model).compute(files["x"], verbose=0)
    for key in expected:
        assert_close(patterns[key], expected[key], SPLIT, err_msg=key)


def test_fit_options_and_formats(files, tmp_path, capsys):
    out = tmp_path / "p.h5"
    code, stdout, _ = run(
        [
            "fit",
            files["model_h5"],
            files["npz"],
            "-o",
            out,
            "--pattern-type",
            "linear",
            "--batch-size",
            "8",
            "--steps",
            "2",
        ],
        capsys,
    )
    assert code == 0, stdout
    patterns = Patterns.load(out)
    assert patterns.n_samples == 16  # 2 batches of 8
    assert set(patterns.pattern_types.values()) == {"linear"}
    assert str(out) in stdout
    # The only array of an .npz; a 3-D array gets its channel axis.
    for data in (files["only_npz"], files["npy_no_channel"]):
        assert cli.main(["fit", files["model"], data, "-o", str(out), "-q"]) == 0
        assert Patterns.load(out).n_samples == 20


# --- analyze ---------------------------------------------------------------------------------


def test_analyze_gradient_writes_pngs_and_raw_explanations(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(
        ["analyze", files["model"], files["npy"], "--method", "gradient", "-o", out], capsys
    )
    assert code == 0
    raw = np.load(out / "explanations.npy")
    model = keras.models.load_model(files["model"], compile=False)
    assert_close(raw, pk.Gradient(model).analyze(files["x"]), PASS)
    pngs = sorted(out.glob("0*.png"))
    assert len(pngs) == 20 and pngs[0].name == "00000.gradient.png"
    image = mpimg.imread(pngs[0])
    assert image.shape[:2] == (256, 256)  # 8x8 enlarged 32 times: readable
    assert (out / "grid.png").exists()
    assert "20 overlays (256x256 px), grid.png and explanations.npy" in stdout


@pytest.mark.parametrize("method", ["pattern.attribution", "pattern.net"])
def test_analyze_with_patterns_and_neuron(files, fitted, tmp_path, capsys, method):
    out = tmp_path / "out"
    code, _, err = run(
        [
            "analyze",
            files["model"],
            files["npy"],
            "-m",
            method,
            "--patterns",
            fitted,
            "--neuron",
            "2",
            "-o",
            out,
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    model = keras.models.load_model(files["model"], compile=False)
    analyzer = pk.create_analyzer(
        method, model, patterns=Patterns.load(fitted), neuron_selection_mode="index"
    )
    expected = analyzer.analyze(files["x"], neuron_selection=2)
    assert_close(np.load(out / "explanations.npy"), expected, PASS)
    assert len(list(out.glob("0*.png"))) == 20 and (out / "grid.png").exists()


def test_analyze_with_linear_patterns(files, tmp_path):
    patterns = tmp_path / "linear.h5"
    assert (
        cli.main(
            [
                "fit",
                files["model"],
                files["npy"],
                "-o",
                str(patterns),
                "-q",
                "--pattern-type",
                "linear",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "analyze",
                files["model"],
                files["npy"],
                "-m",
                "pattern.attribution",
                "--patterns",
                str(patterns),
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    assert np.load(out / "explanations.npy").shape == (20, 8, 8, 1)


def _write_images(folder: pathlib.Path, sizes):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(sizes):
        keras.utils.save_img(folder / f"img{i}.png", rng.integers(0, 256, (h, w, 3)), scale=False)
    return folder


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(2, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="logits"),
        ]
    )
    path = tmp_path_factory.mktemp("rgb") / "rgb.keras"
    model.save(path)
    return str(path)


def test_image_folder_is_resized_and_preprocessed(rgb_model, tmp_path):
    folder = _write_images(tmp_path / "images", [(6, 6), (10, 7), (6, 6)])
    model = keras.models.load_model(rgb_model, compile=False)
    # Default size: the model's input size.
    x, names = cli.load_data(str(folder), model=model)
    assert x.shape == (3, 6, 6, 3) and names == ["img0", "img1", "img2"]
    assert x.max() > 1  # values as read, 0..255
    from keras.applications import imagenet_utils

    for mode in ("caffe", "tf", "torch"):
        y, _ = cli.load_data(str(folder), preprocess=mode, model=model)
        assert_close(y, imagenet_utils.preprocess_input(x.copy(), mode=mode), PASS, err_msg=mode)
    y, _ = cli.load_data(str(folder), preprocess="unit", model=model)
    assert_close(y, x / 255, PASS)
    # --image-size overrides, then the model refuses the shape.
    with pytest.raises(cli.UsageError, match=r"shape \(3, 4, 5, 3\).*expects"):
        cli.load_data(str(folder), image_size=(4, 5), model=model)
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "analyze",
                rgb_model,
                str(folder),
                "-m",
                "lrp.epsilon",
                "--preprocess",
                "unit",
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.glob("*.png")) == [
        "grid.png",
        "img0.lrp.epsilon.png",
        "img1.lrp.epsilon.png",
        "img2.lrp.epsilon.png",
    ]


def test_caffe_needs_rgb(files, capsys):
    code, _, err = run(
        [
            "analyze",
            files["model"],
            files["npy"],
            "-m",
            "gradient",
            "--preprocess",
            "caffe",
            "-o",
            files["dir"] / "never",
        ],
        capsys,
    )
    assert_usage_error(code, err, "needs RGB")


# --- merge -----------------------------------------------------------------------------------


def test_merge_of_two_halves_equals_the_fit_on_all(files, fitted, tmp_path, capsys):
    x = files["x"]
    np.save(tmp_path / "a.npy", x[:12])
    np.save(tmp_path / "b.npy", x[12:])
    for part in ("a", "b"):
        assert (
            cli.main(
                [
                    "fit",
                    files["model"],
                    str(tmp_path / f"{part}.npy"),
                    "-o",
                    str(tmp_path / f"{part}.h5"),
                    "-q",
                ]
            )
            == 0
        )
    merged = tmp_path / "merged.h5"
    code, out, _ = run(["merge", tmp_path / "a.h5", tmp_path / "b.h5", "-o", merged], capsys)
    assert code == 0 and "20 samples" in out
    whole, parts = Patterns.load(fitted), Patterns.load(merged)
    assert parts.n_samples == 20
    for key in whole:
        assert_close(parts[key], whole[key], STATISTICS, err_msg=key)  # other shifts
    assert PatternStatistics.load(merged).n_samples == 20


def test_merge_refuses_other_models(files, fitted, tmp_path, capsys):
    other = tmp_path / "other.h5"
    assert cli.main(["fit", files["other"], files["npy"], "-o", str(other), "-q"]) == 0
    code, _, err = run(["merge", fitted, other, "-o", tmp_path / "m.h5"], capsys)
    assert_usage_error(code, err, "cannot merge", "different models")
    code, _, err = run(["merge", fitted, "-o", tmp_path / "m.h5"], capsys)
    assert_usage_error(code, err, "at least two")
    code, _, err = run(["merge", fitted, tmp_path / "missing.h5", "-o", tmp_path / "m.h5"], capsys)
    assert_usage_error(code, err, "missing.h5", "does not exist")
    code, _, err = run(["merge", fitted, files["npy"], "-o", tmp_path / "m.h5"], capsys)
    assert_usage_error(code, err, "x.npy")


# --- errors ----------------------------------------------------------------------------------


ERROR_CASES = {
    "missing model": (
        ["fit", "{dir}/nope.keras", "{npy}", "-o", "{dir}/p.h5"],
        ["nope.keras", "does not exist"],
    ),
    "missing data": (
        ["fit", "{model}", "{dir}/nope.npy", "-o", "{dir}/p.h5"],
        ["nope.npy", "does not exist"],
    ),
    "unreadable model": (
        ["fit", "{garbage}", "{npy}", "-o", "{dir}/p.h5"],
        ["could not load model", "garbage.keras"],
    ),
    "model extension": (["fit", "{npy}", "{npy}", "-o", "{dir}/p.h5"], [".keras or .h5"]),
    "wrong shape": (
        ["analyze", "{model}", "{wrong_shape}", "-m", "gradient", "-o", "{dir}/o"],
        ["shape (4, 9, 9, 1)", "expects (batch, 8, 8, 1)"],
    ),
    "unknown method": (
        ["analyze", "{model}", "{npy}", "-m", "nonsense", "-o", "{dir}/o"],
        ["unknown method 'nonsense'", "gradient"],
    ),
    "pattern method without patterns": (
        ["analyze", "{model}", "{npy}", "-m", "pattern.attribution", "-o", "{dir}/o"],
        ["needs fitted patterns", "--patterns"],
    ),
    "patterns for a gradient": (
        [
            "analyze",
            "{model}",
            "{npy}",
            "-m",
            "gradient",
            "--patterns",
            "{fitted}",
            "-o",
            "{dir}/o",
        ],
        ["only used by"],
    ),
    "patterns of another model": (
        [
            "analyze",
            "{other}",
            "{npy}",
            "-m",
            "pattern.net",
            "--patterns",
            "{fitted}",
            "-o",
            "{dir}/o",
        ],
        ["fitted on another model"],
    ),
    "not a pattern file": (
        [
            "analyze",
            "{model}",
            "{npy}",
            "-m",
            "pattern.net",
            "--patterns",
            "{npy}",
            "-o",
            "{dir}/o",
        ],
        ["x.npy"],
    ),
    "npz key": (
        ["fit", "{model}", "{npz}", "--key", "z", "-o", "{dir}/p.h5"],
        ["no array 'z'", "x, y"],
    ),
    "ambiguous npz": (["fit", "{model}", "{ambiguous_npz}", "-o", "{dir}/p.h5"], ["--key"]),
    "neuron out of range": (
        ["analyze", "{model}", "{npy}", "-m", "gradient", "--neuron", "3", "-o", "{dir}/o"],
        ["--neuron 3 is out of range", "3 output"],
    ),
    "fit output is a folder": (["fit", "{model}", "{npy}", "-o", "{dir}"], ["is a folder"]),
    "image size for arrays": (
        ["fit", "{model}", "{npy}", "-o", "{dir}/p.h5", "--image-size", "8", "8"],
        ["--image-size"],
    ),
    "missing arguments": (["fit", "{model}"], ["required", "DATA"]),
    "bad choice": (
        ["fit", "{model}", "{npy}", "-o", "{dir}/p.h5", "--pattern-type", "x"],
        ["--pattern-type"],
    ),
    "unknown command": (["explain"], ["invalid choice"]),
    "non-positive batch size": (
        ["fit", "{model}", "{npy}", "-o", "{dir}/p.h5", "--batch-size", "0"],
        ["--batch-size"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_usage_errors_exit_2_with_one_line(case, files, fitted, capsys):
    argv, fragments = ERROR_CASES[case]
    names = dict(files, dir=files["dir"], fitted=fitted)
    code, _, err = run([a.format(**names) for a in argv], capsys)
    assert_usage_error(code, err, *fragments)


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run([], capsys)
    assert code == 2 and "usage: pattern-keras" in err


def test_safe_mode_and_unsafe(tmp_path, files, capsys):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    path = tmp_path / "lambda.keras"
    model.save(path)
    argv = ["analyze", path, files["npy"], "-m", "gradient", "-o", tmp_path / "o"]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "safe mode", "--unsafe")
    # With --unsafe the model loads, and its Lambda (made of keras.ops) is looked into: the
    # gradient of y = Dense(2·x) is 2·W of the explained logit.
    code, _, err = run(argv + ["--unsafe"], capsys)
    assert code == 0, err
    assert "Traceback" not in err and "safe mode" not in err
    saved = tmp_path / "o" / "explanations.npy"
    loaded = keras.models.load_model(path, safe_mode=False)
    x = np.load(files["npy"])
    logits = loaded.predict(x, verbose=0)
    kernel = loaded.layers[-1].get_weights()[0]  # (64, 2)
    expected = 2.0 * kernel[:, logits.argmax(axis=1)].T.reshape(x.shape)
    np.testing.assert_allclose(np.load(saved), expected, rtol=1e-5, atol=1e-6)


def test_unexpected_errors_exit_1_in_one_line(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("something broke\nacross lines")

    monkeypatch.setattr(cli, "_cmd_methods", boom)
    code, _, err = run(["methods"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "pattern-keras methods: error: RuntimeError: something broke across lines "
        "(run with --debug for details)"
    ]
    code, _, err = run(["--traceback", "methods"], capsys)
    assert code == 1 and "Traceback" in err


# --- wiring ----------------------------------------------------------------------------------


def test_console_script_entry_point_is_main():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    entry = config["options.entry_points"]["console_scripts"].strip()
    assert entry == "pattern-keras = pattern_keras.cli:main"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_python_dash_m_exit_codes(files, tmp_path):
    """One subprocess: a usage error through ``python -m pattern_keras``."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pattern_keras",
            "analyze",
            files["model"],
            files["npy"],
            "-m",
            "pattern.net",
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "pattern-keras analyze: error: 'pattern.net' needs fitted patterns" in result.stderr


def test_installed_console_script(files, tmp_path):
    """Runs the installed ``pattern-keras`` script, where the package is installed."""
    script = shutil.which("pattern-keras") or (
        os.path.join(os.path.dirname(sys.executable), "pattern-keras")
    )
    if not os.path.exists(script):
        pytest.skip("the package is not installed (no pattern-keras script)")
    result = subprocess.run(
        [script, "fit", files["model"], files["npy"], "-o", str(tmp_path / "p.h5"), "-q"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert Patterns.load(tmp_path / "p.h5").n_samples == 20


def test_non_finite_explanations_exit_1_after_writing(files, tmp_path, monkeypatch, capsys):
    class NaNAnalyzer:
        num_outputs = 3

        def analyze(self, x, neuron_selection=None, batch_size=None, verbose=1):
            out = np.zeros_like(x)
            out[0, 0, 0, 0] = np.nan
            return out

    monkeypatch.setattr(pk, "create_analyzer", lambda name, model, **kw: NaNAnalyzer())
    out = tmp_path / "out"
    code, _, err = run(
        ["analyze", files["model"], files["npy"], "-m", "gradient", "-o", out], capsys
    )
    assert code == 1
    assert err.strip().splitlines() == [
        f"pattern-keras analyze: error: 1 of 20 explanations contain NaN or inf values; they "
        f"are in {out}/explanations.npy as computed and shown as 0 in the PNGs"
    ]
    assert np.isnan(np.load(out / "explanations.npy")).sum() == 1
    assert len(list(out.glob("0*.png"))) == 20
