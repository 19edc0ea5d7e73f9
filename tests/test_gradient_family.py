"""Gradient, InputTimesGradient, DeConvNet, GuidedBackprop, LRP-z and LRP-ε against independent
references: ``tf.GradientTape``, hand-written backward passes (numpy / single TF ops), and the
outputs of iNNvestigate 1.0.9 (``tests/data/innvestigate-1.0.9-mlp.npz``)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import DEEP_PASS, PASS, assert_close, randomize_batch_norm
from conftest import mlp as _mlp

from pattern_keras.analyzers import (
    LRPZ,
    DeConvNet,
    Gradient,
    GuidedBackprop,
    InputTimesGradient,
    LRPEpsilon,
)

L = keras.layers
DATA = Path(__file__).parent / "data"
ALL_ANALYZERS = (Gradient, InputTimesGradient, DeConvNet, GuidedBackprop, LRPZ, LRPEpsilon)


# ---------------------------------------------------------------------------------------------
# Helpers


def normal(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype("float32")


def selection_mask(flat, mode, selection=None):
    n, k = flat.shape
    if mode == "all":
        return tf.ones_like(flat)
    if mode == "max_activation":
        idx = tf.argmax(flat, axis=1)
    else:
        idx = np.broadcast_to(np.asarray(selection), (n,))
    return tf.one_hot(idx, k, dtype=flat.dtype)


def tape_gradient(fn, x, mode="max_activation", selection=None):
    """Gradient of the selected output of ``fn`` (``fn(x) -> (n, ...)``) w.r.t. ``x``."""
    multi = isinstance(x, (list, tuple))
    xs = [tf.constant(v) for v in (x if multi else [x])]
    with tf.GradientTape() as tape:
        for v in xs:
            tape.watch(v)
        y = fn(xs if multi else xs[0])
        flat = tf.reshape(y, (tf.shape(y)[0], -1))
        score = tf.reduce_sum(flat * tf.stop_gradient(selection_mask(flat, mode, selection)))
    grads = [g.numpy() for g in tape.gradient(score, xs)]
    return grads if multi else grads[0]


def selected_value(y, mode, selection=None):
    """The selected neuron's value per sample (the seed of DeConvNet, GBP, LRP)."""
    y = np.asarray(y).reshape(len(y), -1)
    if mode == "max_activation":
        return y.max(axis=1)
    return y[np.arange(len(y)), np.broadcast_to(np.asarray(selection), (len(y),))]


def model_logits(model):
    """The model itself, called in inference mode."""
    return lambda x: model(x, training=False)


# ---------------------------------------------------------------------------------------------
# Models


def mlp(use_bias=True, softmax=None, seed=0):
    """conftest's MLP (10 → 16 → 12 → 5, the last layer named d3) with this file's biases."""
    model = _mlp(use_bias=use_bias, softmax=softmax, seed=seed, bias_scale=0.0, output_name="d3")
    if use_bias:  # non-zero biases, so that they matter
        for layer in model.layers:
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(normal(layer.bias.shape, seed=seed + 7, scale=0.3))
    return model


def cnn2d():
    keras.utils.set_random_seed(1)
    x = keras.Input((12, 12, 4))
    h = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c_s2")(x)
    h = L.Conv2D(8, 3, padding="valid", dilation_rate=2, activation="relu", name="c_dil")(h)
    h = L.Conv2D(6, 2, padding="same", groups=2, activation="relu", name="c_grp")(h)
    h = L.Flatten()(h)
    return keras.Model(x, L.Dense(5, name="out")(h))


def cnn1d():
    keras.utils.set_random_seed(2)
    x = keras.Input((16, 3))
    h = L.Conv1D(4, 3, strides=2, activation="relu", name="c1")(x)
    h = L.Conv1D(5, 3, padding="causal", dilation_rate=2, activation="relu", name="c2")(h)
    h = L.Conv1D(4, 2, padding="same", activation="relu", name="c3")(h)
    h = L.Flatten()(h)
    return keras.Model(x, L.Dense(4, name="out")(h))


def cnn3d():
    keras.utils.set_random_seed(3)
    x = keras.Input((6, 6, 4, 2))
    h = L.Conv3D(3, 3, strides=(1, 2, 1), padding="same", activation="relu", name="c3d")(x)
    h = L.Conv3D(4, 2, activation="relu", name="c3d_valid")(h)
    h = L.MaxPooling3D(2)(h)
    h = L.Flatten()(h)
    return keras.Model(x, L.Dense(3, name="out")(h))


