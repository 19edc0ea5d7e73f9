"""Reductions and selections without a learned kernel: ``keras.ops.mean``/``sum`` over axes and
adaptive average pooling (sums with fixed non-negative weights, kind ``"sum"``); ``max``/``min``
over axes, adaptive max pooling and the elementwise ``Maximum``/``Minimum`` (a selection: kind
``"max_pool"``, signals go to the winner).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pattern_keras import graph as _graph
from pattern_keras.layers.core import Op, simple_builder
from pattern_keras.layers.shape import known_nonnegative, refuse_batch_axis

__all__ = [
    "mean_or_sum",
    "max_or_min",
    "elementwise_extremum",
    "average_pool",
    "max_pool",
]

average_pool = simple_builder("sum", averages=True)
max_pool = simple_builder("max_pool")


def mean_or_sum(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """``keras.ops.mean``/``sum`` over some axes: a sum of the input's values with fixed
    non-negative weights (``1`` or ``1/n``), as average pooling: LRP splits relevance in
    proportion to the summands."""
    refuse_batch_axis(node, node.layer.axis, "sums")
    return average_pool(node, x_shape)


def max_or_min(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """``keras.ops.max``/``min`` (``amax``/``amin``) over some axes: the winner of each
    reduction gets the signal, as in max pooling."""
    refuse_batch_axis(node, node.layer.axis, "takes the extremum")
    return max_pool(node, x_shape)


def elementwise_extremum(takes_minimum: bool):
    """``keras.ops.maximum``/``minimum`` (and the layers Maximum, Minimum): elementwise, the
    winning operand gets the signal (max pooling over the operands).

    With one operand a constant, the constant takes the signal where it wins (it is dropped,
    as a bias absorbs its share). Rules that know a max pooling of non-negative tensors is
    non-negative (LRP-αβ skips the terms of negative inputs) may read it so only where that is
    true: ``maximum(x, c)`` always, ``minimum(x, c)`` only for a constant known to be ``≥ 0``.
    Any other ``minimum(x, c)`` is kind ``"sum"``: every rule crosses it as max pooling (the
    gradient family, DeConvNet, Guided BackProp and the pattern methods by its derivative, LRP
    by the z-rule, which gives the winner its value's share: all of it), without the claim.
    """

    def build(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
        arguments = _graph.call_arguments(node)
        operands = arguments[0] if arguments is not None else []
        constants = [v for what, v in operands if what == "constant"]
        if takes_minimum and constants and not all(known_nonnegative(c) for c in constants):
            return simple_builder("sum")(node, x_shape)
        return max_pool(node, x_shape)

    return build
