"""Insertion (Petsiuk et al., BMVC 2018) and MuFidelity (Bhatt et al., IJCAI 2020).

Two perturbation tests next to :func:`~pattern_keras.evaluation.image_degradation` (deletion):

- :func:`insertion` starts from a baseline image (blurred, or mean-filled) and restores the
  most relevant patches first: a good map makes the probability of the class *rise* fast; the
  area under the curve (AUC) sums it up, higher is better. (Reversing the deletion order is
  deletion with ``order="least_relevant"``, not insertion.)
- :func:`mufidelity` correlates, over random subsets of patches, the attribution a subset
  holds with the drop of the model's output when that subset is set to the baseline: a
  faithful attribution predicts what removing features costs.

Conventions are those of :mod:`pattern_keras.evaluation.degradation`: images channels_last
``(n, H, W, C)``, patches tiling from the top-left, the model's scores read as probabilities
(``output``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from pattern_keras import _checks
from pattern_keras.evaluation import degradation as _deg
from pattern_keras.evaluation.similarity import _row_pearson

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["InsertionResult", "insertion", "plot_insertion", "MuFidelityResult", "mufidelity"]

INSERTION_ORDERS = ("most_relevant", "random")


@dataclass(frozen=True, eq=False)
class InsertionResult:
    """Outcome of :func:`insertion`.

    Attributes
    ----------
    curve : np.ndarray, shape (steps + 1,)
        Mean over images of the tracked class's probability after restoring ``0 .. steps``
        patches into the baseline image; ``curve[0]`` is the baseline's.
    per_image : np.ndarray, shape (n, steps + 1)
        The same per image.
    auc : float
        Area under the mean curve over the fraction restored, ``k / steps`` in [0, 1], by the
        trapezoid rule; higher is better. NaN when ``steps == 0``.
    patch_size : int
        Side of the square patches.
    order : str
        ``"most_relevant"`` or ``"random"``.
    fill : str
        The baseline image: ``"blur"``, ``"mean"``, ``"zero"`` or ``"uniform"``.
    target : np.ndarray, shape (n,), int
        The tracked class of each image (argmax of the prediction on the image itself).
    n_patches : int
        Number of patches per image, partial border patches included.
    """

    curve: np.ndarray
    per_image: np.ndarray
    auc: float
    patch_size: int
    order: str
    fill: str
    target: np.ndarray
    n_patches: int

    @property
    def steps(self) -> int:
        """Number of restoring steps after the baseline."""
        return self.curve.shape[0] - 1

    @property
    def auc_per_image(self) -> np.ndarray:
        """AUC of each image, shape (n,); NaN when ``steps == 0``."""
        return _deg._auc_per_image(self.per_image)

    def plot(self, ax: Axes | None = None, label: str = "insertion") -> Figure:
        """Draw the insertion curve.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw; by default a new figure (no pyplot state).
        label : str
            The curve's label (the AUC is appended).

        Returns
        -------
        matplotlib.figure.Figure
        """
        return plot_insertion({label: self}, ax=ax)


def insertion(
    model: keras.Model | Callable[[np.ndarray], Any],
    analyzer: _deg.AnalyzerLike | None,
    x: np.ndarray,
    patch_size: int = 9,
    steps: int | None = None,
    fill: str = "blur",
    order: str = "most_relevant",
    seed: int = 0,
    batch_size: int = 64,
    output: str = "auto",
    blur_sigma: float | None = None,
) -> InsertionResult:
    """Restore the most relevant patches first into a baseline image; follow the class.

    Parameters
    ----------
    model : keras.Model or callable
        A single-output classifier, as for :func:`~pattern_keras.evaluation.image_degradation`.
    analyzer : analyzer, callable, array or None
        Where the attributions come from (as for ``image_degradation``); None only with
        ``order="random"``.
    x : array_like, shape (n, H, W, C)
        Images, channels_last.
    patch_size : int
        Side ``k >= 1`` of the square patches (partial patches at the border are kept).
    steps : int, optional
        Number of patches to restore, in ``[0, n_patches]``; None means all of them (the
        curve then ends at the image itself).
    fill : {"blur", "mean", "zero", "uniform"}
        The baseline the curve starts from: a Gaussian-blurred copy of the image (Petsiuk et
        al.'s choice; ``blur_sigma``), the image's per-channel mean, zeros, or uniform noise
        between the image's minimum and maximum.
    order : {"most_relevant", "random"}
        Patches by summed attribution, highest first (ties by raster order), or a random
        permutation per image (the baseline every method should beat).
    seed : int
        Seeds the random order and the uniform noise (independent streams, as
        ``image_degradation``).
    batch_size : int
        Images per model evaluation.
    output : {"auto", "probabilities", "logits"}
        How to read the model's scores (as ``image_degradation``).
    blur_sigma : float, optional
        Standard deviation of the ``"blur"`` baseline in pixels; default
        ``max(1, patch_size / 3)``.

    Returns
    -------
    InsertionResult
        The curve, the per-image curves, the AUC and the settings. The tracked class is the
        one predicted for the image itself, not for the baseline.

    Raises
    ------
    ValueError
        As ``image_degradation``: inputs of the wrong rank, attributions not shaped like
        ``x``, an unknown option, ``steps`` out of range, or outputs that are not
        ``(batch, classes >= 2)``.
    """
    x = _deg._as_images(x)
    _deg._check_choice("fill", fill, _deg.FILLS)
    _deg._check_choice("order", order, INSERTION_ORDERS)
    _deg._check_choice("output", output, _deg.OUTPUTS)
    patch_size = _checks.positive_int(patch_size, "patch_size")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    n, height, width, _ = x.shape
    patch_ids = _deg._patch_ids(height, width, patch_size)
    n_patches = int(patch_ids.max()) + 1
    steps = _deg._check_steps(steps, n_patches)
    order_rng, fill_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    ranking = _deg._ranking(analyzer, x, order, order_rng, patch_size, n_patches)
    restore_rank = _deg._patch_positions(ranking)[:, patch_ids]
    if blur_sigma is None:
        blur_sigma = max(1.0, patch_size / 3)
    baseline = np.ascontiguousarray(_deg._fill_images(x, fill, fill_rng, blur_sigma))

    clean_scores = _deg._evaluate(model, x, batch_size)
    as_probabilities = _deg._reads_probabilities(clean_scores, output)
    target = np.argmax(_deg._to_probabilities(clean_scores, as_probabilities), axis=1)
    start = _deg._to_probabilities(_deg._evaluate(model, baseline, batch_size), as_probabilities)
    per_image = np.empty((n, steps + 1))
    per_image[:, 0] = start[np.arange(n), target]
    _deg._follow_steps(
        model, baseline, x, restore_rank, target, per_image, as_probabilities, batch_size
    )
    return InsertionResult(
        curve=per_image.mean(axis=0),
        per_image=per_image,
        auc=float(np.mean(_deg._auc_per_image(per_image))),
        patch_size=patch_size,
        order=order,
        fill=fill,
        target=target,
        n_patches=n_patches,
    )


def plot_insertion(
    results: Mapping[str, InsertionResult], ax: Axes | None = None, title: str | None = None
) -> Figure:
    """Draw insertion curves, one line per method, AUC in the legend (right of the axes).

    Parameters
    ----------
    results : mapping of str to InsertionResult
        Label of each curve to its result; a label ``"random"`` is drawn dashed grey.
    ax : matplotlib.axes.Axes, optional
        Where to draw; by default a new figure (no pyplot state, nothing displayed).
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not results:
        raise ValueError("results is empty: pass a mapping of label -> InsertionResult.")
    from matplotlib.figure import Figure  # imported here: plotting is optional

    if ax is None:
        figure = Figure(figsize=(7.5, 3.8), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    for label, result in results.items():
        if not isinstance(result, InsertionResult):
            raise TypeError(
                f"results[{label!r}] must be an InsertionResult; received {type(result).__name__}."
            )
        style = (
            {"linestyle": "--", "color": "0.45"}
            if str(label).lower() == "random"
            else {"marker": "."}
        )
        ax.plot(
            np.arange(result.steps + 1),
            result.curve,
            label=f"{label} (AUC {result.auc:.3f})",
            **style,
        )
    ax.set_xlabel("patches restored (most relevant first)")
    ax.set_ylabel("probability of the image's class")
    if title is not None:
        ax.set_title(title)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        title="AUC: higher is better",
        title_fontsize="small",
    )
    return figure


# --- MuFidelity ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MuFidelityResult:
    """Outcome of :func:`mufidelity`.

    Attributes
    ----------
    score : float
        Mean over samples of :attr:`per_sample` (NaNs left out); higher is better.
    per_sample : np.ndarray, shape (n,)
        Pearson correlation, over the subsets, between the attribution summed over a subset
        and the drop of the tracked class's probability when that subset is set to the
        baseline. NaN where either varies not at all.
    attribution_sums : np.ndarray, shape (n, subsets)
        The attribution summed over each subset's features.
    drops : np.ndarray, shape (n, subsets)
        ``f(x) − f(x with the subset at the baseline)``.
    masks : np.ndarray of bool, shape (n, subsets, cells)
        Which cells each subset holds.
    cells : np.ndarray of int, shape (H, W) or (features,)
        The cell of each pixel (image inputs) or feature (other inputs).
    target : np.ndarray, shape (n,), int
        The tracked class of each sample (argmax of the clean prediction).
    grid : int
        Cells per side for images (``grid × grid``); 0 for other inputs (a cell per feature).
    fill : str
        The baseline: ``"mean"``, ``"zero"``, ``"uniform"`` or ``"blur"``.
    """

    score: float
    per_sample: np.ndarray
    attribution_sums: np.ndarray
    drops: np.ndarray
    masks: np.ndarray
    cells: np.ndarray
    target: np.ndarray
    grid: int
    fill: str

    def plot(self, ax: Axes | None = None, sample: int = 0) -> Figure:
        """Scatter one sample's subset attributions against the output drops.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw; by default a new figure (no pyplot state).
        sample : int
            Which sample.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure

        if ax is None:
            figure = Figure(figsize=(4.5, 3.8), layout="constrained")
            ax = figure.add_subplot()
        else:
            figure = ax.figure
        ax.scatter(self.attribution_sums[sample], self.drops[sample], s=8)
        ax.set_xlabel("attribution summed over the subset")
        ax.set_ylabel("f(x) − f(x with the subset removed)")
        ax.set_title(f"sample {sample}: r = {self.per_sample[sample]:.3f}")
        return figure


def _grid_cells(height: int, width: int, grid: int) -> np.ndarray:
    """(H, W) cell index of a grid × grid tiling (at most one row/column of cells per pixel)."""
    rows = min(grid, height)
    cols = min(grid, width)
    r = np.arange(height) * rows // height
    c = np.arange(width) * cols // width
    return r[:, None] * cols + c[None, :]


def mufidelity(
    model: keras.Model | Callable[[np.ndarray], Any],
    analyzer: _deg.AnalyzerLike,
    x: np.ndarray,
    grid: int = 9,
    subsets: int = 200,
    subset_fraction: float = 0.2,
    fill: str = "mean",
    seed: int = 0,
    batch_size: int = 64,
    output: str = "auto",
    blur_sigma: float | None = None,
) -> MuFidelityResult:
    """MuFidelity (Bhatt et al., IJCAI 2020): do subset attributions predict output drops?

    For each sample, ``subsets`` random subsets of ``subset_fraction`` of the cells are drawn
    (each subset without repetition, ``round(fraction · cells)`` cells, at least 1); the
    score is the Pearson correlation over the subsets between ``Σ_{i ∈ S} a_i`` and
    ``f(x) − f(x_S)``, where ``x_S`` is ``x`` with the subset's features set to the baseline
    and ``f`` the probability of the class predicted for ``x``.

    Parameters
    ----------
    model : keras.Model or callable
        A single-output classifier mapping a batch to scores ``(b, classes >= 2)``.
    analyzer : analyzer, callable or array
        Where the attributions come from: an object with ``.analyze(x)``, a callable, or an
        array shaped like ``x``.
    x : array_like, shape (n, H, W, C) or (n, ...)
        Samples. A rank-4 batch is read as images, channels_last, cut into a ``grid × grid``
        grid of cells (``H`` and ``W`` split as evenly as integer rows allow; fewer cells where
        the image is smaller than the grid); any other rank makes every feature its own cell.
    grid : int
        Cells per image side (default 9, as Xplique's ``grid_size``).
    subsets : int
        Number of random subsets per sample (default 200).
    subset_fraction : float
        Fraction of the cells in a subset, in (0, 1] (default 0.2).
    fill : {"mean", "zero", "uniform", "blur"}
        The baseline value of removed features: the sample's per-channel mean (per-sample
        mean for non-images), zeros, uniform noise between the sample's minimum and maximum,
        or (images only) a Gaussian blur of the image.
    seed : int
        Seeds the subsets and the uniform noise.
    batch_size : int
        Samples per model evaluation.
    output : {"auto", "probabilities", "logits"}
        How to read the model's scores (as ``image_degradation``).
    blur_sigma : float, optional
        Standard deviation of the ``"blur"`` baseline in pixels; default
        ``max(1, cell side / 3)``.

    Returns
    -------
    MuFidelityResult
        The mean and per-sample correlations, and everything they were computed from.

    Raises
    ------
    ValueError
        For attributions not shaped like ``x``, non-positive sizes, a fraction outside
        (0, 1], ``"blur"`` for non-images, or outputs that are not ``(batch, classes >= 2)``.
    """
    x = np.asarray(keras.ops.convert_to_numpy(x))
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a batch (n, ...) with n >= 1; received shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    grid = _checks.positive_int(grid, "grid")
    subsets = _checks.positive_int(subsets, "subsets")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if not 0 < float(subset_fraction) <= 1:
        raise ValueError(f"subset_fraction must be in (0, 1]; received {subset_fraction!r}.")
    _deg._check_choice("fill", fill, _deg.FILLS)
    _deg._check_choice("output", output, _deg.OUTPUTS)
    image = x.ndim == 4
    attribution = _deg._attributions(analyzer, x).astype(np.float64)
    n = len(x)
    subset_rng, fill_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if image:
        cells = _grid_cells(x.shape[1], x.shape[2], grid)
        side = max(x.shape[1], x.shape[2]) / max(1, min(grid, x.shape[1]))
        sigma = max(1.0, side / 3) if blur_sigma is None else blur_sigma
        baseline = _deg._fill_images(x, fill, fill_rng, sigma)
        per_cell_attribution = attribution.sum(axis=-1).reshape(n, -1)
        features_of_cells = cells.reshape(-1)
    else:
        if fill == "blur":
            raise ValueError("fill='blur' blurs images; x is not an image batch (n, H, W, C).")
        flat = x.reshape(n, -1)
        cells = np.arange(flat.shape[1])
        baseline = _feature_fill(flat, fill, fill_rng).reshape(x.shape)
        per_cell_attribution = attribution.reshape(n, -1)
        features_of_cells = cells
    n_cells = int(cells.max()) + 1
    size = max(1, round(float(subset_fraction) * n_cells))
    # Each subset: `size` distinct cells, the first of a random permutation.
    order = np.argsort(subset_rng.random((n, subsets, n_cells)), axis=2)[:, :, :size]
    masks = np.zeros((n, subsets, n_cells), dtype=bool)
    np.put_along_axis(masks, order, True, axis=2)
    # Attribution per cell, then summed over each subset's cells.
    cell_sums = np.zeros((n, n_cells))
    np.add.at(cell_sums, (slice(None), features_of_cells), per_cell_attribution)
    attribution_sums = np.einsum("nsc,nc->ns", masks, cell_sums)

    clean_scores = _deg._evaluate(model, x, batch_size)
    as_probabilities = _deg._reads_probabilities(clean_scores, output)
    clean = _deg._to_probabilities(clean_scores, as_probabilities)
    target = np.argmax(clean, axis=1)
    drops = _subset_drops(
        model, x, baseline, masks, cells, target, clean, as_probabilities, batch_size
    )
    per_sample = _row_pearson(attribution_sums, drops)
    finite = per_sample[np.isfinite(per_sample)]
    return MuFidelityResult(
        score=float(finite.mean()) if finite.size else float("nan"),
        per_sample=per_sample,
        attribution_sums=attribution_sums,
        drops=drops,
        masks=masks,
        cells=cells,
        target=target,
        grid=grid if image else 0,
        fill=fill,
    )


def _feature_fill(flat: np.ndarray, fill: str, rng: np.random.Generator) -> np.ndarray:
    if fill == "mean":
        mean = flat.mean(axis=1, keepdims=True, dtype=np.float64).astype(flat.dtype)
        return np.broadcast_to(mean, flat.shape)
    if fill == "zero":
        return np.zeros_like(flat)
    low = flat.min(axis=1, keepdims=True).astype(np.float64)
    high = flat.max(axis=1, keepdims=True).astype(np.float64)
    return rng.uniform(low, high, size=flat.shape).astype(flat.dtype)


def _subset_drops(model, x, baseline, masks, cells, target, clean, as_probabilities, batch_size):
    """(n, subsets): ``f(x) − f(x with the subset at the baseline)`` for the tracked class."""
    n, subsets, _ = masks.shape
    flat_cells = cells.reshape(-1)
    feature_shape = x.shape[1:3] + (1,) if x.ndim == 4 else x.shape[1:]
    drops = np.empty((n, subsets))
    pairs = n * subsets
    for first in range(0, pairs, batch_size):
        pair = np.arange(first, min(first + batch_size, pairs))
        sample, subset = pair // subsets, pair % subsets
        removed = masks[sample, subset][:, flat_cells].reshape((len(pair),) + feature_shape)
        batch = np.where(removed, baseline[sample], x[sample])
        probabilities = _deg._to_probabilities(_deg._predict(model, batch), as_probabilities)
        drops[sample, subset] = (
            clean[sample, target[sample]] - probabilities[np.arange(len(pair)), target[sample]]
        )
    return drops
