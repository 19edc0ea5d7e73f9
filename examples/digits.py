"""PatternNet and PatternAttribution on scikit-learn's handwritten digits (8×8, no download).

Trains a small CNN on :func:`pattern_keras.datasets.load_digits` (scikit-learn's bundled
digits; ``pip install scikit-learn``, or the package's ``examples`` extra), fits the patterns,
and saves a grid of explanations (Gradient, Guided BackProp, LRP-z, PatternNet,
PatternAttribution) of test digits, plus the image degradation AOPC of each method.

Run::

    python examples/digits.py --output digits.png
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def build_model(classes: int = 10):
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(64, activation="relu", name="dense"),
            layers.Dense(classes, name="logits"),
        ],
        name="digits_cnn",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", "-o", default="digits.png", help="grid PNG (digits.png)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rows", type=int, default=8, help="test digits in the grid")
    parser.add_argument("--patterns", help="also save the fitted patterns to this .h5 file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 epochs, for a smoke test")
    args = parser.parse_args(argv)

    import keras

    import pattern_keras as pk
    from pattern_keras import plot
    from pattern_keras.datasets import load_digits
    from pattern_keras.evaluation.degradation import image_degradation

    x, labels = load_digits()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    x, labels = x[order], labels[order]
    split = int(0.8 * len(x))
    x_train, y_train, x_test, y_test = x[:split], labels[:split], x[split:], labels[split:]

    keras.utils.set_random_seed(args.seed)
    model = build_model()
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    epochs = 2 if args.quick else args.epochs
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    print(f"{len(x_train)} training / {len(x_test)} test digits; test accuracy {accuracy:.3f}")

    print("Fitting patterns on the training digits")
    pattern_attribution = pk.PatternAttribution(model).fit(x_train, batch_size=256)
    pattern_net = pk.PatternNet(model, patterns=pattern_attribution.patterns)
    if args.patterns:
        pattern_attribution.save_patterns(args.patterns)
        print(f"Saved the patterns to {args.patterns}")

    analyzers = {
        "Gradient": pk.Gradient(model),
        "GuidedBackprop": pk.GuidedBackprop(model),
        "LRP-Z": pk.LRPZ(model),
        "PatternNet": pattern_net,
        "PatternAttribution": pattern_attribution,
    }
    shown = x_test[: args.rows]
    explanations = {name: a.analyze(shown) for name, a in analyzers.items()}
    predicted = model.predict(shown, verbose=0).argmax(axis=1)
    figure = plot.explanation_grid(
        shown,
        explanations,
        row_labels=[f"{t} (pred. {p})" for t, p in zip(y_test[: args.rows], predicted)],
        title="digits: explanations of the predicted class",
    )
    plot.save_figure(figure, args.output)
    print(f"Saved the grid to {args.output}")

    print("Image degradation on the test digits (1x1 patches, 16 steps; AOPC, higher is better):")
    for name in ("Gradient", "GuidedBackprop", "LRP-Z", "PatternAttribution"):
        result = image_degradation(model, analyzers[name], x_test, patch_size=1, steps=16)
        print(f"  {name:>18}: {result.aopc:.3f}")
    result = image_degradation(model, None, x_test, patch_size=1, steps=16, order="random")
    print(f"  {'random':>18}: {result.aopc:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
