"""Recurrent layers (issue 21): SimpleRNN, LSTM, GRU, ConvLSTM, RNN of cells, Bidirectional,
TimeDistributed, masks, initial and stateful states, against independent references.

- the gradient family equals ``tf.GradientTape`` (compiled, as users run it);
- LRP-z, LRP-ε (``ε = 1e-3``), Guided BackProp and DeConvNet equal a float64 numpy step-by-step
  implementation (``tests/_rnn_reference.py``: Arras et al.'s ``lrp_linear`` with
  ``bias_factor = 0``, and the rule table);
- on bias-free cells and head, LRP-z conserves ``Σ_t Σ_i R(x_t,i) + R(initial states) = y`` to
  1e-10 in float64;
- every analyzer explains every layer and wrapper (DeepTaylor is refused by name);
- masked steps are skipped exactly as ``model(x)`` skips them;
- analyze and fit leave a stateful layer's states unchanged;
- PatternNet of a one-unit linear RNN gives ``Σ_x w / (wᵀ Σ_x w)`` at every step, and the
  pattern statistics of a cell are the sums over samples and unmasked steps;
- a fit under ``tf.distribute`` (two logical CPU devices) equals the single-device fit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import _rnn_reference as ref
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import EVERY_ANALYZER, PASS, STATISTICS, assert_close

import pattern_keras as pk
from pattern_keras.patterns import PatternComputer

L = keras.layers
STEPS, FEATURES, UNITS = 3, 3, 4
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def eagerly():
    """Small models run eagerly (the same rule code; tracing every analyzer's loops costs more
    than running them)."""
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(previous)


@pytest.fixture
def float64():
    """Models built in float64 (the dtype policy too: Keras keeps the first one it made)."""
    previous, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous)
    keras.config.set_dtype_policy(policy)


pytestmark = pytest.mark.filterwarnings("ignore:Even though the .*run_functions_eagerly")


def normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(keras.config.floatx())


def randomize_biases(model, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "bias" in w.path:
            w.assign(rng.normal(0.0, scale, w.shape).astype(w.dtype))


def head(h, n=3):
    if len(h.shape) > 2:
        h = L.Flatten()(h)
    return L.Dense(n, name="head")(h)


# ---------------------------------------------------------------------------------------------
# The models: between them every layer, wrapper and option of issue 21


def _sequence(steps=STEPS, features=FEATURES):
    return keras.Input((steps, features), name="x")


def m_stacked_masked():
    """Masking, stacked layers, return_sequences, go_backwards; SimpleRNN, LSTM, and a GRU
    with reset_after=False."""
    x = _sequence()
    h = L.Masking(0.0)(x)
    h = L.SimpleRNN(UNITS, return_sequences=True, name="rnn")(h)
    h = L.LSTM(UNITS, return_sequences=True, go_backwards=True, name="lstm")(h)
    return keras.Model(x, head(L.GRU(UNITS, reset_after=False, name="gru")(h)))


def m_bidirectional():
    """TimeDistributed(Dense), then Bidirectional with each merge mode that has a rule: a GRU
    (reset_after=True) concatenated, a SimpleRNN averaged, an LSTM summed."""
    x = _sequence()
    h = L.TimeDistributed(L.Dense(UNITS), name="td")(x)
    h = L.Bidirectional(L.GRU(UNITS, return_sequences=True), merge_mode="concat", name="bi_c")(h)
    h = L.Bidirectional(L.SimpleRNN(UNITS, return_sequences=True), merge_mode="ave", name="bi_a")(h)
    return keras.Model(x, head(L.Bidirectional(L.LSTM(UNITS), merge_mode="sum", name="bi_s")(h)))


def m_bidirectional_none_return_state():
    """merge_mode=None and return_state, explained by selecting one output (the backward
    layer's sequence, flipped back) and one state."""
    x = _sequence()
    out = L.Bidirectional(
        L.LSTM(UNITS, return_sequences=True, return_state=True), merge_mode=None, name="bi"
    )(x)
    y_backward, c_forward = out[1], out[3]
    h = L.Concatenate()([L.Flatten()(y_backward), c_forward])
    return keras.Model(x, head(h))


def m_initial_and_return_state():
    x = _sequence()
    h0, c0 = keras.Input((UNITS,), name="h0"), keras.Input((UNITS,), name="c0")
    _, h, c = L.LSTM(UNITS, return_state=True, name="lstm")(x, initial_state=[h0, c0])
    return keras.Model([x, h0, c0], head(L.Add()([h, c])))


def m_convolutional():
    """TimeDistributed(Conv1D) into a ConvLSTM1D."""
    x = keras.Input((STEPS, 5, 2), name="x")
    h = L.TimeDistributed(L.Conv1D(2, 2, activation="relu"), name="td_conv")(x)
    h = L.ConvLSTM1D(2, 3, padding="same", return_sequences=True, name="conv_lstm")(h)
    return keras.Model(x, head(h))


def m_conv_lstm2d():
    x = keras.Input((3, 4, 4, 1), name="x")
    return keras.Model(x, head(L.ConvLSTM2D(2, 3, name="conv_lstm")(x)))


def m_conv_lstm3d():
    x = keras.Input((2, 3, 3, 3, 1), name="x")
    return keras.Model(x, head(L.ConvLSTM3D(1, 2, padding="same", name="conv_lstm")(x)))


def m_stacked_cells():
    x = _sequence()
    cells = [L.LSTMCell(UNITS), L.GRUCell(UNITS)]
    return keras.Model(x, head(L.RNN(cells, name="rnn")(x)))


class OwnCell(L.Layer):
    """A cell of one's own, made of keras.ops and a Dense layer: read by tracing its call."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.state_size = units
        self.dense = L.Dense(units)

    def build(self, shape):
        self.recurrent = self.add_weight((self.state_size, self.state_size))

    def call(self, x, states):
        h = keras.ops.tanh(self.dense(x) + keras.ops.matmul(states[0], self.recurrent))
        return h, [h]


def m_own_cell():
    x = _sequence()
    return keras.Model(x, head(L.RNN(OwnCell(UNITS), name="own")(x)))


def m_stateful():
    x = keras.Input((STEPS, FEATURES), batch_size=3, name="x")
    return keras.Model(x, head(L.GRU(UNITS, stateful=True, name="gru")(x)))


#: Between them every layer, wrapper and option of issue 21.
MODELS = {
    "stacked_masked": m_stacked_masked,
    "bidirectional": m_bidirectional,
    "bidirectional_none_return_state": m_bidirectional_none_return_state,
    "initial_and_return_state": m_initial_and_return_state,
    "convolutional": m_convolutional,
    "stacked_cells": m_stacked_cells,
    "own_cell": m_own_cell,
    "stateful": m_stateful,
}
#: Checked against the tape only (the same cell code as ConvLSTM1D).
GRADIENT_ONLY = {"conv_lstm2d": m_conv_lstm2d, "conv_lstm3d": m_conv_lstm3d}


def build(name):
    keras.utils.set_random_seed(0)
    model = {**MODELS, **GRADIENT_ONLY}[name]()
    randomize_biases(model)
    return model


def data(model, n=3, seed=0):
    xs = [normal((n,) + tuple(t.shape[1:]), seed + i) for i, t in enumerate(model.inputs)]
    if any(isinstance(layer, L.Masking) for layer in model.layers):
        xs[0][0, 1] = 0.0  # a padded step inside the first sequence
        xs[0][1, -1] = 0.0  # and at the end of the second
    return xs if len(xs) > 1 else xs[0]


def tape_gradient(model, x, seed_value=False):
    xs = [tf.constant(v) for v in (x if isinstance(x, list) else [x])]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = model(xs if len(xs) > 1 else xs[0])
        mask = tf.one_hot(tf.argmax(y, axis=1), y.shape[1], dtype=y.dtype)
        score = tf.reduce_sum(y * mask)
    grads = [g.numpy() for g in tape.gradient(score, xs)]
    return grads if len(grads) > 1 else grads[0]


# ---------------------------------------------------------------------------------------------
# The gradient family against the tape; every analyzer on every model


#: Compiled, as users run it (the others run eagerly in test_every_analyzer, with the same check).
COMPILED = ("stacked_masked", "bidirectional_none_return_state", "stateful") + tuple(GRADIENT_ONLY)


def check_gradient(model, x, analyzer=None):
    """The gradient equals the tape's (for a stateful layer: from its current states, which the
    tape's own call of the model then moves on)."""
    ours = (analyzer or pk.Gradient(model)).analyze(x, verbose=0)
    states = [v.numpy() for v in _stateful_states(model)]
    expected = tape_gradient(model, x)
    for v, s in zip(_stateful_states(model), states):
        v.assign(s)
    for a, e in zip(_listed(ours), _listed(expected)):
        assert_close(a, e, PASS)


@pytest.mark.parametrize("name", COMPILED)
def test_gradient_equals_tape_compiled(name):
    model = build(name)
    x = data(model)
    if name == "stateful":
        model(x)  # move the states away from zero
    check_gradient(model, x)
    if name == "stateful":
        # A batch of another size than the states' is refused (Keras refuses it too).
        analyzer = pk.Gradient(model)
        with pytest.raises(tf.errors.InvalidArgumentError, match="is stateful with a batch of 3"):
            analyzer.analyze(np.concatenate([x, x]), verbose=0)
        twice = analyzer.analyze(np.concatenate([x, x]), batch_size=len(x), verbose=0)
        assert_close(twice, np.concatenate([tape_gradient(model, x)] * 2), PASS)


def _listed(x):
    return x if isinstance(x, list) else [x]


def _stateful_states(model):
    return [v for layer in model.layers if getattr(layer, "stateful", False) for v in layer.states]


def _analyzer(cls, model, patterns):
    if cls is pk.IntegratedGradients:
        return cls(model, steps=3)
    if cls is pk.SmoothGrad:
        return cls(model, samples=2)
    if cls in (pk.PatternNet, pk.PatternAttribution):
        return cls(model, patterns=patterns)
    return cls(model)


WRAPPERS = (pk.IntegratedGradients, pk.SmoothGrad)


@pytest.mark.filterwarnings("ignore:.*the explanation is zero everywhere")
@pytest.mark.filterwarnings("ignore::pattern_keras.patterns.statistics.UndefinedPatternWarning")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_analyzer(name, eagerly):
    """Every analyzer explains the model: finite, shaped like the input, not all zero; the
    gradient equals the tape's; DeepTaylor is refused, naming the recurrent layer; analyze and
    the pattern fit leave a stateful layer's states as they were."""
    model = build(name)
    x = data(model)
    if name == "stateful":
        model(x)  # states away from zero
    states = [v.numpy() for v in _stateful_states(model)]
    patterns = PatternComputer(model).compute(x, verbose=0)
    for cls in EVERY_ANALYZER:
        if cls in WRAPPERS and name not in ("stacked_masked", "stateful"):
            continue  # Gradient's own passes over a batch of points: two models suffice
        if cls is pk.DeepTaylor:
            with pytest.raises(ValueError, match="recurrent layer '"):
                cls(model)
            continue
        analyzer = _analyzer(cls, model, patterns)
        out = _listed(analyzer.analyze(x, verbose=0))
        for a, xi in zip(out, _listed(x)):
            assert a.shape == xi.shape, cls.__name__
            assert np.all(np.isfinite(a)), cls.__name__
        assert np.any(out[0] != 0), cls.__name__
    for v, s in zip(_stateful_states(model), states):
        np.testing.assert_array_equal(v.numpy(), s)
    check_gradient(model, x)


# ---------------------------------------------------------------------------------------------
# LRP, Guided BackProp and DeConvNet against float64 numpy


def _single(kind, use_bias=True, initial_states=False):
    """``x → layer → Dense`` in the current floatx; with ``initial_states``, the states are
    model inputs too."""
    keras.utils.set_random_seed(1)
    layer = {
        "simple_rnn": lambda: L.SimpleRNN(UNITS, use_bias=use_bias),
        "lstm": lambda: L.LSTM(UNITS, use_bias=use_bias),
        "gru": lambda: L.GRU(UNITS, use_bias=use_bias),
        "gru_reset_before": lambda: L.GRU(UNITS, reset_after=False, use_bias=use_bias),
    }[kind]()
    x = _sequence(steps=5)
    inputs = [x]
    if initial_states:
        n = 2 if kind == "lstm" else 1
        states = [keras.Input((UNITS,), name=f"s{i}") for i in range(n)]
        inputs += states
        h = layer(x, initial_state=states)
    else:
        h = layer(x)
    model = keras.Model(inputs if initial_states else x, L.Dense(3, use_bias=use_bias)(h))
    if use_bias:
        randomize_biases(model)
    return model, layer


def reference(kind, method, eps, model, layer, xs, patterns=None):
    """The numpy float64 explanation of the selected logit: at the inputs, and at the initial
    states."""
    rules = ref.Rules(method, eps, patterns)
    cell = layer.cell
    w, u = np.asarray(cell.kernel), np.asarray(cell.recurrent_kernel)
    b = np.asarray(cell.bias) if cell.use_bias else np.zeros(cell.recurrent_kernel.shape[1])
    if kind == "gru" and not cell.use_bias:
        b = np.zeros((2, 3 * UNITS))
    dense = model.layers[-1]
    w_head = np.asarray(dense.kernel)
    b_head = np.asarray(dense.bias) if dense.use_bias else np.zeros(w_head.shape[1])
    x, states = xs[0], xs[1:]
    if kind == "simple_rnn":
        h, record = ref.simple_rnn_forward(x, w, u, b, "tanh", *states)
    elif kind == "lstm":
        h, _, record = ref.lstm_forward(x, w, u, b, *states)
    else:
        h, record = ref.gru_forward(x, w, u, b, kind == "gru", *states)
    z, g_h = ref.dense_backward(rules, h, w_head, b_head, np.argmax(h @ w_head + b_head, axis=1))
    if kind == "simple_rnn":
        g_x, *g_states = ref.simple_rnn_backward(rules, record, w, u, b, "tanh", g_h)
    elif kind == "lstm":
        g_x, *g_states = ref.lstm_backward(rules, record, w, u, b, g_h)
    else:
        g_x, *g_states = ref.gru_backward(rules, record, w, u, b, kind == "gru", g_h)
    return z, g_x, g_states


METHODS = {
    "lrp_z": (lambda m: pk.LRPZ(m), "lrp", 0.0),
    "lrp_epsilon": (lambda m: pk.LRPEpsilon(m, epsilon=1e-3), "lrp", 1e-3),
    "guided_backprop": (pk.GuidedBackprop, "guided", 0.0),
    "deconvnet": (pk.DeConvNet, "deconv", 0.0),
}
KINDS = ("simple_rnn", "lstm", "gru", "gru_reset_before")


@pytest.mark.filterwarnings("ignore:.*the explanation is zero everywhere")
@pytest.mark.parametrize("kind", KINDS)
def test_against_numpy_float64(kind, eagerly, float64):
    """LRP-z, LRP-ε (ε = 1e-3; Arras et al.'s ``lrp_linear``, bias_factor 0), Guided BackProp,
    DeConvNet, and PatternNet with random patterns (``A₊``, ``A₋`` by the sign of each linear
    map's output) equal the float64 step-by-step numpy reference (biases non-zero)."""
    model, layer = _single(kind)
    x = normal((3, 5, FEATURES))
    for name, (make, method, eps) in METHODS.items():
        z, expected, _ = reference(kind, method, eps, model, layer, [x.astype(np.float64)])
        assert_close(model(x).numpy(), z, 1e-12, err_msg=name)
        assert_close(make(model).analyze(x, verbose=0), expected, 1e-10, err_msg=name)
    net = pk.PatternNet(model)
    rng = np.random.default_rng(9)
    positive, negative, by_shape = {}, {}, {}
    for key, plan in net._computer.plans.items():
        shape = plan.part.kernel_shape
        # Multiples of 1/64: exact in float32, as patterns are kept (and A₊ − A₋ taken) in
        # float32 even for a float64 model.
        positive[key], negative[key] = np.round(64 * rng.normal(size=(2,) + shape)) / 64
        by_shape[shape] = (positive[key], negative[key])
    net.set_patterns(pk.Patterns(positive, negative=negative))
    _, expected, _ = reference(kind, "pattern", 0.0, model, layer, [x.astype(np.float64)], by_shape)
    assert_close(net.analyze(x, verbose=0), expected, 1e-10, err_msg="PatternNet")


@pytest.mark.parametrize("kind", KINDS)
def test_lrp_conserves_relevance_float64(kind, eagerly, float64):
    """Bias-free cells and head: ``Σ_t Σ_i R(x_t,i) + R(initial states) = y`` to 1e-10."""
    model, layer = _single(kind, use_bias=False, initial_states=True)
    xs = [normal((3,) + tuple(t.shape[1:]), i) for i, t in enumerate(model.inputs)]
    relevance = pk.LRPZ(model).analyze(xs, verbose=0)
    y = model(xs).numpy().max(axis=1)
    total = sum(r.reshape(3, -1).sum(axis=1) for r in relevance)
    np.testing.assert_allclose(total, y, rtol=0, atol=1e-10 * np.abs(y).max())
    assert np.all(np.abs(relevance[1]).sum(axis=1) > 0)  # the initial states take their share
    _, expected, expected_states = reference(kind, "lrp", 0.0, model, layer, xs)
    assert_close(relevance[0], expected, 1e-10)
    for r, g in zip(relevance[1:], expected_states):
        assert_close(r, g, 1e-10)


# ---------------------------------------------------------------------------------------------
# Masks: padded steps skipped exactly as model(x) skips them


@pytest.mark.filterwarnings("ignore:.*the explanation is zero everywhere")
def test_masked_steps_are_skipped(eagerly):
    """A sequence with padded steps (at the start, inside, at the end) is explained as the same
    sequence without them: equal at the kept steps, zero at the padded ones."""
    keras.utils.set_random_seed(2)
    lstm, gru, dense = L.LSTM(UNITS, return_sequences=True), L.GRU(UNITS), L.Dense(3)

    def model_for(steps):
        x = keras.Input((steps, FEATURES))
        return keras.Model(x, dense(gru(lstm(L.Masking(0.0)(x)))))

    kept = [1, 2, 4]
    padded_model, short_model = model_for(6), model_for(len(kept))
    short = normal((2, len(kept), FEATURES), 3)
    padded = np.zeros((2, 6, FEATURES), short.dtype)
    padded[:, kept] = short
    assert_close(padded_model(padded).numpy(), short_model(short).numpy(), PASS)
    for cls in (pk.Gradient, pk.LRPZ, pk.LRPEpsilon, pk.GuidedBackprop, pk.DeConvNet):
        long_e = cls(padded_model).analyze(padded, verbose=0)
        short_e = cls(short_model).analyze(short, verbose=0)
        assert_close(long_e[:, kept], short_e, PASS, err_msg=cls.__name__)
        np.testing.assert_array_equal(np.delete(long_e, kept, axis=1), 0.0)


# ---------------------------------------------------------------------------------------------
# Refusals


def test_refusals_name_the_layer(eagerly):
    """Bidirectional's ``mul`` and a cell pattern_keras cannot read: every rule-based analyzer
    refuses, naming the layer (the gradient family takes them by their own gradient, as
    opaque layers)."""
    x_in = _sequence()
    x = normal((2, STEPS, FEATURES))
    bi = L.Bidirectional(L.GRU(UNITS), merge_mode="mul", name="bi_mul")
    model = keras.Model(x_in, head(bi(x_in)))
    with pytest.raises(ValueError, match="'bi_mul'.*merge_mode='mul'"):
        pk.LRPZ(model).analyze(x, verbose=0)

    class Cell(L.Layer):  # keras.ops.abs: no rule
        state_size = UNITS

        def build(self, shape):
            self.kernel = self.add_weight((shape[-1], UNITS))

        def call(self, x, states):
            h = keras.ops.matmul(x, self.kernel) / (1.0 + keras.ops.abs(states[0]))
            return h, [h]

    model = keras.Model(x_in, head(L.RNN(Cell(), name="own")(x_in)))
    for cls in (pk.LRPZ, pk.GuidedBackprop):
        with pytest.raises(
            ValueError, match="'own'.*Cell.*'own/op0' of class Absolute is not supported"
        ):
            cls(model).analyze(x, verbose=0)
    check_gradient(model, x)  # the gradient family takes it whole, by the layer's gradient


# ---------------------------------------------------------------------------------------------
# Patterns


def test_pattern_net_of_a_linear_rnn_is_the_closed_form():
    """A one-unit linear RNN ``h_t = wᵀ[x_t; h_{t−1}] + b``: the linear estimator's pattern is
    ``Σ_x w / (wᵀ Σ_x w)``, ``Σ_x`` the covariance of ``[x_t; h_{t−1}]`` over samples and
    steps (to 1e-6), and PatternNet explains every step by its input part's direction."""
    rng = np.random.default_rng(4)
    n, steps = 512, 8
    a_signal, a_distractor = np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.5])
    signal = rng.uniform(-1.0, 1.0, (n, steps, 1))
    x = signal * a_signal + rng.normal(size=(n, steps, 1)) * a_distractor
    x = (x + 0.1 * rng.normal(size=x.shape)).astype("float32")
    inp = keras.Input((steps, FEATURES))
    rnn = L.SimpleRNN(1, activation=None, name="rnn")
    model = keras.Model(inp, rnn(inp))
    rnn.cell.kernel.assign([[1.0], [-1.0], [0.0]])
    rnn.cell.recurrent_kernel.assign([[0.5]])
    rnn.cell.bias.assign([0.2])
    analyzer = pk.PatternNet(model, pattern_type="linear").fit(x, batch_size=128, verbose=0)

    w = np.array([[1.0], [-1.0], [0.0], [0.5]])
    h, rows = np.zeros((n, 1)), []
    for t in range(steps):
        rows.append(np.concatenate([x[:, t].astype(np.float64), h], axis=1))
        h = rows[-1] @ w + 0.2
    sigma = np.cov(np.concatenate(rows).T, bias=True)
    closed = sigma @ w / (w.T @ sigma @ w)
    np.testing.assert_allclose(analyzer.patterns["rnn/candidate"], closed, rtol=0, atol=1e-6)

    signal_e = analyzer.analyze(x[:8], verbose=0).reshape(-1, FEATURES)
    direction = closed[:FEATURES, 0] / np.linalg.norm(closed[:FEATURES, 0])
    cosines = np.abs(signal_e @ direction) / np.linalg.norm(signal_e, axis=1)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)
    cosine = abs(direction @ a_signal)
    print(f"|cosine| of the linear RNN's PatternNet direction with the true signal: {cosine:.4f}")
    assert cosine > 0.99


