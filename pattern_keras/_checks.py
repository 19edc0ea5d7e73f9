"""The one place where arguments and data are checked (analyze, fit, evaluation, command line).

Every public entry point that takes user data or a counted option goes through these functions,
so a wrong input gets the same plain message wherever it is passed, at the first moment it can
be known. Add a new kind of check here, as a function that returns the checked value (or raises
``ValueError`` with what was expected and what came), and call it from the entry points.

TensorFlow is imported inside the functions that need it: the command line checks its options
before it imports TensorFlow.

``specs`` below is a model's input specification as :attr:`pattern_keras.engine.Program.
input_specs` gives it: one ``(shape, dtype)`` per model input, the batch axis ``None``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "positive_int",
    "model_inputs",
    "batch_shape",
    "neuron_selection",
    "is_region",
    "selection_mask",
    "token_ids",
    "finite_values",
    "keras_x",
    "dense",
    "finite_dataset",
    "dataset_dtypes",
    "finite_weights",
    "NEURON_SELECTION_MODES",
]

NEURON_SELECTION_MODES = ("max_activation", "index", "all")

Spec = tuple[tuple[Any, ...], Any]


# --- counted options ------------------------------------------------------------------------


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` if it is an integer ``>= 1`` (not a bool), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; received {value!r}.")
    return int(value)


# --- data -----------------------------------------------------------------------------------


def _expected(shape: Sequence[Any], batch: str = "batch") -> str:
    return f"({batch}, {', '.join(str(d) for d in shape[1:])})"


def model_inputs(
    x: Any,
    specs: Sequence[Spec],
    name: str = "input",
    as_numpy: bool = False,
    allow_empty: bool = False,
    offset: int = 0,
) -> list[Any]:
    """Check ``x`` against the model's inputs and return one array per input.

    Parameters
    ----------
    x : array, tensor, or list of them
        The samples with a batch axis; a list with one array per input for a model with several
        inputs (a single-input model also takes a one-element list).
    specs : list of (shape, dtype)
        The model's inputs (``Program.input_specs``).
    name : str
        What ``x`` is called in messages (``"input"``, ``"data"``, ``"x_train"``, ...).
    as_numpy : bool
        Return numpy arrays (default: tensors), cast to the inputs' dtypes either way.
    allow_empty : bool
        Accept a batch of 0 samples (one batch of a dataset, which may end with an empty one).
    offset : int
        Index of the first sample in the whole stream (for data that comes in batches).

    Raises
    ------
    ValueError
        For the wrong number of arrays, a non-numeric or complex array, the wrong rank or shape
        (naming the axis), an empty batch (unless ``allow_empty``), inputs with different
        numbers of samples, or finite values too large for the model's dtype (1e39 for float32:
        the cast would make them infinite).
    """
    import tensorflow as tf

    multi = len(specs) > 1
    if multi:
        if not isinstance(x, (list, tuple)) or len(x) != len(specs):
            got = (
                f"a {type(x).__name__}" if not isinstance(x, (list, tuple)) else f"{len(x)} arrays"
            )
            raise ValueError(
                f"The model has {len(specs)} inputs: pass a list of {len(specs)} "
                f"arrays as {name}, got {got}."
            )
        xs = list(x)
    else:
        if (
            isinstance(x, (list, tuple))
            and len(x) == 1
            and not np.isscalar(x[0])
            and np.ndim(x[0]) == len(specs[0][0])
        ):
            x = x[0]
        xs = [x]
    out = []
    n = None
    for i, (xi, (shape, dtype)) in enumerate(zip(xs, specs)):
        what = f"{name}[{i}]" if multi else name
        xi, xi_shape = _shaped_array(xi, shape, what)
        if xi_shape[0] == 0 and not allow_empty:
            raise ValueError(f"The {what} is an empty batch (shape {xi_shape}).")
        if n is not None and xi_shape[0] != n:
            raise ValueError(
                f"All inputs must have the same number of samples; got {n} and {xi_shape[0]}."
            )
        n = xi_shape[0]
        target = np.dtype(tf.as_dtype(dtype).as_numpy_dtype)
        _integer_values(xi, dtype, what)
        if as_numpy:
            a = xi.numpy() if tf.is_tensor(xi) else xi
            _check_range(a, target, what, offset)
            out.append(a.astype(target, copy=False))
        else:
            _check_range(xi, target, what, offset)
            out.append(tf.cast(tf.convert_to_tensor(xi), dtype))
    return out


def _shaped_array(x: Any, shape: Sequence[Any], what: str) -> tuple[Any, tuple[Any, ...]]:
    """``x`` as a tensor or array of a numeric, real dtype and of ``shape`` (batch axis free),
    and its shape; else ``ValueError`` naming the axis that differs."""
    import tensorflow as tf

    if tf.is_tensor(x):
        dtype, x_shape = np.dtype(x.dtype.as_numpy_dtype), tuple(x.shape)
    else:
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as err:
            raise ValueError(f"The {what} could not be read as an array: {err}") from None
        dtype, x_shape = x.dtype, x.shape
    _check_dtype(dtype, what)
    if len(x_shape) != len(shape):
        raise ValueError(
            f"The {what} has rank {len(x_shape)} (shape {x_shape}); the model "
            f"expects rank {len(shape)}: {_expected(shape)}."
        )
    for axis, (got, want) in enumerate(zip(x_shape[1:], shape[1:]), start=1):
        if want is not None and got != want:
            raise ValueError(
                f"The {what} has shape {x_shape}; the model expects "
                f"{_expected(shape)}: axis {axis} is {got}, expected {want}."
            )
    return x, x_shape


def _check_dtype(dtype: Any, what: str) -> None:
    """Refuse what the model cannot take: text, objects, and complex numbers (a cast to the
    model's real dtype would keep the real part and silently drop the imaginary one)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(
            f"The {what} is complex (dtype {dtype}); the model takes real values, and a cast "
            "would silently drop the imaginary part. Pass the part you mean: `x.real`, "
            "`np.abs(x)`, or both as channels."
        )
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise ValueError(f"The {what} must be numeric; got an array of dtype {dtype}.")


