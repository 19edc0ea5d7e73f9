"""The HDF5 pattern file.

Layout (h5py; everything is plain arrays and attributes, nothing is pickled or executed)::

    /                         attrs: format = "pattern_keras.patterns", format_version = 3,
                                     library_version, n_samples, fingerprint (JSON text:
                                     layer keys, classes, weight shapes, weights SHA-256),
                                     metadata_sha256 and checksum_sha256 (version >= 2),
                                     n_batches (with statistics), fit_ids (with statistics,
                                     version 3: JSON list of the identities of the fits they
                                     hold, see PatternStatistics.fit_ids)
    /patterns/<key>/          one group per layer key ("outer/inner" nests groups);
                              attrs: key, pattern_type
        a                     the pattern (a₊ for "relu"), shaped like the kernel, float32
        a_negative            a₋, only where the layer keeps its negative regime
    /statistics/<key>/        optional: the sufficient statistics, to merge or resume a fit;
                              attrs: key, pattern_type, rectified, shift_x, out_axes
        kernel, shift_y, n, sum_y, ...   float64 arrays (see pattern_keras.patterns.statistics)

Reading is strict, because a pattern file may come from anywhere and a wrong pattern gives a
wrong explanation that nobody can see: before any array is read, the layout is checked entry by
entry (a missing, extra, duplicated or malformed entry is a :class:`PatternFileError` naming it),
links other than plain ones, external raw storage and virtual datasets are refused, and every
dataset's declared shape and dtype is checked against the model (or, without a model, against
the weight shapes in the file's own fingerprint), so a small file cannot make the reader
allocate gigabytes. Then the arrays are read and the checksum verified.

The checksum (version 2) is a SHA-256 over a canonical serialization of every group, dataset and
attribute (path, name, dtype, shape and bytes, in sorted order), the checksum attribute itself
excepted. Version-1 files (no checksum) still load, with a warning. The statistics of a file of
version 1 or 2 (no ``fit_ids``) get one identity derived from the file's content (the SHA-256 of
the canonical serialization), so the same old file, or a copy, cannot be merged twice.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io as _io
import json
import os
import re
import socket
import stat
import tempfile
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from pattern_keras._version import __version__

__all__ = [
    "PatternFileError",
    "save",
    "load_patterns",
    "load_statistics",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "pattern_keras.patterns"
FORMAT_VERSION = 3
CHECKSUM_ATTR = "checksum_sha256"
FIT_IDS_ATTR = "fit_ids"
METADATA_CHECKSUM_ATTR = "metadata_sha256"
_CHECKSUMS = (CHECKSUM_ATTR, METADATA_CHECKSUM_ATTR)

_ROOT_REQUIRED = ("format", "format_version", "library_version", "n_samples", "fingerprint")
_PATTERN_ATTRS = ("key", "pattern_type")
_STAT_ATTRS = ("key", "pattern_type", "rectified", "shift_x", "out_axes")
_NEURON_STATS = ("n", "sum_y", "n_pos", "sum_y_pos")
_KERNEL_STATS = ("sum_x_pos", "sum_xy_pos", "sum_x", "sum_xy")
#: No attribute of a pattern file is anywhere near this (the fingerprint of a model with
#: thousands of layers is a few hundred kB); a larger one is refused before it is read.
_MAX_ATTR_BYTES = 64 * 2**20


class PatternFileError(ValueError):
    """A pattern file that cannot be read: missing, truncated, corrupt, or of another format."""


class _OtherModel(ValueError):
    """The file is intact but was fitted on another model (``mismatch`` says how)."""

    def __init__(self, path: str, mismatch: str) -> None:
        super().__init__(f"The pattern file '{path}' was fitted on another model: {mismatch}.")
        self.mismatch = mismatch


class PatternFileWarning(UserWarning):
    """A pattern file that loads but cannot be verified (format version 1: no checksum)."""


def _h5py():
    import h5py

    return h5py


# ----------------------------------------------------------------------------------------------
# Writing


def save(path: str, patterns: Any, statistics: Any = None) -> None:
    """Write patterns (and optionally statistics) atomically: built in memory, written to a
    temporary file next to the target, flushed to disk, then renamed over the target.

    HDF5 builds the file in memory and plain Python I/O writes its bytes, so a full disk (or a
    file size limit) is an ``OSError`` from the write that leaves HDF5 untouched: the process
    goes on, the old file is intact, and a later save works. The price is one file's size of
    memory for the duration of the save (stated in the README, "The pattern file").

    The temporary file is named ``<name>.<host>-<pid>.<random>.tmp``, ``<host>`` a tag of this
    host and PID namespace (:func:`_host_tag`). One left behind by a writer that was killed is
    removed by the next successful save of the same target when it is provably dead: its tag
    is this process's and its PID is not running, or it is older than
    :data:`LEFTOVER_AGE_S` (see :func:`_remove_leftovers`). A symbolic link is followed (its
    target is replaced, the link kept), and an existing file keeps its permissions.

    Parameters
    ----------
    path : str
        Destination ``.h5`` file; parent folders are created.
    patterns : Patterns
    statistics : PatternStatistics, optional

    Raises
    ------
    ValueError
        If the patterns carry no model fingerprint (they were built by hand and never set on an
        analyzer): a file must say which model it belongs to.
    OSError
        If the file cannot be written (no space, no permission); the target is unchanged.
    """
    path = os.fspath(path)
    if not patterns.fingerprint:
        raise ValueError(
            "These patterns carry no model fingerprint, so a file of them could "
            "not be checked against a model: set them on an analyzer "
            "(`analyzer.set_patterns(patterns)`) and save the analyzer's."
        )
    _check_fingerprint(patterns.fingerprint, path)
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    image = _file_image(patterns, statistics)
    try:
        _replace_with(target, image)
    finally:
        image.close()
    _remove_leftovers(folder, name)


def _file_image(patterns: Any, statistics: Any) -> _io.BytesIO:
    """The whole HDF5 file, built in memory (see :func:`save` for why)."""
    h5py = _h5py()
    image = _io.BytesIO()
    with h5py.File(image, "w") as f:
        _write_content(f, patterns, statistics)
    return image


def _write_content(f, patterns: Any, statistics: Any) -> None:
    """Every attribute, group and dataset of the format (module docstring), checksums last."""
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
            g.create_dataset("a_negative", data=np.asarray(patterns.negative(key), np.float32))
    if statistics is not None:
        f.attrs["n_batches"] = int(statistics.n_batches)
        f.attrs[FIT_IDS_ATTR] = json.dumps(sorted(statistics.fit_ids))
        sgroup = f.create_group("statistics")
        for key, layer in statistics.layers.items():
            g = sgroup.create_group(key)
            g.attrs["key"] = key
            g.attrs["pattern_type"] = layer.pattern_type
            g.attrs["rectified"] = bool(layer.rectified)
            g.attrs["shift_x"] = float(layer.shift_x)
            g.attrs["out_axes"] = np.asarray(layer.out_axes, np.int64)
            g.create_dataset("kernel", data=np.asarray(layer.kernel, np.float32))
            g.create_dataset("shift_y", data=np.asarray(layer.shift_y, np.float64))
            for stat_name, value in layer.sums.items():
                g.create_dataset(stat_name, data=np.asarray(value, np.float64))
    # Computed from what the file now holds, read back: the reader repeats exactly this.
    f.attrs[METADATA_CHECKSUM_ATTR] = _digest(f, values=False)
    f.attrs[CHECKSUM_ATTR] = _digest(f)


def _replace_with(target: str, image: _io.BytesIO) -> None:
    """Write ``image`` to a temporary file beside ``target``, on disk before the rename (a host
    may go down), then rename it over ``target``; on any failure the temporary file is
    removed and ``target`` is untouched."""
    folder, name = os.path.split(target)
    mode = stat.S_IMODE(os.stat(target).st_mode) if os.path.exists(target) else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(
        prefix=f"{name}.{_host_tag()}-{os.getpid()}.", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(fd, "wb") as handle, image.getbuffer() as view:
            handle.write(view)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: A temporary file of a save not modified for this long is dead, whoever wrote it: a live
#: save writes its file in one go (seconds, minutes for gigabytes on a slow network folder).
LEFTOVER_AGE_S = 24 * 3600


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    """12 hex digits naming this host and PID namespace: the host name, the kernel's boot id
    and the PID namespace, hashed. Two writers with the same tag see each other's PIDs."""
    parts = [socket.gethostname()]
    for read in (
        lambda: open("/proc/sys/kernel/random/boot_id").read().strip(),
        lambda: os.readlink("/proc/self/ns/pid"),
    ):
        try:
            parts.append(read())
        except OSError:  # no /proc (not Linux): the host name alone
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _remove_leftovers(folder: str, name: str) -> None:
    """Remove the temporary files of ``name`` whose writer is provably dead.

    A file is removed when its tag is this host's and PID namespace's and its PID is not
    running (not this process: a save of another thread), or when it has not been modified for
    :data:`LEFTOVER_AGE_S`. A file of another host or container sharing the folder is left
    alone until then: its PID means nothing here. Files of another target are never touched.
    """
    pattern = re.compile(re.escape(name) + r"\.(?:([0-9a-f]{12})-)?(\d+)\.[A-Za-z0-9_]+\.tmp\Z")
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry)
        if match is None:
            continue
        file = os.path.join(folder, entry)
        mine = match.group(1) == _host_tag()
        if (mine and not _alive(int(match.group(2)))) or _older_than(file, LEFTOVER_AGE_S):
            with contextlib.suppress(OSError):
                os.remove(file)