def cnn_other_convs():
    keras.utils.set_random_seed(4)
    x = keras.Input((8, 8, 3))
    h = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu")(x)
    h = L.SeparableConv2D(4, 3, activation="relu")(h)
    h = L.Conv2DTranspose(3, 3, strides=2, activation="relu")(h)
    h = L.GlobalMaxPooling2D()(h)
    return keras.Model(x, L.Dense(3, name="out")(h))


def bn_graph():
    """BatchNormalization, residual Add, Concatenate, pooling, padding/cropping/reshape/dropout."""
    keras.utils.set_random_seed(5)
    x = keras.Input((10, 10, 3))
    c1 = L.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(x)
    r1 = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(c1))
    c2 = L.Conv2D(6, 3, padding="same", name="c2")(r1)
    b2 = L.BatchNormalization(name="bn2")(c2)
    res = L.Activation("relu", name="r2")(L.Add(name="add")([b2, r1]))
    side = L.Conv2D(4, 1, activation="relu", name="side")(x)
    h = L.Concatenate(name="cat")([res, side])  # 10×10×10
    h = L.MaxPooling2D(2, name="mp")(h)  # 5×5×10
    h = L.ZeroPadding2D(1, name="zp")(h)  # 7×7×10
    h = L.AveragePooling2D(2, strides=1, name="ap")(h)  # 6×6×10
    h = L.Cropping2D(1, name="crop")(h)  # 4×4×10
    h = L.Reshape((16, 10), name="reshape")(h)
    h = L.Dropout(0.5, name="drop")(h)
    a = L.GlobalAveragePooling1D(name="gap")(h)
    b = L.Flatten(name="flat")(h)
    b = L.Dense(10, activation="relu", name="fc")(b)
    h = L.Average(name="avg")([a, b])
    out = L.Dense(4, name="out")(h)
    model = keras.Model(x, out)
    randomize_batch_norm(model)
    return model


def nested_model():
    keras.utils.set_random_seed(6)
    i = keras.Input((6, 6, 4))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(i)
    h = L.BatchNormalization(name="bn")(h)
    block = keras.Model(i, L.Add(name="add")([h, i]), name="block")
    randomize_batch_norm(block, seed=1)
    head = keras.Sequential(
        [keras.Input((144,)), L.Dense(8, activation="relu", name="fc"), L.Dense(3, name="logits")],
        name="head",
    )
    x = keras.Input((6, 6, 4))
    h = block(x)
    h = block(h)  # the same nested model called twice
    h = L.Flatten()(h)
    return keras.Model(x, head(h))


# ---------------------------------------------------------------------------------------------
# Gradient and InputTimesGradient = tape


MODES = [("max_activation", None), ("index", 2), ("index", [0, 2, 1, 0]), ("all", None)]
MODELS = {
    "mlp": (mlp, (10,)),
    "cnn2d": (cnn2d, (12, 12, 4)),
    "cnn1d": (cnn1d, (16, 3)),
    "cnn3d": (cnn3d, (6, 6, 4, 2)),
    "other_convs": (cnn_other_convs, (8, 8, 3)),
    "bn_graph": (bn_graph, (10, 10, 3)),
    "nested": (nested_model, (6, 6, 4)),
}