def _check_range(a: Any, target: np.dtype, what: str, offset: int = 0) -> None:
    """Refuse finite values that the model's floating dtype cannot hold (1e39 in float64 for
    a float32 model): the cast would turn them into infinities."""
    import tensorflow as tf

    dtype = np.dtype(a.dtype.as_numpy_dtype) if tf.is_tensor(a) else np.asarray(a).dtype
    if not np.issubdtype(target, np.floating) or dtype == target or dtype == np.bool_:
        return
    limit = float(np.finfo(target).max)
    info = np.finfo(dtype) if np.issubdtype(dtype, np.floating) else np.iinfo(dtype)
    if max(abs(float(info.min)), float(info.max)) <= limit:
        return  # every value of the source dtype fits
    # The common case, all in range, in reductions that copy nothing (a NaN or an infinity
    # fails them, and is looked at below).
    if tf.is_tensor(a):
        if bool(tf.reduce_all(tf.abs(a) <= limit)):
            return
        a = a.numpy()
    a = np.asarray(a)
    if a.size == 0:
        return
    with np.errstate(invalid="ignore"):
        if np.min(a) >= -limit and np.max(a) <= limit:
            return
    first, count, value = None, 0, None
    for row, sample in enumerate(a):  # only where something is out of range: a copy per row
        magnitude = np.abs(np.asarray(sample, np.float64))
        too_large = np.isfinite(magnitude) & (magnitude > limit)
        if too_large.any():
            count += int(too_large.sum())
            if first is None:
                first, value = row, np.asarray(sample)[too_large][0]
    if first is None:
        return  # only NaN or infinite values: finite_values names them
    raise ValueError(
        f"The {what} holds {count} finite value{'s' if count > 1 else ''} too large for "
        f"{target}, the model's input dtype (largest {limit:.4g}): {float(value):.4g} in "
        f"sample {offset + first} (counting from 0) would overflow to infinity. Rescale the data, or "
        "give the model a wider input dtype."
    )


