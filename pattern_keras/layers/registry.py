"""The registry: which builder turns a call of a layer class into ops.

A layer class is covered by the builder registered for it or for a base class whose ``call``
it does not override: a subclass that rewrites ``call`` computes something else (keras-hub's
``ReversibleEmbedding`` is not an embedding lookup when reversed), so it is looked into or
refused by name, never explained by its base class's rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from keras import layers as L

from pattern_keras import graph as _graph
from pattern_keras.layers.activations import (
    activation_function_op,
    activation_layer,
    activation_op,
)
from pattern_keras.layers.attention import dot_product_attention
from pattern_keras.layers.contraction import contraction, signal_product
from pattern_keras.layers.core import Builder, Op, simple_builder, whole_call_op
from pattern_keras.layers.elementwise import affine, arithmetic, identity, product
from pattern_keras.layers.embedding import builders as embedding_builders
from pattern_keras.layers.keras_hub import KERAS_HUB_RULES
from pattern_keras.layers.linear import conv_parts, dense_parts, einsum_dense_parts, linear_ops
from pattern_keras.layers.normalization import (
    batch_norm,
    group_norm,
    layer_norm,
    rms_norm,
    unit_norm,
)
from pattern_keras.layers.recurrent import (
    CELL_CLASSES,
    RNN_CLASSES,
    bidirectional,
    cell_call,
    rnn_layer,
    time_distributed,
)
from pattern_keras.layers.reduction import (
    average_pool,
    elementwise_extremum,
    max_or_min,
    max_pool,
    mean_or_sum,
)
from pattern_keras.layers.refused import refusal
from pattern_keras.layers.resampling import repeat, resize
from pattern_keras.layers.shape import cast, center_crop, move, pad

__all__ = ["register_layer", "ops_for_node", "supported_layer_names", "builder_for"]

_REGISTRY: dict[type, Builder] = {}
#: Builders of classes of optional libraries, by ``module.qualname``: matched when a layer is
#: met, so that the library is never imported here (keras-hub).
_BY_NAME: dict[str, Builder] = dict(KERAS_HUB_RULES)


def _register(builder: Builder, *classes: type | None) -> None:
    """Register ``builder`` for each class (``None``, a class this Keras release lacks, is
    skipped)."""
    for cls in classes:
        if cls is not None:
            _REGISTRY[cls] = builder


def _register_builtin() -> None:
    op = _graph.operation_class  # Keras's own operation classes, looked up by the adapter

    def dense(node, shape):
        return linear_ops(node, shape, dense_parts)

    def conv(node, shape):
        return linear_ops(node, shape, conv_parts)

    _register(dense, L.Dense)
    _register(
        conv,
        L.Conv1D,
        L.Conv2D,
        L.Conv3D,
        L.DepthwiseConv1D,
        L.DepthwiseConv2D,
        L.SeparableConv1D,
        L.SeparableConv2D,
        L.Conv1DTranspose,
        L.Conv2DTranspose,
        L.Conv3DTranspose,
    )
    _register(activation_layer, L.Activation, L.ReLU, L.Softmax, L.LeakyReLU, L.PReLU, L.ELU)
    # Attention (layers/attention.py): the projections and dot_product_attention; products
    # of two tensors are contractions (layers/contraction.py), held by the hold analysis.
    _register(lambda node, shape: linear_ops(node, shape, einsum_dense_parts), L.EinsumDense)
    _register(dot_product_attention, op("nn.DotProductAttention"))
    _register(batch_norm, L.BatchNormalization)
    _register(layer_norm, L.LayerNormalization)
    _register(affine, L.Rescaling, L.Normalization)
    _register(
        identity,
        L.RandomFlip,
        L.RandomRotation,
        L.RandomZoom,
        L.RandomTranslation,
        L.RandomContrast,
        L.RandomBrightness,
    )
    _register(product, L.Multiply)
    _register(rnn_layer, *RNN_CLASSES)
    _register(cell_call, *CELL_CLASSES)
    _register(bidirectional, L.Bidirectional)
    _register(time_distributed, L.TimeDistributed)
    _register(simple_builder("sum"), L.Subtract)
    # `x + y`, `x * y`, `keras.ops.relu(h)` written inside a functional model are graph ops.
    _register(arithmetic(sum_like=True, averages=True), op("numpy.Add"))
    _register(arithmetic(sum_like=True), op("numpy.Subtract"))
    _register(arithmetic(sum_like=False, multiplies=True), op("numpy.Multiply"))
    _register(arithmetic(sum_like=False), op("numpy.Divide"), op("numpy.TrueDivide"))
    for name, activation in (
        ("nn.Relu", "relu"),
        ("nn.Relu6", "relu"),
        ("nn.Sigmoid", "sigmoid"),
        ("nn.Silu", "silu"),
        ("nn.HardSigmoid", "hard_sigmoid"),
        ("nn.HardSilu", "hard_silu"),
        ("nn.Gelu", "gelu"),
        ("nn.Elu", "elu"),
        ("nn.Selu", "selu"),
        ("nn.Softplus", "softplus"),
        ("numpy.Tanh", "tanh"),
        ("nn.LeakyRelu", "leaky_relu"),
        ("nn.Softmax", "softmax"),
    ):
        _register(activation_function_op(activation, plain_relu=name == "nn.Relu"), op(name))
    # Layers that keras.applications defines for itself.
    _register(affine, _graph.application_class("convnext.LayerScale"))
    _register(identity, _graph.application_class("convnext.StochasticDepth"))
    _register(
        simple_builder("sum"), _graph.application_class("inception_resnet_v2.CustomScaleLayer")
    )
    _register(
        simple_builder("max_pool"),
        L.MaxPooling1D,
        L.MaxPooling2D,
        L.MaxPooling3D,
        L.GlobalMaxPooling1D,
        L.GlobalMaxPooling2D,
        L.GlobalMaxPooling3D,
    )
    _register(
        simple_builder("sum", averages=True),
        L.AveragePooling1D,
        L.AveragePooling2D,
        L.AveragePooling3D,
        L.GlobalAveragePooling1D,
        L.GlobalAveragePooling2D,
        L.GlobalAveragePooling3D,
        L.Add,
        L.Average,
    )
    _register(
        simple_builder("move"),
        L.Flatten,
        L.Reshape,
        L.Dropout,
        L.SpatialDropout1D,
        L.SpatialDropout2D,
        L.SpatialDropout3D,
        L.ZeroPadding1D,
        L.ZeroPadding2D,
        L.ZeroPadding3D,
        L.Cropping1D,
        L.Cropping2D,
        L.Cropping3D,
        L.Concatenate,
        L.Identity,
        L.InputLayer,
        L.Permute,
    )


def _register_round3() -> None:
    """The ops models use and the remaining keras.layers classes (issue 20, item 3)."""
    op = _graph.operation_class
    layer = _keras_layer
    # The identity at inference (noise, dropout, regularization, augmentation).
    _register(
        identity,
        L.GaussianNoise,
        L.GaussianDropout,
        L.AlphaDropout,
        L.ActivityRegularization,
        *(
            layer(name)
            for name in (
                "AugMix",
                "CutMix",
                "MixUp",
                "RandAugment",
                "RandomColorDegeneration",
                "RandomColorJitter",
                "RandomElasticTransform",
                "RandomErasing",
                "RandomGaussianBlur",
                "RandomGrayscale",
                "RandomHue",
                "RandomInvert",
                "RandomPerspective",
                "RandomPosterization",
                "RandomSaturation",
                "RandomSharpness",
                "RandomShear",
                "Solarization",
                "MaxNumBoundingBoxes",
            )
        ),
    )
    # Data movement.
    _register(move, L.Masking)
    _register(center_crop, L.CenterCrop)
    _register(
        move,
        *(
            op(f"numpy.{name}")
            for name in (
                "GetItem",
                "Split",
                "Transpose",
                "Reshape",
                "ExpandDims",
                "Squeeze",
                "Concatenate",
                "Stack",
                "Tile",
                "Repeat",
                "Flip",
                "Roll",
                "Swapaxes",
                "Moveaxis",
                "TakeAlongAxis",
            )
        ),
    )
    # ops.unstack; ops.image.extract_patches (a convolution with an identity kernel: each output
    # value a copy of one input value, or a padded zero).
    _register(move, op("core.Unstack"), op("image.ExtractPatches"))
    _register(pad, op("numpy.Pad"))
    _register(cast, op("core.Cast"))
    _register(affine, op("numpy.Negative"))
    # Resampling.
    _register(resize, L.UpSampling2D, L.Resizing, op("image.Resize"))
    _register(repeat, L.UpSampling1D, L.UpSampling3D, L.RepeatVector)
    # Reductions and selections.
    _register(mean_or_sum, op("numpy.Mean"), op("numpy.Sum"))
    _register(max_or_min, op("numpy.Max"), op("numpy.Min"), op("numpy.Amax"), op("numpy.Amin"))
    _register(elementwise_extremum(takes_minimum=False), op("numpy.Maximum"))
    _register(elementwise_extremum(takes_minimum=True), op("numpy.Minimum"))
    _register(max_pool, L.Maximum, L.Minimum)
    _register(
        average_pool,
        *(layer(f"AdaptiveAveragePooling{d}D") for d in (1, 2, 3)),
    )
    _register(max_pool, *(layer(f"AdaptiveMaxPooling{d}D") for d in (1, 2, 3)))
    # Normalizers with a per-sample scale, held by the rule-based analyzers.
    _register(group_norm, layer("GroupNormalization"))
    _register(rms_norm, layer("RMSNormalization"))
    _register(unit_norm, layer("UnitNormalization"))
    # Contractions.
    _register(contraction, op("numpy.Matmul"), op("numpy.Dot"), op("numpy.Einsum"))
    _register(signal_product, L.Dot)
    _register(wrapped_layer, layer("SpectralNormalization"))


def _keras_layer(name: str) -> type | None:
    """``keras.layers.<name>``, or ``None`` where this Keras release lacks it (the registry
    then skips it)."""
    found = getattr(L, name, None)
    return found if isinstance(found, type) else None


def wrapped_layer(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
    """A wrapper that, at inference, calls the layer it wraps (SpectralNormalization, whose
    kernel is normalized in place during training only): the wrapped layer's ops, under the
    wrapper's name."""
    inner = node.layer.layer
    builder = builder_for(inner)
    if builder is None:
        raise ValueError(
            f"Layer '{node.key}' ({type(node.layer).__name__}) wraps a layer of class "
            f"{type(inner).__name__}, which is not supported."
        )
    return builder(dataclasses.replace(node, layer=inner), x_shape)


