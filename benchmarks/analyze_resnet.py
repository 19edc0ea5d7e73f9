"""ResNet50 (or EfficientNetB0, ConvNeXtTiny) at 224×224: each analyzer's cost relative to a
plain gradient.

``keras.applications.ResNet50(weights=None, classifier_activation=None)`` (``--model`` picks
another family), 8 images, BatchNorm statistics randomized (as a trained network's would be, so
that folding is not trivial). Times
``analyzer.analyze(x, batch_size=8)`` against a compiled ``tf.GradientTape`` gradient of the max
logit on the same 8 images, alternately after a warm-up, and gives the median of the per-repeat
ratios (wall clock and process CPU time), with the timing helpers of ``benchmarks/analyze.py``.

IntegratedGradients and SmoothGrad evaluate the gradient at ``steps`` (``samples``) points per
image: their ratio is given per step, i.e. divided by that number. With ``inner_batch_size=32``
one engine pass takes the 4 points of each of the 8 images (32 network inputs).

Usage::

    python benchmarks/analyze_resnet.py                  # every analyzer, 2 repeats
    python benchmarks/analyze_resnet.py --only Gradient LRPZPlus --repeats 3
    python benchmarks/analyze_resnet.py --size 64        # a quick run at 64×64
    python benchmarks/analyze_resnet.py --model EfficientNetB0
    python benchmarks/analyze_resnet.py --model ConvNeXtTiny
    python benchmarks/analyze_resnet.py --memory         # peak memory, one process each

EfficientNetB0 and ConvNeXtTiny rescale their input inside the model (Rescaling /
Normalization): they get pixels in [0, 255].

``--memory`` measures peak memory instead of time: each analyzer (and the tape gradient, and a
baseline that only builds the model, the images and runs one forward pass) in a fresh
subprocess, reading its peak resident set size (``ru_maxrss``) after one ``analyze`` call
(trace included). The pattern analyzers get patterns shaped like their kernels (zeros) instead
of a fit, whose own peak would hide analyze's. Printed: each one's peak and its ratio to the tape
gradient's, and its increase over the baseline and that increase over the tape gradient's (the
baseline's own peak includes a forward pass, so the increase is what a backward pass adds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def _helpers():
    """``benchmarks/analyze.py`` as a module (the folder is not a package)."""
    path = Path(__file__).with_name("analyze.py")
    spec = importlib.util.spec_from_file_location("_bench_analyze", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _helpers()
Spec = bench.Spec

#: The analyzers timed, in table order, and the number of gradient evaluations per image that
#: the ratio is divided by (1: one backward pass).
ANALYZERS: list[tuple[Spec, int]] = [(spec, 1) for spec in bench.ANALYZERS] + [
    (
        Spec(
            "IntegratedGradients (per step, 4 steps)",
            "IntegratedGradients",
            {"steps": 4, "inner_batch_size": 32},
        ),
        4,
    ),
    (
        Spec(
            "SmoothGrad (per sample, 4 samples)",
            "SmoothGrad",
            {"samples": 4, "inner_batch_size": 32},
        ),
        4,
    ),
]


MODELS = ("ResNet50", "EfficientNetB0", "ConvNeXtTiny")


def application(name: str, size: int, seed: int = 0):
    """``keras.applications.<name>`` with random weights and randomized BatchNorm statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classifier_activation=None
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.7, 1.3, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
    return model


def resnet50(size: int, seed: int = 0):
    return application("ResNet50", size, seed)


MEMORY_RESULT = "MAXRSS_MB "


def set_zero_patterns(analyzer) -> None:
    """Give a pattern analyzer zero patterns shaped like its kernels (both regimes where a layer
    keeps both) instead of a fit: the arithmetic of ``analyze`` does not depend on their values,
    and a fit's own time and memory would hide it."""
    from pattern_keras import Patterns

    plans = analyzer._computer.plans
    zeros = {key: np.zeros(plan.part.kernel_shape, "float32") for key, plan in plans.items()}
    negative = {
        key: zeros[key]
        for key, plan in plans.items()
        if plan.pattern_type == "relu" and not plan.rectified
    }
    types = {key: plan.pattern_type for key, plan in plans.items()}
    analyzer.set_patterns(Patterns(zeros, negative=negative, pattern_types=types))


