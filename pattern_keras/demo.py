"""``pattern-keras demo``: the whole pipeline on generated data, in about a minute on a CPU.

What it does, in order:

1. draws training and test images from :func:`pattern_keras.datasets.signal_distractor`
   (a class-carrying signal under louder, overlapping distractors, with the true signal known
   for every image; generated, so nothing is downloaded and scikit-learn is not needed);
2. trains a small CNN on them (seeded);
3. fits the patterns of PatternNet / PatternAttribution on the training images (progress bar)
   and saves them, with their statistics, to ``patterns.h5``;
4. explains test images with Gradient, DeConvNet, Guided BackProp, LRP-z, PatternNet and
   PatternAttribution and writes the grid ``explanations.png``;
5. runs the image degradation benchmark (``degradation.png``, AOPC per analyzer and for a
   random order);
6. measures the signal estimators' quality ρ(S) per layer (``signal_quality.png``);
7. scores every explanation against the true signal (cosine, top-k precision) and writes all
   numbers to ``summary.txt``.

Use it from the shell (``pattern-keras demo [--output DIR] [--quick]``) or from Python::

    from pattern_keras.demo import run_demo
    result = run_demo("demo-out", quick=True)
    result.files["summary"], result.metrics["test_accuracy"]

``quick=True`` (or the environment variable ``PATTERN_KERAS_DEMO_QUICK=1``) runs a tiny version
of the same steps in a few seconds, for tests.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DemoSettings", "DemoResult", "run_demo", "DEFAULT_OUTPUT", "QUICK_ENV"]

#: Where the demo writes when no output folder is given (relative to the working directory).
DEFAULT_OUTPUT = "pattern-keras-demo"
#: Set this environment variable to ``1`` to make :func:`run_demo` default to the quick run.
QUICK_ENV = "PATTERN_KERAS_DEMO_QUICK"

#: Column order of the explanation grid: display name -> registry name.
GRID_METHODS = {
    "Gradient": "gradient",
    "DeConvNet": "deconvnet",
    "GuidedBackprop": "guided_backprop",
    "LRP-Z": "lrp.z",
    "PatternNet": "pattern.net",
    "PatternAttribution": "pattern.attribution",
}
#: Analyzers compared by image degradation (PatternNet gives a signal, not an attribution).
DEGRADATION_METHODS = ("Gradient", "DeConvNet", "GuidedBackprop", "LRP-Z", "PatternAttribution")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run. :meth:`default` takes about a minute on 2 CPU cores."""

    n_train: int = 4000
    n_test: int = 500
    image_size: int = 16
    epochs: int = 10
    batch_size: int = 64
    fit_batch_size: int = 256
    n_grid: int = 6
    n_degradation: int = 100
    degradation_patch: int = 2
    degradation_steps: int = 16
    l2: float = 1e-2
    learning_rate: float = 3e-3

    @classmethod
    def default(cls) -> DemoSettings:
        return cls()

    @classmethod
    def quick(cls) -> DemoSettings:
        """A tiny run of every step (seconds): for tests, not for conclusions."""
        return cls(
            n_train=512, n_test=64, epochs=2, n_grid=4, n_degradation=16, degradation_steps=8
        )


