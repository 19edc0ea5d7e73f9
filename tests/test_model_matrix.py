"""The model matrix of issue 20: keras-hub models and the keras.io shapes through every analyzer.

Each model of ``tests/model_matrix.py`` (tiny random-weight configurations; the segmentation
models with their per-pixel logits, the neuron explained being the largest logit of the map):

- the gradient family (Gradient, InputTimesGradient, IntegratedGradients with 4 steps,
  SmoothGrad with 3 samples) equals the same quantity from ``tf.GradientTape`` on the model
  within ``DEEP_PASS``; for token-id inputs at the summed embedding vectors
  (``model_matrix.tape_token_reference``), and per token (the norm for Gradient and SmoothGrad,
  the sum for InputTimesGradient and IntegratedGradients; 0 at padded positions), the mask
  and segment inputs not explained (``None``);
- every rule-based analyzer (DeConvNet, Guided BackProp, the LRP rules, DeepTaylor, PatternNet
  and PatternAttribution with patterns fitted on 4 samples) is built and gives a finite,
  non-zero explanation shaped like the input (per token for token ids).

A model whose rule-based analyzers are still refused is an expected failure with
``strict=True`` and the precise reason (the layer, and why it cannot be read): it fails, and
is noticed, as soon as it is explained. keras-hub is an optional test dependency (Python >= 3.11,
Keras >= 3.15, tensorflow-text): without it the keras-hub models are skipped, saying why.

The analyzers run eagerly (the same rule code op by op: tracing each model's graph for 14
analyzers would cost minutes); the tape references are eager too, except where TensorFlow has
no eager CPU gradient (grouped convolutions).
"""

from __future__ import annotations

import contextlib

import keras
import model_matrix as mm
import numpy as np
import pytest
import tensorflow as tf
from conftest import DEEP_PASS, PASS, assert_close
from layer_cases import SmallModel, check_model

import pattern_keras as pk
from pattern_keras import engine
from pattern_keras.layers.keras_hub import KERAS_HUB_RULES

GRADIENT_FAMILY = {
    "Gradient": {},
    "InputTimesGradient": {},
    "IntegratedGradients": {"steps": 4},
    "SmoothGrad": {"samples": 3, "noise_scale": 0.1, "seed": 0},
}
RULE_BASED = [
    pk.DeConvNet,
    pk.GuidedBackprop,
    pk.LRPZ,
    pk.LRPEpsilon,
    pk.LRPAlpha1Beta0,
    pk.LRPAlpha2Beta1,
    pk.LRPZPlus,
    pk.DeepTaylor,
    pk.PatternNet,
    pk.PatternAttribution,
]

_REFUSED = (
    "refused by every rule-based analyzer (the gradient family explains it): graph.py cannot "
    "look into "
)
#: Why each model's rule-based analyzers are refused (``benchmarks/model_matrix_survey.py``
#: lists them). Every other model is explained by every analyzer.
WAITING = {
    "deit": _REFUSED + "DeiTEncoder: beside its output it returns two constant empty tensors "
    "(ops.empty, no hidden states or scores asked for), and a looked-into call's outputs must "
    "all depend on its inputs",
    "swin": _REFUSED + "WindowAttention (shifted windows): its call reads its batch axis as "
    "samples × windows (B // num_windows, with the window mask); traced with the batch unknown "
    "it fails (None // int), and at the probe batch sizes (7, 11), which are no multiples of "
    "the window count, the reshape to (B // num_windows, num_windows, ...) fails",
    "deberta_v3": _REFUSED + "DisentangledSelfAttention: its call fails on symbolic inputs "
    "(ValueError: Invalid dtype: NoneType, in its relative-position attention)",
}

#: What each model's gradient family waits for: nothing (every model's equals the tape).
WAITING_GRADIENT: dict[str, str] = {}

#: PatternNet overflows float32 on BASNet's random weights (a deep refinement network: the
#: patterns amplify the signal layer after layer, NaN at the input); it runs there with
#: ``renormalize=True``, the README's remedy (direction unchanged, scale arbitrary).
RENORMALIZE = {"basnet"}

#: Models whose tape reference is compiled: TensorFlow has no eager CPU gradient of a grouped
#: convolution (their depthwise convolutions are ``Conv2D(groups=channels)``).
COMPILED_TAPE = {"hgnetv2", "mobilenet"}

#: The pooled segmentation variants are for the survey (analyzers without region selection);
#: the per-pixel models are tested here.
MODELS = [name for name in mm.names() if not name.endswith("_pooled")]


