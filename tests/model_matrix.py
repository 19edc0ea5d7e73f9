"""The model matrix of issue 20: the models people build with Keras 3, at tiny sizes.

A support module (not a test file) for ``tests/test_model_matrix.py`` and
``benchmarks/model_matrix_survey.py``. Every builder returns a :class:`MatrixModel`: a model
with one output suitable for explanation (a classification head on a backbone; for the
segmentation models the per-pixel logits, and a ``*_pooled`` variant that averages them over
the image), random weights (seeded), and a generator of small input batches.

The keras-hub models are built from tiny configurations like those of keras-hub's own tests
(no presets, no downloads). keras-hub is optional (it needs Python >= 3.11, Keras >= 3.15 and
tensorflow-text): this module imports without it, and :func:`build` raises
:class:`Unavailable` with the reason for the models that need it.

Text backbones take token ids of any length; they are wrapped at a fixed length ``TOKENS``
(``keras.Input((TOKENS,), dtype="int32")`` per input), since the graph reading needs fixed
lengths where a layer computes constants from the sequence length (GPT-2's causal mask).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

L = keras.layers
ops = keras.ops

__all__ = [
    "IMAGE",
    "TOKENS",
    "VOCABULARY",
    "CLASSES",
    "MatrixModel",
    "Unavailable",
    "keras_hub_missing",
    "names",
    "build",
    "tape_reference",
    "tape_token_reference",
]

#: Image side (pixels), sequence length (tokens), vocabulary size and classes of every model.
IMAGE = 32
TOKENS = 8
VOCABULARY = 24
CLASSES = 3


class Unavailable(Exception):
    """The model cannot be built here; ``str(err)`` says why (keras-hub missing)."""


@dataclasses.dataclass
class MatrixModel:
    """One model of the matrix.

    Attributes
    ----------
    name : str
        The matrix's name for it (``"vit"``, ``"deeplabv3_pooled"``, ...).
    model : keras.Model
        One output: ``(n, CLASSES)`` logits, or ``(n, H, W, classes)`` per-pixel logits for a
        segmentation model (not a ``*_pooled`` variant).
    batch : callable
        ``batch(n, seed)``: ``n`` samples, an array or (several inputs) a dict keyed by the
        model's input names: images in [0, 1), token ids with padding (id 0, masked) at the end
        of every other sample, log-mel-like features.
    family : str
        ``"image"``, ``"segmentation"``, ``"text"`` or ``"audio"``.
    source : str
        ``"keras-hub"`` or ``"keras.io"``: where the architecture comes from.
    """

    name: str
    model: Any
    batch: Callable[[int, int], Any]
    family: str
    source: str

    def inputs(self, n: int, seed: int = 0) -> list[np.ndarray]:
        """``batch(n, seed)`` as a list in ``model.inputs`` order (what ``analyze`` takes for
        a model with several inputs)."""
        data = self.batch(n, seed)
        if not isinstance(data, dict):
            return [data]
        return [data[_input_name(t)] for t in self.model.inputs]


def _input_name(tensor: Any) -> str:
    return tensor.name.split(":")[0]


def keras_hub_missing() -> str | None:
    """Why keras-hub cannot be used here, or ``None`` if it can."""
    if sys.version_info < (3, 11):
        return "keras-hub needs Python >= 3.11"
    if tuple(int(p) for p in keras.__version__.split(".")[:2]) < (3, 15):
        return f"keras-hub needs Keras >= 3.15 (this is {keras.__version__})"
    for module in ("keras_hub", "tensorflow_text"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'pattern-keras[test]')"
    return None


def _hub():
    reason = keras_hub_missing()
    if reason is not None:
        raise Unavailable(reason)
    import keras_hub

    return keras_hub


# --- inputs -------------------------------------------------------------------------------


def _images(size: int = IMAGE) -> Callable[[int, int], np.ndarray]:
    def batch(n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype("float32")

    return batch


def _tokens(names: tuple[str, ...]) -> Callable[[int, int], dict[str, np.ndarray]]:
    """Token ids in [1, VOCABULARY) with the last three positions of every other sample
    padded (id 0, mask 0); segment ids 0 then 1."""

    def batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        ids = rng.integers(1, VOCABULARY, size=(n, TOKENS)).astype("int32")
        mask = np.ones((n, TOKENS), "int32")
        mask[1::2, -3:] = 0
        data = {"token_ids": ids * mask, "padding_mask": mask}
        data["segment_ids"] = np.broadcast_to(
            (np.arange(TOKENS) >= TOKENS // 2).astype("int32"), (n, TOKENS)
        ).copy()
        return {k: data[k] for k in names}

    return batch


def _fixed_length(model: Any, names: tuple[str, ...]) -> Any:
    """``model`` called on ``TOKENS``-long int32 inputs (see the module docstring)."""
    inputs = {k: keras.Input((TOKENS,), dtype="int32", name=k) for k in names}
    return keras.Model(inputs, model(inputs), name=f"{model.name}_fixed")


def _fixed_image(model: Any, size: int = IMAGE) -> Any:
    """``model`` called on ``size × size`` images (keras-hub CNN backbones take any size)."""
    inp = keras.Input((size, size, 3), name="images")
    return keras.Model(inp, model(inp), name=f"{model.name}_fixed")


def _pooled(model: Any) -> Any:
    """Per-pixel logits averaged over the image: one logit per class."""
    inp = keras.Input(model.inputs[0].shape[1:], name="images")
    out = L.GlobalAveragePooling2D(name="pool_logits")(model(inp))
    return keras.Model(inp, out, name=f"{model.name}_pooled")


# --- the registry ---------------------------------------------------------------------------

_BUILDERS: dict[str, tuple[Callable[[], MatrixModel], bool]] = {}


def _builder(name: str, hub: bool = True):
    def register(fn: Callable[[], MatrixModel]) -> Callable[[], MatrixModel]:
        _BUILDERS[name] = (fn, hub)
        return fn

    return register


def names(source: str | None = None) -> list[str]:
    """The models of the matrix, in table order (``source``: only ``"keras-hub"`` or
    ``"keras.io"`` ones)."""
    return [
        n for n, (_, hub) in _BUILDERS.items() if source is None or (source == "keras-hub") == hub
    ]


def needs_keras_hub(name: str) -> bool:
    return _BUILDERS[name][1]


def build(name: str, seed: int = 0) -> MatrixModel:
    """Build one model of the matrix with seeded random weights.

    Raises
    ------
    Unavailable
        Where the model needs keras-hub and keras-hub cannot be used (the reason).
    KeyError
        For a name that is not in :func:`names`.
    """
    fn, hub = _BUILDERS[name]
    if hub:
        _hub()
    keras.utils.set_random_seed(seed)
    return fn()


def _image_model(name, model, source="keras-hub", family="image") -> MatrixModel:
    return MatrixModel(name, model, _images(), family, source)


# --- keras-hub: vision transformers -------------------------------------------------------


@_builder("vit")
def _vit() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.ViTBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        patch_size=(8, 8),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )
    return _image_model("vit", hub.models.ViTImageClassifier(backbone, CLASSES))


@_builder("deit")
def _deit() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.DeiTBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )
    return _image_model("deit", hub.models.DeiTImageClassifier(backbone, CLASSES))


@_builder("swin")
def _swin() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.SwinTransformerBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        embed_dim=16,
        depths=(2,),  # a window block and a shifted-window block
        num_heads=(2,),
        window_size=4,
        drop_path=0.0,
    )
    return _image_model("swin", hub.models.SwinTransformerImageClassifier(backbone, CLASSES))


def _mit(hidden_dims=(8, 16)):
    return _hub().models.MiTBackbone(
        layerwise_depths=[1, 1],
        num_layers=2,
        layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2],
        image_shape=(IMAGE, IMAGE, 3),
        hidden_dims=list(hidden_dims),
    )


@_builder("mit")
def _mit_classifier() -> MatrixModel:
    return _image_model("mit", _hub().models.MiTImageClassifier(_mit(), CLASSES))


def _segformer_logits():
    hub = _hub()
    backbone = hub.models.SegFormerBackbone(image_encoder=_mit(), projection_filters=16)
    return hub.models.SegFormerImageSegmenter(backbone, CLASSES)


@_builder("segformer")
def _segformer() -> MatrixModel:
    return _image_model("segformer", _segformer_logits(), family="segmentation")


@_builder("segformer_pooled")
def _segformer_pooled() -> MatrixModel:
    return _image_model("segformer_pooled", _pooled(_segformer_logits()))


@_builder("dinov2")
def _dinov2() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.DINOV2Backbone(
        patch_size=8,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(IMAGE, IMAGE, 3),
        position_embedding_shape=(IMAGE, IMAGE, 3),
    )
    inp = keras.Input((IMAGE, IMAGE, 3), name="images")
    tokens = backbone({"images": inp})
    out = L.Dense(CLASSES, name="logits")(tokens[:, 0])  # the class token
    return _image_model("dinov2", keras.Model(inp, out, name="dinov2_classifier"))


# --- keras-hub: text encoders ---------------------------------------------------------------

_TEXT_SIZES = dict(
    vocabulary_size=VOCABULARY,
    num_layers=1,
    num_heads=2,
    hidden_dim=8,
    intermediate_dim=16,
    max_sequence_length=TOKENS,
)
_WITH_SEGMENTS = ("token_ids", "segment_ids", "padding_mask")
_WITHOUT_SEGMENTS = ("token_ids", "padding_mask")


def _text_model(name, classifier, inputs) -> MatrixModel:
    model = _fixed_length(classifier, inputs)
    return MatrixModel(name, model, _tokens(inputs), "text", "keras-hub")


@_builder("bert")
def _bert() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.BertBackbone(**_TEXT_SIZES)
    classifier = hub.models.BertTextClassifier(backbone, CLASSES, dropout=0.0)
    return _text_model("bert", classifier, _WITH_SEGMENTS)


@_builder("distilbert")
def _distilbert() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.DistilBertBackbone(**_TEXT_SIZES)
    classifier = hub.models.DistilBertTextClassifier(backbone, CLASSES, dropout=0.0)
    return _text_model("distilbert", classifier, _WITHOUT_SEGMENTS)


@_builder("roberta")
def _roberta() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.RobertaBackbone(**_TEXT_SIZES)
    classifier = hub.models.RobertaTextClassifier(backbone, CLASSES)
    return _text_model("roberta", classifier, _WITHOUT_SEGMENTS)


@_builder("albert")
def _albert() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.AlbertBackbone(embedding_dim=8, **_TEXT_SIZES)
    classifier = hub.models.AlbertTextClassifier(backbone, CLASSES, dropout=0.0)
    return _text_model("albert", classifier, _WITH_SEGMENTS)


@_builder("deberta_v3")
def _deberta_v3() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.DebertaV3Backbone(bucket_size=4, **_TEXT_SIZES)
    classifier = hub.models.DebertaV3TextClassifier(backbone, CLASSES)
    return _text_model("deberta_v3", classifier, _WITHOUT_SEGMENTS)


@_builder("gpt2")
def _gpt2() -> MatrixModel:
    """GPT-2 with a pooled head: the padding-masked mean of its sequence output."""
    hub = _hub()
    backbone = hub.models.GPT2Backbone(**_TEXT_SIZES)
    inputs = {k: keras.Input((TOKENS,), dtype="int32", name=k) for k in _WITHOUT_SEGMENTS}
    sequence = backbone(inputs)
    pooled = L.GlobalAveragePooling1D(name="pool")(sequence, mask=inputs["padding_mask"])
    model = keras.Model(inputs, L.Dense(CLASSES, name="logits")(pooled), name="gpt2_pooled")
    return MatrixModel("gpt2", model, _tokens(_WITHOUT_SEGMENTS), "text", "keras-hub")


@_builder("whisper_encoder")
def _whisper_encoder() -> MatrixModel:
    """Whisper's audio encoder (two convolutions, sinusoidal positions, pre-norm blocks) on
    ``2·TOKENS`` frames of 8 mel bins, with a pooled head."""
    hub = _hub()
    frames, mels = 2 * TOKENS, 8
    backbone = hub.models.WhisperBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        num_mels=mels,
        max_encoder_sequence_length=frames,
        max_decoder_sequence_length=TOKENS,
    )
    encoder = keras.Model(
        backbone.input["encoder_features"],
        backbone.output["encoder_sequence_output"],
        name="whisper_encoder",
    )
    inp = keras.Input((frames, mels), name="encoder_features")
    pooled = L.GlobalAveragePooling1D(name="pool")(encoder(inp))
    model = keras.Model(inp, L.Dense(CLASSES, name="logits")(pooled), name="whisper_pooled")

    def batch(n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).normal(size=(n, frames, mels)).astype("float32")

    return MatrixModel("whisper_encoder", model, batch, "audio", "keras-hub")


# --- keras-hub: convolutional networks and segmenters --------------------------------------


def _resnet(filters, blocks, strides, pre_activation=False, block="basic_block", stem=64):
    # keras-hub requires 64 filters in the first stack; with basic blocks (an identity
    # shortcut) the stem has 64 filters too.
    return _hub().models.ResNetBackbone(
        input_conv_filters=[stem],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=list(filters),
        stackwise_num_blocks=list(blocks),
        stackwise_num_strides=list(strides),
        block_type=block,
        use_pre_activation=pre_activation,
    )


def _deeplab_logits():
    hub = _hub()
    backbone = hub.models.DeepLabV3Backbone(
        image_encoder=_resnet((64, 16, 16), (1, 1, 1), (1, 2, 2)),
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P4",
        dilation_rates=[2, 4],
        upsampling_size=4,
        projection_filters=8,
        image_shape=(IMAGE, IMAGE, 3),
    )
    return hub.models.DeepLabV3ImageSegmenter(backbone, CLASSES)


@_builder("deeplabv3")
def _deeplabv3() -> MatrixModel:
    return _image_model("deeplabv3", _deeplab_logits(), family="segmentation")


@_builder("deeplabv3_pooled")
def _deeplabv3_pooled() -> MatrixModel:
    return _image_model("deeplabv3_pooled", _pooled(_deeplab_logits()))


def _basnet_logits():
    """BASNet's refined map before its sigmoid (one class: salient or not)."""
    hub = _hub()
    backbone = hub.models.BASNetBackbone(
        # Bottleneck blocks (a projection shortcut) let the stem and BASNet's own first
        # convolution have 8 filters: its bridge and decoder have 8·8 instead of 512.
        image_encoder=_resnet(
            (64, 8, 8, 8), (1, 1, 1, 1), (1, 2, 2, 2), block="bottleneck_block", stem=8
        ),
        num_classes=1,
        image_shape=(IMAGE, IMAGE, 3),
        projection_filters=8,
    )
    logits = backbone.get_layer("refine_out").input
    return keras.Model(backbone.inputs, logits, name="basnet_refined")