def _older_than(file: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(file).st_mtime > seconds
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a save of this process in another thread (ours is renamed already)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


# ----------------------------------------------------------------------------------------------
# The canonical checksum


def _canonical(value: Any) -> bytes:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        return b"str:" + str(len(data)).encode() + b":" + data
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise PatternFileError(
            f"a value of dtype {array.dtype} (only numbers and text belong in a pattern file)"
        )
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    return array.dtype.str.encode() + b":" + str(array.shape).encode() + b":" + array.tobytes()


def _digest(f, values: bool = True) -> str:
    """SHA-256 of every group, dataset and attribute of an open file (the checksums excepted).

    With ``values=False``, of everything but the datasets' values (their names, dtypes and
    shapes included): the metadata checksum, verified before any array is read.
    """
    h5py = _h5py()
    digest = hashlib.sha256()
    objects = [("/", f)]
    f.visititems(lambda name, obj: objects.append(("/" + name, obj)))
    for name, obj in sorted(objects, key=lambda item: item[0]):
        kind = b"G" if isinstance(obj, h5py.Group) else b"D"
        digest.update(kind + name.encode() + b"\0")
        for attr in sorted(obj.attrs):
            if name == "/" and attr in _CHECKSUMS:
                continue
            if obj.attrs.get_id(attr).get_storage_size() > _MAX_ATTR_BYTES:
                raise PatternFileError(f"attribute '{attr}' of '{name}' is too large")
            part = _canonical(obj.attrs[attr])
            digest.update(b"A" + attr.encode() + b"\0" + str(len(part)).encode() + b"\0" + part)
        if kind == b"D":
            digest.update(b"T" + obj.dtype.str.encode() + str(tuple(obj.shape)).encode())
            if values:
                part = _canonical(obj[()])
                digest.update(b"V" + str(len(part)).encode() + b"\0" + part)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Reading


def _open(path: str):
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Pattern file '{path}' does not exist.")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise PatternFileError(
            f"'{path}' is not a readable HDF5 file (truncated or corrupt?): {err}"
        ) from None
    try:
        fmt = _attr(f, "format", path, required=False)
        if fmt != FORMAT:
            raise PatternFileError(
                f"'{path}' is an HDF5 file but not a pattern_keras pattern file."
            )
        version = _attr(f, "format_version", path)
        if not _is_int(version) or int(version) < 1:
            raise PatternFileError(
                f"Pattern file '{path}' is damaged: malformed attribute "
                f"'format_version' ({version!r})."
            )
        if int(version) > FORMAT_VERSION:
            raise PatternFileError(
                f"'{path}' has pattern format version {int(version)}; this pattern_keras "
                f"({__version__}) reads up to {FORMAT_VERSION}. Upgrade pattern_keras."
            )
    except BaseException:
        f.close()
        raise
    return f


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _attr(obj, name: str, path: str, required: bool = True) -> Any:
    """An attribute, its size checked before it is read."""
    if name not in obj.attrs:
        if not required:
            return None
        raise PatternFileError(
            f"Pattern file '{path}' is damaged: '{obj.name}' lacks the attribute '{name}'."
        )
    aid = obj.attrs.get_id(name)
    if aid.get_storage_size() > _MAX_ATTR_BYTES:
        raise PatternFileError(
            f"Pattern file '{path}' is damaged: attribute '{name}' of "
            f"'{obj.name}' is {aid.get_storage_size()} bytes."
        )
    return obj.attrs[name]


