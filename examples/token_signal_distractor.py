"""Do patterns work beyond images? The known-signal experiment on token sequences.

Data: :func:`pattern_keras.datasets.signal_distractor_tokens`, sequences of ``T = 16`` tokens of
``d = 8`` features, ``x[t] = a_s·y·[t ∈ S] + Σ_k ε_k·p_k(t)·a_dk + noise``: the class is the sign
of ``y``, carried by the signal direction ``a_s`` at 3 random positions ``S`` of each sequence;
two distractors, twice as loud, overlap ``a_s`` (cosine 0.6) and are present at every position
with one amplitude per sequence. The true signal of every sequence is known.

Models, each with one logit ``f`` (trained with binary cross-entropy):

- **text-CNN**: Conv1D(16, 3, relu) → GlobalMaxPooling1D → Dense(16, relu) → Dense(1);
- **attention**: token embedding by Dense(16), a learned position embedding added, 2 blocks of
  MultiHeadAttention(2 heads) and a GELU feed-forward (32), each with a residual connection
  and LayerNormalization, average pooling, Dense(1).

Scores (as ``examples/signal_distractor_experiment.py`` for images):

- **signal cosine**: ``|cos|`` between the explanation ``(T, d)`` and the true signal, mean over
  test sequences;
- **top-k precision**: the fraction of the ``k = 3`` highest-scoring tokens that carry the
  signal. A token's score is what ``analyze`` returns per token for an input of token ids: the
  sum over its features for attribution methods, oriented towards the true class (× sign(y)),
  and the L2 norm of its features for signal methods (gradients, DeConvNet, Guided BackProp,
  PatternNet). Chance is ``3/16 ≈ 0.19``;
- **ρ(S)**: :func:`pattern_keras.evaluation.signal_estimator_quality` per layer (the attention
  model's value and output projections and feed-forward layers included).

Usage::

    python examples/token_signal_distractor.py                       # both models, seeds 0-2
    python examples/token_signal_distractor.py --models cnn --seeds 0

Markdown tables go to stdout (mean ± standard deviation over the seeds). A model or method that
pattern_keras cannot explain yet is reported as such, with the reason.
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
from pattern_keras.datasets import signal_distractor_tokens
from pattern_keras.evaluation import signal_cosine, signal_estimator_quality, topk_precision

L = keras.layers
LENGTH, DIM, SIGNAL_TOKENS = 16, 8, 3

#: Analyzer rows of the table, in order.
METHODS = (
    "Gradient",
    "SmoothGrad",
    "DeConvNet",
    "GuidedBackprop",
    "InputTimesGradient",
    "IntegratedGradients",
    "LRPZ",
    "LRPEpsilon",
    "LRPAlpha1Beta0",
    "LRPZPlus",
    "DeepTaylor",
    "PatternNet (linear)",
    "PatternNet (relu)",
    "PatternAttribution (linear)",
    "PatternAttribution (relu)",
)
ESTIMATORS = ("random", "filter", "linear", "relu")
MODELS = ("cnn", "attention")


@keras.saving.register_keras_serializable(package="examples")
class PositionEmbedding(L.Layer):
    """Adds a learned vector per position: ``x + P``, ``P`` of shape ``(T, d)``."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="random_normal", name="positions"
        )

    def call(self, x):
        return x + self.positions