@_builder("basnet")
def _basnet() -> MatrixModel:
    return _image_model("basnet", _basnet_logits(), family="segmentation")


@_builder("basnet_pooled")
def _basnet_pooled() -> MatrixModel:
    return _image_model("basnet_pooled", _pooled(_basnet_logits()))


@_builder("cspnet")
def _cspnet() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.CSPNetBackbone(
        stem_filters=8,
        stem_kernel_size=3,
        stem_strides=1,
        stackwise_depth=[1, 2],
        stackwise_strides=2,
        stackwise_num_filters=[8, 16],
        block_type="dark_block",
        stage_type="csp",
        bottle_ratio=(0.5, 1.0),
        block_ratio=(1.0, 0.5),
        expand_ratio=(2.0, 1.0),
        down_growth=True,
        stem_padding="same",
    )
    classifier = hub.models.CSPNetImageClassifier(backbone, CLASSES)
    return _image_model("cspnet", _fixed_image(classifier))


@_builder("hgnetv2")
def _hgnetv2() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.HGNetV2Backbone(
        depths=[1, 1],
        embedding_size=16,
        hidden_sizes=[32, 64],
        stem_channels=[3, 8, 16],
        hidden_act="relu",
        use_learnable_affine_block=True,
        stackwise_stage_filters=[[16, 8, 32, 1, 1, 3], [32, 16, 64, 1, 1, 3]],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, True],
        image_shape=(IMAGE, IMAGE, 3),
    )
    classifier = hub.models.HGNetV2ImageClassifier(backbone, None, CLASSES, head_filters=16)
    return _image_model("hgnetv2", classifier)