def _damaged(path: str, what: str) -> PatternFileError:
    return PatternFileError(f"Pattern file '{path}' is damaged: {what}.")


def _check_fingerprint(fingerprint: Any, path: str) -> dict[str, Any]:
    """The fingerprint, checked for the layout ``model_fingerprint`` writes."""
    what = "malformed fingerprint"
    if not isinstance(fingerprint, Mapping) or set(fingerprint) != {"layers", "weights_sha256"}:
        keys = sorted(fingerprint) if isinstance(fingerprint, Mapping) else type(fingerprint)
        raise _damaged(
            path, f"{what} (expected the entries 'layers' and 'weights_sha256', found {keys})"
        )
    digest = fingerprint["weights_sha256"]
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise _damaged(path, f"{what} ('weights_sha256' is not a SHA-256 hex digest)")
    layers = fingerprint["layers"]
    if not isinstance(layers, list) or not layers:
        raise _damaged(path, f"{what} ('layers' is not a non-empty list)")
    seen = set()
    for i, layer in enumerate(layers):
        ok = (
            isinstance(layer, list)
            and len(layer) == 3
            and isinstance(layer[0], str)
            and isinstance(layer[1], str)
            and isinstance(layer[2], list)
            and all(isinstance(s, list) and all(_is_int(d) and d >= 0 for d in s) for s in layer[2])
        )
        if not ok:
            raise _damaged(path, f"{what} (layer entry {i} is not [key, class, [shapes]])")
        if layer[0] in seen:
            raise _damaged(path, f"{what} (layer '{layer[0]}' is listed twice)")
        seen.add(layer[0])
    return dict(fingerprint)