def _integer_values(x: Any, dtype: Any, what: str) -> None:
    """Refuse values an integer input would change when cast to its dtype: fractions (a float
    image given to a ``uint8`` model) and values out of the dtype's range (they would wrap)."""
    import tensorflow as tf

    target = tf.as_dtype(dtype)
    if not target.is_integer:
        return
    a = x.numpy() if tf.is_tensor(x) else np.asarray(x)
    if a.size == 0 or np.issubdtype(a.dtype, np.bool_):
        return
    low, high = a.min(), a.max()
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise ValueError(
            f"The {what} holds non-integer values (a {a.dtype} array), but the model's input "
            f"is {target.name}: they would be truncated. Pass the values the model takes "
            f"(integers; for a {target.name} image, 0 to {target.max})."
        )
    if low < target.min or high > target.max:
        bad = low if low < target.min else high
        raise ValueError(
            f"The {what} holds the value {bad}, out of the range of the model's input dtype "
            f"{target.name} ({target.min} to {target.max}): it would wrap around."
        )


def token_ids(x: Any, vocabulary: int, index: int, offset: int = 0) -> None:
    """Refuse ids outside ``[0, vocabulary)`` for an input looked up in an embedding table
    (TensorFlow would raise deep inside on a CPU and return zero vectors on a GPU); ``offset``:
    the index of the batch's first sample in the whole stream."""
    import tensorflow as tf

    a = x.numpy() if tf.is_tensor(x) else np.asarray(x)
    if a.size == 0:
        return
    bad = (a < 0) | (a >= vocabulary)
    if bad.any():
        sample = offset + int(np.flatnonzero(bad.reshape(len(a), -1).any(axis=1))[0])
        raise ValueError(
            f"Input {index} holds the token id {int(a[bad].flat[0])} (sample {sample}, counting "
            f"from 0); its embedding table has {vocabulary} rows: ids must be in "
            f"[0, {vocabulary})."
        )


def batch_shape(shape: Sequence[Any], spec: Spec, name: str = "Batches") -> None:
    """Check a batch's (possibly partly unknown) shape inside a data pipeline against ``spec``."""
    shape, want = tuple(shape), spec[0]
    if len(shape) != len(want) or any(
        w is not None and s is not None and s != w for s, w in zip(shape[1:], want[1:])
    ):
        raise ValueError(
            f"{name} have shape {shape}; the model expects {_expected(want)}. "
            "Is the dataset batched?"
        )


def finite_values(arrays: Sequence[Any], name: str = "input", offset: int = 0) -> None:
    """Refuse NaN and infinite values: a ``ValueError`` with their number and the first sample.

    Parameters
    ----------
    arrays : list of arrays or tensors
        One per model input, the batch axis first.
    name : str
        What the arrays are called in the message.
    offset : int
        Index of the first sample in the whole stream (for data that comes in batches).
    """
    import tensorflow as tf

    bad_rows = None
    count = 0
    for a in arrays:
        if tf.is_tensor(a):
            if not a.dtype.is_floating or bool(tf.reduce_all(tf.math.is_finite(a))):
                continue
            a = a.numpy()
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        finite = np.isfinite(a)
        if finite.all():
            continue
        count += int(finite.size - np.count_nonzero(finite))
        rows = ~finite.reshape(len(a), -1).all(axis=1)
        bad_rows = rows if bad_rows is None else bad_rows | rows
    if count:
        first = offset + int(np.flatnonzero(bad_rows)[0])
        raise ValueError(
            f"The {name} holds {count} NaN or infinite value"
            f"{'s' if count > 1 else ''} (the first in sample {first}, counting "
            "from 0): an explanation of such an input would be meaningless. Clean "
            "or drop those samples."
        )


