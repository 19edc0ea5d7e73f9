"""Coverage cases of the "ops" helper: every keras.layers class not owned by another helper.

Supported classes share small models by family (one model, one run of every analyzer, for
several classes); each model's references are in its :class:`SmallModel`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers as L

from layer_cases import LayerCase, SmallModel, add, held_activation

_ACTIVATIONS = (L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Activation)


def _sequential(name, input_shape, *layers):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(input_shape), *layers], name=name)


def _dense(units, **kwargs):
    return L.Dense(units, bias_initializer="random_normal", **kwargs)


def _chain(model, x, held=None, stop=None):
    """``model``'s layers applied in turn (inference mode); a layer whose class is in ``held``
    by its held function ``held[cls](layer, x)``; activations (with ``held``) by
    :func:`held_activation`; up to the layer ``stop`` (excluded)."""
    for layer in model.layers:
        if layer is stop:
            break
        if held is not None and type(layer) in held:
            x = held[type(layer)](layer, x)
        elif held is not None and isinstance(layer, _ACTIVATIONS):
            x = held_activation(layer, x)
        else:
            x = layer(x, training=False)
    return x


def _held(**by_class):
    """``held(model, x)``: the chain with the given held functions (and held activations)."""
    table = {getattr(L, name): fn for name, fn in by_class.items()}
    return lambda model, x: _chain(model, x, table)


def _randomize(model, seed=1):
    """Random values for every non-kernel weight (γ, β, scales, BatchNorm statistics), so that
    the normalizers are really exercised (fresh ones are the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if "kernel" in w.path or "bias" in w.path:
                continue
            low = 0.5 if ("variance" in w.path or "gamma" in w.path or "scale" in w.path) else -1
            w.assign(rng.uniform(low, 1.5, w.shape).astype("float32"))
    return model


# -- held normalizers, written here from their definitions -----------------------------------


def _held_layer_norm(layer, x):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    y = (x - mean) * tf.stop_gradient(tf.math.rsqrt(variance + layer.epsilon))
    return y * layer.gamma + layer.beta


def _held_group_norm(layer, x):
    n, t, c = x.shape[0], x.shape[1], x.shape[2]
    g = tf.reshape(x, (n, t, layer.groups, c // layer.groups))
    mean, variance = tf.nn.moments(g, axes=[1, 3], keepdims=True)
    y = tf.reshape((g - mean) * tf.stop_gradient(tf.math.rsqrt(variance + layer.epsilon)), x.shape)
    return y * layer.gamma + layer.beta


def _held_rms_norm(layer, x):
    rms = tf.sqrt(tf.reduce_mean(x * x, axis=-1, keepdims=True) + layer.epsilon)
    return x / tf.stop_gradient(rms) * layer.scale


def _held_unit_norm(layer, x):
    return x / tf.stop_gradient(tf.norm(x, axis=-1, keepdims=True))


# -- the small models -----------------------------------------------------------------------


def _dense_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((5,))  # a functional model lists its InputLayer among its layers
    return keras.Model(x, _dense(3)(_dense(4)(x)), name="dense")


DENSE = SmallModel(_dense_model)

CONV1D = SmallModel(
    lambda: _sequential(
        "conv1d",
        (9, 3),
        L.Conv1D(4, 3, padding="same", bias_initializer="random_normal"),
        L.SeparableConv1D(3, 3),
        L.DepthwiseConv1D(2),
        L.Conv1DTranspose(2, 3, strides=2),
        L.Flatten(),
        _dense(3),
    )
)

CONV2D = SmallModel(
    lambda: _sequential(
        "conv2d",
        (6, 6, 2),
        L.Conv2D(3, 3, bias_initializer="random_normal"),
        L.SeparableConv2D(3, 3, padding="same"),
        L.DepthwiseConv2D(2),
        L.Conv2DTranspose(2, 2, strides=2),
        L.GlobalAveragePooling2D(),
        _dense(3),
    )
)

CONV3D = SmallModel(
    lambda: _sequential(
        "conv3d",
        (4, 4, 4, 1),
        L.Conv3D(2, 2, bias_initializer="random_normal"),
        L.Conv3DTranspose(2, 2),
        L.GlobalAveragePooling3D(),
        _dense(3),
    )
)

ACTIVATIONS = SmallModel(
    lambda: _sequential(
        "activations",
        (6,),
        _dense(5),
        L.ReLU(),
        _dense(5),
        L.LeakyReLU(0.1),
        _dense(5),
        L.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.1, 0.5)),
        _dense(5),
        L.ELU(),
        _dense(5),
        L.Activation("gelu"),
        _dense(3),
    ),
    held=_held(),
    gated=True,
)

SOFTMAX = SmallModel(
    lambda: _sequential("softmax", (5,), _dense(4), L.Softmax()),
    exact=lambda model, x: _chain(model, x, stop=model.layers[-1]),
)

POOL1D = SmallModel(
    lambda: _sequential(
        "pool1d",
        (8, 3),
        L.MaxPooling1D(2),
        L.AveragePooling1D(2),
        L.GlobalMaxPooling1D(),
        _dense(3),
    )
)

POOL2D = SmallModel(
    lambda: _sequential(
        "pool2d",
        (8, 8, 2),
        L.MaxPooling2D(2),
        L.AveragePooling2D(2),
        L.GlobalMaxPooling2D(),
        _dense(3),
    )
)

POOL3D = SmallModel(
    lambda: _sequential(
        "pool3d",
        (4, 4, 4, 2),
        L.MaxPooling3D(2),
        L.AveragePooling3D(2),
        L.GlobalMaxPooling3D(),
        _dense(3),
    )
)

ADAPTIVE = SmallModel(
    lambda: _adaptive_model(),
)


def _adaptive_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 7, 2))
    flat = [
        L.Flatten()(L.AdaptiveMaxPooling2D(2)(L.AdaptiveAveragePooling2D((3, 4))(x))),
        L.Flatten()(
            L.AdaptiveMaxPooling1D(2)(L.AdaptiveAveragePooling1D(4)(L.Reshape((21, 4))(x)))
        ),
        L.Flatten()(
            L.AdaptiveMaxPooling3D(2)(L.AdaptiveAveragePooling3D(3)(L.Reshape((6, 7, 2, 1))(x)))
        ),
    ]
    return keras.Model(x, _dense(3)(L.Concatenate()(flat)), name="adaptive")


