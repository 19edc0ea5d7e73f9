"""A recurrent model's pattern fit under MirroredStrategy over two logical CPU devices, for
``tests/test_recurrent.py::test_fit_distributed_equals_single_device``.

Logical devices must be configured before TensorFlow's first op, hence a process of its own.

Usage::

    python tests/_recurrent_fit_worker.py DIR     # reads DIR/w.weights.h5, DIR/x.npy;
                                                  # writes DIR/patterns.npz
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: 3 full batches and a last one of 1 sample: one replica gets an empty shard.
BATCH = 8
N = 3 * BATCH + 1


def build():
    import keras

    keras.utils.set_random_seed(7)
    layers = keras.layers
    x = keras.Input((5, 3))
    h = layers.Masking(0.0)(x)
    h = layers.Bidirectional(layers.LSTM(4, return_sequences=True, name="lstm"), name="bi")(h)
    h = layers.GRU(4, name="gru")(h)
    return keras.Model(x, layers.Dense(2, name="head")(h))


def data():
    import numpy as np

    x = np.random.default_rng(8).normal(size=(N, 5, 3)).astype("float32")
    x[::3, -2:] = 0.0  # padded steps
    return x


def main(directory: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np

    from pattern_keras.patterns import PatternComputer

    model = build()
    model.load_weights(os.path.join(directory, "w.weights.h5"))
    x = np.load(os.path.join(directory, "x.npy"))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    stats = PatternComputer(model, strategy=strategy).compute_statistics(
        x, batch_size=BATCH, verbose=0
    )
    patterns = stats.patterns()
    out = {}
    for key in patterns:
        out[f"{key}::a"] = patterns[key]
        out[f"{key}::neg"] = patterns.negative(key) if patterns.has_negative(key) else np.zeros(0)
    np.savez(os.path.join(directory, "patterns.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1])