_register_builtin()
_register_round3()
for _builder, _classes in embedding_builders():
    _register(_builder, *_classes)

_USER_KINDS = ("move", "sum", "max_pool", "relu", "linear_activation")


def register_layer(layer_class: type, kind: str) -> None:
    """Declare how the reverse engine treats a layer class of your own.

    Every analyzer then handles the layer by the rules of that kind: no per-analyzer code.

    Parameters
    ----------
    layer_class : type
        A ``keras.layers.Layer`` subclass (subclasses of it are covered too).
    kind : {"move", "sum", "max_pool", "relu", "linear_activation"}
        ``"move"``: the layer only moves, copies or drops values (a reshape, a crop, a gather);
        every method passes its backward signal as the gradient does.
        ``"sum"``: a fixed linear map without a learned kernel (a scaling, a pooling, a sum of
        inputs); LRP rules redistribute relevance in proportion to the contributions.
        ``"max_pool"``: picks a maximum; signals go to the winners.
        ``"relu"``: a rectifier; the pattern methods and Guided BackProp gate by its forward
        pass with its own gradient, DeConvNet rectifies.
        ``"linear_activation"``: an elementwise identity-like map whose gradient passes.

    Examples
    --------
    >>> class Scale(keras.layers.Layer):
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> pk.register_layer(Scale, "sum")
    """
    if kind not in _USER_KINDS:
        raise ValueError(f"kind must be one of {_USER_KINDS}, got {kind!r}.")
    if not isinstance(layer_class, type):
        raise TypeError(f"layer_class must be a class, got {layer_class!r}.")
    if kind in ("relu", "linear_activation"):
        name = "relu" if kind == "relu" else "linear"

        def build(node, shape, name=name):
            return [
                activation_op(
                    node.key,
                    node.layer,
                    name,
                    lambda x: node.call([x])[0],
                    node.inputs[0],
                    node.outputs[0],
                )
            ]

        _REGISTRY[layer_class] = build
    else:
        _REGISTRY[layer_class] = simple_builder(kind)