BATCH_NORM = SmallModel(
    lambda: _randomize(
        _sequential(
            "batch_norm", (5,), L.BatchNormalization(), _dense(4), L.BatchNormalization(), _dense(3)
        )
    )
)

LAYER_NORM = SmallModel(
    lambda: _randomize(
        _sequential("layer_norm", (4, 6), L.LayerNormalization(), L.Flatten(), _dense(3))
    ),
    held=_held(LayerNormalization=_held_layer_norm),
)

GROUP_NORM = SmallModel(
    lambda: _randomize(
        _sequential("group_norm", (5, 6), L.GroupNormalization(groups=3), L.Flatten(), _dense(3))
    ),
    held=_held(GroupNormalization=_held_group_norm),
)

RMS_NORM = SmallModel(
    lambda: _randomize(
        _sequential("rms_norm", (4, 6), L.RMSNormalization(), L.Flatten(), _dense(3))
    ),
    held=_held(RMSNormalization=_held_rms_norm),
)

UNIT_NORM = SmallModel(
    lambda: _sequential("unit_norm", (6,), L.UnitNormalization(), _dense(3)),
    held=_held(UnitNormalization=_held_unit_norm),
)

AFFINE = SmallModel(
    lambda: _sequential(
        "affine",
        (6,),
        L.Normalization(mean=np.linspace(-1, 1, 6), variance=np.linspace(0.5, 2, 6)),
        L.Rescaling(0.5, offset=0.2),
        _dense(3),
    )
)


def _merge_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    a, b = _dense(4)(x), _dense(4)(x)
    merged = [L.Add()([a, b]), L.Subtract()([a, b]), L.Average()([a, b])]
    merged += [L.Maximum()([a, b]), L.Minimum()([a, b])]
    return keras.Model(x, _dense(3)(L.Concatenate()(merged)), name="merge")


MERGE = SmallModel(_merge_model)


def _multiply_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    h = _dense(5)(x)
    return keras.Model(x, _dense(3)(L.Multiply()([h, L.Activation("sigmoid")(h)])), name="multiply")


def _held_multiply(model, x):
    h = model.layers[1](x)
    return model.layers[-1](h * tf.stop_gradient(tf.sigmoid(h)))


MULTIPLY = SmallModel(_multiply_model, held=_held_multiply, gated=True)

SHAPE1D = SmallModel(
    lambda: _sequential(
        "shape1d",
        (6, 4),
        L.Reshape((4, 6)),
        L.Permute((2, 1)),
        L.Cropping1D(1),
        L.ZeroPadding1D(1),
        L.UpSampling1D(2),
        L.SpatialDropout1D(0.5),
        L.Dropout(0.5),
        L.Identity(),
        L.Flatten(),
        L.RepeatVector(2),
        L.Flatten(),
        _dense(3),
    )
)

SHAPE2D = SmallModel(
    lambda: _sequential(
        "shape2d",
        (5, 5, 2),
        L.ZeroPadding2D(1),
        L.Cropping2D(((1, 0), (0, 1))),
        L.SpatialDropout2D(0.3),
        L.Flatten(),
        _dense(3),
    )
)

