"""How alike are two explanations? The similarity measures of the sanity checks.

Adebayo et al. (NeurIPS 2018, "Sanity checks for saliency maps") compare the explanation of a
trained model with that of a randomized one by four measures, which Quantus and Xplique use
too: the Spearman rank correlation of the absolute maps and of the signed maps, the structural
similarity index (SSIM, Wang et al. 2004) and the Pearson correlation of the maps' histograms
of oriented gradients (HOG, Dalal and Triggs 2005). All four are written here in numpy/scipy,
per sample and vectorized over samples.

Maps: an explanation of an image, ``(n, H, W, C)``, is compared as its 2-D map summed over
channels, ``(n, H, W)``; ``(n, H, W)`` is taken as it is; any other shape ``(n, ...)`` is
flattened to ``(n, features)``, which the Spearman correlations accept and SSIM and HOG (which
need an image) refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "MEASURES",
    "explanation_maps",
    "similarity",
    "spearman",
    "ssim",
    "hog_features",
    "hog_similarity",
    "histogram_entropy",
]

#: The measures :func:`similarity` knows, in the order of the result tables.
MEASURES = ("spearman_abs", "spearman", "ssim", "hog")
#: The measures that need image maps ``(n, H, W)``.
IMAGE_MEASURES = ("ssim", "hog")

_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_HOG_EPS = 1e-5


def explanation_maps(explanation: Any) -> np.ndarray:
    """The maps the measures compare: float64, ``(n, H, W)`` for images, ``(n, F)`` otherwise.

    Parameters
    ----------
    explanation : array_like, shape (n, H, W, C), (n, H, W) or (n, ...)
        One explanation per sample. A rank-4 array is an image batch, channels_last: its map
        is the sum over channels. A rank-3 array is a batch of 2-D maps. Anything else is
        flattened per sample.

    Returns
    -------
    np.ndarray, float64
        ``(n, H, W)`` or ``(n, F)``.

    Raises
    ------
    ValueError
        If there is no sample axis and feature axis, or no sample.
    """
    e = np.asarray(explanation, dtype=np.float64)
    if e.ndim < 2 or e.shape[0] == 0:
        raise ValueError(
            f"An explanation batch needs a sample axis and feature axes, shape (n, ...) with "
            f"n >= 1; received shape {e.shape}."
        )
    if e.ndim == 4:
        return e.sum(axis=-1)
    if e.ndim == 3:
        return e
    return e.reshape(len(e), -1)


def check_measures(measures: Sequence[str] | None, image: bool) -> tuple[str, ...]:
    """The measures to compute: the given ones, checked, or by default all that apply."""
    if measures is None:
        return MEASURES if image else tuple(m for m in MEASURES if m not in IMAGE_MEASURES)
    if isinstance(measures, str):
        measures = (measures,)
    measures = tuple(measures)
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(
            f"measures must be a non-empty sequence of {', '.join(map(repr, MEASURES))}; "
            f"received {measures!r}."
        )
    if not image:
        refused = [m for m in measures if m in IMAGE_MEASURES]
        if refused:
            raise ValueError(
                f"The measures {refused} compare images, but the explanations are not images "
                "(an image batch is (n, H, W, C) or (n, H, W)); use 'spearman_abs' and "
                "'spearman'."
            )
    return measures


def similarity(a: Any, b: Any, measures: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per-sample similarity of two explanation batches by each measure.

    Parameters
    ----------
    a, b : array_like, shape (n, ...)
        Two explanations of the same samples, shaped alike (see :func:`explanation_maps`).
    measures : sequence of str, optional
        Any of ``"spearman_abs"`` (Spearman correlation of ``|map|``), ``"spearman"`` (of the
        signed maps), ``"ssim"`` (:func:`ssim`) and ``"hog"`` (:func:`hog_similarity`).
        Default: all four for images, the two Spearman correlations otherwise.

    Returns
    -------
    dict of str to np.ndarray
        ``{measure: (n,) float64}``. A sample whose two maps are equal scores exactly 1 by
        every measure (constant maps included: nothing changed); otherwise NaN where a
        measure is undefined (a constant map).

    Raises
    ------
    ValueError
        For batches of different shapes, an unknown measure, or an image measure asked for
        maps that are not images.
    """
    a, b = explanation_maps(a), explanation_maps(b)
    if a.shape != b.shape:
        raise ValueError(f"The explanations differ in shape: {a.shape} and {b.shape}.")
    measures = check_measures(measures, image=a.ndim == 3)
    functions = {
        "spearman_abs": lambda: spearman(np.abs(a), np.abs(b)),
        "spearman": lambda: spearman(a, b),
        "ssim": lambda: ssim(a, b),
        "hog": lambda: hog_similarity(a, b),
    }
    return {m: functions[m]() for m in measures}


