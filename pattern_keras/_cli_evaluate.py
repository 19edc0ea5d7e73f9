"""``pattern-keras evaluate``: the evidence table for the user's own model.

::

    pattern-keras evaluate MODEL DATA -m NAME [-m NAME ...] [--patterns patterns.h5]
                      [--fit-data FIT] -o OUT_DIR [--patch-size K] [--steps N]
                      [--subsets N] [--smooth-samples N] [--mode cascading|independent ...]
                      [--overwrite] [data options]

Writes ``OUT_DIR/evaluation.md``, ``OUT_DIR/evaluation.csv`` (one row per method: deletion,
insertion, MuFidelity, the randomization and random-logit tests) and the figures. Kept out of
``cli.py``: :func:`add_parser` builds the subcommand, :func:`run` runs it. Its outputs follow
the command line's rules: never the model, the data or the pattern file; an existing file only
with ``--overwrite`` or when pattern-keras wrote it.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, add_data_options: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``sub`` (an ``add_subparsers`` object).

    Parameters
    ----------
    sub : argparse._SubParsersAction
        Where the subcommand goes.
    add_data_options : callable
        ``cli._add_data_options``: the options shared with ``fit`` and ``analyze``.

    Returns
    -------
    argparse.ArgumentParser
    """
    p = sub.add_parser(
        "evaluate",
        help="the evidence table: sanity checks and faithfulness tests of methods",
        description="Run deletion and insertion (images), MuFidelity, the model "
        "parameter randomization tests (cascading and independent; sMPRT, eMPRT) and the "
        "random-logit test for each method on MODEL and DATA, and write evaluation.md, "
        "evaluation.csv and the figures to the output folder.",
    )
    p.add_argument("model", metavar="MODEL", help="a .keras or .h5 model file")
    p.add_argument("data", metavar="DATA", help="a .npy, a .npz, a folder of images, or one image")
    p.add_argument(
        "-m",
        "--method",
        required=True,
        metavar="NAME",
        action="append",
        help="analyzer name (see 'pattern-keras methods'); give it several times",
    )
    p.add_argument(
        "--patterns",
        metavar="PATTERNS.h5",
        help="fitted patterns for pattern.net / pattern.attribution (kept in the tests)",
    )
    p.add_argument(
        "--fit-data",
        metavar="FIT",
        help="data to re-fit the patterns on at every randomization step (the "
        "'(patterns re-fitted)' rows); read like DATA",
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files in DIR that pattern-keras did not write (never the "
        "model, the data or the pattern file)",
    )
    p.add_argument("--patch-size", type=int, help="deletion/insertion patch side (default H/8)")
    p.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (16)")
    p.add_argument("--subsets", type=int, default=200, help="MuFidelity subsets (200)")
    p.add_argument("--smooth-samples", type=int, default=8, help="sMPRT samples, 0: off (8)")
    p.add_argument(
        "--mode",
        action="append",
        choices=("cascading", "independent"),
        help="randomization modes (default both)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_data_options(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``pattern-keras evaluate``; returns the exit code.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed options (see :func:`add_parser`).

    Returns
    -------
    int
        0 when done.

    Raises
    ------
    UsageError
        For unknown methods, missing patterns, or files that cannot be read.
    """
    from pattern_keras import cli

    names = _check_methods(args)
    for option in ("steps", "subsets", "batch_size"):
        cli._check_positive("--" + option.replace("_", "-"), getattr(args, option))
    if args.patch_size is not None:
        cli._check_positive("--patch-size", args.patch_size)
    if args.smooth_samples < 0:
        raise cli.UsageError(f"--smooth-samples must be >= 0; got {args.smooth_samples}")
    cli._check_output_folder(args.output)
    cli._check_exists(args.model, "model file")
    cli._check_exists(args.data, "data")
    cli._quiet_tensorflow()
    import pattern_keras as pk
    from pattern_keras import _cli_output
    from pattern_keras.evaluation.report import evidence_table, planned_files

    model = cli.load_model(args.model, args.unsafe)
    x, _ = cli.load_data(args.data, args.key, args.image_size, args.preprocess, model)
    modes = tuple(dict.fromkeys(args.mode or ("cascading", "independent")))
    planned = planned_files(
        args.output, "evaluation", images=x.ndim == 4, modes=modes, smooth=args.smooth_samples > 0
    )
    protected = [args.model] + cli._data_files(args.data)
    protected += [p for p in (args.patterns, args.fit_data) if p is not None]
    if args.fit_data is not None:
        protected += cli._data_files(args.fit_data)
    cli._check_outputs(args, planned, protected)
    fit = None
    if args.fit_data is not None:
        fit, _ = cli.load_data(args.fit_data, args.key, args.image_size, args.preprocess, model)
    patterns = cli._load_patterns_for(args.patterns, model) if args.patterns else None
    analyzers = {}
    for method in names:
        kwargs: dict[str, Any] = {}
        if pk.analyzer_class(method).needs_patterns:
            if patterns is None:
                raise cli.UsageError(
                    f"'{method}' needs fitted patterns: give --patterns FILE (fit them with "
                    "'pattern-keras fit MODEL DATA -o FILE')"
                )
            kwargs = {"patterns": patterns, "pattern_type": dict(patterns.pattern_types)}
        try:
            analyzers[method] = pk.create_analyzer(method, model, **kwargs)
        except ValueError as err:
            raise cli.UsageError(
                f"cannot analyze model '{args.model}' with '{method}': {cli._one_line(err)}"
            ) from None
    if fit is not None and patterns is None:
        raise cli.UsageError(
            "--fit-data re-fits patterns: it needs --patterns and a pattern method"
        )
    table = evidence_table(
        model,
        analyzers,
        x,
        refit_data=fit,
        patch_size=args.patch_size,
        steps=args.steps,
        subsets=args.subsets,
        smooth_samples=args.smooth_samples,
        modes=modes,
        seed=args.seed,
        batch_size=args.batch_size,
        output_dir=args.output,
        name="evaluation",
        verbose=0 if args.quiet else 1,
    )
    _cli_output.record_outputs(list(table.files.values()))
    cli._say(args, table.to_markdown())
    cli._say(args, f"Wrote {len(table.files)} files to {args.output} in {table.seconds:.0f} s")
    return cli.EXIT_OK


def _check_methods(args: argparse.Namespace) -> list[str]:
    from pattern_keras import cli

    cli._quiet_tensorflow()
    from pattern_keras.analyzers.registry import analyzer_class, analyzer_names

    names = analyzer_names()
    methods = list(dict.fromkeys(args.method))
    for method in methods:
        if method not in names:
            raise cli.UsageError(
                f"unknown method '{method}'; known: {', '.join(names)} (see 'pattern-keras "
                "methods')"
            )
    if args.patterns is not None and not any(analyzer_class(m).needs_patterns for m in methods):
        raise cli.UsageError("--patterns is only used by pattern.net and pattern.attribution")
    return methods
