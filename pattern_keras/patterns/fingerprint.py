"""Model fingerprints: which model a pattern file was fitted on.

A fingerprint lists every layer call (key and class) with the shapes of its weights, and a
SHA-256 of all weight values. It is taken from the *original* model (before any canonization),
so patterns fitted on one model never load into another, nor into the same architecture with
other weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from pattern_keras import graph as _graph

__all__ = ["model_fingerprint", "first_mismatch", "WeightsChecksum"]


def model_fingerprint(model: Any) -> dict[str, Any]:
    """The fingerprint of a Keras model.

    Parameters
    ----------
    model : keras.Model
        A built model. Its weights are read (hashed), not changed.

    Returns
    -------
    dict
        ``{"layers": [[key, class name, [weight shapes...]], ...], "weights_sha256": str}``
        (JSON-serializable).
    """
    seen = set()
    layers = []
    for node in _graph.trace_model(model).nodes:
        if node.key in seen or (node.inside and not isinstance(node.layer, keras.Layer)):
            # Graph ops traced inside a call are renamed at every trace; the layers around
            # them, their weights and the weights' values identify the model.
            continue
        seen.add(node.key)
        shapes = [list(int(d) for d in w.shape) for w in getattr(node.layer, "weights", [])]
        layers.append([node.key, type(node.layer).__name__, shapes])
    digest = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
        digest.update(str(value.dtype).encode())
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return {"layers": layers, "weights_sha256": digest.hexdigest()}


def first_mismatch(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str | None:
    """A sentence naming the first difference between two fingerprints, or ``None``."""
    a_layers = [list(x) for x in expected.get("layers", [])]
    b_layers = [list(x) for x in actual.get("layers", [])]
    for i, (a, b) in enumerate(zip(a_layers, b_layers)):
        if a[0] != b[0]:
            return f"layer {i} is named '{a[0]}' in one and '{b[0]}' in the other"
        if a[1] != b[1]:
            return f"layer '{a[0]}' is a {a[1]} in one and a {b[1]} in the other"
        if [list(s) for s in a[2]] != [list(s) for s in b[2]]:
            return f"layer '{a[0]}' has weights of shapes {a[2]} in one and {b[2]} in the other"
    if len(a_layers) != len(b_layers):
        longer = a_layers if len(a_layers) > len(b_layers) else b_layers
        extra = longer[min(len(a_layers), len(b_layers))][0]
        return (
            f"one has {len(a_layers)} layers and the other {len(b_layers)} "
            f"(first extra layer: '{extra}')"
        )
    if expected.get("weights_sha256") != actual.get("weights_sha256"):
        return "the architectures match but the weight values differ (another training run?)"
    return None


class WeightsChecksum:
    """A cheap per-call check that a model's weights have not changed: one wrapping sum of the
    bit patterns of each weight variable, computed where the variable lives (on the device).

    Changing any single value of a variable changes its sum (the bit patterns differ by less
    than 2³²), and training or ``set_weights`` change a sum except with probability ~2⁻³²
    per variable. Changes that cancel exactly (two values of one variable swapped) go unseen:
    the fingerprint's SHA-256 is the thorough check, taken whenever patterns are set.

    Calling it returns one ``uint32`` per weight variable; :meth:`first_change` names the first
    variable whose sum differs from an earlier result.
    """

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self._weights = list(model.weights)
        self.names = [getattr(w, "path", None) or w.name for w in self._weights]
        variables = [getattr(w, "value", w) for w in self._weights]

        def checksum():
            sums = []
            for v in variables:
                t = tf.convert_to_tensor(v)
                if t.dtype == tf.bool:
                    t = tf.cast(t, tf.uint8)
                if t.dtype.size >= 4:
                    bits = tf.bitcast(t, tf.uint32)
                else:
                    bits = tf.cast(
                        tf.bitcast(t, tf.uint8 if t.dtype.size == 1 else tf.uint16), tf.uint32
                    )
                sums.append(tf.reduce_sum(tf.reshape(bits, [-1])))
            if not sums:
                return tf.zeros([0], tf.uint32)
            return tf.stack(sums)

        self._fn = tf.function(checksum, autograph=False)

    def __call__(self) -> np.ndarray:
        return self._fn().numpy()

    def first_change(self, before: np.ndarray, after: np.ndarray) -> str | None:
        """The name of the first variable whose checksum differs, or ``None``."""
        changed = np.flatnonzero(np.asarray(before) != np.asarray(after))
        return None if not len(changed) else str(self.names[int(changed[0])])
