"""Activations: ReLU, the gating activations ``f(z) = z·g(z)`` and the others, as layers, as
fused activations of linear layers, and as graph ops."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers as L

from pattern_keras import graph as _graph
from pattern_keras.layers.core import Op

__all__ = [
    "GATING_ACTIVATIONS",
    "OTHER_ACTIVATIONS",
    "activation_name",
    "activation_op",
    "activation_layer",
    "activation_function_op",
    "slope_gate",
]


def activation_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return {"relu6": "relu", "swish": "silu", "hard_swish": "hard_silu"}.get(name, name)


#: Gating activations ``f(z) = z·g(z)`` and ``f'(0)``, the value of ``g`` at ``z = 0`` (the
#: derivative TensorFlow takes there). ``g(z) = f(z)/z`` elsewhere.
GATING_ACTIVATIONS = {
    "silu": 0.5,
    "hard_silu": 0.5,
    "gelu": 0.5,
    "gelu_approximate": 0.5,  # keras-hub's GELU with the tanh approximation
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


def slope_gate(slope_fn: Callable[[], Any]) -> Callable[[Sequence[Any]], Any]:
    """``g(z) = 1`` for ``z > 0``, the (learned) slope elsewhere: leaky ReLU and PReLU."""

    def gate(inputs):
        z = inputs[0]
        return tf.where(z > 0, tf.ones_like(z), tf.cast(slope_fn(), z.dtype))

    return gate


def activation_op(
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
            gate = slope_gate(lambda: 0.2)
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


def activation_layer(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
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
            gate = slope_gate(lambda: slope)
    elif isinstance(layer, L.LeakyReLU):
        name, gate = "leaky_relu", slope_gate(lambda: float(layer.negative_slope))
    elif isinstance(layer, L.PReLU):
        name, gate = "prelu", slope_gate(lambda: layer.alpha)
    elif isinstance(layer, L.ELU):
        name = "elu"
    elif isinstance(layer, L.Softmax):
        name = "softmax"
    else:
        name = activation_name(layer.activation)
        plain_relu = layer.activation is keras.activations.relu
    op = activation_op(
        node.key,
        layer,
        name,
        lambda x: node.call([x])[0],
        node.inputs[0],
        node.outputs[0],
        gate=gate,
        plain_relu=plain_relu,
    )
    if len(node.inputs) > 1:  # Softmax(x, mask=m): the mask is an input of the call too
        op.inputs, op.forward = node.inputs, node.call
    return [op]


def activation_function_op(name: str, plain_relu: bool = False):
    """An activation written as a graph op (``keras.ops.sigmoid(x)`` in a functional model)."""

    def build(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
        gate = None
        if name == "leaky_relu":
            slope = float(node.layer.negative_slope)
            gate = slope_gate(lambda: slope)
        return [
            activation_op(
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
