"""Which explanation recovers a known signal? The PatternNet paper's claim on a small ReLU network.

Data: :func:`pattern_keras.datasets.signal_distractor`, 16×16 images ``x = a_s·y + Σ_k a_dk·ε_k +
noise`` whose class is the sign of ``y``; the distractors are louder than the signal and overlap
it, so a classifier has to filter them out. The true signal ``a_s·y`` of every image is known.

Model: Conv2D(8, 3, relu) → MaxPooling2D → Flatten → Dense(16, relu) → Dense(1), a single logit
``f = log p(class 1) / p(class 0)`` (for two classes, the difference of the two softmax logits:
the quantity the decision depends on), trained with binary cross-entropy.

What is explained, and how it is scored:

- every analyzer explains ``f`` (its only output neuron), with the library's seeds (1 for the
  gradient and input×gradient, the value ``f(x)`` for the others);
- **signal cosine**: ``|cos|`` between the explanation and the true signal ``a_s·y`` of the
  image (sign-blind), mean over test images;
- **top-k precision**: the fraction of the ``k = |support|`` highest-ranked pixels that lie on the
  signal's support. Ranking is signed (highest first), so each explanation is first oriented
  towards the image's true class: multiplied by ``sign(y)`` (+1 for class 1, −1 for class 0).
  Explaining ``f`` and orienting by the class is explaining the true class's logit minus the
  other's: positive values are evidence *for* the true class;
- **ρ(S)**: :func:`pattern_keras.evaluation.signal_estimator_quality` per layer and estimator.

Usage::

    python examples/signal_distractor_experiment.py            # seeds 0-4, about 3 minutes
    python examples/signal_distractor_experiment.py --seeds 0  # one run

The tables go to stdout as markdown; with several seeds each entry is the mean ± standard
deviation over the seeds (each seed draws its own training/test data and initialization). A last
table counts the seeds in which each of the paper's two claims holds.

What to expect (seeds 0–7 while writing it): PatternAttribution beats LRP-z in top-k precision in
every run, by a wide margin with linear patterns and a small one with two-component patterns;
PatternNet with linear patterns recovers the signal better than Gradient, DeConvNet and Guided
BackProp on average but not for every trained network; with the two-component ("relu") patterns
it does not, here. The paper's two-component formula is not invariant to the mean of a layer's
input, and the inputs of layers after a ReLU have a large mean (see
``tests/test_signal_distractor_experiment.py`` for the numbers and the diagnosis). ρ ranks the
estimators as the paper does: linear and two-component far above filter and random, in every
layer, with the two-component estimator no better than the linear one on this network.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import pattern_keras as pk
from pattern_keras.datasets import signal_distractor
from pattern_keras.evaluation import (
    signal_cosine,
    signal_estimator_quality,
    topk_precision,
)

L = keras.layers

#: Analyzer rows of the table, in order.
METHODS = (
    "Gradient",
    "InputTimesGradient",
    "DeConvNet",
    "GuidedBackprop",
    "LRPZ",
    "LRPEpsilon",
    "PatternNet (linear)",
    "PatternNet (relu)",
    "PatternAttribution (linear)",
    "PatternAttribution (relu)",
)
ESTIMATORS = ("random", "filter", "linear", "relu")
LRP_EPSILON = 0.1


def build_model(seed: int) -> keras.Model:
    """The small ReLU network, initialized from ``seed``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 1))
    h = L.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = L.MaxPooling2D(name="pool")(h)
    h = L.Flatten(name="flatten")(h)
    h = L.Dense(16, activation="relu", name="dense")(h)
    outputs = L.Dense(1, name="logit")(h)
    return keras.Model(inputs, outputs, name="signal_distractor_cnn")


def make_analyzers(model: keras.Model, x_fit: np.ndarray) -> dict[str, Any]:
    """Every analyzer of the table; the pattern methods fitted on ``x_fit``."""
    analyzers: dict[str, Any] = {
        "Gradient": pk.Gradient(model),
        "InputTimesGradient": pk.InputTimesGradient(model),
        "DeConvNet": pk.DeConvNet(model),
        "GuidedBackprop": pk.GuidedBackprop(model),
        "LRPZ": pk.LRPZ(model),
        "LRPEpsilon": pk.LRPEpsilon(model, epsilon=LRP_EPSILON),
    }
    for kind in ("linear", "relu"):
        net = pk.PatternNet(model, pattern_type=kind).fit(x_fit, batch_size=256, verbose=0)
        analyzers[f"PatternNet ({kind})"] = net
        analyzers[f"PatternAttribution ({kind})"] = pk.PatternAttribution(
            model, pattern_type=kind, patterns=net.patterns
        )
    return {name: analyzers[name] for name in METHODS}


