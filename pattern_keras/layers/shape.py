"""Data movement: ops and layers that only select, copy, reorder or drop values (slicing, padding,
splitting, transposing, reshaping, concatenating, casting between float types, repeating,
masking, cropping). All of kind ``"move"``: every method passes its backward signal as the
gradient does, so a copied value gets the sum of its copies' signals and a dropped one none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pattern_keras import graph as _graph
from pattern_keras.layers.core import Op, simple_builder

__all__ = ["move", "pad", "cast", "center_crop", "refuse_batch_axis", "known_nonnegative"]

#: Every op of this module: its own call, run on all its inputs (index operands, such as the
#: position tensor of ``x[:, i]``, get no backward signal: they are not floating point).
move = simple_builder("move")


def pad(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """``keras.ops.pad``: a move (zeros, or copies of values for the reflecting modes).

    Padding with a constant that may be negative (or a tensor) is kind ``"sum"`` instead: the
    same rules (the copied values get their signals as a move's, the constant gets none, as a
    bias), without the claim that non-negative inputs give a non-negative output, which LRP-αβ
    and z⁺ read from a move.
    """
    arguments = _graph.call_arguments(node)
    value = None
    if arguments is not None:
        args, kwargs = arguments
        value = kwargs.get("constant_values", args[1] if len(args) > 1 else None)
    if getattr(node.layer, "mode", "constant") == "constant" and value is not None:
        what, constant = value
        if what != "constant" or (constant is not None and not known_nonnegative(constant)):
            return simple_builder("sum")(node, x_shape)
    return move(node, x_shape)


def known_nonnegative(value: Any) -> bool:
    """Whether ``value`` is a fixed number or array (not a variable, whose value may change
    after the program is built) with no negative entry."""
    if not isinstance(value, (int, float, np.ndarray, np.generic)):
        return False
    return bool(np.all(np.asarray(value) >= 0))


def cast(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """``keras.ops.cast`` to a float type: the identity up to rounding, so a move. (A cast to
    an integer type never gets here: its output is not floating point, an ``"index"`` op.)"""
    return move(node, x_shape)


def center_crop(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """CenterCrop: a crop (a move) where the input is at least the target size; otherwise the
    layer resizes, which is refused."""
    layer = node.layer
    channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
    spatial = tuple(x_shape[-3:-1]) if channels_last else tuple(x_shape[-2:])
    target = (layer.height, layer.width)
    if any(n is None or n < t for n, t in zip(spatial, target)):
        raise ValueError(
            f"Layer '{node.key}' (CenterCrop to {target[0]}×{target[1]}) gets inputs of size "
            f"{spatial[0]}×{spatial[1]}: where an input is smaller than the target (or of "
            "unknown size) CenterCrop resizes it, which pattern_keras does not support. Crop "
            "or resize the data before the model."
        )
    return move(node, x_shape)


def refuse_batch_axis(node: _graph.CallNode, axis: Any, what: str) -> None:
    """Refuse an op that reduces over every axis (``axis=None``), the batch axis included: its
    result mixes the samples of a batch, so no sample has an explanation of its own."""
    if axis is None and len(node.input_shapes[0] if node.input_shapes else ()) > 0:
        raise ValueError(
            f"Operation '{node.key}' ({type(node.layer).__name__}) {what} over every axis, the "
            "batch axis included: its value mixes the samples of a batch, so no sample has an "
            "explanation of its own. Give the axes to reduce (e.g. `axis=-1`)."
        )