@pytest.fixture(scope="module")
def built_models():
    return {name: (build(), shape) for name, (build, shape) in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_equals_tape(built_models, name):
    model, shape = built_models[name]
    x = normal((4,) + shape, seed=10)
    for mode, sel in MODES:
        analyzer = Gradient(model, neuron_selection_mode=mode)
        got = analyzer.analyze(x, neuron_selection=sel)
        want = tape_gradient(model_logits(model), x, mode, sel)
        assert np.abs(want).max() > 0, "degenerate test: zero gradient"
        assert_close(got, want, err_msg=f"{name} {mode} {sel}")
        ixg = InputTimesGradient(model, neuron_selection_mode=mode).analyze(x, sel)
        assert_close(ixg, x * want, err_msg=f"{name} {mode} {sel}")


def test_modes_really_differ(built_models):
    """Guard against a test that passes whatever the selection: the three modes differ."""
    model, shape = built_models["mlp"]
    x = normal((4,) + shape, seed=10)
    a = Gradient(model).analyze(x)
    b = Gradient(model, "index").analyze(x, 2)
    c = Gradient(model, "all").analyze(x)
    assert not np.allclose(a, b) and not np.allclose(a, c) and not np.allclose(b, c)


@pytest.mark.parametrize("softmax", ["fused", "activation", "layer"])
def test_final_softmax_stripped(softmax):
    model = mlp(softmax=softmax)
    x = normal((5, 10), seed=11)
    if softmax == "fused":
        d3 = model.get_layer("d3")
        hidden = keras.Model(model.input, model.get_layer("d2").output)

        def logits(v):
            return tf.matmul(hidden(v), d3.kernel) + d3.bias
    else:
        logits = keras.Model(model.input, model.get_layer("d3").output)
    z = np.asarray(logits(x))
    # The model really ends in a softmax.
    assert_close(np.asarray(model(x)), tf.nn.softmax(z).numpy(), PASS)
    for mode, sel in [("max_activation", None), ("index", 3), ("all", None)]:
        got = Gradient(model, mode).analyze(x, sel)
        assert_close(got, tape_gradient(logits, x, mode, sel), err_msg=f"{softmax} {mode}")
        # Seeded with the pre-softmax value, not the probability.
        lrp = LRPZ(model, mode).analyze(x, sel)
        if mode != "all":
            y = selected_value(z, mode, sel)
            ixg = x * tape_gradient(logits, x, mode, sel)
            assert_close(lrp, ixg, PASS)
            assert np.all(np.abs(y) > 1e-3)


# ---------------------------------------------------------------------------------------------
# DeConvNet and GuidedBackprop against hand-written backward passes


def relu_rule(g, pre, method):
    """DeConvNet: ``max(g, 0)``; Guided BackProp: ``1[pre > 0] · max(g, 0)``; the gradient
    (to check the references themselves): ``1[pre > 0] · g``."""
    if method == "gradient":
        return g * (pre > 0)
    g = np.maximum(g, 0)
    return g if method == "deconvnet" else g * (pre > 0)


def mlp_reference(model, x, method, mode, sel=None):
    """DeConvNet / GBP of the ReLU MLP of :func:`mlp` in numpy float64."""
    ws = [
        (
            model.get_layer(n).kernel.numpy().astype("float64"),
            model.get_layer(n).bias.numpy().astype("float64"),
        )
        for n in ("d1", "d2", "d3")
    ]
    a = x.astype("float64")
    pres = []
    for w, b in ws[:-1]:
        pre = a @ w + b
        pres.append(pre)
        a = np.maximum(pre, 0)
    z = a @ ws[-1][0] + ws[-1][1]
    y = selected_value(z, mode, sel)
    idx = z.argmax(1) if mode == "max_activation" else np.broadcast_to(sel, (len(x),))
    g = np.zeros_like(z)
    g[np.arange(len(x)), idx] = y
    g = g @ ws[2][0].T
    for (w, _), pre in zip(ws[1::-1], pres[::-1]):
        g = relu_rule(g, pre, method) @ w.T
    return g


@pytest.mark.parametrize("cls, method", [(DeConvNet, "deconvnet"), (GuidedBackprop, "gbp")])
@pytest.mark.parametrize(
    "mode, sel", [("max_activation", None), ("index", 1), ("index", [4, 0, 2, 3, 1, 1])]
)
def test_deconvnet_guided_backprop_mlp(cls, method, mode, sel):
    model = mlp()
    x = normal((6, 10), seed=12)
    got = cls(model, mode).analyze(x, sel)
    want = mlp_reference(model, x, method, mode, sel)
    assert_close(got, want, PASS)


def test_deconvnet_and_guided_backprop_differ_from_gradient():
    model = mlp()
    x = normal((6, 10), seed=12)
    y = selected_value(model(x), "max_activation")
    grad = Gradient(model).analyze(x) * y[:, None]
    deconv = DeConvNet(model).analyze(x)
    gbp = GuidedBackprop(model).analyze(x)
    assert not np.allclose(deconv, gbp, atol=1e-4)
    assert not np.allclose(gbp, grad, atol=1e-4)
    assert not np.allclose(deconv, grad, atol=1e-4)


def small_cnn():
    keras.utils.set_random_seed(13)
    x = keras.Input((9, 9, 2))
    h = L.Conv2D(4, 3, strides=1, padding="same", activation="relu", name="c1")(x)
    h = L.MaxPooling2D(2, name="mp")(h)  # 4×4×4
    h = L.Conv2D(5, 3, strides=2, padding="valid", activation="relu", name="c2")(h)  # 1×1×5
    h = L.Flatten()(h)
    h = L.Dense(6, activation="relu", name="fc")(h)
    model = keras.Model(x, L.Dense(4, name="out")(h))
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(normal(layer.bias.shape, seed=14, scale=0.2))
    return model


def cnn_reference(model, x, method, mode, sel=None):
    """DeConvNet / GBP of :func:`small_cnn`: explicit float64 forward, backward with
    ``conv2d_transpose``, transposed matmuls and the max-pool's own VJP."""
    f64 = lambda v: tf.constant(np.asarray(v), tf.float64)
    k1, b1 = (f64(w) for w in model.get_layer("c1").get_weights())
    k2, b2 = (f64(w) for w in model.get_layer("c2").get_weights())
    w3, b3 = (f64(w) for w in model.get_layer("fc").get_weights())
    w4, b4 = (f64(w) for w in model.get_layer("out").get_weights())
    x = f64(x)
    pre1 = tf.nn.conv2d(x, k1, 1, "SAME") + b1
    a1 = tf.nn.relu(pre1)
    with tf.GradientTape() as tape:  # the VJP of one max-pool op: routing to the winners
        tape.watch(a1)
        p = tf.nn.max_pool2d(a1, 2, 2, "VALID")
    pre2 = tf.nn.conv2d(p, k2, 2, "VALID") + b2
    a2 = tf.reshape(tf.nn.relu(pre2), (len(x), -1))
    pre3 = a2 @ w3 + b3
    z = (tf.nn.relu(pre3) @ w4 + b4).numpy()
    y = selected_value(z, mode, sel)
    idx = z.argmax(1) if mode == "max_activation" else np.broadcast_to(sel, (len(z),))
    g = np.zeros_like(z)
    g[np.arange(len(z)), idx] = y
    g = relu_rule(g @ w4.numpy().T, pre3.numpy(), method)
    g = relu_rule((g @ w3.numpy().T).reshape(pre2.shape), pre2.numpy(), method)
    g = tf.nn.conv2d_transpose(f64(g), k2, p.shape, 2, "VALID")
    g = tape.gradient(p, a1, output_gradients=g)
    g = relu_rule(g.numpy(), pre1.numpy(), method)
    return tf.nn.conv2d_transpose(f64(g), k1, x.shape, 1, "SAME").numpy()


@pytest.mark.parametrize("cls, method", [(DeConvNet, "deconvnet"), (GuidedBackprop, "gbp")])
@pytest.mark.parametrize("mode, sel", [("max_activation", None), ("index", [3, 1, 0, 2, 2])])
def test_deconvnet_guided_backprop_cnn(cls, method, mode, sel):
    model = small_cnn()
    x = normal((5, 9, 9, 2), seed=15)
    got = cls(model, mode).analyze(x, sel)
    want = cnn_reference(model, x, method, mode, sel)
    assert np.abs(want).max() > 0
    assert_close(got, want, PASS)


def test_references_agree_with_tape():
    """The hand-written references are themselves right: with the gradient's ReLU rule (gate, no
    rectification) they reproduce ``y ·`` the tape gradient."""
    model = mlp()
    x = normal((6, 10), seed=12)
    y = selected_value(model(x), "max_activation")
    assert_close(
        mlp_reference(model, x, "gradient", "max_activation"),
        tape_gradient(model_logits(model), x) * y[:, None],
        PASS,
    )
    model = small_cnn()
    x = normal((5, 9, 9, 2), seed=15)
    ref = cnn_reference(model, x, "gradient", "max_activation")
    y = selected_value(model(x), "max_activation")
    want = tape_gradient(model_logits(model), x) * y[:, None, None, None]
    assert_close(ref, want, PASS)


# ---------------------------------------------------------------------------------------------
# LRP


def bias_free_cnn():
    keras.utils.set_random_seed(16)
    x = keras.Input((10, 10, 2))
    h = L.Conv2D(6, 3, padding="same", activation="relu", use_bias=False)(x)
    h = L.MaxPooling2D(2)(h)
    h = L.Conv2D(8, 3, activation="relu", use_bias=False)(h)
    h = L.MaxPooling2D(2)(h)
    h = L.Flatten()(h)
    h = L.Dense(10, activation="relu", use_bias=False)(h)
    return keras.Model(x, L.Dense(4, use_bias=False)(h))


@pytest.mark.parametrize(
    "build, shape", [(lambda: mlp(use_bias=False), (10,)), (bias_free_cnn, (10, 10, 2))]
)
def test_lrp_z_conserves_relevance_bias_free(build, shape):
    model = build()
    x = np.abs(normal((6,) + shape, seed=17)) if len(shape) > 1 else normal((6,) + shape, seed=17)
    for mode, sel in [("max_activation", None), ("index", 1)]:
        r = LRPZ(model, mode).analyze(x, sel)
        y = selected_value(model(x), mode, sel)
        assert np.all(np.abs(y) > 1e-3), "degenerate test"
        sums = r.reshape(len(x), -1).sum(axis=1)
        assert_close(sums, y, PASS)
        # ... and equals input × gradient.
        assert_close(r, x * tape_gradient(model_logits(model), x, mode, sel), PASS)


def test_lrp_z_equals_input_times_gradient_with_biases(built_models):
    """With z including the bias, LRP-z through ReLU nets is x ⊙ ∂y/∂x (biases or not); the
    relevance is then *not* conserved."""
    for name in ("mlp", "bn_graph"):
        model, shape = built_models[name]
        x = normal((4,) + shape, seed=18)
        r = LRPZ(model).analyze(x)
        assert_close(r, x * tape_gradient(model_logits(model), x), PASS)
        if name == "mlp":
            y = selected_value(model(x), "max_activation")
            assert not np.allclose(r.sum(axis=1), y, rtol=1e-3)


def lrp_epsilon_reference(model, x, epsilon, mode="max_activation", sel=None):
    """LRP-ε for the MLP of :func:`mlp` in float64:
    ``R_i = x_i Σ_j W_ij R_j / (z_j + ε sign z_j)`` with ``sign(0) = 1``; ReLUs pass relevance."""
    ws = [
        (
            model.get_layer(n).kernel.numpy().astype("float64"),
            model.get_layer(n).bias.numpy().astype("float64"),
        )
        for n in ("d1", "d2", "d3")
    ]
    acts, a = [], x.astype("float64")
    zs = []
    for i, (w, b) in enumerate(ws):
        acts.append(a)
        z = a @ w + b
        zs.append(z)
        a = np.maximum(z, 0) if i < 2 else z
    y = selected_value(a, mode, sel)
    idx = a.argmax(1) if mode == "max_activation" else np.broadcast_to(sel, (len(x),))
    r = np.zeros_like(a)
    r[np.arange(len(x)), idx] = y
    for (w, _), z, inp in zip(ws[::-1], zs[::-1], acts[::-1]):
        denom = z + epsilon * np.where(z >= 0, 1.0, -1.0)
        r = inp * ((r / denom) @ w.T)
    return r


@pytest.mark.parametrize("epsilon", [1e-7, 0.1, 1.0, 10.0])
def test_lrp_epsilon_matches_explicit_formula(epsilon):
    model = mlp()
    x = normal((6, 10), seed=19)
    for mode, sel in [("max_activation", None), ("index", [1, 0, 4, 4, 2, 3])]:
        got = LRPEpsilon(model, epsilon=epsilon, neuron_selection_mode=mode).analyze(x, sel)
        assert_close(
            got,
            lrp_epsilon_reference(model, x, epsilon, mode, sel),
            PASS,
            err_msg=f"eps={epsilon} {mode}",
        )


def test_lrp_epsilon_tends_to_lrp_z(built_models):
    model, shape = built_models["cnn2d"]
    x = normal((4,) + shape, seed=20)
    z_rule = LRPZ(model).analyze(x)
    errors = []
    for eps in (1.0, 1e-2, 1e-4, 1e-7):
        e_rule = LRPEpsilon(model, epsilon=eps).analyze(x)
        errors.append(np.abs(e_rule - z_rule).max())
    scale = np.abs(z_rule).max()
    assert errors[0] > 1e-2 * scale  # a large ε changes the result
    assert errors[0] > errors[1] > errors[2], errors  # ... a smaller one less
    assert errors[-1] < 1e-4 * scale, errors  # ... and a tiny one (almost) not at all


def test_lrp_epsilon_large_absorbs_relevance():
    model = mlp()
    x = normal((6, 10), seed=21)
    y = selected_value(model(x), "max_activation")
    r = LRPEpsilon(model, epsilon=10.0).analyze(x)
    assert np.all(np.abs(r.sum(axis=1)) < np.abs(y))
    # sign(0) = +1 and no NaN where z = 0: an all-zero input has z = bias only in layer 1.
    r0 = LRPEpsilon(model, epsilon=0.5).analyze(np.zeros((2, 10), "float32"))
    assert np.all(np.isfinite(r0)) and np.all(r0 == 0)
    r0 = LRPZ(model).analyze(np.zeros((2, 10), "float32"))
    assert np.all(np.isfinite(r0))


def test_lrp_z_zero_denominator_is_finite():
    """A bias-free net on an all-zero input: every z is 0; LRP-z passes nothing, never NaN."""
    model = mlp(use_bias=False)
    r = LRPZ(model).analyze(np.zeros((2, 10), "float32"))
    assert np.all(r == 0)


# ---------------------------------------------------------------------------------------------
# iNNvestigate 1.0.9 reference outputs


@pytest.fixture(scope="module")
def innvestigate_reference(reference_mlp):
    return reference_mlp


REFERENCE_ANALYZERS = {
    "gradient": lambda m, mode: Gradient(m, mode),
    "input_t_gradient": lambda m, mode: InputTimesGradient(m, mode),
    "deconvnet": lambda m, mode: DeConvNet(m, mode),
    "guided_backprop": lambda m, mode: GuidedBackprop(m, mode),
    "lrp.z": lambda m, mode: LRPZ(m, mode),
    "lrp.epsilon": lambda m, mode: LRPEpsilon(m, epsilon=1e-7, neuron_selection_mode=mode),
    "lrp.epsilon[epsilon=0.1]": lambda m, mode: LRPEpsilon(
        m, epsilon=0.1, neuron_selection_mode=mode
    ),
}


def test_innvestigate_reference_logits(innvestigate_reference):
    model, ref = innvestigate_reference
    assert_close(model(ref["x_analyze"]), ref["logits"], PASS)


@pytest.mark.parametrize("name", list(REFERENCE_ANALYZERS))
@pytest.mark.parametrize("mode", ["max_activation", "index3"])
def test_innvestigate_reference(innvestigate_reference, name, mode):
    model, ref = innvestigate_reference
    x = ref["x_analyze"]
    want = ref[f"{name}/{mode}"]
    if mode == "index3":
        got = REFERENCE_ANALYZERS[name](model, "index").analyze(x, neuron_selection=3)
    else:
        got = REFERENCE_ANALYZERS[name](model, "max_activation").analyze(x)
    assert np.abs(want).max() > 0
    assert_close(got, want, PASS, err_msg=f"{name}/{mode}")


# ---------------------------------------------------------------------------------------------
# keras.applications


@pytest.fixture(scope="module")
def vgg16():
    keras.utils.set_random_seed(30)
    # The classifier's softmax is left in: it is stripped.
    return keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=10)


