"""Beyond VGG: ``keras.applications`` graphs (residual Add, Concatenate, depthwise and separable
convolutions, ReLU6, BatchNormalization everywhere) run through every analyzer family, BatchNorm
folding preserves their outputs; patterns of depthwise, separable and transposed convolutions
equal a float64 numpy reference with explicit patches; PatternNet crosses Add and Concatenate
as a hand-written backward pass does; nested models give ``outer/inner`` pattern keys."""

from __future__ import annotations

import contextlib
import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import BN_MILD, DEEP_PASS, PASS, STATISTICS, assert_close, randomize_batch_norm

import pattern_keras as pk
from pattern_keras import engine

L = keras.layers


# ---------------------------------------------------------------------------------------------
# keras.applications (random weights, BatchNorm statistics randomized so folding is not trivial)


APPS = {
    # name: (constructor, input size). Xception needs at least 71×71.
    "ResNet50": (keras.applications.ResNet50, 32),
    "MobileNetV2": (keras.applications.MobileNetV2, 32),
    "DenseNet121": (keras.applications.DenseNet121, 32),
    "Xception": (keras.applications.Xception, 71),
}


@pytest.fixture(scope="module")
def apps():
    """Each application built once for the module (lazily)."""
    cache = {}

    def get(name):
        if name not in cache:
            build, size = APPS[name]
            keras.utils.set_random_seed(10)
            model = build(
                weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None
            )
            randomize_batch_norm(model, seed=11, **BN_MILD)
            x = np.random.default_rng(12).uniform(-1, 1, (2, size, size, 3)).astype("float32")
            y = model(x).numpy()
            assert np.all(np.isfinite(y)) and np.abs(y).max() > 0, name
            cache[name] = (model, x, y)
        return cache[name]

    return get


def analyzer_families(model):
    """One analyzer per rule family (the others share their rules)."""
    return {
        "gradient": lambda: pk.Gradient(model),
        "guided_backprop": lambda: pk.GuidedBackprop(model),
        "lrp.epsilon": lambda: pk.LRPEpsilon(model, epsilon=1e-3),
        "lrp.alpha_2_beta_1": lambda: pk.LRPAlpha2Beta1(model),
        "lrp.z_plus": lambda: pk.LRPZPlus(model),
        "deep_taylor": lambda: pk.DeepTaylor(model, low=-1.0, high=1.0),
        "integrated_gradients": lambda: pk.IntegratedGradients(model, steps=3),
        "smoothgrad": lambda: pk.SmoothGrad(model, samples=2, noise_scale=0.1),
    }


# Tracing a big graph costs 5-15 s per analyzer on two cores, running it eagerly under 1 s:
# every family runs eagerly (the same rule code, op by op), and one family per application
# also runs compiled, as users run it.
COMPILED = {
    "ResNet50": "integrated_gradients",
    "MobileNetV2": "smoothgrad",
    "DenseNet121": "deep_taylor",
    "Xception": "lrp.alpha_2_beta_1",
}


@contextlib.contextmanager
def eagerly():
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(previous)


def check_result(r, x, what):
    assert r.shape == x.shape, what
    assert np.all(np.isfinite(r)), what
    assert np.abs(r).max() > 0, what


@pytest.mark.parametrize("name", sorted(APPS))
def test_batch_norm_folding_preserves_outputs(apps, name):
    model, x, y = apps(name)
    program = engine.Program(model, fold_batch_norm=True)
    got = engine.forward(program, [tf.constant(x)])[program.output].numpy()
    assert_close(got, y, DEEP_PASS)
    n_bn = sum(isinstance(layer, L.BatchNormalization) for layer in model.layers)
    left = sum(op.kind == "affine" for op in program.ops)
    assert left < n_bn
    if name != "DenseNet121":  # DenseNet's pre-activation BNs follow no linear layer
        assert left == 0
    # Conv → BN → ReLU: the folded layer is rectified (unfolded, the BN stands between).
    unfolded = engine.Program(model)
    assert sum(op.rectified for op in unfolded.linear_ops) == 0

    def relu_after(slot):
        users = unfolded.consumers(slot)
        return len(users) == 1 and users[0].kind == "activation" and users[0].activation == "relu"

    expected = sum(
        1
        for op in unfolded.ops
        if op.kind == "affine"
        and getattr(unfolded.producer(op.inputs[0]), "kind", None) == "linear"
        and relu_after(op.outputs[0])
    )
    assert expected > 0
    assert sum(op.rectified for op in program.linear_ops) == expected


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_analyzer_family_runs(apps, name):
    model, x, _ = apps(name)
    families = analyzer_families(model)
    with eagerly():
        for family, make in families.items():
            check_result(make().analyze(x), x, family)
    check_result(families[COMPILED[name]]().analyze(x), x, COMPILED[name] + " (compiled)")