@dataclasses.dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes
    ----------
    output : str
        The output folder.
    files : dict of str to str
        ``"explanations"``, ``"degradation"``, ``"signal_quality"``, ``"patterns"`` and
        ``"summary"``: name -> path.
    metrics : dict
        ``test_accuracy``, ``fit_samples``, ``aopc`` ({analyzer: AOPC}, plus ``"random"``),
        ``signal_cosine`` and ``topk_precision`` ({analyzer: mean over test images}),
        ``rho`` ({layer: {estimator: ρ}}), ``seconds``.
    """

    output: str
    files: dict[str, str]
    metrics: dict[str, Any]


def build_model(image_size: int = 16, l2: float = 1e-2):
    """The demo's small CNN: two 3×3 convolutions (the second with stride 2), two dense layers.

    Outputs two logits. An L2 penalty keeps the logits from sharing a common component that
    the classification never sees (with 2 logits only their difference is trained), which
    would otherwise leave the distractors in each logit's explanation.
    """
    import keras

    layers = keras.layers
    reg = dict(kernel_regularizer=keras.regularizers.l2(l2))
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 1)),
            layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1", **reg),
            layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2", **reg),
            layers.Flatten(name="flatten"),
            layers.Dense(32, activation="relu", name="dense1", **reg),
            layers.Dense(2, name="logits", **reg),
        ],
        name="demo_cnn",
    )


def _quick_from_env() -> bool:
    return os.environ.get(QUICK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_demo(
    output: str | os.PathLike = DEFAULT_OUTPUT,
    quick: bool | None = None,
    seed: int = 0,
    verbose: int = 1,
    settings: DemoSettings | None = None,
    print_fn: Callable[[str], None] = print,
) -> DemoResult:
    """Train a small CNN on signal/distractor images, fit patterns, explain, evaluate, save.

    Parameters
    ----------
    output : str or path
        Folder for the results (created if needed; files in it are overwritten).
    quick : bool, optional
        A tiny run (seconds). Default: the environment variable ``PATTERN_KERAS_DEMO_QUICK``.
    seed : int
        Seeds the data, the weight initialization and the training order.
    verbose : int
        0: silent; 1: one line per step and a progress bar for the pattern fit.
    settings : DemoSettings, optional
        Explicit sizes; overrides ``quick``.
    print_fn : callable
        Where the progress lines go (default :func:`print`).

    Returns
    -------
    DemoResult
    """
    from pattern_keras.datasets import signal_distractor

    if settings is None:
        if quick is None:
            quick = _quick_from_env()
        settings = DemoSettings.quick() if quick else DemoSettings.default()
    s = settings
    say = print_fn if verbose else (lambda message: None)
    started = time.perf_counter()
    output = os.fspath(output)
    os.makedirs(output, exist_ok=True)
    files = {
        "explanations": os.path.join(output, "explanations.png"),
        "degradation": os.path.join(output, "degradation.png"),
        "signal_quality": os.path.join(output, "signal_quality.png"),
        "patterns": os.path.join(output, "patterns.h5"),
        "summary": os.path.join(output, "summary.txt"),
    }

    shape = (s.image_size, s.image_size)
    say(
        f"[1/6] Generating {s.n_train} training and {s.n_test} test images "
        f"({shape[0]}x{shape[1]}, signal + distractors)"
    )
    train = signal_distractor(s.n_train, shape=shape, seed=seed + 1)
    test = signal_distractor(s.n_test, shape=shape, seed=seed + 2)

    say(f"[2/6] Training a small CNN ({s.epochs} epochs)")
    model, logits = _train_model(train, test, s, seed)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == test.labels))
    say(f"      test accuracy {accuracy:.3f}")

    say(f"[3/6] Fitting patterns on {s.n_train} training images")
    patterns = _fit_patterns(model, train.x, s, files["patterns"], verbose)

    say("[4/6] Explaining the test images")
    explanations = _explain(model, patterns, test, logits, s, files["explanations"])
    cosine, precision = _score_against_signal(explanations, test)

    n_deg = min(s.n_degradation, s.n_test)
    patch = s.degradation_patch
    steps = min(s.degradation_steps, math.ceil(s.image_size / patch) ** 2)
    say(f"[5/6] Image degradation: {n_deg} images, {patch}x{patch} patches, {steps} steps")
    aopc = _degrade(model, explanations, test.x[:n_deg], patch, steps, seed, files["degradation"])

    say("[6/6] Measuring the signal estimators' quality rho(S) per layer")
    rho = _measure_quality(model, train.x, test.x, files["signal_quality"])

    seconds = time.perf_counter() - started
    metrics = {
        "test_accuracy": accuracy,
        "fit_samples": int(patterns.n_samples),
        "aopc": aopc,
        "signal_cosine": cosine,
        "topk_precision": precision,
        "rho": rho,
        "seconds": seconds,
    }
    _write_summary(files["summary"], s, seed, metrics, patch, steps, n_deg, train)

    say("")
    say(f"Done in {seconds:.0f} s. Wrote to {os.path.abspath(output)}:")
    descriptions = {
        "explanations": "inputs, six explanations and the true signal per test image",
        "degradation": "image degradation curves (AOPC in the legend)",
        "signal_quality": "signal estimator quality rho(S) per layer",
        "patterns": "fitted patterns + statistics (load with pattern_keras.Patterns.load)",
        "summary": "accuracy, AOPC, rho and ground-truth scores",
    }
    for key, path in files.items():
        say(f"  {os.path.basename(path):<20} {descriptions[key]}")
    return DemoResult(output=output, files=files, metrics=metrics)


# -- the steps of run_demo ---------------------------------------------------------------------


def _train_model(train: Any, test: Any, s: DemoSettings, seed: int) -> tuple[Any, np.ndarray]:
    """Step 2: the seeded CNN trained on ``train``; returns it and its test logits."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(s.image_size, s.l2)
    model.compile(
        optimizer=keras.optimizers.Adam(s.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        train.x, train.labels, epochs=s.epochs, batch_size=s.batch_size, shuffle=True, verbose=0
    )
    return model, model.predict(test.x, batch_size=256, verbose=0)


def _fit_patterns(model: Any, x: np.ndarray, s: DemoSettings, path: str, verbose: int) -> Any:
    """Step 3: PatternAttribution's patterns fitted on ``x``, saved to ``path``; returned."""
    import pattern_keras as pk

    attribution = pk.PatternAttribution(model)
    attribution.fit(x, batch_size=s.fit_batch_size, verbose=1 if verbose else 0)
    attribution.save_patterns(path)
    return attribution.patterns


def _explain(
    model: Any, patterns: Any, test: Any, logits: np.ndarray, s: DemoSettings, path: str
) -> dict[str, np.ndarray]:
    """Step 4: every grid method on the test images; the grid figure written to ``path``."""
    import pattern_keras as pk
    from pattern_keras import plot

    analyzers = {}
    for label, name in GRID_METHODS.items():
        needs = pk.analyzer_class(name).needs_patterns  # the registry says, not the name
        kwargs = {"patterns": patterns} if needs else {}
        analyzers[label] = pk.create_analyzer(name, model, **kwargs)
    explanations = {label: a.analyze(test.x) for label, a in analyzers.items()}
    grid_index = _grid_rows(test.labels, s.n_grid)
    columns = {label: e[grid_index] for label, e in explanations.items()}
    columns["true signal"] = test.signal[grid_index]
    predicted = np.argmax(logits, axis=1)
    figure = plot.explanation_grid(
        test.x[grid_index],
        columns,
        row_labels=[
            f"true {int(test.labels[i])} / predicted {int(predicted[i])}" for i in grid_index
        ],
        title="signal/distractor test images (rows: true class / predicted class); "
        "each method explains the predicted class's logit",
    )
    plot.save_figure(figure, path)
    return explanations


def _score_against_signal(
    explanations: dict[str, np.ndarray], test: Any
) -> tuple[dict[str, float], dict[str, float]]:
    """Step 4b: mean |cosine| with the true signal and top-k precision on its support."""
    from pattern_keras.evaluation.groundtruth import signal_cosine, topk_precision

    cosine = {
        label: float(np.mean(signal_cosine(e, test.signal))) for label, e in explanations.items()
    }
    precision = {
        label: float(np.mean(topk_precision(e, test.support, absolute=True)))
        for label, e in explanations.items()
    }
    return cosine, precision


def _degrade(
    model: Any,
    explanations: dict[str, np.ndarray],
    x: np.ndarray,
    patch: int,
    steps: int,
    seed: int,
    path: str,
) -> dict[str, float]:
    """Step 5: image degradation of the attribution methods and a random order; AOPC each."""
    from pattern_keras import plot
    from pattern_keras.evaluation.degradation import image_degradation, plot_degradation

    n = len(x)
    results = {}
    for label in DEGRADATION_METHODS:
        results[label] = image_degradation(
            model, explanations[label][:n], x, patch_size=patch, steps=steps, seed=seed
        )
    results["random"] = image_degradation(
        model, None, x, patch_size=patch, steps=steps, order="random", seed=seed
    )
    figure = plot_degradation(
        results, title=f"image degradation ({patch}x{patch} patches, most relevant first)"
    )
    plot.save_figure(figure, path)
    return {label: float(r.aopc) for label, r in results.items()}


def _measure_quality(
    model: Any, x_train: np.ndarray, x_test: np.ndarray, path: str
) -> dict[str, dict[str, float]]:
    """Step 6: the signal estimators' quality rho(S) per layer; the bar chart to ``path``."""
    from pattern_keras import plot
    from pattern_keras.evaluation.quality import (
        plot_signal_estimator_quality,
        signal_estimator_quality,
    )

    quality = signal_estimator_quality(model, x_train, x_test)
    plot.save_figure(plot_signal_estimator_quality(quality), path)
    return {
        str(layer): {str(k): float(v) for k, v in values.items()}
        for layer, values in quality.items()
    }


def _grid_rows(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` test images, alternating the two classes."""
    n = min(n, len(labels))
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    picked = []
    for i in range(n):
        pool = by_class[i % 2] if len(by_class[i % 2]) > i // 2 else by_class[1 - i % 2]
        candidates = [j for j in pool if j not in picked]
        picked.append(int(candidates[0]))
    return np.asarray(picked)


def _write_summary(path, s, seed, metrics, patch, steps, n_deg, train) -> None:
    from pattern_keras import __version__

    lines = [
        f"# pattern-keras demo (pattern_keras {__version__}, seed {seed})",
        f"data: signal_distractor {s.image_size}x{s.image_size}x1, {s.n_train} training / "
        f"{s.n_test} test images; {train.distractor_patterns.shape[0]} distractors, signal "
        f"support {int(train.support.sum())} pixels",
        "model: Conv2D(8, 3x3) - Conv2D(16, 3x3, stride 2) - Dense(32) - Dense(2 logits), "
        f"ReLU, L2 {s.l2:g}, {s.epochs} epochs",
        f"test_accuracy: {metrics['test_accuracy']:.4f}",
        f"fit_samples: {metrics['fit_samples']}",
        "",
        f"# image degradation: {n_deg} test images, {patch}x{patch} patches, {steps} steps, "
        "AOPC (higher is better)",
    ]
    lines += [f"aopc[{label}]: {value:.4f}" for label, value in metrics["aopc"].items()]
    lines += ["", "# signal estimator quality rho(S) per layer (higher is better)"]
    for layer, values in metrics["rho"].items():
        parts = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        lines.append(f"rho[{layer}]: {parts}")
    lines += [
        "",
        "# against the true signal, mean over the test images (higher is better):",
        "# |cosine| with the signal a_s*y; precision of the top-k pixels (k = support "
        "size, by |value|) on the signal's support",
    ]
    lines += [
        f"signal_cosine[{label}]: {value:.4f}" for label, value in metrics["signal_cosine"].items()
    ]
    lines += [
        f"topk_precision[{label}]: {value:.4f}"
        for label, value in metrics["topk_precision"].items()
    ]
    lines += ["", f"seconds: {metrics['seconds']:.1f}"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