@pytest.fixture(scope="module")
def resnet50():
    keras.utils.set_random_seed(31)
    model = keras.applications.ResNet50(
        weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None
    )
    randomize_batch_norm(model, seed=2)
    return model


def application_images():
    return np.random.default_rng(32).uniform(-1.0, 1.0, size=(2, 64, 64, 3)).astype("float32")


def vgg16_logits(model):
    hidden = keras.Model(model.input, model.get_layer("fc2").output)
    predictions = model.get_layer("predictions")
    return lambda x: tf.matmul(hidden(x, training=False), predictions.kernel) + predictions.bias


@pytest.mark.parametrize("app", ["vgg16", "resnet50"])
def test_applications_every_analyzer(request, app):
    model = request.getfixturevalue(app)
    x = application_images()
    logits = vgg16_logits(model) if app == "vgg16" else model_logits(model)
    if app == "vgg16":
        assert model.get_layer("predictions").activation.__name__ == "softmax"
    results = {}
    for cls in ALL_ANALYZERS:
        r = cls(model).analyze(x)
        assert r.shape == x.shape, cls.__name__
        assert np.all(np.isfinite(r)), cls.__name__
        assert np.abs(r).max() > 0, cls.__name__
        results[cls] = r
    want = tape_gradient(logits, x)
    assert_close(results[Gradient], want, DEEP_PASS)
    assert_close(results[InputTimesGradient], x * want, DEEP_PASS)