@pytest.mark.filterwarnings("ignore:Even though the .*run_functions_eagerly")
@pytest.mark.parametrize("name", sorted(APPS))
def test_patternnet_and_patternattribution(apps, name):
    """Patterns fitted on two random batches. PatternAttribution's output is finite. PatternNet's
    is not, in float32, on these random-weight networks with the two-component estimator: its
    patterns are far from the filters (median ‖w‖·‖a‖ ≈ 17 per layer on ResNet50, where
    wᵀa = 1), so the signal grows by about that factor per layer and overflows after some
    50 layers. With the filter estimator (‖w‖·‖a‖ = 1) PatternNet's output is finite, and
    with ``renormalize=True`` (one common scale for all pending signals after every linear
    layer) the two-component PatternNet's is finite too."""
    model, x, _ = apps(name)
    data = np.random.default_rng(13).uniform(-1, 1, (4,) + x.shape[1:]).astype("float32")
    with eagerly():
        net = pk.PatternNet(model).fit(data, batch_size=2, verbose=0)  # two batches
        keys = list(net.patterns)
        assert len(keys) == len({op.pattern_key for op in net._program.linear_ops})
        for key in keys:
            assert np.all(np.isfinite(net.patterns[key])), key
        if name == "Xception":
            assert "block2_sepconv1/depthwise_kernel" in keys
            assert "block2_sepconv1/pointwise_kernel" in keys
        attribution = pk.PatternAttribution(model, patterns=net.patterns)
        check_result(attribution.analyze(x), x, "PatternAttribution")
        assert net.analyze(x).shape == x.shape
        renormalized = pk.PatternNet(model, patterns=net.patterns, renormalize=True)
        check_result(renormalized.analyze(x), x, "PatternNet (renormalized)")
        # The filter estimator a = w / wᵀw needs no data: set it directly.
        filtered = pk.PatternNet(model, pattern_type="filter")
        filters = {}
        for key, plan in filtered._computer.plans.items():
            w = plan.part.kernel.numpy()
            filters[key] = w / (w * w).sum(axis=plan.part.input_axes, keepdims=True)
        filtered.set_patterns(pk.Patterns(filters, pattern_types={k: "filter" for k in filters}))
        check_result(filtered.analyze(x), x, "PatternNet (filter)")


# ---------------------------------------------------------------------------------------------
# Patterns of depthwise, separable and transposed convolutions against a float64 reference


def ref_patterns(X, w, b):
    """One neuron: inputs ``X`` (M, D), kernel ``w`` (D,), bias ``b`` (MATH.md):
    ``a₊ = (E₊[xy] − E₊[x]E[y]) / wᵀ(·)`` over ``wᵀx + b > 0`` with ``E[y]`` over all samples,
    ``a₋`` alike over ``≤ 0``, and the linear ``a = cov[x, y] / wᵀcov[x, y]``."""
    y = X @ w
    z = y + b
    mean_y = y.mean()

    def regime(mask):
        num = (X[mask] * y[mask, None]).mean(0) - X[mask].mean(0) * mean_y
        return num / (w @ num)

    cov = ((X - X.mean(0)) * (y - mean_y)[:, None]).mean(0)
    return {
        "pos": regime(z > 0),
        "neg": regime(z <= 0),
        "linear": cov / (w @ cov),
        "active": np.mean(z > 0),
    }


