"""The evidence table: every test of :mod:`pattern_keras.evaluation` for several methods on one
model, as one table (Markdown and CSV) with its figures.

Used by ``examples/evidence.py`` and by ``pattern-keras evaluate``. One row per method; a
pattern analyzer's row uses its own patterns ("kept" in the randomization tests), and with
``refit_data`` a second row "(patterns re-fitted)" carries the randomization tests with
patterns re-fitted on each randomized model.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pattern_keras.evaluation.degradation import image_degradation, plot_degradation
from pattern_keras.evaluation.groundtruth import signal_cosine, topk_precision
from pattern_keras.evaluation.perturbation import insertion, mufidelity, plot_insertion
from pattern_keras.evaluation.randomization import random_logit_test, randomization_test

__all__ = ["COLUMNS", "EvidenceTable", "evidence_table"]

#: (key, header, better): the table's columns after the method; ``better`` is "high" or "low".
COLUMNS = (
    ("aopc", "deletion AOPC", "high"),
    ("deletion_auc", "deletion AUC", "low"),
    ("insertion_auc", "insertion AUC", "high"),
    ("mufidelity", "MuFidelity", "high"),
    ("signal_cosine", "signal cosine", "high"),
    ("topk", "top-k precision", "high"),
    ("mprt_spearman_abs", "MPRT |ρ| (all layers)", "low"),
    ("mprt_ssim", "MPRT SSIM (all layers)", "low"),
    ("independent_spearman_abs", "independent |ρ| (mean)", "low"),
    ("smprt_spearman_abs", "sMPRT |ρ| (all layers)", "low"),
    ("emprt", "eMPRT", "high"),
    ("logit_ssim", "random-logit SSIM", "low"),
    ("logit_spearman", "random-logit ρ", "low"),
)

_QUIET = (r".*explanation is zero everywhere.*", r".*Patterns undefined.*")


@dataclasses.dataclass(frozen=True, eq=False)
class EvidenceTable:
    """Outcome of :func:`evidence_table`.

    Attributes
    ----------
    rows : list of dict
        One dict per method: ``"method"`` and every key of :data:`COLUMNS` (NaN where a test
        does not apply).
    columns : tuple of (str, str, str)
        :data:`COLUMNS`, the keys, headers and which way is better.
    results : dict
        The full results by test: ``"deletion"``, ``"insertion"``, ``"mufidelity"``,
        ``"random_logit"`` and the randomization modes (``"cascading"``, ``"independent"``).
    files : dict of str to str
        What was written (name -> path) when an output folder was given.
    seconds : float
        Wall time of the whole evaluation.
    """

    rows: list[dict[str, Any]]
    columns: tuple[tuple[str, str, str], ...]
    results: dict[str, Any]
    files: dict[str, str]
    seconds: float

    def to_markdown(self, digits: int = 3) -> str:
        """The table in Markdown, ``↑``/``↓`` after each header saying which way is better.

        Parameters
        ----------
        digits : int
            Decimals shown.

        Returns
        -------
        str
        """
        keys = [k for k, _, _ in self.columns if self._used(k)]
        headers = [h + (" ↑" if b == "high" else " ↓") for k, h, b in self.columns if k in keys]
        lines = ["| method | " + " | ".join(headers) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in self.rows:
            cells = [_format(row[k], digits) for k in keys]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """The table as CSV text (every column, empty where a test does not apply).

        Returns
        -------
        str
        """
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["method", *[k for k, _, _ in self.columns]])
        for row in self.rows:
            writer.writerow(
                [row["method"], *[_format(row[k], 6, empty="") for k, _, _ in self.columns]]
            )
        return out.getvalue()

    def _used(self, key: str) -> bool:
        return any(np.isfinite(row[key]) for row in self.rows)


def _format(value: float, digits: int, empty: str = "–") -> str:
    return empty if not np.isfinite(value) else f"{value:.{digits}f}"


def evidence_table(
    model: Any,
    analyzers: Mapping[str, Any],
    x: Any,
    *,
    refit_data: Any = None,
    refit: Sequence[str] | None = None,
    signal: Any = None,
    support: Any = None,
    patch_size: int | None = None,
    steps: int = 16,
    fill: str = "mean",
    grid: int = 9,
    subsets: int = 200,
    smooth_samples: int = 8,
    modes: Sequence[str] = ("cascading", "independent"),
    seed: int = 0,
    batch_size: int = 32,
    output_dir: str | None = None,
    name: str = "model",
    verbose: int = 1,
) -> EvidenceTable:
    """Run every test on every method and gather one row per method.

    Parameters
    ----------
    model : keras.Model
        A classifier with one output ``(batch, classes)`` (never changed).
    analyzers : mapping of str to analyzer
        ``{label: analyzer}``, pattern analyzers fitted.
    x : array_like, shape (n, ...)
        The samples the tests run on. Image batches ``(n, H, W, C)`` get deletion and
        insertion; every input gets MuFidelity and the randomization tests.
    refit_data : array_like, optional
        Data for the "(patterns re-fitted)" rows of the cascading randomization test.
    refit : sequence of str, optional
        Which pattern analyzers get a re-fitted row (default: all of them).
    signal, support : array_like, optional
        The true signal of each sample and its support (known-signal data): adds the signal
        cosine and top-k precision of each method.
    patch_size : int, optional
        Deletion/insertion patch side; default ``max(1, min(H, W) // 8)``.
    steps : int
        Deletion/insertion steps.
    fill : str
        Deletion and MuFidelity baseline (insertion starts from a blurred image).
    grid, subsets : int
        MuFidelity's grid side and number of subsets.
    smooth_samples : int
        sMPRT's samples per explanation (0 skips sMPRT).
    modes : sequence of str
        Randomization modes to run.
    seed : int
        Seeds every random choice.
    batch_size : int
        Samples per analyze call.
    output_dir : str, optional
        Where to write ``NAME.md``, ``NAME.csv`` and the figures (PNG).
    name : str
        File name stem and figure title.
    verbose : int
        1: one line per test; 0: silent.

    Returns
    -------
    EvidenceTable
    """
    start = time.perf_counter()
    x = np.asarray(x)
    image = x.ndim == 4
    say = print if verbose else (lambda *a, **k: None)
    if patch_size is None and image:
        patch_size = max(1, min(x.shape[1], x.shape[2]) // 8)
    labels = list(analyzers)
    rows = {label: {k: np.nan for k, _, _ in COLUMNS} | {"method": label} for label in labels}
    results: dict[str, Any] = {}
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        explanations = {
            label: np.asarray(a.analyze(x, batch_size=batch_size, verbose=0), dtype=np.float64)
            for label, a in analyzers.items()
        }
        if image:
            say(f"[{name}] deletion and insertion ({steps} steps of {patch_size}x{patch_size})")
            _perturbation_columns(
                model, x, explanations, rows, results, patch_size, steps, fill, seed
            )
        say(f"[{name}] MuFidelity ({subsets} subsets)")
        results["mufidelity"] = {}
        for label, e in explanations.items():
            r = mufidelity(model, e, x, grid=grid, subsets=subsets, fill=fill, seed=seed)
            results["mufidelity"][label] = r
            rows[label]["mufidelity"] = r.score
        if signal is not None:
            for label, e in explanations.items():
                rows[label]["signal_cosine"] = float(np.mean(signal_cosine(e, signal)))
                if support is not None:
                    rows[label]["topk"] = float(np.mean(topk_precision(e, support)))
        say(f"[{name}] random-logit test")
        logit = random_logit_test(model, analyzers, x, seed=seed, batch_size=batch_size)
        results["random_logit"] = logit
        for label in labels:
            scores = logit[label]
            rows[label]["logit_ssim"] = scores.get("ssim", np.nan)
            rows[label]["logit_spearman"] = scores.get("spearman", np.nan)
    for mode in modes:
        say(f"[{name}] {mode} randomization")
        options = dict(mode=mode, seed=seed, batch_size=batch_size)
        if mode == "cascading":
            options["smooth_samples"] = smooth_samples
        r = randomization_test(model, analyzers, x, **options)
        results[mode] = r
        _randomization_columns(r, rows)
        chosen = _refitted(analyzers, refit) if refit_data is not None else []
        if mode == "cascading" and chosen:
            say(f"[{name}] {mode} randomization, patterns re-fitted ({len(chosen)} methods)")
            r = randomization_test(
                model, {k: analyzers[k] for k in chosen}, x, refit_data=refit_data, **options
            )
            results[f"{mode}_refitted"] = r
            _randomization_columns(r, rows, only_refitted=True)
    rows = {k: v for k, v in rows.items() if k != "random"} | (
        {"random": rows["random"]} if "random" in rows else {}
    )
    table = EvidenceTable(
        rows=list(rows.values()),
        columns=COLUMNS,
        results=results,
        files={},
        seconds=0.0,
    )
    files = _write(table, output_dir, name) if output_dir else {}
    return dataclasses.replace(table, files=files, seconds=time.perf_counter() - start)


def _perturbation_columns(model, x, explanations, rows, results, patch, steps, fill, seed):
    steps = min(steps, _n_patches(x, patch))
    deletion = {
        label: image_degradation(model, e, x, patch_size=patch, steps=steps, fill=fill, seed=seed)
        for label, e in explanations.items()
    }
    deletion["random"] = image_degradation(
        model, None, x, patch_size=patch, steps=steps, fill=fill, order="random", seed=seed
    )
    inserted = {
        label: insertion(model, e, x, patch_size=patch, steps=steps, seed=seed)
        for label, e in explanations.items()
    }
    inserted["random"] = insertion(
        model, None, x, patch_size=patch, steps=steps, order="random", seed=seed
    )
    rows["random"] = {k: np.nan for k, _, _ in COLUMNS} | {"method": "random order"}
    for label in deletion:
        rows[label]["aopc"] = deletion[label].aopc
        rows[label]["deletion_auc"] = deletion[label].auc
        rows[label]["insertion_auc"] = inserted[label].auc
    results["deletion"], results["insertion"] = deletion, inserted


def _n_patches(x: np.ndarray, patch: int) -> int:
    return -(-x.shape[1] // patch) * -(-x.shape[2] // patch)


def _refitted(analyzers: Mapping[str, Any], refit: Sequence[str] | None) -> list[str]:
    patterned = [k for k, a in analyzers.items() if a.needs_patterns]
    if refit is None:
        return patterned
    unknown = [k for k in refit if k not in patterned]
    if unknown:
        raise ValueError(f"refit names {unknown}, which are not pattern analyzers {patterned}.")
    return list(refit)


def _randomization_columns(result, rows, only_refitted: bool = False) -> None:
    cascading = result.mode == "cascading"
    emprt = result.emprt
    for method in result.methods:
        if only_refitted and not method.endswith("(patterns re-fitted)"):
            continue
        label = method.removesuffix(" (patterns kept)")
        if label not in rows:  # a re-fitted variant: its own row
            rows[label] = {k: np.nan for k, _, _ in COLUMNS} | {"method": label}
        scores = result[method]
        if cascading:
            last = scores[result.layers[-1]]
            rows[label]["mprt_spearman_abs"] = last.get("spearman_abs", np.nan)
            rows[label]["mprt_ssim"] = last.get("ssim", np.nan)
            rows[label]["emprt"] = emprt[method]
            if result.smooth_scores is not None:
                curve = result.curves("spearman_abs", smooth=True)[method]
                rows[label]["smprt_spearman_abs"] = float(curve[-1])
        else:
            values = [scores[layer]["spearman_abs"] for layer in result.layers]
            rows[label]["independent_spearman_abs"] = float(np.nanmean(values))


def planned_files(
    folder: str,
    name: str,
    images: bool,
    modes: Sequence[str] = ("cascading", "independent"),
    smooth: bool = True,
) -> list[str]:
    """The paths :func:`evidence_table` writes for these settings (so that a caller can
    check them before any work, as the command line does).

    Parameters
    ----------
    folder : str
        The output folder.
    name : str
        The table's name (the files' stem).
    images : bool
        Whether the data are images (deletion and insertion, with their figures, run).
    modes : sequence of str
        The randomization modes.
    smooth : bool
        Whether sMPRT runs (``smooth_samples > 0``).

    Returns
    -------
    list of str
    """
    keys = ["random_logit"]
    if images:
        keys += ["deletion", "insertion"]
    for mode in modes:
        keys.append(f"{mode}_curves")
        if mode == "cascading":
            keys.append("cascade_grid")
            if smooth:
                keys.append("smprt_curves")
    paths = [os.path.join(folder, f"{name}.md"), os.path.join(folder, f"{name}.csv")]
    return paths + [os.path.join(folder, f"{name}_{key}.png") for key in keys]


def _write(table: EvidenceTable, folder: str, name: str) -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    files = {}

    def save(key: str, figure) -> None:
        path = os.path.join(folder, f"{name}_{key}.png")
        figure.savefig(path, dpi=100)
        files[key] = path

    for key, text in (("markdown", table.to_markdown()), ("csv", table.to_csv())):
        path = os.path.join(folder, f"{name}.{'md' if key == 'markdown' else 'csv'}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        files[key] = path
    results = table.results
    if "deletion" in results:
        save("deletion", plot_degradation(results["deletion"], title=f"{name}: deletion"))
        save("insertion", plot_insertion(results["insertion"], title=f"{name}: insertion"))
    save("random_logit", results["random_logit"].plot())
    for mode in ("cascading", "independent"):
        if mode in results:
            save(f"{mode}_curves", results[mode].plot())
            if mode == "cascading":
                save("cascade_grid", results[mode].plot_cascade(0))
                if results[mode].smooth_scores is not None:
                    save("smprt_curves", results[mode].plot(smooth=True))
    return files