def _marks(name: str, waiting: str | None) -> list:
    marks = []
    if mm.needs_keras_hub(name) and mm.keras_hub_missing():
        marks.append(pytest.mark.skip(reason=mm.keras_hub_missing()))
    if waiting:
        marks.append(pytest.mark.xfail(strict=True, reason=waiting))
    return marks


def _cases(waiting_of) -> list:
    return [pytest.param(name, marks=_marks(name, waiting_of(name)), id=name) for name in MODELS]


@contextlib.contextmanager
def eagerly():
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(previous)


_BUILT: dict[str, mm.MatrixModel] = {}


@pytest.fixture(scope="module")
def matrix():
    """One build of each model for the module (built on first use)."""

    def get(name: str) -> mm.MatrixModel:
        if name not in _BUILT:
            _BUILT[name] = mm.build(name)
        return _BUILT[name]

    yield get
    _BUILT.clear()


def _check(result, x, what: str) -> None:
    assert result.shape == x.shape, what
    assert np.all(np.isfinite(result)), what
    assert np.abs(result).max() > 0, what


def _token_scores(result, built: mm.MatrixModel, inputs: list[np.ndarray]) -> np.ndarray:
    """Per-token results: the token ids' explanation is ``(n, T)``, float, finite, non-zero,
    and 0 at padded positions (where the model has a padding mask); the other inputs (padding
    mask, segment ids) are not explained (``None``). Returns the token scores."""
    names = [t.name.split(":")[0] for t in built.model.inputs]
    results = result if isinstance(result, list) else [result]
    ids = names.index("token_ids")
    assert [r is None for r in results] == [k != ids for k in range(len(names))]
    scores = np.asarray(results[ids])
    assert scores.shape == inputs[ids].shape
    assert np.issubdtype(scores.dtype, np.floating), scores.dtype
    assert np.all(np.isfinite(scores))
    if "padding_mask" in names:
        mask = inputs[names.index("padding_mask")]
        assert np.all(scores[mask == 0] == 0)
        assert np.all(np.abs(scores[mask == 1]).max() > 0)
    else:
        assert np.abs(scores).max() > 0
    return scores


#: How the gradient family reduces its maps at the embedding vectors to one score per token.
_TOKEN_REDUCTION = {
    "Gradient": "norm",
    "SmoothGrad": "norm",
    "InputTimesGradient": "sum",
    "IntegratedGradients": "sum",
}


def _check_tokens_against_the_tape(name, built, inputs, x) -> None:
    """Token ids: per-token scores against the tape's maps at the summed embedding vectors,
    reduced (norm or sum over the embedding axis); Gradient's full maps too."""
    with eagerly():
        maps = pk.Gradient(built.model).analyze(x, verbose=0, per_token=False)
        scores = {
            method: getattr(pk, method)(built.model, **params).analyze(x, verbose=0)
            for method, params in GRADIENT_FAMILY.items()
        }
    ids, want = mm.tape_token_reference("Gradient", built.model, inputs)
    maps = maps if isinstance(maps, list) else [maps]
    assert np.abs(want).max() > 0
    assert_close(maps[ids], want, DEEP_PASS, err_msg=f"{name} Gradient maps")
    for method, params in GRADIENT_FAMILY.items():
        got = _token_scores(scores[method], built, inputs)
        _, want = mm.tape_token_reference(method, built.model, inputs, **params)
        if _TOKEN_REDUCTION[method] == "norm":
            want = np.sqrt(np.sum(np.square(want, dtype=np.float64), axis=-1))
            assert_close(got, want, DEEP_PASS, err_msg=f"{name} {method}")
            continue
        # A sum over the embedding axis may cancel (DeBERTaV3: a LayerNormalization right
        # after the lookup is scale-invariant, so x · ∇ = 0 per token up to rounding): its
        # error is bounded by the tolerance times the sum of the terms' magnitudes.
        scale = np.sum(np.abs(want), axis=-1, dtype=np.float64).max()
        np.testing.assert_allclose(
            got,
            np.sum(want, axis=-1, dtype=np.float64),
            rtol=0,
            atol=DEEP_PASS * scale,
            err_msg=f"{name} {method}",
        )