def finite_dataset(dataset: Any, remedy: str) -> None:
    """Refuse a ``tf.data.Dataset`` that repeats for ever (its cardinality is infinite): a pass
    over it would never end. ``remedy`` says what to do instead (``steps``, ``.take(n)``)."""
    import tensorflow as tf

    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            f"The dataset is endless (its cardinality is infinite: `.repeat()` without a "
            f"count?), so the pass over it would never end; {remedy}."
        )


def dataset_dtypes(element_spec: Any, name: str = "dataset's element") -> None:
    """Refuse a dataset whose ``x`` is complex, text or another non-numeric type (see
    :func:`model_inputs`), before the first batch is read."""
    import tensorflow as tf

    for i, spec in enumerate(tf.nest.flatten(element_spec)):
        dtype = getattr(spec, "dtype", None)
        if dtype is None:
            continue
        what = name if len(tf.nest.flatten(element_spec)) == 1 else f"{name}'s input {i}"
        if dtype == tf.string:
            raise ValueError(f"The {what} must be numeric; got tensors of dtype string.")
        _check_dtype(tf.as_dtype(dtype).as_numpy_dtype, what)


def finite_weights(model: Any) -> None:
    """Refuse a model with a NaN or infinite weight, naming the first one: every explanation
    and every pattern through it would be NaN."""
    import tensorflow as tf

    weights = [w for w in model.weights if tf.as_dtype(w.dtype).is_floating]
    if not weights:
        return
    # One flag per variable, computed where it lives; one transfer for all of them.
    finite = np.asarray(tf.stack([tf.reduce_all(tf.math.is_finite(w)) for w in weights]))
    if finite.all():
        return
    bad = [w for w, ok in zip(weights, finite) if not ok]
    first = bad[0]
    value = np.asarray(first)
    count = int(value.size - np.count_nonzero(np.isfinite(value)))
    raise ValueError(
        f"Model '{model.name}' has NaN or infinite weights: '{getattr(first, 'path', first.name)}' "
        f"holds {count} of {value.size}"
        + (f" ({len(bad) - 1} more weight variables too)" if len(bad) > 1 else "")
        + ". Every explanation and pattern through it would be NaN: load sound weights "
        "(was training diverging?)."
    )


def dense(value: Any, name: str = "data") -> None:
    """Refuse ragged and sparse tensors (and their specs), naming the type received."""
    import tensorflow as tf

    kinds = (tf.RaggedTensor, tf.SparseTensor, tf.RaggedTensorSpec, tf.SparseTensorSpec)
    for item in tf.nest.flatten(value, expand_composites=False):
        if isinstance(item, kinds):
            raise ValueError(
                f"The {name} is a {type(item).__name__}: patterns need dense batches shaped like "
                "the model's input (convert with `.to_tensor()` / `tf.sparse.to_dense`)."
            )