@_builder("resnet_v2")
def _resnet_v2() -> MatrixModel:
    backbone = _resnet((64, 16), (1, 1), (1, 2), pre_activation=True)
    classifier = _hub().models.ResNetImageClassifier(backbone, CLASSES)
    return _image_model("resnet_v2", _fixed_image(classifier))


@_builder("efficientnet_fused")
def _efficientnet_fused() -> MatrixModel:
    """Two fused MBConv stages (the second with squeeze-and-excitation), then an MBConv one."""
    hub = _hub()
    backbone = hub.models.EfficientNetBackbone(
        stackwise_width_coefficients=[1.0] * 3,
        stackwise_depth_coefficients=[1.0] * 3,
        stackwise_kernel_sizes=[3, 3, 3],
        stackwise_num_repeats=[1, 2, 1],
        stackwise_input_filters=[8, 8, 16],
        stackwise_output_filters=[8, 16, 16],
        stackwise_expansion_ratios=[1, 4, 4],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.25, 0.25],
        stackwise_strides=[1, 2, 2],
        stackwise_block_types=["fused", "fused", "unfused"],
        stackwise_force_input_filters=[0, 0, 0],
        stackwise_nores_option=[False, False, False],
        num_features=32,
        dropout=0.0,
    )
    classifier = hub.models.EfficientNetImageClassifier(backbone, CLASSES)
    return _image_model("efficientnet_fused", _fixed_image(classifier))