@pytest.mark.filterwarnings("ignore::pattern_keras.patterns.statistics.UndefinedPatternWarning")
def test_cell_statistics_are_sums_over_samples_and_unmasked_steps(float64):
    """The statistics of an LSTM's candidate (input ``[x_t; h_{t−1}]``, output its
    pre-activation) are the float64 sums over samples and unmasked steps."""
    keras.utils.set_random_seed(5)
    x_in = _sequence(steps=5)
    lstm = L.LSTM(UNITS, name="lstm")
    model = keras.Model(x_in, L.Dense(2)(lstm(L.Masking(0.0)(x_in))))
    randomize_biases(model)
    x = normal((7, 5, FEATURES), 6)
    x[0, 0] = x[2, 3] = x[5, 4] = 0.0
    stats = PatternComputer(model).compute_statistics(x, batch_size=3, verbose=0)["lstm/candidate"]
    stats = stats.reshift(0.0, np.zeros(UNITS))

    w, u, b = (
        np.asarray(v) for v in (lstm.cell.kernel, lstm.cell.recurrent_kernel, lstm.cell.bias)
    )
    kept = np.any(x != 0, axis=2)  # (n, steps)
    _, _, record = ref.lstm_forward(x, w, u, b, mask=kept)
    xh = np.concatenate([[np.concatenate([s["x"], s["h"]], 1)] for s in record])  # (steps, n, D)
    xh = xh.transpose(1, 0, 2)[kept]
    z = np.concatenate([[s["zg"]] for s in record]).transpose(1, 0, 2)[kept]
    y, positive = z - b[2 * UNITS : 3 * UNITS], (z > 0).astype(float)
    expected = {
        "n": np.full(UNITS, float(len(z))),
        "sum_y": y.sum(0),
        "n_pos": positive.sum(0),
        "sum_y_pos": (y * positive).sum(0),
        "sum_x_pos": xh.T @ positive,
        "sum_xy_pos": xh.T @ (y * positive),
        "sum_x": xh.T @ np.ones_like(z),
        "sum_xy": xh.T @ y,
    }
    assert set(stats.sums) == set(expected)
    for name, value in expected.items():
        assert_close(stats.sums[name], value, STATISTICS, err_msg=name)