# ---------------------------------------------------------------------------------------------
# Input handling and errors


@pytest.fixture(scope="module")
def small():
    return mlp()


def test_error_wrong_shape(small):
    with pytest.raises(ValueError, match=r"\(3, 9\).*expects \(batch, 10\)"):
        Gradient(small).analyze(np.zeros((3, 9), "float32"))


def test_error_wrong_rank(small):
    with pytest.raises(ValueError, match=r"rank 3.*rank 2"):
        Gradient(small).analyze(np.zeros((3, 10, 1), "float32"))
    with pytest.raises(ValueError, match=r"rank 1.*rank 2"):
        Gradient(small).analyze(np.zeros((10,), "float32"))


@pytest.mark.parametrize(
    "bad", [np.full((2, 10), "a"), np.full((2, 10), None, dtype=object), [["x"] * 10] * 2]
)
def test_error_non_numeric(small, bad):
    with pytest.raises(ValueError, match=r"numeric.*(<U|str|object)"):
        Gradient(small).analyze(bad)


@pytest.mark.parametrize(
    "sel, pattern",
    [
        (5, r"5 is out of range.*5 output neurons"),
        (-1, r"-1 is out of range"),
        ([0, 1, 7], r"7 is out of range"),
        ([0, 1], r"one int per sample \(3\).*\(2,\)"),
        (1.5, r"integers"),
    ],
)
def test_error_neuron_index(small, sel, pattern):
    with pytest.raises(ValueError, match=pattern):
        Gradient(small, "index").analyze(np.zeros((3, 10), "float32"), neuron_selection=sel)


