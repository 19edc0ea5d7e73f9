"""Normalization layers: inference-mode BatchNormalization (an affine map that can fold into
the preceding linear layer), and the normalizers whose scale is computed from each sample:
LayerNormalization, GroupNormalization, RMSNormalization and UnitNormalization.

Each of the latter is an ``"affine"`` op whose ``forward`` is the layer's own call (exact, for
the gradient family) and whose ``held`` is the same computation with the per-sample scale
(``1/σ``, ``1/rms``, ``1/‖x‖``) under ``stop_gradient``: the same values, but a linear map of
the input (plus the shift β), which LRP, DeConvNet, Guided BackProp and the pattern methods
differentiate (the LayerNorm rule of Ali et al., ICML 2022, for every such normalizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from pattern_keras import graph as _graph
from pattern_keras.layers.core import Op, whole_call_op

__all__ = ["batch_norm", "layer_norm", "group_norm", "rms_norm", "unit_norm"]


def layer_norm(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
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


def _held_op(node: _graph.CallNode, held) -> list[Op]:
    """An ``"affine"`` op running the layer's own call, with ``held`` as its held forward."""
    return [whole_call_op(node, "affine", held=held)]


def _compute_dtype(x: Any) -> Any:
    """float64 for float64 inputs, float32 otherwise (as Keras's normalizers compute in at
    least float32)."""
    return tf.float64 if x.dtype == tf.float64 else tf.float32


def _axes(axis: Any, rank: int) -> list[int]:
    return sorted(a % rank for a in ([axis] if isinstance(axis, int) else list(axis)))


def group_norm(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """GroupNormalization: the channels split into groups, each normalized over its channels
    and positions; ``held`` keeps each group's ``1/σ`` constant per sample."""
    layer = node.layer
    rank = len(x_shape)
    axis = layer.axis % rank
    groups = layer.groups
    channels = x_shape[axis]
    broadcast = [1] * rank
    broadcast[axis] = channels

    def held(xs):
        x = xs[0]
        compute = _compute_dtype(x)
        xc = tf.cast(x, compute)
        shape = tf.shape(xc)
        grouped_shape = tf.concat(
            [shape[:axis], [groups, channels // groups], shape[axis + 1 :]], 0
        )
        grouped = tf.reshape(xc, grouped_shape)
        reduce = [a for a in range(1, rank + 1) if a != axis]
        mean, variance = tf.nn.moments(grouped, axes=reduce, keepdims=True)
        inv = tf.stop_gradient(tf.math.rsqrt(variance + layer.epsilon))
        y = tf.reshape((grouped - mean) * inv, shape)
        if layer.gamma is not None:
            y = y * tf.reshape(tf.cast(layer.gamma, compute), broadcast)
        if layer.beta is not None:
            y = y + tf.reshape(tf.cast(layer.beta, compute), broadcast)
        return [tf.cast(y, x.dtype)]

    return _held_op(node, held)


def rms_norm(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """RMSNormalization, ``x · scale / rms(x)``; ``held`` keeps ``1/rms`` constant per sample."""
    layer = node.layer
    axes = _axes(layer.axis, len(x_shape))

    def held(xs):
        x = xs[0]
        compute = _compute_dtype(x)
        xc = tf.cast(x, compute)
        inv = tf.math.rsqrt(tf.reduce_mean(tf.square(xc), axis=axes, keepdims=True) + layer.epsilon)
        y = xc * tf.stop_gradient(inv) * tf.cast(layer.scale, compute)
        return [tf.cast(y, x.dtype)]

    return _held_op(node, held)


def unit_norm(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """UnitNormalization, ``x / ‖x‖₂`` (Keras's ``x · min(1/‖x‖, 10¹²)``); ``held`` keeps
    that factor constant per sample."""
    axes = _axes(node.layer.axis, len(x_shape))

    def held(xs):
        x = xs[0]
        compute = _compute_dtype(x)
        xc = tf.cast(x, compute)
        inv = tf.math.rsqrt(tf.reduce_sum(tf.square(xc), axis=axes, keepdims=True))
        inv = tf.minimum(inv, tf.constant(1e12, compute))
        return [tf.cast(xc * tf.stop_gradient(inv), x.dtype)]

    return _held_op(node, held)


def batch_norm(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
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