SHAPE3D = SmallModel(
    lambda: _sequential(
        "shape3d",
        (3, 3, 3, 2),
        L.ZeroPadding3D(1),
        L.Cropping3D(1),
        L.UpSampling3D(2),
        L.SpatialDropout3D(0.3),
        L.Flatten(),
        _dense(3),
    )
)

#: Layers that are the identity at inference, with the arguments they need.
_IDENTITY = {
    "GaussianNoise": dict(stddev=1.0),
    "GaussianDropout": dict(rate=0.3),
    "AlphaDropout": dict(rate=0.3),
    "ActivityRegularization": dict(l1=0.1),
    "RandomFlip": {},
    "RandomRotation": dict(factor=0.2),
    "RandomZoom": dict(height_factor=0.2),
    "RandomTranslation": dict(height_factor=0.1, width_factor=0.1),
    "RandomContrast": dict(factor=0.2),
    "RandomBrightness": dict(factor=0.2),
    "AugMix": {},
    "CutMix": {},
    "MixUp": {},
    "RandAugment": {},
    "RandomColorDegeneration": dict(factor=0.5),
    "RandomColorJitter": dict(brightness_factor=0.2),
    "RandomElasticTransform": {},
    "RandomErasing": {},
    "RandomGaussianBlur": {},
    "RandomGrayscale": {},
    "RandomHue": dict(factor=0.5),
    "RandomInvert": {},
    "RandomPerspective": {},
    "RandomPosterization": dict(factor=(1, 4)),
    "RandomSaturation": dict(factor=0.5),
    "RandomSharpness": dict(factor=0.5),
    "RandomShear": dict(x_factor=0.3),
    "Solarization": dict(addition_factor=0.2, threshold_factor=0.3),
    "MaxNumBoundingBoxes": dict(max_number=3),
}

IDENTITY = SmallModel(
    lambda: _sequential(
        "identity",
        (8, 8, 3),
        *(getattr(L, name)(**kwargs) for name, kwargs in _IDENTITY.items() if hasattr(L, name)),
        L.GlobalAveragePooling2D(),
        _dense(3),
    ),
    data=lambda rng: rng.uniform(0.0, 255.0, size=(3, 8, 8, 3)),
)

RESAMPLING = SmallModel(
    lambda: _sequential(
        "resampling",
        (4, 4, 2),
        L.UpSampling2D((2, 1), interpolation="bilinear"),
        L.Resizing(6, 5, interpolation="nearest"),
        L.Resizing(7, 7, interpolation="bilinear"),
        L.Resizing(5, 6, interpolation="bicubic"),
        L.UpSampling2D(2, interpolation="lanczos3"),
        L.UpSampling2D(1),
        L.CenterCrop(8, 8),
        L.Flatten(),
        _dense(3),
    )
)


def _masked_steps(rng):
    """Sequences with their last steps masked (all-zero features) in two of three samples."""
    x = rng.normal(size=(3, 5, 3))
    x[0, 3:] = 0.0
    x[1, 1:] = 0.0
    return x


MASKING = SmallModel(
    lambda: _sequential("masking", (5, 3), L.Masking(0.0), L.GlobalAveragePooling1D(), _dense(3)),
    data=_masked_steps,
)

SPECTRAL = SmallModel(
    lambda: _sequential("spectral", (5,), L.SpectralNormalization(_dense(4)), _dense(3))
)

# Read by looking inside (graph.py): a Lambda of keras.ops, a Pipeline of layers with rules.
LAMBDA = SmallModel(
    lambda: _sequential("lambda", (5,), _dense(4), L.Lambda(lambda t: 2.0 * t - 1.0), _dense(3))
)
PIPELINE = SmallModel(
    lambda: _sequential(
        "pipeline",
        (4, 4, 2),
        L.Pipeline([L.Rescaling(0.5), L.RandomFlip()]),
        L.Flatten(),
        _dense(3),
    )
)

