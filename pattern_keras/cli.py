"""The ``pattern-keras`` command line.

::

    pattern-keras fit MODEL DATA -o patterns.h5 [--pattern-type relu|linear|filter]
                      [--batch-size N] [--steps N] [--key KEY] [--image-size H W]
                      [--preprocess none|unit|caffe|tf|torch] [--unsafe] [--overwrite]
    pattern-keras analyze MODEL INPUTS --method NAME [--method NAME ...]
                      [--patterns patterns.h5] [--neuron INDEX] [--batch-size N]
                      [--epsilon EPS] [--alpha A --beta B] [--steps N] [--samples N]
                      [--noise-scale S] -o OUT_DIR [--overwrite] [data options]
    pattern-keras merge A.h5 B.h5 ... -o C.h5 [--overwrite]
    pattern-keras import-patterns MODEL FILE.npz -o patterns.h5 [--pattern-type relu|linear]
                      [--overwrite]
    pattern-keras methods
    pattern-keras demo [--output DIR] [--quick] [--seed N]
    pattern-keras evaluate MODEL DATA -m NAME [-m NAME ...] [--patterns patterns.h5]
                      [--fit-data FIT] -o OUT_DIR [data options]

MODEL is a Keras ``.keras`` or ``.h5`` file, loaded with Keras's safe mode on (``--unsafe``
turns it off, for models with ``Lambda`` layers that you trust). DATA and INPUTS are a ``.npy``
file, a ``.npz`` file (the array ``x``, or its only array; ``--key`` picks another), a folder
of PNG/JPEG images or one image (resized to ``--image-size H W`` or the model's input size; a
folder is read in batches by ``fit``, so its memory does not grow with the number of images).
``--preprocess`` applies ``keras.applications``' input conventions to the values: ``none`` (as
read; images are 0..255), ``unit`` (divide by 255), ``caffe`` (RGB to BGR, ImageNet means
subtracted), ``tf`` (scaled to [-1, 1]), ``torch`` (to [0, 1], then ImageNet mean and standard
deviation). 8-bit images are read as they are (0..255); 16-bit PNGs at their full depth,
scaled by 255 / 65535.

No output is ever the model, an input or the pattern file (compared before any work, links
resolved; refused even with ``--overwrite``). Another existing output is replaced only with
``--overwrite`` or when an earlier run wrote it (``.pattern-keras-outputs.json`` in its folder
records what the command line wrote). ``analyze`` names overlays ``<input>.<method>.png``.

Exit codes: 0 done; 2 a usage or input error (one line on stderr, no traceback); 1 anything
else (one line; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "UsageError", "load_data", "load_model", "PREPROCESS_MODES"]

PROG = "pattern-keras"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
PREPROCESS_MODES = ("none", "unit", "caffe", "tf", "torch")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class UsageError(Exception):
    """A usage or input error: reported in one line, exit code 2."""


class _Failure(Exception):
    """A failure explained in one line (exit code 1, no exception type shown)."""


# --------------------------------------------------------------------------------------------
# TensorFlow, quietly
# --------------------------------------------------------------------------------------------


def _quiet_tensorflow() -> None:
    """Import TensorFlow without its start-up noise (unless TF_CPP_MIN_LOG_LEVEL asks for it).

    TensorFlow 2.21 writes some C++ messages (CUDA probing on a machine without a GPU) before
    its logging honours ``TF_CPP_MIN_LOG_LEVEL``; they go to file descriptor 2, silenced here
    for the import and the device discovery only.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        _import_tensorflow_silently()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    tf.autograph.set_verbosity(0)


def _import_tensorflow_silently() -> None:
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    except ValueError:
        level = 2
    silence = level >= 2
    saved = devnull = None
    if silence:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
        except OSError:  # no real fd 2 (embedded interpreters): import loudly
            saved = None
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if devnull is not None:
            os.close(devnull)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def load_model(path: str, unsafe: bool = False):
    """Load a ``.keras`` or ``.h5`` model (safe mode unless ``unsafe``), uncompiled.

    Raises
    ------
    UsageError
        If the file is missing, has another extension, or cannot be read as a Keras model.
    """
    import keras

    if not os.path.exists(path):
        raise UsageError(f"model file '{path}' does not exist")
    if os.path.isdir(path):
        raise UsageError(
            f"'{path}' is a folder; MODEL must be a .keras or .h5 file "
            "(a TensorFlow SavedModel cannot be loaded by Keras 3)"
        )
    if not path.lower().endswith((".keras", ".h5", ".hdf5")):
        raise UsageError(f"model file '{path}' must end in .keras or .h5")
    if path.lower().endswith(".keras") and not _is_zip(path):
        # Keras says "File not found" for a .keras file that is not a zip archive.
        raise UsageError(
            f"could not load model '{path}': the file exists but is not a Keras archive "
            "(a .keras file is a zip archive; this one is damaged, truncated or of another "
            "format)"
        )
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as err:  # Keras raises many types for unreadable files
        message = _one_line(err)
        if "safe_mode" in message or "unsafe" in message.lower():
            reason = message.split(". ")[0].rstrip(".")
            raise UsageError(
                f"could not load model '{path}' in safe mode: {reason}; if you "
                "trust this file, add --unsafe"
            ) from None
        raise UsageError(f"could not load model '{path}': {message}") from None