def _fingerprint_shapes(fingerprint: Mapping[str, Any]) -> dict[str, list[tuple[int, ...]]]:
    return {layer[0]: [tuple(s) for s in layer[2]] for layer in fingerprint["layers"]}


def _candidate_shapes(key: str, shapes: Mapping[str, list]) -> list[tuple[int, ...]] | None:
    """Kernel shapes a pattern key may have according to the fingerprint (None: unknown key)."""
    if key in shapes:
        return shapes[key]
    base, _, part = key.rpartition("/")
    if base in shapes and part in ("depthwise_kernel", "pointwise_kernel"):
        return shapes[base]
    return None


def _walk(group, path: str, prefix: str = ""):
    """Every (relative name, object) below ``group``; links other than hard links, external
    storage and virtual datasets are refused before anything is read through them."""
    h5py = _h5py()
    items = []
    for name in group:
        full = f"{prefix}{name}"
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise _damaged(
                path,
                f"'{group.name.rstrip('/')}/{name}' is {kind} (a pattern file "
                "holds no links; not followed)",
            )
        obj = group[name]
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                raise _damaged(path, f"'{obj.name}' is a virtual dataset (not followed)")
            if obj.external:
                raise _damaged(
                    path, f"'{obj.name}' keeps its data in external files (not followed)"
                )
            items.append((full, obj))
        elif isinstance(obj, h5py.Group):
            items.append((full, obj))
            items.extend(_walk(obj, path, full + "/"))
        else:
            raise _damaged(path, f"'{obj.name}' is a {type(obj).__name__}, not a group or dataset")
    return items


def _leaves(section, path: str) -> dict[str, Any]:
    """The leaf groups of a section, by key; each must sit at the path its key names."""
    h5py = _h5py()
    leaves: dict[str, Any] = {}
    items = _walk(section, path)
    below_leaf = set()
    for name, obj in items:
        if any(name.startswith(leaf + "/") for leaf in below_leaf):
            continue  # inside a leaf: its members are checked with the leaf
        if isinstance(obj, h5py.Dataset):
            raise _damaged(path, f"extra entry '{obj.name}' (a dataset outside any layer group)")
        if "key" in obj.attrs:
            key = _attr(obj, "key", path)
            if not isinstance(key, str) or key != name:
                raise _damaged(
                    path,
                    f"the group '{obj.name}' claims the layer key {key!r} "
                    "(a duplicated or misplaced entry)",
                )
            leaves[key] = obj
            below_leaf.add(name)
        else:
            if len(obj.attrs):
                raise _damaged(
                    path, f"'{obj.name}' has attributes {sorted(obj.attrs)} but no layer key"
                )
            if not any(isinstance(child, h5py.Group) for child in obj.values()) or any(
                isinstance(child, h5py.Dataset) for child in obj.values()
            ):
                raise _damaged(
                    path,
                    f"'{obj.name}' is neither a layer group (no 'key' "
                    "attribute) nor a folder of them",
                )
    return leaves


