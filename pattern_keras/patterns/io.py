"""The HDF5 pattern file.

Layout (h5py; everything is plain arrays and attributes, nothing is pickled or executed)::

    /                         attrs: format = "pattern_keras.patterns", format_version = 1,
                                     library_version, n_samples, fingerprint (JSON text:
                                     layer keys, classes, weight shapes, weights SHA-256)
    /patterns/<key>/          one group per layer key ("outer/inner" nests groups);
                              attrs: key, pattern_type
        a                     the pattern (a₊ for "relu"), shaped like the kernel, float32
        a_negative            a₋, only where the layer keeps its negative regime
    /statistics/<key>/        optional: the sufficient statistics, to merge or resume a fit;
                              attrs: key, pattern_type, rectified, shift_x, out_axes;
                              root attrs n_batches
        kernel, shift_y, n, sum_y, ...   float64 arrays (see pattern_keras.patterns.statistics)
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from pattern_keras._version import __version__

__all__ = ["PatternFileError", "save", "load_patterns", "load_statistics", "FORMAT",
           "FORMAT_VERSION"]

FORMAT = "pattern_keras.patterns"
FORMAT_VERSION = 1


class PatternFileError(ValueError):
    """A pattern file that cannot be read: missing, truncated, corrupt, or of another format."""


def _h5py():
    import h5py

    return h5py


def save(path: str, patterns: Any, statistics: Any = None) -> None:
    """Write patterns (and optionally statistics) atomically: a temporary file, then a rename.

    Parameters
    ----------
    path : str
        Destination ``.h5`` file; parent folders are created.
    patterns : Patterns
    statistics : PatternStatistics, optional
    """
    h5py = _h5py()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5.tmp", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["library_version"] = __version__
            f.attrs["n_samples"] = int(patterns.n_samples)
            f.attrs["fingerprint"] = json.dumps(patterns.fingerprint)
            group = f.create_group("patterns")
            for key in patterns:
                g = group.create_group(key)
                g.attrs["key"] = key
                g.attrs["pattern_type"] = patterns.pattern_types.get(key, "relu")
                g.create_dataset("a", data=np.asarray(patterns[key], np.float32))
                if patterns.has_negative(key):
                    g.create_dataset("a_negative", data=patterns.negative(key))
            if statistics is not None:
                f.attrs["n_batches"] = int(statistics.n_batches)
                sgroup = f.create_group("statistics")
                for key, layer in statistics.layers.items():
                    g = sgroup.create_group(key)
                    g.attrs["key"] = key
                    g.attrs["pattern_type"] = layer.pattern_type
                    g.attrs["rectified"] = bool(layer.rectified)
                    g.attrs["shift_x"] = float(layer.shift_x)
                    g.attrs["out_axes"] = np.asarray(layer.out_axes, np.int64)
                    g.create_dataset("kernel", data=np.asarray(layer.kernel))
                    g.create_dataset("shift_y", data=np.asarray(layer.shift_y, np.float64))
                    for name, value in layer.sums.items():
                        g.create_dataset(name, data=np.asarray(value, np.float64))
        # mkstemp makes the file private (0600): give it the permissions of any new file.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:  # on disk before the rename (a host may go down)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open(path: str):
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Pattern file '{path}' does not exist.")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise PatternFileError(
            f"'{path}' is not a readable HDF5 file (truncated or corrupt?): {err}") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise PatternFileError(f"'{path}' is an HDF5 file but not a pattern_keras pattern file.")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        f.close()
        raise PatternFileError(
            f"'{path}' has pattern format version {version}; this pattern_keras "
            f"({__version__}) reads up to {FORMAT_VERSION}. Upgrade pattern_keras.")
    return f


def _leaf_groups(group) -> dict[str, Any]:
    """Groups carrying a ``key`` attribute, by key."""
    leaves = {}

    def visit(name, obj):
        if "key" in getattr(obj, "attrs", {}):
            leaves[str(obj.attrs["key"])] = obj

    group.visititems(visit)
    return leaves


def _read(fn, path):
    try:
        with _open(path) as f:
            return fn(f)
    except (PatternFileError, FileNotFoundError):
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise PatternFileError(f"Pattern file '{path}' is damaged: {err}") from None


def load_patterns(path: str):
    """Read the patterns of a pattern file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    PatternFileError
        If it is truncated, corrupt, or not a pattern file.
    """
    from pattern_keras.patterns.patterns import Patterns

    def read(f):
        positive, negative, types = {}, {}, {}
        for key, g in _leaf_groups(f["patterns"]).items():
            positive[key] = np.asarray(g["a"][()], np.float32)
            types[key] = str(g.attrs["pattern_type"])
            if "a_negative" in g:
                negative[key] = np.asarray(g["a_negative"][()], np.float32)
        return Patterns(positive, negative=negative, pattern_types=types,
                        n_samples=int(f.attrs["n_samples"]),
                        fingerprint=json.loads(str(f.attrs["fingerprint"])))

    return _read(read, path)


def load_statistics(path: str):
    """Read the statistics of a pattern file, or ``None`` if it holds only patterns."""
    from pattern_keras.patterns.statistics import LayerStatistics, PatternStatistics

    def read(f):
        if "statistics" not in f:
            return None
        layers = {}
        for key, g in _leaf_groups(f["statistics"]).items():
            sums = {name: np.asarray(g[name][()], np.float64) for name in g
                    if name not in ("kernel", "shift_y")}
            layers[key] = LayerStatistics(
                pattern_type=str(g.attrs["pattern_type"]), rectified=bool(g.attrs["rectified"]),
                kernel=np.asarray(g["kernel"][()]),
                out_axes=tuple(int(a) for a in g.attrs["out_axes"]),
                shift_x=float(g.attrs["shift_x"]),
                shift_y=np.asarray(g["shift_y"][()], np.float64), sums=sums)
        return PatternStatistics(layers, n_samples=int(f.attrs["n_samples"]),
                                 n_batches=int(f.attrs.get("n_batches", 0)),
                                 fingerprint=json.loads(str(f.attrs["fingerprint"])))

    return _read(read, path)
