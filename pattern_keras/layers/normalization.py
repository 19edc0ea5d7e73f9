"""Normalization layers: inference-mode BatchNormalization (an affine map that can fold into
the preceding linear layer) and LayerNormalization (its scale held per sample)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from pattern_keras import graph as _graph
from pattern_keras.layers.core import Op

__all__ = ["batch_norm", "layer_norm"]


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