_SUPPORTED = {
    DENSE: ("Dense", "InputLayer"),
    CONV1D: ("Conv1D", "SeparableConv1D", "DepthwiseConv1D", "Conv1DTranspose", "Flatten"),
    CONV2D: (
        "Conv2D",
        "SeparableConv2D",
        "DepthwiseConv2D",
        "Conv2DTranspose",
        "GlobalAveragePooling2D",
    ),
    CONV3D: ("Conv3D", "Conv3DTranspose", "GlobalAveragePooling3D"),
    ACTIVATIONS: ("ReLU", "LeakyReLU", "PReLU", "ELU", "Activation"),
    SOFTMAX: ("Softmax",),
    POOL1D: ("MaxPooling1D", "AveragePooling1D", "GlobalMaxPooling1D"),
    POOL2D: ("MaxPooling2D", "AveragePooling2D", "GlobalMaxPooling2D"),
    POOL3D: ("MaxPooling3D", "AveragePooling3D", "GlobalMaxPooling3D"),
    ADAPTIVE: tuple(f"Adaptive{k}Pooling{d}D" for k in ("Average", "Max") for d in (1, 2, 3)),
    BATCH_NORM: ("BatchNormalization",),
    LAYER_NORM: ("LayerNormalization",),
    GROUP_NORM: ("GroupNormalization",),
    RMS_NORM: ("RMSNormalization",),
    UNIT_NORM: ("UnitNormalization",),
    AFFINE: ("Normalization", "Rescaling"),
    MERGE: ("Add", "Subtract", "Average", "Maximum", "Minimum", "Concatenate"),
    MULTIPLY: ("Multiply",),
    SHAPE1D: (
        "Reshape",
        "Permute",
        "Cropping1D",
        "ZeroPadding1D",
        "UpSampling1D",
        "SpatialDropout1D",
        "Dropout",
        "Identity",
        "RepeatVector",
    ),
    SHAPE2D: ("ZeroPadding2D", "Cropping2D", "SpatialDropout2D"),
    SHAPE3D: ("ZeroPadding3D", "Cropping3D", "UpSampling3D", "SpatialDropout3D"),
    IDENTITY: tuple(_IDENTITY),
    RESAMPLING: ("UpSampling2D", "Resizing", "CenterCrop"),
    MASKING: ("Masking", "GlobalAveragePooling1D"),
    SPECTRAL: ("SpectralNormalization",),
}

add(
    *(
        LayerCase(name, "supported", model=model)
        for model, names in _SUPPORTED.items()
        for name in names
    ),
    LayerCase("Lambda", "supported", "lead", LAMBDA, "looked into: its keras.ops are read"),
    LayerCase("Pipeline", "supported", "lead", PIPELINE, "looked into: its layers are read"),
)

# -- refused by name ------------------------------------------------------------------------


def _dot_model():
    x = keras.Input((4,))
    return keras.Model(x, _dense(2)(L.Dot(axes=1)([_dense(3)(x), _dense(3)(x)])))


def _image_model(layer):
    def build():
        x = keras.Input((8, 8, 3))
        return keras.Model(x, _dense(2)(L.GlobalAveragePooling2D()(layer()(x))))

    return build


def _discretization_model():
    x = keras.Input((3,))
    codes = L.CategoryEncoding(4, output_mode="multi_hot")(L.Discretization([-1.0, 0.0, 1.0])(x))
    return keras.Model(x, _dense(2)(codes))


def _category_encoding_model():
    x = keras.Input((3,), dtype="int32")
    return keras.Model(x, _dense(2)(L.CategoryEncoding(4, output_mode="count")(x)))


_INDICES = "integer indices"
_BEFORE = "before the model"

add(
    LayerCase("Dot", "refused", model=_dot_model, reason="multiplies two tensors"),
    LayerCase("Discretization", "refused", model=_discretization_model, reason=_INDICES),
    LayerCase("CategoryEncoding", "refused", model=_category_encoding_model, reason=_INDICES),
    LayerCase("StringLookup", "refused", reason=_INDICES),
    LayerCase("IntegerLookup", "refused", reason=_INDICES),
    LayerCase("TextVectorization", "refused", reason=_INDICES),
    LayerCase("Hashing", "refused", reason=_INDICES),
    LayerCase("HashedCrossing", "refused", reason=_INDICES),
    LayerCase("TFSMLayer", "refused", reason="SavedModel"),
    LayerCase("JaxLayer", "refused", reason="JAX"),
    LayerCase("FlaxLayer", "refused", reason="Flax"),
    LayerCase("TorchModuleWrapper", "refused", reason="PyTorch"),
    LayerCase("MelSpectrogram", "refused", reason=_BEFORE),
    LayerCase("STFTSpectrogram", "refused", reason=_BEFORE),
    LayerCase("AutoContrast", "refused", model=_image_model(L.AutoContrast), reason=_BEFORE),
    LayerCase(
        "ContrastLimitedAdaptiveHistogramEqualization",
        "refused",
        model=_image_model(L.ContrastLimitedAdaptiveHistogramEqualization),
        reason=_BEFORE,
    ),
    LayerCase(
        "RandomCrop", "refused", model=_image_model(lambda: L.RandomCrop(6, 6)), reason=_BEFORE
    ),
    # Keras 3.15 cannot build a model with it ("part of a cycle"): checked on a bare instance.
    LayerCase("Equalization", "refused", reason=_BEFORE),
)

# -- the lead's (looking inside layers), and what is no layer -------------------------------

add(
    LayerCase("Layer", "lead", "lead", reason="a custom layer: looked into (graph.py)"),
    LayerCase("Wrapper", "lead", "lead", reason="base class of wrappers: looked into"),
    LayerCase("InputSpec", "not a layer", reason="describes a layer's inputs"),
)
