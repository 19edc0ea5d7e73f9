"""Regenerate what the repository shows from the current code.

    python tools/regenerate.py readme      # docs/images/*.png and the README's demo numbers
    python tools/regenerate.py notebooks   # notebooks/*.ipynb executed, outputs saved in them
    python tools/regenerate.py all

``readme`` runs ``pattern-keras demo`` (full size, seed 0, about 1.5 minutes on 2 CPU cores),
copies its three figures to ``docs/images/`` and rewrites the paragraph of the README between
``<!-- demo-numbers -->`` and ``<!-- /demo-numbers -->`` from its ``summary.txt`` metrics.
``notebooks`` executes each notebook top to bottom in a Jupyter kernel of this interpreter (full
settings, not the tests' quick ones) and writes it back with its outputs, so that the figures
show when the notebook is only viewed (on GitHub, in Colab before running).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURES = ("explanations", "degradation", "signal_quality")
START, END = "<!-- demo-numbers -->", "<!-- /demo-numbers -->"


def demo_paragraph(metrics: dict) -> str:
    """The README's sentence about the demo's numbers, from ``run_demo``'s metrics."""
    aopc, cos, top = metrics["aopc"], metrics["signal_cosine"], metrics["topk_precision"]
    fmt = lambda d, keys: ", ".join(f"{k} {d[k]:.2f}" for k in keys)
    methods = [k for k in aopc if k != "random"]
    return (
        f"The demo (2 logits, the predicted class's logit explained; `summary.txt`; test "
        f"accuracy {metrics['test_accuracy']:.2f}) shows the same picture: AOPC of the "
        f"image-degradation curves (2×2 patches) {fmt(aopc, methods)}, random order "
        f"{aopc['random']:.2f}; signal |cosine| {fmt(cos, list(cos))}; top-k precision "
        f"{fmt(top, list(top))}."
    )


def regenerate_readme() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pattern_keras.demo import run_demo

    with tempfile.TemporaryDirectory() as out:
        result = run_demo(out, quick=False, seed=0)
        for name in FIGURES:
            shutil.copyfile(result.files[name], ROOT / "docs" / "images" / f"{name}.png")
        paragraph = demo_paragraph(result.metrics)
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"README.md has no {START} ... {END} block to rewrite.")
    wrapped = _wrap(paragraph, 95)
    readme.write_text(pattern.sub(lambda _: f"{START}\n{wrapped}\n{END}", text), encoding="utf-8")
    print(
        f"Wrote docs/images/{{{','.join(FIGURES)}}}.png and the README's demo numbers:\n{wrapped}"
    )


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False))


def regenerate_notebooks() -> None:
    import nbclient
    import nbformat

    sys.path.insert(0, str(ROOT / "tests"))
    from notebook_env import repo_kernel

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        with (
            tempfile.TemporaryDirectory() as tmp,
            repo_kernel(pathlib.Path(tmp), quick=False) as (kernel_name, workdir),
        ):
            nb = nbformat.read(path, as_version=4)
            client = nbclient.NotebookClient(
                nb,
                kernel_name=kernel_name,
                timeout=1800,
                resources={"metadata": {"path": str(workdir)}},
            )
            client.execute()
        _strip_volatile(nb)
        nbformat.write(nb, path)
        print(f"Executed and saved {path.relative_to(ROOT)}")


def _strip_volatile(nb) -> None:
    """Drop what changes from run to run without meaning (timings, progress-bar redraws)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        # TensorFlow's start-up lines (stderr) and Keras progress-bar redraws (stdout, with
        # terminal escapes): noise in a saved file, and different on every run.
        cell["outputs"] = [
            o
            for o in cell.get("outputs", [])
            if not (
                o.get("name") == "stderr" or (o.get("name") == "stdout" and "\x1b[" in o["text"])
            )
        ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["readme", "notebooks", "all"])
    args = parser.parse_args(argv)
    if args.what in ("readme", "all"):
        regenerate_readme()
    if args.what in ("notebooks", "all"):
        regenerate_notebooks()


if __name__ == "__main__":
    main()
