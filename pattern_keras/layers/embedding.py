"""Embedding lookups: integer ids to rows of a table (Embedding, ReversibleEmbedding as a lookup,
``keras.ops.take(table, ids, axis=0)``), and the tied output layer ``ReversibleEmbedding(x,
reverse=True)``, which is a linear layer with the transposed table as its kernel.

A lookup becomes an op of kind ``"lookup"``: nothing crosses it backward (there is no signal in an
integer). Its input is explained at the vectors it gives instead (see
:mod:`pattern_keras.points`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import layers as L

from pattern_keras import graph as _graph
from pattern_keras.layers.core import LinearPart, Op, simple_builder

__all__ = ["Table", "embedding", "take", "is_addition"]


class Table:
    """A lookup's table, read by looking every id up (so a quantized or LoRA table is the one
    the layer uses): ``Table()`` is ``(vocabulary, ...)``.

    Attributes
    ----------
    vocabulary : int
        The number of rows: valid ids are ``0 ≤ id < vocabulary``.
    """

    def __init__(self, forward: Any, vocabulary: int) -> None:
        self.forward = forward
        self.vocabulary = vocabulary

    def __call__(self) -> Any:
        return self.forward([tf.range(self.vocabulary)])[0]


def _lookup_op(node: _graph.CallNode, vocabulary: int, ids_slot: int, forward) -> Op:
    """A ``"lookup"`` op."""
    return Op(
        key=node.key,
        kind="lookup",
        layer=node.layer,
        inputs=(ids_slot,),
        outputs=node.outputs,
        forward=forward,
        table=Table(forward, vocabulary),
    )


def embedding(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """``Embedding`` and ``ReversibleEmbedding``: a lookup, or (``reverse=True``) the tied
    output layer ``x · tableᵀ``."""
    layer = node.layer
    args, kwargs = _graph.call_arguments(node) or ([], {})
    reverse = kwargs.get("reverse", args[1] if len(args) > 1 else ("constant", False))
    if reverse[0] != "constant" or not reverse[1]:
        return [_lookup_op(node, int(layer.input_dim), node.inputs[0], node.call)]
    if getattr(layer, "logit_soft_cap", None) is not None:
        raise ValueError(
            f"Layer '{node.key}' ({type(layer).__name__}, reverse=True) caps its logits "
            f"(logit_soft_cap={layer.logit_soft_cap}): pattern_keras has no backward rule for "
            "the soft cap. Build the model with logit_soft_cap=None to explain the logits."
        )
    if getattr(layer, "quantization_mode", None) or getattr(layer, "reverse_dtype", None):
        raise ValueError(
            f"Layer '{node.key}' ({type(layer).__name__}, reverse=True) is quantized or casts "
            "to another dtype for its output product: not supported."
        )

    def kernel() -> Any:
        return tf.transpose(layer.embeddings) if layer.tie_weights else layer.reverse_embeddings

    part = LinearPart(
        kernel,
        None,
        lambda x, k: keras.ops.matmul(x, tf.cast(k, x.dtype)),
        kernel_shape=(int(layer.output_dim), int(layer.input_dim)),
        compute_dtype=layer.compute_dtype,
    )
    return [
        Op(
            key=node.key,
            kind="linear",
            layer=layer,
            inputs=node.inputs[:1],
            outputs=node.outputs,
            forward=lambda xs: [part.apply(xs[0], part.kernel)],
            linear=part,
            pattern_key=f"{node.key}/reverse",
        )
    ]


def take(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """``keras.ops.take``: a lookup when it picks rows (``axis=0``) of a constant table (a
    variable or an array) by an integer tensor; a gather of a computed tensor otherwise, which
    only moves values (``"move"``)."""
    args, kwargs = _graph.call_arguments(node) or ([], {})
    table = args[0] if args else kwargs.get("x", ("input", 0))
    ids = args[1] if len(args) > 1 else kwargs.get("indices", ("input", 1))
    if table[0] == "input" or ids[0] != "input":
        ops = simple_builder("move")(node, x_shape)
        if ids[0] == "input":
            ops[0].index_inputs = (ids[1],)
        return ops
    table = table[1]
    axis = getattr(node.layer, "axis", None)
    rank = len(table.shape)
    if axis is None or int(axis) % rank != 0:
        raise ValueError(
            f"Operation '{node.key}' takes from a constant table of shape "
            f"{tuple(table.shape)} along axis {axis}: an embedding lookup picks rows "
            "(`keras.ops.take(table, ids, axis=0)`); no other lookup is supported."
        )

    def forward(xs: Sequence[Any]) -> list[Any]:
        return [keras.ops.take(table, xs[0], axis=0)]

    return [_lookup_op(node, int(table.shape[0]), node.inputs[ids[1]], forward)]


def is_addition(op: Op) -> bool:
    """Whether ``op`` adds its operands (``Add`` layer, ``x + y``, ``x + constant``), the ops
    that sum token, position and segment embeddings."""
    add_op = _graph.operation_class("numpy.Add")
    return isinstance(op.layer, L.Add) or (add_op is not None and isinstance(op.layer, add_op))


def builders() -> list[tuple[Any, tuple[type | None, ...]]]:
    """``(builder, classes)`` pairs for the registry."""
    return [
        (embedding, (L.Embedding, getattr(L, "ReversibleEmbedding", None))),
        (take, (_graph.operation_class("numpy.Take"),)),
    ]
