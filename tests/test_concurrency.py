"""Fits, swaps of patterns and checkpoints when several things happen at once (issue 22).

Two fits of one computer (two threads) count only their own samples; ``analyze`` in one thread
never mixes the patterns of two fits while another thread swaps them; the patterns handed out
cannot be changed behind the analyzer's back; a file never holds the patterns of one fit beside
the statistics of another; and a checkpoint that one fit writes (another thread, another
process) is refused to a second fit until the first is over or provably dead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import pattern_keras as pk
from pattern_keras.patterns import PatternComputer, Patterns

L = keras.layers
REPO = Path(__file__).resolve().parent.parent
N = 256
BATCH = 16
TIMEOUT_S = 60


def mlp(seed: int = 0) -> keras.Model:
    """Input(5) → Dense 'fc'(8, relu) → Dense 'head'(3): 'head' keeps both regimes."""
    x = keras.Input((5,), name="x")
    h = L.Dense(8, activation="relu", name="fc")(x)
    model = keras.Model(x, L.Dense(3, name="head")(h), name="mlp")
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
    return model


def data(n: int = N, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 1.0, (n, 5)).astype(np.float32)


def batches(x: np.ndarray, barrier: threading.Barrier | None = None, wait_at: int = 1):
    """Batches of ``x``; with ``barrier``, wait there before batch ``wait_at``, so that two fits
    are both under way (each has its accumulators) before either goes on."""
    for i, start in enumerate(range(0, len(x), BATCH)):
        if barrier is not None and i == wait_at:
            barrier.wait()
        yield x[start : start + BATCH]


def in_threads(*calls):
    """Run the calls in threads at once; their results, or re-raise the first error."""
    results, errors = [None] * len(calls), []

    def run(i, call):
        try:
            results[i] = call()
        except BaseException as err:  # re-raised below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def same_statistics(got, want) -> bool:
    return got.n_samples == want.n_samples and all(
        np.array_equal(got[key].sums[name], value)
        for key in want
        for name, value in want[key].sums.items()
    )


def assert_same_statistics(got, want) -> None:
    assert got.n_samples == want.n_samples
    for key in want:
        for name, value in want[key].sums.items():
            np.testing.assert_array_equal(got[key].sums[name], value, err_msg=f"{key} {name}")


# -- item 3: a fit's accumulators belong to that call ------------------------------------------


def test_two_threads_fitting_one_computer_count_only_their_own_samples():
    """Each of two concurrent fits of one PatternComputer equals the same fit made alone, bit
    for bit (before the fix they shared one set of accumulators: 496 or 512 samples each)."""
    model = mlp()
    x1, x2 = data(seed=1), data(seed=2)
    computer = PatternComputer(model)
    alone = [computer.compute_statistics(batches(x), verbose=0) for x in (x1, x2)]
    barrier = threading.Barrier(2, timeout=TIMEOUT_S)
    got = in_threads(
        lambda: computer.compute_statistics(batches(x1, barrier), verbose=0),
        lambda: computer.compute_statistics(batches(x2, barrier), verbose=0),
    )
    for g, want in zip(got, alone):
        assert_same_statistics(g, want)
    # The accumulators of the last fit are kept for the next one: a refit traces nothing.
    state = computer._cached_state
    computer.compute_statistics(batches(x1), verbose=0)
    assert computer._cached_state is state and not state.busy


def test_two_threads_fitting_one_analyzer_leave_one_fit_whole():
    """Two concurrent fits of one analyzer: it ends with the patterns and statistics of one of
    them, whole (its patterns are those statistics' patterns)."""
    model = mlp()
    x1, x2 = data(seed=1), data(seed=2)
    alone = [PatternComputer(model).compute_statistics(batches(x), verbose=0) for x in (x1, x2)]
    analyzer = pk.PatternAttribution(model).fit(batches(x1), verbose=0)  # a refit follows
    barrier = threading.Barrier(2, timeout=TIMEOUT_S)
    in_threads(
        lambda: analyzer.fit(batches(x1, barrier), verbose=0),
        lambda: analyzer.fit(batches(x2, barrier), verbose=0),
    )
    assert analyzer.statistics.n_samples == N
    which = [same_statistics(analyzer.statistics, s) for s in alone]
    assert sum(which) == 1
    want = alone[which.index(True)]
    patterns = want.patterns()
    for key in patterns:
        np.testing.assert_array_equal(analyzer.patterns[key], patterns[key])


# -- item 5: analyze never sees half of a swap -------------------------------------------------


class _Spy(Patterns):
    """Patterns that run ``hook`` every time a layer's pattern is read (set_patterns reads them
    while it checks and while it copies them into the analyzer's variables)."""

    hook = None

    def __getitem__(self, key):
        if self.hook is not None:
            self.hook(key)
        return super().__getitem__(key)


def scaled(patterns: Patterns, factors: dict[str, float], cls=Patterns) -> Patterns:
    return cls(
        {k: patterns[k] * factors[k] for k in patterns},
        negative={
            k: patterns.negative(k) * factors[k] for k in patterns if patterns.has_negative(k)
        },
        pattern_types=patterns.pattern_types,
        n_samples=patterns.n_samples,
        fingerprint=patterns.fingerprint,
    )


def test_analyze_during_set_patterns_sees_the_old_or_the_new_patterns_never_a_mix():
    """An analyze started in another thread at every moment of a swap (each time a pattern is
    read by set_patterns) returns the old explanation or the new one: before the fix, one
    started between two layers' copies mixed the new first layer with the old second."""
    model = mlp()
    x = data(32)
    analyzer = pk.PatternAttribution(model).fit(x, verbose=0)
    old = analyzer.patterns
    new = scaled(old, {"fc": 2.0, "head": -3.0}, cls=_Spy)
    r_old = analyzer.analyze(x, verbose=0)
    reference = pk.PatternAttribution(model, patterns=scaled(old, {"fc": 2.0, "head": -3.0}))
    r_new = reference.analyze(x, verbose=0)
    assert not np.allclose(r_old, r_new)
    results, threads = [], []

    def analyze_now(key):
        thread = threading.Thread(target=lambda: results.append(analyzer.analyze(x, verbose=0)))
        thread.start()
        threads.append(thread)
        thread.join(0.5)  # done, unless it waits for the swap to end

    new.hook = analyze_now
    analyzer.set_patterns(new)
    new.hook = None
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert len(results) == len(threads) >= 4
    for r in results:
        assert np.array_equal(r, r_old) or np.array_equal(r, r_new)
    np.testing.assert_array_equal(analyzer.analyze(x, verbose=0), r_new)


def test_analyze_while_another_thread_swaps_patterns_many_times():
    """A thread analyzing in a loop while another swaps two sets of patterns back and forth:
    every result is one of the two explanations."""
    model = mlp()
    x = data(64)
    analyzer = pk.PatternNet(model).fit(x, verbose=0)
    sets = [analyzer.patterns, scaled(analyzer.patterns, {"fc": 0.5, "head": 4.0})]
    wanted = [pk.PatternNet(model, patterns=p).analyze(x, batch_size=8, verbose=0) for p in sets]
    stop = threading.Event()
    results = []

    def analyze():
        while not stop.is_set():
            results.append(analyzer.analyze(x, batch_size=8, verbose=0))

    def swap():
        try:
            for i in range(60):
                analyzer.set_patterns(sets[i % 2])
        finally:
            stop.set()

    in_threads(analyze, swap)
    assert results
    for r in results:
        assert any(np.array_equal(r, w) for w in wanted)


# -- item 6: the patterns handed out are read-only ---------------------------------------------


def test_patterns_handed_out_are_read_only():
    model = mlp()
    x = data(64)
    analyzer = pk.PatternAttribution(model).fit(x, verbose=0)
    before = analyzer.analyze(x, verbose=0)
    with pytest.raises(ValueError, match="read-only"):
        analyzer.patterns["fc"][...] = 0
    with pytest.raises(ValueError, match="read-only"):
        analyzer.patterns.negative("head")[0] = 1
    with pytest.raises(AttributeError, match="set_patterns"):
        analyzer.patterns = None
    with pytest.raises(AttributeError, match="set_patterns"):
        analyzer.statistics = None
    # Patterns built from a user's arrays copy them: changing the arrays later changes nothing.
    arrays = {k: np.array(analyzer.patterns[k]) for k in analyzer.patterns}
    negative = {"head": np.array(analyzer.patterns.negative("head"))}
    mine = Patterns(arrays, negative=negative, pattern_types=analyzer.patterns.pattern_types)
    arrays["fc"][...] = 0
    negative["head"][...] = 0
    assert np.any(mine["fc"] != 0) and np.any(mine.negative("head") != 0)
    other = pk.PatternAttribution(model, patterns=mine)
    np.testing.assert_array_equal(other.analyze(x, verbose=0), before)


# -- item 4: patterns and statistics of one fit in a file ----------------------------------------


def test_save_after_load_or_set_patterns_writes_no_statistics_of_another_fit(tmp_path):
    model = mlp()
    x, other_x = data(64, seed=1), data(64, seed=7)
    other = pk.PatternAttribution(model).fit(other_x, verbose=0)
    other_file = tmp_path / "other.h5"
    other.save_patterns(str(other_file), include_statistics=False)
    analyzer = pk.PatternAttribution(model).fit(x, verbose=0)
    assert analyzer.statistics is not None
    for swap in (
        lambda: analyzer.load_patterns(str(other_file)),
        lambda: analyzer.set_patterns(other.patterns),
    ):
        analyzer.fit(x, verbose=0)
        swap()
        assert analyzer.statistics is None
        out = tmp_path / "out.h5"
        analyzer.save_patterns(str(out))
        with h5py.File(out, "r") as f:
            assert "statistics" not in f
        saved = Patterns.load(str(out))
        for key in saved:
            np.testing.assert_array_equal(saved[key], other.patterns[key])
    # A fit brings its own statistics back, and the file holds that one fit.
    analyzer.fit(x, verbose=0)
    analyzer.save_patterns(str(out))
    stats = pk.PatternStatistics.load(str(out))
    saved = Patterns.load(str(out))
    for key, value in stats.patterns().items():
        np.testing.assert_array_equal(saved[key], value)
    assert stats.n_samples == saved.n_samples == 64


# -- item 2: a checkpoint is written by one fit at a time --------------------------------------


def test_second_fit_on_a_checkpoint_another_thread_writes_is_refused(tmp_path):
    """While a fit (thread A) writes a checkpoint, a second fit on it (this thread) is refused,
    naming the writer; once A is done, the lock is gone and a fit resumes from A's file."""
    model = mlp()
    x = data()
    checkpoint = tmp_path / "fit.h5"
    lock_file = Path(os.path.realpath(checkpoint) + ".lock")
    started, go = threading.Event(), threading.Event()

    def held():
        for i, start in enumerate(range(0, N, BATCH)):
            if i == 2:
                started.set()
                assert go.wait(TIMEOUT_S)
            yield x[start : start + BATCH]

    computer = PatternComputer(model)
    first = {}
    thread = threading.Thread(
        target=lambda: first.update(
            stats=computer.compute_statistics(
                held(), verbose=0, checkpoint_path=str(checkpoint), checkpoint_every=1
            )
        ),
        name="first-fit",
    )
    thread.start()
    try:
        assert started.wait(TIMEOUT_S)
        assert lock_file.exists()
        with pytest.raises(pk.CheckpointInUseError) as info:
            PatternComputer(model).compute_statistics(x, verbose=0, checkpoint_path=str(checkpoint))
        message = str(info.value)
        assert f"PID {os.getpid()}" in message and "'first-fit'" in message
        assert socket.gethostname() in message and str(lock_file) in message
        with pytest.raises(pk.CheckpointInUseError):  # an analyzer's fit too
            pk.PatternNet(model).fit(x, verbose=0, checkpoint_path=str(checkpoint))
    finally:
        go.set()
        thread.join(TIMEOUT_S)
    assert first["stats"].n_samples == N
    assert not lock_file.exists()
    resumed = PatternComputer(model).compute_statistics(
        x, verbose=0, checkpoint_path=str(checkpoint)
    )
    assert_same_statistics(resumed, first["stats"])


CHILD = """
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
import test_concurrency as t
from pattern_keras.patterns import PatternComputer

checkpoint, ready = sys.argv[2], Path(sys.argv[3])
x = t.data()

def held():
    for i, start in enumerate(range(0, t.N, t.BATCH)):
        if i == 3:
            ready.write_text("ready")
            time.sleep(600)  # until killed
        yield x[start : start + t.BATCH]

PatternComputer(t.mlp()).compute_statistics(
    held(), verbose=0, checkpoint_path=checkpoint, checkpoint_every=1
)
"""


def test_checkpoint_of_a_live_process_is_refused_and_of_a_killed_one_taken_over(tmp_path):
    """Another process fits on the checkpoint: a fit here is refused, naming its PID; once
    that process is killed (SIGKILL: no clean-up), the lock is stale, and the fit here takes it
    over with a warning and resumes from the three batches the other one saved."""
    model = mlp()
    x = data()
    checkpoint, ready = tmp_path / "fit.h5", tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO / "tests"), str(checkpoint), str(ready)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never started its fit"
            time.sleep(0.2)
        with pytest.raises(pk.CheckpointInUseError, match=f"PID {child.pid}"):
            PatternComputer(model).compute_statistics(x, verbose=0, checkpoint_path=str(checkpoint))
    finally:
        child.kill()
        child.wait(TIMEOUT_S)
    assert Path(str(checkpoint) + ".lock").exists()  # left behind by the killed writer
    with pytest.warns(UserWarning, match=f"took over the lock.*PID {child.pid}"):
        resumed = PatternComputer(model).compute_statistics(
            batches(x), verbose=0, checkpoint_path=str(checkpoint)
        )
    assert_same_statistics(
        resumed, PatternComputer(model).compute_statistics(batches(x), verbose=0)
    )
    assert not Path(str(checkpoint) + ".lock").exists()