def _is_zip(path: str) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_data(
    path: str,
    key: str | None = None,
    image_size: Sequence[int] | None = None,
    preprocess: str = "none",
    model: Any = None,
) -> tuple[Any, list[str]]:
    """Read DATA/INPUTS: a ``.npy``, a ``.npz``, a folder of images or one image file.

    Parameters
    ----------
    path : str
        The file or folder.
    key : str, optional
        The array of a ``.npz`` (default: ``x``, or the file's only array).
    image_size : (int, int), optional
        Size images are resized to; default the model's input size (or their own, if all agree).
    preprocess : {"none", "unit", "caffe", "tf", "torch"}
        The input convention applied to the values (see the module's description).
    model : keras.Model, optional
        Used for the image size and colour mode of a folder, and to check the data's shape.

    Returns
    -------
    x : numpy.ndarray, float32
    names : list of str
        One name per sample (image file stems, or zero-padded indices), for output files.

    Raises
    ------
    UsageError
        For a missing or unreadable file, an unknown ``.npz`` key, a folder without images,
        options that do not apply, or data whose shape does not fit the model.
    """
    import numpy as np

    if preprocess not in PREPROCESS_MODES:
        raise UsageError(
            f"--preprocess must be one of {', '.join(PREPROCESS_MODES)}; got '{preprocess}'"
        )
    if not os.path.exists(path):
        raise UsageError(f"data '{path}' does not exist")
    if os.path.isdir(path) or path.lower().endswith(IMAGE_EXTENSIONS):
        if key is not None:
            raise UsageError("--key applies to .npz files, not to images")
        x, names = _load_image_folder(path, image_size, model)
    else:
        if image_size is not None:
            raise UsageError("--image-size applies to a folder of images, not to array files")
        x = _load_array_file(path, key)
        names = _index_names(len(x))
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        raise UsageError(f"data '{path}' holds values of type {x.dtype}, not numbers")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))
        raise UsageError(
            f"data '{path}' holds {int(finite.size - finite.sum())} NaN or "
            f"infinite values (the first in sample {int(rows[0])}, counting "
            "from 0)"
        )
    x = _preprocess(x, preprocess)
    if model is not None:
        x = _fit_to_model(x, model, path)
    if len(x) == 0:
        raise UsageError(f"data '{path}' holds no samples (shape {x.shape})")
    return x, names


def _index_names(n: int) -> list[str]:
    """Output names of the samples of an array file: zero-padded indices, at least 5 digits."""
    width = max(len(str(max(n - 1, 0))), 5)
    return [f"{i:0{width}d}" for i in range(n)]


def _array_shape(path: str, key: str | None) -> tuple[int, ...]:
    """The shape of the array of a ``.npy``/``.npz`` from its header, without reading the
    values (a file whose header cannot be read this way is read in full)."""
    import numpy as np

    with contextlib.suppress(Exception):
        if path.lower().endswith(".npy"):
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        with np.load(path, allow_pickle=False) as archive:
            member = _npz_key(list(archive.keys()), key, path)
            with archive.zip.open(member + ".npy") as f:
                version = np.lib.format.read_magic(f)
                read = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }[version]
                return tuple(read(f)[0])
    return tuple(_load_array_file(path, key).shape)


def _npz_key(keys: list[str], key: str | None, path: str) -> str:
    """The array of a ``.npz`` DATA names: ``key``, else ``x``, else its only array."""
    if key is None:
        if "x" in keys:
            key = "x"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise UsageError(
                f"'{path}' holds the arrays {', '.join(keys) or '(none)'} and none "
                "is called 'x': pick one with --key"
            )
    if key not in keys:
        raise UsageError(f"'{path}' has no array '{key}'; it holds {', '.join(keys) or '(none)'}")
    return key


def _load_array_file(path: str, key: str | None):
    import numpy as np

    lower = path.lower()
    try:
        if lower.endswith(".npy"):
            if key is not None:
                raise UsageError("--key applies to .npz files, not to .npy")
            return np.load(path, allow_pickle=False)
        if lower.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                return archive[_npz_key(list(archive.keys()), key, path)]
    except UsageError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise UsageError(f"could not read '{path}': {_one_line(err)}") from None
    raise UsageError(
        f"data '{path}' must be a .npy or .npz file, a folder of images or one PNG/JPEG image"
    )


def _model_image_shape(model: Any) -> tuple[int | None, int | None, int | None] | None:
    """(H, W, C) of a single channels_last image input, or None if the model has another kind."""
    if model is None or len(model.inputs) != 1:
        return None
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        return None
    return shape[1], shape[2], shape[3]


def _image_settings(path: str, image_size: Sequence[int] | None, model: Any):
    """The files of a folder (or one image file), their names, colour mode and target size."""
    from pattern_keras import _images

    try:
        files, names = _images.list_images(path)
    except _images.ImageError as err:
        raise UsageError(str(err)) from None
    image_shape = _model_image_shape(model)
    if model is not None and image_shape is None:
        raise UsageError(
            f"images need a model with one image input (batch, H, W, C); this "
            f"model's input is {_input_signature(model)}"
        )
    try:
        mode = _images.color_mode(image_shape[2] if image_shape else 3)
    except _images.ImageError as err:
        raise UsageError(str(err)) from None
    if image_size is not None:
        size = tuple(int(v) for v in image_size)
        if any(v < 1 for v in size):
            raise UsageError(f"--image-size must be positive; got {size[0]} {size[1]}")
    elif image_shape and image_shape[0] and image_shape[1]:
        size = (int(image_shape[0]), int(image_shape[1]))
    else:
        size = None
    return files, names, mode, size


