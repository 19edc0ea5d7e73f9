"""The cost of the stale-pattern check against one ``analyze`` call.

A pattern analyzer checks, on every ``analyze`` call, that the model's weights are still those its
patterns were fitted on: one wrapping sum of the bit patterns of every weight variable, computed
where the variables live (``pattern_keras.patterns.fingerprint.WeightsChecksum``). This script
times that check against ``PatternAttribution.analyze`` of 8 images at 224×224 on VGG16 and
ResNet50 (``keras.applications``, ``weights=None``), alternately after a warm-up, and prints the
medians of the per-repeat ratios, CPU time (``time.process_time``) first, wall time beside
(NOTES.md: wall time is bimodal on the 2-core machines, CPU time is not).

The patterns are set from the (folded) kernels themselves: the cost of a backward pass does not
depend on the pattern values, and fitting VGG16 at 224×224 on a CPU would take minutes.
``renormalize=True`` keeps random-weight activations finite.

Usage::

    python benchmarks/stale_check.py               # VGG16 and ResNet50, 5 repeats
    python benchmarks/stale_check.py --repeats 3 --only ResNet50
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def _module(name: str):
    """A sibling benchmark script as a module (the folder is not a package)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def analyzer_with_patterns(model):
    import pattern_keras as pk

    analyzer = pk.PatternAttribution(model, renormalize=True)
    positive, negative = {}, {}
    for key, plan in analyzer._computer.plans.items():
        kernel = np.asarray(plan.part.kernel, np.float32)
        positive[key] = kernel
        if plan.pattern_type == "relu" and not plan.rectified:
            negative[key] = kernel
    analyzer.set_patterns(pk.Patterns(positive, negative=negative))
    return analyzer


def measure(label: str, model, x: np.ndarray, repeats: int) -> tuple[str, ...]:
    timed = _module("analyze").timed
    analyzer = analyzer_with_patterns(model)

    def analyze():
        analyzer.analyze(x, batch_size=len(x), allow_stale_patterns=True)

    check = analyzer.check_patterns_current
    analyze()
    check()
    cpu_ratios, wall_ratios, analyze_cpu, analyze_wall, check_cpu, check_wall = (
        [] for _ in range(6)
    )
    for _ in range(repeats):
        a_wall, a_cpu = timed(analyze)
        c_wall, c_cpu = timed(check)
        cpu_ratios.append(c_cpu / a_cpu)
        wall_ratios.append(c_wall / a_wall)
        analyze_cpu.append(a_cpu)
        analyze_wall.append(a_wall)
        check_cpu.append(c_cpu)
        check_wall.append(c_wall)
    med = statistics.median
    n_weights = sum(int(np.prod(w.shape)) for w in model.weights)
    return (
        label,
        f"{n_weights / 1e6:.1f} M",
        f"{med(analyze_cpu):.2f}",
        f"{med(check_cpu):.3f}",
        f"{100 * med(cpu_ratios):.2f} %",
        f"{med(analyze_wall):.2f}",
        f"{med(check_wall):.3f}",
        f"{100 * med(wall_ratios):.2f} %",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--only", nargs="*", choices=["VGG16", "ResNet50"], default=["VGG16", "ResNet50"]
    )
    args = parser.parse_args(argv)
    bench = _module("analyze")
    x = bench.images(8, args.size)
    rows = []
    if "VGG16" in args.only:
        import keras

        keras.utils.set_random_seed(0)
        model = keras.applications.VGG16(
            weights=None, input_shape=(args.size, args.size, 3), classifier_activation=None
        )
        rows.append(measure(f"VGG16 {args.size}×{args.size}, 8 images", model, x, args.repeats))
        del model
    if "ResNet50" in args.only:
        model = _module("analyze_resnet").resnet50(args.size)
        rows.append(measure(f"ResNet50 {args.size}×{args.size}, 8 images", model, x, args.repeats))
    print(
        "| network | weights | analyze CPU (s) | check CPU (s) | check/analyze CPU | "
        "analyze wall (s) | check wall (s) | check/analyze wall |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