@pytest.mark.filterwarnings("ignore:Even though the .*run_functions_eagerly")
@pytest.mark.parametrize("name", _cases(WAITING_GRADIENT.get))
def test_gradient_family_equals_the_tape(matrix, name):
    built = matrix(name)
    inputs = built.inputs(3, seed=0)
    x = inputs if len(inputs) > 1 else inputs[0]
    if built.family == "text":
        _check_tokens_against_the_tape(name, built, inputs, x)
        return
    with eagerly():
        results = {
            method: getattr(pk, method)(built.model, **params).analyze(x, verbose=0)
            for method, params in GRADIENT_FAMILY.items()
        }
    for method, params in GRADIENT_FAMILY.items():
        want = mm.tape_reference(
            method, built.model, inputs, compiled=name in COMPILED_TAPE, **params
        )
        got = results[method]
        got = got if isinstance(got, list) else [got]
        assert np.abs(want[0]).max() > 0, method
        for g, w in zip(got, want):
            assert_close(g, w, DEEP_PASS, err_msg=f"{name} {method}")


@pytest.mark.filterwarnings("ignore:Even though the .*run_functions_eagerly")
@pytest.mark.parametrize("name", _cases(WAITING.get))
def test_rule_based_analyzers_explain(matrix, name):
    built = matrix(name)
    inputs = built.inputs(2, seed=0)
    x = inputs if len(inputs) > 1 else inputs[0]
    fit = built.inputs(4, seed=1)  # one batch: patterns fitted, at half the cost of two
    with eagerly():
        patterns = None  # fitted once, for PatternNet and PatternAttribution
        for make in RULE_BASED:
            kwargs = {"patterns": patterns} if make.needs_patterns and patterns else {}
            if make is pk.PatternNet and name in RENORMALIZE:
                kwargs["renormalize"] = True
            analyzer = make(built.model, **kwargs)
            if analyzer.needs_patterns and patterns is None:
                analyzer.fit(fit if len(fit) > 1 else fit[0], batch_size=4, verbose=0)
                patterns = analyzer.patterns
            got = analyzer.analyze(x, verbose=0)
            if built.family == "text":
                _token_scores(got, built, inputs)
            else:
                _check(got, inputs[0], f"{name} {make.__name__}")


# --- the keras-hub layer rules (pattern_keras/layers/keras_hub.py) ---------------------------


@pytest.mark.skipif(mm.keras_hub_missing() is not None, reason=str(mm.keras_hub_missing()))
def test_keras_hub_rule_names_exist():
    """Every class named in the keras-hub rule table is still where the table says."""
    import importlib

    for qualified in KERAS_HUB_RULES:
        module, _, name = qualified.rpartition(".")
        assert hasattr(importlib.import_module(module), name), qualified


def _drop_path_and_affine_models():
    """A ReLU network with keras-hub's MiT ``DropPath`` and HGNetV2's learnable affine block,
    and its twin without the drop path and with the affine map written as graph ops."""
    from keras_hub.src.models.hgnetv2.hgnetv2_layers import HGNetV2LearnableAffineBlock
    from keras_hub.src.models.mit.mit_layers import DropPath

    keras.utils.set_random_seed(5)
    L = keras.layers
    inp = keras.Input((6,))
    d1, d2, out = L.Dense(8, name="d1"), L.Dense(8, name="d2"), L.Dense(3, name="out")
    block = HGNetV2LearnableAffineBlock(scale_value=1.5, bias_value=0.25, name="lab")
    h = L.ReLU()(block(d1(inp)))
    model = keras.Model(inp, out(L.ReLU()(DropPath(0.3, name="drop")(d2(h)))))
    twin_in = keras.Input((6,))
    h = L.ReLU()(d1(twin_in) * block.scale + block.bias)
    twin = keras.Model(twin_in, out(L.ReLU()(d2(h))))
    return model, twin


@pytest.mark.skipif(mm.keras_hub_missing() is not None, reason=str(mm.keras_hub_missing()))
@pytest.mark.parametrize(
    "make",
    [pk.Gradient, pk.LRPZ, pk.LRPEpsilon, pk.LRPZPlus, pk.GuidedBackprop, pk.DeepTaylor],
    ids=lambda m: m.__name__,
)
def test_drop_path_and_learnable_affine_block_by_their_rules(make):
    """The drop path is the identity and the affine block ``s·x + b`` at inference: every
    analyzer explains the model as its twin written without them (graph ops for the affine
    map); and LRP-z equals input × gradient (a ReLU network)."""
    model, twin = _drop_path_and_affine_models()
    for op in engine.Program(model).ops:
        assert op.kind != "opaque", op.refusal
    x = np.random.default_rng(3).normal(size=(5, 6)).astype("float32")
    assert_close(make(model).analyze(x, verbose=0), make(twin).analyze(x, verbose=0), PASS)
    if make is pk.LRPZ:
        assert_close(
            pk.LRPZ(model).analyze(x, verbose=0), pk.InputTimesGradient(model).analyze(x), PASS
        )


