"""Pattern fits in a separate process, for tests/test_distributed.py and tests/test_resume_merge.py.

Distribution strategies need a process of their own: logical CPU devices can only be configured
before TensorFlow runs its first op, and a MultiWorkerMirroredStrategy owns its process. The
tests run this script with ``sys.executable`` and compare what it writes with an in-process,
single-device fit of the same weights.

Usage::

    python tests/_fit_worker.py mirrored    --weights W.weights.h5 --data D.npz --out R.npz
                                            [--replicas 2]
    python tests/_fit_worker.py multiworker --weights W.weights.h5 --data D.npz --out R.npz
                                            [--checkpoint C.h5]        (TF_CONFIG in the env)
    python tests/_fit_worker.py killed      --weights W.weights.h5 --data D.npz
                                            --checkpoint C.h5 --kill-after K

``killed`` fits from a generator that SIGKILLs its own process when asked for batch ``K``: a
fit that dies without any chance to clean up, leaving only its last periodic checkpoint.

The results file holds, per case, the float64 patterns derived from the statistics
(``"<case>::<layer>"`` and ``"<case>::<layer>::neg"``), or the analyzer's float32 patterns for
the ``analyzer`` cases, and ``"<case>::n_samples"``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH_SIZE = 32
INPUT_SHAPE = (10, 10, 3)


#: (where, input kind, PatternComputer or analyzer.fit): every input kind and both entry
#: points, for a model built inside or outside ``strategy.scope()`` ("scope": built inside,
#: and fitted inside the scope too).
MIRRORED_CASES = (
    ("inside", "numpy", "computer"),
    ("inside", "dataset", "analyzer"),
    ("scope", "generator", "computer"),
    ("outside", "numpy", "analyzer"),
    ("outside", "dataset", "computer"),
    ("outside", "generator", "computer"),
)


_NO_EMPTY_BATCH = []


def no_empty_batch_layer():
    """The class ``NoEmptyBatch``: passes its input through, and fails on an empty batch.

    It stands for TensorFlow on the CPUs where a convolution of 0 images returns the wrong
    shape (AMD EPYC with oneDNN): a model holding it fails wherever pattern_keras would run a
    model op on an empty batch or an empty replica shard, on every machine. Registered with
    the engine as data movement ("move"), so every analyzer and the pattern fit call it.
    """
    if not _NO_EMPTY_BATCH:
        import keras
        import tensorflow as tf

        import pattern_keras as pk

        @keras.saving.register_keras_serializable("pattern_keras_tests")
        class NoEmptyBatch(keras.layers.Layer):
            def call(self, x):
                check = tf.debugging.assert_positive(
                    tf.shape(x)[0], message="NoEmptyBatch: a model op ran on an empty batch"
                )
                with tf.control_dependencies([check]):
                    return tf.identity(x)

            def compute_output_shape(self, input_shape):
                return input_shape

        pk.register_layer(NoEmptyBatch, "move")
        _NO_EMPTY_BATCH.append(NoEmptyBatch)
    return _NO_EMPTY_BATCH[0]


def build_cnn(seed: int = 0):
    """The small CNN of the distributed tests: padded and strided convolutions, pooling, dense.

    Its first layer fails on an empty batch (:func:`no_empty_batch_layer`). Deterministic for
    a given ``seed`` (the tests still pass the weights by file).
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE)
    h = no_empty_batch_layer()(name="no_empty_batch")(inputs)
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_same")(h)
    h = layers.Conv2D(6, 3, strides=2, padding="valid", name="conv_strided")(h)
    h = layers.ReLU(name="relu")(h)
    h = layers.MaxPooling2D(2, name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(8, activation="relu", name="dense")(h)
    outputs = layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, outputs, name="small_cnn")