def _load_image_folder(path: str, image_size: Sequence[int] | None, model: Any):
    from pattern_keras import _images

    files, names, mode, size = _image_settings(path, image_size, model)
    try:
        return _images.read_images(files, mode, size), names
    except _images.ImageError as err:
        raise UsageError(f"{err} (in '{path}')") from None


def _preprocess(x, mode: str):
    import numpy as np

    if mode == "none":
        return x
    if mode == "unit":
        return x / 255.0
    if mode == "tf":
        return x / 127.5 - 1.0
    if x.ndim < 2 or x.shape[-1] != 3:
        raise UsageError(
            f"--preprocess {mode} needs RGB data (3 channels last); the data has shape {x.shape}"
        )
    if mode == "caffe":
        return (x[..., ::-1] - np.asarray(_IMAGENET_MEAN_BGR, np.float32)).astype(np.float32)
    # torch
    return (
        (x / 255.0 - np.asarray(_IMAGENET_MEAN, np.float32)) / np.asarray(_IMAGENET_STD, np.float32)
    ).astype(np.float32)


def _input_signature(model: Any) -> str:
    shapes = [tuple(t.shape) for t in model.inputs]
    text = ", ".join(
        "(" + ", ".join("batch" if d is None and i == 0 else str(d) for i, d in enumerate(s)) + ")"
        for s in shapes
    )
    return text


def _fit_to_model(x, model: Any, path: str):
    """Check x against the model's input; add a trailing channel axis of 1 where it is missing."""
    from pattern_keras import _checks

    if len(model.inputs) != 1:
        raise UsageError(
            f"the command line handles models with one input; this model has "
            f"{len(model.inputs)} inputs: {_input_signature(model)}"
        )
    want = tuple(model.inputs[0].shape)
    if x.ndim == len(want) - 1 and want[-1] == 1:
        x = x[..., None]
    try:
        _checks.model_inputs(x, [(want, "float32")], name=f"data '{path}'", as_numpy=True)
    except ValueError as err:
        raise UsageError(_one_line(err).rstrip(".")) from None
    return x


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _cmd_fit(args: argparse.Namespace) -> int:
    _check_positive("--batch-size", args.batch_size)
    if args.steps is not None:
        _check_positive("--steps", args.steps)
    _check_output_file(args.output)
    _check_exists(args.model, "model file")
    _check_exists(args.data, "data")
    _check_outputs(args, [args.output], [args.model, *_data_files(args.data)])
    _quiet_tensorflow()
    from pattern_keras.patterns import PatternComputer

    model = load_model(args.model, args.unsafe)
    steps = args.steps
    if os.path.isdir(args.data) or args.data.lower().endswith(IMAGE_EXTENSIONS):
        # Images are streamed: read batch by batch, never all at once.
        batches = _image_batches(args, model)
        steps = min(steps or len(batches), len(batches))
        data = _ImageStream(batches, steps)
        count = f"{len(batches.files)} images (read {args.batch_size} at a time)"
    else:
        data, _ = load_data(args.data, args.key, args.image_size, args.preprocess, model)
        count = f"{len(data)} samples"
    try:
        computer = PatternComputer(model, pattern_type=args.pattern_type)
    except ValueError as err:  # unsupported layers, no linear layer, ...
        raise UsageError(
            f"cannot fit patterns for model '{args.model}': {_one_line(err)}"
        ) from None
    _say(args, f"Fitting {args.pattern_type} patterns of {len(computer.keys)} layers on {count}")
    from pattern_keras import _images

    try:
        statistics = computer.compute_statistics(
            data, batch_size=args.batch_size, steps=steps, verbose=0 if args.quiet else 1
        )
    except _images.ImageError as err:
        raise UsageError(f"{err} (in '{args.data}')") from None
    if isinstance(data, _ImageStream) and data.error is not None:
        raise UsageError(f"{data.error} (in '{args.data}'); nothing was written") from None
    _save(statistics, args.output)
    _say(
        args,
        f"Wrote {args.output} ({statistics.n_samples} samples, layers: {', '.join(statistics)})",
    )
    return EXIT_OK


class _ImageStream:
    """The batches of an ``ImageBatches``, read here, in order, ``steps`` of them. The first
    image that cannot be read (or batch that does not fit the model) ends the stream and is
    kept in :attr:`error`: ``fit`` reports it in one line, as for the first batch, instead of
    letting it pass through TensorFlow's input pipeline as a traceback."""

    def __init__(self, batches: Any, steps: int) -> None:
        self.batches = batches
        self.steps = steps
        self.error: Exception | None = None

    def __iter__(self):
        from pattern_keras import _images

        for index in range(self.steps):
            try:
                batch = self.batches[index]
            except (_images.ImageError, UsageError) as err:
                self.error = err
                return
            yield batch


def _image_batches(args: argparse.Namespace, model: Any):
    """A folder (or one image) as an ``ImageBatches`` PyDataset, preprocessed and checked
    against the model batch by batch."""
    from pattern_keras import _images

    if args.key is not None:
        raise UsageError("--key applies to .npz files, not to images")
    files, _, mode, size = _image_settings(args.data, args.image_size, model)

    def transform(batch):
        if args.preprocess not in PREPROCESS_MODES:
            raise UsageError(f"--preprocess must be one of {', '.join(PREPROCESS_MODES)}")
        return _fit_to_model(_preprocess(batch, args.preprocess), model, args.data)

    batches = _images.ImageBatches(files, args.batch_size, mode, size, transform)
    try:
        if size is None:  # not resized: all must have one size, known before the fit starts
            _images.check_same_size(files)
        batches[0]  # the first batch now: a wrong size or a broken file is a usage error
    except _images.ImageError as err:
        raise UsageError(f"{err} (in '{args.data}')") from None
    return batches


