"""What fitting patterns costs, against one epoch of training, and how it spreads over replicas.

(a) Time and memory. The VGG-style network (64×64×3; four blocks of two 3×3 convolutions with
64, 64, 128, 128 filters, each block followed by 2×2 max pooling; Flatten, Dense 256 relu,
Dense 10) and ``--images`` random images (default 512) at batch 32:

- time: ``PatternComputer(model).compute(x, batch_size=32)`` against one epoch of
  ``model.fit(x, y, batch_size=32)`` (SGD, sparse categorical cross-entropy), in one process,
  each run once untimed first; then they alternate ``--repeats`` times. The table gives the
  medians and the median of the per-repeat ratios, of wall-clock time and of process CPU time
  (steadier on a shared machine). Each ``compute`` traces its step function anew: that fixed
  cost is in its time, and shown on its own (a one-batch fit).
- memory: each measurement in a fresh subprocess, reading its peak resident set size
  (``ru_maxrss``): a baseline that builds the model, the data and the compiled model, and the
  same plus one fit or plus one training epoch. The table gives each one's increase over the
  baseline.

(b) ResNet50 (``--skip-resnet`` leaves it out): ``keras.applications.ResNet50(weights=None,
classifier_activation=None)`` at ``--resnet-size`` (default 224) with randomized BatchNorm
statistics (``application()`` of ``benchmarks/analyze_resnet.py``), ``--resnet-images`` random
images (default 64) at batch ``--resnet-batch`` (default 16): ``compute`` (BatchNorm folded, as
by default) against one epoch of ``model.fit`` (SGD, 1000 classes; BatchNorm in training mode,
as training runs it), timed as in (a), and peak memory as in (a) unless ``--skip-memory``.

(c) Replicas: ``--replicas 1 2 4`` logical CPU devices (a fresh subprocess for each, the
devices configured before TensorFlow's first op), ``MirroredStrategy`` over them, statistics
throughput in images/s on ``--replica-images`` images (after an untimed fit). On a CPU-only
machine this shows the overhead of the replica logic, not a speed-up: all replicas share the
same cores.

Usage::

    python benchmarks/fit.py                   # everything (about 35 min on 2 loaded cores, ResNet50 most of it)
    python benchmarks/fit.py --quick           # one repeat, fewer images for (c)
    python benchmarks/fit.py --skip-memory --skip-replicas
    python benchmarks/fit.py --skip-vgg --skip-replicas --repeats 5   # ResNet50 only

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZE = 32
RESULT = "RESULT "


# -- the workload (runs in the children) ---------------------------------------------------------


def build_model():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    h = inputs
    for filters in (64, 64, 128, 128):
        h = layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = layers.MaxPooling2D(2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(256, activation="relu")(h)
    outputs = layers.Dense(10)(h)
    return keras.Model(inputs, outputs, name="vgg_style")


def make_data(n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return (
        rng.uniform(0, 1, (n, 64, 64, 3)).astype(np.float32),
        rng.integers(0, 10, n).astype(np.int64),
    )


def resnet50(size: int):
    """ResNet50 with random weights and randomized BatchNorm statistics, as the analyze
    benchmark builds it (``benchmarks/analyze_resnet.py``, loaded as a module: the folder is
    not a package)."""
    import importlib.util

    path = Path(__file__).with_name("analyze_resnet.py")
    spec = importlib.util.spec_from_file_location("_bench_analyze_resnet", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.application("ResNet50", size)


def make_resnet_data(n: int, size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return (
        rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32),
        rng.integers(0, 1000, n).astype(np.int64),
    )


def compiled_model(network: str = "vgg", size: int = 224):
    import keras

    model = build_model() if network == "vgg" else resnet50(size)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def workload(args):
    """``(model, x, y, batch size)`` of the network ``args.network`` names."""
    if args.network == "vgg":
        x, y = make_data(args.images)
        return compiled_model(), x, y, BATCH_SIZE
    x, y = make_resnet_data(args.images, args.size)
    return compiled_model("resnet50", args.size), x, y, args.batch


def child_time(args) -> dict:
    from pattern_keras.patterns import PatternComputer

    model, x, y, batch = workload(args)
    computer = PatternComputer(model)

    def fit():
        computer.compute(x, batch_size=batch, verbose=0)

    def train():
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)

    first = {"fit": timed(fit), "train": timed(train)}  # warm-up: both trace here
    runs = {"fit": [], "train": []}
    for _ in range(args.repeats):
        runs["train"].append(timed(train))
        runs["fit"].append(timed(fit))
    one_batch = timed(lambda: computer.compute(x[:batch], batch_size=batch, verbose=0))
    return {"runs": runs, "first": first, "one_batch": one_batch}


def child_memory(args) -> dict:
    import resource

    from pattern_keras.patterns import PatternComputer

    model, x, y, batch = workload(args)
    if args.child == "memory-fit":
        PatternComputer(model).compute(x, batch_size=batch, verbose=0)
    elif args.child == "memory-train":
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_replicas(args) -> dict:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * args.n
    )

    from pattern_keras.patterns import PatternComputer

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.n)])
    model = build_model()
    x, _ = make_data(args.images)
    computer = PatternComputer(model, strategy=strategy)

    def fit():
        computer.compute(x, batch_size=BATCH_SIZE, verbose=0)

    fit()  # warm-up
    runs = [timed(fit) for _ in range(args.repeats)]
    return {"replicas": strategy.num_replicas_in_sync, "runs": runs, "images": args.images}


# -- the driver ------------------------------------------------------------------------------


def run_child(child: str, timeout: float, **options) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", child]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # TensorFlow catches SIGTERM
        proc.communicate()
        raise RuntimeError(f"{child} ran past {timeout} s; killed") from None
    for line in out.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    raise RuntimeError(f"{child} failed (exit {proc.returncode}):\n{err[-3000:]}")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report_time(result: dict, images: int, batch: int = BATCH_SIZE) -> str:
    fit = result["runs"]["fit"]
    train = result["runs"]["train"]
    rows = []
    for i, what in enumerate(("wall", "CPU")):
        f = statistics.median(r[i] for r in fit)
        t = statistics.median(r[i] for r in train)
        ratio = statistics.median(a[i] / b[i] for a, b in zip(fit, train))
        rows.append([what, f"{t:.1f} s", f"{f:.1f} s", f"{ratio:.2f}×"])
    text = table(
        [
            "time",
            f"training epoch ({images} images, batch {batch})",
            "PatternComputer.compute",
            "fit / epoch (median ratio)",
        ],
        rows,
    )
    first = result["first"]
    wall, cpu = result["one_batch"]
    return text + (
        f"\n\nFirst runs (with tracing, untimed above): epoch {first['train'][0]:.1f} s wall / "
        f"{first['train'][1]:.1f} s CPU, fit {first['fit'][0]:.1f} s / {first['fit'][1]:.1f} s. "
        f"A refit of one batch (the step already traced): {wall:.1f} s wall, {cpu:.1f} s CPU. "
        f"{len(fit)} timed repeat(s)."
    )


def report_memory(results: dict) -> str:
    base = results["memory-baseline"]["maxrss_mb"]
    fit = results["memory-fit"]["maxrss_mb"] - base
    train = results["memory-train"]["maxrss_mb"] - base
    return table(
        ["peak RSS", "baseline (model + data)", "training epoch", "PatternComputer", "fit / epoch"],
        [["MB", f"{base:.0f}", f"+{train:.0f}", f"+{fit:.0f}", f"{fit / train:.2f}×"]],
    )


def report_replicas(results: list[dict]) -> str:
    rows = []
    single = None
    for r in results:
        wall = statistics.median(run[0] for run in r["runs"])
        cpu = statistics.median(run[1] for run in r["runs"])
        throughput = r["images"] / wall
        single = single or throughput
        rows.append(
            [
                str(r["replicas"]),
                f"{wall:.1f} s",
                f"{cpu:.1f} s",
                f"{throughput:.1f}",
                f"{r['images'] / cpu:.1f}",
                f"{throughput / single:.2f}×",
            ]
        )
    return table(
        [
            "replicas (logical CPUs)",
            f"fit ({results[0]['images']} images), wall",
            "CPU",
            "images/s",
            "images per CPU-second",
            "images/s vs 1 replica",
        ],
        rows,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resnet-images", type=int, default=64)
    parser.add_argument("--resnet-size", type=int, default=224)
    parser.add_argument("--resnet-batch", type=int, default=16)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--replica-images", type=int, default=256)
    parser.add_argument(
        "--quick", action="store_true", help="one timed repeat; 128 images for the replica table"
    )
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-vgg", action="store_true", help="no VGG-style time or memory")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-replicas", action="store_true")
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds before a measurement subprocess is killed",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--network", default="vgg", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH_SIZE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        handler = {"time": child_time, "replicas": child_replicas}.get(args.child, child_memory)
        print(RESULT + json.dumps(handler(args)), flush=True)
        return

    if args.quick:
        args.repeats = 1
        args.replica_images = 128
    print(f"# Pattern fitting benchmark ({os.cpu_count()} CPUs)\n", flush=True)
    if not args.skip_time and not args.skip_vgg:
        result = run_child("time", args.timeout, images=args.images, repeats=args.repeats)
        print("## Time: PatternComputer.compute vs one training epoch\n")
        print(report_time(result, args.images) + "\n", flush=True)
    if not args.skip_memory and not args.skip_vgg:
        results = {
            c: run_child(c, args.timeout, images=args.images)
            for c in ("memory-baseline", "memory-fit", "memory-train")
        }
        print("## Peak memory (each in its own process)\n")
        print(report_memory(results) + "\n", flush=True)
    if not args.skip_resnet:
        resnet = dict(
            network="resnet50",
            images=args.resnet_images,
            size=args.resnet_size,
            batch=args.resnet_batch,
        )
        where = f"ResNet50 at {args.resnet_size}×{args.resnet_size}"
        if not args.skip_time:
            result = run_child("time", args.timeout, repeats=args.repeats, **resnet)
            print(f"## Time, {where}: PatternComputer.compute vs one training epoch\n")
            print(report_time(result, args.resnet_images, args.resnet_batch) + "\n", flush=True)
        if not args.skip_memory:
            results = {
                c: run_child(c, args.timeout, **resnet)
                for c in ("memory-baseline", "memory-fit", "memory-train")
            }
            print(f"## Peak memory, {where} (each in its own process)\n")
            print(report_memory(results) + "\n", flush=True)
    if not args.skip_replicas:
        results = [
            run_child(
                "replicas", args.timeout, n=n, images=args.replica_images, repeats=args.repeats
            )
            for n in args.replicas
        ]
        print("## Statistics throughput with MirroredStrategy\n")
        print(report_replicas(results) + "\n", flush=True)


if __name__ == "__main__":
    main()
