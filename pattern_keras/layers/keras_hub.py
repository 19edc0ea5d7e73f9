"""keras-hub layer classes that need a rule of their own, named by their qualified class names.

Most keras-hub layers are looked into (their ``call`` is a graph of Keras layers and
``keras.ops``). These cannot be, or are simpler with a rule:

- the stochastic-depth layers (``DropPath`` of MiT/SegFormer, Swin and MobileNetV5;
  ``DINOV2DropPath``, ``DINOV3DropPath``): the identity at inference, where their ``call``
  returns its input unchanged, which is no graph of operations;
- ``HGNetV2LearnableAffineBlock``: ``scale·x + bias`` with a learned scalar scale and bias, an
  elementwise affine map (its ``call`` multiplies a variable by the input, which symbolic
  tensors do not support in that order).

The classes are matched by ``module.qualname`` when a layer is met, so pattern_keras never
imports keras-hub (nor needs it installed); a keras-hub release that moves a class makes its
layers looked into or refused by name, never explained by a wrong rule (and
``tests/test_model_matrix.py`` checks that every name here still exists).
"""

from __future__ import annotations

from pattern_keras.layers.core import Builder
from pattern_keras.layers.elementwise import affine, identity

__all__ = ["KERAS_HUB_RULES"]

_MODELS = "keras_hub.src.models."

#: ``{"module.QualifiedName": builder}`` for keras-hub classes.
KERAS_HUB_RULES: dict[str, Builder] = {
    _MODELS + "mit.mit_layers.DropPath": identity,
    _MODELS + "swin_transformer.swin_transformer_layers.DropPath": identity,
    _MODELS + "dinov2.dinov2_layers.DINOV2DropPath": identity,
    _MODELS + "dinov3.dinov3_layers.DINOV3DropPath": identity,
    _MODELS + "mobilenetv5.mobilenetv5_layers.DropPath": identity,
    _MODELS + "hgnetv2.hgnetv2_layers.HGNetV2LearnableAffineBlock": affine,
}
