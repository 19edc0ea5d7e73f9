"""Resampling without a learned kernel: UpSampling1D/2D/3D, Resizing (and
``keras.ops.image.resize``) inside a model, and RepeatVector.

Each is a fixed linear map of its input, chosen by its interpolation:

- ``"nearest"`` (and UpSampling1D/3D, RepeatVector, which repeat values): every output is a copy
  of one input value, kind ``"move"`` (a value copied ``k`` times gets the sum of its copies'
  signals; LRP conserves relevance).
- ``"bilinear"``: every output is a weighted average of input values with non-negative weights
  summing to 1, kind ``"sum"`` with ``averages`` (LRP splits relevance in proportion to the
  contributions and conserves it; a non-negative input gives a non-negative output).
- ``"bicubic"``, ``"lanczos3"``, ``"lanczos5"``: weights of both signs, kind ``"sum"`` (the z-rule
  for every LRP variant, the derivative for every other method).
- ``"area"``: refused (TensorFlow has no gradient for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pattern_keras import graph as _graph
from pattern_keras.layers.core import Op, simple_builder

__all__ = ["resize", "repeat"]

repeat = simple_builder("move")

_KINDS = {
    "nearest": ("move", False),
    "bilinear": ("sum", True),
    "bicubic": ("sum", False),
    "lanczos3": ("sum", False),
    "lanczos5": ("sum", False),
}


def resize(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """UpSampling2D, Resizing or ``keras.ops.image.resize``: a fixed linear map whose kind
    follows its ``interpolation`` (see the module docstring)."""
    interpolation = getattr(node.layer, "interpolation", "nearest")
    if interpolation not in _KINDS:
        why = (
            "TensorFlow defines no gradient for it"
            if interpolation == "area"
            else "pattern_keras has no rule for it"
        )
        raise ValueError(
            f"Layer '{node.key}' ({type(node.layer).__name__}) resizes with "
            f"interpolation={interpolation!r}: {why}. Supported inside a model: "
            f"{', '.join(repr(k) for k in _KINDS)}; or resize the data before the model."
        )
    kind, averages = _KINDS[interpolation]
    if getattr(node.layer, "pad_to_aspect_ratio", False) and node.layer.fill_value < 0:
        # A negative fill makes negative outputs of non-negative inputs: the same rules,
        # without that claim (read by LRP-αβ and z⁺ from moves and averages).
        kind, averages = "sum", False
    return simple_builder(kind, averages=averages)(node, x_shape)