def builder_for(layer: Any) -> Builder | None:
    """The builder of ``layer``'s class, or of the nearest base class whose ``call`` the
    layer's class inherits unchanged; ``None`` if there is none (the layer is then looked
    into). A class refused by name (:mod:`~pattern_keras.layers.refused`) gets a builder that
    raises its reason, so that it is never looked into."""
    layer_class = type(layer)
    for cls in layer_class.__mro__:
        builder = _REGISTRY.get(cls) or _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if builder is not None:
            return builder if _inherits_call(layer_class, cls) else None
    reason = refusal(layer)
    return None if reason is None else _refuser(reason)


def _refuser(reason: str) -> Builder:
    def build(node: _graph.CallNode, x_shape: Sequence[Any]) -> list[Op]:
        raise ValueError(
            f"Layer '{node.key}' of class {type(node.layer).__name__} is not supported: {reason}"
        )

    return build


def _inherits_call(layer_class: type, base: type) -> bool:
    """Whether ``layer_class`` computes what ``base`` computes: it does not override ``call``
    (nor ``__call__``, for operations) below ``base``."""
    return all(getattr(layer_class, name, None) is getattr(base, name, None) for name in ("call",))


def supported_layer_names() -> list[str]:
    """Names of the layer classes the engine supports (including registered ones).

    Returns
    -------
    list of str
        Sorted class names.
    """
    return sorted({cls.__name__ for cls in _REGISTRY})


