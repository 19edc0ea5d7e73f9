"""Explaining a segmentation network: a class over a region of the output map.

Generates images of squares and discs on noise (no download) with their per-pixel label maps
(0 background, 1 square, 2 disc), trains a small U-Net (Conv2D blocks, MaxPooling2D down,
UpSampling2D and Concatenate skip connections up, a per-pixel softmax over the classes), and
explains "class c over a region" by passing an output-shaped 0/1 mask as ``neuron_selection``:
every analyzer then explains ``Σ mask ⊙ logits`` (the final softmax is stripped). Two regions
are explained: one object's pixels for its predicted class, and the whole predicted map of that
class.

Printed: the test pixel accuracy, and per analyzer the fraction of the positive relevance that
falls inside the selected object (and inside the object grown by 2 pixels) when one object is
explained, averaged over test objects; the object's share of the image is the value a map
that ignores the object would get. Saved: a figure of the image, the label map, the
prediction, the two regions and their heatmaps.

Run::

    python examples/segmentation.py --figure docs/images/segmentation.png
    python examples/segmentation.py --quick   # a smoke run: tiny sizes, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

CLASSES = ("background", "square", "disc")
ANALYZERS = ("Gradient", "LRP-epsilon", "PatternAttribution")


def make_shapes(n: int, size: int, seed: int = 0, noise: float = 0.35):
    """Images of 1–3 non-overlapping squares and discs on Gaussian noise.

    Both shapes have the same brightness (drawn per object in ``[0.6, 1.2]``) and a comparable
    area, so a pixel's class depends on the shape around it, not on its value.

    Parameters
    ----------
    n, size : int
        Number of images, and their height = width (a multiple of 4).
    seed : int
        Seed of the generator.
    noise : float
        Standard deviation of the additive pixel noise.

    Returns
    -------
    images : numpy.ndarray
        float32, shape ``(n, size, size, 1)``.
    labels : numpy.ndarray
        int32, shape ``(n, size, size)``: 0 background, 1 square, 2 disc.
    objects : numpy.ndarray
        int32, shape ``(n, size, size)``: 0 background, k > 0 the k-th object of the image.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    images = rng.normal(0.0, noise, (n, size, size)).astype("float32")
    labels = np.zeros((n, size, size), "int32")
    objects = np.zeros((n, size, size), "int32")
    low, high = max(2, size // 10), max(3, size // 5)  # half-widths / radii
    for i in range(n):
        placed, wanted = 0, int(rng.integers(1, 4))
        for _ in range(50):  # rejection sampling of free places
            if placed == wanted:
                break
            kind = int(rng.integers(1, 3))
            half = int(rng.integers(low, high + 1))
            r0, c0 = rng.integers(half, size - half, 2)
            if kind == 1:
                shape = (abs(rows - r0) <= half) & (abs(cols - c0) <= half)
            else:  # a disc of about the square's area
                shape = (rows - r0) ** 2 + (cols - c0) ** 2 <= (1.13 * half + 0.5) ** 2
            grown = (abs(rows - r0) <= half + 2) & (abs(cols - c0) <= half + 2)
            if np.any(grown & (labels[i] > 0)):
                continue
            placed += 1
            labels[i][shape] = kind
            objects[i][shape] = placed
            images[i][shape] += rng.uniform(0.6, 1.2)
    return images[..., None], labels, objects


def build_unet(size: int, classes: int = len(CLASSES), width: int = 16):
    """A small U-Net in the keras.io style: two downsampling levels, UpSampling2D and
    Concatenate skip connections on the way up, a per-pixel softmax over ``classes``."""
    import keras

    layers = keras.layers

    def block(h, filters, name):
        h = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_a")(h)
        return layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_b")(h)

    inputs = keras.Input((size, size, 1))
    skip1 = block(inputs, width, "down1")
    skip2 = block(layers.MaxPooling2D(name="pool1")(skip1), 2 * width, "down2")
    h = block(layers.MaxPooling2D(name="pool2")(skip2), 4 * width, "bottom")
    h = layers.UpSampling2D(name="up2")(h)
    h = block(layers.Concatenate(name="cat2")([h, skip2]), 2 * width, "up2")
    h = layers.UpSampling2D(name="up1")(h)
    h = block(layers.Concatenate(name="cat1")([h, skip1]), width, "up1")
    outputs = layers.Conv2D(classes, 1, activation="softmax", name="classes")(h)
    return keras.Model(inputs, outputs, name="unet")


def object_mask(prediction: np.ndarray, objects: np.ndarray, k: int, classes: int):
    """The output-shaped mask selecting object ``k``'s pixels for its predicted class.

    The class is the one predicted on most of the object's pixels. Returns ``(mask, c, inside)``
    with ``mask`` of shape ``(H, W, classes)`` and ``inside`` the object's pixels ``(H, W)``.
    """
    inside = objects == k
    c = int(np.bincount(prediction[inside], minlength=classes).argmax())
    mask = np.zeros(prediction.shape + (classes,), "float32")
    mask[inside, c] = 1.0
    return mask, c, inside


def class_mask(prediction: np.ndarray, c: int, classes: int):
    """The output-shaped mask selecting every pixel predicted as class ``c``."""
    mask = np.zeros(prediction.shape + (classes,), "float32")
    mask[prediction == c, c] = 1.0
    return mask


def grow(region: np.ndarray, pixels: int) -> np.ndarray:
    """``region`` (boolean ``(H, W)``) dilated by ``pixels`` in the max-norm."""
    grown = region.copy()
    for _ in range(pixels):
        padded = np.pad(grown, 1)
        grown = np.zeros_like(grown)
        for dr in (0, 1, 2):
            for dc in (0, 1, 2):
                grown |= padded[dr : dr + region.shape[0], dc : dc + region.shape[1]]
    return grown


def positive_share(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Fraction of the positive relevance of ``heatmap`` ``(H, W)`` inside ``region``."""
    positive = np.maximum(heatmap, 0.0)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else float("nan")


def make_analyzers(model, x_train, batch_size: int = 64):
    """Gradient, LRP-ε and PatternAttribution (patterns fitted on ``x_train``)."""
    import pattern_keras as pk

    return {
        "Gradient": pk.Gradient(model),
        "LRP-epsilon": pk.LRPEpsilon(model, epsilon=1e-4),
        "PatternAttribution": pk.PatternAttribution(model).fit(
            x_train, batch_size=batch_size, verbose=0
        ),
    }


def run(
    quick: bool = False,
    seed: int = 0,
    size: int | None = None,
    train: int | None = None,
    epochs: int | None = None,
    objects_scored: int | None = None,
    width: int | None = None,
    verbose: bool = True,
) -> dict:
    """Generate the data, train the U-Net, explain regions and score the localisation.

    Returns a dict with ``model``, ``analyzers``, the test data (``x_test``, ``labels``,
    ``objects``, ``prediction``), ``accuracy`` (test pixel accuracy), ``table`` (per analyzer:
    mean positive share inside the object and inside the object grown by 2 pixels),
    ``area`` (the mean objects' share of the image, and of the grown objects), ``shown`` (the
    figure's image index, object, class, its two masks and their heatmaps ``(H, W, 1)`` per
    analyzer) and the timings.
    """
    import keras

    say = print if verbose else (lambda *a, **k: None)
    size = size or (16 if quick else 32)
    train = train or (48 if quick else 2000)
    epochs = epochs or (1 if quick else 15)
    objects_scored = objects_scored or (4 if quick else 100)
    test = max(8, objects_scored)

    x_train, y_train, _ = make_shapes(train, size, seed=seed)
    x_test, y_test, obj_test = make_shapes(test, size, seed=seed + 1)

    start = time.process_time()
    keras.utils.set_random_seed(seed)
    model = build_unet(size, width=width or (4 if quick else 8))
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    train_cpu = time.process_time() - start
    prediction = model.predict(x_test, verbose=0).argmax(axis=-1)
    accuracy = float((prediction == y_test).mean())
    per_class = {
        name: float((prediction[y_test == c] == c).mean()) for c, name in enumerate(CLASSES)
    }
    say(f"{train} training / {test} test images of {size}x{size}, {epochs} epochs")
    say(
        f"test pixel accuracy {accuracy:.3f} (per class: "
        + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items())
        + ")"
    )

    start = time.process_time()
    analyzers = make_analyzers(model, x_train[: min(train, 1000)])
    shares = {name: ([], []) for name in analyzers}
    areas = ([], [])
    cases = [(i, k) for i in range(test) for k in range(1, obj_test[i].max() + 1)]
    for i, k in cases[:objects_scored]:
        mask, _, inside = object_mask(prediction[i], obj_test[i], k, len(CLASSES))
        near = grow(inside, 2)
        areas[0].append(inside.mean())
        areas[1].append(near.mean())
        for name, analyzer in analyzers.items():
            heat = analyzer.analyze(x_test[i : i + 1], mask, verbose=0)[0, ..., 0]
            shares[name][0].append(positive_share(heat, inside))
            shares[name][1].append(positive_share(heat, near))
    table = {name: (float(np.nanmean(a)), float(np.nanmean(b))) for name, (a, b) in shares.items()}
    area = (float(np.mean(areas[0])), float(np.mean(areas[1])))
    explain_cpu = time.process_time() - start

    say(
        f"\nPositive relevance inside the explained object ({min(objects_scored, len(cases))} "
        "test objects, mean):"
    )
    say(f"  {'analyzer':<20} {'object':>8} {'object+2px':>11}")
    for name, (a, b) in table.items():
        say(f"  {name:<20} {a:>8.3f} {b:>11.3f}")
    say(f"  {'(object area)':<20} {area[0]:>8.3f} {area[1]:>11.3f}")

    shown = pick_shown(x_test, prediction, obj_test, analyzers)
    return {
        "model": model,
        "analyzers": analyzers,
        "x_test": x_test,
        "labels": y_test,
        "objects": obj_test,
        "prediction": prediction,
        "accuracy": accuracy,
        "per_class_accuracy": per_class,
        "table": table,
        "area": area,
        "shown": shown,
        "cpu_seconds": {"train": train_cpu, "explain": explain_cpu},
    }


def pick_shown(x_test, prediction, objects, analyzers) -> dict:
    """The figure's case: the first test image with a square and a disc (else the first),
    its first object explained for its predicted class, and that class's whole map."""
    both = [j for j in range(len(x_test)) if {1, 2} <= set(np.unique(prediction[j]))]
    i = both[0] if both else 0
    mask, c, inside = object_mask(prediction[i], objects[i], 1, len(CLASSES))
    whole = class_mask(prediction[i], c, len(CLASSES))
    x = x_test[i : i + 1]
    return {
        "index": i,
        "class": c,
        "object": inside,
        "masks": {"object": mask, "class": whole},
        "heatmaps": {
            region: {name: a.analyze(x, m, verbose=0)[0] for name, a in analyzers.items()}
            for region, m in (("object", mask), ("class", whole))
        },
    }


def save_figure(result: dict, path: str) -> None:
    """Two rows (one object, the whole class map): image, label map, prediction, region, and
    each analyzer's heatmap (red positive, blue negative, symmetric scale per map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pattern_keras import plot

    shown = result["shown"]
    i, c = shown["index"], shown["class"]
    image = result["x_test"][i, ..., 0]
    columns = ["image", "label map", "prediction", "region", *ANALYZERS]
    fig, axes = plt.subplots(2, len(columns), figsize=(2.0 * len(columns), 4.4))
    label_kw = {"cmap": "viridis", "vmin": 0, "vmax": len(CLASSES) - 1, "interpolation": "nearest"}
    for row, region in enumerate(("object", "class")):
        area = shown["masks"][region][..., c] > 0
        cells = [
            (image, {"cmap": "gray"}),
            (result["labels"][i], label_kw),
            (result["prediction"][i], label_kw),
            (np.where(area, 1.0, 0.25) * (image - image.min()), {"cmap": "gray"}),
        ]
        cells += [(plot.heatmap(shown["heatmaps"][region][name]), {}) for name in ANALYZERS]
        for ax, (array, kw), title in zip(axes[row], cells, columns):
            ax.imshow(array, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
        what = "one object" if region == "object" else "whole class map"
        axes[row, 0].set_ylabel(f"{CLASSES[c]}: {what}", fontsize=9)
    fig.suptitle(
        f"U-Net, Σ mask ⊙ logits explained (pixel accuracy {result['accuracy']:.3f})", fontsize=10
    )
    fig.tight_layout()
    plot.save_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 epoch (smoke run)")
    parser.add_argument("--figure", help="save the figure to this PNG")
    parser.add_argument("--output", help="save the accuracy and table to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args(argv)

    wall = time.perf_counter()
    result = run(quick=args.quick, seed=args.seed, epochs=args.epochs)
    if args.figure:
        save_figure(result, args.figure)
        print(f"Saved the figure to {args.figure}")
    cpu = result["cpu_seconds"]
    print(
        f"CPU time: training {cpu['train']:.0f} s, explanations {cpu['explain']:.0f} s; "
        f"wall {time.perf_counter() - wall:.0f} s"
    )
    if args.output:
        summary = {key: result[key] for key in ("accuracy", "per_class_accuracy", "table", "area")}
        summary["cpu_seconds"] = cpu
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"Saved the numbers to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