def keras_x(element: Any, input_names: Sequence[str], name: str = "data") -> Any:
    """``x`` from data in Keras's forms, in the model's input order.

    Takes what ``keras.Model.fit`` takes as data or as one batch: ``x``, ``(x,)``, ``(x, y)`` or
    ``(x, y, sample_weight)``, with ``x`` an array or tensor (one input), a list or tuple with
    one per input, or a dict keyed by input name. ``y`` is ignored (patterns describe the
    inputs); a ``sample_weight`` other than ``None`` is refused, since the pattern statistics are
    unweighted. Works on numpy values and on the symbolic tensors of a ``tf.data`` pipeline.

    Parameters
    ----------
    element : array, tensor, list, tuple or dict
    input_names : list of str
        The model's input names, in order.
    name : str
        What the data is called in messages.

    Returns
    -------
    array, tensor or tuple
        ``x`` for a single-input model, else a tuple with one value per input.

    Raises
    ------
    ValueError
        For a ``sample_weight``, a dict whose keys are not the input names, the wrong number of
        arrays, or a ragged or sparse tensor.
    """
    n_inputs = len(input_names)
    nested = (list, tuple, dict)
    if isinstance(element, dict):
        x = element
    elif isinstance(element, (list, tuple)):
        if (
            n_inputs > 1
            and len(element) == n_inputs
            and not any(isinstance(e, nested) for e in element)
        ):
            x = element  # a flat list with one array per input
        elif 1 <= len(element) <= 3:
            x = element[0]
            if len(element) == 3 and element[2] is not None:
                raise ValueError(
                    f"The {name} has a sample_weight (the third element of (x, y, "
                    "sample_weight)): pattern statistics are unweighted, so it would be "
                    "ignored. Drop it, or repeat samples to weight them. (A list of batches? "
                    "Pass a generator or a tf.data.Dataset.)"
                )
        else:
            raise ValueError(
                f"The {name} is a {type(element).__name__} of {len(element)} elements; pass x, "
                f"(x, y) or (x, y, sample_weight)"
                + (
                    f", with x a list of {n_inputs} arrays or a dict keyed by input name "
                    f"{list(input_names)}"
                    if n_inputs > 1
                    else ""
                )
                + ", or a generator or tf.data.Dataset of such batches."
            )
    else:
        x = element
    dense(x, name)
    if isinstance(x, dict):
        missing = [k for k in input_names if k not in x]
        extra = sorted(str(k) for k in x if k not in input_names)
        if missing or extra:
            raise ValueError(
                f"The {name} is a dict with the keys {sorted(str(k) for k in x)}; the model's "
                f"inputs are {list(input_names)}"
                + (f" (missing: {missing})" if missing else "")
                + (f" (unknown: {extra})" if extra else "")
                + "."
            )
        x = tuple(x[k] for k in input_names)
    if n_inputs == 1:
        if isinstance(x, (list, tuple)):
            if len(x) != 1:
                raise ValueError(f"The model has 1 input; the {name} gives {len(x)} arrays as x.")
            x = x[0]
        return x
    if not isinstance(x, (list, tuple)) or len(x) != n_inputs:
        got = f"{len(x)} arrays" if isinstance(x, (list, tuple)) else f"a {type(x).__name__}"
        raise ValueError(
            f"The model has {n_inputs} inputs {list(input_names)}: the {name} "
            f"must give x as a list of {n_inputs} arrays or a dict keyed by input "
            f"name, got {got}."
        )
    return tuple(x)


# --- neuron selection -----------------------------------------------------------------------


