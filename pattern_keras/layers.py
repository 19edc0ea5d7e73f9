"""What each supported Keras layer *is*, seen by the reverse engine.

Every call of a layer becomes one or more :class:`Op` objects of a small set of *kinds*; the
backward rules are chosen per kind, never per layer class:

``"linear"``
    A kernel applied linearly, plus a bias (Dense, Conv1D/2D/3D, DepthwiseConv, the two halves of a
    SeparableConv, ConvTranspose). Carries a :class:`LinearPart`. A fused activation
    (``Dense(..., activation="relu")``) becomes a separate ``"activation"`` op after it.
``"affine"``
    A map that is affine in its input for LRP and the pattern methods: an elementwise scale and
    shift (inference-mode BatchNormalization, Rescaling, Normalization, ConvNeXt's LayerScale,
    constant arithmetic such as ``x * c`` or ``x + 3.0`` written as graph ops), and
    LayerNormalization, whose op carries ``held``: its forward pass with the normalizing scale
    held constant per sample (a linear map), which LRP and the pattern methods differentiate.
``"activation"``
    An elementwise nonlinearity: ``"relu"`` (ReLU, ReLU6, ``ReLU(max_value=...)``), ``"linear"``,
    the *gating* activations ``f(z) = z·g(z)`` (``leaky_relu``, ``prelu``, ``elu``, ``selu``,
    ``silu`` = swish, ``hard_silu`` = hard_swish, ``gelu``, ``tanh``; the op carries ``gate``),
    the other activations ``sigmoid``, ``softplus``, ``hard_sigmoid``, ``"softmax"`` (only as the
    model's last op, where it is stripped, as is a final ``sigmoid``), and ``"product"``: a
    Multiply of two tensors whose second input is a gate computed from (or broadcast onto) the
    first (``x·sigmoid(x)``, squeeze-and-excitation); see :func:`resolve_product`.
``"max_pool"``
    Max pooling: backward signals are routed to the winners.
``"sum"``
    A linear map without a learned kernel: average pooling, Add, Subtract, Average,
    InceptionResNetV2's CustomScaleLayer (``x + s·r``).
``"move"``
    Data movement: Flatten, Reshape, padding, cropping, Concatenate, Dropout, Identity, and what
    is the identity at inference (RandomFlip, RandomRotation, RandomZoom, RandomTranslation,
    RandomContrast, RandomBrightness, ConvNeXt's StochasticDepth).

A user's own layer joins one of these kinds with :func:`register_layer`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers as L

from pattern_keras import graph as _graph

__all__ = [
    "KINDS",
    "LinearPart",
    "Op",
    "register_layer",
    "ops_for_node",
    "shared_kernels",
    "supported_layer_names",
]

KINDS = ("linear", "affine", "activation", "max_pool", "sum", "move")


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
        axis = [a for a in range(rank) if a != self.channel_axis % rank]
        return tf.reshape(tf.reduce_sum(t, axis=axis), self.neuron_shape)

    def to_output(self, per_neuron: Any, rank: int) -> Any:
        """Broadcast a ``neuron_shape`` tensor against an output tensor of the given rank."""
        shape = [1] * rank
        shape[self.channel_axis] = -1
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
        For LayerNormalization: the forward pass with the normalizing scale held constant per
        sample (same values, but linear in the input); LRP and the pattern methods
        differentiate it instead of ``forward``.
    rank : int
        Rank of the op's (first) output, batch axis included.
    averages : bool
        For ``kind == "sum"``: the op is a sum or average of its inputs' values with fixed
        non-negative weights (Add, Average, average pooling), so non-negative inputs give a
        non-negative output. Rules read this instead of the layer's class.
    plain_relu : bool
        For ``activation == "relu"``: known to be ``max(z, 0)`` exactly (no ``max_value``, not
        ReLU6, not a user's layer registered as a rectifier), so ``f(z)/z`` is its gate.
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
    rank: int = 0
    averages: bool = False
    plain_relu: bool = False


# ----------------------------------------------------------------------------------------------
# Activations


def _activation_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return {"relu6": "relu", "swish": "silu", "hard_swish": "hard_silu"}.get(name, name)


#: Gating activations ``f(z) = z·g(z)`` and ``f'(0)``, the value of ``g`` at ``z = 0`` (the
#: derivative TensorFlow takes there). ``g(z) = f(z)/z`` elsewhere.
GATING_ACTIVATIONS = {
    "silu": 0.5,
    "hard_silu": 0.5,
    "gelu": 0.5,
    "tanh": 1.0,
    "elu": 1.0,
    "selu": 1.0507009873554805,
    "leaky_relu": None,
    "prelu": None,
}
#: Other elementwise activations: every rule uses their derivative (LRP passes relevance).
OTHER_ACTIVATIONS = ("sigmoid", "softplus", "hard_sigmoid")
_SUPPORTED_ACTIVATIONS = (
    ("relu", "linear") + tuple(GATING_ACTIVATIONS) + OTHER_ACTIVATIONS + ("softmax",)
)


def _ratio_gate(fn: Callable[[Any], Any], at_zero: float) -> Callable[[Sequence[Any]], Any]:
    """``g(z) = f(z)/z``, and ``f'(0)`` where ``z = 0``."""

    def gate(inputs):
        z = inputs[0]
        zero = tf.equal(z, 0)
        ratio = fn(z) / tf.where(zero, tf.ones_like(z), z)
        return tf.where(zero, tf.cast(at_zero, z.dtype), ratio)

    return gate