def ops_for_node(node: _graph.CallNode, input_shape: Sequence[Any]) -> list[Op]:
    """The ops of one call node; raises ``ValueError`` naming an unsupported layer."""
    if node.constant:  # its output does not depend on its inputs' values
        return [whole_call_op(node, "constant")]
    reason = refusal(node.layer)
    if reason is not None:  # before the index ops: an integer output is no reason to pass
        _refuser(reason)(node, input_shape)
    if node.output_dtypes and not any(_is_float(d) for d in node.output_dtypes):
        # Masks, indices, shapes: nothing crosses an integer backward, whatever the operation.
        return [whole_call_op(node, "index")]
    builder = builder_for(node.layer)
    if builder is None:
        raise ValueError(
            f"Layer '{node.key}' of class {type(node.layer).__name__} is not supported: no "
            f"backward rule exists for it, and pattern_keras never falls back to a silent "
            f"gradient. Supported layers: {', '.join(supported_layer_names())}. For a layer of "
            "your own, declare its kind with `pattern_keras.register_layer(cls, kind)`."
        )
    ops = builder(node, input_shape)
    rank = len(node.output_shapes[0]) if node.output_shapes else 0
    masks = _mask_argument_slots(node)
    for op in ops:
        op.rank = rank
        marked = {i for i, s in enumerate(op.inputs) if s in masks}
        op.index_inputs = tuple(sorted(set(op.index_inputs) | marked))
    return ops


def _mask_argument_slots(node: _graph.CallNode) -> set[int]:
    """The slots of the node's inputs passed as its ``mask`` argument
    (``GlobalAveragePooling1D()(x, mask=padding_mask)``): read as a mask, never explained (an
    integer model input given there is not cast to a float explained point)."""
    arguments = _graph.call_arguments(node)
    if arguments is None:
        return set()
    tag = arguments[1].get("mask")
    return {node.inputs[tag[1]]} if tag is not None and tag[0] == "input" else set()


def _is_float(dtype: str) -> bool:
    return "float" in dtype or "complex" in dtype