def _exact_members(group, allowed: set[str], required: set[str], path: str, kind: str) -> None:
    names = set(group.attrs.keys()) if kind == "attribute" else set(group.keys())
    missing = sorted(required - names)
    extra = sorted(names - allowed)
    if missing:
        raise _damaged(path, f"missing entry: '{group.name}' lacks the {kind} '{missing[0]}'")
    if extra:
        raise _damaged(path, f"extra entry: '{group.name}' has an unexpected {kind} '{extra[0]}'")


def _check_dataset(obj, shape: tuple[int, ...], path: str, what: str) -> None:
    """Declared shape and dtype, before reading."""
    if obj.dtype.kind != "f" or obj.dtype.itemsize > 8:
        raise _damaged(path, f"'{obj.name}' has dtype {obj.dtype}; {what} must be float")
    if tuple(obj.shape) != tuple(shape):
        raise _damaged(
            path,
            f"'{obj.name}' has shape {tuple(obj.shape)}; {what} must have shape {tuple(shape)}",
        )


class _KernelShapes:
    """The kernel shapes a file's layer groups may declare: the model's (``expected``), or,
    without a model, those of the file's own fingerprint."""

    def __init__(
        self,
        path: str,
        expected: Mapping[str, tuple[int, ...]] | None,
        own_fingerprint: Mapping[str, Any],
    ) -> None:
        self.path = path
        self.expected = expected
        self.fingerprint_shapes = _fingerprint_shapes(own_fingerprint)

    def candidates(self, key: str, obj) -> list[tuple[int, ...]]:
        """The shapes layer ``key`` (the group ``obj``) may have; an unknown key is refused."""
        if self.expected is not None:
            if key not in self.expected:
                raise _damaged(
                    self.path,
                    f"extra entry '{obj.name}': the model has no pattern "
                    f"layer '{key}' (its layers: {sorted(self.expected)})",
                )
            return [tuple(self.expected[key])]
        candidates = _candidate_shapes(key, self.fingerprint_shapes)
        if candidates is None:
            raise _damaged(
                self.path, f"extra entry '{obj.name}': the fingerprint lists no layer '{key}'"
            )
        return candidates

    def check(self, obj, key: str, group, what: str) -> tuple[int, ...]:
        """The declared shape of the kernel-shaped dataset ``obj``, checked (and its dtype)."""
        candidates = self.candidates(key, group)
        if not candidates:
            raise _damaged(
                self.path, f"extra entry '{obj.name}': the fingerprint's layer has no weights"
            )
        if tuple(obj.shape) not in candidates:
            _check_dataset(obj, candidates[0], self.path, what)
        _check_dataset(obj, tuple(obj.shape), self.path, what)
        return tuple(obj.shape)


def _check_root(f, path: str) -> tuple[int, bool]:
    """The root's attributes and entries: exactly those of the format version. Returns the
    version and whether the file holds statistics."""
    version = int(_attr(f, "format_version", path))
    root_attrs = set(_ROOT_REQUIRED) | (set(_CHECKSUMS) if version >= 2 else set())
    has_stats = "statistics" in f
    with_stats = {"n_batches"} | ({FIT_IDS_ATTR} if version >= 3 else set())
    _exact_members(
        f,
        root_attrs | with_stats,
        root_attrs | (with_stats if has_stats and version >= 2 else set()),
        path,
        "attribute",
    )
    if FIT_IDS_ATTR in f.attrs and not has_stats:
        raise _damaged(path, f"extra entry: the attribute '{FIT_IDS_ATTR}' without statistics")
    _exact_members(f, {"patterns", "statistics"}, {"patterns"}, path, "entry")
    return version, has_stats


def _check_metadata_checksum(f, path: str, version: int) -> None:
    """Names, attributes, shapes and dtypes against the metadata checksum (version 2)."""
    if version >= 2 and _attr(f, METADATA_CHECKSUM_ATTR, path) != _digest(f, values=False):
        raise PatternFileError(
            f"Pattern file '{path}' is corrupt: its checksum does not match its content "
            "(a changed or damaged attribute, entry name, shape or dtype)."
        )


def _read_fingerprint(f, path: str, fingerprint: Mapping[str, Any] | None) -> dict[str, Any]:
    """The file's fingerprint, checked, and compared with the model's when given."""
    try:
        own = json.loads(str(_attr(f, "fingerprint", path)))
    except json.JSONDecodeError as err:
        raise _damaged(path, f"malformed fingerprint (not JSON: {err})") from None
    own = _check_fingerprint(own, path)
    if fingerprint is not None:
        from pattern_keras.patterns.fingerprint import first_mismatch

        mismatch = first_mismatch(fingerprint, own)
        if mismatch:
            raise _OtherModel(path, mismatch)
    return own


