"""Image degradation (region perturbation) benchmark for attribution maps.

Section 5 of the PatternNet paper, after Samek et al. (2016): tile each image into ``k×k``
patches, rank the patches by their summed attribution, replace them one after another (most
relevant first) and follow the probability of the initially predicted class. A heat map that
finds the evidence makes the probability fall fast; a random patch order is the baseline. The
area over the perturbation curve (AOPC) sums the fall up in one number, higher is better.

Conventions: images are channels_last, ``(n, H, W, C)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import keras
import numpy as np

from pattern_keras import _checks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DegradationResult", "image_degradation", "plot_degradation"]

FILLS = ("mean", "zero", "uniform", "blur")
ORDERS = ("most_relevant", "least_relevant", "random")
OUTPUTS = ("auto", "probabilities", "logits")

# Outputs whose rows are non-negative and sum to 1 within this are read as probabilities.
_PROBABILITY_TOLERANCE = 1e-3

AnalyzerLike = Union[np.ndarray, Callable[[np.ndarray], Any], Any]  # noqa: UP007


@dataclass(frozen=True, eq=False)
class DegradationResult:
    """Outcome of :func:`image_degradation`.

    Attributes
    ----------
    curve : np.ndarray, shape (steps + 1,)
        Mean over images of the tracked class's probability after perturbing ``0 .. steps``
        patches; ``curve[0]`` is the unperturbed mean probability.
    per_image : np.ndarray, shape (n, steps + 1)
        The same per image.
    aopc : float
        Area over the perturbation curve: the mean over ``k = 1 .. steps`` of
        ``f(x⁰) − f(xᵏ)``, averaged over images. NaN when ``steps == 0`` (an empty mean).
    patch_size : int
        Side of the square patches.
    order : str
        How patches were ranked: ``"most_relevant"``, ``"least_relevant"`` or ``"random"``.
    fill : str
        What replaced the patches: ``"mean"``, ``"zero"``, ``"uniform"`` or ``"blur"``.
    target : np.ndarray, shape (n,), int
        The tracked class of each image (argmax of the unperturbed prediction).
    n_patches : int
        Number of patches per image, partial border patches included.
    """

    curve: np.ndarray
    per_image: np.ndarray
    aopc: float
    patch_size: int
    order: str
    fill: str
    target: np.ndarray
    n_patches: int

    @property
    def steps(self) -> int:
        """Number of perturbation steps after the unperturbed one."""
        return self.curve.shape[0] - 1

    @property
    def aopc_per_image(self) -> np.ndarray:
        """AOPC of each image, shape (n,); NaN when ``steps == 0``."""
        return _aopc_per_image(self.per_image)

    @property
    def auc(self) -> float:
        """Area under the mean curve over the fraction of patches perturbed, ``k / steps`` in
        [0, 1], by the trapezoid rule: the deletion score of Petsiuk et al. (2018), lower is
        better. NaN when ``steps == 0``."""
        return float(np.mean(_auc_per_image(self.per_image)))


def image_degradation(
    model: keras.Model | Callable[[np.ndarray], Any],
    analyzer: AnalyzerLike | None,
    x: np.ndarray,
    patch_size: int = 9,
    steps: int | None = None,
    fill: str = "mean",
    order: str = "most_relevant",
    seed: int = 0,
    batch_size: int = 64,
    output: str = "auto",
    blur_sigma: float | None = None,
) -> DegradationResult:
    """Perturb the most relevant patches first and follow the predicted class's probability.

    Parameters
    ----------
    model : keras.Model or callable
        A single-output classifier mapping a batch (b, H, W, C) to scores (b, classes), with at
        least 2 classes. A Keras model is evaluated with ``predict_on_batch``; any other callable
        is called on the numpy batch.
    analyzer : analyzer, callable, array or None
        Where the attributions come from: an object with ``.analyze(x)``, a callable
        ``x -> attributions``, or a precomputed array; either way shaped like ``x``. May be
        None with ``order="random"``, which needs no attributions.
    x : array_like, shape (n, H, W, C)
        Images, channels_last. Integer images are cast to float32.
    patch_size : int
        Side ``k >= 1`` of the square patches. Patches tile the image from the top-left; where
        ``H`` or ``W`` is not a multiple of ``k`` the last row or column of patches is kept as
        smaller patches, so every pixel belongs to exactly one patch.
    steps : int, optional
        Number of patches to perturb, in ``[0, n_patches]``; None means all of them.
    fill : {"mean", "zero", "uniform", "blur"}
        What a perturbed patch becomes: ``"mean"`` the image's per-channel mean (the paper's
        choice); ``"zero"`` zeros; ``"uniform"`` uniform noise between the image's minimum and
        maximum (over all channels), drawn once per image; ``"blur"`` the same pixels of a
        Gaussian-blurred copy of the image (separable, per channel, standard deviation
        ``blur_sigma``, kernel truncated at 3σ, borders replicated).
    order : {"most_relevant", "least_relevant", "random"}
        ``"most_relevant"``: patches by summed attribution (over pixels and channels), highest
        first, ties broken by raster order (row by row from the top-left). ``"least_relevant"``:
        lowest first. ``"random"``: an independent random permutation per image.
    seed : int
        Seeds the random order and the uniform noise. The two draw from independent streams
        (``numpy.random.SeedSequence(seed).spawn(2)``), so switching one on does not change the
        other.
    batch_size : int
        Number of images per model evaluation. The perturbed images of all (image, step) pairs
        are evaluated in chunks of this size.
    output : {"auto", "probabilities", "logits"}
        How to read the model's scores. ``"probabilities"``: use them as they are.
        ``"logits"``: apply a softmax. ``"auto"``: probabilities when, on the unperturbed
        images, every row is non-negative and sums to 1 within 1e-3, otherwise logits; the
        decision then holds for every step.
    blur_sigma : float, optional
        Standard deviation in pixels of the ``"blur"`` fill; default ``max(1, patch_size / 3)``
        so that the blur erases structure at the scale of a patch.

    Returns
    -------
    DegradationResult
        The curve (steps + 1,), the per-image curves (n, steps + 1), the AOPC and the settings.

    Raises
    ------
    ValueError
        On an input of the wrong rank, an attribution not shaped like ``x`` or not finite,
        ``patch_size < 1``, ``steps`` outside ``[0, n_patches]``, an unknown option, or model
        outputs that are not a single (batch, classes >= 2) array.
    TypeError
        If ``model`` or ``analyzer`` cannot be called.

    Examples
    --------
    >>> result = image_degradation(model, analyzer, x, patch_size=4)  # doctest: +SKIP
    >>> result.curve[0], result.aopc  # doctest: +SKIP
    """
    x = _as_images(x)
    _check_choice("fill", fill, FILLS)
    _check_choice("order", order, ORDERS)
    _check_choice("output", output, OUTPUTS)
    patch_size = _checks.positive_int(patch_size, "patch_size")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    n, height, width, _ = x.shape
    patch_ids = _patch_ids(height, width, patch_size)
    n_patches = int(patch_ids.max()) + 1
    steps = _check_steps(steps, n_patches)

    order_rng, fill_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    ranking = _ranking(analyzer, x, order, order_rng, patch_size, n_patches)
    # Step at which each pixel is replaced: pixel (i, j) of image m is perturbed from step
    # perturb_rank[m, i, j] + 1 on.
    perturb_rank = _patch_positions(ranking)[:, patch_ids]
    if blur_sigma is None:
        blur_sigma = max(1.0, patch_size / 3)
    fill_images = _fill_images(x, fill, fill_rng, blur_sigma)

    clean_scores = _evaluate(model, x, batch_size)
    as_probabilities = _reads_probabilities(clean_scores, output)
    clean = _to_probabilities(clean_scores, as_probabilities)
    target = np.argmax(clean, axis=1)
    per_image = np.empty((n, steps + 1))
    per_image[:, 0] = clean[np.arange(n), target]
    _follow_steps(
        model, x, fill_images, perturb_rank, target, per_image, as_probabilities, batch_size
    )

    aopc = _aopc_per_image(per_image)
    return DegradationResult(
        curve=per_image.mean(axis=0),
        per_image=per_image,
        aopc=float(np.mean(aopc)) if steps else float("nan"),
        patch_size=patch_size,
        order=order,
        fill=fill,
        target=target,
        n_patches=n_patches,
    )


def plot_degradation(
    results: Mapping[str, DegradationResult],
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Draw degradation curves, one line per method, AOPC in the legend (right of the axes).

    A curve that falls fast means the method ranked the patches the model needs first; a
    method label ``"random"`` is drawn dashed grey as the baseline.

    Parameters
    ----------
    results : mapping of str to DegradationResult
        Label of each curve (e.g. the analyzer's name) to its result.
    ax : matplotlib.axes.Axes, optional
        Where to draw; by default a new ``matplotlib.figure.Figure`` with one axes (no pyplot
        state, nothing displayed).
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding ``ax``; save it with ``fig.savefig(path)``.
    """
    if not results:
        raise ValueError("results is empty: pass a mapping of label -> DegradationResult.")
    for label, result in results.items():
        if not isinstance(result, DegradationResult):
            raise TypeError(
                f"results[{label!r}] must be a DegradationResult; received {type(result).__name__}."
            )
    from matplotlib.figure import Figure  # imported here: plotting is optional

    if ax is None:
        figure = Figure(figsize=(7.5, 3.8), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    for label, result in results.items():
        # The random baseline is the reference every method should fall below: dashed grey.
        style = (
            {"linestyle": "--", "color": "0.45"}
            if str(label).lower() == "random"
            else {"marker": "."}
        )
        ax.plot(
            np.arange(result.steps + 1),
            result.curve,
            label=f"{label} (AOPC {result.aopc:.3f})",
            **style,
        )
    ax.set_xlabel("patches perturbed (most relevant first)")
    ax.set_ylabel("probability of initial class")
    if title is not None:
        ax.set_title(title)
    # Outside the axes, right of the curves, so that no curve is hidden behind it.
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        title="AOPC: higher is better",
        title_fontsize="small",
    )
    return figure


