"""The engine's vocabulary: :class:`Op` (one step of a model's program), :class:`LinearPart`
(a kernel applied linearly), the op kinds, and :func:`shared_kernels`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from pattern_keras import graph as _graph

__all__ = [
    "KINDS",
    "LinearPart",
    "Op",
    "shared_kernels",
    "read_kernels",
    "kernels_in_loop",
    "simple_builder",
    "whole_call_op",
    "Builder",
]

KINDS = (
    "linear",
    "affine",
    "activation",
    "max_pool",
    "sum",
    "move",
    "index",
    "constant",
    "opaque",
    "lookup",
    "recurrent",
)


#: While :func:`shared_kernels` is active: ``{id(part): (part, kernel tensor)}``.
_KERNELS: contextvars.ContextVar[dict[int, tuple[Any, Any]] | None] = contextvars.ContextVar(
    "pattern_keras_kernels", default=None
)


@contextlib.contextmanager
def shared_kernels():
    """Within this block each :class:`LinearPart`'s kernel is computed once.

    Reading a variable is a stateful op, so TensorFlow never merges two reads, nor what is
    computed from them: without this, a folded kernel ``W·γ/σ`` is recomputed by the forward
    replay and again by every rule that applies it (on ResNet50, 25 M products each time). Use
    it around one straight-line pass (forward and backward in the same graph or eager call),
    never across a loop body and the code outside it.
    """
    token = _KERNELS.set({})
    try:
        yield
    finally:
        _KERNELS.reset(token)


def read_kernels(parts: Sequence[Any]) -> dict[int, tuple[Any, Any]]:
    """The kernels of ``parts``, read here (through the :func:`shared_kernels` cache where it
    is active): ``{id(part): (part, kernel tensor)}``, for :func:`kernels_in_loop`."""
    return {id(p): (p, p.kernel) for p in parts}


@contextlib.contextmanager
def kernels_in_loop(kernels: dict[int, tuple[Any, Any]]):
    """Within this block (a loop body), the parts of ``kernels`` give those tensors.

    A kernel read inside a ``tf.while_loop`` body belongs to the body's graph: cached by an
    enclosing :func:`shared_kernels` it would leak into code outside the loop. Read the
    kernels before the loop (:func:`read_kernels`) and enter this block in the body: the
    tensors are then captured by the loop, read once, and whatever else the body reads stays
    in the body's own cache.
    """
    token = _KERNELS.set(dict(kernels))
    try:
        yield
    finally:
        _KERNELS.reset(token)


class _InDtype:
    """A linear map computing in one dtype: ``fn(cast(x), cast(kernel))``."""

    def __init__(self, fn: Callable[[Any, Any], Any], dtype: str) -> None:
        self.raw = fn
        self.dtype = dtype

    def __call__(self, x: Any, kernel: Any) -> Any:
        return self.raw(tf.cast(x, self.dtype), tf.cast(kernel, self.dtype))


@dataclasses.dataclass(eq=False)
class LinearPart:
    """A kernel applied linearly to one input tensor: ``z = apply(x, kernel) + bias``.

    Attributes
    ----------
    kernel_fn : callable
        Returns the kernel in Keras layout, e.g. ``(in, out)`` for Dense,
        ``(kh, kw, in/groups, out)`` for Conv2D, ``(kh, kw, in, multiplier)`` for DepthwiseConv2D.
        A callable, so a traced function reads the current weights (or a folded kernel).
    bias_fn : callable or None
        Returns the bias, added along the channel axis.
    kernel_shape : tuple of int
        The kernel's static shape.
    apply : callable
        ``apply(x, kernel) -> z`` without the bias; linear in ``x`` and in ``kernel``.
    out_axes : tuple of int
        The kernel axes that index output neurons (``(-1,)`` for Dense/Conv, ``(-2, -1)`` for a
        depthwise kernel, ``(-2,)`` for a transposed convolution).
    channel_axis : int
        The axis of ``z`` that holds the neurons (``-1`` channels_last, ``1`` channels_first).
    neuron_axes : tuple of int or None
        For a map whose neurons span several axes of ``z`` (an EinsumDense such as
        ``"abc,cde->abde"``, neurons ``(d, e)``): those axes, in the order of ``out_axes``.
        ``None`` (default): the neurons are ``channel_axis``, flattened in kernel order (a
        depthwise kernel's ``(in, multiplier)``). Every other axis of ``z`` (batch, positions,
        tokens) counts as samples for the statistics.
    padded_apply : callable or None
        ``(pad, apply_valid)``: an explicit zero padding of the input and the same map with
        'valid' padding, used by the statistics to shift inputs without shifting the padding.
        ``None`` where the map pads nothing.
    shiftable : bool
        Whether the statistics may subtract a constant from the input: true unless the map pads
        in a way that cannot be made explicit (a transposed convolution, 'same' padding on an
        input of unknown size).
    compute_dtype : str or None
        The layer's compute dtype (``"float16"`` under the ``mixed_float16`` policy). ``apply``
        casts its input and kernel to it, so the replay, and every rule applying a kernel
        (patterns are float32), computes as the layer does. ``None``: in the input's dtype.
    raw_apply : callable
        The same map in the dtype of its input (the kernel cast to it), for the statistics,
        which run in float32 or wider whatever the layer computes in. Set from ``apply``.
    """

    kernel_fn: Callable[[], Any]
    bias_fn: Callable[[], Any] | None
    apply: Callable[[Any, Any], Any]
    kernel_shape: tuple[int, ...]
    out_axes: tuple[int, ...] = (-1,)
    channel_axis: int = -1
    neuron_axes: tuple[int, ...] | None = None
    padded_apply: tuple[Callable[[Any], Any], Callable[[Any, Any], Any]] | None = None
    shiftable: bool = True
    compute_dtype: str | None = None
    raw_apply: Callable[[Any, Any], Any] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        # An ``apply`` taken from another part (a folded BatchNorm) arrives already wrapped.
        if isinstance(self.apply, _InDtype):
            if self.compute_dtype is None:
                self.compute_dtype = self.apply.dtype
            self.apply = self.apply.raw
        self.raw_apply = self.apply
        if self.compute_dtype is not None:
            self.apply = _InDtype(self.raw_apply, self.compute_dtype)

    @property
    def kernel(self) -> Any:
        """The kernel as a tensor, read when called (so it follows the model's weights); once
        per pass inside :func:`shared_kernels`."""
        cache = _KERNELS.get()
        if cache is None:
            return tf.convert_to_tensor(self.kernel_fn())
        if id(self) not in cache:  # the part is kept in the entry, so its id stays unique
            cache[id(self)] = (self, tf.convert_to_tensor(self.kernel_fn()))
        return cache[id(self)][1]

    @property
    def bias(self) -> Any:
        return None if self.bias_fn is None else tf.convert_to_tensor(self.bias_fn())

    @property
    def neuron_shape(self) -> tuple[int, ...]:
        """Shape of the per-neuron statistics: the kernel's output axes."""
        shape = self.kernel_shape
        return tuple(shape[a] for a in self.out_axes)

    @property
    def input_axes(self) -> tuple[int, ...]:
        """Kernel axes summed over by ``wᵀ(·)`` for each neuron."""
        rank = len(self.kernel_shape)
        outs = {a % rank for a in self.out_axes}
        return tuple(a for a in range(rank) if a not in outs)

    def add_bias(self, z: Any) -> Any:
        if self.bias_fn is None:
            return z
        rank = len(z.shape)
        bias = tf.cast(self.bias, z.dtype)
        if self.neuron_axes is not None:
            return z + self.to_output(bias, rank)
        if rank >= 2 and self.channel_axis % rank in (1, rank - 1) and len(bias.shape) == 1:
            # BiasAdd, not an add: TensorFlow fuses it into the convolution or matrix product
            # before it (one pass less over the output).
            last = self.channel_axis % rank == rank - 1
            return tf.nn.bias_add(z, bias, data_format="N...C" if last else "NC...")
        shape = [1] * rank
        shape[self.channel_axis] = -1
        return z + tf.reshape(bias, shape)

    def per_neuron_sum(self, t: Any) -> Any:
        """Sum an output-shaped tensor over batch and positions; shaped like ``neuron_shape``."""
        rank = len(t.shape)
        if self.neuron_axes is None:
            axis = [a for a in range(rank) if a != self.channel_axis % rank]
            return tf.reshape(tf.reduce_sum(t, axis=axis), self.neuron_shape)
        neurons = [a % rank for a in self.neuron_axes]
        summed = tf.reduce_sum(t, axis=[a for a in range(rank) if a not in neurons])
        kept = sorted(neurons)  # the order reduce_sum leaves them in
        order = [kept.index(a) for a in neurons]
        if order != sorted(order):
            summed = tf.transpose(summed, order)
        return tf.reshape(summed, self.neuron_shape)

    def to_output(self, per_neuron: Any, rank: int) -> Any:
        """Broadcast a ``neuron_shape`` tensor against an output tensor of the given rank."""
        shape = [1] * rank
        if self.neuron_axes is None:
            shape[self.channel_axis] = -1
            return tf.reshape(per_neuron, shape)
        neurons = [a % rank for a in self.neuron_axes]
        kept = sorted(neurons)
        order = [neurons.index(a) for a in kept]
        per_neuron = tf.reshape(per_neuron, self.neuron_shape)
        if order != sorted(order):
            per_neuron = tf.transpose(per_neuron, order)
        for a, size in zip(neurons, self.neuron_shape):
            shape[a] = size
        return tf.reshape(per_neuron, shape)


@dataclasses.dataclass(eq=False)
class Op:
    """One step of the canonical program the engine runs forward and backward.

    Attributes
    ----------
    key : str
        The layer key (``"name"`` or ``"outer/inner"``); patterns of a linear op are stored
        under ``pattern_key``.
    kind : str
        One of :data:`KINDS`.
    layer : keras.Operation
        The layer this op comes from (for error messages and rules that need it).
    inputs, outputs : tuple of int
        Tensor slots.
    forward : callable
        ``forward(list_of_inputs) -> list_of_outputs`` in inference mode.
    linear : LinearPart or None
        For ``kind == "linear"``.
    activation : str or None
        For ``kind == "activation"``: ``"relu"``, ``"linear"`` or ``"softmax"``.
    pattern_key : str or None
        For linear ops: the key of its pattern (the layer key; ``key/part`` for a layer with two
        kernels).
    rectified : bool
        For linear ops: the output goes straight (and only) into a ReLU, so only the positive
        regime of its pattern matters.
    affine : callable or None
        For a BatchNormalization (``kind == "affine"``): returns ``(scale, shift, axis)`` with
        ``y = scale·x + shift`` (a callable, so traced code reads the current weights); what
        lets it fold into the preceding linear layer. ``None`` for the other affine ops, which
        never fold.
    gate : callable or None
        For a gating activation ``f(z) = z·g(z)``: ``gate(inputs) -> g(z)``, broadcastable to
        ``inputs[0]``; for a ``"product"`` op the value of its gate operand, ``inputs[1]``.
        ``None`` for every other op (ReLU keeps its forward gate, see :mod:`pattern_keras.rules`).
    held : callable or None
        The forward pass with a quantity held constant per sample (same values): for
        LayerNormalization its normalizing scale ``1/σ`` (a linear map of the input), for an
        attention product the attention weights. Every rule-based analyzer differentiates it
        instead of ``forward`` (see :func:`pattern_keras.rules.held_vjp`).
    held_inputs : tuple of int
        Positions (in ``inputs``) of operands that ``held`` holds constant: the attention
        weights of a product ``softmax(·)·V``; the queries, keys, bias and mask of
        ``dot_product_attention``; both operands of a product that feeds only held attention
        weights (``Q·Kᵀ``). Rule-based analyzers send them no signal (``None``), so nothing
        upstream of them is visited; the gradient family differentiates ``forward`` as usual.
    bilinear : bool
        A product of two tensors, linear in each (``matmul``, ``einsum``): which operand it
        holds is decided once the whole program is known
        (:func:`pattern_keras.layers.attention.resolve_attention`).
    rank : int
        Rank of the op's (first) output, batch axis included.
    averages : bool
        For ``kind == "sum"``: the op is a sum or average of its inputs' values with fixed
        non-negative weights (Add, Average, average pooling), so non-negative inputs give a
        non-negative output. Rules read this instead of the layer's class.
    plain_relu : bool
        For ``activation == "relu"``: known to be ``max(z, 0)`` exactly (no ``max_value``, not
        ReLU6, not a user's layer registered as a rectifier), so ``f(z)/z`` is its gate.
    refusal : str or None
        For ``kind == "opaque"``: why the layer has no rule (and could not be looked into), the
        message every analyzer but the gradient family refuses the model with.
    table : callable or None
        For ``kind == "lookup"``: returns the embedding table, ``(vocabulary, ...)``, whose rows
        the ids (``inputs[0]``) pick; its ``vocabulary`` attribute is the number of rows
        (:class:`~pattern_keras.layers.embedding.Table`).
    index_inputs : tuple of int
        Positions in ``inputs`` that are read as indices or masks (the indices of a gather, an
        attention mask): never explained, so an integer model input read there is not cast to
        a float explained point.
    recurrent : Recurrence or None
        For ``kind == "recurrent"``: the loop over time steps and its cell, a small program of
        ops of the other kinds (see :mod:`pattern_keras.layers.recurrent`). The op's last
        output is the per-step record that its backward rule reads.
    """

    key: str
    kind: str
    layer: Any
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    forward: Callable[[Sequence[Any]], list[Any]]
    linear: LinearPart | None = None
    activation: str | None = None
    pattern_key: str | None = None
    rectified: bool = False
    affine: Callable[[], tuple[Any, Any, int]] | None = None
    gate: Callable[[Sequence[Any]], Any] | None = None
    held: Callable[[Sequence[Any]], list[Any]] | None = None
    held_inputs: tuple[int, ...] = ()
    bilinear: bool = False
    rank: int = 0
    averages: bool = False
    plain_relu: bool = False
    refusal: str | None = None
    table: Callable[[], Any] | None = None
    index_inputs: tuple[int, ...] = ()
    recurrent: Any = None


#: A function building the ops of one call node: ``builder(node, input_shape) -> [Op, ...]``.
Builder = Callable[[_graph.CallNode, Sequence[Any]], list[Op]]


def whole_call_op(node: _graph.CallNode, kind: str, **fields: Any) -> Op:
    """One op of ``kind`` for a whole call node, running the layer's own call (``fields``:
    further :class:`Op` attributes)."""
    return Op(
        key=node.key,
        kind=kind,
        layer=node.layer,
        inputs=node.inputs,
        outputs=node.outputs,
        forward=node.call,
        rank=len(node.output_shapes[0]) if node.output_shapes else 0,
        **fields,
    )


def simple_builder(kind: str, averages: bool = False) -> Builder:
    """A builder giving one op of ``kind`` that runs the layer's own call."""

    def build(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
        return [whole_call_op(node, kind, averages=averages)]

    return build