def _read_counts(f, path: str) -> tuple[int, int]:
    """``n_samples`` and ``n_batches`` (0 where absent), checked."""
    n_samples = _attr(f, "n_samples", path)
    if not _is_int(n_samples) or n_samples < 0:
        raise _damaged(path, f"malformed attribute 'n_samples' ({n_samples!r})")
    n_batches = _attr(f, "n_batches", path, required=False)
    if n_batches is not None and (not _is_int(n_batches) or n_batches < 0):
        raise _damaged(path, f"malformed attribute 'n_batches' ({n_batches!r})")
    return int(n_samples), int(n_batches or 0)


def _read_fit_ids(f, path: str) -> list[str] | None:
    """The identities of the fits the statistics hold (version 3), checked; ``None`` where the
    file has none (an older version: :func:`_read_file` derives one from the content)."""
    from pattern_keras.patterns.statistics import is_fit_id

    if FIT_IDS_ATTR not in f.attrs:
        return None
    text = _attr(f, FIT_IDS_ATTR, path)
    try:
        ids = json.loads(str(text))
    except json.JSONDecodeError as err:
        raise _damaged(path, f"malformed attribute '{FIT_IDS_ATTR}' (not JSON: {err})") from None
    if (
        not isinstance(ids, list)
        or not ids
        or not all(is_fit_id(i) for i in ids)
        or len(set(ids)) != len(ids)
    ):
        raise _damaged(
            path,
            f"malformed attribute '{FIT_IDS_ATTR}' (not a list of distinct fit identities: "
            f"{str(text)[:200]!r})",
        )
    return ids


def _check_patterns_layout(
    f, path: str, shapes: _KernelShapes
) -> tuple[dict[str, Any], dict[str, str]]:
    """The layer groups of ``/patterns``: members, pattern types and declared shapes. Returns
    the groups and the pattern types, by layer key."""
    from pattern_keras.patterns.statistics import ESTIMATORS

    pattern_leaves = _leaves(f["patterns"], path)
    if shapes.expected is not None:
        missing = sorted(set(shapes.expected) - set(pattern_leaves))
        if missing:
            raise _damaged(path, f"missing entry: no pattern for layer '{missing[0]}'")
    if not pattern_leaves:
        raise _damaged(path, "missing entry: '/patterns' holds no layer")
    kinds = {}
    for key, g in pattern_leaves.items():
        _exact_members(g, set(_PATTERN_ATTRS), set(_PATTERN_ATTRS), path, "attribute")
        _exact_members(g, {"a", "a_negative"}, {"a"}, path, "entry")
        kind = _attr(g, "pattern_type", path)
        if kind not in ESTIMATORS:  # the estimator table, as it is now
            raise _damaged(path, f"'{g.name}' has the unknown pattern type {kind!r}")
        kinds[key] = kind
        shape = shapes.check(g["a"], key, g, f"the pattern of layer '{key}'")
        if "a_negative" in g:
            if kind != "relu":
                raise _damaged(
                    path,
                    f"extra entry '{g.name}/a_negative': a {kind!r} pattern has one regime",
                )
            _check_dataset(
                g["a_negative"],
                shape,
                path,
                f"the negative pattern of layer '{key}' (like its 'a')",
            )
    return pattern_leaves, kinds


def _check_statistics_layout(
    f, path: str, shapes: _KernelShapes, pattern_leaves: Mapping[str, Any], kinds: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, tuple]]:
    """The layer groups of ``/statistics``: one per pattern layer, each checked by
    :func:`_check_layer_statistics`. Returns the groups and their attributes, by layer key."""
    stat_leaves = _leaves(f["statistics"], path)
    if set(stat_leaves) != set(pattern_leaves):
        odd = sorted(set(stat_leaves) ^ set(pattern_leaves))[0]
        where = "statistics" if odd not in stat_leaves else "patterns"
        raise _damaged(path, f"missing entry: no {where} for layer '{odd}'")
    stat_meta = {
        key: _check_layer_statistics(g, key, path, shapes, pattern_leaves[key], kinds[key])
        for key, g in stat_leaves.items()
    }
    return stat_leaves, stat_meta


