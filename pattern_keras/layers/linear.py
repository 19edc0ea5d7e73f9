"""Linear layers: Dense and the convolutions, as :class:`~pattern_keras.layers.core.LinearPart`
objects (a kernel applied linearly, plus a bias), a fused activation split off."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers as L

from pattern_keras import graph as _graph
from pattern_keras.layers.activations import activation_name, activation_op
from pattern_keras.layers.core import LinearPart, Op

__all__ = ["conv_parts", "dense_parts", "einsum_dense_parts", "linear_ops"]


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


def conv_parts(layer: Any, x_shape: Sequence[Any]) -> list[tuple[str, LinearPart]]:
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
    apply = windowed(spatial, depthwise, padding)
    statistics_apply = padded(pad, spatial, depthwise)
    if _depthwise_by_groups(layer, k) and not all(d == 1 for d in spatial):
        apply = _as_depthwise(windowed(spatial, True, padding), layer.groups)
        if statistics_apply is not None:
            statistics_apply = (pad, _as_depthwise(windowed(spatial, True, "valid"), layer.groups))
    return [
        (
            "",
            part(
                k,
                bias,
                apply,
                out_axes=(-2, -1) if depthwise else (-1,),
                shiftable=known,
                padded_apply=statistics_apply,
            ),
        )
    ]


def _depthwise_by_groups(layer: Any, kernel: Any) -> bool:
    """A convolution with one input channel per group (``Conv2D(groups=channels)``, how
    keras-hub's MobileNet and HGNetV2 write depthwise convolutions)."""
    groups = getattr(layer, "groups", 1)
    return groups > 1 and int(kernel.shape[-2]) == 1


def _as_depthwise(depthwise_apply, groups: int):
    """``apply(x, k)`` of a convolution with one input channel per group, as the depthwise
    convolution it is: kernel ``(…, 1, groups·m)`` read as ``(…, groups, m)`` (output channel
    ``g·m + j`` in both). TensorFlow has no CPU gradient of a grouped convolution outside a
    ``tf.function``; it has one of a depthwise convolution."""

    def apply(x, k):
        shape = tuple(int(d) for d in k.shape[:-2]) + (groups, int(k.shape[-1]) // groups)
        return depthwise_apply(x, tf.reshape(k, shape))

    return apply


def dense_parts(layer: Any, x_shape: Sequence[Any]) -> list[tuple[str, LinearPart]]:
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


def _einsum_axes(spec: str, rank: int) -> dict[str, int]:
    """The axis of each letter of one einsum operand spec (``"ab...c"``) of a tensor of the
    given rank: letters after an ellipsis count from the end."""
    before, dots, after = spec.partition("...")
    axes = {letter: i for i, letter in enumerate(before)}
    if dots:
        axes.update({letter: rank - len(after) + i for i, letter in enumerate(after)})
    return axes


def einsum_dense_parts(layer: Any, x_shape: Sequence[Any]) -> list[tuple[str, LinearPart]]:
    """EinsumDense (the query/key/value/output projections of attention) as a linear part.

    ``z = einsum(equation, x, K) + b``. The neurons are the kernel axes that appear in the
    output (``out_axes``, in kernel order), held by the output axes of the same letters
    (``neuron_axes``); every other output axis (batch, tokens) counts as samples, as positions
    do for a convolution. The bias (over some of the output letters, as Keras lays it out) is
    broadcast to one value per neuron.

    Raises
    ------
    ValueError
        For a quantized layer, or a bias over an output axis that indexes no neuron.
    """
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(
            f"Layer '{layer.name}' (EinsumDense) is quantized "
            f"({layer.quantization_mode!r}): pattern_keras explains float layers only."
        )
    equation = layer.equation.replace(" ", "")
    operands, out_spec = equation.split("->")
    x_spec, k_spec = operands.split(",")
    x_axes = _einsum_axes(x_spec, len(x_shape))
    elided = len(x_shape) - len(x_spec.replace("...", ""))
    out_rank = len(out_spec.replace("...", "")) + (elided if "..." in out_spec else 0)
    z_axes = _einsum_axes(out_spec, out_rank)
    kernel_shape = tuple(int(d) for d in layer.kernel.shape)
    out_letters = [c for c in k_spec if c in z_axes]
    if not out_letters:
        raise ValueError(
            f"Layer '{layer.name}' (EinsumDense, equation {layer.equation!r}) has no kernel "
            "axis in its output: it has no neurons to explain through."
        )
    out_axes = tuple(k_spec.index(c) for c in out_letters)
    neuron_shape = [kernel_shape[a] for a in out_axes]
    bias_fn = None
    if layer.bias is not None:
        bias_letters = [c for c in out_spec if c in (layer.bias_axes or "")]
        if any(c not in out_letters for c in bias_letters):
            raise ValueError(
                f"Layer '{layer.name}' (EinsumDense, equation {layer.equation!r}) adds a bias "
                f"over the output axes {layer.bias_axes!r}, not all of which index neurons "
                f"(kernel axes {''.join(out_letters)!r}): a bias per position is not supported."
            )
        bias = layer.bias
        sizes = [kernel_shape[k_spec.index(c)] for c in bias_letters]
        by_neuron = sorted(bias_letters, key=out_letters.index)
        order = [bias_letters.index(c) for c in by_neuron]
        spread = [kernel_shape[k_spec.index(c)] if c in bias_letters else 1 for c in out_letters]

        def bias_fn():
            b = tf.reshape(tf.convert_to_tensor(bias), sizes)
            if order != sorted(order):
                b = tf.transpose(b, order)
            return tf.broadcast_to(tf.reshape(b, spread), neuron_shape)

    # A letter of x summed without the kernel (``"abc,cd->ad"``) sums inputs before the
    # kernel applies: a shift of x would be multiplied, so the statistics take none.
    summed_alone = any(c not in z_axes and c not in k_spec for c in x_axes)
    part = LinearPart(
        lambda: layer.kernel,
        bias_fn,
        lambda x, k: keras.ops.einsum(equation, x, tf.cast(k, x.dtype)),
        kernel_shape=kernel_shape,
        out_axes=out_axes,
        channel_axis=z_axes[out_letters[-1]] - out_rank,
        # One neuron axis: the usual channel axis (a bias add, BatchNorm folding).
        neuron_axes=None
        if len(out_letters) == 1
        else tuple(z_axes[c] - out_rank for c in out_letters),
        shiftable=not summed_alone,
        compute_dtype=layer.compute_dtype,
    )
    return [("", part)]


def linear_ops(node: _graph.CallNode, x_shape: Sequence[Any], parts_fn) -> list[Op]:
    layer = node.layer
    parts = parts_fn(layer, x_shape)
    ops: list[Op] = []
    slot = node.inputs[0]
    act = getattr(layer, "activation", None)
    act_name = activation_name(act) if act is not None else "linear"
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
            activation_op(
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
