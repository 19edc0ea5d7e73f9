"""Recurrent layers: SimpleRNN, LSTM, GRU, ConvLSTM1D/2D/3D, RNN of those cells (stacked
too) or of a cell of your own made of Keras layers and ``keras.ops``, a cell called on its own,
Bidirectional and TimeDistributed.

A recurrent layer call is one op of kind ``"recurrent"``. Its cell, one time step, is a small
program of ops of the other kinds (:class:`Cell`): linear maps (the candidate's kernels, which
have patterns, and the gates' kernels, which do not), sums, activations, and gated products
``signal ⊙ gate`` whose gate operand is explicit (the LSTM's ``i ⊙ g``, ``f ⊙ c``,
``o ⊙ tanh(c)``; the GRU's ``z ⊙ h`` and ``(1 − z) ⊙ ĥ``, and ``r ⊙ (U h)``). The op's forward
(:class:`Recurrence`) replays the cell step by step with the layer's own weights in one
``tf.while_loop`` (traced once, whatever the number of steps), with masks, ``go_backwards``,
initial states and stateful states as Keras runs them, and keeps a per-step record of the
values its backward needs (:class:`StepRecord`, the op's last output). Its backward
(:meth:`Recurrence.backward`) walks the steps in reverse in another loop and, at every step,
asks a function for the cell's backward: :class:`pattern_keras.rules.RecurrentRule` runs the
analyzer's own rules on the cell there, so every analyzer explains a recurrent layer by the
rules it applies everywhere else (one reverse engine).

The candidate's linear map, per layer (``x_t`` the step's input, ``h`` the previous output):

==========================  ================================================  ================
layer                       candidate pre-activation                          pattern keys
==========================  ================================================  ================
SimpleRNN                   ``[x_t; h] [W; U] + b``                           ``key/candidate``
LSTM                        ``[x_t; h] [W_c; U_c] + b_c``                     ``key/candidate``
GRU (``reset_after=False``)  ``[x_t; r ⊙ h] [W_h; U_h] + b_h``                 ``key/candidate``
GRU (``reset_after=True``)   ``(x_t W_h + b_xh) + r ⊙ (h U_h + b_hh)``         ``key/candidate_kernel``,
                                                                              ``key/candidate_recurrent_kernel``
ConvLSTM                    ``conv(x_t, W_c) + b_c + conv(h, U_c)``           the same two
==========================  ================================================  ================

Where one linear map reads the input and the previous output together, its kernel is the two
kernels stacked (shape ``(features + units, units)``): one neuron, one pattern over both
(Arras et al. 2017's ``lrp_linear`` treats it so). Where the reset gate or a convolution's
other padding separates them, they are two linear ops and a sum. A cell of your own is read by
tracing its ``call`` on symbolic inputs: its parts become the cell's ops, each by its rule.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers as L

from pattern_keras import graph as _graph
from pattern_keras.layers.activations import activation_name, activation_op
from pattern_keras.layers.core import (
    LinearPart,
    Op,
    kernels_in_loop,
    read_kernels,
    whole_call_op,
)

__all__ = [
    "Cell",
    "Recurrence",
    "StepRecord",
    "rnn_layer",
    "bidirectional",
    "time_distributed",
    "cell_call",
    "CELL_CLASSES",
    "cell_linear_ops",
    "cell_values",
    "RNN_CLASSES",
    "repeated_samples",
]

#: Slots of the ops inside cells: negative and far from the slots of a model's graph (small
#: non-negative integers) and from a linear layer's intermediate slots (``-id(part)``).
_SLOTS = itertools.count()


def _new_slot() -> int:
    return -(1 << 52) - next(_SLOTS)


# ----------------------------------------------------------------------------------------------
# The cell: one step as a program of ops


@dataclasses.dataclass(eq=False)
class Cell:
    """One time step of a recurrent layer as a small program of ops.

    Attributes
    ----------
    ops : list of Op
        In topological order; kinds among linear, affine, activation (gated products included),
        sum and move.
    x : int
        The slot of the step's input ``x_t``.
    states : tuple of int
        The slots of the previous states, in the layer's state order (LSTM: ``h, c``).
    output : int
        The slot of the step's output.
    new_states : tuple of int
        The slots of the new states (the output's slot may be one of them).
    state_shapes : tuple of tuple
        Each state's shape without the batch axis.
    """

    ops: list[Op]
    x: int
    states: tuple[int, ...]
    output: int
    new_states: tuple[int, ...]
    state_shapes: tuple[tuple[int, ...], ...]

    @property
    def inputs(self) -> tuple[int, ...]:
        return (self.x,) + self.states

    @property
    def parts(self) -> list[LinearPart]:
        return [op.linear for op in self.ops if op.linear is not None]

    @property
    def pattern_ops(self) -> list[Op]:
        """The linear ops that have patterns (the candidate's kernels)."""
        return [op for op in self.ops if op.kind == "linear" and op.pattern_key is not None]

    @property
    def recorded(self) -> tuple[int, ...]:
        """The slots a step keeps for the backward pass and the statistics: the previous
        states, every linear op's input and output (what the rules read that is not cheap to
        recompute). The step's input is read from the sequence; everything else is recomputed
        from these by the elementwise ops that made it."""
        slots = list(self.states)
        for op in self.ops:
            if op.kind == "linear":
                slots += [op.inputs[0], op.outputs[0]]
        return tuple(dict.fromkeys(s for s in slots if s != self.x))

    def run(self, values: dict[int, Any]) -> dict[int, Any]:
        """Compute, in place, every slot of ``values`` that is missing (``values`` holds the
        inputs, and perhaps recorded slots)."""
        for op in self.ops:
            if all(s in values for s in op.outputs):
                continue
            values.update(zip(op.outputs, op.forward([values[s] for s in op.inputs])))
        return values


class _CellBuilder:
    """Appends the ops of a cell, each with a fresh slot, keyed ``"<layer key>/<name>"``."""

    def __init__(self, key: str, layer: Any, rank: int) -> None:
        self.key = key
        self.layer = layer
        self.rank = rank
        self.ops: list[Op] = []

    def _add(self, name: str, kind: str, inputs, forward, n_out: int = 1, **fields) -> list[int]:
        outputs = tuple(_new_slot() for _ in range(n_out))
        self.ops.append(
            Op(
                key=f"{self.key}/{name}",
                kind=kind,
                layer=self.layer,
                inputs=tuple(inputs),
                outputs=outputs,
                forward=forward,
                rank=self.rank,
                **fields,
            )
        )
        return list(outputs)

    def concat(self, a: int, b: int) -> int:
        def forward(xs):
            return [tf.concat([xs[0], tf.cast(xs[1], xs[0].dtype)], axis=-1)]

        return self._add("concat", "move", (a, b), forward)[0]

    def split(self, x: int, n: int) -> list[int]:
        return self._add("split", "move", (x,), lambda xs: tf.split(xs[0], n, axis=-1), n)

    def linear(self, name: str, x: int, part: LinearPart, pattern: bool) -> int:
        return self._add(
            name,
            "linear",
            (x,),
            lambda xs, p=part: [p.add_bias(p.apply(xs[0], p.kernel))],
            linear=part,
            pattern_key=f"{self.key}/{name}" if pattern else None,
        )[0]

    def activation(self, fn: Any, x: int, name: str = "activation") -> int:
        out = _new_slot()
        op = activation_op(
            f"{self.key}/{name}",
            self.layer,
            activation_name(fn),
            fn,
            x,
            out,
            plain_relu=fn is keras.activations.relu,
        )
        op.rank = self.rank
        self.ops.append(op)
        return out

    def product(self, signal: int, gate: int, name: str = "product") -> int:
        """``signal ⊙ gate``: a gated product (the gate operand second, as rules expect)."""
        return self._add(
            name,
            "activation",
            (signal, gate),
            lambda xs: [xs[0] * tf.cast(xs[1], xs[0].dtype)],
            activation="product",
            gate=lambda xs: xs[1],
        )[0]

    def add(self, a: int, b: int, name: str = "sum") -> int:
        return self._add(name, "sum", (a, b), lambda xs: [xs[0] + xs[1]], averages=True)[0]

    def one_minus(self, x: int) -> int:
        return self._add("one_minus", "affine", (x,), lambda xs: [1.0 - xs[0]])[0]

    def mark_rectified(self) -> None:
        """A linear op whose only consumer is a ReLU keeps only its positive regime."""
        for op in self.ops:
            if op.kind != "linear":
                continue
            users = [u for u in self.ops if op.outputs[0] in u.inputs]
            op.rectified = (
                len(users) == 1 and users[0].kind == "activation" and users[0].activation == "relu"
            )


def _tensor(variable: Any) -> Any:
    return tf.convert_to_tensor(variable)


def _dense_part(layer: Any, kernel_fn, bias_fn, shape: tuple[int, int]) -> LinearPart:
    return LinearPart(
        kernel_fn,
        bias_fn,
        lambda x, k: tf.matmul(x, tf.cast(k, x.dtype)),
        kernel_shape=shape,
        compute_dtype=layer.compute_dtype,
    )


def _columns(variable: Any, start: int, stop: int) -> Callable[[], Any]:
    return lambda: _tensor(variable)[..., start:stop]


def _stacked(top: Callable[[], Any], bottom: Callable[[], Any]) -> Callable[[], Any]:
    """The kernel of ``[x; h]``: ``[top; bottom]`` along the input axis."""
    return lambda: tf.concat([top(), bottom()], axis=-2)


def _bias(cell: Any, start: int, stop: int, row: int | None = None):
    if not cell.use_bias or cell.bias is None:
        return None
    if row is None:
        return lambda: _tensor(cell.bias)[start:stop]
    return lambda: _tensor(cell.bias)[row, start:stop]


def _bias_sum(cell: Any, start: int, stop: int):
    """A GRU's (``reset_after=True``) two biases summed (its gates add both)."""
    if not cell.use_bias or cell.bias is None:
        return None
    return lambda: tf.reduce_sum(_tensor(cell.bias)[:, start:stop], axis=0)


def _simple_rnn_cell(b: _CellBuilder, cell: Any, x: int, features: int):
    units = cell.units
    h = _new_slot()
    xh = b.concat(x, h)
    part = _dense_part(
        cell,
        _stacked(lambda: _tensor(cell.kernel), lambda: _tensor(cell.recurrent_kernel)),
        _bias(cell, 0, units),
        (features + units, units),
    )
    out = b.activation(cell.activation, b.linear("candidate", xh, part, pattern=True))
    return (h,), out, (out,), ((units,),)


def _lstm_cell(b: _CellBuilder, cell: Any, x: int, features: int):
    u = cell.units
    h, c = _new_slot(), _new_slot()
    xh = b.concat(x, h)

    def gate_kernel(variable):
        return lambda: tf.concat(
            [_tensor(variable)[:, : 2 * u], _tensor(variable)[:, 3 * u :]], axis=-1
        )

    gate_bias = None
    if cell.use_bias:
        gate_bias = lambda: tf.concat(
            [_tensor(cell.bias)[: 2 * u], _tensor(cell.bias)[3 * u :]], axis=-1
        )
    gates = _dense_part(
        cell,
        _stacked(gate_kernel(cell.kernel), gate_kernel(cell.recurrent_kernel)),
        gate_bias,
        (features + u, 3 * u),
    )
    candidate = _dense_part(
        cell,
        _stacked(
            _columns(cell.kernel, 2 * u, 3 * u), _columns(cell.recurrent_kernel, 2 * u, 3 * u)
        ),
        _bias(cell, 2 * u, 3 * u),
        (features + u, u),
    )
    i, f, o = b.split(
        b.activation(cell.recurrent_activation, b.linear("gates", xh, gates, False), "gates"), 3
    )
    g = b.activation(cell.activation, b.linear("candidate", xh, candidate, True))
    c_new = b.add(b.product(c, f, "forget"), b.product(g, i, "input"), "cell_state")
    h_new = b.product(b.activation(cell.activation, c_new, "output_activation"), o, "output")
    return (h, c), h_new, (h_new, c_new), ((u,), (u,))


def _gru_cell(b: _CellBuilder, cell: Any, x: int, features: int):
    u = cell.units
    h = _new_slot()
    if cell.reset_after:
        # As Keras computes them: the input's and the state's projections summed (one
        # concatenation and its gradient less per step than a stacked kernel).
        gate_x = _dense_part(
            cell, _columns(cell.kernel, 0, 2 * u), _bias(cell, 0, 2 * u, row=0), (features, 2 * u)
        )
        gate_h = _dense_part(
            cell,
            _columns(cell.recurrent_kernel, 0, 2 * u),
            _bias(cell, 0, 2 * u, row=1),
            (u, 2 * u),
        )
        gate_pre = b.add(
            b.linear("gates_kernel", x, gate_x, False),
            b.linear("gates_recurrent_kernel", h, gate_h, False),
            "gates_sum",
        )
    else:
        gates = _dense_part(
            cell,
            _stacked(_columns(cell.kernel, 0, 2 * u), _columns(cell.recurrent_kernel, 0, 2 * u)),
            _bias(cell, 0, 2 * u),
            (features + u, 2 * u),
        )
        gate_pre = b.linear("gates", b.concat(x, h), gates, False)
    z, r = b.split(b.activation(cell.recurrent_activation, gate_pre, "gates"), 2)
    if cell.reset_after:
        kernel = _dense_part(
            cell,
            _columns(cell.kernel, 2 * u, 3 * u),
            _bias(cell, 2 * u, 3 * u, row=0),
            (features, u),
        )
        recurrent = _dense_part(
            cell,
            _columns(cell.recurrent_kernel, 2 * u, 3 * u),
            _bias(cell, 2 * u, 3 * u, row=1),
            (u, u),
        )
        reset = b.product(b.linear("candidate_recurrent_kernel", h, recurrent, True), r, "reset")
        pre = b.add(b.linear("candidate_kernel", x, kernel, True), reset, "candidate_sum")
    else:
        xrh = b.concat(x, b.product(h, r, "reset"))
        candidate = _dense_part(
            cell,
            _stacked(
                _columns(cell.kernel, 2 * u, 3 * u), _columns(cell.recurrent_kernel, 2 * u, 3 * u)
            ),
            _bias(cell, 2 * u, 3 * u),
            (features + u, u),
        )
        pre = b.linear("candidate", xrh, candidate, True)
    hh = b.activation(cell.activation, pre)
    kept = b.product(h, z, "update")
    new = b.product(hh, b.one_minus(z), "interpolation")
    h_new = b.add(kept, new, "interpolation_sum")
    return (h,), h_new, (h_new,), ((u,),)


def _conv_lstm_cell(b: _CellBuilder, cell: Any, x: int, features: int):
    f = cell.filters
    h, c = _new_slot(), _new_slot()
    rank = cell.rank
    channel_axis = -1 if cell.data_format == "channels_last" else 1
    ones = (1,) * rank

    def conv_part(kernel_fn, bias_fn, shape, strides, padding, dilation):
        def apply(x, k):
            return keras.ops.conv(
                x,
                tf.cast(k, x.dtype),
                strides=strides,
                padding=padding,
                data_format=cell.data_format,
                dilation_rate=dilation,
            )

        return LinearPart(
            kernel_fn,
            bias_fn,
            apply,
            kernel_shape=shape,
            channel_axis=channel_axis,
            shiftable=padding == "valid",
            compute_dtype=cell.compute_dtype,
        )

    spatial = tuple(int(d) for d in cell.kernel.shape[:-2])
    in_channels = int(cell.kernel.shape[-2])

    def input_conv(start, stop, bias):
        return conv_part(
            _columns(cell.kernel, start, stop),
            bias,
            spatial + (in_channels, stop - start),
            cell.strides,
            cell.padding,
            cell.dilation_rate,
        )

    def recurrent_conv(start, stop):
        return conv_part(
            _columns(cell.recurrent_kernel, start, stop),
            None,
            spatial + (f, stop - start),
            ones,
            "same",
            ones,
        )

    def gate_pre(index, name):
        start, stop = index * f, (index + 1) * f
        total = b.add(
            b.linear(f"{name}_kernel", x, input_conv(start, stop, _bias(cell, start, stop)), False),
            b.linear(f"{name}_recurrent_kernel", h, recurrent_conv(start, stop), False),
            f"{name}_sum",
        )
        return b.activation(cell.recurrent_activation, total, name)

    i = gate_pre(0, "input_gate")
    forget = gate_pre(1, "forget_gate")
    o = gate_pre(3, "output_gate")
    candidate = b.add(
        b.linear("candidate_kernel", x, input_conv(2 * f, 3 * f, _bias(cell, 2 * f, 3 * f)), True),
        b.linear("candidate_recurrent_kernel", h, recurrent_conv(2 * f, 3 * f), True),
        "candidate_sum",
    )
    g = b.activation(cell.activation, candidate)
    c_new = b.add(b.product(c, forget, "forget"), b.product(g, i, "input"), "cell_state")
    h_new = b.product(b.activation(cell.activation, c_new, "output_activation"), o, "output")
    return (h, c), h_new, (h_new, c_new), None


def _cell_class_builders() -> dict[type, Callable]:
    from keras.src.layers.rnn.conv_lstm import ConvLSTMCell  # no public export

    return {
        L.SimpleRNNCell: _simple_rnn_cell,
        L.LSTMCell: _lstm_cell,
        L.GRUCell: _gru_cell,
        ConvLSTMCell: _conv_lstm_cell,
    }


class CellUnreadable(ValueError):
    """A cell that can be neither built from its class nor read by tracing its ``call``."""


def _cell_builder(cell: Any) -> Callable:
    """The builder of a Keras cell class (or of a subclass that keeps its ``call``); for any
    other cell, the one that reads it by tracing its ``call``."""
    for cls, build in _cell_class_builders().items():
        if isinstance(cell, cls) and type(cell).call is cls.call:
            return build
    return _traced_cell


def _traced_cell(b: _CellBuilder, cell: Any, x: int, features: int | None):
    """A cell of your own, read by running its ``call(x, states)`` on symbolic inputs: the
    Keras layers and ``keras.ops`` it is made of become the cell's ops (keys
    ``"layer/<op>"``), each by its own rule. Raises :class:`CellUnreadable` (with the reason)
    where that fails or where a part has no rule."""
    from pattern_keras.layers.elementwise import resolve_products
    from pattern_keras.layers.registry import builder_for, ops_for_node  # imports this module

    sizes = keras.tree.flatten(getattr(cell, "state_size", None))
    if features is None or not sizes or not all(isinstance(n, int) for n in sizes):
        raise CellUnreadable("its input or state sizes are not known integers")
    x_in = keras.Input((features,))
    states_in = [keras.Input((n,)) for n in sizes]
    try:
        kwargs = {"training": False} if _graph.call_has_training_arg(cell) else {}
        out, new = cell.call(x_in, states_in, **kwargs)
        function = keras.Model([x_in, *states_in], [out, *keras.tree.flatten(new)])
        graph = _graph.trace_model(function, has_rule=lambda layer: builder_for(layer) is not None)
    except Exception as err:  # any failure of a user's code: the reason goes to the refusal
        raise CellUnreadable(
            f"its call could not be traced ({type(err).__name__}: {err})"
        ) from None
    slots = dict(zip(graph.inputs, [x] + [_new_slot() for _ in sizes]))
    shapes = {slots[s]: spec[0] for s, spec in zip(graph.inputs, graph.input_specs)}
    first = len(b.ops)
    for index, node in enumerate(graph.nodes):
        slots.update({s: _new_slot() for s in node.outputs})
        # A graph operation (``x + y``, ``matmul(x, w)``) is named anew at every trace: keyed
        # by its place in the cell instead, so that its patterns' key is the same every time.
        name = node.key if isinstance(node.layer, keras.Layer) else f"op{index}"
        node = dataclasses.replace(
            node,
            key=f"{b.key}/{name}",
            inputs=tuple(slots[s] for s in node.inputs),
            outputs=tuple(slots[s] for s in node.outputs),
        )
        shapes.update(zip(node.outputs, node.output_shapes))
        if node.unreadable is not None:
            raise CellUnreadable(f"its part '{node.key}' cannot be read: {node.unreadable}")
        try:
            ops = ops_for_node(node, node.input_shapes[0] if node.input_shapes else ())
        except ValueError as err:  # its first sentence names the part and why
            raise CellUnreadable(str(err).split(". ")[0]) from None
        for op in ops:
            op.rank = op.rank or 2
        b.ops.extend(ops)
    try:
        resolve_products(b.ops[first:], shapes)
    except ValueError as err:
        raise CellUnreadable(str(err)) from None
    states = tuple(slots[s] for s in graph.inputs[1:])
    outputs = [slots[s] for s in graph.outputs]
    return states, outputs[0], tuple(outputs[1:]), tuple((n,) for n in sizes)


def build_cell(key: str, layer: Any, step_shape: Sequence[Any]) -> Cell:
    """The cell program of ``layer`` (an RNN layer of readable cells) for steps shaped
    ``step_shape`` (batch axis first, ``None``)."""
    cell = layer.cell
    stacked = isinstance(cell, L.StackedRNNCells) and type(cell).call is L.StackedRNNCells.call
    cells = list(cell.cells) if stacked else [cell]
    x = _new_slot()
    states: list[int] = []
    new_states: list[int] = []
    shapes: list[tuple[int, ...]] = []
    rank = len(step_shape)
    builder = _CellBuilder(key, layer, rank)
    slot, features = x, int(step_shape[-1]) if step_shape[-1] is not None else None
    for c in cells:
        builder.key = key if len(cells) == 1 else f"{key}/{c.name}"
        s_in, slot, s_out, s_shapes = _cell_builder(c)(builder, c, slot, features)
        states += s_in
        new_states += s_out
        shapes += list(s_shapes) if s_shapes is not None else [None] * len(s_in)
        features = getattr(c, "units", None) or getattr(c, "output_size", None)
        if features is None:
            features = keras.tree.flatten(c.state_size)[0]
    builder.mark_rectified()
    return Cell(builder.ops, x, tuple(states), slot, tuple(new_states), tuple(shapes))


# ----------------------------------------------------------------------------------------------
# The loop

_REPEATED = contextvars.ContextVar("pattern_keras_repeated_samples", default=False)


@contextlib.contextmanager
def repeated_samples():
    """Within this block a batch may hold several copies of the samples, copy-major (the
    points of IntegratedGradients and SmoothGrad): a stateful layer repeats its states once per
    copy. Elsewhere its batch must be exactly the states' batch, as Keras requires."""
    token = _REPEATED.set(True)
    try:
        yield
    finally:
        _REPEATED.reset(token)


class StepRecord:
    """What a recurrent op's forward keeps of every step, in processing order (the reverse of
    the sequence's order for ``go_backwards``): its cell's recorded slots (``TensorArray`` by
    slot), the input steps, the mask (time-major, or ``None``) and the initial states."""

    def __init__(self, arrays, inputs, mask, steps, initial_states) -> None:
        self.arrays = arrays
        self.inputs = inputs
        self.mask = mask
        self.steps = steps
        self.initial_states = initial_states

    def at(self, k: Any, cell: Cell) -> dict[int, Any]:
        values = {cell.x: self.inputs.read(k)}
        values.update({slot: ta.read(k) for slot, ta in self.arrays.items()})
        return values

    def stacked(self, slot: int) -> Any:
        """A recorded slot's values of every step, ``(steps, batch, ...)``."""
        return self.arrays[slot].stack()


def _time_major(t: Any) -> Any:
    """``(batch, steps, ...)`` ↔ ``(steps, batch, ...)`` (its own inverse)."""
    return tf.transpose(t, [1, 0] + list(range(2, len(t.shape))))


def _where(mask: Any, a: Any, b: Any) -> Any:
    """``a`` for the samples where ``mask`` (shape ``(batch,)``) is true, else ``b``."""
    return tf.where(tf.reshape(mask, [-1] + [1] * (len(a.shape) - 1)), a, b)


@dataclasses.dataclass(eq=False)
class Recurrence:
    """The loop of one recurrent layer call: its cell, and how Keras iterates it.

    Attributes
    ----------
    key : str
        The layer's key.
    layer : keras.layers.RNN
        The layer (its cell holds the weights).
    cell : Cell
    go_backwards, return_sequences, return_state, zero_output_for_mask : bool
        As the layer's attributes (Keras's semantics: a masked step keeps the states and
        outputs the previous output, or zeros with ``zero_output_for_mask``).
    mask_input : int or None
        The position of the mask among the op's inputs.
    state_inputs : tuple of int
        The positions of the initial states among the op's inputs (empty: zeros, or a stateful
        layer's current states).
    one_step : bool
        A cell called on its own: its input is one step ``(batch, ...)``, not a sequence.
    """

    key: str
    layer: Any
    cell: Cell
    go_backwards: bool
    return_sequences: bool
    return_state: bool
    zero_output_for_mask: bool
    mask_input: int | None
    state_inputs: tuple[int, ...]
    one_step: bool = False

    # -- forward ---------------------------------------------------------------------------

    def _initial_states(self, xs: Sequence[Any], x: Any) -> list[Any]:
        if self.state_inputs:
            return [tf.cast(xs[i], x.dtype) for i in self.state_inputs]
        batch = tf.shape(x)[0]
        if getattr(self.layer, "stateful", False) and self.layer.states is not None:
            # The current states, read and never written: analyze and fit leave them as they
            # are.
            states = [tf.cast(_tensor(v), x.dtype) for v in keras.tree.flatten(self.layer.states)]
            rows = tf.shape(states[0])[0]
            message = (
                f"Layer '{self.key}' is stateful with a batch of {states[0].shape[0]} "
                "sequences: explain and fit it in batches of exactly that size (batch_size="
                f"{states[0].shape[0]}, and a number of samples divisible by it)."
            )
            repeated = _REPEATED.get()
            check = tf.debugging.assert_equal(
                batch % rows if repeated else batch, 0 if repeated else rows, message=message
            )
            # Before the loop reads them (an assertion alone may run after the failing op).
            with tf.control_dependencies([check] if check is not None else []):
                states = [tf.identity(s) for s in states]
            if not repeated:
                return states
            return [tf.tile(s, [batch // rows] + [1] * (len(s.shape) - 1)) for s in states]
        return [
            tf.zeros(tf.concat([[batch], tf.constant(shape, tf.int32)], 0), x.dtype)
            for shape in self._state_shapes(x)
        ]

    def _state_shapes(self, x: Any) -> list[tuple[int, ...]]:
        shapes = list(self.cell.state_shapes)
        if all(s is not None for s in shapes):
            return shapes
        # A convolutional cell: the states are shaped like its output on one step.
        out = self.layer.cell.compute_output_shape((1,) + tuple(x.shape[2:]))[0]
        return [tuple(int(d) for d in out[1:])] * len(shapes)

    def forward(self, xs: Sequence[Any]) -> list[Any]:
        """The layer's outputs (``y``, then the final states with ``return_state``) and the
        step record."""
        cell = self.cell
        xs = list(xs)
        if self.one_step:
            xs[0] = xs[0][:, None]
        x = xs[0]
        steps = tf.shape(x)[1]
        states = self._initial_states(xs, x)
        sequence = _time_major(x)
        mask = None
        if self.mask_input is not None:
            mask = tf.transpose(tf.cast(xs[self.mask_input], tf.bool), [1, 0])
        if self.go_backwards:
            sequence = tf.reverse(sequence, [0])
            mask = None if mask is None else tf.reverse(mask, [0])
        # Kept readable: the backward pass and the statistics read the steps again (an eager
        # TensorArray forgets a value once read otherwise).
        inputs = tf.TensorArray(
            x.dtype, size=steps, element_shape=sequence.shape[1:], clear_after_read=False
        )
        inputs = inputs.unstack(sequence)
        masks = None if mask is None else tf.TensorArray(tf.bool, size=steps).unstack(mask)
        kernels = read_kernels(cell.parts)
        recorded = cell.recorded

        # One step outside the loop gives every slot's dtype and static shape (in a graph its
        # ops are unused, and pruned).
        with kernels_in_loop(kernels):
            trial = cell.run({cell.x: sequence[0], **dict(zip(cell.states, states))})
        arrays = [
            tf.TensorArray(
                trial[s].dtype, size=steps, element_shape=trial[s].shape, clear_after_read=False
            )
            for s in recorded
        ]
        out_shape = trial[cell.output].shape
        outputs = tf.TensorArray(
            trial[cell.output].dtype,
            size=steps if self.return_sequences else 1,
            element_shape=out_shape,
        )
        zero = tf.zeros_like(trial[cell.output])

        def body(k, states, previous, outputs, arrays):
            with kernels_in_loop(kernels):
                values = cell.run({cell.x: inputs.read(k), **dict(zip(cell.states, states))})
            out = values[cell.output]
            new = [values[s] for s in cell.new_states]
            if masks is not None:
                m = masks.read(k)
                out = _where(m, out, zero if self.zero_output_for_mask else previous)
                new = [_where(m, n, s) for n, s in zip(new, states)]
            arrays = [ta.write(k, values[s]) for ta, s in zip(arrays, recorded)]
            outputs = outputs.write(k, out) if self.return_sequences else outputs
            return k + 1, new, out, outputs, arrays

        _, final, last, outputs, arrays = tf.while_loop(
            lambda k, *_: k < steps,
            body,
            (tf.constant(0), states, zero, outputs, arrays),
            maximum_iterations=steps,
        )
        dtype = self.layer.compute_dtype
        y = _time_major(outputs.stack()) if self.return_sequences else last
        record = StepRecord(dict(zip(recorded, arrays)), inputs, mask, steps, states)
        result = [tf.cast(y, dtype)]
        if self.return_state:
            result += [tf.cast(s, dtype) for s in final]
        return result + [record]

    # -- backward --------------------------------------------------------------------------

    def backward(
        self,
        inputs: Sequence[Any],
        outputs: Sequence[Any],
        upstream: Sequence[Any],
        step_backward: Callable[[dict[int, Any], dict[int, Any]], list[Any]],
    ) -> list[Any]:
        """The signals at the op's inputs, from the signals at its outputs, walking the steps
        in reverse; ``step_backward(values, seeds)`` gives the signals at the cell's inputs
        (``cell.inputs`` order) from seeds at its output and new states.

        At a masked step the cell sends nothing back: the states' signals pass to the
        previous states unchanged, and the output's to the previous output (Keras repeats
        it there), unless ``zero_output_for_mask``.
        """
        cell = self.cell
        record = outputs[-1]
        steps = record.steps
        x = inputs[0]
        n = len(cell.states)
        dtype = x.dtype
        initial = record.initial_states
        seeds = list(upstream[1 : 1 + n]) if self.return_state else [None] * n
        seeds = [
            tf.zeros_like(s) if g is None else tf.cast(g, s.dtype) for g, s in zip(seeds, initial)
        ]
        g_y = upstream[0]
        zero_out = tf.zeros_like(g_y if not self.return_sequences else g_y[:, 0])
        if self.return_sequences:
            per_step = tf.TensorArray(g_y.dtype, size=steps, element_shape=zero_out.shape)
            per_step = per_step.unstack(_time_major(g_y))
            carried = zero_out
        else:
            per_step = None
            carried = g_y  # the last output: the loop's final ``previous``
        masks = None
        if record.mask is not None:
            masks = tf.TensorArray(tf.bool, size=steps).unstack(record.mask)
        signals_x = tf.TensorArray(dtype, size=steps, element_shape=record.inputs.element_shape)
        kernels = read_kernels(cell.parts)

        def body(j, state_signals, carried, signals_x):
            k = steps - 1 - j
            out_signal = carried if per_step is None else carried + per_step.read(k)
            with kernels_in_loop(kernels):
                values = cell.run(record.at(k, cell))
                seed = {}
                for slot, g in [(cell.output, out_signal)] + list(
                    zip(cell.new_states, state_signals)
                ):
                    seed[slot] = g if slot not in seed else seed[slot] + g
                found = step_backward(values, seed)
            g_x, g_states = found[0], list(found[1:])
            if masks is None:
                return j + 1, g_states, tf.zeros_like(carried), signals_x.write(k, g_x)
            m = masks.read(k)
            g_states = [_where(m, g, s) for g, s in zip(g_states, state_signals)]
            g_x = _where(m, g_x, tf.zeros_like(g_x))
            kept = tf.zeros_like(out_signal) if self.zero_output_for_mask else out_signal
            carried = _where(m, tf.zeros_like(out_signal), kept)
            return j + 1, g_states, carried, signals_x.write(k, g_x)

        _, state_signals, _, signals_x = tf.while_loop(
            lambda j, *_: j < steps,
            body,
            (tf.constant(0), seeds, carried, signals_x),
            maximum_iterations=steps,
        )
        g_sequence = signals_x.stack()
        if self.go_backwards:
            g_sequence = tf.reverse(g_sequence, [0])
        downstream: list[Any] = [None] * len(inputs)
        downstream[0] = g_sequence[0] if self.one_step else _time_major(g_sequence)
        for position, g in zip(self.state_inputs, state_signals):
            downstream[position] = g
        return downstream


# ----------------------------------------------------------------------------------------------
# Builders: layer calls to ops


#: The Keras cells that are read, called on their own too (one step).
CELL_CLASSES = (L.SimpleRNNCell, L.LSTMCell, L.GRUCell, L.StackedRNNCells)

#: The Keras RNN layer classes whose cells are read (RNN itself: of the cells below, stacked).
RNN_CLASSES = (
    L.RNN,
    L.SimpleRNN,
    L.LSTM,
    L.GRU,
    L.ConvLSTM1D,
    L.ConvLSTM2D,
    L.ConvLSTM3D,
)


def _roles(node: _graph.CallNode, n_states: int) -> tuple[int | None, tuple[int, ...]]:
    """``(mask position, initial state positions)`` among a recurrent call's inputs: the
    tensor given as ``mask``, and the others after the sequence, in Keras's order (the
    ``initial_state`` list's)."""
    arguments = _graph.call_arguments(node)
    if arguments is None:
        masks, states = [], tuple(range(1, len(node.inputs)))
    else:
        args, kwargs = arguments
        mask = kwargs.get("mask", args[2] if len(args) > 2 else None)
        masks = [mask[1]] if mask is not None and mask[0] == "input" else []
        states = tuple(i for i in range(1, len(node.inputs)) if i not in masks)
    if len(masks) > 1 or (states and len(states) != n_states):
        raise ValueError(
            f"Layer '{node.key}' ({type(node.layer).__name__}) is called with "
            f"{len(node.inputs)} tensors: expected the sequence, optionally {n_states} initial "
            "state(s), and optionally a mask."
        )
    return (masks[0] if masks else None), states


def recurrence(key: str, layer: Any, x_shape, mask_input, state_inputs) -> Recurrence:
    """The :class:`Recurrence` of one RNN layer call; :class:`CellUnreadable` (naming the
    layer, the cell and why) where its cell cannot be read."""
    try:
        cell = build_cell(key, layer, (x_shape[0],) + tuple(x_shape[2:]))
    except CellUnreadable as err:
        raise CellUnreadable(_refusal(key, layer, layer.cell, str(err))) from None
    return Recurrence(
        key=key,
        layer=layer,
        cell=cell,
        go_backwards=bool(layer.go_backwards),
        return_sequences=bool(layer.return_sequences),
        return_state=bool(layer.return_state),
        zero_output_for_mask=bool(getattr(layer, "zero_output_for_mask", False)),
        mask_input=mask_input,
        state_inputs=tuple(state_inputs),
    )


def _refusal(key: str, layer: Any, cell: Any, why: str) -> str:
    return (
        f"Layer '{key}' ({type(layer).__name__}) runs a cell of class {type(cell).__name__} "
        f"that pattern_keras cannot read: {why.rstrip('.')}. Only the gradient family (Gradient, "
        "InputTimesGradient, IntegratedGradients, SmoothGrad) explains it, through the "
        "layer's own gradient. Cells are read from Keras's SimpleRNNCell, LSTMCell, GRUCell, "
        "ConvLSTM cells and StackedRNNCells, and from a cell of your own whose call is made of "
        "Keras layers and keras.ops that have rules."
    )


def _recurrent_op(key, layer, rec, inputs, outputs) -> Op:
    return Op(
        key=key,
        kind="recurrent",
        layer=layer,
        inputs=tuple(inputs),
        outputs=tuple(outputs) + (_new_slot(),),
        forward=rec.forward,
        recurrent=rec,
    )


def _n_states(layer: Any) -> int:
    return (
        len(keras.tree.flatten(layer.cell.state_size))
        if not isinstance(layer.cell, L.StackedRNNCells)
        else sum(len(keras.tree.flatten(c.state_size)) for c in layer.cell.cells)
    )


def rnn_layer(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """An RNN layer call (SimpleRNN, LSTM, GRU, ConvLSTM, RNN of those cells): one recurrent
    op, or an opaque one (the gradient family only) for a cell that cannot be read."""
    layer = node.layer
    mask_input, state_inputs = _roles(node, _n_states(layer))
    try:
        rec = recurrence(node.key, layer, x_shape, mask_input, state_inputs)
    except CellUnreadable as err:
        return [whole_call_op(node, "opaque", refusal=str(err))]
    return [_recurrent_op(node.key, layer, rec, node.inputs, node.outputs)]


def bidirectional(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """A Bidirectional call: its forward and backward layers as two recurrent ops (the
    backward one's sequence flipped back), merged by a move (``concat``) or a sum (``sum``,
    ``ave``); ``merge_mode=None`` gives both outputs. ``mul`` multiplies two signals: no rule
    exists for that product, so it is refused by every analyzer but the gradient family."""
    layer = node.layer
    forward_layer, backward_layer = layer.forward_layer, layer.backward_layer
    n = _n_states(forward_layer)
    mask_input, state_inputs = _roles(node, 2 * n)
    if state_inputs and len(state_inputs) != 2 * n:
        raise ValueError(f"Layer '{node.key}' needs {2 * n} initial states.")  # pragma: no cover
    halves = (state_inputs[:n], state_inputs[n:]) if state_inputs else ((), ())
    merge = layer.merge_mode
    ops: list[Op] = []
    y_slots = []
    states_out = list(node.outputs[1 if merge is not None else 2 :])
    for i, (sub, positions) in enumerate(zip((forward_layer, backward_layer), halves)):
        key = f"{node.key}/{sub.name}"
        inputs = [node.inputs[0]]
        mask_pos = None
        if mask_input is not None:
            inputs.append(node.inputs[mask_input])
            mask_pos = 1
        state_pos = []
        for p in positions:
            state_pos.append(len(inputs))
            inputs.append(node.inputs[p])
        try:
            rec = recurrence(key, sub, x_shape, mask_pos, state_pos)
        except CellUnreadable as err:
            return [whole_call_op(node, "opaque", refusal=str(err))]
        y = _new_slot()
        states = states_out[i * n : (i + 1) * n] if layer.return_state else []
        ops.append(_recurrent_op(key, sub, rec, inputs, [y] + list(states)))
        if i == 1 and layer.return_sequences:
            flipped = _new_slot()
            ops.append(_move(f"{node.key}/flip", layer, (y,), (flipped,), _flip_time))
            y = flipped
        y_slots.append(y)
    if merge is None:
        for y, out in zip(y_slots, node.outputs[:2]):
            ops.append(_move(f"{node.key}/output", layer, (y,), (out,), _same))
        return ops
    merged = node.outputs[0]
    if merge == "concat":
        ops.append(_move(f"{node.key}/concat", layer, tuple(y_slots), (merged,), _concat))
    elif merge in ("sum", "ave"):
        scale = 0.5 if merge == "ave" else 1.0
        ops.append(
            Op(
                key=f"{node.key}/{merge}",
                kind="sum",
                layer=layer,
                inputs=tuple(y_slots),
                outputs=(merged,),
                forward=lambda xs, s=scale: [(xs[0] + xs[1]) * s if s != 1.0 else xs[0] + xs[1]],
                averages=True,
            )
        )
    else:
        ops.append(
            Op(
                key=node.key,
                kind="opaque",
                layer=layer,
                inputs=tuple(y_slots),
                outputs=(merged,),
                forward=lambda xs: [xs[0] * xs[1]],
                refusal=(
                    f"Layer '{node.key}' (Bidirectional, merge_mode='mul') multiplies the "
                    "forward and backward outputs: a product of two signals, neither a gate, "
                    "has no backward rule (only the gradient family explains it). Use "
                    "merge_mode 'concat', 'sum' or 'ave', or None and explain one output."
                ),
            )
        )
    return ops


def _move(key, layer, inputs, outputs, forward) -> Op:
    return Op(key=key, kind="move", layer=layer, inputs=inputs, outputs=outputs, forward=forward)


def _flip_time(xs):
    return [tf.reverse(xs[0], [1])]


def _concat(xs):
    return [tf.concat([xs[0], tf.cast(xs[1], xs[0].dtype)], axis=-1)]


def cell_call(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """A cell called on its own, ``cell(x, states) -> (output, new states)``: a recurrent op
    of one step (the gates of its products are known: not left to ``resolve_products``)."""
    layer = node.layer
    holder = type("_Holder", (), {"cell": layer})()  # build_cell reads ``layer.cell``
    try:
        cell = build_cell(node.key, holder, tuple(x_shape))
    except CellUnreadable as err:
        refusal = _refusal(node.key, layer, layer, str(err))
        return [whole_call_op(node, "opaque", refusal=refusal)]
    if len(node.inputs) != len(cell.inputs):
        raise ValueError(
            f"Cell '{node.key}' ({type(layer).__name__}) is called with {len(node.inputs)} "
            f"tensors; expected the step's input and {len(cell.states)} state(s)."
        )
    rec = Recurrence(
        key=node.key,
        layer=layer,
        cell=cell,
        go_backwards=False,
        return_sequences=False,
        return_state=True,
        zero_output_for_mask=False,
        mask_input=None,
        state_inputs=tuple(range(1, len(node.inputs))),
        one_step=True,
    )
    return [_recurrent_op(node.key, layer, rec, node.inputs, node.outputs)]


def _same(xs):
    return [xs[0]]


def time_distributed(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """TimeDistributed: the wrapped layer's own ops on the sequence's steps merged into the
    batch axis, ``(batch·steps, ...)``, between two reshapes. The wrapped layer is keyed
    ``"outer/inner"``."""
    from pattern_keras.layers.registry import ops_for_node  # the registry imports this module

    layer = node.layer
    inner = layer.layer
    steps = x_shape[1]
    flat_in, flat_out = _new_slot(), _new_slot()
    step_in = (None,) + tuple(x_shape[2:])
    out_shape = tuple(node.output_shapes[0])
    step_out = (None,) + out_shape[2:]
    pass_training = _graph.call_has_training_arg(inner)

    def call(values):
        kwargs = {"training": False} if pass_training else {}
        return [inner(values[0], **kwargs)]

    inner_node = _graph.CallNode(
        key=f"{node.key}/{inner.name}",
        layer=inner,
        inputs=(flat_in,),
        outputs=(flat_out,),
        call=call,
        input_shapes=(step_in,),
        output_shapes=(step_out,),
        output_dtypes=node.output_dtypes[:1],
    )

    def merge(xs):
        x = xs[0]
        return [tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))]

    ops = [_move(f"{node.key}/merge_steps", layer, (node.inputs[0],), (flat_in,), merge)]
    ops += ops_for_node(inner_node, step_in)
    if steps is not None:

        def split(xs):
            y = xs[0]
            return [tf.reshape(y, tf.concat([[-1, steps], tf.shape(y)[1:]], 0))]

        ops.append(_move(f"{node.key}/split_steps", layer, (flat_out,), node.outputs[:1], split))
    else:

        def split_like(xs):
            y, x = xs
            return [tf.reshape(y, tf.concat([tf.shape(x)[:2], tf.shape(y)[1:]], 0))]

        ops.append(
            _move(
                f"{node.key}/split_steps",
                layer,
                (flat_out, node.inputs[0]),
                node.outputs[:1],
                split_like,
            )
        )
    return ops


# ----------------------------------------------------------------------------------------------
# For the pattern statistics


def cell_linear_ops(ops: Sequence[Op]) -> list[Op]:
    """The linear ops of ``ops`` and, in their place, those of every recurrent op's cell that
    have patterns: every op the statistics are gathered for."""
    found = []
    for op in ops:
        if op.kind == "linear":
            found.append(op)
        elif op.kind == "recurrent":
            found += op.recurrent.cell.pattern_ops
    return found


def cell_values(ops: Sequence[Op], values: dict[int, Any]) -> dict[int, Any]:
    """``values`` with, for every cell linear op that has patterns, its input and output over
    all samples and steps, ``(samples·steps, ...)``, masked steps left out: the rows the
    statistics sum over (as positions are for a convolution)."""
    values = dict(values)
    for op in ops:
        if op.kind != "recurrent":
            continue
        record = values[op.outputs[-1]]
        cell = op.recurrent.cell
        for inner in cell.pattern_ops:
            for slot in (inner.inputs[0], inner.outputs[0]):
                if slot in values:
                    continue
                if slot == cell.x:
                    stacked = record.inputs.stack()
                else:
                    stacked = record.stacked(slot)
                if record.mask is not None:
                    values[slot] = tf.boolean_mask(stacked, record.mask)
                else:
                    rest = list(stacked.shape[2:])
                    if any(d is None for d in rest):
                        rest = tf.unstack(tf.shape(stacked)[2:])
                    values[slot] = tf.reshape(stacked, [-1] + rest)
    return values
