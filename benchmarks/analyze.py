"""How much an analyzer's one backward pass costs, relative to a plain gradient.

For each network and analyzer this times ``analyzer.analyze(x, batch_size=len(x))`` (all images
in one pass) against a plain ``tf.GradientTape`` gradient of the max logit with respect to the
input, itself compiled with ``tf.function``, on the same batch, in the same process, after a
warm-up: the two run alternately, and the table gives the median of the per-repeat ratios, of
wall-clock time and of process CPU time (the latter is steadier on a shared machine). A ratio near
1 means the analyzer costs what the gradient costs.

Networks:

- ``vgg-style``: 64×64×3, four blocks of two 3×3 convolutions (64, 64, 128, 128 filters), each
  block followed by 2×2 max pooling, then Flatten, Dense 256 relu, Dense 10; 64 images.
- ``vgg16``: ``keras.applications.VGG16(weights=None)`` at 224×224, 8 images.

Usage::

    python benchmarks/analyze.py                 # both networks
    python benchmarks/analyze.py --skip-vgg16    # the VGG-style network only
    python benchmarks/analyze.py --quick         # fewer images and repeats, VGG-style only
    python benchmarks/analyze.py --skip-vgg-style --only LRPZ PatternNet   # a selection

Analyzers are listed in :data:`ANALYZERS`: each is imported lazily by name from
``pattern_keras.analyzers``, and skipped with a note where it does not exist (yet).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


@dataclass
class Spec:
    """One analyzer of the benchmark.

    ``name`` is the class name in ``pattern_keras.analyzers``; ``kwargs`` go to its
    constructor; ``fit`` says whether it needs ``analyzer.fit(x)`` first (not timed).
    """

    label: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    fit: bool = False


#: The analyzers timed, in table order. Add new ones here.
ANALYZERS: list[Spec] = [
    Spec("Gradient", "Gradient"),
    Spec("InputTimesGradient", "InputTimesGradient"),
    Spec("DeConvNet", "DeConvNet"),
    Spec("GuidedBackprop", "GuidedBackprop"),
    Spec("LRPZ", "LRPZ"),
    Spec("LRPEpsilon", "LRPEpsilon", {"epsilon": 1e-7}),
    Spec("LRPAlpha1Beta0", "LRPAlpha1Beta0"),
    Spec("LRPAlpha2Beta1", "LRPAlpha2Beta1"),
    Spec("LRPZPlus", "LRPZPlus"),
    Spec("DeepTaylor", "DeepTaylor"),
    Spec("PatternNet", "PatternNet", fit=True),
    Spec("PatternAttribution", "PatternAttribution", fit=True),
]


def load_analyzer(spec: Spec) -> Callable[..., Any] | None:
    module = importlib.import_module("pattern_keras.analyzers")
    return getattr(module, spec.name, None)


# ---------------------------------------------------------------------------------------------
# Networks


def vgg_style(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    x = keras.Input((64, 64, 3))
    h = x
    for block, filters in enumerate((64, 64, 128, 128), start=1):
        for i in (1, 2):
            h = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"block{block}_conv{i}"
            )(h)
        h = layers.MaxPooling2D(2, name=f"block{block}_pool")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(256, activation="relu", name="fc")(h)
    return keras.Model(x, layers.Dense(10, name="logits")(h), name="vgg_style")


def vgg16(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.applications.VGG16(weights=None, classifier_activation=None)


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, size, size, 3)).astype("float32")


# ---------------------------------------------------------------------------------------------
# Timing


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(analyze: Callable[[], Any], baseline: Callable[[], Any], repeats: int):
    """Median times of ``analyze`` and ``baseline``, run alternately after a warm-up of
    ``analyze`` (``baseline`` is warm already), and the medians of the per-repeat ratios (wall and
    CPU): alternating keeps a drifting machine load out of the ratio."""
    analyze()
    walls, bases, ratios, cpu_ratios = [], [], [], []
    for _ in range(repeats):
        b_wall, b_cpu = timed(baseline)
        a_wall, a_cpu = timed(analyze)
        walls.append(a_wall)
        bases.append(b_wall)
        ratios.append(a_wall / b_wall)
        cpu_ratios.append(a_cpu / b_cpu)
    med = statistics.median
    return med(walls), med(bases), med(ratios), med(cpu_ratios)


def gradient_baseline(model):
    import tensorflow as tf

    @tf.function
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=False)
            score = tf.reduce_sum(tf.reduce_max(y, axis=1))
        return tape.gradient(score, x)

    return grad


def bench_network(
    label: str, model, x: np.ndarray, repeats: int, only: set[str] | None
) -> list[tuple[str, ...]]:
    import tensorflow as tf

    rows = []
    grad = gradient_baseline(model)
    xt = tf.constant(x)

    def baseline():
        return grad(xt).numpy()

    baseline()  # warm-up: trace and first run

    for spec in ANALYZERS:
        if only and spec.label not in only:
            continue
        cls = load_analyzer(spec)
        if cls is None:
            rows.append(
                (
                    label,
                    spec.label,
                    "–",
                    "–",
                    "–",
                    f"skipped: no pattern_keras.analyzers.{spec.name}",
                )
            )
            continue
        try:
            analyzer = cls(model, **spec.kwargs)
            if spec.fit:
                start = time.perf_counter()
                analyzer.fit(x, batch_size=len(x), verbose=0)
                print(
                    f"[{label}] {spec.label}: fit {time.perf_counter() - start:.1f} s (not timed)",
                    file=sys.stderr,
                    flush=True,
                )
            t, base, ratio, cpu_ratio = compare(
                lambda a=analyzer: a.analyze(x, batch_size=len(x)), baseline, repeats
            )
        except Exception as err:  # one broken analyzer must not hide the others' numbers
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:120]}"
            rows.append((label, spec.label, "–", "–", "–", f"failed: {message}"))
            print(f"[{label}] {spec.label}: failed: {err}", file=sys.stderr, flush=True)
            continue
        rows.append(
            (label, spec.label, f"{t:.3f}", f"{base:.3f}", f"{ratio:.2f}", f"{cpu_ratio:.2f}")
        )
        print(
            f"[{label}] {spec.label}: {t:.3f} s, gradient {base:.3f} s, ratio {ratio:.2f} "
            f"(CPU time {cpu_ratio:.2f})",
            file=sys.stderr,
            flush=True,
        )
        del analyzer
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-vgg16", action="store_true", help="only the VGG-style network")
    parser.add_argument("--skip-vgg-style", action="store_true", help="only VGG16")
    parser.add_argument(
        "--quick", action="store_true", help="16 images, 3 repeats, VGG-style network only"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats on the VGG-style network (default 5, --quick 3)",
    )
    parser.add_argument(
        "--vgg16-repeats",
        type=int,
        default=2,
        help="timed repeats on VGG16 (default 2: one pass takes seconds)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="analyzer labels to run")
    args = parser.parse_args(argv)

    import tensorflow as tf

    repeats = args.repeats or (3 if args.quick else 5)
    only = set(args.only) if args.only else None
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs", file=sys.stderr)
    rows = []
    n_small = 16 if args.quick else 64
    if not args.skip_vgg_style:
        rows += bench_network(
            f"VGG-style 64×64, {n_small} images", vgg_style(), images(n_small, 64), repeats, only
        )
    if not (args.skip_vgg16 or args.quick):
        rows += bench_network(
            "VGG16 224×224, 8 images", vgg16(), images(8, 224), args.vgg16_repeats, only
        )

    print_table(rows)
    return 0


def print_table(rows: list[tuple[str, ...]]) -> None:
    """The rows as a markdown table (what the README shows)."""
    print("| network | analyzer | analyze (s) | tape gradient (s) | ratio (wall) | ratio (CPU) |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
