"""``keras.ops`` written in a functional model (issue 20, item 3): each op is a graph node with a
rule for every analyzer, checked as the coverage test checks a layer (``layer_cases.check_model``:
the gradient family equals the tape, LRP-z equals ``x ⊙ ∇``, DeConvNet, Guided BackProp and the
pattern methods with patterns set to the kernels ``y · ∇``), eagerly and compiled.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import EVERY_ANALYZER, PASS, assert_close
from keras import layers as L
from keras import ops
from layer_cases import GRADIENT_FAMILY, SmallModel, check_model

import pattern_keras as pk
from pattern_keras import engine

ALL = tuple(cls.__name__ for cls in EVERY_ANALYZER)


def _dense(units, **kwargs):
    return L.Dense(units, bias_initializer="random_normal", **kwargs)


def _kinds(model) -> dict[str, list[str]]:
    """``{op class name: sorted kinds of its ops}`` (op names carry session-wide counters)."""
    kinds: dict[str, list[str]] = {}
    for op in engine.Program(model).ops:
        kinds.setdefault(type(op.layer).__name__, []).append(op.kind)
    return {name: sorted(k) for name, k in kinds.items()}


# -- data movement and reductions -----------------------------------------------------------


def _moves_model():
    """The class token ``h[:, 0]``, padding, splitting, means and sums over axes, transposes,
    reshapes, concatenation, stacking and a float cast, as transformers write them."""
    keras.utils.set_random_seed(0)
    x = keras.Input((5, 6))
    h = _dense(6)(x)
    token = h[:, 0]
    padded = ops.pad(h, [[0, 0], [1, 1], [0, 0]])
    left, right = ops.split(padded, 2, axis=-1)
    mean = ops.mean(left, axis=1)
    total = ops.sum(right, axis=[1])
    flat = ops.reshape(ops.transpose(h, (0, 2, 1)), (-1, 30))
    again = ops.squeeze(ops.expand_dims(token, 1), 1)
    stacked = ops.reshape(ops.stack([mean, total], axis=1), (-1, 6))
    half = ops.cast(ops.cast(again, "float64"), "float32")
    merged = ops.concatenate([token, mean, total, flat, stacked, half], axis=-1)
    return keras.Model(x, _dense(3)(merged), name="moves")


MOVES = SmallModel(_moves_model)


def test_moves_every_analyzer_compiled():
    kinds = _kinds(MOVES.build())
    for name in ("GetItem", "Pad", "Split", "Transpose", "ExpandDims", "Squeeze", "Stack"):
        assert kinds[name] == ["move"], name
    assert kinds["Reshape"] == kinds["Cast"] == ["move", "move"]
    assert kinds["Mean"] == kinds["Sum"] == ["sum"]
    assert kinds["Concatenate"] == ["move"]
    check_model(MOVES, compiled=ALL)


def _selections_model():
    """Elementwise maximum/minimum of two tensors and of a tensor and a constant, max/min over
    an axis, and a gather at indices computed in the model (an index operand)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((4, 6))
    a, b = _dense(5)(x), _dense(5)(x)
    parts = [
        ops.maximum(a, b),
        ops.minimum(a, b),
        ops.maximum(a, 0.1),
        ops.minimum(a, 0.5),
        ops.minimum(b, -0.2),
        ops.expand_dims(ops.max(a, axis=1), 1),
        ops.expand_dims(ops.amin(b, axis=1), 1),
    ]
    index = ops.argmax(ops.sum(b, axis=-1), axis=1)  # int: an "index" op
    parts.append(ops.take_along_axis(a, index[:, None, None], axis=1))
    parts += [ops.flip(a, axis=1), ops.roll(b, 1, axis=1), -a, ops.moveaxis(a, 1, 2)]
    h = ops.concatenate([ops.reshape(p, (-1, np.prod(p.shape[1:]))) for p in parts], axis=-1)
    tiled = ops.tile(ops.repeat(a[:, :1], 2, axis=1), (1, 2, 1))
    h = ops.concatenate([h, ops.reshape(ops.swapaxes(tiled, 1, 2), (-1, 20))], axis=-1)
    return keras.Model(x, _dense(3)(h))


