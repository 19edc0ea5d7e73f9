"""What explaining a recurrent network costs, against the compiled tape gradient, and what a
pattern fit costs against a training epoch.

Networks (``--steps`` 200 time steps of ``--features`` 64, batch ``--batch`` 32): an LSTM
classifier, two LSTM layers of 128 units (the first returning sequences) and a Dense(10), and a
GRU of the same size. For each, in one process:

- **steady state**: every analyzer's ``analyze(x, batch_size=len(x))`` against a plain
  ``tf.GradientTape`` gradient of the max logit with respect to the input, compiled with
  ``tf.function``, on the same batch, after a warm-up; the two alternate ``--repeats`` times and
  the table gives the medians of the per-repeat ratios of process CPU time (steady on a shared
  machine) and of wall-clock time. IntegratedGradients and SmoothGrad run ``--points`` points
  (their cost is that many gradients): their ratio is also given per point.
- **first call**: the first ``analyze`` of a fresh analyzer (its trace included) against the
  first call of a fresh compiled tape gradient (its trace included), CPU seconds.
- **fit**: ``PatternComputer(model).compute(x)`` on ``--fit-samples`` sequences at batch
  ``--batch`` against one epoch of ``model.fit`` on them (Adam, sparse categorical
  cross-entropy), each once untimed first, then alternating ``--repeats`` times: medians of
  the per-repeat CPU ratios.

Usage::

    python benchmarks/recurrent.py                 # both networks, every analyzer
    python benchmarks/recurrent.py --quick         # one repeat, 64 steps
    python benchmarks/recurrent.py --networks gru --only Gradient LRPZ

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

#: (label, class name, constructor keyword arguments, needs patterns, points per sample).
ANALYZERS = [
    ("Gradient", "Gradient", {}, False, 1),
    ("InputTimesGradient", "InputTimesGradient", {}, False, 1),
    ("IntegratedGradients", "IntegratedGradients", {"steps": "points"}, False, None),
    ("SmoothGrad", "SmoothGrad", {"samples": "points"}, False, None),
    ("DeConvNet", "DeConvNet", {}, False, 1),
    ("GuidedBackprop", "GuidedBackprop", {}, False, 1),
    ("LRPZ", "LRPZ", {}, False, 1),
    ("LRPEpsilon", "LRPEpsilon", {"epsilon": 1e-3}, False, 1),
    ("LRPAlpha1Beta0", "LRPAlpha1Beta0", {}, False, 1),
    ("LRPAlpha2Beta1", "LRPAlpha2Beta1", {}, False, 1),
    ("LRPZPlus", "LRPZPlus", {}, False, 1),
    ("PatternNet", "PatternNet", {}, True, 1),
    ("PatternAttribution", "PatternAttribution", {}, True, 1),
]


def network(kind: str, steps: int, features: int, units: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    layer = keras.layers.LSTM if kind == "lstm" else keras.layers.GRU
    x = keras.Input((steps, features))
    h = layer(units, return_sequences=True, name=f"{kind}_1")(x)
    h = layer(units, name=f"{kind}_2")(h)
    return keras.Model(x, keras.layers.Dense(10, name="logits")(h), name=f"{kind}_classifier")


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def tape_gradient(model):
    import tensorflow as tf

    @tf.function
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.reduce_sum(tf.reduce_max(model(x, training=False), axis=1))
        return tape.gradient(score, x)

    return grad


def alternate(fn: Callable[[], Any], baseline: Callable[[], Any], repeats: int):
    """Medians of the per-repeat CPU and wall ratios of ``fn`` to ``baseline`` (run
    alternately, both warm), and ``fn``'s median CPU seconds."""
    cpu_ratios, wall_ratios, cpus = [], [], []
    for _ in range(repeats):
        b_wall, b_cpu = timed(baseline)
        a_wall, a_cpu = timed(fn)
        cpu_ratios.append(a_cpu / b_cpu)
        wall_ratios.append(a_wall / b_wall)
        cpus.append(a_cpu)
    med = statistics.median
    return med(cpu_ratios), med(wall_ratios), med(cpus)


