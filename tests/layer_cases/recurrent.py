"""Coverage cases of the recurrent helper (issue 21): recurrent layers, their cells and the
wrappers that loop a layer over time.

The held references run the models' own Keras layers with every cell's activation ``f``
replaced by ``z·stop_gradient(f(z)/z)`` and every gate (the recurrent activation) under
``stop_gradient``: a gated product then passes its signal times the gate, and nothing into the
gate, as LRP-z (ratio form), PatternNet and PatternAttribution do. The deeper checks (float64
numpy references of LRP, Guided BackProp and DeConvNet, masks, states, patterns) are in
``tests/test_recurrent.py``.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf
from keras import layers as L

from layer_cases import LayerCase, SmallModel, add


def _held(f):
    return lambda z: z * tf.stop_gradient(tf.math.divide_no_nan(f(z), z))


def _gate(f):
    return lambda z: tf.stop_gradient(f(z))


def _cells(model):
    """Every cell of the model's recurrent layers (Bidirectional's two, stacked cells)."""
    found = []
    for layer in model.layers:
        for sub in (
            layer,
            getattr(layer, "forward_layer", None),
            getattr(layer, "backward_layer", None),
        ):
            cell = getattr(sub, "cell", None)
            if cell is not None:
                found += list(getattr(cell, "cells", [cell]))
    return found


@contextlib.contextmanager
def _held_cells(model):
    saved = []
    for cell in _cells(model):
        saved.append((cell, cell.activation, getattr(cell, "recurrent_activation", None)))
        cell.activation = _held(cell.activation)
        if saved[-1][2] is not None:
            cell.recurrent_activation = _gate(saved[-1][2])
    try:
        yield
    finally:
        for cell, activation, recurrent in saved:
            cell.activation = activation
            if recurrent is not None:
                cell.recurrent_activation = recurrent


def _held_model(model, x):
    with _held_cells(model):
        return model(x, training=False)


def _model(name, input_shape, layer):
    def build():
        keras.utils.set_random_seed(0)
        x = keras.Input(input_shape)
        h = layer()(x)
        if len(h.shape) > 2:
            h = L.Flatten()(h)
        out = L.Dense(2, bias_initializer="random_normal")(h)
        return keras.Model(x, out, name=name)

    return SmallModel(build, held=_held_model, gated=True, refused=("DeepTaylor",))


_BIAS = {"bias_initializer": "random_normal"}
_SIMPLE_RNN = _model("simple_rnn", (4, 3), lambda: L.SimpleRNN(3, **_BIAS))
_LSTM = _model("lstm", (4, 3), lambda: L.LSTM(3, return_sequences=True, **_BIAS))
_GRU = _model("gru", (4, 3), lambda: L.GRU(3, go_backwards=True, **_BIAS))
_STACKED_CELLS = _model(
    "rnn_of_cells",
    (4, 3),
    lambda: L.RNN([L.LSTMCell(3, **_BIAS), L.GRUCell(3, **_BIAS), L.SimpleRNNCell(3, **_BIAS)]),
)
_BIDIRECTIONAL = _model(
    "bidirectional", (4, 3), lambda: L.Bidirectional(L.GRU(2, reset_after=False, **_BIAS))
)
_TIME_DISTRIBUTED = SmallModel(
    _model("time_distributed", (4, 3), lambda: L.TimeDistributed(L.Dense(3, **_BIAS))).build
)  # no recurrent layer, no gate: every analyzer, DeepTaylor and DeConvNet included
_CONV_LSTM = {
    1: _model("conv_lstm1d", (3, 5, 2), lambda: L.ConvLSTM1D(2, 3, padding="same", **_BIAS)),
    2: _model("conv_lstm2d", (2, 4, 4, 1), lambda: L.ConvLSTM2D(2, 3, **_BIAS)),
    3: _model("conv_lstm3d", (2, 3, 3, 3, 1), lambda: L.ConvLSTM3D(1, 2, padding="same", **_BIAS)),
}

add(
    LayerCase("SimpleRNN", "supported", "recurrent", _SIMPLE_RNN),
    LayerCase("LSTM", "supported", "recurrent", _LSTM),
    LayerCase("GRU", "supported", "recurrent", _GRU),
    LayerCase("RNN", "supported", "recurrent", _STACKED_CELLS),
    LayerCase("StackedRNNCells", "supported", "recurrent", _STACKED_CELLS),
    LayerCase("LSTMCell", "supported", "recurrent", _STACKED_CELLS),
    LayerCase("GRUCell", "supported", "recurrent", _STACKED_CELLS),
    LayerCase("SimpleRNNCell", "supported", "recurrent", _STACKED_CELLS),
    LayerCase("Bidirectional", "supported", "recurrent", _BIDIRECTIONAL),
    LayerCase("TimeDistributed", "supported", "recurrent", _TIME_DISTRIBUTED),
    *(LayerCase(f"ConvLSTM{d}D", "supported", "recurrent", m) for d, m in _CONV_LSTM.items()),
)