def memory_child(args) -> None:
    """Runs in a fresh process: one pass of ``args.child`` ("baseline", "tape" or an analyzer
    label), then prints the process's peak resident set size."""
    import resource

    import tensorflow as tf

    model = application(args.model, args.size)
    x = bench.images(args.images, args.size)
    if args.model != "ResNet50":
        x = (x + 1.0) * 127.5
    model(tf.constant(x), training=False)  # the TensorFlow runtime and the weights, warm
    if args.child == "tape":
        bench.gradient_baseline(model)(tf.constant(x)).numpy()
    elif args.child != "baseline":
        spec = next(spec for spec, _ in ANALYZERS if spec.label == args.child)
        analyzer = bench.load_analyzer(spec)(model, **spec.kwargs)
        if spec.fit:
            set_zero_patterns(analyzer)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero patterns give zero explanations
            analyzer.analyze(x, batch_size=len(x), verbose=0)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(MEMORY_RESULT + json.dumps(maxrss), flush=True)


def measure_memory(args) -> None:
    """Each pass in its own process; a markdown table of the peaks over the baseline's."""

    def run(child: str) -> float:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", child]
        cmd += ["--model", args.model, "--size", str(args.size), "--images", str(args.images)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        for line in out.stdout.splitlines():
            if line.startswith(MEMORY_RESULT):
                return float(json.loads(line[len(MEMORY_RESULT) :]))
        raise RuntimeError(f"{child} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")

    base = run("baseline")
    tape = run("tape") - base
    total_tape = base + tape
    print(f"baseline (model, images, one forward pass): {base:.0f} MB", file=sys.stderr)
    print(
        f"| {args.model} {args.size}×{args.size}, {args.images} images | peak (MB) | over the "
        "tape gradient's | peak over baseline (MB) | over the tape gradient's |"
    )
    print("|---|---:|---:|---:|---:|")
    print(f"| tape gradient | {total_tape:.0f} | 1.00 | {tape:.0f} | 1.00 |")
    for spec, _ in ANALYZERS:
        if args.only and spec.label not in args.only and spec.name not in args.only:
            continue
        peak = run(spec.label)
        extra = peak - base
        print(
            f"| {spec.label} | {peak:.0f} | {peak / total_tape:.2f} | {extra:.0f} | "
            f"{extra / tape:.2f} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="ResNet50",
        help="the keras.applications family (default ResNet50)",
    )
    parser.add_argument("--size", type=int, default=224, help="image size (default 224)")
    parser.add_argument("--images", type=int, default=8, help="images per pass (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (default 2)")
    parser.add_argument(
        "--only", nargs="*", default=None, help="analyzer labels (or class names) to run"
    )
    parser.add_argument(
        "--memory", action="store_true", help="peak memory (one process per analyzer) instead"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        memory_child(args)
        return 0
    if args.memory:
        measure_memory(args)
        return 0

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs", file=sys.stderr)
    model = application(args.model, args.size)
    x = bench.images(args.images, args.size)
    if args.model != "ResNet50":
        x = (x + 1.0) * 127.5  # these models rescale pixels in [0, 255] themselves
    xt = tf.constant(x)
    grad = bench.gradient_baseline(model)

    def baseline():
        return grad(xt).numpy()

    baseline()
    label = f"{args.model} {args.size}×{args.size}, {args.images} images"
    rows = []
    for spec, points in ANALYZERS:
        if args.only and spec.label not in args.only and spec.name not in args.only:
            continue
        cls = bench.load_analyzer(spec)
        if cls is None:
            rows.append((label, spec.label, "–", "–", "–", "–"))
            continue
        analyzer = cls(model, **spec.kwargs)
        if spec.fit:
            start = time.perf_counter()
            analyzer.fit(x, batch_size=len(x), verbose=0)
            print(
                f"[{label}] {spec.label}: fit {time.perf_counter() - start:.1f} s (not timed)",
                file=sys.stderr,
                flush=True,
            )
        start = time.perf_counter()
        t, base, ratio, cpu_ratio = bench.compare(
            lambda a=analyzer: a.analyze(x, batch_size=len(x)), baseline, args.repeats
        )
        total = time.perf_counter() - start
        rows.append(
            (
                label,
                spec.label,
                f"{t:.2f}",
                f"{base:.2f}",
                f"{ratio / points:.2f}",
                f"{cpu_ratio / points:.2f}",
            )
        )
        print(
            f"[{label}] {spec.label}: {t:.2f} s, gradient {base:.2f} s, ratio "
            f"{ratio / points:.2f} (CPU {cpu_ratio / points:.2f}); {total:.0f} s with the "
            "trace",
            file=sys.stderr,
            flush=True,
        )
        del analyzer
    bench.print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