def bench_analyzers(kind: str, args) -> dict[str, Any]:
    import tensorflow as tf

    import pattern_keras as pk

    model = network(kind, args.steps, args.features, args.units)
    x = np.random.default_rng(1).normal(size=(args.batch, args.steps, args.features))
    x = x.astype("float32")
    xt = tf.constant(x)
    model(xt)  # builds the layers' variables outside any trace
    # The tape's first call (a fresh tf.function, trace included), twice: before and after.
    tape_first = [timed(lambda: tape_gradient(model)(xt).numpy())[1]]
    grad = tape_gradient(model)
    baseline = lambda: grad(xt).numpy()
    baseline()
    rows = {}
    for label, name, kwargs, fit, points in ANALYZERS:
        if args.only and label not in args.only:
            continue
        kwargs = {k: args.points if v == "points" else v for k, v in kwargs.items()}
        analyzer = getattr(pk, name)(model, **kwargs)
        if fit:
            analyzer.fit(x, batch_size=len(x), verbose=0)
        first = timed(lambda a=analyzer: a.analyze(x, batch_size=len(x), verbose=0))[1]
        cpu_ratio, wall_ratio, cpu = alternate(
            lambda a=analyzer: a.analyze(x, batch_size=len(x), verbose=0), baseline, args.repeats
        )
        rows[label] = {
            "cpu": cpu_ratio,
            "wall": wall_ratio,
            "first": first,
            "points": points or args.points,
        }
        print(f"[{kind}] {label}: {cpu_ratio:.2f} (CPU), first call {first:.1f} s", file=sys.stderr)
    tape_first.append(timed(lambda: tape_gradient(model)(xt).numpy())[1])
    return {"rows": rows, "tape_first": statistics.mean(tape_first), "tape": timed(baseline)[1]}


def bench_fit(kind: str, args) -> dict[str, float]:
    import keras

    from pattern_keras.patterns import PatternComputer

    model = network(kind, args.steps, args.features, args.units)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(args.fit_samples, args.steps, args.features)).astype("float32")
    y = rng.integers(0, 10, size=args.fit_samples)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    computer = PatternComputer(model)

    def fit():
        computer.compute(x, batch_size=args.batch, verbose=0)

    def epoch():
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)

    first_fit, first_epoch = timed(fit)[1], timed(epoch)[1]
    cpu_ratio, wall_ratio, cpu = alternate(fit, epoch, args.repeats)
    return {
        "cpu": cpu_ratio,
        "wall": wall_ratio,
        "fit_cpu": cpu,
        "first_fit": first_fit,
        "first_epoch": first_epoch,
    }


def report(results: dict[str, Any], args) -> str:
    kinds = list(results)
    head = "| analyzer | " + " | ".join(
        f"{k.upper()} CPU ratio (wall) | {k.upper()} first call / tape's" for k in kinds
    )
    lines = [head + " |", "|---" * (1 + 2 * len(kinds)) + "|"]
    labels = [a[0] for a in ANALYZERS if a[0] in results[kinds[0]]["analyze"]["rows"]]
    for label in labels:
        cells = []
        for k in kinds:
            r = results[k]["analyze"]["rows"][label]
            per_point = f", {r['cpu'] / r['points']:.2f} per point" if r["points"] > 1 else ""
            cells.append(f"{r['cpu']:.2f} ({r['wall']:.2f}){per_point}")
            cells.append(f"{r['first'] / results[k]['analyze']['tape_first']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "| network | tape gradient (CPU s) | tape's first call (CPU s) | fit / training epoch "
        "(CPU, wall) | first fit / first epoch (CPU) |"
    )
    lines.append("|---|---|---|---|---|")
    for k in kinds:
        a, f = results[k]["analyze"], results[k].get("fit")
        fit = "–" if f is None else f"{f['cpu']:.2f}, {f['wall']:.2f}"
        first = "–" if f is None else f"{f['first_fit'] / f['first_epoch']:.2f}"
        lines.append(f"| {k.upper()} | {a['tape']:.2f} | {a['tape_first']:.2f} | {fit} | {first} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit-samples", type=int, default=256)
    parser.add_argument("--only", nargs="+", default=None)
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one repeat, 64 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps = 1, 64
    results = {}
    for kind in args.networks:
        results[kind] = {"analyze": bench_analyzers(kind, args)}
        if not args.skip_fit:
            results[kind]["fit"] = bench_fit(kind, args)
    print(
        f"{args.steps} steps × {args.features} features, 2 layers of {args.units} units, batch "
        f"{args.batch}; {args.repeats} repeats; IntegratedGradients/SmoothGrad {args.points} "
        f"points; fit on {args.fit_samples} sequences.\n"
    )
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