def _load_patterns_for(path: str, model: Any):
    from pattern_keras.patterns import PatternFileError, io, model_fingerprint

    fingerprint = model_fingerprint(model)
    try:
        # The model is compared before any array is read.
        return io.load_patterns(path, fingerprint=fingerprint)
    except FileNotFoundError:
        raise UsageError(f"pattern file '{path}' does not exist") from None
    except PatternFileError as err:
        raise UsageError(_one_line(err)) from None
    except io._OtherModel as err:
        raise UsageError(
            f"pattern file '{path}' was fitted on another model: {err.mismatch}"
        ) from None


#: Analyze options that set an analyzer's parameter: option dest -> (constructor argument,
#: the methods that take it).
METHOD_OPTIONS = {
    "epsilon": ("epsilon", ("lrp.epsilon",)),
    "alpha": ("alpha", ("lrp.alpha_beta",)),
    "beta": ("beta", ("lrp.alpha_beta",)),
    "ig_steps": ("steps", ("integrated_gradients",)),
    "samples": ("samples", ("smoothgrad",)),
    "noise_scale": ("noise_scale", ("smoothgrad",)),
}
_OPTION_NAMES = {
    "epsilon": "--epsilon",
    "alpha": "--alpha",
    "beta": "--beta",
    "ig_steps": "--steps",
    "samples": "--samples",
    "noise_scale": "--noise-scale",
}


