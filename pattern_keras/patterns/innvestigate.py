"""Pattern files of the reference implementation (iNNvestigate 1.x), read into :class:`Patterns`.

iNNvestigate 1.x keeps its patterns as a list with one array per layer that has a kernel, in the
order of the model's layers (``kgraph.get_model_layers``: ``model.layers``, nested models
flattened in place), each shaped like that layer's kernel. Its users save the list with
``np.savez(path, *patterns)``, which names the arrays ``arr_0 … arr_N``; the published
VGG16/VGG19 ImageNet patterns have the same layout. The file carries nothing else: no layer
names, no pattern type, no sample count. So the import matches arrays to layers by position and
checks every shape; the pattern type is the caller's to state.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from pattern_keras.patterns.io import PatternFileError

__all__ = ["INNVESTIGATE_PATTERN_TYPES", "from_innvestigate", "kernel_layers"]

#: The pattern types iNNvestigate 1.x computes that have an estimator here.
INNVESTIGATE_PATTERN_TYPES = ("relu", "linear")

_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
_ARRAY_NAME = re.compile(r"arr_(\d+)")


def kernel_layers(model: Any) -> list[tuple[str, Any]]:
    """The layers with a kernel, in iNNvestigate's order: ``(key, layer)`` pairs.

    The order is ``model.layers``, a nested model's layers taking its place (depth first), each
    layer once even if it is called several times. Keys are those of pattern_keras
    (``"outer/inner"`` inside a nested model). A layer "has a kernel" as iNNvestigate decides
    it: it has a ``kernel``, ``depthwise_kernel`` or ``pointwise_kernel`` attribute.
    """
    import keras

    found: list[tuple[str, Any]] = []

    def visit(container: Any, prefix: str) -> None:
        for layer in container.layers:
            if isinstance(layer, keras.Model):
                visit(layer, f"{prefix}{layer.name}/")
            elif any(_has_weight(layer, name) for name in _KERNEL_NAMES):
                found.append((f"{prefix}{layer.name}", layer))

    visit(model, "")
    return found


def _has_weight(layer: Any, name: str) -> bool:
    try:
        return getattr(layer, name, None) is not None
    except (ValueError, RuntimeError):  # a property of an unbuilt or exotic layer
        return False


def _read_arrays(path: str) -> list[np.ndarray]:
    """The arrays ``arr_0 … arr_N`` of an ``.npz`` file, plain numbers only, in index order.

    Raises
    ------
    FileNotFoundError
    PatternFileError
        For a file that is not an ``.npz`` archive, holds other names than ``arr_<i>``, misses
        an index, or holds an array that is not of a real floating-point type (pickled object
        arrays are never unpickled).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"iNNvestigate pattern file '{path}' does not exist.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise PatternFileError(
            f"'{path}' is not a readable .npz file (iNNvestigate patterns are written with "
            f"np.savez(path, *patterns)): {err}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise PatternFileError(
            f"'{path}' holds a single array of shape {np.shape(archive)} (a .npy file); "
            "iNNvestigate patterns are an .npz of one array per layer, "
            "np.savez(path, *patterns)."
        )
    with archive:
        names = list(archive.files)
        indices = {}
        for name in names:
            match = _ARRAY_NAME.fullmatch(name)
            if match is None:
                raise PatternFileError(
                    f"'{path}' holds an array named '{name}'; an iNNvestigate pattern file "
                    "holds only arr_0, arr_1, ... (np.savez(path, *patterns)). Its arrays: "
                    f"{', '.join(names)}."
                )
            indices[int(match.group(1))] = name
        if not indices:
            raise PatternFileError(f"'{path}' holds no arrays.")
        missing = sorted(set(range(len(indices))) - set(indices))
        if missing:
            raise PatternFileError(
                f"'{path}' has no array arr_{missing[0]}, but has arrays up to "
                f"arr_{max(indices)}: the file is incomplete."
            )
        arrays = []
        for i in range(len(indices)):
            name = indices[i]
            try:
                array = archive[name]
            except ValueError as err:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise PatternFileError(
                    f"Array {name} of '{path}' is a pickled object array ({err}); it is not "
                    "unpickled. Patterns must be plain numeric arrays: save them with "
                    "np.savez(path, *patterns), one float array per layer (a list of arrays "
                    "given as one argument becomes an object array)."
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile) as err:
                raise PatternFileError(f"Array {name} of '{path}' is damaged: {err}") from None
            if not np.issubdtype(array.dtype, np.floating):
                raise PatternFileError(
                    f"Array {name} of '{path}' has dtype {array.dtype}; patterns are "
                    "floating-point arrays."
                )
            arrays.append(array)
    return arrays