def build_cnn(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((LENGTH, DIM))
    h = L.Conv1D(16, 3, activation="relu", name="conv")(inputs)
    h = L.GlobalMaxPooling1D(name="pool")(h)
    h = L.Dense(16, activation="relu", name="dense")(h)
    return keras.Model(inputs, L.Dense(1, name="logit")(h), name="text_cnn")


def build_attention(seed: int, width: int = 16) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((LENGTH, DIM))
    h = L.Dense(width, name="token_embedding")(inputs)
    h = PositionEmbedding(name="position_embedding")(h)
    for i in range(2):
        a = L.MultiHeadAttention(2, width // 2, name=f"block{i}_attention")(h, h)
        h = L.LayerNormalization(name=f"block{i}_norm1")(L.Add()([h, a]))
        f = L.Dense(2 * width, activation="gelu", name=f"block{i}_ffn1")(h)
        f = L.Dense(width, name=f"block{i}_ffn2")(f)
        h = L.LayerNormalization(name=f"block{i}_norm2")(L.Add()([h, f]))
    h = L.GlobalAveragePooling1D(name="pool")(h)
    return keras.Model(inputs, L.Dense(1, name="logit")(h), name="attention_classifier")


BUILDERS = {"cnn": build_cnn, "attention": build_attention}


def _register_position_embedding() -> None:
    """Until custom layers are looked into, declare the position embedding a sum (``x + P``)."""
    try:
        pk.register_layer(PositionEmbedding, "sum")
    except ValueError:  # pragma: no cover - registration changed
        pass


def make_analyzers(model: keras.Model, x_fit: np.ndarray) -> dict[str, Any]:
    """Every analyzer of the table that accepts ``model`` (the pattern methods fitted on
    ``x_fit``), and for the others the reason they refuse it."""
    plain = {
        "Gradient": lambda: pk.Gradient(model),
        "SmoothGrad": lambda: pk.SmoothGrad(model, samples=32),
        "DeConvNet": lambda: pk.DeConvNet(model),
        "GuidedBackprop": lambda: pk.GuidedBackprop(model),
        "InputTimesGradient": lambda: pk.InputTimesGradient(model),
        "IntegratedGradients": lambda: pk.IntegratedGradients(model, steps=32),
        "LRPZ": lambda: pk.LRPZ(model),
        "LRPEpsilon": lambda: pk.LRPEpsilon(model, epsilon=0.1),
        "LRPAlpha1Beta0": lambda: pk.LRPAlpha1Beta0(model),
        "LRPZPlus": lambda: pk.LRPZPlus(model),
        "DeepTaylor": lambda: pk.DeepTaylor(model),
    }
    analyzers: dict[str, Any] = {}
    for name, make in plain.items():
        try:
            analyzers[name] = make()
        except ValueError as err:
            analyzers[name] = str(err).split(". ")[0]
    for kind in ("linear", "relu"):
        try:
            net = pk.PatternNet(model, pattern_type=kind).fit(x_fit, batch_size=256, verbose=0)
            analyzers[f"PatternNet ({kind})"] = net
            analyzers[f"PatternAttribution ({kind})"] = pk.PatternAttribution(
                model, pattern_type=kind, patterns=net.patterns
            )
        except ValueError as err:
            reason = str(err).split(". ")[0]
            analyzers[f"PatternNet ({kind})"] = analyzers[f"PatternAttribution ({kind})"] = reason
    return {name: analyzers[name] for name in METHODS}


def token_scores(analyzer: Any, explanation: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Per-token scores ``(n, T)`` as ``analyze`` gives them for ids: the oriented sum over the
    features for attributions, the L2 norm for signals."""
    if analyzer.token_reduction == "norm":
        return np.linalg.norm(explanation, axis=-1)
    return explanation.sum(axis=-1) * orientation[:, None]


def run_experiment(
    model_name: str, seed: int = 0, n_train: int = 3000, n_test: int = 500, epochs: int = 30
) -> dict[str, Any]:
    """Train one model on fresh data and score every analyzer and estimator."""
    data = dict(length=LENGTH, dim=DIM, signal_tokens=SIGNAL_TOKENS)
    train = signal_distractor_tokens(n_train, seed=2 * seed + 1, **data)
    test = signal_distractor_tokens(n_test, seed=2 * seed + 2, **data)
    model = BUILDERS[model_name](seed)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    model.fit(train.x, train.labels.astype("float32"), epochs=epochs, batch_size=64, verbose=0)
    seconds = time.perf_counter() - start
    logit = np.asarray(model(test.x, training=False))[:, 0]
    accuracy = float(np.mean((logit > 0) == (test.labels == 1)))
    orientation = np.sign(test.signal_amplitude).astype("float32")
    scores: dict[str, Any] = {}
    for name, analyzer in make_analyzers(model, train.x).items():
        if isinstance(analyzer, str):
            scores[name] = analyzer
            continue
        explanation = analyzer.analyze(test.x, batch_size=256, verbose=0)
        scores[name] = {
            "cosine": float(signal_cosine(explanation, test.signal).mean()),
            "topk": float(
                topk_precision(
                    token_scores(analyzer, explanation, orientation), test.support
                ).mean()
            ),
        }
    try:
        quality = signal_estimator_quality(model, train.x, test.x, estimators=ESTIMATORS)
    except ValueError as err:
        quality = str(err).split(". ")[0]
    return {"scores": scores, "quality": quality, "accuracy": accuracy, "seconds": seconds}


def _cell(values: Sequence[float]) -> str:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def markdown_tables(runs: dict[str, list[dict[str, Any]]]) -> str:
    """One analyzer table (a column pair per model) and one ρ table per model."""
    names = list(runs)
    header = "| method | " + " | ".join(f"{m}: cosine ↑ | {m}: top-k ↑" for m in names) + " |"
    lines = [header, "|---|" + "---|---|" * len(names)]
    for method in METHODS:
        cells = []
        for model in names:
            values = [run["scores"][method] for run in runs[model]]
            if any(isinstance(v, str) for v in values):
                reason = next(v for v in values if isinstance(v, str))
                cells += [f"refused: {reason}", ""]
            else:
                cells += [_cell([v["cosine"] for v in values]), _cell([v["topk"] for v in values])]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append(
        "| (chance) | " + " | ".join(["", f"{SIGNAL_TOKENS / LENGTH:.3f}"] * len(names)) + " |"
    )
    for model in names:
        quality = [run["quality"] for run in runs[model]]
        lines += ["", f"ρ(S) per layer, {model}:", ""]
        if isinstance(quality[0], str):
            lines.append(f"not measured: {quality[0]}")
            continue
        lines += [
            "| layer | ρ random | ρ filter | ρ linear | ρ two-component |",
            "|---|---|---|---|---|",
        ]
        for layer in quality[0]:
            cells = [_cell([q[layer][e] for q in quality]) for e in ESTIMATORS]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=500)
    args = parser.parse_args(argv)
    _register_position_embedding()
    runs: dict[str, list[dict[str, Any]]] = {}
    for model_name in args.models:
        for seed in args.seeds:
            try:
                run = run_experiment(model_name, seed, args.n_train, args.n_test, args.epochs)
            except ValueError as err:  # the model as a whole is refused
                print(f"{model_name}: not supported yet: {err}", file=sys.stderr)
                break
            print(
                f"{model_name} seed {seed}: test accuracy {run['accuracy']:.3f}, trained in "
                f"{run['seconds']:.1f} s",
                file=sys.stderr,
            )
            runs.setdefault(model_name, []).append(run)
    seeds = ", ".join(str(s) for s in args.seeds)
    accuracy = "; ".join(f"{m} {_cell([r['accuracy'] for r in rs])}" for m, rs in runs.items())
    print(
        f"Token signal/distractor data, T={LENGTH}, d={DIM}, {SIGNAL_TOKENS} signal tokens, "
        f"{args.n_train} training and {args.n_test} test sequences, {args.epochs} epochs; "
        f"seeds {seeds}; test accuracy {accuracy}.\n"
    )
    print(markdown_tables(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
