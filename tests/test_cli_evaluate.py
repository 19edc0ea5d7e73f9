"""``pattern-keras evaluate``: the evidence table from the command line."""

from __future__ import annotations

import csv
import warnings

import keras
import numpy as np
import pytest

import pattern_keras as pk
from pattern_keras import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    x = np.random.default_rng(0).normal(size=(40, 8, 8, 1)).astype(np.float32)
    model_path, data_path, patterns_path = (
        str(folder / "model.keras"),
        str(folder / "x.npy"),
        str(folder / "p.h5"),
    )
    model.save(model_path)
    np.save(data_path, x[:6])
    np.save(str(folder / "fit.npy"), x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.PatternAttribution(model).fit(x, verbose=0).save_patterns(patterns_path)
    return folder, model_path, data_path, patterns_path


def test_evaluate_writes_the_table_and_figures(files, capsys):
    folder, model_path, data_path, patterns_path = files
    out = folder / "out"
    code = cli.main(
        [
            "evaluate",
            model_path,
            data_path,
            "-m",
            "gradient",
            "-m",
            "pattern.attribution",
            "--patterns",
            patterns_path,
            "--fit-data",
            str(folder / "fit.npy"),
            "-o",
            str(out),
            "--steps",
            "3",
            "--subsets",
            "10",
            "--smooth-samples",
            "2",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    with open(out / "evaluation.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert set(rows) == {
        "gradient",
        "pattern.attribution",
        "pattern.attribution (patterns re-fitted)",
        "random order",
    }
    assert rows["gradient"]["mufidelity"] and rows["gradient"]["mprt_spearman_abs"]
    assert rows["pattern.attribution (patterns re-fitted)"]["mprt_spearman_abs"]
    assert not rows["pattern.attribution (patterns re-fitted)"]["aopc"]
    markdown = (out / "evaluation.md").read_text()
    assert markdown.startswith("| method |") and "MuFidelity ↑" in markdown
    for name in ("deletion", "insertion", "cascading_curves", "cascade_grid", "random_logit"):
        assert (out / f"evaluation_{name}.png").stat().st_size > 0


def test_evaluate_refuses_a_pattern_method_without_patterns(files, capsys):
    folder, model_path, data_path, _ = files
    code = cli.main(
        ["evaluate", model_path, data_path, "-m", "pattern.net", "-o", str(folder / "o2")]
    )
    assert code == 2
    assert "needs fitted patterns" in capsys.readouterr().err
    code = cli.main(["evaluate", model_path, data_path, "-m", "nope", "-o", str(folder / "o3")])
    assert code == 2


def test_evaluate_writes_exactly_its_planned_files_and_never_over_an_input(files, capsys):
    """The outputs are checked before any work (the command line's rules, issue 22): not the
    model nor the data, and an existing file only with --overwrite or when pattern-keras
    wrote it; the files planned are the files written."""
    folder, model_path, data_path, _ = files
    out = folder / "plan"
    args = ["evaluate", model_path, data_path, "-m", "gradient", "--steps", "2"]
    args += ["--subsets", "5", "--smooth-samples", "0", "--mode", "cascading", "-q"]
    assert cli.main(args + ["-o", str(out)]) == 0, capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    from pattern_keras.evaluation.report import planned_files

    planned = planned_files(str(out), "evaluation", images=True, modes=("cascading",), smooth=False)
    assert written == sorted(p.split("/")[-1] for p in planned)
    # A second run replaces what the first wrote; a file it did not write is kept.
    assert cli.main(args + ["-o", str(out)]) == 0
    (out / "evaluation.csv").write_text("mine")
    assert cli.main(args + ["-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "evaluation.csv").read_text() == "mine"
    # The data file as an output is refused even with --overwrite (a link to it as well).
    (out / "evaluation.md").unlink()
    (out / "evaluation.md").symlink_to(data_path)
    before = np.load(data_path)
    assert cli.main(args + ["-o", str(out), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(data_path), before)