def _slope_gate(slope_fn: Callable[[], Any]) -> Callable[[Sequence[Any]], Any]:
    """``g(z) = 1`` for ``z > 0``, the (learned) slope elsewhere: leaky ReLU and PReLU."""

    def gate(inputs):
        z = inputs[0]
        return tf.where(z > 0, tf.ones_like(z), tf.cast(slope_fn(), z.dtype))

    return gate


def _activation_op(
    key: str,
    layer: Any,
    name: str,
    fn: Callable[[Any], Any],
    slot_in: int,
    slot_out: int,
    gate: Callable[[Sequence[Any]], Any] | None = None,
    plain_relu: bool = False,
) -> Op:
    if name not in _SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"Layer '{key}' ({type(layer).__name__}) uses the activation '{name}', which has no "
            f"backward rule. Supported activations: {', '.join(_SUPPORTED_ACTIVATIONS)} "
            "(softmax only as the model's last operation, where it is stripped)."
        )
    if gate is None and name in GATING_ACTIVATIONS:
        if name == "leaky_relu":  # keras.activations.leaky_relu's default slope
            gate = _slope_gate(lambda: 0.2)
        else:
            gate = _ratio_gate(fn, GATING_ACTIVATIONS[name])
    return Op(
        key=key,
        kind="activation",
        layer=layer,
        inputs=(slot_in,),
        outputs=(slot_out,),
        forward=lambda xs: [fn(xs[0])],
        activation=name,
        gate=gate,
        plain_relu=plain_relu and name == "relu",
    )


# ----------------------------------------------------------------------------------------------
# Linear layers


