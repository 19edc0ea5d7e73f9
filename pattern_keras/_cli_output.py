"""What the command line writes, and the rules that keep it from losing a file.

The images ``pattern-keras analyze`` writes: per input an overlay of each explanation on the
input (``<stem>.<method>.png``), enlarged to a readable size, and one grid (inputs x methods)
with a colour bar.

The rules for every output (:func:`check_outputs`, before any work): an output that is the
model, an input or the pattern file (the same file, links resolved) is refused, even with
``--overwrite``; another existing file is replaced only with ``--overwrite`` or when a previous
run of the command line wrote it, as the manifest :data:`MANIFEST` in its folder records (name,
size and modification time: a file changed since is no longer ours).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: Overlays are enlarged (nearest neighbour, by a whole factor) until their longer side reaches
#: this many pixels: an 8x8 digit becomes 256x256.
READABLE_SIDE = 256
#: Weight of the heatmap in an overlay (the input shows through in grey or colour).
OVERLAY_ALPHA = 0.6


#: The manifest of the files the command line wrote in a folder.
MANIFEST = ".pattern-keras-outputs.json"
_MANIFEST_FORMAT = "pattern-keras outputs"
#: The grid of ``analyze``.
GRID = "grid.png"


@dataclasses.dataclass
class Written:
    """What :func:`write_images` wrote."""

    overlays: int
    size: tuple[int, int]
    grid: str
    files: list[str] = dataclasses.field(default_factory=list)


def overlay_name(name: str, method: str) -> str:
    """``<name>.<method>.png``: never an input's own name, nor the grid's."""
    return f"{name}.{method}.png"


class OutputRefused(ValueError):
    """A planned output that would replace an input, or a file the command line did not write."""


def check_outputs(outputs: Sequence[str], protected: Iterable[str], overwrite: bool) -> None:
    """Refuse the outputs of a command before it does any work (see the module docstring).

    Parameters
    ----------
    outputs : sequence of str
        Every file the command will write (the manifests excepted: they are added here).
    protected : iterable of str
        The model, the inputs and the pattern file: never written, even with ``overwrite``.
    overwrite : bool
        Whether other existing files may be replaced.

    Raises
    ------
    OutputRefused
        Naming the first output refused and why.
    """
    outputs = list(outputs)
    seen: dict[str, str] = {}
    for path in outputs:
        real = os.path.realpath(path)
        if real in seen:
            raise OutputRefused(f"two outputs would be written to one file, '{path}'")
        seen[real] = path
    manifests = sorted({_manifest_path(p) for p in outputs})
    identities = {}
    for path in protected:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            identities[(st.st_dev, st.st_ino)] = path
    for path in outputs + manifests:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in identities:
                raise OutputRefused(
                    f"the output '{path}' is the input '{identities[st.st_dev, st.st_ino]}': "
                    "refusing to overwrite it (even with --overwrite); write elsewhere"
                )
    if overwrite:
        return
    entries = {m: _read_manifest(m) for m in manifests}
    foreign = [
        p
        for p in outputs
        if os.path.lexists(p) and not _written_by_us(p, entries[_manifest_path(p)] or {})
    ]
    foreign += [m for m in manifests if os.path.lexists(m) and entries[m] is None]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputRefused(
            f"'{foreign[0]}'{more} exists and was not written by pattern-keras: give "
            "--overwrite to replace it, or write elsewhere"
        )


def record_outputs(paths: Iterable[str]) -> None:
    """Add files just written to the manifest of their folder (size, modification time)."""
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        by_folder.setdefault(_manifest_path(path), []).append(path)
    for manifest, files in by_folder.items():
        entries = _read_manifest(manifest) or {}
        for path in files:
            st = os.stat(path)
            entries[os.path.basename(path)] = [st.st_size, st.st_mtime_ns]
        text = json.dumps({"format": _MANIFEST_FORMAT, "files": entries}, indent=0)
        tmp = f"{manifest}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, manifest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise


def _manifest_path(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), MANIFEST)


def _read_manifest(manifest: str) -> dict[str, list[int]] | None:
    """The entries of a manifest; ``None`` for a missing file or one that is not a manifest."""
    try:
        with open(manifest, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != _MANIFEST_FORMAT:
        return None
    files = content.get("files")
    return dict(files) if isinstance(files, dict) else None


def _written_by_us(path: str, manifest: Mapping[str, list[int]]) -> bool:
    """Whether the manifest of the file's folder lists it with its current size and time."""
    entry = manifest.get(os.path.basename(path))
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (
        os.path.isfile(path) and not os.path.islink(path) and entry == [st.st_size, st.st_mtime_ns]
    )


def planned_images(folder: str, names: Sequence[str], methods: Sequence[str]) -> list[str]:
    """The PNGs :func:`write_images` writes for these inputs and methods (if they are images)."""
    overlays = [os.path.join(folder, overlay_name(n, m)) for m in methods for n in names]
    return overlays + [os.path.join(folder, GRID)]


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
    files = []
    for method, values in explanations.items():
        rgb = plot.overlay(images, values, alpha=OVERLAY_ALPHA)
        for name, image in zip(names, rgb):
            path = os.path.join(folder, overlay_name(name, method))
            mpimg.imsave(path, np.clip(_enlarge(image, factor), 0.0, 1.0))
            files.append(path)
    rows = min(grid_rows, len(x))
    figure = plot.explanation_grid(
        images[:rows],
        {m: e[:rows] for m, e in explanations.items()},
        row_labels=[str(n) for n in names[:rows]],
        title=(f"first {rows} of {len(x)} inputs" if rows < len(x) else None),
    )
    plot.save_figure(figure, os.path.join(folder, GRID), dpi=80)
    return Written(
        overlays=len(files),
        size=(x.shape[1] * factor, x.shape[2] * factor),
        grid=GRID,
        files=files + [os.path.join(folder, GRID)],
    )
