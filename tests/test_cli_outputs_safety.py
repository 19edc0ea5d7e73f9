"""The command line never loses a user's file (issue 22): no output is the model, an input or the
pattern file (refused even with --overwrite); other existing files are replaced only with
--overwrite or when a previous run wrote them (the manifest); overlays are
``<stem>.<method>.png``. And a broken image after the first batch of ``fit``, or a ``.keras``
file that is not a zip archive, is one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from pattern_keras import cli
from pattern_keras._cli_output import MANIFEST

REPO = Path(__file__).resolve().parent.parent


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="tiny",
    )


def _images(folder: Path, names, seed: int = 0) -> dict[str, bytes]:
    """Grey 8×8 PNGs; returns their bytes by name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        keras.utils.save_img(folder / name, rng.integers(0, 256, (8, 8, 1)), scale=False)
    return {name: (folder / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety")
    _model().save(folder / "model.keras")
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype(np.float32)
    np.save(folder / "x.npy", x)
    assert cli.main(["fit", str(folder / "model.keras"), str(folder / "x.npy"), "-o",
                     str(folder / "patterns.h5"), "-q"]) == 0  # fmt: skip
    return folder


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(code, err, *fragments):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# ---------------------------------------------------------------------------------------------
# analyze: overlays beside the inputs never replace them


def test_analyze_into_the_input_folder_keeps_every_input(files, tmp_path, capsys):
    """``-o imgs/`` on ``imgs/`` wrote every overlay over its input; now each overlay is
    ``<stem>.<method>.png`` and the inputs are byte for byte unchanged. A second run, which
    sees the first run's overlays as inputs, is refused (an overlay would be an input), even
    with --overwrite."""
    imgs = tmp_path / "imgs"
    before = _images(imgs, ["a.png", "b.png", "c.png"])
    model = files / "model.keras"
    code, _, err = run(["analyze", model, imgs, "-m", "gradient", "-o", imgs, "-q"], capsys)
    assert code == 0, err
    assert {name: (imgs / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in imgs.glob("*.gradient.png")) == [
        "a.gradient.png",
        "b.gradient.png",
        "c.gradient.png",
    ]
    for extra in ([], ["--overwrite"]):
        code, _, err = run(
            ["analyze", model, imgs, "-m", "gradient", "-o", imgs, "-q", *extra], capsys
        )
        refused(code, err, "a.gradient.png", "is the input", "even with --overwrite")
    assert {name: (imgs / name).read_bytes() for name in before} == before


def test_one_image_analyzed_into_its_own_folder(files, tmp_path, capsys):
    """``analyze model cat.png -o .`` replaced the photo with its overlay."""
    before = _images(tmp_path, ["cat.png"])
    code, _, err = run(
        ["analyze", files / "model.keras", tmp_path / "cat.png", "-m", "lrp.z", "-o", tmp_path],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "cat.png").read_bytes() == before["cat.png"]
    assert (tmp_path / "cat.lrp.z.png").exists() and (tmp_path / "grid.png").exists()


def test_an_input_named_grid_keeps_its_overlay_and_is_never_the_grid(files, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    before = _images(imgs, ["grid.png", "x.png"])
    out = tmp_path / "out"
    code, _, err = run(
        ["analyze", files / "model.keras", imgs, "-m", "gradient", "-o", out, "-q"], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.png")) == [
        "grid.gradient.png",
        "grid.png",
        "x.gradient.png",
    ]
    # Into the input folder, the grid would be the input grid.png: refused, even with
    # --overwrite, before anything is written.
    for extra in ([], ["--overwrite"]):
        code, _, err = run(
            ["analyze", files / "model.keras", imgs, "-m", "gradient", "-o", imgs, *extra],
            capsys,
        )
        refused(code, err, "grid.png", "is the input")
    assert sorted(p.name for p in imgs.iterdir()) == ["grid.png", "x.png"]
    assert (imgs / "grid.png").read_bytes() == before["grid.png"]


def test_analyze_replaces_only_its_own_earlier_outputs(files, tmp_path, capsys):
    """A rerun into its own output folder replaces what the first run wrote; a file of the
    user's there (or one changed since) is replaced only with --overwrite."""
    out = tmp_path / "out"
    argv = ["analyze", files / "model.keras", files / "x.npy", "-m", "gradient", "-o", out, "-q"]
    assert run(argv, capsys)[0] == 0
    assert (out / MANIFEST).exists() and (out / "00000.gradient.png").exists()
    assert run(argv, capsys)[0] == 0  # its own files: replaced
    (out / "grid.png").write_bytes(b"the user's own grid")  # changed since: not ours any more
    code, _, err = run(argv, capsys)
    refused(code, err, "grid.png", "was not written by pattern-keras", "--overwrite")
    assert (out / "grid.png").read_bytes() == b"the user's own grid"
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert (out / "grid.png").read_bytes() != b"the user's own grid"


# ---------------------------------------------------------------------------------------------
# fit, import-patterns, merge: the model and the inputs are never the output


def test_fit_never_writes_over_the_model_or_its_data(files, tmp_path, capsys):
    model = tmp_path / "model.h5"
    _model().save(model)
    before = model.read_bytes()
    link = tmp_path / "link.h5"
    link.symlink_to(model)
    hard = tmp_path / "hard.h5"
    os.link(model, hard)
    data = tmp_path / "x.npy"
    data.write_bytes((files / "x.npy").read_bytes())
    for output in (model, link, hard, data):
        for extra in ([], ["--overwrite"]):
            code, _, err = run(["fit", model, data, "-o", output, "-q", *extra], capsys)
            refused(code, err, "is the input", "even with --overwrite")
    assert model.read_bytes() == before and data.read_bytes() == (files / "x.npy").read_bytes()


def test_fit_replaces_an_existing_file_only_if_it_wrote_it(files, tmp_path, capsys):
    out = tmp_path / "p.h5"
    out.write_bytes(b"somebody's file")
    argv = ["fit", files / "model.keras", files / "x.npy", "-o", out, "-q"]
    code, _, err = run(argv, capsys)
    refused(code, err, "p.h5", "was not written by pattern-keras", "--overwrite")
    assert out.read_bytes() == b"somebody's file"
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert run(argv, capsys)[0] == 0  # written by the previous run: replaced


def test_import_patterns_and_merge_never_write_over_their_inputs(files, tmp_path, capsys):
    model = files / "model.keras"
    npz = tmp_path / "inn.npz"
    kernels = [w for w in _model().weights if len(w.shape) > 1]
    np.savez(npz, *[np.ones(w.shape, np.float32) for w in kernels])
    model_bytes, npz_bytes = model.read_bytes(), npz.read_bytes()
    for output in (model, npz):
        code, _, err = run(["import-patterns", model, npz, "-o", output, "--overwrite"], capsys)
        refused(code, err, "is the input")
    assert model.read_bytes() == model_bytes and npz.read_bytes() == npz_bytes
    a = tmp_path / "a.h5"
    a.write_bytes((files / "patterns.h5").read_bytes())
    b = tmp_path / "b.h5"
    assert run(["fit", model, files / "x.npy", "-o", b, "-q"], capsys)[0] == 0
    a_bytes = a.read_bytes()
    code, _, err = run(["merge", a, b, "-o", a, "--overwrite"], capsys)
    refused(code, err, "is the input")
    assert a.read_bytes() == a_bytes


# ---------------------------------------------------------------------------------------------
# Item 15: a broken image after the first batch; a .keras file that is not a zip archive


_FIT_BROKEN = """
import sys
from pattern_keras.cli import main
sys.exit(main(["fit", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "--batch-size", "2", "-q"]))
"""


def test_fit_on_a_folder_with_a_broken_image_after_the_first_batch(files, tmp_path):
    """One line naming the file and exit 2, as for the first batch: no TensorFlow traceback
    (it came through the input pipeline), and no pattern file."""
    imgs = tmp_path / "imgs"
    _images(imgs, [f"im{i}.png" for i in range(6)])
    (imgs / "im4.png").write_bytes((imgs / "im4.png").read_bytes()[:60])  # truncated
    out = tmp_path / "p.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _FIT_BROKEN, str(files / "model.keras"), str(imgs), str(out)],
        env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("pattern-keras")]
    assert len(ours) == 1 and "im4.png" in ours[0] and "could not read image" in ours[0]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()


def test_a_keras_file_that_is_not_a_zip_is_not_reported_missing(files, tmp_path, capsys):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip archive")
    code, _, err = run(["fit", bad, files / "x.npy", "-o", tmp_path / "p.h5"], capsys)
    refused(code, err, "bad.keras", "not a Keras archive")
    assert "not found" not in err.lower()
