"""Contractions: ``keras.ops.matmul``, ``dot`` and ``einsum`` in a model, and the Dot layer.

A contraction of one signal with a constant (an array, or a captured weight) is a linear map of
the signal:

- shaped like a Dense layer's or a convolution's (every axis of the constant but one is summed
  against the signal, and that one becomes one axis of the output: ``x @ w``,
  ``einsum("btd,de->bte", x, w)``), it is a ``"linear"`` op with the constant as its kernel: every
  analyzer treats it as a linear layer, patterns included (keyed by the op's name);
- any other (the constant on the left, ``einsum("bhd,hde->bhe", x, w)``) is a fixed linear map
  without a kernel the rules can read, kind ``"sum"``: the z-rule for every LRP variant, the
  derivative for every other method (no pattern).

A product of two signals (queries × keys, attention weights × values) is linear in each
operand: :func:`signal_product` makes it a bilinear op, which the hold analysis
(:func:`~pattern_keras.layers.attention.resolve_attention`) resolves once the whole program is
known: linear in the values where the other operand is attention weights (held), passing nothing
where it only feeds held weights, an opaque op (refused by the rule-based analyzers) otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from pattern_keras import graph as _graph
from pattern_keras.layers.attention import bilinear_product
from pattern_keras.layers.core import LinearPart, Op, simple_builder

__all__ = ["contraction", "signal_product"]


def signal_product(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """A contraction of two signals (``matmul(q, k)``, ``Dot()([a, b])``): a bilinear op (see
    :func:`~pattern_keras.layers.attention.bilinear_product`). A ``Dot`` that normalizes its
    inputs (cosine proximity) is linear in neither and refused, by name."""
    if getattr(node.layer, "normalize", False):
        raise ValueError(
            f"{_what(node)} '{node.key}' of class {type(node.layer).__name__} takes the dot "
            "product of two normalized tensors (normalize=True): it is linear in neither, and "
            "pattern_keras has no backward rule for it."
        )
    return bilinear_product(node, x_shape)


def _what(node: _graph.CallNode) -> str:
    return "Layer" if isinstance(node.layer, keras.layers.Layer) else "Operation"


def contraction(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """Matmul, Dot or Einsum written as a graph op: of two signals, :func:`signal_product`;
    of one signal and a constant, a linear op where the constant is a kernel the rules can
    read, a fixed linear map (``"sum"``) otherwise."""
    if len(node.inputs) != 1:
        return signal_product(node, x_shape)
    arguments = _graph.call_arguments(node)
    operands = arguments[0] if arguments is not None else None
    if operands is None or len(operands) != 2:
        raise ValueError(
            f"{_what(node)} '{node.key}' of class {type(node.layer).__name__}: its operands "
            "could not be read, so pattern_keras cannot tell which one is a constant."
        )
    signal_first = operands[0][0] == "input"
    constant = operands[1][1] if signal_first else operands[0][1]
    shape = tuple(int(d) for d in keras.ops.shape(constant))
    part = _kernel_part(node, constant, shape, signal_first)
    if part is None:
        return simple_builder("sum")(node, x_shape)
    return [
        Op(
            key=node.key,
            kind="linear",
            layer=node.layer,
            inputs=node.inputs,
            outputs=node.outputs,
            forward=lambda xs, p=part: [p.apply(xs[0], p.kernel)],
            linear=part,
            pattern_key=node.key,
        )
    ]


def _kernel_part(
    node: _graph.CallNode, constant: Any, shape: tuple[int, ...], signal_first: bool
) -> LinearPart | None:
    """The constant as the kernel of a :class:`LinearPart`, or ``None`` where the contraction
    is not shaped like a linear layer's (see the module docstring)."""
    name = type(node.layer).__name__
    if name in ("Matmul", "Dot"):
        # x (…, d) against w (d, e): a Dense layer's map (numpy's dot is matmul here).
        if not signal_first or len(shape) != 2:
            return None
        subscripts = "...d,de->...e"
    elif name == "Einsum":
        subscripts = _kernel_last_subscripts(node.layer.subscripts, signal_first)
        if subscripts is None:
            return None
    else:  # pragma: no cover - only the classes registered for this builder arrive here
        return None
    inputs, output = subscripts.split("->")
    kernel_letters = inputs.split(",")[1]
    free = next(c for c in kernel_letters if c in output)
    channel_axis = output.index(free) - len(output)  # after any ellipsis: counted from the end

    def apply(x: Any, kernel: Any) -> Any:
        if name != "Einsum":  # what the op computes, bit for bit
            return keras.ops.matmul(x, tf.cast(kernel, x.dtype))
        return tf.einsum(subscripts, x, tf.cast(kernel, x.dtype))

    return LinearPart(
        lambda: constant,
        None,
        apply,
        kernel_shape=shape,
        out_axes=(kernel_letters.index(free) - len(kernel_letters),),
        channel_axis=channel_axis,
    )


def _kernel_last_subscripts(subscripts: str, signal_first: bool) -> str | None:
    """``subscripts`` rewritten with the signal's operand first, where the kernel has exactly
    one free index (in the output, not in the signal; after any ellipsis of the output) and
    every other kernel index is summed against the signal; ``None`` otherwise."""
    subscripts = subscripts.replace(" ", "")
    if "->" not in subscripts:
        return None
    inputs, output = subscripts.split("->")
    operands = inputs.split(",")
    if len(operands) != 2:
        return None
    signal, kernel = operands if signal_first else operands[::-1]
    if "." in kernel or len(set(kernel)) != len(kernel):
        return None
    free = [c for c in kernel if c in output]
    summed = [c for c in kernel if c not in output]
    if len(free) != 1 or free[0] in signal or not all(c in signal for c in summed):
        return None
    if "..." in output and output.index(free[0]) < output.index("..."):
        return None
    return f"{signal},{kernel}->{output}"