def _equal_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.all(a.reshape(len(a), -1) == b.reshape(len(b), -1), axis=1)


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of (n, F) arrays; exactly 1 where the rows are
    equal (constant ones included: nothing changed), else NaN where a row is constant."""
    da = a - a.mean(axis=1, keepdims=True)
    db = b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.sum(da * da, axis=1) * np.sum(db * db, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(da * db, axis=1) / norms
    r = np.where(norms > 0, np.clip(r, -1.0, 1.0), np.nan)
    # Rounding leaves r(a, a) a hair from 1; the measures promise 1 for equal maps.
    return np.where(_equal_rows(a, b), 1.0, r)


def spearman(a: Any, b: Any) -> np.ndarray:
    """Spearman rank correlation of each sample's two maps.

    Parameters
    ----------
    a, b : array_like, shape (n, ...)
        Maps of the same samples (any shape with a sample axis; flattened per sample).

    Returns
    -------
    np.ndarray, shape (n,), float64
        The Pearson correlation of the two maps' ranks (ties get their average rank, as
        ``scipy.stats.spearmanr``), in [−1, 1]; exactly 1 for equal maps; otherwise NaN where
        a map is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return _row_pearson(stats.rankdata(a, axis=1), stats.rankdata(b, axis=1))


def _scaled(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its largest magnitude (to [−1, 1]); all-zero maps stay 0."""
    peak = np.abs(maps).reshape(len(maps), -1).max(axis=1)
    scale = np.where(peak > 0, peak, 1.0)
    return maps / scale.reshape((-1,) + (1,) * (maps.ndim - 1))


def _images(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"{name} compares 2-D maps, shape (n, H, W); received shape {a.shape}.")
    return a


def ssim_window(height: int, width: int) -> int:
    """The side of the SSIM window: 7, or the largest odd size that fits a smaller map."""
    side = min(7, height, width)
    side -= 1 - side % 2
    if side < 3:
        raise ValueError(
            f"SSIM needs maps of at least 3x3 pixels (a 3x3 window); received {height}x{width}."
        )
    return side


def ssim(a: Any, b: Any, window: int | None = None) -> np.ndarray:
    """Structural similarity index of each sample's two 2-D maps (Wang et al. 2004).

    Each map is first divided by its largest magnitude, so that SSIM compares the maps'
    structure and not their scale (an explanation seeded with the output's value changes scale
    with the output); the data range is then 2 (values in [−1, 1]). Then, as scikit-image's
    ``structural_similarity`` with its defaults: local means, variances and the covariance
    over a square uniform window (sample covariances, ``N/(N − 1)``), ``K1 = 0.01``,
    ``K2 = 0.03``, reflected borders, and the mean of the SSIM map without the half-window at
    the borders.

    Parameters
    ----------
    a, b : array_like, shape (n, H, W)
        Maps of the same samples.
    window : int, optional
        Odd side of the window; default 7, or the largest odd size ``<= min(H, W)``.

    Returns
    -------
    np.ndarray, shape (n,), float64
        In [−1, 1]; exactly 1 for equal maps.

    Raises
    ------
    ValueError
        For maps that are not 2-D, smaller than 3×3, or a window that is even or too large.
    """
    a, b = _images(a, "ssim"), _images(b, "ssim")
    n, height, width = a.shape
    if window is None:
        window = ssim_window(height, width)
    if window < 3 or window % 2 == 0 or window > min(height, width):
        raise ValueError(
            f"window must be odd, >= 3 and <= min(H, W) = {min(height, width)}; received {window}."
        )
    x, y = _scaled(a), _scaled(b)
    size = (1, window, window)

    def mean(t):
        return ndimage.uniform_filter(t, size=size, mode="reflect")

    ux, uy = mean(x), mean(y)
    cov_norm = window * window / (window * window - 1.0)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (_SSIM_K1 * 2.0) ** 2, (_SSIM_K2 * 2.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (window - 1) // 2
    inner = s[:, pad : height - pad, pad : width - pad]
    result = inner.reshape(n, -1).mean(axis=1)
    return np.where(_equal_rows(a, b), 1.0, result)


def hog_cell_size(height: int, width: int) -> int:
    """Pixels per HOG cell: a quarter of the shorter side, between 1 and 8."""
    return int(np.clip(min(height, width) // 4, 1, 8))


def hog_features(
    maps: Any, orientations: int = 9, cell: int | None = None, block: int = 3
) -> np.ndarray:
    """Histograms of oriented gradients of 2-D maps (Dalal and Triggs 2005), per sample.

    As scikit-image's ``hog`` with ``block_norm="L2-Hys"``: centred differences inside the map
    (0 on its border), unsigned orientations in ``[0°, 180°)`` split into ``orientations``
    equal bins, each pixel's gradient magnitude added to its bin, averaged over ``cell × cell``
    pixel cells (the remainder rows and columns dropped), then blocks of ``block × block``
    cells (stride one cell), each normalized by L2-Hys (L2, clipped at 0.2, L2 again,
    ``ε = 1e-5``) and concatenated. Each map is divided by its largest magnitude first (HOG is
    then independent of the map's scale, up to ``ε``).

    Parameters
    ----------
    maps : array_like, shape (n, H, W)
        2-D maps.
    orientations : int
        Orientation bins (default 9).
    cell : int, optional
        Side of a cell in pixels; default :func:`hog_cell_size` (a quarter of the shorter side,
        between 1 and 8, so that small maps still have several cells).
    block : int
        Side of a block in cells (default 3, or the number of cells if fewer).

    Returns
    -------
    np.ndarray, shape (n, blocks_y · blocks_x · block² · orientations), float64

    Raises
    ------
    ValueError
        For maps that are not 2-D or too small for one cell, or non-positive sizes.
    """
    maps = _images(maps, "hog")
    n, height, width = maps.shape
    cell = hog_cell_size(height, width) if cell is None else int(cell)
    if orientations < 1 or cell < 1 or block < 1:
        raise ValueError(
            f"orientations, cell and block must be >= 1; received {orientations}, {cell}, {block}."
        )
    rows, cols = height // cell, width // cell
    if rows < 1 or cols < 1:
        raise ValueError(f"A {height}x{width} map has no whole {cell}x{cell} cell.")
    block = min(block, rows, cols)
    x = _scaled(maps)
    gy = np.zeros_like(x)
    gx = np.zeros_like(x)
    gy[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    magnitude = np.hypot(gx, gy)
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    bins = np.minimum((angle * orientations / 180.0).astype(np.int64), orientations - 1)
    # One-hot over the bins, magnitudes summed per cell: (n, rows, cols, orientations).
    votes = magnitude[..., None] * (bins[..., None] == np.arange(orientations))
    votes = votes[:, : rows * cell, : cols * cell]
    cells = votes.reshape(n, rows, cell, cols, cell, orientations).sum(axis=(2, 4))
    cells /= cell * cell
    blocks = [
        cells[:, r : r + block, c : c + block].reshape(n, -1)
        for r in range(rows - block + 1)
        for c in range(cols - block + 1)
    ]
    v = np.stack(blocks, axis=1)  # (n, blocks, block² · orientations)
    v = v / np.sqrt(np.sum(v * v, axis=-1, keepdims=True) + _HOG_EPS**2)
    v = np.minimum(v, 0.2)
    v = v / np.sqrt(np.sum(v * v, axis=-1, keepdims=True) + _HOG_EPS**2)
    return v.reshape(n, -1)


def hog_similarity(a: Any, b: Any) -> np.ndarray:
    """Pearson correlation of the HOG features (:func:`hog_features`) of each sample's maps.

    Parameters
    ----------
    a, b : array_like, shape (n, H, W)
        Maps of the same samples.

    Returns
    -------
    np.ndarray, shape (n,), float64
        In [−1, 1]; exactly 1 for equal maps; NaN where a map's features are constant (a map
        without any gradient).
    """
    a, b = _images(a, "hog"), _images(b, "hog")
    result = _row_pearson(hog_features(a), hog_features(b))
    return np.where(_equal_rows(a, b), 1.0, result)


def histogram_entropy(maps: Any, bins: int = 100) -> np.ndarray:
    """Discrete entropy of each map's histogram: the complexity measure of eMPRT.

    Hedström et al. (2023) measure an explanation's complexity as the Shannon entropy (natural
    logarithm) of the histogram of its values in ``bins`` equal-width bins spanning the map's
    own range (``numpy.histogram``'s bins). A map concentrated on a few values has low entropy;
    noise spread over the range has high entropy.

    Parameters
    ----------
    maps : array_like, shape (n, ...)
        One map per sample (flattened per sample).
    bins : int
        Number of bins (default 100, as Hedström et al.).

    Returns
    -------
    np.ndarray, shape (n,), float64
        In ``[0, log(bins)]``; 0 for a constant map.
    """
    maps = np.asarray(maps, dtype=np.float64)
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    # numpy.histogram's bins: equal width over [min, max], the last one closed.
    with np.errstate(invalid="ignore", divide="ignore"):
        index = np.where(span > 0, np.floor((flat - low) / span * bins), 0)
    index = np.clip(index, 0, bins - 1).astype(np.int64)
    counts = np.zeros((len(flat), bins))
    np.add.at(counts, (np.arange(len(flat))[:, None], index), 1.0)
    p = counts / flat.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=1)