def test_error_index_mode_without_selection(small):
    with pytest.raises(ValueError, match="needs neuron_selection"):
        Gradient(small, "index").analyze(np.zeros((3, 10), "float32"))


def test_error_empty_batch(small):
    with pytest.raises(ValueError, match=r"empty batch.*\(0, 10\)"):
        Gradient(small).analyze(np.zeros((0, 10), "float32"))


def test_error_selection_with_other_mode(small):
    with pytest.raises(
        ValueError,
        match=r"only used with neuron_selection_mode='index'.*"
        r"'max_activation'",
    ):
        Gradient(small).analyze(np.zeros((3, 10), "float32"), neuron_selection=1)
    with pytest.raises(ValueError, match="neuron_selection_mode must be one of"):
        Gradient(small, "maximum")


def test_error_bad_batch_size(small):
    with pytest.raises(ValueError, match="batch_size"):
        Gradient(small).analyze(np.zeros((3, 10), "float32"), batch_size=0)


def _tape_gradient(model, x):
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = model(t)
        y = tf.reduce_sum(tf.reduce_max(y, axis=1))
    return tape.gradient(y, t).numpy()


def test_error_unsupported_layer():
    # A recurrent layer has rules now (the gradient equals the tape); an activation without a
    # rule is still refused by the analyzers that need one, naming the layer.
    keras.utils.set_random_seed(41)
    x = keras.Input((5, 3))
    h = L.LSTM(4, name="my_lstm")(x)
    model = keras.Model(x, L.Dense(2)(h))
    data = np.random.default_rng(0).normal(size=(3, 5, 3)).astype("float32")
    assert_close(Gradient(model).analyze(data), _tape_gradient(model, data), PASS)
    x = keras.Input((4,))
    model = keras.Model(x, L.Dense(2, activation="softsign", name="softsign_dense")(x))
    with pytest.raises(ValueError, match=r"softsign_dense.*softsign"):
        GuidedBackprop(model)