def selection_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`NEURON_SELECTION_MODES`, else ``ValueError``."""
    if mode not in NEURON_SELECTION_MODES:
        raise ValueError(
            f"neuron_selection_mode must be one of {NEURON_SELECTION_MODES}, got {mode!r}."
        )
    return mode


def is_region(selection: Any, mode: str, output_shape: tuple[int, ...]) -> bool:
    """Whether ``selection`` is output-shaped weights (a region), not output indices: an array
    shaped like one sample's output, or with one such per sample, of floats or booleans (or
    integers, unless it may be indices: mode ``"index"`` and rank 1)."""
    if selection is None or np.ndim(selection) == 0:
        return False
    try:
        arr = np.asarray(selection)
    except (TypeError, ValueError):
        return False
    if not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
        return False
    if np.issubdtype(arr.dtype, np.integer) and mode == "index" and arr.ndim == 1:
        return False
    k = len(output_shape)
    return arr.ndim in (k, k + 1) and tuple(arr.shape[arr.ndim - k :]) == tuple(output_shape)


def _region(selection: Any, n: int, output_shape: tuple[int, ...]) -> tf.Tensor:
    """Output-shaped weights as ``(n, outputs)`` float32."""
    import tensorflow as tf

    arr = np.asarray(selection, dtype=np.float64)
    if arr.ndim == len(output_shape) + 1 and arr.shape[0] != n:
        raise ValueError(
            f"neuron_selection has one region per sample for {arr.shape[0]} samples; "
            f"the input has {n}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("neuron_selection (region weights) holds NaN or infinite values.")
    if not np.any(arr):
        raise ValueError(
            "neuron_selection (region weights) is zero everywhere: nothing to explain."
        )
    flat = arr.reshape(-1, int(np.prod(output_shape)))
    return tf.convert_to_tensor(np.broadcast_to(flat, (n, flat.shape[1])), tf.float32)


def neuron_selection(
    selection: Any,
    mode: str,
    n: int,
    num_outputs: int,
    output_shape: tuple[int, ...] | None = None,
) -> tf.Tensor:
    """The selection for ``analyze(x, neuron_selection)``: per-sample output indices ``(n,)``
    int32, or region weights ``(n, num_outputs)`` float32.

    Mode ``"index"`` takes indices (one int for all samples, or one per sample, each in
    ``[0, num_outputs)``); the other modes choose inside the compiled pass and get zeros here.
    Any mode takes output-shaped weights (see :func:`is_region`; needs ``output_shape``, one
    sample's output shape), which explain ``Σ weights ⊙ output``.
    """
    import tensorflow as tf

    if output_shape is not None and is_region(selection, mode, output_shape):
        return _region(selection, n, output_shape)
    if mode != "index":
        if selection is not None:
            raise ValueError(
                f"neuron_selection is only used with neuron_selection_mode='index' (or as "
                f"weights shaped like the output, {tuple(output_shape or ())}, for a region); "
                f"this analyzer uses {mode!r} and got {_describe(selection)}."
            )
        return tf.zeros((n,), tf.int32)
    if selection is None:
        raise ValueError(
            "neuron_selection_mode='index' needs neuron_selection: an int or one int per sample."
        )
    sel = np.asarray(selection)
    if not np.issubdtype(sel.dtype, np.integer):
        raise ValueError(f"neuron_selection must be integers, got {sel.dtype}: {sel!r}.")
    if sel.ndim == 0:
        sel = np.full((n,), int(sel))
    if sel.shape != (n,):
        raise ValueError(
            f"neuron_selection must be an int or one int per sample ({n}); got shape {sel.shape}."
        )
    bad = sel[(sel < 0) | (sel >= num_outputs)]
    if bad.size:
        raise ValueError(
            f"neuron_selection {int(bad[0])} is out of range: the model has "
            f"{num_outputs} output neurons (0 to {num_outputs - 1})."
        )
    return tf.convert_to_tensor(sel, tf.int32)


def _describe(selection: Any) -> str:
    try:
        arr = np.asarray(selection)
        return f"an array of shape {arr.shape} and dtype {arr.dtype}"
    except (TypeError, ValueError):
        return repr(selection)


def selection_mask(y: Any, mode: str, selection: Any, num_outputs: int) -> tuple[Any, Any]:
    """Inside the compiled pass: the flattened output ``(n, num_outputs)`` and the weights of
    the neurons explained: a 0/1 mask (per sample the largest, the selected one, or all), or
    the region weights when ``selection`` is a float ``(n, num_outputs)`` tensor."""
    import tensorflow as tf

    flat = tf.reshape(y, [tf.shape(y)[0], -1])
    if selection is not None and selection.dtype.is_floating:
        return flat, tf.cast(selection, flat.dtype)
    if mode == "all":
        return flat, tf.ones_like(flat)
    if mode == "max_activation":
        selection = tf.argmax(flat, axis=1, output_type=tf.int32)
    return flat, tf.one_hot(selection, depth=num_outputs, dtype=flat.dtype)