def _same_padding(
    in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilation: Sequence[int]
) -> list[tuple[int, int]]:
    """TensorFlow's 'same' padding as explicit (before, after) amounts per spatial axis."""
    pads = []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilation):
        effective = (k - 1) * d + 1
        total = max((math.ceil(n / s) - 1) * s + effective - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _explicit_padding(
    layer: Any,
    x_shape: Sequence[Any],
    kernel_spatial: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
):
    """``(pad, known)``: a function padding ``x`` as the layer would (``None`` for no padding),
    and whether the padding is known (false for 'same' padding on an input of unknown size)."""
    padding = getattr(layer, "padding", "valid")
    channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
    spatial = list(x_shape[1:-1]) if channels_last else list(x_shape[2:])
    if padding == "valid":
        return None, True
    if padding == "causal":
        pads = [tuple(p) for p in _graph.causal_padding(layer)]
        return (lambda x: tf.pad(x, pads)), True
    if any(n is None for n in spatial):
        return None, False
    spatial_pads = _same_padding(spatial, kernel_spatial, strides, dilation)
    if not any(a or b for a, b in spatial_pads):
        return None, True
    pads = [(0, 0)] + spatial_pads + [(0, 0)] if channels_last else [(0, 0), (0, 0)] + spatial_pads
    return (lambda x: tf.pad(x, pads)), True


def _pad_amounts(mode: str, n: Any, k: int, s: int, d: int, causal: int) -> tuple[Any, Any]:
    """``(before, after)`` zero padding of one spatial axis of size ``n`` (an int, or a scalar
    tensor for an axis of unknown size) as TensorFlow pads it for ``mode``."""
    if mode == "valid":
        return 0, 0
    if mode == "causal":
        return causal, 0
    effective = (k - 1) * d + 1
    total = ((n + s - 1) // s - 1) * s + effective - n
    total = max(total, 0) if isinstance(total, int) else tf.maximum(total, 0)
    return total // 2, total - total // 2


def _crop_to_read(
    x: Any,
    mode: str,
    kernel_spatial: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    spatial_axes: Sequence[int],
    causal: Sequence[int],
) -> Any:
    """``x`` cut to the extent the convolution's windows actually read.

    With a stride above 1 the last rows and columns of an input (after its padding) may lie
    beyond the last window: ``((n' − k_eff) // s)·s + k_eff`` of the ``n'`` padded positions are
    read. Cutting the rest off changes no output and no gradient of a read value (the cut values
    have zero gradient), and keeps the kernel and input gradients off the TensorFlow 2.21 oneDNN
    path that crashes the process on such inputs (NOTES.md, 2026-11-29). Only the end of an axis
    is ever cut: 'same' padding adds nothing when windows fall short, 'valid' and causal padding
    add nothing at the end.
    """
    slices = [slice(None)] * len(x.shape)
    cut = False
    for axis, k, s, d, c in zip(spatial_axes, kernel_spatial, strides, dilation, causal):
        n = x.shape[axis]
        static = n is not None
        if not static:
            n = tf.shape(x)[axis]
        before, after = _pad_amounts(mode, n, k, s, d, c)
        padded = n + before + after
        effective = (k - 1) * d + 1
        unread = padded - (((padded - effective) // s) * s + effective)
        if static and unread <= 0:
            continue
        # Unread positions exist only where nothing is padded at the end (see above), so
        # they are the last ``unread`` positions of ``x`` itself.
        slices[axis] = slice(0, n - unread)
        cut = True
    return x[tuple(slices)] if cut else x


def _subsample(x: Any, strides: Sequence[int]) -> Any:
    """``x[:, ::s₁, ::s₂, …, :]`` (channels last), with a gradient that interleaves zeros by a
    padding and a reshape.

    TensorFlow's own gradient of a strided slice (``StridedSliceGrad``) is a generic scatter:
    measured on ResNet50 at 224×224, its six 1×1 stride-2 convolutions spent about 7 % of an
    LRP pass there. Padding each kept position with ``s − 1`` zeros and merging the axes is a
    copy. Up to two spatial axes (``tf.pad`` takes rank ≤ 6); 3-D inputs keep TensorFlow's
    gradient.
    """
    if len(strides) > 2:
        return x[(slice(None),) + tuple(slice(None, None, s) for s in strides)]

    @tf.custom_gradient
    def subsample(x):
        kept = x[(slice(None),) + tuple(slice(None, None, s) for s in strides)]

        def gradient(upstream):
            shape = tf.shape(upstream)
            spread = [shape[0]]
            paddings = [[0, 0]]
            merged = [shape[0]]
            for i, s in enumerate(strides):
                spread += [shape[1 + i], 1]
                paddings += [[0, 0], [0, s - 1]]
                merged.append(shape[1 + i] * s)
            spread.append(shape[-1])
            paddings.append([0, 0])
            merged.append(shape[-1])
            full = tf.reshape(tf.pad(tf.reshape(upstream, spread), paddings), merged)
            # ceil(n / s)·s ≥ n: cut what lies past the input's end (nothing for even sizes).
            sizes = [
                x.shape[1 + i] if x.shape[1 + i] is not None else tf.shape(x)[1 + i]
                for i in range(len(strides))
            ]
            if all(
                isinstance(n, int)
                and upstream.shape[1 + i] is not None
                and upstream.shape[1 + i] * s == n
                for i, (n, s) in enumerate(zip(sizes, strides))
            ):
                return full
            return full[(slice(None),) + tuple(slice(0, n) for n in sizes)]

        return kept, gradient

    return subsample(x)


def _pointwise_apply(depthwise: bool, strides: Sequence[int], channels_last: bool):
    """A 1×1 convolution as a strided slice and a matrix product: ``apply(x, kernel)``.

    Exact (a 1×1 window reads one position, and no padding mode pads anything for it), cheaper
    than a convolution, and its gradients are matrix products: no oneDNN convolution
    gradient, which in TensorFlow 2.21 crashes the process for 1×1 stride-2 kernels on some
    even-sized inputs. Handles grouped (``Conv(groups=g)``) and depthwise kernels
    (``(1, …, 1, in, multiplier)``, output channel ``c·multiplier + m`` as TensorFlow orders it).
    """
    strided = any(s != 1 for s in strides)

    def apply(x, k):
        rank = len(x.shape)
        if not channels_last:
            x = tf.transpose(x, [0] + list(range(2, rank)) + [1])
        if strided:
            x = _subsample(x, strides)
        channels = int(x.shape[-1])
        k = tf.cast(k, x.dtype)
        k_in, k_out = int(k.shape[-2]), int(k.shape[-1])
        flat = tf.reshape(x, [-1, channels])
        if depthwise:
            out = tf.reshape(flat[:, :, None] * tf.reshape(k, [1, k_in, k_out]), [-1, k_in * k_out])
            out_channels = k_in * k_out
        elif k_in == channels:
            out = tf.matmul(flat, tf.reshape(k, [k_in, k_out]))
            out_channels = k_out
        else:  # grouped: input channel block g feeds output channel block g
            groups = channels // k_in
            per_group = k_out // groups
            out = tf.einsum(
                "pgi,igo->pgo",
                tf.reshape(flat, [-1, groups, k_in]),
                tf.reshape(k, [k_in, groups, per_group]),
            )
            out = tf.reshape(out, [-1, k_out])
            out_channels = k_out
        dims = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])]
        out = tf.reshape(out, dims + [out_channels])
        if not channels_last:
            out = tf.transpose(out, [0, rank - 1] + list(range(1, rank - 1)))
        return out

    return apply


def _conv_parts(layer: Any, x_shape: Sequence[Any]) -> list[tuple[str, LinearPart]]:
    """Linear parts of the convolution layers (each a ``(name suffix, part)``).

    A 1×1 kernel is applied as a strided slice and a matrix product
    (:func:`_pointwise_apply`); every other (non-transposed) convolution first crops its input
    to the extent its windows read (:func:`_crop_to_read`). Both hold for the forward replay,
    every backward rule (which all apply kernels through ``LinearPart.apply``) and the
    statistics (kernel gradients of ``apply``).
    """
    channels_last = layer.data_format == "channels_last"
    channel_axis = -1 if channels_last else 1
    strides = tuple(layer.strides)  # a tuple: keras.ops.depthwise_conv rejects lists
    dilation = tuple(layer.dilation_rate)
    fmt = layer.data_format
    padding = layer.padding
    rank = len(strides) + 2
    spatial_axes = tuple(range(1, rank - 1)) if channels_last else tuple(range(2, rank))
    no_causal = (0,) * len(strides)

    def windowed(kernel_spatial, depthwise, pad_mode, strides=strides, dilation=dilation):
        """``apply(x, k)`` for a kernel with the given spatial size."""
        if all(k == 1 for k in kernel_spatial):
            return _pointwise_apply(depthwise, strides, channels_last)
        op = keras.ops.depthwise_conv if depthwise else keras.ops.conv
        causal = no_causal
        if pad_mode == "causal":
            pads = _graph.causal_padding(layer)
            causal = tuple(pads[a][0] for a in spatial_axes)

        def apply(x, k):
            k = tf.cast(k, x.dtype)
            x = _crop_to_read(x, pad_mode, kernel_spatial, strides, dilation, spatial_axes, causal)
            mode = pad_mode
            if pad_mode == "causal":
                x = tf.pad(x, _graph.causal_padding(layer))
                mode = "valid"
            return op(x, k, strides=strides, padding=mode, dilation_rate=dilation, data_format=fmt)

        return apply

    def part(variable, bias, apply, **kw):
        return LinearPart(
            lambda: variable,
            (lambda: bias) if bias is not None else None,
            apply,
            kernel_shape=tuple(int(d) for d in variable.shape),
            channel_axis=channel_axis,
            compute_dtype=layer.compute_dtype,
            **kw,
        )

    def padded(pad, kernel_spatial, depthwise):
        """``padded_apply`` for the statistics; ``None`` where nothing is padded."""
        if pad is None or all(k == 1 for k in kernel_spatial):
            return None
        return pad, windowed(kernel_spatial, depthwise, "valid")

    bias = layer.bias if layer.use_bias else None
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):

        def apply_t(x, k):
            return keras.ops.conv_transpose(
                x,
                tf.cast(k, x.dtype),
                strides=strides,
                padding=padding,
                output_padding=layer.output_padding,
                dilation_rate=dilation,
                data_format=fmt,
            )

        return [("", part(layer.kernel, bias, apply_t, out_axes=(-2,), shiftable=False))]

    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        dk, pk = layer.depthwise_kernel, layer.pointwise_kernel
        spatial = tuple(int(d) for d in dk.shape[:-2])
        pad, known = _explicit_padding(layer, x_shape, spatial, strides, dilation)
        first = part(
            dk,
            None,
            windowed(spatial, True, padding),
            out_axes=(-2, -1),
            shiftable=known,
            padded_apply=padded(pad, spatial, True),
        )
        ones = (1,) * len(strides)
        second = part(pk, bias, _pointwise_apply(False, ones, channels_last))
        return [("depthwise_kernel", first), ("pointwise_kernel", second)]

    k = layer.kernel
    spatial = tuple(int(d) for d in k.shape[:-2])
    pad, known = _explicit_padding(layer, x_shape, spatial, strides, dilation)
    depthwise = isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D))
    return [
        (
            "",
            part(
                k,
                bias,
                windowed(spatial, depthwise, padding),
                out_axes=(-2, -1) if depthwise else (-1,),
                shiftable=known,
                padded_apply=padded(pad, spatial, depthwise),
            ),
        )
    ]