def from_innvestigate(path: str, model: Any, pattern_type: str = "relu"):
    """Read an iNNvestigate 1.x pattern file (``.npz`` of ``arr_0 … arr_N``) for ``model``.

    See :meth:`pattern_keras.Patterns.from_innvestigate` for the full description.
    """
    from pattern_keras.patterns.computer import PatternComputer

    if pattern_type not in INNVESTIGATE_PATTERN_TYPES:
        raise ValueError(
            f"pattern_type must be one of {INNVESTIGATE_PATTERN_TYPES} (the estimators of "
            f"iNNvestigate's files that exist here); got {pattern_type!r}."
        )
    path = os.fspath(path)
    arrays = _read_arrays(path)
    # The computer names the layers that get patterns (refusing unsupported layers) and knows
    # which keep both regimes; building it checks the model before the file is matched to it.
    plans = PatternComputer(model, pattern_type=pattern_type).plans
    expected = _expected_arrays(model, plans)
    _check_array_shapes(path, model, expected, arrays)
    return _to_patterns(path, model, plans, expected, arrays, pattern_type)


def _expected_arrays(model: Any, plans: Mapping[str, Any]) -> list[tuple[str, tuple, str, Any]]:
    """What the file must hold, in its order: per layer with a kernel ``(key, kernel shape,
    kernel dtype, pattern key or None)`` (None: a kernel that gets no pattern here)."""
    expected = []
    for key, layer in kernel_layers(model):
        if f"{key}/depthwise_kernel" in plans:
            raise ValueError(
                f"Layer '{key}' is a separable convolution: it has two kernels here "
                "(depthwise and pointwise) but an iNNvestigate file holds one pattern per "
                "layer. Fit its patterns with pattern_keras instead."
            )
        kernel = next(getattr(layer, n) for n in _KERNEL_NAMES if _has_weight(layer, n))
        expected.append(
            (
                key,
                tuple(int(d) for d in kernel.shape),
                str(kernel.dtype),
                key if key in plans else None,
            )
        )
    unmatched = [k for k in plans if k not in {e[3] for e in expected}]
    if unmatched:  # a pattern key that no layer of model.layers provides: cannot be positioned
        raise ValueError(f"Cannot place layer '{unmatched[0]}' in iNNvestigate's layer order.")
    return expected


def _check_array_shapes(
    path: str, model: Any, expected: list[tuple], arrays: list[np.ndarray]
) -> None:
    """One array per layer with a kernel, each shaped like that kernel; the message names the
    first array that differs."""
    first_bad = next(
        ((i, e) for i, (e, a) in enumerate(zip(expected, arrays)) if tuple(a.shape) != e[1]), None
    )
    if len(arrays) != len(expected):
        if first_bad is not None:
            i, (key, shape, _, _) = first_bad
            where = (
                f"the first that differs is arr_{i} for layer '{key}': expected shape "
                f"{shape}, found {tuple(arrays[i].shape)}"
            )
        elif len(arrays) < len(expected):
            key, shape, _, _ = expected[len(arrays)]
            where = f"the first layer without an array is '{key}' (kernel shape {shape})"
        else:
            where = (
                f"arrays from arr_{len(expected)} on (shape "
                f"{tuple(arrays[len(expected)].shape)}) match no layer"
            )
        raise ValueError(
            f"'{path}' holds {len(arrays)} arrays but model '{model.name}' has "
            f"{len(expected)} layers with a kernel ({', '.join(e[0] for e in expected)}); "
            f"{where}."
        )
    if first_bad is not None:
        i, (key, shape, _, _) = first_bad
        raise ValueError(
            f"Array arr_{i} of '{path}' has shape {tuple(arrays[i].shape)}, but layer "
            f"'{key}' (layer {i} with a kernel) has a kernel of shape {shape}: the file was "
            "written for another model (or another input size)."
        )


def _to_patterns(
    path: str,
    model: Any,
    plans: Mapping[str, Any],
    expected: list[tuple],
    arrays: list[np.ndarray],
    pattern_type: str,
):
    """The arrays as :class:`Patterns` in the kernels' dtypes; values must be finite there."""
    from pattern_keras.patterns.fingerprint import model_fingerprint
    from pattern_keras.patterns.patterns import Patterns

    positive, negative = {}, {}
    for i, ((key, _, dtype, plan_key), array) in enumerate(zip(expected, arrays)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"Array arr_{i} of '{path}' (layer '{key}') holds NaN or inf values.")
        value = array.astype(dtype)
        if not np.all(np.isfinite(value)):
            raise ValueError(
                f"Array arr_{i} of '{path}' (layer '{key}') overflows the kernel's dtype {dtype}."
            )
        if plan_key is None:  # a kernel off the path from input to output: no pattern needed
            continue
        positive[plan_key] = value
        plan = plans[plan_key]
        if plan.pattern_type == "relu" and not plan.rectified:
            # iNNvestigate computes one pattern (a₊) and uses it for both signs of the neuron.
            negative[plan_key] = value
    return Patterns(
        {k: positive[k] for k in plans},
        negative={k: negative[k] for k in plans if k in negative},
        pattern_types={k: pattern_type for k in plans},
        n_samples=0,
        fingerprint=model_fingerprint(model),
    )