@_builder("mobilenet")
def _mobilenet() -> MatrixModel:
    hub = _hub()
    backbone = hub.models.MobileNetBackbone(
        stackwise_expansion=[[16, 24], [32, 32]],
        stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[8, 8], [16, 16]],
        stackwise_kernel_size=[[3, 3], [5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1]],
        stackwise_se_ratio=[[None, None], [0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish"], ["hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2]],
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=32,
        squeeze_and_excite=0.5,
        image_shape=(IMAGE, IMAGE, 3),
        input_num_filters=8,
    )
    classifier = hub.models.MobileNetImageClassifier(backbone, CLASSES, num_features=32)
    return _image_model("mobilenet", classifier)


# --- the keras.io shapes --------------------------------------------------------------------


@_builder("keras_io_text_cnn", hub=False)
def _text_cnn() -> MatrixModel:
    """keras.io's "Text classification from scratch": embedding, two strided convolutions,
    global max pooling, a hidden Dense layer (here at 8 tokens: kernel 3, stride 1)."""
    inp = keras.Input((TOKENS,), dtype="int32", name="token_ids")
    x = L.Embedding(VOCABULARY, 8, name="embedding")(inp)
    x = L.Dropout(0.5)(x)
    x = L.Conv1D(8, 3, padding="valid", activation="relu", name="conv_1")(x)
    x = L.Conv1D(8, 3, padding="valid", activation="relu", name="conv_2")(x)
    x = L.GlobalMaxPooling1D(name="pool")(x)
    x = L.Dense(8, activation="relu", name="hidden")(x)
    x = L.Dropout(0.5)(x)
    model = keras.Model(inp, L.Dense(CLASSES, name="logits")(x), name="text_cnn")

    def batch(n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, VOCABULARY, (n, TOKENS)).astype("int32")

    return MatrixModel("keras_io_text_cnn", model, batch, "text", "keras.io")


