"""The images ``pattern-keras analyze`` writes: per input an overlay of each explanation on the
input, enlarged to a readable size, and one grid (inputs x methods) with a colour bar."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

#: Overlays are enlarged (nearest neighbour, by a whole factor) until their longer side reaches
#: this many pixels: an 8x8 digit becomes 256x256.
READABLE_SIDE = 256
#: Weight of the heatmap in an overlay (the input shows through in grey or colour).
OVERLAY_ALPHA = 0.6


@dataclasses.dataclass
class Written:
    """What :func:`write_images` wrote."""

    overlays: int
    size: tuple[int, int]
    grid: str


def overlay_name(name: str, method: str, n_methods: int) -> str:
    """``<name>.png`` for one method, ``<name>_<method>.png`` for several."""
    return f"{name}.png" if n_methods == 1 else f"{name}_{method}.png"


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _as_displayable(x: np.ndarray) -> np.ndarray:
    """Inputs ``(N, H, W, C)`` as 1 or 3 channels (others: their mean, in grey)."""
    return x if x.shape[-1] in (1, 3) else x.mean(axis=-1, keepdims=True)


def write_images(
    folder: str,
    x: np.ndarray,
    names: Sequence[str],
    explanations: Mapping[str, np.ndarray],
    grid_rows: int = 16,
) -> Written | None:
    """Write the overlays and ``grid.png`` for image inputs; ``None`` (nothing written) for
    inputs that are not images ``(N, H, W, C)``.

    Parameters
    ----------
    folder : str
        The output folder (exists).
    x : numpy.ndarray
        The inputs as given to the model, ``(N, H, W, C)``.
    names : sequence of str
        One file name stem per input.
    explanations : mapping of str to numpy.ndarray
        Method name -> explanations shaped like ``x`` (finite values).
    grid_rows : int
        The grid shows the first ``grid_rows`` inputs.
    """
    from matplotlib import image as mpimg

    from pattern_keras import plot

    if x.ndim != 4:
        return None
    images = _as_displayable(x)
    factor = max(1, math.ceil(READABLE_SIDE / max(x.shape[1], x.shape[2])))
    count = 0
    for method, values in explanations.items():
        rgb = plot.overlay(images, values, alpha=OVERLAY_ALPHA)
        for name, image in zip(names, rgb):
            path = os.path.join(folder, overlay_name(name, method, len(explanations)))
            mpimg.imsave(path, np.clip(_enlarge(image, factor), 0.0, 1.0))
            count += 1
    rows = min(grid_rows, len(x))
    figure = plot.explanation_grid(
        images[:rows],
        {m: e[:rows] for m, e in explanations.items()},
        row_labels=[str(n) for n in names[:rows]],
        title=(f"first {rows} of {len(x)} inputs" if rows < len(x) else None),
    )
    grid = "grid.png"
    plot.save_figure(figure, os.path.join(folder, grid), dpi=80)
    return Written(overlays=count, size=(x.shape[1] * factor, x.shape[2] * factor), grid=grid)
