"""The cost of the readers-writer lock that makes a swap of patterns atomic for ``analyze``.

Every ``PatternNet``/``PatternAttribution.analyze`` call holds the analyzer's lock shared for its
whole length (``pattern_keras._concurrency``), so that a refit or ``set_patterns`` in another
thread never gives it half the old and half the new patterns. This script times ``analyze`` with
that lock against the same analyzer with a lock that does nothing, alternately after a warm-up,
and prints the medians of the per-repeat ratios, CPU time (``time.process_time``) first, wall
time beside (NOTES.md: wall time is bimodal on the 2-core machines, CPU time is not). The lock's
cost is fixed per call, so the cases are small: a tiny MLP (where it weighs most) and a small CNN,
each call of 8 samples. The lock's own cost (an empty read section) is printed first.

Usage::

    python benchmarks/analyze_lock.py                 # 7 repeats of 200 calls per case
    python benchmarks/analyze_lock.py --repeats 3 --calls 50
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


class _NoLock:
    """The lock's interface, doing nothing: the analyzer without the atomic swap."""

    @contextlib.contextmanager
    def read(self):
        yield

    write = read


def _models():
    import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    x = keras.Input((20,))
    mlp = keras.Model(x, L.Dense(10)(L.Dense(32, activation="relu")(x)), name="mlp")
    x = keras.Input((32, 32, 3))
    h = L.Conv2D(16, 3, activation="relu")(x)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(32, 3, activation="relu")(h)
    h = L.Flatten()(h)
    cnn = keras.Model(x, L.Dense(10)(L.Dense(64, activation="relu")(h)), name="cnn")
    return [(mlp, (20,)), (cnn, (32, 32, 3))]


def _time(analyzer, x, calls: int) -> tuple[float, float]:
    """CPU and wall seconds of ``calls`` analyze calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        analyzer.analyze(x, verbose=0)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    import pattern_keras as pk
    from pattern_keras._concurrency import ReadWriteLock

    lock, n = ReadWriteLock(), 100_000
    start = time.process_time()
    for _ in range(n):
        with lock.read():
            pass
    print(
        f"one read section of the lock: {1e6 * (time.process_time() - start) / n:.1f} µs of CPU\n"
    )
    rng = np.random.default_rng(0)
    print("| model | analyze with the lock, CPU ms/call | ratio to no lock, CPU | wall |")
    print("|---|---:|---:|---:|")
    for model, shape in _models():
        data = rng.normal(size=(64, *shape)).astype("float32")
        x = data[:8]
        locked = pk.PatternAttribution(model).fit(data, verbose=0)
        unlocked = pk.PatternAttribution(model, patterns=locked.patterns)
        unlocked._lock = _NoLock()
        for analyzer in (locked, unlocked):  # warm-up: traces
            analyzer.analyze(x, verbose=0)
        cpu_ratios, wall_ratios, per_call = [], [], []
        for _ in range(args.repeats):
            with_cpu, with_wall = _time(locked, x, args.calls)
            without_cpu, without_wall = _time(unlocked, x, args.calls)
            cpu_ratios.append(with_cpu / without_cpu)
            wall_ratios.append(with_wall / without_wall)
            per_call.append(1000 * with_cpu / args.calls)
        print(
            f"| {model.name} | {statistics.median(per_call):.2f} | "
            f"{statistics.median(cpu_ratios):.3f} | {statistics.median(wall_ratios):.3f} |"
        )


if __name__ == "__main__":
    main()