def test_selections_every_analyzer():
    kinds = _kinds(_selections_model())
    assert kinds["Maximum"] == ["max_pool", "max_pool"]
    # minimum(a, b) and minimum(a, 0.5) are ≥ 0 for inputs ≥ 0: max pooling for LRP-αβ too;
    # minimum(b, -0.2) is not, so it is not read as a max pooling ("sum": the same rules).
    assert kinds["Minimum"] == ["max_pool", "max_pool", "sum"]
    assert kinds["Max"] == kinds["Amin"] == ["max_pool"]
    assert kinds["Argmax"] == ["index"] and kinds["TakeAlongAxis"] == ["move"]
    for name in ("Flip", "Roll", "Moveaxis", "Tile", "Repeat", "Swapaxes"):
        assert kinds[name] == ["move"], name
    assert kinds["Negative"] == ["affine"]
    check_model(SmallModel(_selections_model))


# -- contractions ---------------------------------------------------------------------------

W = np.random.default_rng(1).normal(size=(6, 5)).astype("float32")
W3 = np.random.default_rng(2).normal(size=(4, 5, 3)).astype("float32")
W_LEFT = np.random.default_rng(3).normal(size=(2, 4)).astype("float32")
W_HEADS = np.random.default_rng(4).normal(size=(4, 5, 2)).astype("float32")


def _contraction_model():
    """``x @ W`` and an einsum summing two axes against a 3-D constant (linear ops with the
    constant as kernel), ``W @ x`` and a per-position einsum (fixed linear maps)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((4, 6))
    h = ops.matmul(x, W)  # (4, 5)
    k = ops.einsum("bte,tef->bf", h, W3)  # (3,)
    left = ops.reshape(ops.matmul(W_LEFT, h), (-1, 10))  # W @ x: (2, 5)
    heads = ops.reshape(ops.einsum("bte,tef->btf", h, W_HEADS), (-1, 8))  # t shared
    dotted = ops.dot(L.ReLU()(k), W[:3])
    return keras.Model(x, _dense(3)(ops.concatenate([k, left, heads, dotted], axis=-1)))


CONTRACTION = SmallModel(_contraction_model, gated=True)


def test_contractions_with_a_constant():
    kinds = _kinds(_contraction_model())
    assert kinds["Matmul"] == kinds["Einsum"] == ["linear", "sum"]
    assert kinds["Dot"] == ["linear"]
    check_model(CONTRACTION, compiled=("Gradient", "LRPZ", "PatternNet"))


def test_contraction_kernels_get_patterns():
    """A linear contraction is a linear layer for the patterns too: fitted, keyed by the op's
    name, with the constant's shape, and PatternAttribution runs with them."""
    model = _contraction_model()
    x = np.random.default_rng(5).normal(size=(64, 4, 6)).astype("float32")
    analyzer = pk.PatternAttribution(model).fit(x, verbose=0)
    shapes = sorted(
        analyzer.patterns[op.pattern_key].shape
        for op in analyzer._program.ops
        if op.kind == "linear" and not isinstance(op.layer, keras.layers.Layer)
    )
    assert shapes == sorted([W.shape, W3.shape, (3, 5)])
    r = analyzer.analyze(x[:4], verbose=0)
    assert r.shape == (4, 4, 6) and np.all(np.isfinite(r)) and np.any(r != 0)