def test_error_softmax_in_the_middle():
    # The gradient family differentiates a softmax anywhere (equal to the tape); the rule-based
    # analyzers refuse one that is not attention weights, naming the layer.
    keras.utils.set_random_seed(42)
    x = keras.Input((4,))
    h = L.Dense(3, activation="softmax", name="mid")(x)
    model = keras.Model(x, L.Dense(2, name="out")(h))
    data = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    assert_close(Gradient(model).analyze(data), _tape_gradient(model, data), PASS)
    with pytest.raises(ValueError, match=r"'mid'.*softmax"):
        LRPZ(model)
    h = L.Softmax(name="mid_sm")(L.Dense(3)(x))
    model = keras.Model(x, L.Dense(2)(h))
    with pytest.raises(ValueError, match=r"mid_sm.*softmax"):
        LRPZ(model)


def two_input_model():
    keras.utils.set_random_seed(40)
    a = keras.Input((6,), name="a")
    b = keras.Input((4, 4, 1), name="b")
    hb = L.Flatten()(L.Conv2D(2, 3, activation="relu")(b))
    h = L.Concatenate()([L.Dense(5, activation="relu")(a), hb])
    return keras.Model([a, b], L.Dense(3)(h))


def test_multi_input_returns_one_explanation_per_input():
    model = two_input_model()
    xa, xb = normal((5, 6), seed=41), normal((5, 4, 4, 1), seed=42)
    for mode, sel in [("max_activation", None), ("index", [2, 1, 0, 0, 1]), ("all", None)]:
        want = tape_gradient(lambda v: model(v, training=False), [xa, xb], mode, sel)
        got = Gradient(model, mode).analyze([xa, xb], sel)
        assert isinstance(got, list) and len(got) == 2
        assert_close(got[0], want[0])
        assert_close(got[1], want[1])
    got = Gradient(model).analyze((tf.constant(xa), tf.constant(xb)), batch_size=2)
    assert_close(got[1], tape_gradient(lambda v: model(v, training=False), [xa, xb])[1])
    with pytest.raises(ValueError, match=r"2 inputs.*list of 2 arrays.*ndarray"):
        Gradient(model).analyze(xa)
    with pytest.raises(ValueError, match=r"2 inputs.*got 3 arrays"):
        Gradient(model).analyze([xa, xb, xb])
    with pytest.raises(ValueError, match=r"same number of samples"):
        Gradient(model).analyze([xa, xb[:3]])