def test_fit_distributed_equals_single_device(tmp_path):
    """The fit by tf.distribute (MirroredStrategy over two logical CPU devices, in a subprocess:
    devices are set before TensorFlow's first op) equals the single-device fit."""
    import _recurrent_fit_worker as worker

    model = worker.build()
    x = worker.data()
    model.save_weights(tmp_path / "w.weights.h5")
    np.save(tmp_path / "x.npy", x)
    single = PatternComputer(model).compute_statistics(x, batch_size=worker.BATCH, verbose=0)
    cmd = [sys.executable, worker.__file__, str(tmp_path)]
    env = {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    mirrored = np.load(tmp_path / "patterns.npz")
    patterns = single.patterns()
    assert set(mirrored.files) == {f"{k}::{r}" for k in patterns for r in ("a", "neg")}
    for key in patterns:
        a, neg = patterns[key], patterns.negative(key) if patterns.has_negative(key) else None
        assert_close(mirrored[f"{key}::a"], a, 1e-5)
        if neg is not None:
            assert_close(mirrored[f"{key}::neg"], neg, 1e-5)


def test_steps_trace_once():
    """200 steps trace as 5 do: the loop is one ``tf.while_loop``, not unrolled."""
    sizes = []
    for steps in (5, 200):
        keras.utils.set_random_seed(0)
        x = keras.Input((steps, FEATURES))
        model = keras.Model(x, head(L.LSTM(UNITS)(x)))
        fn = pk.LRPZ(model)._compiled_fn()
        graph = fn.get_concrete_function(*fn.input_signature).graph.as_graph_def()
        sizes.append(len(graph.node) + sum(len(f.node_def) for f in graph.library.function))
    assert sizes[0] == sizes[1]


def test_a_cell_called_on_its_own_is_one_step(eagerly):
    """``LSTMCell(x, [h, c])`` in a functional model: its ops as they are (no loop); the
    gradient equals the tape, LRP-z conserves relevance over ``x``, ``h`` and ``c``."""
    keras.utils.set_random_seed(3)
    x, h, c = (keras.Input((n,)) for n in (FEATURES, UNITS, UNITS))
    out, _ = L.LSTMCell(UNITS, use_bias=False, name="cell")(x, [h, c])
    model = keras.Model([x, h, c], L.Dense(2, use_bias=False)(out))
    xs = [normal((3,) + tuple(t.shape[1:]), i) for i, t in enumerate(model.inputs)]
    check_gradient(model, xs)
    relevance = pk.LRPZ(model).analyze(xs, verbose=0)
    total = sum(r.sum(axis=1) for r in relevance)
    assert_close(total, model(xs).numpy().max(axis=1), PASS)