def test_product_of_two_signals_is_refused_by_name():
    """Refused by every analyzer but the gradient family, which differentiates it (equal to
    the tape)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((4, 6))
    q, k = _dense(3)(x), _dense(3)(x)
    scores = ops.matmul(q, ops.transpose(k, (0, 2, 1)))
    model = keras.Model(x, _dense(2)(L.Flatten()(scores)))
    for cls in _RULE_BASED:
        with pytest.raises(ValueError, match=r"'matmul(_\d+)?' of class Matmul multiplies two"):
            cls(model)
    check_gradient_family(model)


_RULE_BASED = [cls for cls in EVERY_ANALYZER if cls.__name__ not in GRADIENT_FAMILY]


def check_gradient_family(model):
    """Gradient, InputTimesGradient, IntegratedGradients (4 steps) and SmoothGrad (noise 0)
    through a refused op: the tape's."""
    x = np.random.default_rng(0).normal(size=(3,) + tuple(model.inputs[0].shape[1:]))
    x = x.astype("float32")
    xt = tf.constant(x)

    def grad(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = model(v, training=False)[:, 0]
        return tape.gradient(y, v).numpy()

    kw = {"neuron_selection": 0, "verbose": 0}
    index = {"neuron_selection_mode": "index"}
    g = grad(xt)
    assert_close(pk.Gradient(model, **index).analyze(x, **kw), g, PASS)
    assert_close(pk.InputTimesGradient(model, **index).analyze(x, **kw), x * g, PASS)
    smooth = pk.SmoothGrad(model, samples=2, noise_scale=0.0, **index)
    assert_close(smooth.analyze(x, **kw), g, PASS)
    ig = np.mean([grad(tf.constant((k + 0.5) / 4 * x)) for k in range(4)], axis=0) * x
    assert_close(pk.IntegratedGradients(model, steps=4, **index).analyze(x, **kw), ig, PASS)


# -- resampling ------------------------------------------------------------------------------


def _resize_model(interpolation, use_bias=True):
    keras.utils.set_random_seed(0)
    x = keras.Input((4, 4, 2))
    h = ops.image.resize(x, (6, 7), interpolation=interpolation)
    h = L.UpSampling2D(2, interpolation=interpolation)(h)
    return keras.Model(x, L.Dense(3, use_bias=use_bias)(L.Flatten()(h)))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_resizing_conserves_lrp_z(interpolation):
    """Nearest (copies) and bilinear (non-negative weights summing to 1) resampling are fixed
    linear maps: on a bias-free model LRP-z sums to the explained output, and equals
    ``x ⊙ ∇`` (compiled and eager)."""
    model = _resize_model(interpolation, use_bias=False)
    x = np.random.default_rng(6).uniform(0, 1, size=(4, 4, 4, 2)).astype("float32")
    y = model(x).numpy()
    selected = y.max(axis=1)
    r = pk.LRPZ(model).analyze(x, verbose=0)
    assert_close(r.reshape(4, -1).sum(1), selected, PASS)
    assert_close(r, pk.InputTimesGradient(model).analyze(x, verbose=0), PASS)
    expected = {"nearest": "move", "bilinear": "sum"}[interpolation]
    kinds = _kinds(model)
    assert kinds["Resize"] == kinds["UpSampling2D"] == [expected]


def test_resize_op_every_analyzer():
    check_model(SmallModel(lambda: _resize_model("bicubic")))


def test_area_resizing_is_refused():
    """Refused by every analyzer but the gradient family; TensorFlow has no gradient for it,
    so the tape fails on it too."""
    for layer in (L.Resizing(3, 3, interpolation="area"), L.UpSampling2D(interpolation="area")):
        x = keras.Input((4, 4, 2))
        model = keras.Model(x, L.Dense(2)(L.Flatten()(layer(x))))
        for cls in _RULE_BASED:
            with pytest.raises(ValueError, match="interpolation='area'.*no gradient"):
                cls(model)


def test_center_crop_that_would_resize_is_refused():
    x = keras.Input((4, 4, 2))
    model = keras.Model(x, L.Dense(2)(L.Flatten()(L.CenterCrop(6, 6)(x))))
    for cls in _RULE_BASED:
        with pytest.raises(ValueError, match="CenterCrop.*resizes"):
            cls(model)
    check_gradient_family(model)


# -- refusals ---------------------------------------------------------------------------------


def test_reduction_over_the_batch_axis_is_refused():
    x = keras.Input((4,))
    h = _dense(3)(x)
    model = keras.Model(x, _dense(2)(h - ops.mean(h)))
    for cls in _RULE_BASED:
        with pytest.raises(ValueError, match=r"'mean(_\d+)?'.*every axis, the batch axis"):
            cls(model)


# -- masks -----------------------------------------------------------------------------------


def test_masking_feeds_the_mask_to_the_pooling():
    """Masking → GlobalAveragePooling1D: the replay averages over the unmasked steps only (as
    ``model(x)`` does, not over all steps), and no explanation reaches a masked step."""
    keras.utils.set_random_seed(0)
    x_in = keras.Input((5, 3))
    pooled = L.GlobalAveragePooling1D()(L.Masking(0.0)(x_in))
    model = keras.Model(x_in, _dense(2)(pooled))
    x = np.random.default_rng(7).normal(size=(32, 5, 3)).astype("float32")
    x[0, 2:] = 0.0
    program = engine.Program(model)
    replay = engine.forward(program, [tf.constant(x)])[program.output].numpy()
    assert_close(replay, model(x).numpy(), PASS)
    plain = model.layers[-1](x.mean(axis=1)).numpy()  # the mean over every step
    assert not np.allclose(replay[0], plain[0], atol=1e-3)
    # SmoothGrad left out: its noise unmasks the masked steps of the noisy copies.
    for cls in (c for c in EVERY_ANALYZER if c is not pk.SmoothGrad):
        analyzer = cls(model)
        if analyzer.needs_patterns:
            analyzer.fit(x, verbose=0)
        r = analyzer.analyze(x[:3], verbose=0)  # fitted on all 32
        assert np.all(r[0, 2:] == 0), cls.__name__
        assert np.any(r[0, :2] != 0), cls.__name__


# -- constants that may be negative -----------------------------------------------------------


def test_padding_with_a_negative_constant_is_not_read_as_non_negative():
    """``relu(x)`` padded with -1 has negative entries: LRP-α1β0 must count their contributions
    (``x⁻ w⁻`` is positive), which it skips for a tensor it believes non-negative (a move of a
    ReLU's output). Against a float64 numpy α1β0."""
    keras.utils.set_random_seed(0)
    x_in = keras.Input((4,))
    padded = ops.pad(L.ReLU()(x_in), [[0, 0], [1, 1]], constant_values=-1.0)
    model = keras.Model(x_in, L.Dense(3, use_bias=False)(padded))
    assert _kinds(model)["Pad"] == ["sum"]
    x = np.random.default_rng(8).normal(size=(5, 4)).astype("float32")
    h = np.pad(np.maximum(np.float64(x), 0), [(0, 0), (1, 1)], constant_values=-1.0)
    w = np.float64(model.layers[-1].kernel.numpy())
    y = h @ w
    sel = y.argmax(1)
    contributions = h[:, :, None] * w[None]  # (n, in, out)
    positive = np.maximum(contributions, 0)
    total = positive.sum(1, keepdims=True)
    share = np.divide(positive, total, out=np.zeros_like(positive), where=total > 0)
    r = np.einsum("nio,no->ni", share, y * np.eye(3)[sel])[:, 1:-1]
    want = np.where(x > 0, r, 0.0)  # (where x ≤ 0 the ReLU's output, hence r, is 0)
    got = pk.LRPAlpha1Beta0(model).analyze(x, verbose=0)
    assert_close(got, want, PASS)


def test_padding_kinds():
    x_in = keras.Input((4, 2))
    zero = ops.pad(x_in, [[0, 0], [1, 1], [0, 0]])
    positive = ops.pad(x_in, [[0, 0], [1, 1], [0, 0]], constant_values=0.5)
    reflect = ops.pad(x_in, [[0, 0], [1, 1], [0, 0]], mode="reflect")
    merged = ops.concatenate([zero, positive, reflect], axis=1)
    model = keras.Model(x_in, L.Dense(2)(L.Flatten()(merged)))
    assert _kinds(model)["Pad"] == ["move", "move", "move"]
    resize = L.Resizing(4, 8, pad_to_aspect_ratio=True, fill_value=-1.0)
    image = keras.Input((4, 4, 2))
    model = keras.Model(image, L.Dense(2)(L.Flatten()(resize(image))))
    assert _kinds(model)["Resizing"] == ["sum"]


# -- held normalizers, compiled ----------------------------------------------------------------


def _normalizer_model():
    """Group-, RMS- and UnitNormalization on sequences of unknown length (dynamic shapes in
    the compiled pass), with random γ, β and scales."""
    keras.utils.set_random_seed(0)
    x = keras.Input((None, 6))
    h = L.GroupNormalization(groups=2)(x)
    h = L.RMSNormalization()(_dense(6)(h))
    h = L.UnitNormalization()(_dense(4)(h))
    model = keras.Model(x, _dense(3)(L.GlobalAveragePooling1D()(h)))
    rng = np.random.default_rng(9)
    for layer in model.layers:
        for w in layer.weights:
            if "gamma" in w.path or "beta" in w.path or "scale" in w.path:
                w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    return model


def _held_normalizers(model, x):
    """The model with each normalizer's per-sample scale under ``stop_gradient`` (written
    from the definitions, not from the library)."""
    gn, d1, rms, d2, unit, pool, out = model.layers[1:]
    n, t = tf.shape(x)[0], tf.shape(x)[1]
    g = tf.reshape(x, (n, t, 2, 3))
    mean, var = tf.nn.moments(g, axes=[1, 3], keepdims=True)
    h = tf.reshape((g - mean) * tf.stop_gradient(tf.math.rsqrt(var + gn.epsilon)), (n, t, 6))
    h = d1(h * gn.gamma + gn.beta)
    ms = tf.reduce_mean(h * h, axis=-1, keepdims=True)
    h = d2(h * tf.stop_gradient(tf.math.rsqrt(ms + rms.epsilon)) * rms.scale)
    h = h / tf.stop_gradient(tf.norm(h, axis=-1, keepdims=True))
    return out(pool(h))


def test_held_normalizers_compiled():
    spec = SmallModel(
        _normalizer_model,
        data=lambda rng: rng.normal(size=(3, 5, 6)),
        held=_held_normalizers,
    )
    check_model(spec, compiled=("Gradient", "LRPZ", "DeConvNet", "GuidedBackprop", "PatternNet"))