class Patches(L.Layer):
    """Non-overlapping square patches, flattened: ``(n, H, W, C) -> (n, P, s·s·C)``
    (the keras.io ViT example's layer)."""

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, images):
        patches = ops.image.extract_patches(images, size=self.patch_size)
        n, rows, cols, depth = ops.shape(patches)
        return ops.reshape(patches, (n, rows * cols, depth))


class PatchEncoder(L.Layer):
    """A linear projection of each patch plus a learned embedding of its position (the
    keras.io ViT example's layer: the positions are ``ops.arange`` inside ``call``)."""

    def __init__(self, num_patches: int, projection_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.projection = L.Dense(projection_dim, name="projection")
        self.position_embedding = L.Embedding(num_patches, projection_dim, name="position")

    def call(self, patch):
        positions = ops.expand_dims(ops.arange(0, self.num_patches, 1), axis=0)
        return self.projection(patch) + self.position_embedding(positions)


@_builder("keras_io_vit", hub=False)
def _keras_io_vit() -> MatrixModel:
    """keras.io's "Image classification with Vision Transformer", one block."""
    patch, dim, heads = 8, 16, 2
    num_patches = (IMAGE // patch) ** 2
    inp = keras.Input((IMAGE, IMAGE, 3), name="images")
    encoded = PatchEncoder(num_patches, dim, name="patch_encoder")(Patches(patch)(inp))
    for i in range(1):
        x1 = L.LayerNormalization(epsilon=1e-6, name=f"ln_{i}_a")(encoded)
        attention = L.MultiHeadAttention(heads, dim, dropout=0.1, name=f"mha_{i}")(x1, x1)
        x2 = L.Add()([attention, encoded])
        x3 = L.LayerNormalization(epsilon=1e-6, name=f"ln_{i}_b")(x2)
        x3 = L.Dense(2 * dim, activation=keras.activations.gelu, name=f"mlp_{i}_a")(x3)
        x3 = L.Dropout(0.1)(x3)
        x3 = L.Dense(dim, activation=keras.activations.gelu, name=f"mlp_{i}_b")(x3)
        x3 = L.Dropout(0.1)(x3)
        encoded = L.Add()([x3, x2])
    x = L.LayerNormalization(epsilon=1e-6, name="ln_final")(encoded)
    x = L.Flatten()(x)
    x = L.Dropout(0.5)(x)
    x = L.Dense(16, activation=keras.activations.gelu, name="head_hidden")(x)
    model = keras.Model(inp, L.Dense(CLASSES, name="logits")(x), name="keras_io_vit")
    return _image_model("keras_io_vit", model, source="keras.io")


def _unet_logits():
    """keras.io's "Image segmentation with a U-Net-like architecture" (Oxford pets), two
    levels: separable convolutions with residual projections down, transposed convolutions
    and ``UpSampling2D`` up, per-pixel logits."""
    inp = keras.Input((IMAGE, IMAGE, 3), name="images")
    x = L.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    previous = x
    for filters in (16, 32):
        x = L.Activation("relu")(x)
        x = L.SeparableConv2D(filters, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
        x = L.SeparableConv2D(filters, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = L.Conv2D(filters, 1, strides=2, padding="same")(previous)
        x = L.add([x, residual])
        previous = x
    for filters in (32, 16, 8):
        x = L.Activation("relu")(x)
        x = L.Conv2DTranspose(filters, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.Activation("relu")(x)
        x = L.Conv2DTranspose(filters, 3, padding="same")(x)
        x = L.BatchNormalization()(x)
        x = L.UpSampling2D(2)(x)
        residual = L.UpSampling2D(2)(previous)
        residual = L.Conv2D(filters, 1, padding="same")(residual)
        x = L.add([x, residual])
        previous = x
    out = L.Conv2D(CLASSES, 3, padding="same", name="logits")(x)
    return keras.Model(inp, out, name="keras_io_unet")


@_builder("keras_io_unet", hub=False)
def _unet() -> MatrixModel:
    return _image_model("keras_io_unet", _unet_logits(), "keras.io", "segmentation")


@_builder("keras_io_unet_pooled", hub=False)
def _unet_pooled() -> MatrixModel:
    return _image_model("keras_io_unet_pooled", _pooled(_unet_logits()), "keras.io")


# --- tape references for the gradient family ------------------------------------------------


def _call(model: Any, xs: list[Any]) -> Any:
    if isinstance(model.input, dict):
        return model({_input_name(t): x for t, x in zip(model.inputs, xs)}, training=False)
    return model(xs if len(xs) > 1 else xs[0], training=False)


def selected_neurons(model: Any, inputs: list[np.ndarray]) -> np.ndarray:
    """The flat index of each sample's largest output (``neuron_selection_mode``
    ``"max_activation"``)."""
    y = np.asarray(_call(model, inputs))
    return y.reshape(len(y), -1).argmax(axis=1)


_COMPILED_GRADIENTS: dict[int, tuple[Any, Any]] = {}


def tape_gradients(
    model: Any, points: list[np.ndarray], index: np.ndarray, compiled: bool = False
) -> list[np.ndarray]:
    """``∂y[index]/∂x`` at ``points`` (one array per input, batch axis first; ``index``: the
    flat output index of each row) by ``tf.GradientTape`` on ``model`` itself, in a
    ``tf.function`` (one per model, traced once per input shape) if ``compiled``: TensorFlow
    has no eager CPU gradient of a grouped convolution."""
    import tensorflow as tf

    def gradients(xs, index):
        with tf.GradientTape() as tape:
            for x in xs:
                tape.watch(x)
            y = _call(model, xs)
            y = tf.reshape(y, (tf.shape(y)[0], -1))
            score = tf.reduce_sum(tf.gather(y, index, axis=1, batch_dims=1))
        return tape.gradient(score, xs)

    if compiled:
        if _COMPILED_GRADIENTS.get(id(model), (None,))[0] is not model:
            _COMPILED_GRADIENTS[id(model)] = (model, tf.function(gradients, autograph=False))
        gradients = _COMPILED_GRADIENTS[id(model)][1]
    grads = gradients([tf.constant(p) for p in points], tf.constant(index))
    return [g.numpy() for g in grads]


def tape_reference(
    method: str,
    model: Any,
    inputs: list[np.ndarray],
    *,
    steps: int = 4,
    samples: int = 3,
    noise_scale: float = 0.1,
    seed: int = 0,
    compiled: bool = False,
) -> list[np.ndarray]:
    """What ``Gradient``, ``InputTimesGradient``, ``IntegratedGradients(steps=steps)`` (midpoint
    rule, baseline 0) or ``SmoothGrad(samples=..., noise_scale=..., seed=...)`` must return for
    float inputs, from the tape. SmoothGrad's noise is drawn as the analyzer documents it
    (σ = noise_scale·(max − min) per sample, one stateless normal stream per copy and input),
    so both evaluate the gradient at the same points. ``compiled``: see
    :func:`tape_gradients`."""
    import tensorflow as tf

    index = selected_neurons(model, inputs)
    if method in ("Gradient", "InputTimesGradient"):
        g = tape_gradients(model, inputs, index, compiled)
        return g if method == "Gradient" else [x * gi for x, gi in zip(inputs, g)]
    total = [np.zeros_like(x, dtype=np.float64) for x in inputs]
    count = steps if method == "IntegratedGradients" else samples
    for k in range(count):
        if method == "IntegratedGradients":
            points = [x * np.float32((k + 0.5) / steps) for x in inputs]
        else:
            points = []
            for j, x in enumerate(inputs):
                axes = tuple(range(1, x.ndim))
                sigma = noise_scale * (
                    x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)
                )
                noise = tf.random.stateless_normal(
                    x.shape, seed=[seed, k * len(inputs) + j], dtype=x.dtype
                ).numpy()
                points.append(x + sigma * noise)
        for t, g in zip(total, tape_gradients(model, points, index, compiled)):
            t += g
    if method == "IntegratedGradients":
        return [(x * t / steps).astype(x.dtype) for x, t in zip(inputs, total)]
    return [(t / samples).astype(x.dtype) for x, t in zip(inputs, total)]


# --- tape references at the embedding vectors (token-id inputs) ----------------------------


_PROGRAMS: dict[int, tuple[Any, Any]] = {}


def tape_token_reference(
    method: str,
    model: Any,
    inputs: list[np.ndarray],
    *,
    steps: int = 4,
    samples: int = 3,
    noise_scale: float = 0.1,
    seed: int = 0,
) -> tuple[int, np.ndarray]:
    """What ``method`` of the gradient family must return, ``(n, T, d)``, at the summed
    embedding vectors of a model with token ids (``analyze(..., per_token=False)``), and the
    index of the ids input.

    The gradients come from ``tf.GradientTape`` on ``model`` itself: the token embedding
    layer's output is replaced, for the duration, by ``lookup(ids) + δ`` with ``δ`` watched,
    and ``∂y/∂δ`` is the gradient at the summed vectors (the position and segment embeddings
    are *added* to the token's, so they share its gradient). ``δ`` moves the summed vectors
    to the points each method evaluates: ``-(1 - α)·tokens`` for IntegratedGradients (its
    baseline replaces the token embeddings by zero vectors), the noise for SmoothGrad. Only
    where the vectors are (the lookup layer and the summed vectors ``s``, which SmoothGrad's σ
    and InputTimesGradient read) comes from ``pattern_keras``: the program's explained point
    and its forward replay. Every other input of the model is held as it is.
    """
    import tensorflow as tf

    from pattern_keras import engine

    if _PROGRAMS.get(id(model), (None,))[0] is not model:
        _PROGRAMS[id(model)] = (model, engine.Program(model))
    program = _PROGRAMS[id(model)][1]
    (point,) = [p for p in program.points if p.kind == "embedding"]
    explained = [p for p in program.points if p.slot is not None]
    summed = engine.forward(program, [tf.constant(x) for x in inputs])[point.slot].numpy()
    layer = point.lookup.layer
    index = selected_neurons(model, inputs)
    tokens: list[Any] = []

    def gradient_at(delta: np.ndarray) -> np.ndarray:
        original = layer.call
        delta_t = tf.constant(delta)

        def shifted(*args, **kwargs):
            out = original(*args, **kwargs)
            tokens.append(out)
            return out + tf.cast(delta_t, out.dtype)

        layer.call = shifted
        try:
            with tf.GradientTape() as tape:
                tape.watch(delta_t)
                y = _call(model, inputs)
                y = tf.reshape(y, (tf.shape(y)[0], -1))
                score = tf.reduce_sum(tf.gather(y, index, axis=1, batch_dims=1))
            return tape.gradient(score, delta_t).numpy()
        finally:
            del layer.call  # the class's own call again

    zero = np.zeros_like(summed)
    if method in ("Gradient", "InputTimesGradient"):
        g = gradient_at(zero)
        return point.index, g if method == "Gradient" else summed * g
    if method == "IntegratedGradients":
        gradient_at(zero)
        token_vectors = tokens[-1].numpy()
        total = sum(gradient_at(-(1 - (k + 0.5) / steps) * token_vectors) for k in range(steps))
        return point.index, token_vectors * total / steps
    j = explained.index(point)  # SmoothGrad's noise stream of this explained point
    axes = tuple(range(1, summed.ndim))
    sigma = noise_scale * (
        summed.max(axis=axes, keepdims=True) - summed.min(axis=axes, keepdims=True)
    )
    total = 0.0
    for k in range(samples):
        noise = tf.random.stateless_normal(
            summed.shape, seed=[seed, k * len(explained) + j], dtype=summed.dtype
        ).numpy()
        total = total + gradient_at(sigma * noise)
    return point.index, total / samples
