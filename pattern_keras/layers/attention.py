"""Attention: ``keras.ops.dot_product_attention``, products of two tensors (``einsum``,
``matmul``, ``Dot``: built by :mod:`~pattern_keras.layers.contraction` as bilinear ops), and the
hold analysis that decides, once the whole program is known, what each product holds.

The rule (Ali et al., ICML 2022, "conservative propagation"): a product one of whose operands
is attention weights (a softmax output, possibly through dropout, reshapes or transposes) is
linear in the other operand, the weights held constant per sample. Every rule-based analyzer
(LRP, DeepTaylor, DeConvNet, Guided BackProp, PatternNet, PatternAttribution) differentiates
the product with the weights held (``Op.held``) and sends the weights no signal
(``Op.held_inputs``): relevance flows through the values only. So the softmax, and the
product of queries and keys that feeds it (with its scaling, bias and mask), receive nothing,
and the query and key projections are never visited: they need no pattern. The gradient
family differentiates through everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from pattern_keras import graph as _graph
from pattern_keras.layers.core import Op

__all__ = [
    "dot_product_attention",
    "bilinear_product",
    "resolve_attention",
]


def _held_forward(op: Op, forward):
    """``forward`` with the inputs at ``op.held_inputs`` under ``stop_gradient`` (read when
    called, so that :func:`resolve_attention` may set them after the op is built)."""

    def held(xs):
        return forward(
            [
                tf.stop_gradient(x) if i in op.held_inputs and x.dtype.is_floating else x
                for i, x in enumerate(xs)
            ]
        )

    return held


def dot_product_attention(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """``keras.ops.dot_product_attention(query, key, value, bias, mask)`` (what
    ``MultiHeadAttention`` computes without dropout): exact forward; linear in ``value`` with
    the attention weights held, so rule-based analyzers send nothing to the queries, keys,
    bias or mask."""
    value = _value_position(node)
    if value is None:
        raise ValueError(
            f"Operation '{node.key}' (dot_product_attention): cannot tell which of its "
            f"{len(node.inputs)} input tensors is the value."
        )
    op = Op(
        key=node.key,
        kind="affine",
        layer=node.layer,
        inputs=node.inputs,
        outputs=node.outputs,
        forward=node.call,
        held_inputs=tuple(i for i in range(len(node.inputs)) if i != value),
    )
    op.held = _held_forward(op, node.call)
    return [op]


def _value_position(node: _graph.CallNode) -> int | None:
    """The position in ``node.inputs`` of ``dot_product_attention``'s ``value`` argument."""
    arguments = _graph.call_arguments(node)
    if arguments is None:
        return None
    args, kwargs = arguments
    tagged = args[2] if len(args) > 2 else kwargs.get("value")
    return tagged[1] if tagged is not None and tagged[0] == "input" else None


def bilinear_product(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """A product of two tensors, linear in each (``matmul(a, b)``, ``einsum(s, a, b)``, a
    ``Dot`` without normalization): a ``bilinear`` op, whose held operand (the attention
    weights) :func:`resolve_attention` finds once the whole program is known; without one it
    becomes an opaque op where a rule-based analyzer would need it."""
    if len(node.inputs) != 2:
        raise ValueError(
            f"Operation '{node.key}' ({type(node.layer).__name__}) multiplies "
            f"{len(node.inputs)} tensors; only products of two tensors are supported."
        )
    op = Op(
        key=node.key,
        kind="affine",
        layer=node.layer,
        inputs=node.inputs,
        outputs=node.outputs,
        forward=node.call,
        bilinear=True,
    )
    op.held = _held_forward(op, node.call)
    return [op]


def _is_attention_weights(slot: int, producer: dict[int, Op]) -> bool:
    """Whether ``slot`` holds a softmax output, possibly moved (dropout, identity, reshape,
    transpose) on its way."""
    op = producer.get(slot)
    while op is not None and op.kind == "move" and len(op.inputs) == 1:
        op = producer.get(op.inputs[0])
    return op is not None and op.kind == "activation" and op.activation == "softmax"


_GRADIENT_FAMILY = (
    "The gradient family (Gradient, InputTimesGradient, IntegratedGradients, SmoothGrad) "
    "explains it through its own gradient."
)


def resolve_attention(ops: list[Op], output: int) -> set[int]:
    """The hold analysis: decide what every product of two tensors holds, and which ops the
    rule-based analyzers' backward pass reaches.

    1. A ``bilinear`` op (matmul, einsum) one of whose operands is attention weights
       (:func:`_is_attention_weights`) holds that operand.
    2. Walking back from the output with every held operand receiving nothing (what the
       rule-based analyzers do), the ops the signal reaches are found. A product that is not
       reached (queries × keys, feeding only held weights) holds both operands: it passes
       nothing. A reached product of two tensors that holds neither operand, and a reached
       softmax (one whose output is not only held attention weights), have no rule: they
       become ``"opaque"`` ops, which the gradient family differentiates and every other
       analyzer refuses, naming them (:attr:`Op.refusal`). A softmax that is not reached
       stays an activation (its derivative, for the gradient family).

    Parameters
    ----------
    ops : list of Op
        The program's ops in topological order, pruned to those the output depends on.
        Changed in place.
    output : int
        The output slot.

    Returns
    -------
    set of int
        ``id`` of every op the held backward pass reaches (see
        :meth:`pattern_keras.engine.Program.reached_when_held`).
    """
    producer = {slot: op for op in ops for slot in op.outputs}
    for op in ops:
        if op.bilinear:
            weights = [i for i, s in enumerate(op.inputs) if _is_attention_weights(s, producer)]
            op.held_inputs = tuple(weights) if len(weights) == 1 else ()
    reached_slots = {output}
    reached: set[int] = set()
    for op in reversed(ops):
        if op.kind in ("index", "constant") or not reached_slots.intersection(op.outputs):
            continue
        reached.add(id(op))
        reached_slots.update(s for i, s in enumerate(op.inputs) if i not in op.held_inputs)
        if op.bilinear and not op.held_inputs:
            op.kind, op.bilinear = "opaque", False
            what = "Layer" if isinstance(op.layer, keras.layers.Layer) else "Operation"
            op.refusal = (
                f"{what} '{op.key}' of class {type(op.layer).__name__} multiplies two tensors "
                "neither of which is attention weights (a softmax output): the rule-based "
                "analyzers support a matmul or einsum of attention weights and values (the "
                "weights held), and a product of queries and keys that feeds only such "
                "weights; any other product of two tensors has no rule. " + _GRADIENT_FAMILY
            )
        elif op.kind == "activation" and op.activation == "softmax":
            op.kind = "opaque"
            op.refusal = (
                f"Layer '{op.key}' applies a softmax inside the model. A softmax is supported "
                "as the model's last operation, where it is stripped, and as attention weights "
                "that only a matmul, einsum or dot_product_attention consumes (held there). "
                + _GRADIENT_FAMILY
            )
    for op in ops:
        if op.bilinear and id(op) not in reached:
            op.held_inputs = tuple(range(len(op.inputs)))
    return reached