def _method_kwargs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per method, the constructor arguments its options set; refuses options no method uses."""
    methods = list(dict.fromkeys(args.method))
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for dest, (argument, users) in METHOD_OPTIONS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if not any(m in users for m in methods):
            raise UsageError(
                f"{_OPTION_NAMES[dest]} is only used by {' and '.join(users)}, "
                f"not by {', '.join(methods)}"
            )
        for m in methods:
            if m in users:
                per_method[m][argument] = value
    for dest in ("ig_steps", "samples"):
        if getattr(args, dest) is not None:
            _check_positive(_OPTION_NAMES[dest], getattr(args, dest))
    if args.epsilon is not None and not args.epsilon >= 0:
        raise UsageError(f"--epsilon must be >= 0; got {args.epsilon}")
    if args.noise_scale is not None and not args.noise_scale >= 0:
        raise UsageError(f"--noise-scale must be >= 0; got {args.noise_scale}")
    if "lrp.alpha_beta" in per_method:
        # alpha - beta = 1: one of the two determines the other; neither means alpha=1, beta=0.
        ab = per_method["lrp.alpha_beta"]
        if "alpha" in ab and "beta" not in ab:
            ab["beta"] = ab["alpha"] - 1.0
        elif "beta" in ab and "alpha" not in ab:
            ab["alpha"] = ab["beta"] + 1.0
        ab.setdefault("alpha", 1.0)
        ab.setdefault("beta", 0.0)
        if ab["alpha"] < 1 or ab["beta"] < 0 or abs(ab["alpha"] - ab["beta"] - 1) > 1e-9:
            raise UsageError(
                f"lrp.alpha_beta needs alpha - beta = 1 with beta >= 0; got "
                f"--alpha {ab['alpha']:g} --beta {ab['beta']:g}"
            )
        per_method["lrp.alpha_beta"] = {"alpha": ab.pop("alpha"), "beta": ab.pop("beta"), **ab}
    return per_method


def _describe(method: str, kwargs: dict[str, Any]) -> str:
    shown = {
        k: v
        for k, v in kwargs.items()
        if k not in ("patterns", "pattern_type", "neuron_selection_mode")
    }
    if not shown:
        return method
    return f"{method} ({', '.join(f'{k}={v:g}' for k, v in shown.items())})"


def _cmd_analyze(args: argparse.Namespace) -> int:
    _quiet_tensorflow()  # the analyzer names are known once the analyzers are imported
    methods, pattern_methods = _check_methods(args)
    _check_positive("--batch-size", args.batch_size)
    _check_positive("--grid-rows", args.grid_rows)
    if args.neuron is not None and args.neuron < 0:
        raise UsageError(f"--neuron must be >= 0; got {args.neuron}")
    per_method = _method_kwargs(args)
    _check_output_folder(args.output)
    _check_exists(args.model, "model file")
    _check_exists(args.inputs, "inputs")
    if args.patterns is not None:
        _check_exists(args.patterns, "pattern file")
    _check_outputs(
        args,
        _planned_analyze_outputs(args, methods),
        [args.model, *_data_files(args.inputs), *([args.patterns] if args.patterns else [])],
    )
    model = load_model(args.model, args.unsafe)
    if _is_text(args.inputs):  # one example per line: per-token scores (_cli_text.py)
        return _analyze_text(args, model, per_method, pattern_methods)
    x, names = load_data(args.inputs, args.key, args.image_size, args.preprocess, model)
    patterns = _load_patterns_for(args.patterns, model) if args.patterns else None
    analyzers = _build_analyzers(args, model, per_method, pattern_methods, patterns)
    explanations = _explain(args, analyzers, x, per_method)
    arrays, written = _write_explanations(args, x, names, explanations)
    _refuse_non_finite(args, explanations, pattern_methods, arrays)
    shapes = ", ".join(f"{m} {e.shape}" for m, e in explanations.items())
    if written:
        _say(
            args,
            f"Wrote {written.overlays} overlays ({written.size[1]}x{written.size[0]} "
            f"px), {written.grid} and {arrays} ({shapes}) to {args.output}",
        )
    else:
        _say(
            args, f"Wrote {arrays} ({shapes}) to {args.output} (no PNGs: the inputs are not images)"
        )
    return EXIT_OK


def _check_methods(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The methods asked for (known names, each once) and those of them that need patterns;
    ``--patterns`` is given exactly when one does."""
    from pattern_keras.analyzers.registry import analyzer_class, analyzer_names

    names = analyzer_names()
    methods = list(dict.fromkeys(args.method))
    for method in methods:
        if method not in names:
            import difflib

            close = difflib.get_close_matches(method, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UsageError(
                f"unknown method '{method}'; {hint}known: {', '.join(names)} "
                "(see 'pattern-keras methods')"
            )
    # The registry says which analyzers read patterns (a registered one of the user's too).
    pattern_methods = [m for m in methods if analyzer_class(m).needs_patterns]
    if args.patterns is not None and not pattern_methods:
        users = [n for n in names if analyzer_class(n).needs_patterns]
        raise UsageError(
            f"--patterns is only used by {' and '.join(users)}, not by {', '.join(methods)}"
        )
    if args.patterns is None and pattern_methods:
        raise UsageError(
            f"'{pattern_methods[0]}' needs fitted patterns: give --patterns FILE "
            "(fit them with 'pattern-keras fit MODEL DATA -o FILE')"
        )
    return methods, pattern_methods


def _build_analyzers(
    args: argparse.Namespace,
    model: Any,
    per_method: dict[str, dict[str, Any]],
    pattern_methods: list[str],
    patterns: Any,
) -> dict[str, Any]:
    """One analyzer per method, with its options; ``--neuron`` checked against the outputs."""
    import pattern_keras as pk

    analyzers = {}
    for method, options in per_method.items():
        kwargs = dict(options)
        if args.neuron is not None:
            kwargs["neuron_selection_mode"] = "index"
        if method in pattern_methods:
            kwargs["patterns"] = patterns
            kwargs["pattern_type"] = dict(patterns.pattern_types)
        try:
            analyzers[method] = pk.create_analyzer(method, model, **kwargs)
        except ValueError as err:  # unsupported layers, patterns that do not fit, ...
            raise UsageError(
                f"cannot analyze model '{args.model}' with '{method}': {_one_line(err)}"
            ) from None
        if args.neuron is not None and args.neuron >= analyzers[method].num_outputs:
            raise UsageError(
                f"--neuron {args.neuron} is out of range: the model has "
                f"{analyzers[method].num_outputs} output neurons (0 to "
                f"{analyzers[method].num_outputs - 1})"
            )
    return analyzers


def _is_text(path: str) -> bool:
    from pattern_keras import _cli_text

    return _cli_text.is_text(path)


def _analyze_text(args: argparse.Namespace, model: Any, per_method, pattern_methods) -> int:
    """``analyze`` on a text file (:mod:`pattern_keras._cli_text`)."""
    from pattern_keras import _cli_text

    patterns = _load_patterns_for(args.patterns, model) if args.patterns else None
    try:
        _cli_text.analyze_text(
            args,
            model,
            lambda m: _build_analyzers(args, m, per_method, pattern_methods, patterns),
            lambda message: _say(args, message),
        )
    except _cli_text.TextInputError as err:
        raise UsageError(str(err)) from None
    return EXIT_OK


def _explain(
    args: argparse.Namespace, analyzers: dict[str, Any], x: Any, per_method: dict[str, Any]
) -> dict[str, Any]:
    """Every method's explanations of ``x`` (float32, shaped like ``x``), by method."""
    import numpy as np

    explanations = {}
    for method, analyzer in analyzers.items():
        _say(args, f"Explaining {len(x)} inputs with {_describe(method, per_method[method])}")
        result = analyzer.analyze(
            x,
            neuron_selection=args.neuron,
            batch_size=args.batch_size,
            verbose=0 if args.quiet else 1,
        )
        explanations[method] = np.asarray(result, dtype=np.float32)
    return explanations


def _write_explanations(args: argparse.Namespace, x: Any, names: list[str], explanations: dict):
    """The arrays (``explanations.npy``, or ``.npz`` for several methods) and the PNGs, with
    non-finite values shown as 0. Returns the array file's name and what the PNGs are."""
    import numpy as np

    from pattern_keras import _cli_output

    os.makedirs(args.output, exist_ok=True)
    arrays = _arrays_name(len(explanations))
    if len(explanations) == 1:
        np.save(os.path.join(args.output, arrays), next(iter(explanations.values())))
    else:
        np.savez(os.path.join(args.output, arrays), **explanations)
    _cli_output.record_outputs([os.path.join(args.output, arrays)])
    shown = {m: np.where(np.isfinite(e), e, 0.0) for m, e in explanations.items()}
    written = _cli_output.write_images(args.output, x, names, shown, grid_rows=args.grid_rows)
    if written:
        _cli_output.record_outputs(written.files)
    return arrays, written


def _arrays_name(n_methods: int) -> str:
    return "explanations.npy" if n_methods == 1 else "explanations.npz"


def _planned_analyze_outputs(args: argparse.Namespace, methods: list[str]) -> list[str]:
    """Every file ``analyze`` may write: the arrays, and for inputs that may be images the
    overlays and the grid (known from the file names, or an array file's header)."""
    from pattern_keras import _cli_output, _images

    if _is_text(args.inputs):
        from pattern_keras import _cli_text

        return _cli_text.planned_outputs(args.output, len(methods))
    planned = [os.path.join(args.output, _arrays_name(len(methods)))]
    if os.path.isdir(args.inputs) or args.inputs.lower().endswith(IMAGE_EXTENSIONS):
        try:
            names = _images.list_images(args.inputs)[1]
        except _images.ImageError as err:
            raise UsageError(str(err)) from None
    else:
        shape = _array_shape(args.inputs, args.key)
        if len(shape) not in (3, 4):  # not images (3: images without a channel axis)
            return planned
        names = _index_names(shape[0])
    return planned + _cli_output.planned_images(args.output, names, methods)


def _refuse_non_finite(
    args: argparse.Namespace, explanations: dict, pattern_methods: list[str], arrays: str
) -> None:
    """Exit 1 (after writing) if an explanation holds NaN or inf, saying how many and where."""
    import numpy as np

    n = len(next(iter(explanations.values())))
    bad = {
        m: int((~np.isfinite(e).reshape(len(e), -1).all(axis=1)).sum())
        for m, e in explanations.items()
    }
    if not any(bad.values()):
        return
    hint = (
        " (patterns fitted on too little data? fit on more samples)"
        if any(bad[m] for m in pattern_methods)
        else ""
    )
    if len(bad) == 1:
        what = f"{next(iter(bad.values()))} of {n} explanations contain NaN or inf values"
    else:
        what = (
            "explanations contain NaN or inf values ("
            + ", ".join(f"{m}: {k} of {n}" for m, k in bad.items() if k)
            + ")"
        )
    raise _Failure(
        f"{what}{hint}; they are in {args.output}/{arrays} as computed and shown as 0 in the PNGs"
    )


def _cmd_merge(args: argparse.Namespace) -> int:
    if len(args.files) < 2:
        raise UsageError("merge needs at least two statistics files")
    _check_output_file(args.output)
    for path in args.files:
        if not os.path.exists(path):
            raise UsageError(f"statistics file '{path}' does not exist")
    _check_outputs(args, [args.output], args.files)
    _quiet_tensorflow()
    from pattern_keras.patterns import PatternFileError, PatternStatistics

    merged = None
    for path in args.files:
        try:
            stats = PatternStatistics.load(path)
        except FileNotFoundError:
            raise UsageError(f"statistics file '{path}' does not exist") from None
        except (PatternFileError, ValueError) as err:
            raise UsageError(_one_line(err)) from None
        if merged is None:
            merged = stats
            continue
        try:
            merged = merged.merge(stats)
        except ValueError as err:
            raise UsageError(f"cannot merge '{path}': {_one_line(err)}") from None
    _save(merged, args.output)
    _say(args, f"Merged {len(args.files)} files ({merged.n_samples} samples) into {args.output}")
    return EXIT_OK


def _cmd_import_patterns(args: argparse.Namespace) -> int:
    _check_output_file(args.output)
    _check_exists(args.model, "model file")
    _check_exists(args.file, "iNNvestigate pattern file")
    _check_outputs(args, [args.output], [args.model, args.file])
    _quiet_tensorflow()
    from pattern_keras.patterns import Patterns

    model = load_model(args.model, args.unsafe)
    try:
        patterns = Patterns.from_innvestigate(args.file, model, pattern_type=args.pattern_type)
    except ValueError as err:  # PatternFileError included: the file, or its fit to the model
        raise UsageError(_one_line(err)) from None
    _save(patterns, args.output)
    both = [k for k in patterns if patterns.has_negative(k)]
    _say(
        args,
        f"Wrote {args.output} ({args.pattern_type} patterns of {len(patterns)} layers: "
        f"{', '.join(patterns)}"
        + (f"; the pattern of {', '.join(both)} serves both regimes" if both else "")
        + ")",
    )
    return EXIT_OK


def _cmd_methods(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    import pattern_keras as pk

    names = pk.analyzer_names()
    width = max(len(n) for n in names)
    for name in names:
        cls = pk.analyzer_class(name)
        summary = _first_sentence(cls.__doc__)
        needs = "  [needs --patterns]" if cls.needs_patterns else ""
        print(f"{name:<{width}}  {summary}{needs}")
    return EXIT_OK


def _first_sentence(doc: str | None) -> str:
    """The docstring's first paragraph on one line, as plain text (no reST markup)."""
    if not doc:
        return ""
    return _plain_text(" ".join(doc.strip().split("\n\n")[0].split()))


def _plain_text(text: str) -> str:
    """Strip the reST markup the docstrings use: ``:class:`~a.b.C``` -> ``C``,
    ``:meth:`text``` -> ``text``, double and single backquotes -> nothing."""
    import re

    def role(match: re.Match) -> str:
        target = match.group(1)
        if target.startswith("~"):
            target = target[1:].rsplit(".", 1)[-1]
        return target

    text = re.sub(r":[a-z]+(?::[a-z]+)?:`([^`]+)`", role, text)
    return text.replace("``", "").replace("`", "")


def _cmd_demo(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from pattern_keras.demo import run_demo

    run_demo(
        args.output,
        quick=True if args.quick else None,
        seed=args.seed,
        verbose=0 if args.quiet else 1,
    )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with errors in one line (and a pointer to --help) instead of the usage."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _check_positive(option: str, value: int) -> None:
    from pattern_keras import _checks

    try:
        _checks.positive_int(value, option)
    except ValueError as err:
        raise UsageError(_one_line(err).rstrip(".")) from None


def _check_exists(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{what} '{path}' does not exist")


def _data_files(path: str) -> list[str]:
    """The files of DATA/INPUTS: the images of a folder, or the file itself."""
    from pattern_keras import _images

    if os.path.isdir(path):
        with contextlib.suppress(_images.ImageError, OSError):
            return _images.list_images(path)[0]
        return []
    return [path]


def _check_outputs(args: argparse.Namespace, outputs: list[str], protected: list[str]) -> None:
    """Before any work: no output is the model, an input or the pattern file; an existing
    output is replaced only with --overwrite or when pattern-keras wrote it
    (:func:`pattern_keras._cli_output.check_outputs`)."""
    from pattern_keras import _cli_output

    try:
        _cli_output.check_outputs(outputs, protected, overwrite=args.overwrite)
    except _cli_output.OutputRefused as err:
        raise UsageError(str(err)) from None


def _save(content: Any, path: str) -> None:
    """Save patterns or statistics to ``path`` and record it in the folder's manifest."""
    from pattern_keras import _cli_output

    content.save(path)
    _cli_output.record_outputs([path])


def _check_output_file(path: str) -> None:
    """Before any work: ``path`` can be written (a file, in a folder we may write to)."""
    if os.path.isdir(path):
        raise UsageError(f"-o must be a file; '{path}' is a folder")
    target = os.path.realpath(path)
    if os.path.exists(target) and not os.access(target, os.W_OK):
        raise UsageError(f"cannot write '{path}': the file is read-only")
    _check_writable_folder(os.path.dirname(target) or ".", path)


def _check_output_folder(path: str) -> None:
    """Before any work: ``path`` is (or can be made) a folder we may write to."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"-o must be a folder; '{path}' is a file")
    _check_writable_folder(os.path.realpath(path), path)


def _check_writable_folder(folder: str, path: str) -> None:
    """The folder, or the nearest existing folder above it (where it would be made), must be
    writable."""
    existing = folder
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise UsageError(f"cannot write '{path}': '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write '{path}': no permission to write in '{existing}'")


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message)


def _add_overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files that pattern-keras did not write (never the "
        "model, an input or the pattern file)",
    )


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data options")
    g.add_argument("--key", help="array of a .npz file (default: 'x', or its only array)")
    g.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="resize the images of a folder to H x W (default: the model's input size)",
    )
    g.add_argument(
        "--preprocess",
        choices=PREPROCESS_MODES,
        default="none",
        help="input convention, as in keras.applications: none (values as read, "
        "images 0..255), unit (/255), caffe (BGR, ImageNet means subtracted), "
        "tf ([-1, 1]), torch (ImageNet mean/std); default none",
    )
    g.add_argument(
        "--unsafe",
        action="store_true",
        help="load the model with Keras's safe mode off (only for files you trust: "
        "Lambda layers run code)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pattern-keras``: the global options, then one subparser per
    entry of :data:`_SUBCOMMANDS` (a subcommand is added by one function there)."""
    from pattern_keras._version import __version__

    parser = _Parser(
        prog=PROG,
        description="PatternNet, PatternAttribution and the gradient/LRP family for Keras models.",
        epilog="Exit codes: 0 done, 2 usage or input error, 1 anything else.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug",
        "--traceback",
        dest="traceback",
        action="store_true",
        help="show the full traceback of an unexpected error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_subcommand in _SUBCOMMANDS:
        add_subcommand(sub)
    return parser


def _add_fit_parser(sub) -> None:
    from pattern_keras.patterns.statistics import ESTIMATORS  # numpy only: no TensorFlow

    p = sub.add_parser(
        "fit",
        help="fit patterns for a model on data",
        description="Fit the patterns (and keep their statistics, for 'merge') "
        "of MODEL on DATA and save them to an HDF5 file.",
    )
    p.add_argument("model", metavar="MODEL", help="a .keras or .h5 model file")
    p.add_argument(
        "data",
        metavar="DATA",
        help="a .npy, a .npz, a folder of images (read in batches), or one image",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="PATTERNS.h5", help="the pattern file to write"
    )
    p.add_argument(
        "--pattern-type",
        choices=tuple(ESTIMATORS),
        default="relu",
        help="signal estimator (default relu): "
        + "; ".join(f"{e.name}: {e.description}" for e in ESTIMATORS.values()),
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    p.add_argument("--steps", type=int, help="use only the first STEPS batches")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_overwrite_option(p)
    _add_data_options(p)
    p.set_defaults(handler=_cmd_fit)


def _add_analyze_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="explain a model's outputs for inputs",
        description="Explain MODEL's output for each input with one or more "
        "methods. Writes, per input and method, an overlay of the "
        "explanation on the input (red = positive, blue = negative; "
        "enlarged to a readable size); grid.png (inputs x methods, "
        "with a colour bar); and the raw explanations, shaped like "
        "the inputs: explanations.npy for one method, "
        "explanations.npz (one array per method name) for several.",
    )
    p.add_argument("model", metavar="MODEL", help="a .keras or .h5 model file")
    p.add_argument(
        "inputs", metavar="INPUTS", help="a .npy, a .npz, a folder of images, or one PNG/JPEG image"
    )
    p.add_argument(
        "-m",
        "--method",
        required=True,
        metavar="NAME",
        action="append",
        help="analyzer name, e.g. gradient, lrp.z, pattern.attribution (see "
        "'pattern-keras methods'); give it several times for several methods",
    )
    p.add_argument(
        "--patterns",
        metavar="PATTERNS.h5",
        help="fitted patterns (required by pattern.net and pattern.attribution; "
        "their pattern types are read from the file)",
    )
    p.add_argument(
        "--neuron",
        type=int,
        metavar="INDEX",
        help="output neuron to explain (default: the largest output per input)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    p.add_argument(
        "--grid-rows",
        type=int,
        default=16,
        metavar="N",
        help="inputs shown in grid.png (default: the first 16)",
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress output (no progress bar either)"
    )
    _add_overwrite_option(p)
    _add_method_options(p)
    _add_data_options(p)
    p.set_defaults(handler=_cmd_analyze)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method options")
    g.add_argument(
        "--epsilon", type=float, metavar="EPS", help="lrp.epsilon: the stabilizer (default 1e-7)"
    )
    g.add_argument(
        "--alpha",
        type=float,
        help="lrp.alpha_beta: weight of positive contributions (alpha - beta = 1; "
        "default alpha 1, beta 0)",
    )
    g.add_argument("--beta", type=float, help="lrp.alpha_beta: weight of negative contributions")
    g.add_argument(
        "--steps",
        dest="ig_steps",
        type=int,
        metavar="N",
        help="integrated_gradients: path steps (default 64)",
    )
    g.add_argument(
        "--samples", type=int, metavar="N", help="smoothgrad: noisy copies per input (default 64)"
    )
    g.add_argument(
        "--noise-scale",
        type=float,
        metavar="S",
        help="smoothgrad: noise sigma as a fraction of the input's range (default 0.1)",
    )


def _add_merge_parser(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="merge pattern statistics fitted on parts of the data",
        description="Merge statistics files (written by 'fit') of the same "
        "model into one, as if fitted on all the data at once.",
    )
    p.add_argument("files", nargs="+", metavar="FILE.h5", help="statistics files to merge")
    p.add_argument("-o", "--output", required=True, metavar="C.h5", help="the file to write")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_overwrite_option(p)
    p.set_defaults(handler=_cmd_merge)


def _add_import_patterns_parser(sub) -> None:
    p = sub.add_parser(
        "import-patterns",
        help="convert an iNNvestigate 1.x pattern file",
        description="Read patterns saved by iNNvestigate 1.x (an .npz of arr_0 "
        "... arr_N, one array per layer with a kernel, in layer "
        "order; e.g. the published VGG16 ImageNet patterns), check "
        "them against MODEL, and save them as a pattern_keras "
        "pattern file for 'analyze --patterns'.",
    )
    p.add_argument("model", metavar="MODEL", help="a .keras or .h5 model file")
    p.add_argument("file", metavar="FILE.npz", help="the iNNvestigate pattern file")
    p.add_argument(
        "-o", "--output", required=True, metavar="PATTERNS.h5", help="the pattern file to write"
    )
    p.add_argument(
        "--pattern-type",
        choices=("relu", "linear"),
        default="relu",
        help="the estimator the file was fitted with (the file does not say): relu "
        "(default) or linear",
    )
    p.add_argument(
        "--unsafe",
        action="store_true",
        help="load the model with Keras's safe mode off (only for files you trust)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no output")
    _add_overwrite_option(p)
    p.set_defaults(handler=_cmd_import_patterns)


def _add_methods_parser(sub) -> None:
    p = sub.add_parser(
        "methods",
        help="list the analyzers",
        description="List the analyzer names with a one-line description.",
    )
    p.set_defaults(handler=_cmd_methods)


def _add_demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small CNN on generated data and explain it",
        description="Train a small CNN on generated signal/distractor images, "
        "fit patterns, and write explanations, image degradation "
        "curves, signal estimator quality, the patterns and a "
        "summary (about a minute on a CPU).",
    )
    p.add_argument(
        "-o",
        "--output",
        default="pattern-keras-demo",
        metavar="DIR",
        help="output folder (default ./pattern-keras-demo)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run in seconds (also: PATTERN_KERAS_DEMO_QUICK=1)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(handler=_cmd_demo)


def _add_evaluate_parser(sub) -> None:
    """``pattern-keras evaluate``: the sanity checks and the evidence table (its parser and
    handler live in :mod:`pattern_keras._cli_evaluate`)."""
    from pattern_keras import _cli_evaluate  # numpy-free at import: no TensorFlow

    _cli_evaluate.add_parser(sub, _add_data_options)


#: The subcommands, in the order ``--help`` lists them: each function adds one subparser
#: (with its ``handler``) to the subparsers object it is given.
_SUBCOMMANDS = (
    _add_fit_parser,
    _add_analyze_parser,
    _add_evaluate_parser,
    _add_merge_parser,
    _add_import_patterns_parser,
    _add_methods_parser,
    _add_demo_parser,
)


def _show_warning(command: str, message, category, filename, lineno, file=None, line=None) -> None:
    """A library warning in one line, like the errors (no source line)."""
    print(f"{PROG} {command}: warning: {_one_line(message, limit=600)}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 done, 2 usage error, 1 other error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a parse error (already printed)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():  # restores the warning display afterwards
            warnings.showwarning = functools.partial(_show_warning, args.command)
            return args.handler(args)
    except UsageError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except _Failure as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # output piped into a program that stopped reading (| head)
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.traceback or os.environ.get("PATTERN_KERAS_TRACEBACK"):
            import traceback

            traceback.print_exc()
        print(
            f"{PROG} {args.command}: error: {type(err).__name__}: {_one_line(err)}"
            + ("" if args.traceback else " (run with --debug for details)"),
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