def test_dataset_tensor_and_batch_size_give_the_same(small):
    x = normal((7, 10), seed=43)
    sel = np.array([0, 4, 1, 2, 3, 3, 0])
    analyzer = GuidedBackprop(small, "index")
    want = analyzer.analyze(x, sel)
    assert_close(want, mlp_reference(small, x, "gbp", "index", sel), PASS)
    # The same batches through the same compiled pass: bit for bit. Other batch sizes may
    # change the kernels' summation order (oneDNN picks kernels by shape): PASS.
    np.testing.assert_array_equal(analyzer.analyze(tf.constant(x), sel), want)
    np.testing.assert_array_equal(analyzer.analyze(x.astype("float64"), sel), want)
    assert_close(analyzer.analyze(x, sel, batch_size=2), want, PASS)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(3)
    assert_close(analyzer.analyze(ds, sel), want, PASS)
    labels = np.arange(7)
    ds_xy = tf.data.Dataset.from_tensor_slices((x, labels)).batch(2)
    np.testing.assert_array_equal(
        analyzer.analyze(ds_xy, sel), analyzer.analyze(x, sel, batch_size=2)
    )
    # max_activation over a dataset of (x, y)
    lrp = LRPZ(small)
    np.testing.assert_array_equal(lrp.analyze(ds_xy), lrp.analyze(x, batch_size=2))
    with pytest.raises(ValueError, match="no batches"):
        lrp.analyze(ds.take(0))


def test_traced_once_per_signature(small):
    analyzer = LRPEpsilon(small, epsilon=0.01)
    for n in (3, 5, 1, 8):
        analyzer.analyze(normal((n, 10), seed=n))
    analyzer.analyze(normal((9, 10), seed=1), batch_size=4)  # 4, 4, 1
    assert analyzer._compiled.experimental_get_tracing_count() == 1
    # float64 and tensor input are cast to the model's dtype: still one trace.
    analyzer.analyze(tf.constant(normal((2, 10)), tf.float64))
    assert analyzer._compiled.experimental_get_tracing_count() == 1
