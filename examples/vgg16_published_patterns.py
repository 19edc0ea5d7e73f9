"""The paper's VGG16 explanations without refitting: ImageNet weights and the published patterns.

The patterns of the paper (VGG16 on ImageNet, fitted on the training set: 34 hours on 4 GPUs)
were published for iNNvestigate 1.x as an ``.npz`` of ``arr_0 … arr_15``, one array per layer
with a kernel (13 convolutions, 3 Dense), e.g.
``vgg16_pattern_type_relu_tf_dim_ordering_tf_kernels.npz``. With that file and VGG16's ImageNet
weights file (``vgg16_weights_tf_dim_ordering_tf_kernels.h5``, or any file ``load_weights``
reads), both given as paths (nothing is downloaded)::

    python examples/vgg16_published_patterns.py --weights vgg16_weights.h5 \\
        --patterns vgg16_pattern_type_relu_tf_dim_ordering_tf_kernels.npz \\
        --images my_images/ --output vgg16-out/

The ``.npz`` is imported once (:meth:`pattern_keras.Patterns.from_innvestigate`: every array
is checked against its layer's kernel) and saved as ``patterns.h5`` in ``--output``, with the
model's fingerprint; pass that file as ``--patterns`` the next time. The same conversion on the
command line::

    pattern-keras import-patterns vgg16.keras vgg16_pattern_type_relu_...npz -o patterns.h5

The published files were fitted with ``pattern_type="relu"`` (the file name says so; give
``--pattern-type linear`` for a ``..._linear_...`` file) on 224×224 inputs, preprocessed the
VGG16 way (``--preprocess caffe``: BGR, ImageNet means subtracted), as the images here are.

Without ``--weights`` the script runs a smoke test: random weights, small inputs, 10 classes,
generated images, and a stand-in ``.npz`` written the iNNvestigate way
(``np.savez(path, *patterns)``) from patterns fitted here, so that the whole path (import,
save, explain, figures) runs in a minute. Explanations of a random network are meaningless.

Outputs in ``--output``: ``patterns.h5``, ``explanations.png`` (a grid: input, PatternNet,
PatternAttribution), one PatternAttribution heatmap PNG per image, ``pattern_net.npy`` and
``pattern_attribution.npy``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from vgg16_own_weights import build_vgg16, generated_images


def stand_in_npz(model, x_fit, path: str, pattern_type: str) -> str:
    """For the smoke test: fit patterns here and write them as iNNvestigate does."""
    import pattern_keras as pk
    from pattern_keras.patterns.innvestigate import kernel_layers

    patterns = pk.PatternComputer(model, pattern_type=pattern_type).compute(x_fit, verbose=0)
    np.savez(path, *[patterns[key] for key, _ in kernel_layers(model)])
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="PatternNet and PatternAttribution on VGG16 with the published "
        "(iNNvestigate) patterns.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without --weights: a smoke test on random weights with stand-in patterns.",
    )
    parser.add_argument("--weights", help="weights file for VGG16 (model.load_weights)")
    parser.add_argument(
        "--patterns",
        help="the iNNvestigate pattern file (.npz), or a pattern_keras file (.h5) imported before",
    )
    parser.add_argument(
        "--pattern-type",
        default="relu",
        choices=("relu", "linear"),
        help="the estimator the .npz was fitted with (default relu)",
    )
    parser.add_argument("--images", help="folder of images to explain (PNG/JPEG)")
    parser.add_argument("--image-size", type=int, help="input size (224; 64 in the smoke test)")
    parser.add_argument("--classes", type=int, help="output classes (1000; 10 in the smoke test)")
    parser.add_argument(
        "--preprocess",
        default="caffe",
        choices=("none", "unit", "caffe", "tf", "torch"),
        help="input convention (VGG16: caffe)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", "-o", default="vgg16-out", help="output folder")
    args = parser.parse_args(argv)

    smoke = args.weights is None
    if not smoke and not args.patterns:
        parser.error("--weights needs --patterns (the published .npz, or an imported .h5)")
    size = args.image_size or (64 if smoke else 224)
    classes = args.classes or (10 if smoke else 1000)
    if smoke:
        print(
            "No --weights: smoke test on a randomly initialized VGG16 "
            f"({size}x{size}, {classes} classes). The explanations mean nothing."
        )

    import pattern_keras as pk
    from pattern_keras import plot
    from pattern_keras.cli import UsageError, _preprocess, load_data

    if smoke:  # the same random weights every run, so an imported .h5 can be reused
        import keras

        keras.utils.set_random_seed(0)
    model = build_vgg16(args.weights, size, classes)
    print(
        f"VGG16: {model.count_params():,} parameters"
        + (f", weights from {args.weights}" if args.weights else ", random weights")
    )

    if args.images:
        try:
            x, names = load_data(
                args.images, image_size=(size, size), preprocess=args.preprocess, model=model
            )
        except UsageError as err:
            raise SystemExit(f"error: {err}") from None
    else:
        x = _preprocess(generated_images(4, size, seed=1).astype(np.float32), args.preprocess)
        names = [f"generated{i}" for i in range(len(x))]

    os.makedirs(args.output, exist_ok=True)
    source = args.patterns
    if source is None:  # smoke test only
        x_fit = _preprocess(generated_images(32, size, seed=2).astype(np.float32), args.preprocess)
        source = stand_in_npz(
            model, x_fit, os.path.join(args.output, "stand_in.npz"), args.pattern_type
        )
        print(f"Wrote stand-in iNNvestigate patterns to {source}")
    if source.lower().endswith(".npz"):
        try:
            patterns = pk.Patterns.from_innvestigate(source, model, args.pattern_type)
        except ValueError as err:  # a file for another model or input size, or not patterns
            raise SystemExit(f"error: {err}") from None
        path = os.path.join(args.output, "patterns.h5")
        patterns.save(path)
        print(
            f"Imported {len(patterns)} {args.pattern_type} patterns from {source}; saved "
            f"them to {path} (give that file as --patterns next time)"
        )
    else:
        patterns = pk.Patterns.load(source)
        print(f"Loaded the patterns from {source}")

    pattern_type = dict(patterns.pattern_types)
    explanations = {
        "PatternNet": pk.PatternNet(model, pattern_type=pattern_type, patterns=patterns).analyze(
            x, batch_size=args.batch_size
        ),
        "PatternAttribution": pk.PatternAttribution(
            model, pattern_type=pattern_type, patterns=patterns
        ).analyze(x, batch_size=args.batch_size),
    }
    for name, value in explanations.items():
        bad = ~np.isfinite(value)
        if bad.any():
            print(f"warning: {name} gave {int(bad.sum())} NaN/inf values; shown as 0")
            explanations[name] = np.where(bad, 0.0, value)
    top = model.predict(x, batch_size=args.batch_size, verbose=0).argmax(axis=1)
    shown = x[..., ::-1] if args.preprocess == "caffe" else x  # BGR back to RGB, for display
    figure = plot.explanation_grid(
        shown[:8],
        {k: v[:8] for k, v in explanations.items()},
        row_labels=[f"{n[:14]}: class {c}" for n, c in zip(names[:8], top[:8])],
    )
    grid = plot.save_figure(figure, os.path.join(args.output, "explanations.png"))
    np.save(os.path.join(args.output, "pattern_net.npy"), explanations["PatternNet"])
    np.save(
        os.path.join(args.output, "pattern_attribution.npy"), explanations["PatternAttribution"]
    )
    from matplotlib import image as mpimg

    for name, heat in zip(names, plot.heatmap(explanations["PatternAttribution"])):
        mpimg.imsave(os.path.join(args.output, f"{name}.png"), heat)
    print(
        f"Wrote {grid}, {len(names)} PatternAttribution heatmaps, pattern_net.npy and "
        f"pattern_attribution.npy to {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
