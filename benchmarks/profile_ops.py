"""Where an analyzer's time goes: TensorFlow's profiler, self time summed per op type.

ResNet50 (or ``--model``: ViTB16, BertBase at 128 tokens, ...) at 224×224, 8 images, built as in
``analyze_resnet.py``. The compiled tape gradient and each analyzer run once to warm up, then
``--calls`` times under ``tf.profiler``; the profile's framework-op statistics give each
TensorFlow op type's self time (all threads, so it tracks CPU time). Printed: a markdown table
per analyzer of the op types that differ most from the tape gradient's, in milliseconds per
call. The pattern analyzers get patterns shaped like their kernels (zeros) instead of a fit:
the arithmetic does not depend on their values.

Usage::

    python benchmarks/profile_ops.py --only LRPEpsilon PatternNet
    python benchmarks/profile_ops.py --size 64 --only LRPZ     # a quick look
    python benchmarks/profile_ops.py --model ViTB16 --calls 1 --only PatternNet
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _analyze_resnet():
    path = Path(__file__).with_name("analyze_resnet.py")
    spec = importlib.util.spec_from_file_location("_bench_analyze_resnet", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def op_self_times(fn, calls: int) -> dict[str, float]:
    """Milliseconds of self time per op type, per call of ``fn``."""
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            fn()
        tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        data, ok = plugin.xspace_to_tools_data(files, "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"the profiler gave no op statistics: {data[:200]!r}")
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    kind, self_time = columns.index("type"), columns.index("total_self_time")
    totals: dict[str, float] = collections.defaultdict(float)
    for row in table["rows"]:
        values = [c["v"] for c in row["c"]]
        if values[kind] != "IDLE":
            totals[values[kind]] += values[self_time] / 1000.0 / calls
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ResNet50")
    parser.add_argument("--size", type=int, default=None, help="default 224; BERT: 128 tokens")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2, help="profiled calls (default 2)")
    parser.add_argument("--rows", type=int, default=12, help="op types shown per analyzer")
    parser.add_argument("--only", nargs="*", default=None, help="analyzer labels or class names")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 128 if args.model == "BertBase" else 224

    import tensorflow as tf

    resnet = _analyze_resnet()
    bench = resnet.bench
    model, x = resnet.workload(args.model, args.size, args.images)
    inputs = [tf.constant(a) for a in (x if isinstance(x, list) else [x])]
    grad = resnet.tape_gradient(model, x)
    grad()
    tape = op_self_times(grad, args.calls)
    print(f"tape gradient: {sum(tape.values()):.0f} ms of op self time per call\n")
    for spec, _ in resnet.ANALYZERS:
        if args.only and spec.label not in args.only and spec.name not in args.only:
            continue
        analyzer = bench.load_analyzer(spec)(model, **spec.kwargs)
        if spec.fit:
            resnet.set_zero_patterns(analyzer)
        fn = analyzer._compiled_fn()
        selection = tf.zeros((resnet.samples(x),), tf.int32)
        fn(inputs, selection)
        times = op_self_times(
            lambda a=fn, s=selection: [t.numpy() for t in a(inputs, s) if t is not None],
            args.calls,
        )
        total = sum(times.values())
        print(
            f"### {spec.label}: {total:.0f} ms per call, "
            f"{total / sum(tape.values()):.2f}× the tape gradient's op time\n"
        )
        print("| op type | tape gradient (ms) | analyzer (ms) | difference |")
        print("|---|---:|---:|---:|")
        kinds = sorted(
            set(tape) | set(times), key=lambda k: -abs(times.get(k, 0.0) - tape.get(k, 0.0))
        )
        for kind in kinds[: args.rows]:
            a, t = times.get(kind, 0.0), tape.get(kind, 0.0)
            print(f"| {kind} | {t:.0f} | {a:.0f} | {a - t:+.0f} |")
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