def run_experiment(
    seed: int = 0, n_train: int = 3000, n_test: int = 500, epochs: int = 20, batch_size: int = 64
) -> dict[str, Any]:
    """Train the network on fresh data and score every analyzer and estimator.

    Returns
    -------
    dict
        ``"scores"``: ``{method: {"cosine": mean, "topk": mean}}``; ``"quality"``: the
        :class:`~pattern_keras.evaluation.quality.QualityResult`; ``"accuracy"`` on the test
        images; ``"train_seconds"``; ``"model"``.
    """
    train = signal_distractor(n_train, seed=2 * seed + 1)
    test = signal_distractor(n_test, seed=2 * seed + 2)
    model = build_model(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    model.fit(
        train.x,
        train.labels.astype("float32"),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
    )
    train_seconds = time.perf_counter() - start
    logit = np.asarray(model(test.x, training=False))[:, 0]
    accuracy = float(np.mean((logit > 0) == (test.labels == 1)))

    # Orient every explanation towards the true class (see the module docstring).
    orientation = np.sign(test.signal_amplitude).astype("float32")[:, None, None, None]
    scores = {}
    for name, analyzer in make_analyzers(model, train.x).items():
        explanation = analyzer.analyze(test.x, batch_size=256) * orientation
        scores[name] = {
            "cosine": float(signal_cosine(explanation, test.signal).mean()),
            "topk": float(topk_precision(explanation, test.support).mean()),
        }
    quality = signal_estimator_quality(model, train.x, test.x, estimators=ESTIMATORS)
    return {
        "scores": scores,
        "quality": quality,
        "accuracy": accuracy,
        "train_seconds": train_seconds,
        "model": model,
    }


def _cell(values: Sequence[float]) -> str:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def markdown_tables(runs: Sequence[dict[str, Any]]) -> str:
    """The analyzer table and the ρ table, as markdown (mean ± sd over runs if several)."""
    lines = [
        "| method | signal cosine ↑ | top-k precision ↑ |",
        "|---|---|---|",
    ]
    for name in METHODS:
        cos = [run["scores"][name]["cosine"] for run in runs]
        topk = [run["scores"][name]["topk"] for run in runs]
        lines.append(f"| {name} | {_cell(cos)} | {_cell(topk)} |")
    lines += [
        "",
        "| layer | ρ random | ρ filter | ρ linear | ρ two-component |",
        "|---|---|---|---|---|",
    ]
    for layer in runs[0]["quality"]:
        cells = [_cell([run["quality"][layer][e] for run in runs]) for e in ESTIMATORS]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The paper's two claims, as (description, test on one run's scores).
CLAIMS = {
    "PatternNet ({kind}) cosine > Gradient, DeConvNet, GuidedBackprop": lambda s, kind: (
        s[f"PatternNet ({kind})"]["cosine"]
        > max(s[m]["cosine"] for m in ("Gradient", "DeConvNet", "GuidedBackprop"))
    ),
    "PatternAttribution ({kind}) top-k precision > LRPZ": lambda s, kind: (
        s[f"PatternAttribution ({kind})"]["topk"] > s["LRPZ"]["topk"]
    ),
}


def claims_table(runs: Sequence[dict[str, Any]]) -> str:
    """In how many runs each of the paper's claims holds, per pattern type."""
    lines = ["| claim | linear patterns | relu (two-component) patterns |", "|---|---|---|"]
    for text, holds in CLAIMS.items():
        cells = [
            f"{sum(bool(holds(run['scores'], kind)) for run in runs)}/{len(runs)} seeds"
            for kind in ("linear", "relu")
        ]
        lines.append(f"| {text.format(kind='·')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=500)
    args = parser.parse_args(argv)
    runs = []
    for seed in args.seeds:
        run = run_experiment(seed, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs)
        print(
            f"seed {seed}: test accuracy {run['accuracy']:.3f}, trained in "
            f"{run['train_seconds']:.1f} s",
            file=sys.stderr,
        )
        runs.append(run)
    seeds = ", ".join(str(s) for s in args.seeds)
    print(
        f"Signal/distractor data, 16×16, {args.n_train} training and {args.n_test} test "
        f"images; Conv2D(8)–MaxPool–Dense(16)–Dense(1), {args.epochs} epochs; seeds {seeds}; "
        f"test accuracy {_cell([r['accuracy'] for r in runs])}.\n"
    )
    print(markdown_tables(runs))
    print()
    print(claims_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