def _check_layer_statistics(
    g, key: str, path: str, shapes: _KernelShapes, pattern_group, pattern_kind: str
) -> tuple[str, bool, float, tuple[int, ...]]:
    """One layer's statistics group: attributes, the sums its estimator needs (no more) with
    their declared shapes, and agreement with its pattern group. Returns
    ``(pattern_type, rectified, shift_x, out_axes)``."""
    from pattern_keras.patterns.statistics import needed_statistics

    _exact_members(g, set(_STAT_ATTRS), set(_STAT_ATTRS), path, "attribute")
    kind = _attr(g, "pattern_type", path)
    rectified = _attr(g, "rectified", path)
    shift_x = _attr(g, "shift_x", path)
    if kind != pattern_kind:
        raise _damaged(
            path,
            f"layer '{key}' has pattern type {pattern_kind!r} in "
            f"'/patterns' and {kind!r} in '/statistics'",
        )
    if not isinstance(rectified, (bool, np.bool_)):
        raise _damaged(path, f"malformed attribute 'rectified' of '{g.name}'")
    if not (isinstance(shift_x, (float, np.floating)) and np.isfinite(shift_x)):
        raise _damaged(path, f"malformed attribute 'shift_x' of '{g.name}' ({shift_x!r})")
    names = needed_statistics(kind, bool(rectified))
    _exact_members(g, {"kernel", "shift_y", *names}, {"kernel", "shift_y", *names}, path, "entry")
    shape = shapes.check(g["kernel"], key, g, f"the kernel of '{key}'")
    out_axes = _check_out_axes(g, path, len(shape))
    neurons = tuple(shape[a] for a in out_axes)
    _check_dataset(g["shift_y"], neurons, path, f"'shift_y' of '{key}'")
    for name in names:
        _check_dataset(
            g[name], neurons if name in _NEURON_STATS else shape, path, f"'{name}' of '{key}'"
        )
    negative_expected = kind == "relu" and not bool(rectified)
    if ("a_negative" in pattern_group) != negative_expected:
        raise _damaged(
            path,
            f"'{pattern_group.name}' "
            + (
                "lacks its 'a_negative'"
                if negative_expected
                else "has an 'a_negative' that a rectified layer does not keep"
            ),
        )
    return kind, bool(rectified), float(shift_x), out_axes


def _check_out_axes(g, path: str, rank: int) -> tuple[int, ...]:
    """The ``out_axes`` attribute: distinct axes of a kernel of ``rank``, at least one."""
    out_axes = np.asarray(_attr(g, "out_axes", path))
    if (
        out_axes.ndim != 1
        or out_axes.dtype.kind not in "iu"
        or not len(out_axes)
        or any(not -rank <= int(a) < rank for a in out_axes)
        or len({int(a) % rank for a in out_axes}) != len(out_axes)
    ):
        raise _damaged(
            path,
            f"malformed attribute 'out_axes' of '{g.name}' "
            f"({out_axes.tolist()} for a kernel of rank {rank})",
        )
    return tuple(int(a) for a in out_axes)


def _verify_checksum(f, path: str, version: int) -> str:
    """Every value against the checksum (version 2); a version-1 file warns that it has none.
    Returns the digest of the content."""
    actual = _digest(f)
    if version >= 2:
        if _attr(f, CHECKSUM_ATTR, path) != actual:
            raise PatternFileError(
                f"Pattern file '{path}' is corrupt: its checksum does not match its content "
                "(a changed or damaged dataset or attribute)."
            )
        return actual
    warnings.warn(
        f"Pattern file '{path}' has format version {version}, which carries "
        "no checksum: its content cannot be verified. Save it again to add "
        "one.",
        PatternFileWarning,
        stacklevel=5,
    )
    return actual


def _finite_array(obj, dtype, path: str) -> np.ndarray:
    """A dataset's values; NaN or infinite values are refused."""
    value = np.asarray(obj[()], dtype)
    if not np.all(np.isfinite(value)):
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        raise _damaged(path, f"'{obj.name}' holds {bad} NaN or infinite values")
    return value


