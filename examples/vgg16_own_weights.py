"""PatternAttribution on VGG16 with weights from a file of your own.

``keras.applications.VGG16(weights="imagenet")`` downloads its weights; on a machine without
internet, or with a VGG16 you trained yourself, build the architecture with ``weights=None``
and load the weights from a file::

    model = keras.applications.VGG16(weights=None, input_shape=(224, 224, 3), classes=1000)
    model.load_weights("vgg16_weights.h5")

Any file ``load_weights`` accepts works: a ``.weights.h5`` written by ``model.save_weights``,
or the Keras 2 ImageNet file ``vgg16_weights_tf_dim_ordering_tf_kernels.h5``. Then fit the
patterns on a folder of representative images (a few hundred to a few thousand: the paper used
the ImageNet training set), and explain a folder of images::

    python examples/vgg16_own_weights.py --weights vgg16_weights.h5 \\
        --fit-data train_images/ --images my_images/ --output vgg16-out/

Images are read with ``keras.utils.load_img``, resized to ``--image-size`` (224) and
preprocessed the VGG16 way (``--preprocess caffe``: BGR, ImageNet means subtracted), exactly as
``pattern-keras fit/analyze`` do (the same loader is used).

Without ``--weights`` the script runs a smoke test: random weights, 64×64 inputs, 10 classes and
generated images (or ``--images``), so that everything but the file can be checked in a minute.
Explanations of a random network are meaningless.

Outputs in ``--output``: ``patterns.h5`` (reuse it with ``--patterns``), ``explanations.png``
(a grid: input, Gradient, LRP-epsilon, PatternNet, PatternAttribution), one PatternAttribution
heatmap PNG per image, and ``explanations.npy``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def build_vgg16(weights: str | None, image_size: int, classes: int):
    """VGG16 without a download: random weights, then ``load_weights`` from ``weights``."""
    import keras

    model = keras.applications.VGG16(
        weights=None, input_shape=(image_size, image_size, 3), classes=classes
    )
    if weights:
        model.load_weights(weights)
    return model


def generated_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour images in 0..255 (for the smoke test only)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 8, 8, 3))
    repeat = -(-size // 8)
    return np.repeat(np.repeat(coarse, repeat, axis=1), repeat, axis=2)[:, :size, :size]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="PatternAttribution on keras.applications.VGG16 with your own weights file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without --weights: a smoke test on random weights at 64x64.",
    )
    parser.add_argument("--weights", help="weights file for VGG16 (model.load_weights)")
    parser.add_argument("--images", help="folder of images to explain (PNG/JPEG)")
    parser.add_argument(
        "--fit-data", help="folder of images to fit the patterns on (default: --images)"
    )
    parser.add_argument("--patterns", help="a pattern file fitted before (skips the fit)")
    parser.add_argument("--image-size", type=int, help="input size (224; 64 in the smoke test)")
    parser.add_argument("--classes", type=int, help="output classes (1000; 10 in the smoke test)")
    parser.add_argument(
        "--preprocess",
        default="caffe",
        choices=("none", "unit", "caffe", "tf", "torch"),
        help="input convention (VGG16: caffe)",
    )
    parser.add_argument("--fit-steps", type=int, help="fit on at most this many batches")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", "-o", default="vgg16-out", help="output folder")
    args = parser.parse_args(argv)

    smoke = args.weights is None
    size = args.image_size or (64 if smoke else 224)
    classes = args.classes or (10 if smoke else 1000)
    if smoke:
        print(
            "No --weights: smoke test on a randomly initialized VGG16 "
            f"({size}x{size}, {classes} classes). The explanations mean nothing."
        )

    import pattern_keras as pk
    from pattern_keras import plot
    from pattern_keras.cli import UsageError, load_data

    model = build_vgg16(args.weights, size, classes)
    print(
        f"VGG16: {model.count_params():,} parameters"
        + (f", weights from {args.weights}" if args.weights else ", random weights")
    )

    def read(folder):
        try:
            return load_data(
                folder, image_size=(size, size), preprocess=args.preprocess, model=model
            )
        except UsageError as err:
            raise SystemExit(f"error: {err}") from None

    def preprocess(x):
        # The same conventions as the loader, for generated images.
        from pattern_keras.cli import _preprocess

        return _preprocess(x.astype(np.float32), args.preprocess)

    if args.images:
        x, names = read(args.images)
    else:
        x = preprocess(generated_images(4, size, seed=1))
        names = [f"generated{i}" for i in range(len(x))]
    if args.fit_data:
        x_fit, _ = read(args.fit_data)
    elif args.images or not smoke:
        x_fit = x
    else:
        x_fit = preprocess(generated_images(32, size, seed=2))

    os.makedirs(args.output, exist_ok=True)
    if not args.patterns and not smoke and len(x_fit) < 100:
        print(
            f"warning: fitting patterns on only {len(x_fit)} images; the paper used the "
            "ImageNet training set, use at least a few hundred (--fit-data)"
        )
    if args.patterns:
        pattern_attribution = pk.PatternAttribution(model, patterns=args.patterns)
        print(f"Loaded the patterns from {args.patterns}")
    else:
        print(f"Fitting patterns on {len(x_fit)} images")
        pattern_attribution = pk.PatternAttribution(model).fit(
            x_fit, batch_size=args.batch_size, steps=args.fit_steps
        )
        path = os.path.join(args.output, "patterns.h5")
        pattern_attribution.save_patterns(path)
        print(f"Saved the patterns (and statistics) to {path}")
    pattern_net = pk.PatternNet(model, patterns=pattern_attribution.patterns)

    predictions = model.predict(x, batch_size=args.batch_size, verbose=0)
    top = predictions.argmax(axis=1)
    explanations = {
        "Gradient": pk.Gradient(model).analyze(x, batch_size=args.batch_size),
        "LRP-epsilon": pk.LRPEpsilon(model).analyze(x, batch_size=args.batch_size),
        "PatternNet": pattern_net.analyze(x, batch_size=args.batch_size),
        "PatternAttribution": pattern_attribution.analyze(x, batch_size=args.batch_size),
    }
    for name, value in explanations.items():
        bad = ~np.isfinite(value)
        if bad.any():
            print(
                f"warning: {name} gave {int(bad.sum())} NaN/inf values (patterns fitted on "
                f"{len(x_fit)} images are unreliable: fit on more); shown as 0"
            )
            explanations[name] = np.where(bad, 0.0, value)
    # Show the inputs in their original colours: undo "caffe" (BGR) for display only.
    shown = x[..., ::-1] if args.preprocess == "caffe" else x
    figure = plot.explanation_grid(
        shown[:8],
        {k: v[:8] for k, v in explanations.items()},
        row_labels=[f"{n[:14]}: class {c}" for n, c in zip(names[:8], top[:8])],
    )
    grid = plot.save_figure(figure, os.path.join(args.output, "explanations.png"))
    np.save(os.path.join(args.output, "explanations.npy"), explanations["PatternAttribution"])
    heatmaps = plot.heatmap(explanations["PatternAttribution"])
    from matplotlib import image as mpimg

    for name, heat in zip(names, heatmaps):
        mpimg.imsave(os.path.join(args.output, f"{name}.png"), heat)
    print(
        f"Wrote {grid}, {len(names)} PatternAttribution heatmaps and explanations.npy to "
        f"{args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