def patches(x, k, stride, padding):
    """``x`` (N, H, W, C) -> (N, H', W', k, k, C) in float64, TensorFlow's padding."""
    x = np.float64(x)
    if padding == "same":
        pads = []
        for n in x.shape[1:3]:
            total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    out = [(n - k) // stride + 1 for n in x.shape[1:3]]
    p = np.empty((x.shape[0], out[0], out[1], k, k, x.shape[-1]))
    for i, j in itertools.product(range(k), range(k)):
        p[:, :, :, i, j] = x[
            :,
            i : i + (out[0] - 1) * stride + 1 : stride,
            j : j + (out[1] - 1) * stride + 1 : stride,
        ]
    return p


def transpose_patches(x, k, stride):
    """Transposed convolution, 'valid' padding: output (u, v) receives tap (i, j) from input
    ((u − i)/s, (v − j)/s) where that is an integer position: -> (N, H', W', k, k, C)."""
    x = np.float64(x)
    n, h, w, c = x.shape
    out = ((h - 1) * stride + k, (w - 1) * stride + k)
    p = np.zeros((n, out[0], out[1], k, k, c))
    for i, j, a, b in itertools.product(range(k), range(k), range(h), range(w)):
        p[:, a * stride + i, b * stride + j, i, j] = x[:, a, b]
    return p


def depthwise_reference(P, kernel, bias):
    """Depthwise: neuron (c, m) sees channel c of the patch. -> (z, patterns dict)."""
    M = int(np.prod(P.shape[:3]))
    k = P.shape[3]
    channels, mult = kernel.shape[-2:]
    refs = {r: np.zeros(kernel.shape) for r in ("pos", "neg", "linear")}
    z, active = np.zeros((M, channels * mult)), []
    for c, m in itertools.product(range(channels), range(mult)):
        X = P[..., c].reshape(M, k * k)
        w = kernel[..., c, m].reshape(-1)
        b = bias[c * mult + m]
        z[:, c * mult + m] = X @ w + b
        r = ref_patterns(X, w, b)
        active.append(r["active"])
        for key in refs:
            refs[key][..., c, m] = r[key].reshape(k, k)
    return z.reshape(P.shape[:3] + (-1,)), refs, np.array(active)


def dense_reference(X, kernel, bias):
    """Kernel (..., out) over flattened inputs X (M, D)."""
    refs = {r: np.zeros(kernel.shape) for r in ("pos", "neg", "linear")}
    flat = kernel.reshape(-1, kernel.shape[-1])
    active = []
    for o in range(kernel.shape[-1]):
        r = ref_patterns(X, flat[:, o], bias[o])
        active.append(r["active"])
        for key in refs:
            refs[key][..., o] = r[key].reshape(kernel.shape[:-1])
    return X @ flat + bias, refs, np.array(active)


def transpose_reference(P, kernel, bias):
    """Conv2DTranspose kernel (k, k, out, in): neuron o sees the patch (k, k, in)."""
    M = int(np.prod(P.shape[:3]))
    X = P.reshape(M, -1)
    as_conv = np.transpose(kernel, (0, 1, 3, 2))  # (k, k, in, out)
    z, refs, active = dense_reference(X, as_conv, bias)
    refs = {key: np.transpose(v, (0, 1, 3, 2)) for key, v in refs.items()}
    return z.reshape(P.shape[:3] + (-1,)), refs, active


def center(values, rng):
    """A bias that makes each neuron fire on about half of its samples."""
    z = values.reshape(-1, values.shape[-1])
    return (-np.median(z, 0) + 0.2 * z.std(0) * rng.normal(size=z.shape[-1])).astype("float32")


def sub_output(model, tensor, x):
    return keras.Model(model.input, tensor)(x).numpy()


@pytest.fixture(scope="module")
def conv_family():
    """Depthwise (same padding, stride 2) → ReLU → Separable (its depthwise part feeds the
    pointwise part, not a ReLU) → ReLU → Conv2DTranspose (stride 2, the output: not rectified).
    Data with a large mean; biases centred so both regimes are populated."""
    keras.utils.set_random_seed(20)
    x_in = keras.Input((9, 9, 2))
    d = L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", name="dw")(x_in)
    h = L.ReLU(name="dw_relu")(d)
    s = L.SeparableConv2D(3, 2, padding="valid", name="sep")(h)
    h2 = L.ReLU(name="sep_relu")(s)
    t = L.Conv2DTranspose(2, 3, strides=2, name="tr")(h2)
    model = keras.Model(x_in, t)
    x = np.random.default_rng(21).normal(2.0, 1.0, (48, 9, 9, 2)).astype("float32")
    rng = np.random.default_rng(22)
    dw, sep, tr = (model.get_layer(n) for n in ("dw", "sep", "tr"))
    dw.bias.assign(np.zeros(dw.bias.shape, "float32"))
    dw.bias.assign(center(sub_output(model, d, x), rng))
    sep.bias.assign(np.zeros(sep.bias.shape, "float32"))
    sep.bias.assign(center(sub_output(model, s, x), rng))
    tr.bias.assign(np.zeros(tr.bias.shape, "float32"))
    tr.bias.assign(center(sub_output(model, t, x), rng))

    refs = {}
    # DepthwiseConv2D
    x_dw = np.float64(x)
    P = patches(x_dw, 3, 2, "same")
    z, refs["dw"], active = depthwise_reference(
        P, np.float64(dw.kernel.numpy()), np.float64(dw.bias.numpy())
    )
    assert_close(sub_output(model, d, x), z, PASS)
    actives = [active]
    # SeparableConv2D, depthwise part: no bias, not rectified (feeds the pointwise part)
    h_in = np.maximum(z, 0)
    P = patches(h_in, 2, 1, "valid")
    dk = np.float64(sep.depthwise_kernel.numpy())
    z_d, refs["sep/depthwise_kernel"], _ = depthwise_reference(
        P, dk, np.zeros(dk.shape[-2] * dk.shape[-1])
    )
    # pointwise part: a 1×1 convolution of the depthwise output, with the layer's bias
    pk_ = np.float64(sep.pointwise_kernel.numpy())
    X = z_d.reshape(-1, z_d.shape[-1])
    z_p, refs["sep/pointwise_kernel"], active = dense_reference(
        X, pk_, np.float64(sep.bias.numpy())
    )
    z_p = z_p.reshape(z_d.shape[:3] + (-1,))
    assert_close(sub_output(model, s, x), z_p, PASS)
    actives.append(active)
    # Conv2DTranspose
    P = transpose_patches(np.maximum(z_p, 0), 3, 2)
    z_t, refs["tr"], active = transpose_reference(
        P, np.float64(tr.kernel.numpy()), np.float64(tr.bias.numpy())
    )
    assert_close(model(x).numpy(), z_t, PASS)
    actives.append(active)
    for a in actives:  # both regimes are exercised everywhere
        assert np.all((a > 0.05) & (a < 0.95)), a
    return model, x, refs


@pytest.mark.parametrize("pattern_type", ["relu", "linear"])
def test_conv_family_patterns_equal_numpy_reference(conv_family, pattern_type):
    model, x, refs = conv_family
    computer = pk.PatternComputer(model, pattern_type=pattern_type)
    assert computer.plans["dw"].rectified and computer.plans["sep/pointwise_kernel"].rectified
    assert not computer.plans["sep/depthwise_kernel"].rectified
    assert not computer.plans["tr"].rectified
    patterns = computer.compute(x, batch_size=16, verbose=0)
    assert sorted(patterns) == sorted(refs)
    for key, ref in refs.items():
        assert patterns[key].shape == ref["pos"].shape, key
        if pattern_type == "linear":
            assert_close(patterns[key], ref["linear"], STATISTICS, err_msg=key)
        else:
            assert_close(patterns[key], ref["pos"], STATISTICS, err_msg=key)
            if not computer.plans[key].rectified:
                assert_close(patterns.negative(key), ref["neg"], STATISTICS, err_msg=key + " (a₋)")
            else:
                assert not patterns.has_negative(key)


# ---------------------------------------------------------------------------------------------
# Add and Concatenate: the backward signal splits as the gradient's does


def residual_mlp():
    """x → d1 (relu) → d2 (relu); s = d1 + d2 → d3 (relu); c = [s, d3] → out."""
    keras.utils.set_random_seed(30)
    x = keras.Input((5,))
    h1 = L.Dense(6, activation="relu", name="d1")(x)
    h2 = L.Dense(6, activation="relu", name="d2")(h1)
    s = L.Add(name="add")([h1, h2])
    h3 = L.Dense(4, activation="relu", name="d3")(s)
    c = L.Concatenate(name="cat")([s, h3])
    return keras.Model(x, L.Dense(3, name="out")(c))


def test_gradient_through_add_and_concatenate_equals_tape():
    model = residual_mlp()
    x = np.random.default_rng(31).normal(size=(6, 5)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        score = tf.reduce_sum(y * tf.one_hot(tf.argmax(y, 1), 3))
    assert_close(pk.Gradient(model).analyze(x), tape.gradient(score, xt).numpy(), PASS)


@pytest.mark.parametrize("cls", [pk.PatternNet, pk.PatternAttribution])
def test_pattern_analyzers_through_add_and_concatenate(cls):
    """Hand-written backward pass with given patterns: kernels replaced by A (PatternNet) or
    W ⊙ A (PatternAttribution), ReLUs gate by the forward pass, Add copies the signal to both
    summands, Concatenate splits it, the logits layer uses a₊ where its value is positive and
    a₋ elsewhere; seeded with y."""
    model = residual_mlp()
    rng = np.random.default_rng(32)
    x = rng.normal(size=(8, 5)).astype("float32")
    names = ["d1", "d2", "d3", "out"]
    W = {n: np.float64(model.get_layer(n).kernel.numpy()) for n in names}
    b = {n: np.float64(model.get_layer(n).bias.numpy()) for n in names}
    A = {n: rng.normal(size=W[n].shape).astype("float32") for n in names}
    A_neg = rng.normal(size=W["out"].shape).astype("float32")
    patterns = pk.Patterns(A, negative={"out": A_neg})
    got = cls(model, patterns=patterns).analyze(x)

    def K(n, a=None):
        a = np.float64(A[n] if a is None else a)
        return a if cls is pk.PatternNet else W[n] * a

    x64 = np.float64(x)
    z1 = x64 @ W["d1"] + b["d1"]
    h1 = np.maximum(z1, 0)
    z2 = h1 @ W["d2"] + b["d2"]
    s = h1 + np.maximum(z2, 0)
    z3 = s @ W["d3"] + b["d3"]
    c = np.concatenate([s, np.maximum(z3, 0)], 1)
    y = c @ W["out"] + b["out"]
    g = np.zeros_like(y)
    i = y.argmax(1)
    g[np.arange(8), i] = y[np.arange(8), i]
    pos = y > 0
    g_c = (g * pos) @ K("out").T + (g * ~pos) @ K("out", A_neg).T
    g_s, g_h3 = g_c[:, :6], g_c[:, 6:]
    g_s = g_s + (g_h3 * (z3 > 0)) @ K("d3").T
    g_h1 = g_s + (g_s * (z2 > 0)) @ K("d2").T
    want = (g_h1 * (z1 > 0)) @ K("d1").T
    assert_close(got, want, PASS)
    # Renormalizing changes each sample's scale only, branches keep their relative weight.
    again = cls(model, patterns=patterns, renormalize=True).analyze(x)
    want_flat, again_flat = want.reshape(8, -1), np.float64(again).reshape(8, -1)
    scale = (want_flat * again_flat).sum(1) / (again_flat * again_flat).sum(1)
    assert_close(again_flat * scale[:, None], want_flat, PASS)
    assert np.abs(again).max() <= 1.0 + 1e-6


# ---------------------------------------------------------------------------------------------
# Nested models: keys "outer/inner"


def test_nested_model_pattern_keys_and_values():
    keras.utils.set_random_seed(40)
    i = keras.Input((4,))
    inner = keras.Model(i, L.Dense(5, activation="relu", name="dense")(i), name="inner")
    x_in = keras.Input((4,))
    h = inner(x_in)
    model = keras.Model(x_in, L.Dense(2, name="head")(h))
    x = np.random.default_rng(41).normal(1.0, 1.0, (64, 4)).astype("float32")
    dense = inner.get_layer("dense")
    dense.bias.assign(center(np.float32(x @ dense.kernel.numpy()), np.random.default_rng(0)))
    patterns = pk.PatternComputer(model).compute(x, batch_size=16, verbose=0)
    assert sorted(patterns) == ["head", "inner/dense"]
    _, ref, active = dense_reference(
        np.float64(x), np.float64(dense.kernel.numpy()), np.float64(dense.bias.numpy())
    )
    assert np.all((active > 0.05) & (active < 0.95))
    assert_close(patterns["inner/dense"], ref["pos"], STATISTICS)
    r = pk.PatternAttribution(model, patterns=patterns).analyze(x[:3])
    assert r.shape == (3, 4) and np.all(np.isfinite(r))