def _dense_parts(layer: Any, x_shape: Sequence[Any]) -> list[tuple[str, LinearPart]]:
    kernel, bias = layer.kernel, (layer.bias if layer.use_bias else None)
    return [
        (
            "",
            LinearPart(
                lambda: kernel,
                (lambda: bias) if bias is not None else None,
                lambda x, k: keras.ops.matmul(x, tf.cast(k, x.dtype)),
                kernel_shape=tuple(int(d) for d in kernel.shape),
                compute_dtype=layer.compute_dtype,
            ),
        )
    ]


def _linear_ops(node: _graph.CallNode, x_shape: Sequence[Any], parts_fn) -> list[Op]:
    layer = node.layer
    parts = parts_fn(layer, x_shape)
    ops: list[Op] = []
    slot = node.inputs[0]
    act = getattr(layer, "activation", None)
    act_name = _activation_name(act) if act is not None else "linear"
    for i, (suffix, part) in enumerate(parts):
        last = i == len(parts) - 1
        out = node.outputs[0] if (last and act_name == "linear") else -(id(part))
        ops.append(
            Op(
                key=node.key,
                kind="linear",
                layer=layer,
                inputs=(slot,),
                outputs=(out,),
                forward=lambda xs, p=part: [p.add_bias(p.apply(xs[0], p.kernel))],
                linear=part,
                pattern_key=f"{node.key}/{suffix}" if suffix else node.key,
            )
        )
        slot = out
    if act_name != "linear":
        ops.append(
            _activation_op(
                node.key,
                layer,
                act_name,
                act,
                slot,
                node.outputs[0],
                plain_relu=act is keras.activations.relu,
            )
        )
    return ops