# --- validation ------------------------------------------------------------------------------


def _as_images(x: Any) -> np.ndarray:
    x = np.asarray(keras.ops.convert_to_numpy(x))
    if x.ndim != 4:
        raise ValueError(
            f"x must be a batch of images of rank 4, shape (n, H, W, C) channels_last; "
            f"received shape {x.shape} (rank {x.ndim})."
        )
    if x.shape[0] == 0:
        raise ValueError(f"x holds no images; received shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        allowed = ", ".join(map(repr, choices))
        raise ValueError(f"{name} must be one of {allowed}; received {value!r}.")


def _check_steps(steps: Any, n_patches: int) -> int:
    if steps is None:
        return n_patches
    integer = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
    if not integer or not 0 <= steps <= n_patches:
        raise ValueError(
            f"steps must be None or an integer in [0, {n_patches}] (the number of patches); "
            f"received {steps!r}."
        )
    return int(steps)


def _attributions(analyzer: AnalyzerLike, x: np.ndarray) -> np.ndarray:
    """The analyzer's attributions for x, checked: same shape as x, finite."""
    if isinstance(analyzer, np.ndarray) or keras.ops.is_tensor(analyzer):
        attribution = analyzer
    elif hasattr(analyzer, "analyze"):
        attribution = analyzer.analyze(x)
    elif callable(analyzer):
        attribution = analyzer(x)
    else:
        raise TypeError(
            "analyzer must be an object with .analyze(x), a callable x -> attributions, or an "
            f"array shaped like x; received {type(analyzer).__name__}."
        )
    attribution = np.asarray(keras.ops.convert_to_numpy(attribution))
    if attribution.shape != x.shape:
        raise ValueError(
            f"attributions must be shaped like x {x.shape}; received shape {attribution.shape}."
        )
    if not np.all(np.isfinite(attribution)):
        raise ValueError("attributions contain NaN or infinite values; patches cannot be ranked.")
    return attribution


def _ranking(
    analyzer: AnalyzerLike | None,
    x: np.ndarray,
    order: str,
    rng: np.random.Generator,
    patch_size: int,
    n_patches: int,
) -> np.ndarray:
    """(n, n_patches): each image's patch indices in the order they are perturbed."""
    if order == "random":
        if analyzer is not None:
            # Still validated: a wrong analyzer is a bug worth hearing about.
            _attributions(analyzer, x)
        return np.argsort(rng.random((len(x), n_patches)), axis=1)
    if analyzer is None:
        raise ValueError(
            f"order={order!r} ranks patches by attribution, so analyzer cannot be None."
        )
    sums = _patch_sums(_attributions(analyzer, x), patch_size)
    return np.argsort(-sums if order == "most_relevant" else sums, axis=1, kind="stable")


# --- patches ---------------------------------------------------------------------------------


def _patch_ids(height: int, width: int, patch_size: int) -> np.ndarray:
    """(H, W) int: the raster index of each pixel's patch."""
    columns = math.ceil(width / patch_size)
    rows = np.arange(height) // patch_size
    cols = np.arange(width) // patch_size
    return rows[:, None] * columns + cols[None, :]


def _patch_sums(attribution: np.ndarray, patch_size: int) -> np.ndarray:
    """(n, n_patches): attribution summed over each patch's pixels and channels."""
    n, height, width, _ = attribution.shape
    rows, columns = math.ceil(height / patch_size), math.ceil(width / patch_size)
    # Zero padding up to whole patches leaves the border patches' sums unchanged.
    padded = np.zeros((n, rows * patch_size, columns * patch_size))
    padded[:, :height, :width] = attribution.sum(axis=-1, dtype=np.float64)
    blocks = padded.reshape(n, rows, patch_size, columns, patch_size)
    return blocks.sum(axis=(2, 4)).reshape(n, rows * columns)


def _patch_positions(ranking: np.ndarray) -> np.ndarray:
    """Invert a ranking (n, P) of patch indices into each patch's position (n, P) in it."""
    positions = np.empty_like(ranking)
    places = np.broadcast_to(np.arange(ranking.shape[1]), ranking.shape)
    np.put_along_axis(positions, ranking, places, axis=1)
    return positions


# --- fills -----------------------------------------------------------------------------------


def _fill_images(
    x: np.ndarray, fill: str, rng: np.random.Generator, blur_sigma: float
) -> np.ndarray:
    """(n, H, W, C) array (possibly a broadcast view) of the values perturbed pixels take."""
    if fill == "mean":
        mean = x.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
        return np.broadcast_to(mean.astype(x.dtype), x.shape)
    if fill == "zero":
        return np.broadcast_to(np.zeros((), dtype=x.dtype), x.shape)
    if fill == "uniform":
        low = x.min(axis=(1, 2, 3), keepdims=True).astype(np.float64)
        high = x.max(axis=(1, 2, 3), keepdims=True).astype(np.float64)
        return rng.uniform(low, high, size=x.shape).astype(x.dtype)
    return _gaussian_blur(x, blur_sigma).astype(x.dtype)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (n, H, W, C) over H and W, borders replicated."""
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be > 0; received {sigma!r}.")
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    blurred = x.astype(np.float64)
    for axis in (1, 2):
        size = blurred.shape[axis]
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(blurred, pad, mode="edge")
        # A loop over the kernel's taps, each a whole-array shift: no loop over pixels.
        blurred = sum(
            weight * np.take(padded, np.arange(offset, offset + size), axis=axis)
            for offset, weight in enumerate(taps)
        )
    return blurred


# --- model outputs ---------------------------------------------------------------------------


def _predict(model: Any, batch: np.ndarray) -> np.ndarray:
    """Scores (b, classes) of one batch, checked."""
    if isinstance(model, keras.Model):
        scores = model.predict_on_batch(batch)
    elif callable(model):
        scores = model(batch)
    else:
        raise TypeError(
            f"model must be a keras.Model or a callable; received {type(model).__name__}."
        )
    if isinstance(scores, (list, tuple, dict)):
        raise ValueError(
            "model must have a single output (batch, classes); received "
            f"{type(scores).__name__} of {len(scores)} outputs."
        )
    scores = np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(batch) or scores.shape[1] < 2:
        raise ValueError(
            f"model outputs must be shaped (batch, classes) with classes >= 2, here "
            f"({len(batch)}, classes); received shape {scores.shape}. Wrap a single-sigmoid "
            "model to output [1 - p, p]."
        )
    return scores


def _evaluate(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    return np.concatenate([_predict(model, batch) for batch in batches])


def _reads_probabilities(scores: np.ndarray, output: str) -> bool:
    if output != "auto":
        return output == "probabilities"
    return bool(
        np.all(scores >= 0) and np.all(np.abs(scores.sum(axis=1) - 1) <= _PROBABILITY_TOLERANCE)
    )


def _to_probabilities(scores: np.ndarray, as_probabilities: bool) -> np.ndarray:
    if as_probabilities:
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)  # no overflow in exp
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _follow_steps(
    model: Any,
    start: np.ndarray,
    end: np.ndarray,
    perturb_rank: np.ndarray,
    target: np.ndarray,
    per_image: np.ndarray,
    as_probabilities: bool,
    batch_size: int,
) -> None:
    """Fill ``per_image[:, 1:]``: at step k the pixels of the first k ranked patches come from
    ``end``, the others from ``start`` (deletion: the image and the fill; insertion: the
    reverse), and the model's probability of each image's ``target`` is recorded."""
    n, columns = per_image.shape
    steps = columns - 1
    # One flat index over (image, step) pairs: every model call gets a full batch whatever n
    # and steps are.
    pairs = n * steps
    for first in range(0, pairs, batch_size):
        pair = np.arange(first, min(first + batch_size, pairs))
        image, step = pair // steps, pair % steps + 1
        replaced = (perturb_rank[image] < step[:, None, None])[..., None]
        batch = np.where(replaced, end[image], start[image])
        probabilities = _to_probabilities(_predict(model, batch), as_probabilities)
        per_image[image, step] = probabilities[np.arange(len(pair)), target[image]]


def _auc_per_image(per_image: np.ndarray) -> np.ndarray:
    """Trapezoid area under each curve over the fraction of steps, ``k / steps`` in [0, 1]."""
    steps = per_image.shape[1] - 1
    if steps < 1:
        return np.full(per_image.shape[0], np.nan)
    inner = per_image.sum(axis=1) - 0.5 * (per_image[:, 0] + per_image[:, -1])
    return inner / steps


def _aopc_per_image(per_image: np.ndarray) -> np.ndarray:
    if per_image.shape[1] < 2:
        return np.full(per_image.shape[0], np.nan)
    return np.mean(per_image[:, :1] - per_image[:, 1:], axis=1)
