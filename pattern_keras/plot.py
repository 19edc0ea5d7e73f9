"""Rendering of explanations as images and figures.

Pure numpy + matplotlib helpers to turn attributions (PatternAttribution,
gradients, LRP, ...) and PatternNet signals into displayable RGB images, and to
lay several methods out side by side.

Conventions
-----------
* Images are channels-last. Accepted layouts are ``(H, W)`` (a single
  single-channel map), ``(H, W, C)`` (a single image) and ``(N, H, W, C)``
  (a batch). A 3-D array is always read as ``(H, W, C)``, never as
  ``(N, H, W)``; add a channel axis (``x[..., None]``) to pass a batch of
  single-channel maps.
* Functions return float64 arrays with values in ``[0, 1]``. The output is
  batched exactly when the input was 4-D.
* Every image of a batch is scaled independently of the others.
* No pyplot global state is used: figures are built with
  :class:`matplotlib.figure.Figure` and can be saved with ``fig.savefig`` or
  :func:`save_figure` without a display.

Functions
---------
heatmap
    Signed attribution -> diverging-colormap RGB image, 0 at the centre colour.
graymap
    Magnitude of an attribution -> grayscale RGB image.
project
    PatternNet signal -> image in the input's range, 0 at the midpoint.
overlay
    Blend of an input image and the heatmap of its attribution.
explanation_grid
    Figure with one row per image and one column per method, and a colour bar.
add_sign_colorbar
    The colour bar of signed maps, with the "red = positive, blue = negative" key.
save_figure
    ``fig.savefig`` that first creates the parent folders.
tokens
    Per-token scores over the pieces of tokenized text (HTML, or colour in a terminal).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

__all__ = [
    "heatmap",
    "graymap",
    "project",
    "overlay",
    "explanation_grid",
    "save_figure",
    "add_sign_colorbar",
    "SIGN_KEY",
    "CHANNEL_REDUCTIONS",
    "KINDS",
    "tokens",
    "TokenScores",
]

#: Names accepted by the ``channel_reduce`` arguments.
CHANNEL_REDUCTIONS = ("sum", "abs_sum", "max_abs")

#: Rendering kinds accepted by :func:`explanation_grid`.
KINDS = ("heatmap", "graymap", "project")

_LAYOUTS = "(H, W), (H, W, C) or (N, H, W, C)"


# --------------------------------------------------------------------------- #
# Internal helpers
# --------------------------------------------------------------------------- #
def _as_float(x: ArrayLike, name: str) -> np.ndarray:
    """Convert to a finite float64 array (works for tensors with ``__array__``)."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, could not convert it: {err}") from err
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf); shape {arr.shape}."
        )
    return arr


def _to_nhwc(x: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """Bring ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)`` to ``(N, H, W, C)``.

    Returns the 4-D array and whether the input was batched (4-D).
    """
    if x.ndim == 2:
        return x[None, :, :, None], False
    if x.ndim == 3:
        return x[None], False
    if x.ndim == 4:
        return x, True
    raise ValueError(
        f"{name} must have shape {_LAYOUTS}; received an array of rank {x.ndim} "
        f"with shape {x.shape}."
    )


def _check_percentile(percentile: float) -> float:
    p = float(percentile)
    if not (0.0 < p <= 100.0):
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}.")
    return p


def _get_cmap(cmap: str | Colormap) -> Colormap:
    if isinstance(cmap, Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"unknown colormap {cmap!r}.") from err


def _reduce_channels(x: np.ndarray, channel_reduce: str) -> np.ndarray:
    """Reduce ``(N, H, W, C)`` over channels to ``(N, H, W)``.

    ``"sum"``: signed sum; ``"abs_sum"``: sum of absolute values;
    ``"max_abs"``: the signed value of the channel with the largest magnitude.
    """
    if channel_reduce == "sum":
        return x.sum(axis=-1)
    if channel_reduce == "abs_sum":
        return np.abs(x).sum(axis=-1)
    if channel_reduce == "max_abs":
        idx = np.argmax(np.abs(x), axis=-1)[..., None]
        return np.take_along_axis(x, idx, axis=-1)[..., 0]
    raise ValueError(
        f"unknown channel_reduce {channel_reduce!r}; expected one of {CHANNEL_REDUCTIONS}."
    )