# ----------------------------------------------------------------------------------------------
# The registry: layer class -> a function building its ops


def _simple(
    kind: str, averages: bool = False
) -> Callable[[_graph.CallNode, Sequence[Any]], list[Op]]:
    def build(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
        return [
            Op(
                key=node.key,
                kind=kind,
                layer=node.layer,
                inputs=node.inputs,
                outputs=node.outputs,
                forward=node.call,
                averages=averages,
            )
        ]

    return build


def _activation_layer(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    layer = node.layer
    gate = None
    plain_relu = False
    if isinstance(layer, L.ReLU):
        slope, threshold = float(layer.negative_slope), float(layer.threshold)
        if threshold != 0.0 or (slope != 0.0 and layer.max_value is not None):
            raise ValueError(
                f"Layer '{node.key}' is a ReLU with negative_slope={layer.negative_slope}, "
                f"threshold={layer.threshold} and max_value={layer.max_value}; supported are "
                "plain ReLUs (max_value allowed) and leaky ones (negative_slope, no max_value)."
            )
        name = "relu" if slope == 0.0 else "leaky_relu"
        plain_relu = layer.max_value is None
        if slope != 0.0:
            gate = _slope_gate(lambda: slope)
    elif isinstance(layer, L.LeakyReLU):
        name, gate = "leaky_relu", _slope_gate(lambda: float(layer.negative_slope))
    elif isinstance(layer, L.PReLU):
        name, gate = "prelu", _slope_gate(lambda: layer.alpha)
    elif isinstance(layer, L.ELU):
        name = "elu"
    elif isinstance(layer, L.Softmax):
        name = "softmax"
    else:
        name = _activation_name(layer.activation)
        plain_relu = layer.activation is keras.activations.relu
    return [
        _activation_op(
            node.key,
            layer,
            name,
            lambda x: node.call([x])[0],
            node.inputs[0],
            node.outputs[0],
            gate=gate,
            plain_relu=plain_relu,
        )
    ]


def _activation_function_op(name: str, plain_relu: bool = False):
    """An activation written as a graph op (``keras.ops.sigmoid(x)`` in a functional model)."""

    def build(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
        gate = None
        if name == "leaky_relu":
            slope = float(node.layer.negative_slope)
            gate = _slope_gate(lambda: slope)
        return [
            _activation_op(
                node.key,
                node.layer,
                name,
                lambda x: node.call([x])[0],
                node.inputs[0],
                node.outputs[0],
                gate=gate,
                plain_relu=plain_relu,
            )
        ]

    return build


def _affine(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """An elementwise affine map that never folds (Rescaling, Normalization, LayerScale,
    constant arithmetic): LRP takes its ε/z-rule, every other method its derivative."""
    return [
        Op(
            key=node.key,
            kind="affine",
            layer=node.layer,
            inputs=node.inputs,
            outputs=node.outputs,
            forward=node.call,
        )
    ]


def _identity(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """A layer that is the identity at inference (augmentation, stochastic depth)."""
    dtype = node.layer.compute_dtype

    def forward(xs):
        return [tf.cast(xs[0], dtype)]

    return [
        Op(
            key=node.key,
            kind="move",
            layer=node.layer,
            inputs=node.inputs[:1],
            outputs=node.outputs,
            forward=forward,
        )
    ]


def _layer_norm(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """LayerNormalization: exact forward; ``held`` keeps its per-sample scale ``1/σ`` constant,
    so that LRP and the pattern methods see the linear map ``γ·(x − mean(x))/σ + β``
    (RMS scaling: ``γ·x/σ``), the LayerNorm rule of Ali et al. (ICML 2022)."""
    layer = node.layer
    rank = len(x_shape)
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    axes = sorted(a % rank for a in axes)
    shape = [1] * rank
    for a in axes:
        shape[a] = x_shape[a]

    def held(xs):
        x = xs[0]
        compute = tf.float64 if x.dtype == tf.float64 else tf.float32
        xc = tf.cast(x, compute)
        mean, variance = tf.nn.moments(xc, axes=axes, keepdims=True)
        inv = tf.stop_gradient(tf.math.rsqrt(variance + layer.epsilon))
        y = xc * inv if layer.rms_scaling else (xc - mean) * inv
        if layer.gamma is not None:
            y = y * tf.reshape(tf.cast(layer.gamma, compute), shape)
        if layer.beta is not None:
            y = y + tf.reshape(tf.cast(layer.beta, compute), shape)
        return [tf.cast(y, x.dtype)]

    return [
        Op(
            key=node.key,
            kind="affine",
            layer=layer,
            inputs=node.inputs,
            outputs=node.outputs,
            forward=node.call,
            held=held,
        )
    ]


def _product(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """A Multiply of two tensors: a ``"product"`` op whose gate operand :func:`resolve_products`
    determines (or refuses) once the whole program is known."""
    if len(node.inputs) != 2:
        raise ValueError(
            f"Layer '{node.key}' multiplies {len(node.inputs)} tensors; only a product of two "
            "tensors, one of them a gate, is supported."
        )

    def forward(xs):
        return [keras.ops.multiply(xs[0], xs[1])]

    return [
        Op(
            key=node.key,
            kind="activation",
            layer=node.layer,
            inputs=node.inputs,
            outputs=node.outputs,
            forward=forward,
            activation="product",
            gate=lambda xs: xs[1],
        )
    ]


def _arithmetic(sum_like: bool, product: bool = False, averages: bool = False):
    """``x + y``, ``x - y``, ``x * y``, ``x / y`` written as graph ops: with one tensor operand
    and a constant, an elementwise affine map; with two tensors, a sum (``averages``: of
    non-negative weights, ``x + y``), or a product."""

    def build(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
        if len(node.inputs) == 1:
            return _affine(node, x_shape)
        if sum_like:
            return _simple("sum", averages=averages)(node, x_shape)
        if product:
            return _product(node, x_shape)
        raise ValueError(
            f"Operation '{node.key}' ({type(node.layer).__name__}) divides two tensors; "
            "pattern_keras has no backward rule for a quotient of two tensors."
        )

    return build


def _broadcast_onto(small: tuple[Any, ...], big: tuple[Any, ...]) -> bool:
    """Whether a tensor of shape ``small`` is broadcast onto ``big`` (and is smaller)."""
    if len(small) > len(big) or small == big:
        return False
    pairs = list(zip(small[::-1], big[::-1]))
    return all(s == 1 or (s == b and s is not None) for s, b in pairs) and (
        len(small) < len(big) or any(s == 1 and b != 1 for s, b in pairs)
    )


def resolve_products(ops: list[Op], shapes: dict[int, tuple[Any, ...]]) -> None:
    """Decide, for every ``"product"`` op, which operand is the gate, or refuse the product.

    The rule table's definitions: a Multiply one of whose operands is broadcast from a smaller
    shape (squeeze-and-excitation) has that operand as its gate; otherwise, one operand
    computed from the other (``x·g(x)`` however written, or a squeeze-and-excitation branch on
    a 1×1 feature map) is the gate. Any other product of two tensors is refused. On return the
    gate is each product op's second input.

    Parameters
    ----------
    ops : list of Op
        In topological order.
    shapes : dict
        Static shape (batch axis included) of every slot.
    """
    ancestors: dict[int, frozenset[int]] = {}
    for op in ops:
        above = frozenset().union(*(ancestors.get(s, frozenset()) | {s} for s in op.inputs))
        for s in op.outputs:
            ancestors[s] = above
    for op in ops:
        if op.kind != "activation" or op.activation != "product":
            continue
        a, b = op.inputs
        sa, sb = tuple(shapes.get(a, ()))[1:], tuple(shapes.get(b, ()))[1:]
        gate = None
        if sa != sb:
            if _broadcast_onto(sb, sa):
                gate = b
            elif _broadcast_onto(sa, sb):
                gate = a
        elif a == b or a in ancestors.get(b, ()):
            gate = b
        elif b in ancestors.get(a, ()):
            gate = a
        if gate is None:
            raise ValueError(
                f"Layer '{op.key}' ({type(op.layer).__name__}) multiplies two tensors "
                f"(shapes {sa} and {sb}) neither of which is a gate: pattern_keras supports a "
                "product whose one operand is computed from the other (x·g(x), e.g. "
                "x·sigmoid(x)) or broadcast from a smaller shape (squeeze-and-excitation); any "
                "other product of two tensors has no backward rule."
            )
        if gate == a and a != b:
            op.inputs = (b, a)


def _batch_norm(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    layer = node.layer
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]

    def scale_and_shift():
        inv = tf.math.rsqrt(tf.convert_to_tensor(layer.moving_variance) + layer.epsilon)
        scale = inv * tf.convert_to_tensor(layer.gamma) if layer.scale else inv
        shift = -tf.convert_to_tensor(layer.moving_mean) * scale
        if layer.center:
            shift = shift + tf.convert_to_tensor(layer.beta)
        return scale, shift, axis

    return [
        Op(
            key=node.key,
            kind="affine",
            layer=layer,
            inputs=node.inputs,
            outputs=node.outputs,
            forward=node.call,
            affine=scale_and_shift,
        )
    ]


_REGISTRY: dict[type, Callable[[_graph.CallNode, Sequence[Any]], list[Op]]] = {}


def _register_builtin() -> None:
    from keras.src.ops import numpy as knp  # `x + y` inside a functional model

    def dense(node, shape):
        return _linear_ops(node, shape, _dense_parts)

    def conv(node, shape):
        return _linear_ops(node, shape, _conv_parts)

    _REGISTRY[L.Dense] = dense
    for cls in (
        L.Conv1D,
        L.Conv2D,
        L.Conv3D,
        L.DepthwiseConv1D,
        L.DepthwiseConv2D,
        L.SeparableConv1D,
        L.SeparableConv2D,
        L.Conv1DTranspose,
        L.Conv2DTranspose,
        L.Conv3DTranspose,
    ):
        _REGISTRY[cls] = conv
    for cls in (L.Activation, L.ReLU, L.Softmax, L.LeakyReLU, L.PReLU, L.ELU):
        _REGISTRY[cls] = _activation_layer
    _REGISTRY[L.BatchNormalization] = _batch_norm
    _REGISTRY[L.LayerNormalization] = _layer_norm
    for cls in (L.Rescaling, L.Normalization):
        _REGISTRY[cls] = _affine
    for cls in (
        L.RandomFlip,
        L.RandomRotation,
        L.RandomZoom,
        L.RandomTranslation,
        L.RandomContrast,
        L.RandomBrightness,
    ):
        _REGISTRY[cls] = _identity
    _REGISTRY[L.Multiply] = _product
    _REGISTRY[L.Subtract] = _simple("sum")
    _REGISTRY[knp.Add] = _arithmetic(sum_like=True, averages=True)
    _REGISTRY[knp.Subtract] = _arithmetic(sum_like=True)
    _REGISTRY[knp.Multiply] = _arithmetic(sum_like=False, product=True)
    for cls in (knp.Divide, knp.TrueDivide):
        _REGISTRY[cls] = _arithmetic(sum_like=False)
    from keras.src.ops import nn as knn  # activations written as graph ops

    for cls, name in (
        (knn.Relu, "relu"),
        (knn.Relu6, "relu"),
        (knn.Sigmoid, "sigmoid"),
        (knn.Silu, "silu"),
        (knn.HardSigmoid, "hard_sigmoid"),
        (knn.HardSilu, "hard_silu"),
        (knn.Gelu, "gelu"),
        (knn.Elu, "elu"),
        (knn.Selu, "selu"),
        (knn.Softplus, "softplus"),
        (knp.Tanh, "tanh"),
        (knn.LeakyRelu, "leaky_relu"),
        (knn.Softmax, "softmax"),
    ):
        _REGISTRY[cls] = _activation_function_op(name, plain_relu=cls is knn.Relu)
    # Layers that keras.applications defines for itself (found by class, not imported
    # eagerly: a Keras release that moves them only loses these entries).
    try:
        from keras.src.applications.convnext import LayerScale, StochasticDepth
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    except ImportError:  # pragma: no cover - depends on the Keras release
        pass
    else:
        _REGISTRY[LayerScale] = _affine
        _REGISTRY[StochasticDepth] = _identity
        _REGISTRY[CustomScaleLayer] = _simple("sum")
    for cls in (
        L.MaxPooling1D,
        L.MaxPooling2D,
        L.MaxPooling3D,
        L.GlobalMaxPooling1D,
        L.GlobalMaxPooling2D,
        L.GlobalMaxPooling3D,
    ):
        _REGISTRY[cls] = _simple("max_pool")
    for cls in (
        L.AveragePooling1D,
        L.AveragePooling2D,
        L.AveragePooling3D,
        L.GlobalAveragePooling1D,
        L.GlobalAveragePooling2D,
        L.GlobalAveragePooling3D,
        L.Add,
        L.Average,
    ):
        _REGISTRY[cls] = _simple("sum", averages=True)
    for cls in (
        L.Flatten,
        L.Reshape,
        L.Dropout,
        L.SpatialDropout1D,
        L.SpatialDropout2D,
        L.SpatialDropout3D,
        L.ZeroPadding1D,
        L.ZeroPadding2D,
        L.ZeroPadding3D,
        L.Cropping1D,
        L.Cropping2D,
        L.Cropping3D,
        L.Concatenate,
        L.Identity,
        L.InputLayer,
        L.Permute,
    ):
        _REGISTRY[cls] = _simple("move")


_register_builtin()

_USER_KINDS = ("move", "sum", "max_pool", "relu", "linear_activation")


def register_layer(layer_class: type, kind: str) -> None:
    """Declare how the reverse engine treats a layer class of your own.

    Every analyzer then handles the layer by the rules of that kind: no per-analyzer code.

    Parameters
    ----------
    layer_class : type
        A ``keras.layers.Layer`` subclass (subclasses of it are covered too).
    kind : {"move", "sum", "max_pool", "relu", "linear_activation"}
        ``"move"``: the layer only moves, copies or drops values (a reshape, a crop, a gather);
        every method passes its backward signal as the gradient does.
        ``"sum"``: a fixed linear map without a learned kernel (a scaling, a pooling, a sum of
        inputs); LRP rules redistribute relevance in proportion to the contributions.
        ``"max_pool"``: picks a maximum; signals go to the winners.
        ``"relu"``: a rectifier; the pattern methods and Guided BackProp gate by its forward
        pass with its own gradient, DeConvNet rectifies.
        ``"linear_activation"``: an elementwise identity-like map whose gradient passes.

    Examples
    --------
    >>> class Scale(keras.layers.Layer):
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> pk.register_layer(Scale, "sum")
    """
    if kind not in _USER_KINDS:
        raise ValueError(f"kind must be one of {_USER_KINDS}, got {kind!r}.")
    if not isinstance(layer_class, type):
        raise TypeError(f"layer_class must be a class, got {layer_class!r}.")
    if kind in ("relu", "linear_activation"):
        name = "relu" if kind == "relu" else "linear"

        def build(node, shape, name=name):
            return [
                _activation_op(
                    node.key,
                    node.layer,
                    name,
                    lambda x: node.call([x])[0],
                    node.inputs[0],
                    node.outputs[0],
                )
            ]

        _REGISTRY[layer_class] = build
    else:
        _REGISTRY[layer_class] = _simple(kind)


def _builder_for(layer: Any):
    for cls in type(layer).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def supported_layer_names() -> list[str]:
    """Names of the layer classes the engine supports (including registered ones).

    Returns
    -------
    list of str
        Sorted class names.
    """
    return sorted({cls.__name__ for cls in _REGISTRY})


def ops_for_node(node: _graph.CallNode, input_shape: Sequence[Any]) -> list[Op]:
    """The ops of one call node; raises ``ValueError`` naming an unsupported layer."""
    builder = _builder_for(node.layer)
    if builder is None and ".layers.preprocessing" in type(node.layer).__module__:
        raise ValueError(
            f"Layer '{node.key}' of class {type(node.layer).__name__} is a preprocessing layer "
            "that pattern_keras does not support: of the preprocessing layers only Rescaling, "
            "Normalization and RandomFlip, RandomRotation, RandomZoom, RandomTranslation, "
            "RandomContrast, RandomBrightness (the identity at inference) are. Apply it to the "
            "data before the model, or build the model without it."
        )
    if builder is None:
        raise ValueError(
            f"Layer '{node.key}' of class {type(node.layer).__name__} is not supported: no "
            f"backward rule exists for it, and pattern_keras never falls back to a silent "
            f"gradient. Supported layers: {', '.join(supported_layer_names())}. For a layer of "
            "your own, declare its kind with `pattern_keras.register_layer(cls, kind)`."
        )
    ops = builder(node, input_shape)
    rank = len(node.output_shapes[0]) if node.output_shapes else 0
    for op in ops:
        op.rank = rank
    return ops
