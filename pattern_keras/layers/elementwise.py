"""Elementwise maps without a learned kernel: affine maps (Rescaling, Normalization, constant
arithmetic), the identity at inference, arithmetic of two tensors, and gated products."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from pattern_keras import graph as _graph
from pattern_keras.layers.core import Op, simple_builder

__all__ = ["affine", "identity", "product", "arithmetic", "resolve_products"]


def affine(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
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


def identity(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
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


def product(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
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


def arithmetic(sum_like: bool, multiplies: bool = False, averages: bool = False):
    """``x + y``, ``x - y``, ``x * y``, ``x / y`` written as graph ops: with one tensor operand
    and a constant, an elementwise affine map; with two tensors, a sum (``averages``: of
    non-negative weights, ``x + y``), or a product."""

    def build(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
        if len(node.inputs) == 1:
            return affine(node, x_shape)
        if sum_like:
            return simple_builder("sum", averages=averages)(node, x_shape)
        if multiplies:
            return product(node, x_shape)
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