# --- graph reading: what keras-hub layers do ------------------------------------------------
# Minimal reproductions of the matrix's graph-reading blockers: a reshape by the batch size read
# inside a call is read (graph._check_known_sizes); the others are expected to fail until
# graph.py reads them (strict: they are noticed when it does).

L = keras.layers
ops = keras.ops


def _unreadable(model) -> list[str]:
    return [
        op.refusal
        for op in engine.Program(model).ops
        if op.kind == "opaque" and "could not be looked into" in (op.refusal or "")
    ]


class TokensByBatch(L.Layer):
    """Reshapes to ``(batch, -1, C)`` with the batch size read by ``ops.shape`` (DINOv2's and
    MiT's patch embeddings, Swin's windows, keras.io's ``Patches``)."""

    def call(self, x):
        return ops.reshape(x, (ops.shape(x)[0], -1, 2))


def test_reshape_by_the_batch_size_read_inside_a_call():
    """Traced with the batch unknown, the reshape records ``newshape=(None, -1, 2)``, which the
    replay cannot run: the call is read at the probe batch sizes instead, and the gradient
    equals the tape (it failed with ``Reshape.call`` before; DINOv2, MiT/SegFormer, Swin and
    keras.io's ``Patches`` write this)."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 4, 2))
    model = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling1D()(TokensByBatch()(inp))))
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype("float32")
    want = mm.tape_reference("Gradient", model, [x])[0]
    assert_close(pk.Gradient(model).analyze(x, verbose=0), want, PASS)


class VariableTimesInput(L.Layer):
    """``scale * x + bias`` with the variable on the left (HGNetV2's learnable affine block)."""

    def build(self, shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")

    def call(self, x):
        return self.scale * x + self.bias


class ReturnsInput(L.Layer):
    """Returns its input unchanged at inference (keras-hub's drop-path layers)."""

    def call(self, x, training=None):
        return x * 0.5 if training else x


class PairBlock(L.Layer):
    """Returns ``(output, None)`` (DeiT's encoder block without attention scores)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(4)

    def call(self, x):
        return self.dense(x), None


class PairEncoder(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = PairBlock()

    def call(self, x):
        return self.block(x)[0]


class Windows(L.Layer):
    """Calls a sublayer whose batch axis is samples × windows and which regroups it by sample
    (``B // num_windows``: Swin's WindowAttention on the shifted windows)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = Regroup()

    def call(self, x):  # (n, 4, 4): 4 windows of 4 values per sample
        windows = ops.reshape(x, (-1, 4))
        return ops.reshape(self.inner(windows), (-1, 4, 4))


class Regroup(L.Layer):
    def call(self, x):
        b = ops.shape(x)[0]
        return ops.reshape(ops.reshape(x, (b // 4, 4, 4)) * 2.0, (b, 4))


def _not_read_yet(reason: str):
    return pytest.mark.xfail(strict=True, reason="graph.py cannot look into it yet: " + reason)


@pytest.mark.parametrize(
    "layer, shape",
    [
        pytest.param(VariableTimesInput, (4,), id="variable_times_input"),
        pytest.param(
            ReturnsInput,
            (4,),
            marks=_not_read_yet("a call returning its input is no graph of operations"),
            id="returns_its_input",
        ),
        pytest.param(
            PairEncoder,
            (4,),
            id="sublayer_returns_none",
        ),
        pytest.param(
            Windows,
            (4, 4),
            marks=_not_read_yet("a batch axis of samples × windows, regrouped by B // 4"),
            id="windows",
        ),
    ],
)
def test_layers_keras_hub_writes_are_looked_into(layer, shape):
    inp = keras.Input(shape)
    h = layer()(L.Dense(4)(inp))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(h) if len(shape) > 1 else h))
    assert _unreadable(model) == []


# --- depthwise convolutions written as grouped ones (keras-hub's MobileNet and HGNetV2) -------


def _grouped_and_depthwise_twins():
    """``Conv2D(8, 3, groups=4)`` on 4 channels, and the same map as a ``DepthwiseConv2D``
    with depth multiplier 2 (kernel ``(3, 3, 1, 8)`` read as ``(3, 3, 4, 2)``)."""
    keras.utils.set_random_seed(9)
    inp = keras.Input((6, 6, 4))
    grouped = L.Conv2D(8, 3, strides=2, padding="same", groups=4, name="conv")
    head = L.Dense(3, name="head")
    model = keras.Model(inp, head(L.Flatten()(L.ReLU()(grouped(inp)))))
    depthwise = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="conv")
    twin_in = keras.Input((6, 6, 4))
    twin = keras.Model(twin_in, head(L.Flatten()(L.ReLU()(depthwise(twin_in)))))
    depthwise.set_weights([grouped.kernel.numpy().reshape(3, 3, 4, 2), grouped.bias.numpy()])
    return model, twin


@pytest.mark.filterwarnings("ignore:Even though the .*run_functions_eagerly")
def test_depthwise_convolution_written_with_groups():
    """Eagerly (TensorFlow has no eager CPU gradient of a grouped convolution): the gradient
    equals the compiled tape; every analyzer, patterns included, explains the model as its
    ``DepthwiseConv2D`` twin."""
    model, twin = _grouped_and_depthwise_twins()
    x = np.random.default_rng(4).normal(size=(4, 6, 6, 4)).astype("float32")
    want = mm.tape_reference("Gradient", model, [x], compiled=True)[0]
    with eagerly():
        assert_close(pk.Gradient(model).analyze(x, verbose=0), want, PASS)
        for make in (pk.LRPZ, pk.GuidedBackprop, pk.DeepTaylor):
            assert_close(make(model).analyze(x, verbose=0), make(twin).analyze(x, verbose=0), PASS)
        ours = pk.PatternAttribution(model).fit(x, verbose=0)
        flat = pk.PatternAttribution(twin).fit(x, verbose=0)
        assert_close(
            ours.patterns["conv"].reshape(flat.patterns["conv"].shape), flat.patterns["conv"], PASS
        )
        assert_close(ours.analyze(x, verbose=0), flat.analyze(x, verbose=0), PASS)


# --- gaps the matrix found, fixed -------------------------------------------------------------


def _unstack_and_patches_model():
    """``keras.ops.unstack`` (Swin's query/key/value split) and
    ``keras.ops.image.extract_patches`` (keras.io's ViT ``Patches``): both data movement."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((4, 4, 2))
    patches = ops.image.extract_patches(L.Dense(3)(inp), 2)  # (2, 2, 12)
    tokens = ops.reshape(patches, (-1, 4, 12))
    first, second = ops.unstack(ops.reshape(L.Dense(12)(tokens), (-1, 4, 2, 6)), axis=2)
    merged = ops.concatenate([first, L.Dense(6)(second)], axis=-1)
    return keras.Model(inp, L.Dense(3)(L.Flatten()(merged)))


def test_unstack_and_extract_patches_every_analyzer():
    """Moves with every analyzer's rule: checked as the coverage test checks a layer (the
    gradient family equals the tape, LRP-z ``x ⊙ ∇``, DeConvNet, Guided BackProp and the
    pattern methods with kernel patterns ``y · ∇``). Refused before (no rule)."""
    model = _unstack_and_patches_model()
    kinds = {type(op.layer).__name__: op.kind for op in engine.Program(model).ops}
    assert kinds["Unstack"] == kinds["ExtractPatches"] == "move"
    check_model(SmallModel(_unstack_and_patches_model), compiled=())


def _mask_argument_model():
    """Token ids and a padding mask given to pooling as its ``mask`` argument (the matrix's
    GPT-2 head)."""
    keras.utils.set_random_seed(3)
    ids = keras.Input((5,), dtype="int32", name="token_ids")
    mask = keras.Input((5,), dtype="int32", name="padding_mask")
    h = L.Dense(4, activation="tanh")(L.Embedding(10, 4)(ids))
    pooled = L.GlobalAveragePooling1D()(h, mask=mask)
    return keras.Model([ids, mask], L.Dense(2)(pooled))


def test_an_integer_mask_argument_is_not_explained():
    """An integer input passed as a layer's ``mask`` argument is a mask, not a number: it is
    not explained (``None``), and SmoothGrad puts no noise on it, so padded tokens get 0
    (before: a float cast explained point, noise on the mask, padded tokens non-zero)."""
    model = _mask_argument_model()
    ids = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]], "int32")
    mask = (ids > 0).astype("int32")
    assert [p.kind for p in engine.Program(model).points] == ["embedding", "none"]
    for analyzer in (pk.Gradient(model), pk.SmoothGrad(model, samples=4, noise_scale=0.2)):
        scores, mask_result = analyzer.analyze([ids, mask], verbose=0)
        assert mask_result is None
        assert np.all(scores[mask == 0] == 0) and np.all(scores[mask == 1] > 0)