def make_data(n: int, seed: int = 0, offset: float = 0.5):
    """``n`` images around ``offset`` (so the shifts matter), float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return (offset + rng.normal(size=(n,) + INPUT_SHAPE)).astype(np.float32)


def batches(x, batch_size: int = BATCH_SIZE, labels: bool = True, kill_at: int | None = None):
    """A generator of ``(x, y)`` batches; with ``kill_at``, SIGKILL this process when asked for
    batch ``kill_at`` (0-based), as a crash or an out-of-memory kill would."""
    import numpy as np

    for i, start in enumerate(range(0, len(x), batch_size)):
        if kill_at is not None and i >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        xb = x[start : start + batch_size]
        yield (xb, np.zeros(len(xb), np.int64)) if labels else xb


def stats_results(prefix: str, stats) -> dict:
    """float64 patterns of a PatternStatistics, flattened into npz entries."""
    out = {f"{prefix}::n_samples": stats.n_samples}
    for key, layer in stats.layers.items():
        a, a_neg = layer.patterns()
        out[f"{prefix}::{key}"] = a
        if a_neg is not None:
            out[f"{prefix}::{key}::neg"] = a_neg
    return out


def patterns_results(prefix: str, patterns) -> dict:
    out = {f"{prefix}::n_samples": patterns.n_samples}
    for key in patterns:
        out[f"{prefix}::{key}"] = patterns[key]
        if patterns.has_negative(key):
            out[f"{prefix}::{key}::neg"] = patterns.negative(key)
    return out


def _inputs(x):
    """The three kinds of input: a numpy array, a tf.data.Dataset of (x, y), a generator."""
    import numpy as np
    import tensorflow as tf

    y = np.zeros(len(x), np.int64)
    return {
        "numpy": lambda: x,
        "dataset": lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE),
        "generator": lambda: batches(x),
    }


def run_mirrored(args) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas
    )

    import numpy as np

    from pattern_keras import PatternNet
    from pattern_keras.patterns import PatternComputer

    devices = [f"/cpu:{i}" for i in range(args.replicas)]
    strategy = tf.distribute.MirroredStrategy(devices)
    assert strategy.num_replicas_in_sync == args.replicas, strategy.num_replicas_in_sync
    x = np.load(args.data)["x"]
    results = {"replicas": strategy.num_replicas_in_sync}
    # How the last global batch is split: with 4·32 + 1 samples, one replica gets nothing.
    *_, last = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(x).batch(BATCH_SIZE)
    )
    results["last_shards"] = [int(t.shape[0]) for t in strategy.experimental_local_results(last)]
    with strategy.scope():
        inside = build_cnn()
        inside.load_weights(args.weights)
        assert isinstance(inside.weights[0].value, tf.distribute.DistributedValues)
    outside = build_cnn()
    outside.load_weights(args.weights)
    assert not isinstance(outside.weights[0].value, tf.distribute.DistributedValues)
    for where, kind, how in MIRRORED_CASES:
        model = outside if where == "outside" else inside
        data = _inputs(x)[kind]()
        with strategy.scope() if where == "scope" else contextlib.nullcontext():
            if how == "computer":  # the strategy given to the constructor
                stats = PatternComputer(model, strategy=strategy).compute_statistics(
                    data, batch_size=BATCH_SIZE, verbose=0
                )
                results.update(stats_results(f"{where}-{kind}-{how}", stats))
            else:  # the strategy given to analyzer.fit
                analyzer = PatternNet(model).fit(
                    data, batch_size=BATCH_SIZE, verbose=0, strategy=strategy
                )
                results.update(patterns_results(f"{where}-{kind}-{how}", analyzer.patterns))
    np.savez(args.out, **results)


def run_multiworker(args) -> None:
    import json

    import numpy as np
    import tensorflow as tf

    from pattern_keras import PatternNet
    from pattern_keras.patterns import PatternComputer, PatternStatistics

    saves = []  # which processes write the checkpoint
    real_save = PatternStatistics.save
    PatternStatistics.save = lambda self, path: (saves.append(path), real_save(self, path))
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_cnn()
        model.load_weights(args.weights)
    x = np.load(args.data)["x"]
    results = {"replicas": strategy.num_replicas_in_sync, "task_index": task["index"]}
    stats = PatternComputer(model, strategy=strategy).compute_statistics(
        x, batch_size=BATCH_SIZE, verbose=0, checkpoint_path=args.checkpoint
    )
    results.update(stats_results("numpy-computer", stats))
    analyzer = PatternNet(model).fit(batches(x), verbose=0, strategy=strategy)
    results.update(patterns_results("generator-analyzer", analyzer.patterns))
    results["checkpoint_writes"] = len(saves)
    # One NaN: every worker must refuse the same batch (the count is all-reduced), none hang.
    bad = x.copy()
    bad[40, 1, 2, 0] = np.nan
    try:
        PatternComputer(model, strategy=strategy).compute_statistics(
            bad, batch_size=BATCH_SIZE, verbose=0
        )
        results["nonfinite_error"] = ""
    except ValueError as err:
        results["nonfinite_error"] = str(err)
    np.savez(args.out, **results)


def run_killed(args) -> None:
    import numpy as np

    from pattern_keras.patterns import PatternComputer

    model = build_cnn()
    model.load_weights(args.weights)
    x = np.load(args.data)["x"]
    PatternComputer(model).compute_statistics(
        batches(x, kill_at=args.kill_after),
        verbose=0,
        checkpoint_path=args.checkpoint,
        checkpoint_every=2,
    )
    sys.exit("the fit finished: the generator should have killed this process")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("mirrored", "multiworker", "killed"))
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--checkpoint")
    parser.add_argument("--kill-after", type=int, default=3)
    args = parser.parse_args(argv)
    {"mirrored": run_mirrored, "multiworker": run_multiworker, "killed": run_killed}[args.mode](
        args
    )


if __name__ == "__main__":
    main()