def _read_statistics_arrays(
    stat_leaves: Mapping[str, Any], stat_meta: Mapping[str, tuple], path: str
) -> dict[str, dict[str, Any]]:
    """The statistics of every layer, as keyword arguments of ``LayerStatistics``."""
    stats = {}
    for key, g in stat_leaves.items():
        kind, rectified, shift_x, out_axes = stat_meta[key]
        stats[key] = dict(
            pattern_type=kind,
            rectified=rectified,
            shift_x=shift_x,
            out_axes=out_axes,
            kernel=_finite_array(g["kernel"], g["kernel"].dtype, path),
            shift_y=_finite_array(g["shift_y"], np.float64, path),
            sums={
                name: _finite_array(g[name], np.float64, path)
                for name in g
                if name not in ("kernel", "shift_y")
            },
        )
    return stats


def _read_file(
    path: str,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    want_statistics: bool = True,
) -> dict[str, Any]:
    """Everything in a pattern file, validated (see the module docstring): the layout entry by
    entry and the declared shapes first, then the arrays and the checksum.

    Parameters
    ----------
    expected : mapping of key to kernel shape, optional
        The model's pattern keys and kernel shapes: the file must have exactly these.
    fingerprint : mapping, optional
        The model's fingerprint: checked before any array is read (a ``ValueError`` naming the
        first difference).
    """
    path = os.fspath(path)
    with _open(path) as f:
        version, has_stats = _check_root(f, path)
        _walk(f, path)  # no links, external storage or virtual datasets, before reading more
        _check_metadata_checksum(f, path, version)
        own = _read_fingerprint(f, path, fingerprint)
        n_samples, n_batches = _read_counts(f, path)
        fit_ids = _read_fit_ids(f, path)
        shapes = _KernelShapes(path, expected, own)
        pattern_leaves, kinds = _check_patterns_layout(f, path, shapes)
        stat_leaves, stat_meta = (
            _check_statistics_layout(f, path, shapes, pattern_leaves, kinds)
            if has_stats
            else ({}, {})
        )
        digest = _verify_checksum(f, path, version)
        if has_stats and fit_ids is None:  # written before fits had identities
            from pattern_keras.patterns.statistics import derived_fit_id

            fit_ids = [derived_fit_id(digest)]
        content: dict[str, Any] = {
            "version": version,
            "fingerprint": own,
            "n_samples": n_samples,
            "n_batches": n_batches,
            "kinds": kinds,
            "positive": {},
            "negative": {},
            "statistics": None,
            "has_statistics": has_stats,
            "fit_ids": fit_ids,
        }
        for key, g in pattern_leaves.items():
            content["positive"][key] = _finite_array(g["a"], np.float32, path)
            if "a_negative" in g:
                content["negative"][key] = _finite_array(g["a_negative"], np.float32, path)
        if has_stats and want_statistics:
            content["statistics"] = _read_statistics_arrays(stat_leaves, stat_meta, path)
        return content


def _read(path: str, **kwargs) -> dict[str, Any]:
    try:
        return _read_file(path, **kwargs)
    except (PatternFileError, FileNotFoundError, _OtherModel):
        raise
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise PatternFileError(f"Pattern file '{path}' is damaged: {err}") from None


def load_patterns(
    path: str,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
):
    """Read the patterns of a pattern file.

    Parameters
    ----------
    path : str
    expected : mapping of layer key to kernel shape, optional
        The layers (and kernel shapes) of the model they are for; without it, shapes are
        checked against the weight shapes in the file's own fingerprint.
    fingerprint : mapping, optional
        The fingerprint of the model they are for, compared before any array is read.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    PatternFileError
        If it is truncated, corrupt (checksum), malformed, or not a pattern file; the message
        names the entry.
    ValueError
        If ``fingerprint`` is given and the file was fitted on another model.
    """
    from pattern_keras.patterns.patterns import Patterns

    content = _read(path, expected=expected, fingerprint=fingerprint, want_statistics=False)
    return Patterns(
        content["positive"],
        negative=content["negative"],
        pattern_types=content["kinds"],
        n_samples=content["n_samples"],
        fingerprint=content["fingerprint"],
    )


def load_statistics(
    path: str,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
):
    """Read the statistics of a pattern file, or ``None`` if it holds only patterns.

    Parameters and errors as :func:`load_patterns`.
    """
    from pattern_keras.patterns.statistics import LayerStatistics, PatternStatistics

    content = _read(path, expected=expected, fingerprint=fingerprint)
    if not content["has_statistics"]:
        return None
    layers = {key: LayerStatistics(**value) for key, value in content["statistics"].items()}
    return PatternStatistics(
        layers,
        n_samples=content["n_samples"],
        n_batches=content["n_batches"],
        fingerprint=content["fingerprint"],
        fit_ids=content["fit_ids"],
    )