def _robust_absmax(x: np.ndarray, percentile: float) -> np.ndarray:
    """Per-image scale: ``percentile`` of ``|x|`` over all but the first axis.

    Falls back to the maximum of ``|x|`` when the percentile is 0 (sparse
    maps), and to 1 when the image is identically zero, so that dividing by
    the result never produces NaN. Returns shape ``(N,)``.
    """
    flat = np.abs(x.reshape(x.shape[0], -1))
    scale = np.percentile(flat, percentile, axis=1)
    scale = np.where(scale > 0, scale, flat.max(axis=1))
    return np.where(scale > 0, scale, 1.0)


def _normalize_images(x: np.ndarray) -> np.ndarray:
    """Min-max normalise each image of ``(N, H, W, C)`` to ``[0, 1]``.

    A constant image maps to 0.5 everywhere.
    """
    axes = tuple(range(1, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    span = hi - lo
    out = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.5)
    return np.clip(out, 0.0, 1.0)


def _image_to_rgb(x: np.ndarray, name: str) -> np.ndarray:
    """``(N, H, W, 1 or 3)`` in ``[0, 1]`` -> ``(N, H, W, 3)``."""
    c = x.shape[-1]
    if c == 3:
        return x
    if c == 1:
        return np.repeat(x, 3, axis=-1)
    raise ValueError(
        f"{name} must have 1 (grayscale) or 3 (RGB) channels; received shape {x.shape} "
        f"with {c} channels."
    )


def _image_batch(images: ArrayLike, name: str = "image") -> tuple[np.ndarray, bool]:
    """Validate an input image (batch) and return ``(N, H, W, C)``, batched flag.

    Accepts ``(H, W)``, ``(H, W, 1|3)`` and ``(N, H, W, 1|3)``.
    """
    raw = _as_float(images, name)
    arr, batched = _to_nhwc(raw, name)
    if arr.shape[-1] not in (1, 3):
        hint = ""
        if raw.ndim == 3:
            hint = (
                " A 3-D array is read as (H, W, C); for a batch of grayscale images "
                "of shape (N, H, W) add a channel axis: x[..., None]."
            )
        raise ValueError(
            f"{name} must have 1 (grayscale) or 3 (RGB) channels; received shape "
            f"{np.shape(images)}.{hint}"
        )
    return arr, batched


def _unbatch(x: np.ndarray, batched: bool) -> np.ndarray:
    return x if batched else x[0]


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def heatmap(
    attribution: ArrayLike,
    cmap: str | Colormap = "seismic",
    percentile: float = 99.5,
    channel_reduce: str = "sum",
) -> np.ndarray:
    """Render a signed attribution with a diverging colormap.

    The attribution is reduced over channels, divided by the ``percentile``-th
    percentile of its absolute values (per image), clipped to ``[-1, 1]`` and
    mapped affinely to ``[0, 1]`` so that ``0`` lands exactly on the
    colormap's centre ``cmap(0.5)``; positive relevance uses the upper (for
    ``"seismic"``: red) half, negative the lower (blue) half. The scaling is
    symmetric, so ``heatmap(-a)`` uses the mirrored colour positions of
    ``heatmap(a)``.

    Parameters
    ----------
    attribution : array_like
        Shape ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)``. A 3-D array is a
        single ``(H, W, C)`` map.
    cmap : str or matplotlib.colors.Colormap, default "seismic"
        A diverging colormap (centre colour = zero).
    percentile : float, default 99.5
        Percentile of ``|values|`` (in ``(0, 100]``) mapped to the ends of the
        colormap; larger values are clipped. If it is 0 the maximum is used;
        an all-zero map gives the centre colour everywhere (never NaN).
    channel_reduce : {"sum", "abs_sum", "max_abs"}, default "sum"
        How channels are combined: signed sum, sum of absolute values, or the
        signed value of the channel with the largest magnitude.

    Returns
    -------
    numpy.ndarray
        float64 RGB in ``[0, 1]``: ``(H, W, 3)`` for unbatched input,
        ``(N, H, W, 3)`` for a 4-D input.

    Raises
    ------
    ValueError
        Wrong rank, non-finite values, unknown ``channel_reduce`` or
        colormap, or ``percentile`` outside ``(0, 100]``.
    """
    percentile = _check_percentile(percentile)
    colormap = _get_cmap(cmap)
    arr, batched = _to_nhwc(_as_float(attribution, "attribution"), "attribution")
    reduced = _reduce_channels(arr, channel_reduce)  # (N, H, W)
    scale = _robust_absmax(reduced, percentile)[:, None, None]
    positions = (np.clip(reduced / scale, -1.0, 1.0) + 1.0) / 2.0
    rgb = np.asarray(colormap(positions), dtype=np.float64)[..., :3]
    return _unbatch(rgb, batched)


def graymap(
    x: ArrayLike,
    percentile: float = 99.5,
    channel_reduce: str = "abs_sum",
) -> np.ndarray:
    """Render the magnitude of an attribution in grayscale.

    Channels are reduced, the absolute value is taken, and each image is
    divided by the ``percentile``-th percentile of its values and clipped, so
    0 is black and large magnitudes are white.

    Parameters
    ----------
    x : array_like
        Shape ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)``.
    percentile : float, default 99.5
        Percentile in ``(0, 100]`` mapped to white (falls back to the maximum
        if it is 0; an all-zero map is black everywhere).
    channel_reduce : {"abs_sum", "sum", "max_abs"}, default "abs_sum"
        Channel reduction applied before taking the absolute value.

    Returns
    -------
    numpy.ndarray
        float64 gray RGB (three equal channels) in ``[0, 1]``, shape
        ``(H, W, 3)`` or ``(N, H, W, 3)``.

    Raises
    ------
    ValueError
        Wrong rank, non-finite values, unknown ``channel_reduce``, or
        ``percentile`` outside ``(0, 100]``.
    """
    percentile = _check_percentile(percentile)
    arr, batched = _to_nhwc(_as_float(x, "x"), "x")
    mag = np.abs(_reduce_channels(arr, channel_reduce))
    scale = _robust_absmax(mag, percentile)[:, None, None]
    gray = np.clip(mag / scale, 0.0, 1.0)
    return _unbatch(np.repeat(gray[..., None], 3, axis=-1), batched)


def project(
    signal: ArrayLike,
    absmax: float | ArrayLike | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Project a PatternNet signal into the input's value range for display.

    Each image is divided by its own maximum absolute value (or ``absmax``),
    so it lies in ``[-1, 1]``, then mapped affinely onto ``input_range``
    keeping the channels: 0 goes to the midpoint (0.5 for the default
    ``(0, 1)``), ``+absmax`` to ``input_range[1]`` and ``-absmax`` to
    ``input_range[0]``. An RGB signal stays RGB.

    Parameters
    ----------
    signal : array_like
        Shape ``(H, W, C)`` or ``(N, H, W, C)`` (``(H, W)`` is accepted too
        and returned as ``(H, W)``).
    absmax : float or array_like of shape (N,), optional
        Magnitude mapped to the ends of ``input_range``; values beyond it are
        clipped. Default: the per-image maximum of ``|signal|``. Zero entries
        (e.g. an all-zero signal) are replaced by 1, so the output is the
        midpoint and never NaN.
    input_range : (float, float), default (0, 1)
        ``(low, high)`` range of the output, i.e. the range the model's inputs
        are displayed in; with the default the result is in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray
        float64 array of the same shape as ``signal`` with values in
        ``input_range``.

    Raises
    ------
    ValueError
        Wrong rank, non-finite values, a negative or mis-shaped ``absmax``,
        or an invalid ``input_range``.
    """
    arr = _as_float(signal, "signal")
    orig_shape = arr.shape
    batch, batched = _to_nhwc(arr, "signal")
    n = batch.shape[0]

    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError) as err:
        raise ValueError(f"input_range must be a pair (low, high), got {input_range!r}.") from err
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"input_range must satisfy low < high (finite), got {input_range!r}.")

    if absmax is None:
        scale = np.abs(batch).reshape(n, -1).max(axis=1)
    else:
        scale = np.asarray(absmax, dtype=np.float64)
        if scale.ndim == 0:
            scale = np.full(n, float(scale))
        elif scale.shape != (n,):
            raise ValueError(
                f"absmax must be a scalar or have shape ({n},) (one value per image); "
                f"received shape {scale.shape} for signal of shape {orig_shape}."
            )
        if not np.all(np.isfinite(scale)) or np.any(scale < 0):
            raise ValueError(f"absmax must be finite and non-negative, got {absmax!r}.")
    scale = np.where(scale > 0, scale, 1.0)[:, None, None, None]

    unit = (np.clip(batch / scale, -1.0, 1.0) + 1.0) / 2.0  # [0, 1], 0 -> 0.5
    out = low + unit * (high - low)
    if not batched:
        out = out[0]
    return out.reshape(orig_shape)


def overlay(
    image: ArrayLike,
    attribution: ArrayLike,
    alpha: float = 0.5,
    cmap: str | Colormap = "seismic",
    percentile: float = 99.5,
    channel_reduce: str = "sum",
) -> np.ndarray:
    """Blend an input image with the heatmap of its attribution.

    ``result = (1 - alpha) * normalized_image + alpha * heatmap(attribution)``,
    where the image is min-max normalised to ``[0, 1]`` per image (any input
    range; a constant image becomes 0.5) and grayscale is expanded to RGB.
    ``alpha=0`` returns the normalised image, ``alpha=1`` the heatmap.

    Parameters
    ----------
    image : array_like
        ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``, or a batch
        ``(N, H, W, 1|3)``.
    attribution : array_like
        ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)`` with the same ``H, W``
        (and ``N``, when batched) as ``image``.
    alpha : float, default 0.5
        Weight of the heatmap, in ``[0, 1]``.
    cmap, percentile, channel_reduce
        Passed to :func:`heatmap`.

    Returns
    -------
    numpy.ndarray
        float64 RGB in ``[0, 1]``: ``(H, W, 3)``, or ``(N, H, W, 3)`` when
        either input is batched.

    Raises
    ------
    ValueError
        Bad ranks or channel counts, mismatched shapes, ``alpha`` outside
        ``[0, 1]``, or any error of :func:`heatmap`.
    """
    alpha = float(alpha)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    img, img_batched = _image_batch(image, "image")
    att, att_batched = _to_nhwc(_as_float(attribution, "attribution"), "attribution")
    if img.shape[1:3] != att.shape[1:3]:
        raise ValueError(
            f"image and attribution must have the same spatial size (H, W); received "
            f"image shape {np.shape(image)} and attribution shape {np.shape(attribution)}."
        )
    if img.shape[0] != att.shape[0]:
        if img.shape[0] == 1:
            img = np.repeat(img, att.shape[0], axis=0)
        elif att.shape[0] == 1:
            att = np.repeat(att, img.shape[0], axis=0)
        else:
            raise ValueError(
                f"image and attribution hold different numbers of images: image shape "
                f"{np.shape(image)} (N={img.shape[0]}), attribution shape "
                f"{np.shape(attribution)} (N={att.shape[0]})."
            )
    base = _image_to_rgb(_normalize_images(img), "image")
    heat = heatmap(att, cmap=cmap, percentile=percentile, channel_reduce=channel_reduce)
    out = (1.0 - alpha) * base + alpha * heat
    out = np.clip(out, 0.0, 1.0)
    return _unbatch(out, img_batched or att_batched)


def _default_kind(name: str) -> str:
    """``"heatmap"`` for every method, PatternNet included.

    A PatternNet signal is signed like an attribution: drawn on the same diverging scale, its
    sign (which flips with the class of the signal) is visible, where the grey input-space
    projection of ``"project"`` made rows look alike. ``kinds={"PatternNet": "project"}``
    asks for the projection explicitly.
    """
    return "heatmap"


#: The colour bar's key under the grid and the overlays.
SIGN_KEY = "red = positive, blue = negative"


def _explanation_batch(
    name: str,
    value: ArrayLike,
    n: int,
    hw: tuple[int, int],
    images_batched: bool,
    images_shape: tuple[int, ...],
) -> np.ndarray:
    """Validate one explanation against the images; return ``(N, H, W, C)``."""
    label = f"explanations[{name!r}]"
    arr = _as_float(value, label)
    expected = f"(N, H, W) or (N, H, W, C) with N={n}, H, W={hw[0]}, {hw[1]}"
    if not images_batched:
        expected += f", or (H, W) / (H, W, C) with H, W={hw[0]}, {hw[1]}"
    if arr.ndim == 4:
        pass
    elif (
        arr.ndim == 3
        and arr.shape[0] == n
        and arr.shape[1:3] == hw
        and (images_batched or arr.shape[:2] != hw)
    ):
        arr = arr[..., None]  # (N, H, W)
    elif not images_batched and arr.ndim in (2, 3):
        arr = _to_nhwc(arr, label)[0]
    else:
        raise ValueError(
            f"{label} must have shape {expected} to match images of shape "
            f"{images_shape}; received shape {arr.shape}."
        )
    if arr.shape[0] != n:
        raise ValueError(
            f"{label} holds {arr.shape[0]} explanation(s) but images holds {n}: "
            f"received shape {np.shape(value)}, images shape {images_shape}."
        )
    if arr.shape[1:3] != hw:
        raise ValueError(
            f"{label} has spatial size {arr.shape[1:3]} but the images are {hw}: "
            f"received shape {np.shape(value)}, images shape {images_shape}."
        )
    return arr


def _render(kind: str, name: str, arr: np.ndarray, cmap, percentile: float) -> np.ndarray:
    """Render ``(N, H, W, C)`` as ``(N, H, W, 3)`` RGB in ``[0, 1]``."""
    if kind == "heatmap":
        return heatmap(arr, cmap=cmap, percentile=percentile)
    if kind == "graymap":
        return graymap(arr, percentile=percentile)
    if kind == "project":
        return _image_to_rgb(project(arr), f"explanations[{name!r}] (kind 'project')")
    raise ValueError(f"unknown kind {kind!r} for {name!r}; expected one of {KINDS}.")


def explanation_grid(
    images: ArrayLike,
    explanations: Mapping[str, ArrayLike],
    kinds: Mapping[str, str] | None = None,
    row_labels: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
    cmap: str | Colormap = "seismic",
    percentile: float = 99.5,
    colorbar: bool = True,
) -> Figure:
    """Lay out inputs and their explanations in a grid.

    Row ``i`` shows image ``i``: the (min-max normalised) input in the first
    column, then one column per method in the order of ``explanations``.
    Column titles are ``"Input"`` and the method names; axes carry no ticks.
    Signed maps (``"heatmap"``) share one symmetric colour scale: each map is
    divided by its own ``percentile`` of ``|value|``, so ``0`` is white and
    ``±1`` the colour bar's ends, with the key "red = positive, blue =
    negative".

    Parameters
    ----------
    images : array_like
        ``(N, H, W, C)`` with ``C`` 1 (grayscale) or 3 (RGB), or a single
        image ``(H, W)`` / ``(H, W, C)``. Any value range.
    explanations : mapping of str to array_like
        Method name -> explanations for all images, shape ``(N, H, W, C')``
        or ``(N, H, W)`` (for a single image also ``(H, W[, C'])``).
    kinds : mapping of str to str, optional
        Method name -> ``"heatmap"`` (signed, diverging colormap),
        ``"graymap"`` (magnitude) or ``"project"`` (PatternNet signal, shown
        in input space; needs 1 or 3 channels). Missing names default to
        ``"heatmap"``, PatternNet included: its signal is signed too, and its
        sign flips with the class.
    row_labels : sequence of str, optional
        One label per image, shown left of each row.
    figsize : (float, float), optional
        Figure size in inches; default ``(2 * cols, 2 * rows)`` (+ title).
    title : str, optional
        Figure title.
    cmap, percentile
        Colormap and scaling percentile for the ``"heatmap"`` and
        ``"graymap"`` renderings.
    colorbar : bool, default True
        Add a colour bar for the signed maps (when there is one) right of the
        grid, labelled with the sign key.

    Returns
    -------
    matplotlib.figure.Figure
        Figure whose first ``N x (1 + len(explanations))`` axes are the grid
        (row by row), followed by the colour bar's axes when there is one;
        save it with ``fig.savefig(path)`` or :func:`save_figure`.

    Raises
    ------
    ValueError
        Bad image rank or channel count, explanations whose number of images
        or spatial size differs from ``images``, unknown kinds or kind keys,
        or a wrong number of ``row_labels``.
    """
    imgs, imgs_batched = _image_batch(images, "images")
    images_shape = tuple(np.shape(images))
    n, h, w = imgs.shape[:3]
    if not isinstance(explanations, Mapping):
        raise ValueError(
            f"explanations must be a dict of method name -> array, got {type(explanations).__name__}."
        )
    kinds = dict(kinds or {})
    unknown_keys = [k for k in kinds if k not in explanations]
    if unknown_keys:
        raise ValueError(
            f"kinds names method(s) {unknown_keys} not present in explanations "
            f"{list(explanations)}."
        )
    if row_labels is not None:
        row_labels = list(row_labels)
        if len(row_labels) != n:
            raise ValueError(
                f"row_labels must have one label per image: expected {n}, "
                f"received {len(row_labels)}."
            )

    columns: list[tuple[str, np.ndarray]] = []
    signed = False
    for name, value in explanations.items():
        kind = kinds.get(name, _default_kind(str(name)))
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} for {name!r}; expected one of {KINDS}.")
        signed = signed or kind == "heatmap"
        arr = _explanation_batch(str(name), value, n, (h, w), imgs_batched, images_shape)
        columns.append((str(name), _render(kind, str(name), arr, cmap, percentile)))

    inputs = _normalize_images(imgs)
    ncols = 1 + len(columns)
    with_colorbar = colorbar and signed
    if figsize is None:
        figsize = (2.0 * ncols + (1.0 if with_colorbar else 0.0), 2.0 * n + (0.4 if title else 0.0))
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(n, ncols, squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        if inputs.shape[-1] == 1:
            ax.imshow(inputs[i, ..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(inputs[i], interpolation="nearest")
        for j, (_, rendered) in enumerate(columns, start=1):
            axes[i, j].imshow(rendered[i], vmin=0.0, vmax=1.0, interpolation="nearest")
        if row_labels is not None:
            ax.set_ylabel(str(row_labels[i]))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("Input")
    for j, (name, _) in enumerate(columns, start=1):
        axes[0, j].set_title(name)
    if with_colorbar:
        add_sign_colorbar(fig, axes, cmap=cmap, percentile=percentile)
    if title:
        fig.suptitle(title)
    return fig


def add_sign_colorbar(
    fig: Figure, axes, cmap: str | Colormap = "seismic", percentile: float = 99.5
):
    """Add the colour bar of the signed maps, with the "red = positive, blue = negative" key.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure to draw in.
    axes : matplotlib.axes.Axes or array of Axes
        The axes the bar belongs to (it is placed right of them).
    cmap : str or matplotlib.colors.Colormap, default "seismic"
        The colormap the maps were rendered with.
    percentile : float, default 99.5
        The scaling percentile they were rendered with (named in the bar's label).

    Returns
    -------
    matplotlib.colorbar.Colorbar
        Ticks at ``-1, 0, +1``: each map's own ``percentile`` of ``|value|``, negated, zero,
        and positive.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(-1.0, 1.0), cmap=_get_cmap(cmap))
    rows = np.shape(axes)[0] if np.ndim(axes) == 2 else 1
    # About three rows tall: a bar the height of a 16-row grid would dwarf the maps.
    shrink = 0.9 if rows <= 3 else max(0.2, 2.7 / rows)
    bar = fig.colorbar(
        mappable,
        ax=axes,
        shrink=shrink,
        ticks=[-1.0, 0.0, 1.0],
        aspect=30 * shrink if rows > 3 else 30,
    )
    bar.ax.set_yticklabels(["−max", "0", "+max"])
    scale = "max" if float(percentile) >= 100 else f"{float(percentile):g}th pct."
    bar.set_label(f"{SIGN_KEY}\n(each map scaled to its own {scale} of |value|)")
    return bar


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> str:
    """Save ``fig`` to ``path``, creating missing parent folders.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Figure to save (e.g. from :func:`explanation_grid`).
    path : str or os.PathLike
        Destination; the format follows the extension (``.png``, ``.pdf``...).
    dpi : int, default 100
        Resolution in dots per inch.

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


# --------------------------------------------------------------------------- #
# Token scores over text
# --------------------------------------------------------------------------- #
class TokenScores:
    """Scores drawn over the pieces of tokenized text: what :func:`tokens` returns.

    Shown as HTML in a notebook (``_repr_html_``) and in colour in a terminal (``print``:
    24-bit ANSI background colours); :meth:`save` writes the HTML page.

    Attributes
    ----------
    pieces : list of list of str
        Per example, the token pieces shown (padding left out).
    scores : list of numpy.ndarray
        Per example, the scores of those pieces.
    colors : list of numpy.ndarray
        Per example, ``(pieces, 3)`` RGB colours in ``[0, 1]``.
    """

    def __init__(self, pieces, scores, colors, title: str | None = None) -> None:
        self.pieces = pieces
        self.scores = scores
        self.colors = colors
        self.title = title

    @property
    def html(self) -> str:
        """The examples as an HTML fragment: one line each, a coloured box per piece, its score
        in the tooltip."""
        import html

        lines = []
        for pieces, scores, colors in zip(self.pieces, self.scores, self.colors):
            spans = []
            for piece, score, rgb in zip(pieces, scores, colors):
                r, g, b = (int(round(255 * c)) for c in rgb)
                spans.append(
                    f'<span title="{score:.4g}" style="background:rgb({r},{g},{b});'
                    'padding:1px 2px;margin:0 1px;border-radius:3px;color:black">'
                    f"{html.escape(piece)}</span>"
                )
            lines.append(
                f'<div style="line-height:1.9;font-family:monospace">{"".join(spans)}</div>'
            )
        title = f"<p><b>{html.escape(self.title)}</b></p>" if self.title else ""
        key = f'<p style="font-size:small">{SIGN_KEY}; the score is in each piece\'s tooltip</p>'
        return title + "".join(lines) + key

    def _repr_html_(self) -> str:
        return self.html

    @property
    def ansi(self) -> str:
        """The examples for a terminal: each piece on its colour (black text)."""
        lines = [self.title] if self.title else []
        for pieces, colors in zip(self.pieces, self.colors):
            parts = []
            for piece, rgb in zip(pieces, colors):
                r, g, b = (int(round(255 * c)) for c in rgb)
                parts.append(f"\x1b[38;2;0;0;0;48;2;{r};{g};{b}m{piece}\x1b[0m")
            lines.append(" ".join(parts))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.ansi

    def __repr__(self) -> str:
        return f"TokenScores({len(self.pieces)} example(s))"

    def save(self, path: str | os.PathLike) -> str:
        """Write a standalone HTML page (parent folders created).

        Parameters
        ----------
        path : str or path-like
            The file to write (replaced if it exists).

        Returns
        -------
        str
            The path written.
        """
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{self.html}</body></html>'
            )
        return path


def _piece_lookup(tokenizer) -> object:
    """``id -> piece`` from a keras-hub tokenizer or preprocessor, a vocabulary list, a mapping,
    a callable, or ``None`` (the ids themselves)."""
    tok = getattr(tokenizer, "tokenizer", None) or tokenizer
    if tokenizer is None:
        return str
    if hasattr(tok, "id_to_token"):
        return lambda i: str(tok.id_to_token(int(i)))
    if isinstance(tokenizer, Mapping):
        return lambda i: str(tokenizer.get(int(i), i))
    if callable(tokenizer):
        return lambda i: str(tokenizer(int(i)))
    if isinstance(tokenizer, Sequence) and not isinstance(tokenizer, str):
        return lambda i: str(tokenizer[int(i)])
    raise ValueError(
        "tokenizer must be a keras-hub tokenizer or preprocessor, a vocabulary (list of "
        f"pieces), a mapping id -> piece, a function, or None; got {type(tokenizer).__name__}."
    )


def _preprocess_text(text, preprocessor) -> tuple[np.ndarray, np.ndarray | None]:
    """Token ids (and a padding mask, if the preprocessor gives one) of raw text."""
    if preprocessor is None or not callable(preprocessor):
        raise ValueError(
            "Text was given instead of token ids: pass the keras-hub preprocessor (or tokenizer) "
            "that made the model's inputs as the third argument."
        )
    out = preprocessor([text] if isinstance(text, str) else list(text))
    if isinstance(out, tuple):  # (x, y, sample_weight) of a task preprocessor
        out = out[0]
    mask = None
    if isinstance(out, Mapping):
        mask = out.get("padding_mask")
        out = out["token_ids"]
    ids = np.asarray(out)
    return ids, None if mask is None else np.asarray(mask).astype(bool)


def tokens(
    scores: ArrayLike,
    token_ids: ArrayLike | str | Sequence[str],
    tokenizer=None,
    *,
    mask: ArrayLike | None = None,
    cmap: str | Colormap = "bwr",
    percentile: float = 100.0,
    title: str | None = None,
) -> TokenScores:
    """Draw per-token scores over the tokenizer's pieces (HTML in a notebook, colour in a
    terminal).

    Parameters
    ----------
    scores : array
        ``(T,)`` or ``(N, T)``: what an analyzer returns for an input of token ids (its
        per-token scores).
    token_ids : array, str or list of str
        The ids, shaped like ``scores``; or the raw text (one string per example), which
        ``tokenizer`` (then a keras-hub preprocessor or tokenizer) turns into ids.
    tokenizer : keras-hub tokenizer or preprocessor, list, mapping, callable, or None
        Turns an id into its piece: a keras-hub ``Tokenizer`` (``id_to_token``) or a
        preprocessor holding one, a vocabulary (``vocab[id]``), a mapping, a function, or
        ``None`` to show the ids.
    mask : array, optional
        Shaped like ``scores``: the positions to show (a ``padding_mask``). By default a
        preprocessor's padding mask where text is given, else every position.
    cmap : str or Colormap
        A diverging colormap; 0 maps to its centre (white for ``"bwr"``, the default), positive
        scores to its upper (red) half.
    percentile : float
        Each example is scaled by this percentile of its ``|scores|`` (default 100: the largest).
    title : str, optional

    Returns
    -------
    TokenScores
        Display it (a notebook shows the HTML), ``print`` it (a terminal shows colours), or
        ``.save("scores.html")``.

    Examples
    --------
    >>> scores = pk.LRPZ(classifier.backbone_with_head).analyze(x)     # (N, T)
    >>> pk.plot.tokens(scores, x["token_ids"], preprocessor)
    """
    preset_mask = None
    if isinstance(token_ids, str) or (
        isinstance(token_ids, Sequence) and token_ids and isinstance(token_ids[0], str)
    ):
        token_ids, preset_mask = _preprocess_text(token_ids, tokenizer)
    ids = np.asarray(token_ids)
    values = _as_float(scores, "scores")
    if values.ndim == 1:
        values, ids = values[None], ids.reshape(1, -1)
    if values.ndim != 2 or ids.shape != values.shape:
        raise ValueError(
            f"scores must be (T,) or (N, T) and token_ids shaped like them; got scores "
            f"{np.shape(scores)} and token ids {ids.shape}."
        )
    shown = preset_mask if mask is None else np.asarray(mask).astype(bool)
    shown = np.ones(values.shape, bool) if shown is None else shown.reshape(values.shape)
    percentile = _check_percentile(percentile)
    colormap = _get_cmap(cmap)
    piece = _piece_lookup(tokenizer)
    all_pieces, all_scores, all_colors = [], [], []
    for row_ids, row, keep in zip(ids, values, shown):
        row, row_ids = row[keep], row_ids[keep]
        scale = float(np.percentile(np.abs(row), percentile)) if row.size else 0.0
        level = np.clip(row / scale, -1, 1) if scale > 0 else np.zeros_like(row)
        all_colors.append(np.asarray(colormap(0.5 + 0.5 * level))[:, :3])
        all_pieces.append([piece(i) for i in row_ids])
        all_scores.append(row)
    return TokenScores(all_pieces, all_scores, all_colors, title=title)
