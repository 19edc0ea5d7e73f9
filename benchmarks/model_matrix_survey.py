"""Which analyzers run on which model of the model matrix (issue 20), and what blocks the rest.

For every model of ``tests/model_matrix.py`` (keras-hub backbones and tasks at tiny random
configurations, and the keras.io shapes): does it build; does each of the gradient family
(Gradient, InputTimesGradient, IntegratedGradients with 4 steps, SmoothGrad with 3 samples)
equal the tape within ``DEEP_PASS`` (1e-4 of the largest value; for token ids, the maps at the
summed embedding vectors, ``model_matrix.tape_token_reference``); is each rule-based analyzer
built, or refused, and by which layer or op (the first ``"opaque"`` op of
``pattern_keras.engine.Program(model)``); where built, is its explanation finite, non-zero and
of the input's shape, per token for token ids (PatternNet and PatternAttribution fitted on 12
samples first; PatternNet with ``renormalize=True`` where it overflows float32, noted).

The analyzers run eagerly unless ``--compiled`` is given (the same rules; at these sizes
tracing 14 analyzers per model costs more than it saves).

Every op that cannot be handled is listed with the area of the work that will give it a rule
(``ops``: keras.ops nodes and layers; ``attention``; ``text``: embeddings and integer inputs;
``graph``: a layer that could not be looked into; ``keras-hub``: a keras-hub layer class that
needs a rule of its own).

Run from the repository root::

    python benchmarks/model_matrix_survey.py                 # the report (markdown)
    python benchmarks/model_matrix_survey.py --readme        # the README's table
    python benchmarks/model_matrix_survey.py --models vit,bert --json survey.json
    python benchmarks/model_matrix_survey.py --load survey.json --readme   # re-render
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np

DEEP_PASS = 1e-4  # tests/conftest.py
GRADIENT_FAMILY = ("Gradient", "InputTimesGradient", "IntegratedGradients", "SmoothGrad")
RULE_BASED = (
    "DeConvNet",
    "GuidedBackprop",
    "LRPZ",
    "LRPEpsilon",
    "LRPAlpha1Beta0",
    "LRPAlpha2Beta1",
    "LRPZPlus",
    "DeepTaylor",
    "PatternNet",
    "PatternAttribution",
)
SHORT = {
    "Gradient": "Grad",
    "InputTimesGradient": "I×G",
    "IntegratedGradients": "IG",
    "SmoothGrad": "SG",
    "DeConvNet": "DeConv",
    "GuidedBackprop": "GBP",
    "LRPZ": "LRP-z",
    "LRPEpsilon": "LRP-ε",
    "LRPAlpha1Beta0": "LRP-α1β0",
    "LRPAlpha2Beta1": "LRP-α2β1",
    "LRPZPlus": "LRP-z⁺",
    "DeepTaylor": "DTD",
    "PatternNet": "PNet",
    "PatternAttribution": "PAttr",
}
PARAMS = {
    "IntegratedGradients": {"steps": 4},
    "SmoothGrad": {"samples": 3, "noise_scale": 0.1, "seed": 0},
}

# Where the rule for an op or layer class will come from (see the module docstring).
_OPS = {
    "GetItem", "Reshape", "Concatenate", "Split", "Pad", "Mean", "Sum", "Transpose", "Unstack",
    "Stack", "Roll", "Repeat", "Resize", "Resizing", "ExtractPatches", "Slice", "Squeeze",
    "ExpandDims", "Tile", "BroadcastTo", "Maximum", "Minimum", "UpSampling2D", "Cast",
    "GroupNormalization", "RMSNormalization", "UnitNormalization",
}  # fmt: skip
_ATTENTION = {
    "Einsum", "Matmul", "Dot", "DotProductAttention", "EinsumDense", "MultiHeadAttention",
    "DisentangledSelfAttention", "WindowAttention",
}  # fmt: skip
_TEXT = {"Take", "Embedding", "ReversibleEmbedding", "PositionEmbedding"}
_KERAS_HUB = {"DropPath", "HGNetV2LearnableAffineBlock"}
#: TensorFlow has no eager CPU gradient of a grouped convolution: these tapes are compiled.
COMPILED_TAPE = {"hgnetv2", "mobilenet"}


def area_of(op) -> str:
    """The area whose rules an opaque op waits for."""
    name = type(op.layer).__name__
    refusal = op.refusal or ""
    if "could not be looked into" in refusal:
        return "graph"
    if "softmax inside the model" in refusal:
        return "attention"
    if name == "Cast" and "embedding" in op.key:
        return "text"  # the embedding's cast to its compute dtype
    for area, names in (
        ("ops", _OPS),
        ("attention", _ATTENTION),
        ("text", _TEXT),
        ("keras-hub", _KERAS_HUB),
    ):
        if name in names:
            return area
    return "?"


def _label(op) -> str:
    return (
        "softmax" if "softmax inside the model" in (op.refusal or "") else type(op.layer).__name__
    )


def _check(result, inputs) -> str | None:
    """Why an explanation is not acceptable (None: finite, non-zero, the inputs' shapes; per
    token for token ids; ``None`` for inputs not explained, a padding mask)."""
    results = result if isinstance(result, list) else [result]
    if all(r is None for r in results):
        return "no input explained"
    for r, x in zip(results, inputs):
        if r is None:
            continue
        r = np.asarray(r)
        if r.shape != x.shape:
            return f"shape {r.shape} for input {x.shape}"
        if not np.all(np.isfinite(r)):
            return "not finite"
        if not np.any(r):
            return "all zero"
    return None


def survey_model(name: str) -> dict:
    import tensorflow as tf

    import pattern_keras as pk
    from pattern_keras import engine
    from tests import model_matrix as mm

    row: dict = {"model": name, "analyzers": {}}
    start = time.process_time()
    try:
        built = mm.build(name)
    except mm.Unavailable as err:
        row["skipped"] = str(err)
        return row
    except Exception as err:
        row["build_error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        return row
    model = built.model
    row.update(family=built.family, source=built.source, params=int(model.count_params()))
    inputs = built.inputs(3, seed=0)
    float_inputs = all(np.issubdtype(x.dtype, np.floating) for x in inputs)
    program = engine.Program(model)
    opaque = [op for op in program.ops if op.kind == "opaque"]
    row["ops"] = len(program.ops)
    row["opaque"] = [
        {"key": op.key, "class": _label(op), "area": area_of(op), "refusal": op.refusal}
        for op in opaque
    ]
    x = inputs if len(inputs) > 1 else inputs[0]
    for method in GRADIENT_FAMILY:
        entry: dict = {}
        try:
            analyzer = getattr(pk, method)(model, **PARAMS.get(method, {}))
            got = analyzer.analyze(x, verbose=0, per_token=False)
            got = got if isinstance(got, list) else [got]
            if float_inputs:
                eager = tf.config.functions_run_eagerly()
                tf.config.run_functions_eagerly(False)  # a compiled tape must be compiled
                try:
                    want = mm.tape_reference(
                        method,
                        model,
                        inputs,
                        compiled=name in COMPILED_TAPE,
                        **PARAMS.get(method, {}),
                    )
                finally:
                    tf.config.run_functions_eagerly(eager)
            else:  # token ids: the maps at the summed embedding vectors
                index, vectors = mm.tape_token_reference(
                    method, model, inputs, **PARAMS.get(method, {})
                )
                got, want = [got[index]], [vectors]
            err = max(
                float(np.max(np.abs(g - w)) / max(float(np.max(np.abs(w))), 1e-30))
                for g, w in zip(got, want)
            )
            entry = {"status": "ok" if err <= DEEP_PASS else "differs", "error": err}
        except Exception as err:
            entry = {"status": "error", "error": f"{type(err).__name__}: {err}"[:300]}
        row["analyzers"][method] = entry
    fit_data = built.inputs(12, seed=1)
    fit_x = fit_data if len(fit_data) > 1 else fit_data[0]
    for method in RULE_BASED:
        try:
            analyzer = getattr(pk, method)(model)
        except ValueError as err:
            first = opaque[0] if opaque else None
            row["analyzers"][method] = {
                "status": "refused",
                "by": _label(first) if first else None,
                "area": area_of(first) if first else "?",
                "message": str(err)[:400],
            }
            continue
        try:
            if analyzer.needs_patterns:
                analyzer.fit(fit_x, batch_size=4, verbose=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                problem = _check(analyzer.analyze(x, verbose=0), inputs)
                if problem == "not finite" and method == "PatternNet":
                    # Overflow through many layers: the README's remedy, noted in the row.
                    again = pk.PatternNet(model, patterns=analyzer.patterns, renormalize=True)
                    if _check(again.analyze(x, verbose=0), inputs) is None:
                        problem = None
                        row["renormalized"] = True
            row["analyzers"][method] = {
                "status": "ok" if problem is None else "bad",
                "note": problem,
            }
        except Exception as err:
            row["analyzers"][method] = {
                "status": "error",
                "error": f"{type(err).__name__}: {err}"[:300],
            }
    row["cpu_s"] = round(time.process_time() - start, 1)
    return row


# --- reports ------------------------------------------------------------------------------


def _mark(entry: dict) -> str:
    status = entry["status"]
    if status == "ok":
        return "✓"
    if status == "refused":
        return "✗"
    if status == "no reference":
        return "–"
    return "!"


def markdown_report(rows: list[dict]) -> str:
    lines = [
        "| model | source | params | ops | opaque ops (class × count) | first refusal (area) |"
    ]
    lines.append("|---|---|---|---|---|---|")
    for row in rows:
        if "skipped" in row or "build_error" in row:
            why = row.get("skipped") or row.get("build_error")
            lines.append(f"| {row['model']} | | | | not built: {why} | |")
            continue
        counts = collections.Counter(o["class"] for o in row["opaque"])
        opaque = ", ".join(f"{k}×{v}" for k, v in counts.items()) or "none"
        first = row["opaque"][0] if row["opaque"] else None
        refusal = f"`{first['key']}` {first['class']} ({first['area']})" if first else "—"
        lines.append(
            f"| {row['model']} | {row['source']} | {row['params']} | {row['ops']} | {opaque} "
            f"| {refusal} |"
        )
    lines += ["", "| model | " + " | ".join(SHORT[m] for m in GRADIENT_FAMILY + RULE_BASED) + " |"]
    lines.append("|---" * (1 + len(GRADIENT_FAMILY + RULE_BASED)) + "|")
    for row in rows:
        if not row["analyzers"]:
            continue
        marks = [_mark(row["analyzers"][m]) for m in GRADIENT_FAMILY + RULE_BASED]
        lines.append(f"| {row['model']} | " + " | ".join(marks) + " |")
    lines += ["", "Blockers (class → area → models):", ""]
    blockers: dict = collections.defaultdict(set)
    for row in rows:
        for o in row.get("opaque", []):
            blockers[(o["class"], o["area"])].add(row["model"])
    lines.append("| op / layer class | waits for | models |")
    lines.append("|---|---|---|")
    for (cls, area), models in sorted(blockers.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"| {cls} | {area} | {', '.join(sorted(models))} |")
    problems = [
        (row["model"], m, e)
        for row in rows
        for m, e in row["analyzers"].items()
        if e["status"] in ("differs", "error", "bad")
    ]
    if problems:
        lines += ["", "Problems:", ""]
        lines += [
            f"- {model} / {m}: {json.dumps(e, ensure_ascii=False)}" for model, m, e in problems
        ]
    return "\n".join(lines)


def _explained(row: dict, methods) -> bool:
    return bool(row["analyzers"]) and all(row["analyzers"][m]["status"] == "ok" for m in methods)


def summary(rows: list[dict]) -> str:
    """The survey's figure: how many models every analyzer explains, how many the gradient
    family does."""
    every = sum(_explained(r, GRADIENT_FAMILY + RULE_BASED) for r in rows)
    family = sum(_explained(r, GRADIENT_FAMILY) for r in rows)
    return (
        f"{every} of {len(rows)} small models explained by every analyzer; "
        f"{family} by the gradient family."
    )


def _refusal(row: dict, methods) -> str:
    """✓ where every method of ``methods`` runs, else what stops the first that does not."""
    for m in methods:
        entry = row["analyzers"][m]
        if entry["status"] == "ok":
            continue
        if entry["status"] == "refused":
            return f"refused: {entry['by']} ({_why(entry['message'])})"
        return f"{SHORT[m]}: {entry.get('note') or entry.get('error', entry['status'])}"[:160]
    return "✓"


def _why(message: str) -> str:
    """The reason in a refusal message, shortened for a table cell."""
    for marker in ("could not be looked into: ", "is not supported: "):
        if marker in message:
            reason = message.split(marker, 1)[1]
            reason = reason.split(". The gradient family")[0].split(" Supported layers")[0]
            if "on symbolic inputs failed (" in reason:  # the error inside, its first sentence
                inner = reason.split("on symbolic inputs failed (", 1)[1].split(". ")[0]
                reason = "its `call` fails on symbolic inputs: " + inner.rstrip(")")
            return reason[:120]
    return message[:120]


_LRP_LIKE = tuple(m for m in RULE_BASED if not m.startswith("Pattern"))
_PATTERNS = ("PatternNet", "PatternAttribution")


def readme_table(rows: list[dict]) -> str:
    """Models × analyzer groups: ✓ (the gradient family: equal to the tape; the others: built,
    finite, non-zero), or what refuses it (the layer, and why)."""
    lines = [
        summary(rows),
        "",
        "| model | from | gradient family (= tape) | LRP, DeepTaylor, DeConvNet, Guided BackProp "
        "| PatternNet, PatternAttribution |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if not row["analyzers"]:
            why = row.get("skipped") or row.get("build_error")
            lines.append(f"| {row['model']} | | not built: {why} | | |")
            continue
        patterns = _refusal(row, _PATTERNS)
        if patterns == "✓" and row.get("renormalized"):
            patterns = "✓ (PatternNet with `renormalize=True`: float32 overflow otherwise)"
        cells = [_refusal(row, GRADIENT_FAMILY), _refusal(row, _LRP_LIKE), patterns]
        lines.append(f"| {row['model']} | {row['source']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tests import model_matrix as mm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated names (default: every model)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--readme", action="store_true", help="print the README's table only")
    parser.add_argument("--load", help="report the rows of a --json file instead of surveying")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the analyzers compiled (default: eagerly, as the tests do: at these sizes "
        "tracing 14 analyzers per model costs more than it saves; the rules are the same)",
    )
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else mm.names()
    rows = []
    if args.load:
        with open(args.load, encoding="utf-8") as f:
            rows = [row for row in json.load(f) if row["model"] in names]
    if not args.compiled:
        import tensorflow as tf

        tf.config.run_functions_eagerly(True)
    for name in [] if args.load else names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows.append(survey_model(name))
        print(f"# {name}: {rows[-1].get('cpu_s', '-')} s CPU", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1, ensure_ascii=False)
    print(readme_table(rows) if args.readme else summary(rows) + "\n\n" + markdown_report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
