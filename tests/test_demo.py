"""Tests of ``pattern-keras demo`` (pattern_keras.demo): a tiny run, every output checked."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from pattern_keras import demo
from pattern_keras.patterns import Patterns, PatternStatistics

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _summary(path) -> dict[str, str]:
    """``key: value`` lines of summary.txt (comments and blank lines left out)."""
    entries = {}
    for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#") and ": " in line:
            key, value = line.split(": ", 1)
            entries[key] = value
    return entries


def check_outputs(folder: pathlib.Path, n_train: int) -> dict[str, str]:
    """Every file the demo promises exists and is valid; returns the summary's entries."""
    for name in ("explanations.png", "degradation.png"):
        image = mpimg.imread(folder / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
        assert np.ptp(image[..., :3]) > 0, f"{name} is blank"
    patterns = Patterns.load(folder / "patterns.h5")
    assert set(patterns) == {"conv1", "conv2", "dense1", "logits"}
    assert patterns.n_samples == n_train
    assert all(np.all(np.isfinite(patterns[k])) for k in patterns)
    assert PatternStatistics.load(folder / "patterns.h5").n_samples == n_train

    entries = _summary(folder / "summary.txt")
    accuracy = float(entries["test_accuracy"])
    assert 0.0 <= accuracy <= 1.0
    assert int(entries["fit_samples"]) == n_train
    for label in (*demo.DEGRADATION_METHODS, "random"):
        assert np.isfinite(float(entries[f"aopc[{label}]"])), label
    for label in demo.GRID_METHODS:
        for measure in ("signal_cosine", "topk_precision"):
            # Strictly inside (0, 1): 0 is a dead (all-zero) explanation, 1 the signal itself.
            value = float(entries[f"{measure}[{label}]"])
            assert 0.0 < value < 1.0, (measure, label, value)
    rho_lines = {k: v for k, v in entries.items() if k.startswith("rho[")}
    assert mpimg.imread(folder / "signal_quality.png").ndim == 3
    assert set(rho_lines) == {"rho[conv1]", "rho[conv2]", "rho[dense1]", "rho[logits]"}
    for value in rho_lines.values():
        for item in value.split():
            estimator, rho = item.split("=")
            assert 0.0 <= float(rho) <= 1.0 + 1e-9, (estimator, rho)
    return entries


def test_quick_demo_in_process(tmp_path, capsys):
    settings = demo.DemoSettings.quick()
    result = demo.run_demo(tmp_path / "out", settings=settings, seed=0)
    out = capsys.readouterr().out
    folder = tmp_path / "out"
    entries = check_outputs(folder, settings.n_train)
    # What it printed: the steps and where everything went.
    assert "[1/6]" in out and "[6/6]" in out
    assert str(folder.resolve()) in out
    for path in result.files.values():
        assert os.path.basename(path) in out
        assert os.path.exists(path)
    assert result.metrics["fit_samples"] == settings.n_train
    assert set(result.metrics["aopc"]) == {*demo.DEGRADATION_METHODS, "random"}
    # The summary file says what the result says (4 decimals there).
    assert float(entries["test_accuracy"]) == pytest.approx(
        result.metrics["test_accuracy"], abs=1e-4
    )
    for measure in ("aopc", "signal_cosine", "topk_precision"):
        for label, value in result.metrics[measure].items():
            assert float(entries[f"{measure}[{label}]"]) == pytest.approx(value, abs=1e-4)
    for layer, values in result.metrics["rho"].items():
        assert entries[f"rho[{layer}]"] == " ".join(f"{k}={v:.4f}" for k, v in values.items())


def test_quick_setting_from_the_environment(monkeypatch):
    monkeypatch.setenv(demo.QUICK_ENV, "1")
    assert demo._quick_from_env()
    monkeypatch.setenv(demo.QUICK_ENV, "0")
    assert not demo._quick_from_env()
    monkeypatch.delenv(demo.QUICK_ENV)
    assert not demo._quick_from_env()
    assert demo.DemoSettings.quick().n_train < demo.DemoSettings.default().n_train


def test_grid_rows_alternate_classes():
    labels = np.array([0, 0, 0, 1, 0, 1, 1])
    rows = demo._grid_rows(labels, 4)
    assert labels[rows].tolist() == [0, 1, 0, 1]
    assert len(set(rows.tolist())) == 4
    assert len(demo._grid_rows(np.zeros(3, int), 4)) == 3  # one class only, fewer images


def test_demo_command_line(tmp_path):
    """``python -m pattern_keras demo --quick --output DIR`` in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop(demo.QUICK_ENV, None)
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "pattern_keras", "demo", "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert re.search(r"Done in \d+ s\. Wrote to .*demo", result.stdout)
    check_outputs(out, demo.DemoSettings.quick().n_train)
