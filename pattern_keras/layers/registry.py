"""The registry: which builder turns a call of a layer class into ops.

A layer class is covered by the builder registered for it or for a base class whose ``call``
it does not override: a subclass that rewrites ``call`` computes something else (keras-hub's
``ReversibleEmbedding`` is not an embedding lookup when reversed), so it is looked into or
refused by name, never explained by its base class's rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras import layers as L

from pattern_keras import graph as _graph
from pattern_keras.layers.activations import (
    activation_function_op,
    activation_layer,
    activation_op,
)
from pattern_keras.layers.core import Builder, Op, simple_builder
from pattern_keras.layers.elementwise import affine, arithmetic, identity, product
from pattern_keras.layers.keras_hub import KERAS_HUB_RULES
from pattern_keras.layers.linear import conv_parts, dense_parts, linear_ops
from pattern_keras.layers.normalization import batch_norm, layer_norm

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


_register_builtin()

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
    layer's class inherits unchanged; ``None`` if there is none."""
    layer_class = type(layer)
    for cls in layer_class.__mro__:
        builder = _REGISTRY.get(cls) or _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if builder is not None:
            return builder if _inherits_call(layer_class, cls) else None
    return None


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
    if node.output_dtypes and not any(_is_float(d) for d in node.output_dtypes):
        # Masks, indices, shapes: nothing crosses an integer backward, whatever the operation.
        return [
            Op(
                key=node.key,
                kind="index",
                layer=node.layer,
                inputs=node.inputs,
                outputs=node.outputs,
                forward=node.call,
                rank=len(node.output_shapes[0]) if node.output_shapes else 0,
            )
        ]
    builder = builder_for(node.layer)
    if builder is None and ".layers.preprocessing" in type(node.layer).__module__:
        raise ValueError(
            f"Layer '{node.key}' of class {type(node.layer).__name__} is a preprocessing layer "
            "that pattern_keras does not support: of the preprocessing layers only Rescaling, "
            "Normalization and RandomFlip, RandomRotation, RandomZoom, RandomTranslation, "
            "RandomContrast, RandomBrightness (the identity at inference) are. Apply it to the "
            "data before the model, or build the model without it."
        )
    if builder is None:
        raise ValueError(
            f"Layer '{node.key}' of class {type(node.layer).__name__} is not supported: no "
            f"backward rule exists for it, and pattern_keras never falls back to a silent "
            f"gradient. Supported layers: {', '.join(supported_layer_names())}. For a layer of "
            "your own, declare its kind with `pattern_keras.register_layer(cls, kind)`."
        )
    ops = builder(node, input_shape)
    rank = len(node.output_shapes[0]) if node.output_shapes else 0
    for op in ops:
        op.rank = rank
    return ops


def _is_float(dtype: str) -> bool:
    return "float" in dtype or "complex" in dtype
