"""``pattern-keras analyze`` on a text file: one example per line, for a model saved with its
preprocessor (a keras-hub task such as ``BertTextClassifier``, saved with ``model.save``).

The preprocessor turns the lines into the model's inputs (token ids, segment ids, a padding
mask); every method explains them; the per-token scores of the token input are written as
``tokens.csv`` (one row per shown token: example, position, id, piece, a score per method),
``tokens.html`` (the pieces coloured by their scores, a section per method) and
``explanations.npy`` / ``.npz`` (the ``(n, T)`` scores).
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "TEXT_EXTENSIONS",
    "TextInputError",
    "is_text",
    "planned_outputs",
    "read_lines",
    "model_inputs",
    "analyze_text",
]

#: Files read as text, one example per line.
TEXT_EXTENSIONS = (".txt",)


class TextInputError(ValueError):
    """Text input that cannot be used (the command line reports it as a usage error)."""


def is_text(path: str) -> bool:
    """Whether ``path`` is a text file of examples."""
    return os.path.isfile(path) and path.lower().endswith(TEXT_EXTENSIONS)


def _arrays_name(n_methods: int) -> str:
    return "explanations.npy" if n_methods == 1 else "explanations.npz"


def planned_outputs(folder: str, n_methods: int) -> list[str]:
    """Every file :func:`analyze_text` writes in ``folder``."""
    return [
        os.path.join(folder, name)
        for name in ("tokens.csv", "tokens.html", _arrays_name(n_methods))
    ]


def read_lines(path: str) -> list[str]:
    """The non-empty lines of a UTF-8 file, without their line ends."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise TextInputError(f"could not read '{path}' as UTF-8 text: {err}") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise TextInputError(f"'{path}' holds no text (one example per line)")
    return lines


def model_inputs(model: Any, lines: list[str]) -> tuple[list[Any], Any]:
    """The model's inputs for ``lines``, in ``model.inputs`` order, from its preprocessor; and
    the preprocessor."""
    import numpy as np

    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        raise TextInputError(
            f"model '{model.name}' has no preprocessor: a text file needs a model saved with "
            "its preprocessor (a keras-hub task, e.g. BertTextClassifier, saved with "
            "model.save); for another model give token ids as a .npy or .npz file"
        )
    out = preprocessor(lines)
    if isinstance(out, tuple):  # (x, y, sample_weight)
        out = out[0]
    if not isinstance(out, Mapping):
        out = {model.inputs[0].name: out}
    names = [t.name for t in model.inputs]
    missing = [n for n in names if n not in out]
    if missing:
        raise TextInputError(
            f"the preprocessor gives {sorted(out)}, but the model's inputs are {names}"
        )
    return [np.asarray(out[n]) for n in names], preprocessor


def _token_input(analyzer: Any) -> int:
    """The input explained per token (the token ids)."""
    for point in analyzer._program.points:
        if point.kind == "embedding":
            return point.index
    raise TextInputError(
        "the model has no input of token ids looked up in an embedding: nothing to explain "
        "per token"
    )


def analyze_text(
    args: argparse.Namespace,
    model: Any,
    build_analyzers: Callable[[Any], Mapping[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Explain every line of ``args.inputs`` with every analyzer; write the CSV, the HTML and
    the arrays to ``args.output``.

    Parameters
    ----------
    args : argparse.Namespace
        ``inputs`` (the text file), ``output`` (the folder), ``neuron``, ``batch_size``,
        ``quiet``.
    model : keras.Model
        The loaded model, with its ``preprocessor``.
    build_analyzers : callable
        ``build_analyzers(model) -> {method: analyzer}``.
    say : callable
        Prints a progress message (unless quiet).

    Returns
    -------
    dict
        ``{method: (n, T) scores}``.
    """
    import numpy as np

    from pattern_keras import plot

    lines = read_lines(args.inputs)
    x, preprocessor = model_inputs(model, lines)
    names = [t.name for t in model.inputs]
    mask = x[names.index("padding_mask")].astype(bool) if "padding_mask" in names else None
    analyzers = build_analyzers(model)
    scores: dict[str, Any] = {}
    token_index = None
    for method, analyzer in analyzers.items():
        token_index = _token_input(analyzer)
        say(f"Explaining {len(lines)} lines with {method}")
        result = analyzer.analyze(
            x if len(x) > 1 else x[0],
            neuron_selection=args.neuron,
            batch_size=args.batch_size,
            verbose=0 if args.quiet else 1,
        )
        scores[method] = np.asarray(result[token_index] if len(x) > 1 else result, np.float32)
    ids = x[token_index]
    shown = np.ones(ids.shape, bool) if mask is None else mask
    os.makedirs(args.output, exist_ok=True)
    _write_csv(os.path.join(args.output, "tokens.csv"), ids, shown, scores, preprocessor)
    pages = [
        plot.tokens(s, ids, preprocessor, mask=shown, title=method).html
        for method, s in scores.items()
    ]
    with open(os.path.join(args.output, "tokens.html"), "w", encoding="utf-8") as f:
        f.write(
            '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
            + "<hr>".join(pages)
            + "</body></html>"
        )
    arrays = os.path.join(args.output, _arrays_name(len(scores)))
    if len(scores) == 1:
        np.save(arrays, next(iter(scores.values())))
    else:
        np.savez(arrays, **scores)
    from pattern_keras import _cli_output

    _cli_output.record_outputs(planned_outputs(args.output, len(scores)))
    shapes = ", ".join(f"{m} {s.shape}" for m, s in scores.items())
    say(f"Wrote tokens.csv, tokens.html and {os.path.basename(arrays)} ({shapes}) to {args.output}")
    return scores


def _write_csv(path: str, ids, shown, scores: Mapping[str, Any], preprocessor) -> None:
    import numpy as np

    from pattern_keras.plot import _piece_lookup

    piece = _piece_lookup(preprocessor)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["example", "position", "token_id", "piece", *scores])
        for example, position in zip(*np.nonzero(shown)):
            token = int(ids[example, position])
            row = [int(example), int(position), token, piece(token)]
            writer.writerow(row + [f"{s[example, position]:.6g}" for s in scores.values()])
