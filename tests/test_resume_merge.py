"""Checkpoint/resume of a pattern fit, atomic checkpoint files, and merging shard fits.

A fit killed with SIGKILL (no clean-up runs) and resumed from its last periodic checkpoint
equals the uninterrupted fit; statistics of disjoint shards, each with its own shifts, merge
into the statistics of the whole.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import _fit_worker as worker
import numpy as np
import pytest
from conftest import STATISTICS, assert_close

from pattern_keras.patterns import PatternComputer, PatternStatistics

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120
#: 8 full batches and a partial one: 9 batches.
N_SAMPLES = 8 * worker.BATCH_SIZE + 5
N_BATCHES = 9
KILL_AT = 5


def assert_same_patterns(
    got: PatternStatistics, want: PatternStatistics, rtol_of_max: float | None = None
) -> None:
    """Equal patterns: bit for bit (``None``: the same batches with the same shifts, float64
    sums added in the same order), or to ``rtol_of_max`` of the largest entry (``STATISTICS``:
    other shifts, so other float32 per-batch sums)."""
    assert set(got.layers) == set(want.layers)
    for key in want.layers:
        for a, b, what in zip(got[key].patterns(), want[key].patterns(), ("a+", "a-")):
            if b is None:
                assert a is None
            elif rtol_of_max is None:
                np.testing.assert_array_equal(a, b, err_msg=f"{key} {what}")
            else:
                assert_close(a, b, rtol_of_max, err_msg=f"{key} {what}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    model = worker.build_cnn()
    weights = folder / "cnn.weights.h5"
    model.save_weights(weights)
    x = worker.make_data(N_SAMPLES, seed=1)
    data = folder / "data.npz"
    np.savez(data, x=x)
    whole = PatternComputer(model).compute_statistics(worker.batches(x), verbose=0)
    assert whole.n_batches == N_BATCHES and whole.n_samples == N_SAMPLES
    return {"model": model, "x": x, "weights": weights, "data": data, "whole": whole}


# -- a fit killed mid-way, resumed ----------------------------------------------------------------


def run_killed_fit(setup, checkpoint: Path, log: Path) -> int:
    cmd = [
        sys.executable,
        str(Path(worker.__file__).resolve()),
        "killed",
        "--weights",
        str(setup["weights"]),
        "--data",
        str(setup["data"]),
        "--checkpoint",
        str(checkpoint),
        "--kill-after",
        str(KILL_AT),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        return proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fit did not die within {TIMEOUT_S} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def killed_checkpoint(setup, tmp_path_factory):
    folder = tmp_path_factory.mktemp("killed")
    checkpoint = folder / "fit.h5"
    log = folder / "killed.log"
    code = run_killed_fit(setup, checkpoint, log)
    assert code == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
    return checkpoint


def test_killed_fit_left_a_complete_periodic_checkpoint(killed_checkpoint):
    partial = PatternStatistics.load(killed_checkpoint)
    # Written every 2 batches, and the process died asking for batch KILL_AT.
    assert partial.n_batches in range(2, KILL_AT + 1, 2)
    assert partial.n_samples == partial.n_batches * worker.BATCH_SIZE


def test_resumed_fit_equals_the_uninterrupted_fit(setup, killed_checkpoint, tmp_path):
    checkpoint = tmp_path / "fit.h5"
    checkpoint.write_bytes(killed_checkpoint.read_bytes())
    partial = PatternStatistics.load(checkpoint)
    resumed = PatternComputer(setup["model"]).compute_statistics(
        worker.batches(setup["x"]), verbose=0, checkpoint_path=str(checkpoint), checkpoint_every=2
    )
    # The batches in the checkpoint were skipped, not counted twice.
    assert resumed.n_batches == N_BATCHES and resumed.n_samples == N_SAMPLES
    assert partial.n_batches < N_BATCHES
    assert_same_patterns(resumed, setup["whole"])
    # The final checkpoint is the whole fit, and resuming from it adds nothing.
    final = PatternStatistics.load(checkpoint)
    assert final.n_batches == N_BATCHES
    assert_same_patterns(final, setup["whole"])
    again = PatternComputer(setup["model"]).compute_statistics(
        worker.batches(setup["x"]), verbose=0, checkpoint_path=str(checkpoint)
    )
    assert again.n_samples == N_SAMPLES
    assert_same_patterns(again, setup["whole"])


def test_resume_refuses_another_model_or_pattern_type(setup, killed_checkpoint, tmp_path):
    checkpoint = tmp_path / "fit.h5"
    checkpoint.write_bytes(killed_checkpoint.read_bytes())
    before = checkpoint.read_bytes()
    other_weights = worker.build_cnn(seed=1)
    with pytest.raises(ValueError, match="another model"):
        PatternComputer(other_weights).compute_statistics(
            setup["x"], verbose=0, checkpoint_path=str(checkpoint)
        )
    with pytest.raises(ValueError, match="another pattern type"):
        PatternComputer(setup["model"], pattern_type="linear").compute_statistics(
            setup["x"], verbose=0, checkpoint_path=str(checkpoint)
        )
    with pytest.raises(ValueError, match="another pattern type"):
        PatternComputer(setup["model"], pattern_type={"dense": "linear"}).compute_statistics(
            setup["x"], verbose=0, checkpoint_path=str(checkpoint)
        )
    assert checkpoint.read_bytes() == before  # a refused resume leaves the checkpoint alone


# -- atomic checkpoint files --------------------------------------------------------------------


def test_checkpoint_write_is_atomic(setup, tmp_path, monkeypatch):
    """Checkpoints are built in memory, written to a temporary file in the same folder and
    renamed over the old one: the destination is never opened for writing, and a write that
    fails half-way leaves the previous checkpoint intact and no temporary file behind."""
    import h5py

    checkpoint = tmp_path / "fit.h5"
    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        replaced.append((os.fspath(src), os.fspath(dst)))
        assert os.path.getsize(src) > 0  # written in full before the rename
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    stats = PatternComputer(setup["model"]).compute_statistics(
        worker.batches(setup["x"]), verbose=0, checkpoint_path=str(checkpoint), checkpoint_every=2
    )
    writes = [src for src, _ in replaced]
    assert len(writes) == N_BATCHES // 2 + 1  # every 2 batches, and at the end
    assert str(checkpoint) not in writes and len(set(writes)) == len(writes)
    assert all(Path(w).parent == tmp_path for w in writes)  # same file system: rename is atomic
    assert [dst for _, dst in replaced] == [str(checkpoint)] * len(writes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.h5"]

    # A write that fails half-way (the disk fills up at the 5th array) changes nothing.
    before = checkpoint.read_bytes()
    real_create = h5py.Group.create_dataset
    calls = []

    def failing_create(self, *args, **kwargs):
        calls.append(args[0] if args else kwargs.get("name"))
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    with pytest.raises(OSError, match="No space"):
        stats.save(str(checkpoint))
    monkeypatch.undo()
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.h5"]
    assert PatternStatistics.load(checkpoint).n_batches == stats.n_batches


def test_pattern_files_get_the_usual_permissions(setup, tmp_path):
    """A temporary file is created private (0600); the saved file must not stay so."""
    path = tmp_path / "patterns.h5"
    setup["whole"].save(str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# -- merging shards ------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern_type", ["relu", "linear"])
def test_merged_shards_equal_the_whole(setup, pattern_type, tmp_path):
    model = setup["model"]
    rng = np.random.default_rng(3)
    # Two shards with different distributions, so that each fit picks different shifts.
    first = worker.make_data(70, seed=4, offset=0.5)
    second = worker.make_data(90, seed=5, offset=3.0) * rng.uniform(0.5, 2.0)
    computer = PatternComputer(model, pattern_type=pattern_type)
    a = computer.compute_statistics(first, verbose=0)
    b = computer.compute_statistics(second, verbose=0)
    whole = computer.compute_statistics(np.concatenate([first, second]), verbose=0)
    for key in a.layers:
        assert a[key].shift_x != b[key].shift_x
        assert not np.allclose(a[key].shift_y, b[key].shift_y)
    a_sums = {k: {n: v.copy() for n, v in layer.sums.items()} for k, layer in a.layers.items()}

    merged = a.merge(b)
    assert merged.n_samples == 160 and merged.n_batches == a.n_batches + b.n_batches
    assert_same_patterns(merged, whole, STATISTICS)
    assert_same_patterns(b.merge(a), whole, STATISTICS)  # either order
    for key, layer in a.layers.items():  # the inputs are unchanged
        for name, value in layer.sums.items():
            np.testing.assert_array_equal(value, a_sums[key][name])

    # As on two machines: each shard's statistics saved, loaded and merged.
    a.save(str(tmp_path / "a.h5"))
    b.save(str(tmp_path / "b.h5"))
    from_files = PatternStatistics.load(str(tmp_path / "a.h5")).merge(
        PatternStatistics.load(str(tmp_path / "b.h5"))
    )
    assert_same_patterns(from_files, merged)  # the same merge, saved and read: bit for bit


def test_merge_refuses_other_models_and_pattern_types(setup):
    x = setup["x"][:40]
    mine = PatternComputer(setup["model"]).compute_statistics(x, verbose=0)
    linear = PatternComputer(setup["model"], pattern_type="linear").compute_statistics(x, verbose=0)
    other = PatternComputer(worker.build_cnn(seed=1)).compute_statistics(x, verbose=0)
    with pytest.raises(ValueError, match="pattern type"):
        mine.merge(linear)
    with pytest.raises(ValueError, match="different models"):
        mine.merge(other)
    with pytest.raises(TypeError):
        mine.merge({"dense": None})


# -- refits ------------------------------------------------------------------------------------


def test_refit_reuses_the_traced_step_and_starts_from_zero(setup):
    """A second fit with the same computer traces nothing and counts only its own data."""
    computer = PatternComputer(setup["model"])
    x = setup["x"]
    first = computer.compute_statistics(x[:100], verbose=0)
    state = computer._cached_state
    whole = computer.compute_statistics(worker.batches(x), verbose=0)
    assert computer._cached_state is state
    assert state._step_fn.experimental_get_tracing_count() == 1
    assert whole.n_samples == N_SAMPLES
    assert_same_patterns(whole, setup["whole"])
    again = computer.compute_statistics(x[:100], verbose=0)
    assert_same_patterns(again, first)
    assert again[list(again)[0]].shift_x == first[list(first)[0]].shift_x