def write_lock(checkpoint: Path, **fields) -> Path:
    from pattern_keras.patterns.lock import _boot_id, _process_start

    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "boot_id": _boot_id(),
        "thread": "MainThread",
        "started": "2026-01-01T00:00:00+00:00",
        "id": "0" * 32,
    }
    holder.update(fields)
    path = Path(str(checkpoint) + ".lock")
    path.write_text(json.dumps(holder))
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_and_foreign_lock_files(tmp_path):
    """Left-over lock files: of a dead process of this host, of an earlier boot, or of a fit of
    this process that is over: taken over. Of another host, or of a live process of this
    host that holds no flock (say, in another PID namespace): refused, naming the writer."""
    model = mlp()
    x = data(64)
    computer = PatternComputer(model)
    checkpoint = tmp_path / "fit.h5"
    for stale in (
        {"pid": dead_pid()},
        {"pid": os.getppid(), "boot_id": "an-earlier-boot"},
        {},  # this process, an id no fit of it holds
    ):
        lock_file = write_lock(checkpoint, **stale)
        with pytest.warns(UserWarning, match="took over the lock"):
            stats = computer.compute_statistics(x, verbose=0, checkpoint_path=str(checkpoint))
        assert stats.n_samples == 64 and not lock_file.exists()
        checkpoint.unlink()
    lock_file = write_lock(checkpoint, host="another-host", pid=1234)
    with pytest.raises(pk.CheckpointInUseError, match="host 'another-host', PID 1234.*delete"):
        computer.compute_statistics(x, verbose=0, checkpoint_path=str(checkpoint))
    assert lock_file.exists() and not checkpoint.exists()  # nothing touched
    write_lock(checkpoint, pid=os.getppid(), process_start=None)
    with pytest.raises(pk.CheckpointInUseError, match=f"PID {os.getppid()}"):
        computer.compute_statistics(x, verbose=0, checkpoint_path=str(checkpoint))
