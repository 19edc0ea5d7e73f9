"""Pattern fitting (PatternComputer, PatternNet, PatternAttribution) against independent
references: the paper's toy example in closed form, a 64-dimensional linear generative model,
and a float64 numpy implementation of the estimators of ``design/MATH.md`` with explicit patch
extraction for convolutions."""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, STATISTICS, assert_close

import pattern_keras as pk

L = keras.layers


# ---------------------------------------------------------------------------------------------
# Independent float64 references


def ref_neuron(X, w, b):
    """Patterns of one neuron from its inputs ``X`` (M, D), kernel ``w`` (D,) and bias ``b``.

    MATH.md: ``a₊ = (E₊[xy] − E₊[x]E[y]) / wᵀ(·)`` over the samples with ``wᵀx + b > 0`` (``E[y]``
    over all samples; ``a₋`` alike with ``≤ 0``), and the linear ``a = cov[x, y] / wᵀcov[x, y]``.
    A regime without samples or with a zero denominator gives 0.
    """
    X = np.asarray(X, np.float64)
    w = np.asarray(w, np.float64)
    y = X @ w
    z = y + float(b)
    mean_y = y.mean()

    def regime(mask):
        if not mask.any():
            return np.zeros_like(w)
        xr, yr = X[mask], y[mask]
        num = (xr * yr[:, None]).mean(0) - xr.mean(0) * mean_y
        den = w @ num
        return num / den if den != 0 else np.zeros_like(w)

    cov = ((X - X.mean(0)) * (y - mean_y)[:, None]).mean(0)
    den = w @ cov
    return {
        "pos": regime(z > 0),
        "neg": regime(z <= 0),
        "linear": cov / den if den != 0 else np.zeros_like(w),
        "active": float(np.mean(z > 0)),
    }


def same_pads(n, k, s, d):
    """TensorFlow's 'same' padding (before, after) on one axis."""
    total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def extract_patches(x, ksize, strides, dilation, padding):
    """``x`` (N, *spatial, C) -> patches (N, *out, *ksize, C), float64, zero padded."""
    x = np.asarray(x, np.float64)
    nd = len(ksize)
    spatial = x.shape[1:-1]
    if padding == "valid":
        pads = [(0, 0)] * nd
    elif padding == "same":
        pads = [same_pads(n, k, s, d) for n, k, s, d in zip(spatial, ksize, strides, dilation)]
    elif padding == "causal":
        pads = [((k - 1) * d, 0) for k, d in zip(ksize, dilation)]
    else:
        raise ValueError(padding)
    xp = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    out = [
        (xp.shape[1 + i] - ((ksize[i] - 1) * dilation[i] + 1)) // strides[i] + 1 for i in range(nd)
    ]
    patches = np.empty((x.shape[0], *out, *ksize, x.shape[-1]))
    for offs in itertools.product(*[range(k) for k in ksize]):
        src = tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, s, n in zip(offs, dilation, strides, out)
        )
        patches[(slice(None),) * (1 + nd) + offs] = xp[(slice(None),) + src]
    return patches


def layer_reference(layer, x_in):
    """Forward pre-activation and the float64 reference patterns of a Dense/Conv layer, from
    the float32 input ``x_in`` the layer sees in the model."""
    kernel = np.asarray(layer.kernel.numpy(), np.float64)
    depthwise = isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D))
    n_out = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(n_out)
    refs = {k: np.zeros_like(kernel) for k in ("pos", "neg", "linear")}
    active = []
    if isinstance(layer, L.Dense):
        X = np.asarray(x_in, np.float64)
        for o in range(kernel.shape[-1]):
            r = ref_neuron(X, kernel[:, o], bias[o])
            for k in refs:
                refs[k][:, o] = r[k]
            active.append(r["active"])
        return X @ kernel + bias, refs, np.array(active)
    nd = kernel.ndim - 2
    ksize = kernel.shape[:nd]
    patches = extract_patches(x_in, ksize, layer.strides, layer.dilation_rate, layer.padding)
    out_shape = patches.shape[: 1 + nd]
    M = int(np.prod(out_shape))
    P = patches.reshape(M, *ksize, patches.shape[-1])
    if depthwise:
        channels, mult = kernel.shape[-2:]
        z = np.zeros((M, channels * mult))
        for c in range(channels):
            X = P[..., c].reshape(M, -1)
            for m in range(mult):
                w = kernel[..., c, m].reshape(-1)
                z[:, c * mult + m] = X @ w + bias[c * mult + m]
                r = ref_neuron(X, w, bias[c * mult + m])
                for k in refs:
                    refs[k][..., c, m] = r[k].reshape(ksize)
                active.append(r["active"])
    else:
        groups = getattr(layer, "groups", 1)
        cin_g, cout = kernel.shape[-2:]
        cout_g = cout // groups
        z = np.zeros((M, cout))
        for o in range(cout):
            g = o // cout_g
            X = P[..., g * cin_g : (g + 1) * cin_g].reshape(M, -1)
            w = kernel[..., o].reshape(-1)
            z[:, o] = X @ w + bias[o]
            r = ref_neuron(X, w, bias[o])
            for k in refs:
                refs[k][..., o] = r[k].reshape(kernel.shape[:-1])
            active.append(r["active"])
    return z.reshape(*out_shape, -1), refs, np.array(active)


def layer_input(model, name, x):
    layer = model.get_layer(name)
    return keras.Model(model.input, layer.input)(x).numpy()


def center_biases(model, names, x, seed=0):
    """Set each layer's bias so that its neurons fire on roughly half of the positions (the
    data has a large mean, so a zero bias would leave most neurons always on or always off)."""
    rng = np.random.default_rng(seed)
    for name in names:
        layer = model.get_layer(name)
        layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
        z, _, _ = layer_reference(layer, layer_input(model, name, x))
        z = z.reshape(-1, z.shape[-1])
        bias = -z.mean(0) + 0.3 * z.std(0) * rng.normal(size=z.shape[-1])
        layer.bias.assign(bias.astype(np.float32))


def init_kernels(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "kernel") and layer.kernel is not None:
            k = layer.kernel
            fan_in = int(np.prod(k.shape[:-1]))
            k.assign(rng.normal(0, 1 / math.sqrt(fan_in), k.shape).astype(np.float32))


def set_dense(model, name, kernel, bias=None):
    layer = model.get_layer(name)
    layer.kernel.assign(np.asarray(kernel, np.float32))
    if bias is not None:
        layer.bias.assign(np.asarray(bias, np.float32))


# ---------------------------------------------------------------------------------------------
# 1. The paper's toy example (section 2). The paper assumes zero-mean distractors; with a mean
#    μ ≠ 0 the two-component estimator (with the global E[y]) is biased, see the last test.


W_TOY = np.array([1.0, -1.0])


def toy_data(n=10_000, sigma=0.3, mu=0.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, n)
    eps = rng.normal(mu, sigma, n)
    x = np.outer(y, [1.0, 0.0]) + np.outer(eps, [1.0, 1.0])  # a_s = (1, 0), a_d = (1, 1)
    return x.astype(np.float32), y


def toy_model():
    x = keras.Input((2,))
    model = keras.Model(x, L.Dense(1, use_bias=False, name="dense")(x), name="toy")
    set_dense(model, "dense", W_TOY.reshape(2, 1))
    return model


@pytest.fixture(scope="module")
def toy():
    x, y = toy_data()
    return toy_model(), x, y


def test_toy_gradient_shows_the_filter(toy):
    model, x, _ = toy
    out = pk.Gradient(model).analyze(x[:200])
    assert_close(out, np.broadcast_to(W_TOY, (200, 2)), PASS)


def test_toy_deconvnet_and_guided_backprop_show_w_times_y(toy):
    model, x, _ = toy
    xs = x[:200]
    value = xs.astype(np.float64) @ W_TOY  # the output, the seed of these methods
    expected = np.outer(value, W_TOY)
    for cls in (pk.DeConvNet, pk.GuidedBackprop):
        assert_close(cls(model).analyze(xs), expected, PASS, err_msg=cls.__name__)


def test_toy_lrp_z_shows_w_times_x(toy):
    # LRP is seeded with the output value y = wᵀx; the z-rule gives R = x ⊙ w · y / z with
    # z = wᵀx (bias-free), so R = w ⊙ x: it includes the distractor.
    model, x, _ = toy
    xs = x[:200]
    expected = xs.astype(np.float64) * W_TOY
    assert_close(pk.LRPZ(model).analyze(xs), expected, PASS)
    assert np.all(np.abs(expected[:, 1]) > 0)  # the distractor's trace, which patterns remove


@pytest.mark.parametrize("pattern_type", ["relu", "linear"])
def test_toy_patternnet_and_patternattribution_recover_the_signal(toy, pattern_type):
    model, x, y = toy
    patterns = pk.PatternComputer(model, pattern_type=pattern_type).compute(
        x, batch_size=1000, verbose=0
    )
    xs, ys = x[:500], y[:500]
    signal = np.stack([ys, np.zeros_like(ys)], 1)  # a_s·y = w ⊙ a_s·y = (y, 0)
    tol = 0.02 * np.abs(ys)[:, None] + 1e-6
    for cls in (pk.PatternNet, pk.PatternAttribution):
        analyzer = cls(model, pattern_type=pattern_type, patterns=patterns)
        out = analyzer.analyze(xs)
        assert np.all(np.abs(out - signal) <= tol), (cls.__name__, np.max(np.abs(out - signal)))
    # The pattern itself is a_s = (1, 0), in both regimes where the layer keeps them (the
    # output layer is not rectified).
    np.testing.assert_allclose(patterns["dense"][:, 0], [1, 0], atol=0.02)
    if pattern_type == "relu":
        np.testing.assert_allclose(patterns.negative("dense")[:, 0], [1, 0], atol=0.02)
    else:
        assert not patterns.has_negative("dense")


def test_toy_with_distractor_mean_documented_bias():
    # With E[ε] = μ ≠ 0: E₊[y] = 1/2, E₊[y²] = 1/3, E[y] = 0 give
    # a₊ = ((1/3 + μ/2), μ/2) / (1/3) = (1 + 1.5μ, 1.5μ) and a₋ = (1 − 1.5μ, −1.5μ);
    # the linear estimator centres its covariance and stays exact: a = (1, 0).
    mu = 0.5
    x, _ = toy_data(mu=mu, seed=1)
    model = toy_model()
    relu = pk.PatternComputer(model, pattern_type="relu").compute(x, batch_size=1000, verbose=0)
    linear = pk.PatternComputer(model, pattern_type="linear").compute(x, batch_size=1000, verbose=0)
    np.testing.assert_allclose(relu["dense"][:, 0], [1 + 1.5 * mu, 1.5 * mu], atol=0.03)
    np.testing.assert_allclose(relu.negative("dense")[:, 0], [1 - 1.5 * mu, -1.5 * mu], atol=0.03)
    np.testing.assert_allclose(linear["dense"][:, 0], [1, 0], atol=0.02)
    # PatternNet uses a₊ where the (unrectified) output is positive and a₋ elsewhere.
    xs = x[:300]
    value = xs.astype(np.float64) @ W_TOY
    a = np.where(value[:, None] > 0, [1 + 1.5 * mu, 1.5 * mu], [1 - 1.5 * mu, -1.5 * mu])
    out = pk.PatternNet(model, patterns=relu).analyze(xs)
    assert np.all(np.abs(out - a * value[:, None]) <= 0.03 * np.abs(value)[:, None] + 1e-6)


# ---------------------------------------------------------------------------------------------
# 2. A 64-dimensional linear generative model with three distractors


def cosine_rows(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("pattern_type", ["linear", "relu"])
def test_64d_patternnet_recovers_the_signal_direction(pattern_type):
    rng = np.random.default_rng(5)
    dim, n = 64, 4000
    a_s = rng.normal(size=dim)
    # Distractors that overlap the signal direction: the optimal filter must turn away from a_s.
    a_d = np.stack([0.9 * a_s + 0.5 * rng.normal(size=dim) for _ in range(3)], 1)
    y = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.5, n)
    x = (
        np.outer(y, a_s) + rng.normal(0, 2.0, (n, 3)) @ a_d.T + 1e-3 * rng.normal(size=(n, dim))
    ).astype(np.float32)
    w = np.linalg.pinv(np.column_stack([a_s, a_d]))[0]  # wᵀa_s = 1, wᵀa_dk = 0
    inp = keras.Input((dim,))
    model = keras.Model(inp, L.Dense(1, use_bias=False, name="dense")(inp))
    set_dense(model, "dense", w.reshape(dim, 1))
    train, test = slice(0, 3000), slice(3000, n)
    net = pk.PatternNet(model, pattern_type=pattern_type).fit(x[train], batch_size=256, verbose=0)
    truth = np.outer(y[test], a_s)
    cos_net = cosine_rows(net.analyze(x[test], batch_size=500).astype(np.float64), truth)
    cos_grad = cosine_rows(pk.Gradient(model).analyze(x[test], batch_size=500), truth)
    assert cos_net.mean() > 0.99 and cos_net.min() > 0.99, (cos_net.mean(), cos_net.min())
    assert np.abs(cos_grad).max() < 0.5, np.abs(cos_grad).max()
    # PatternAttribution: w ⊙ a·y, whose sum is the output (wᵀa = 1 by construction).
    attribution = pk.PatternAttribution(
        model, pattern_type=pattern_type, patterns=net.patterns
    ).analyze(x[test], batch_size=500)
    cos_attr = cosine_rows(attribution.astype(np.float64), np.outer(y[test], w * a_s))
    assert cos_attr.min() > 0.99, cos_attr.min()
    output = x[test].astype(np.float64) @ w
    assert_close(attribution.sum(1), output, STATISTICS)  # wᵀa = 1 from fitted float32 sums


# ---------------------------------------------------------------------------------------------
# 3. Dense and convolution patterns against the float64 numpy reference


def dense_model():
    x = keras.Input((6,))
    h = L.ReLU()(L.Dense(5, name="d1")(x))  # rectified by a ReLU layer
    h = L.Dense(4, name="d2")(h)  # mid-network, not rectified
    out = L.Dense(3, activation="relu", name="d3")(h)  # rectified (fused)
    return keras.Model(x, out, name="mlp")


def conv2d_model():
    x = keras.Input((10, 9, 3))
    h = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c1")(x)
    h = L.Conv2D(
        6, 3, dilation_rate=2, padding="same", groups=2, activation="relu", name="grouped"
    )(h)
    h = L.DepthwiseConv2D(2, depth_multiplier=2, activation="relu", name="depthwise")(h)
    out = L.Conv2D(3, 2, padding="valid", name="last")(h)  # the output: keeps both regimes
    return keras.Model(x, out, name="cnn")


def conv1d_model():
    x = keras.Input((12, 2))
    h = L.Conv1D(4, 3, strides=2, padding="same", activation="relu", name="k1")(x)
    out = L.Conv1D(3, 2, dilation_rate=2, padding="causal", name="k2")(h)
    return keras.Model(x, out, name="cnn1d")


MODELS = {
    "dense": (dense_model, (6,), ["d1", "d2", "d3"], {"d2"}),
    "conv2d": (conv2d_model, (10, 9, 3), ["c1", "grouped", "depthwise", "last"], {"last"}),
    "conv1d": (conv1d_model, (12, 2), ["k1", "k2"], {"k2"}),
}


@pytest.fixture(scope="module")
def fitted_models():
    cache = {}

    def get(kind):
        if kind not in cache:
            build, shape, names, _ = MODELS[kind]
            model = build()
            init_kernels(model, seed=1)
            x = np.random.default_rng(2).normal(3.0, 1.0, (96,) + shape).astype(np.float32)
            center_biases(model, names, x, seed=3)
            refs = {}
            for name in names:
                layer = model.get_layer(name)
                x_in = layer_input(model, name, x)
                z, ref, active = layer_reference(layer, x_in)
                # The reference forward pass reproduces the layer (validates the patch
                # extraction, padding and group/depthwise channel conventions).
                z_keras = keras.Model(model.input, _pre_activation(model, name))(x).numpy()
                assert_close(z_keras, z, PASS, err_msg=name)
                # Both regimes are exercised for every neuron.
                assert np.all((active > 0.05) & (active < 0.95)), (name, active)
                refs[name] = ref
            cache[kind] = (model, x, refs)
        return cache[kind]

    return get


def _pre_activation(model, name):
    """The layer's pre-activation as a symbolic tensor (a linear copy sharing its weights)."""
    layer = model.get_layer(name)
    config = layer.get_config()
    config["activation"] = "linear"
    twin = type(layer).from_config(config)
    twin.build(layer.input.shape)
    for v_twin, v in zip(twin.weights, layer.weights):
        v_twin.assign(v)
    return twin(layer.input)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("pattern_type", ["relu", "linear"])
def test_patterns_equal_numpy_reference(fitted_models, kind, pattern_type):
    model, x, refs = fitted_models(kind)
    _, _, names, unrectified = MODELS[kind]
    patterns = pk.PatternComputer(model, pattern_type=pattern_type).compute(
        x, batch_size=16, verbose=0
    )
    assert sorted(patterns) == sorted(names)
    for name in names:
        ref = refs[name]
        assert patterns[name].shape == model.get_layer(name).kernel.shape
        assert np.all(np.isfinite(patterns[name]))
        if pattern_type == "linear":
            assert_close(patterns[name], ref["linear"], STATISTICS, err_msg=name)
            assert not patterns.has_negative(name)
        else:
            assert_close(patterns[name], ref["pos"], STATISTICS, err_msg=name)
            if name in unrectified:
                assert_close(
                    patterns.negative(name), ref["neg"], STATISTICS, err_msg=name + " (a₋)"
                )
                # The two regimes really differ here (the test can tell them apart).
                assert not np.allclose(ref["pos"], ref["neg"], rtol=1e-2)
            else:
                assert not patterns.has_negative(name)
                with pytest.raises(KeyError, match="ReLU"):
                    patterns.negative(name)


@pytest.mark.parametrize("pattern_type", ["relu", "linear"])
def test_large_offset_data_keeps_its_covariance(pattern_type):
    # Data around 1000 ± 1: float32 products of unshifted values lose the covariance (MATH.md,
    # "Numerics"); the shifted statistics must not. (The model's own float32 pre-activation is
    # only accurate to ~1e-4 of its spread here, which bounds the agreement.)
    x_in = keras.Input((6,))
    model = keras.Model(x_in, L.Dense(4, name="d")(x_in))
    init_kernels(model, seed=11)
    x = np.random.default_rng(12).normal(1000.0, 1.0, (1000, 6)).astype(np.float32)
    center_biases(model, ["d"], x, seed=13)
    _, ref, _ = layer_reference(model.get_layer("d"), x)
    patterns = pk.PatternComputer(model, pattern_type=pattern_type).compute(
        x, batch_size=100, verbose=0
    )
    if pattern_type == "linear":
        assert_close(patterns["d"], ref["linear"], STATISTICS)
    else:
        assert_close(patterns["d"], ref["pos"], STATISTICS)
        assert_close(patterns.negative("d"), ref["neg"], STATISTICS)


def test_gate_uses_the_bias(fitted_models):
    # Same kernels without biases give other patterns: the gate is wᵀx + b > 0, not wᵀx > 0.
    model, x, refs = fitted_models("dense")
    patterns = pk.PatternComputer(model, pattern_type="relu").compute(x, verbose=0)
    x_in = layer_input(model, "d1", x).astype(np.float64)
    kernel = model.get_layer("d1").kernel.numpy().astype(np.float64)
    no_bias = np.stack(
        [ref_neuron(x_in, kernel[:, o], 0.0)["pos"] for o in range(kernel.shape[1])], 1
    )
    assert not np.allclose(patterns["d1"], no_bias, rtol=1e-2)
    assert_close(patterns["d1"], refs["d1"]["pos"], STATISTICS)


# ---------------------------------------------------------------------------------------------
# 4. Data forms


@pytest.fixture(scope="module")
def small():
    model = dense_model()
    init_kernels(model, seed=4)
    x = np.random.default_rng(6).normal(3.0, 1.0, (200, 6)).astype(np.float32)
    center_biases(model, ["d1", "d2", "d3"], x, seed=7)
    full = pk.PatternComputer(model).compute(x, batch_size=25, verbose=0)
    return model, x, full


class Batches(keras.utils.PyDataset):
    def __init__(self, x, batch_size):
        super().__init__()
        self.x, self.batch_size = x, batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i):
        xb = self.x[i * self.batch_size : (i + 1) * self.batch_size]
        return xb, np.zeros((len(xb), 3), np.float32)


def assert_same_patterns(a, b, rtol_of_max=None):
    """Equal patterns: bit for bit (``None``: the same batches through the same code), or to
    ``rtol_of_max`` of the largest entry (the same data in other batches, hence other shifts:
    ``STATISTICS``)."""
    assert sorted(a) == sorted(b)

    def same(x, y, key):
        if rtol_of_max is None:
            np.testing.assert_array_equal(x, y, err_msg=key)
        else:
            assert_close(x, y, rtol_of_max, err_msg=key)

    for key in a:
        same(a[key], b[key], key)
        assert a.has_negative(key) == b.has_negative(key)
        if a.has_negative(key):
            same(a.negative(key), b.negative(key), key)


def test_data_forms_give_the_same_patterns(small):
    model, x, reference = small
    computer = pk.PatternComputer(model)
    bs = 25
    labels = np.zeros((len(x), 3), np.float32)

    def endless():
        while True:
            for i in range(0, len(x), bs):
                yield x[i : i + bs], labels[i : i + bs]

    forms = {
        "dataset x": tf.data.Dataset.from_tensor_slices(x).batch(bs),
        "dataset (x, y)": tf.data.Dataset.from_tensor_slices((x, labels)).batch(bs),
        "generator": endless(),
        "pydataset": Batches(x, bs),
    }
    for what, data in forms.items():
        steps = len(x) // bs if what == "generator" else None
        got = computer.compute(data, steps=steps, verbose=0)
        assert_same_patterns(got, reference)
        assert got.n_samples == len(x), what


def test_steps_limit_the_data(small):
    model, x, full = small
    computer = pk.PatternComputer(model)
    limited = computer.compute(x, batch_size=20, steps=3, verbose=0)
    first = computer.compute(x[:60], batch_size=20, verbose=0)
    assert limited.n_samples == 60
    assert_same_patterns(limited, first)
    assert not np.allclose(limited["d1"], full["d1"], rtol=1e-3)
    pyd = computer.compute(Batches(x, 20), steps=3, verbose=0)
    assert pyd.n_samples == 60
    assert_same_patterns(pyd, first)


def test_batch_size_does_not_change_the_result(small):
    model, x, full = small  # fitted with batches of 25
    computer = pk.PatternComputer(model)
    for bs in (7, 200):
        assert_same_patterns(computer.compute(x, batch_size=bs, verbose=0), full, STATISTICS)


# ---------------------------------------------------------------------------------------------
# 5. Edge cases


def test_dead_neuron_and_constant_inputs_give_zero_patterns_not_nan():
    x_in = keras.Input((5,))
    h = L.Dense(4, activation="relu", name="d1")(x_in)
    model = keras.Model(x_in, L.Dense(2, name="d2")(h))
    init_kernels(model, seed=8)
    rng = np.random.default_rng(9)
    x = rng.normal(3.0, 1.0, (120, 5)).astype(np.float32)
    x[:, 1] = 0.0  # an input that is always zero (an image corner)
    x[:, 3] = 5.0  # an input that never varies
    center_biases(model, ["d1", "d2"], x, seed=10)
    bias = model.get_layer("d1").bias.numpy()
    bias[2] = -1e3  # neuron 2 never fires
    model.get_layer("d1").bias.assign(bias)
    for pattern_type in ("relu", "linear"):
        net = pk.PatternNet(model, pattern_type=pattern_type).fit(x, verbose=0)
        a = net.patterns["d1"]
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(net.patterns["d2"]))
        assert np.max(np.abs(a[1])) <= 1e-6 * np.max(np.abs(a)), a[1]
        if pattern_type == "relu":
            np.testing.assert_array_equal(a[:, 2], 0.0)  # no sample in the positive regime
        else:
            # cov[x, y] of a constant input is 0. (Under "relu" a constant nonzero input does get
            # a₊ ∝ x·(E₊[y] − E[y]) ≠ 0: that is the estimator, not a defect.)
            assert np.max(np.abs(a[3])) <= 1e-5 * np.max(np.abs(a)), a[3]
        assert np.all(np.isfinite(net.analyze(x[:10])))
        assert np.all(
            np.isfinite(
                pk.PatternAttribution(
                    model, pattern_type=pattern_type, patterns=net.patterns
                ).analyze(x[:10])
            )
        )


def test_zero_kernel_neuron_gives_zero_pattern():
    x_in = keras.Input((3,))
    model = keras.Model(x_in, L.Dense(2, name="d")(x_in))
    set_dense(model, "d", [[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]], [0.1, 0.2])
    x = np.random.default_rng(0).normal(1.0, 1.0, (50, 3)).astype(np.float32)
    for pattern_type in ("relu", "linear"):
        p = pk.PatternComputer(model, pattern_type=pattern_type).compute(x, verbose=0)
        np.testing.assert_array_equal(p["d"][:, 1], 0.0)
        assert np.all(np.isfinite(p["d"]))
        if p.has_negative("d"):
            np.testing.assert_array_equal(p.negative("d")[:, 1], 0.0)


def test_per_layer_pattern_type_override(small):
    model, x, relu = small
    mixed = pk.PatternComputer(model, pattern_type={"d2": "linear"}).compute(x, verbose=0)
    linear = pk.PatternComputer(model, pattern_type="linear").compute(x, verbose=0)
    assert mixed.pattern_types == {"d1": "relu", "d2": "linear", "d3": "relu"}
    # Fitted in batches of 32, the fixture's in batches of 25 (other shifts).
    assert_close(mixed["d1"], relu["d1"], STATISTICS)
    assert_close(mixed["d3"], relu["d3"], STATISTICS)
    np.testing.assert_array_equal(mixed["d2"], linear["d2"])
    assert not np.allclose(relu["d2"], linear["d2"], rtol=1e-2)
    assert not mixed.has_negative("d2") and relu.has_negative("d2")
    # The analyzers take the dict too (and check the patterns' types against it).
    net = pk.PatternNet(model, pattern_type={"d2": "linear"}, patterns=mixed)
    assert net.patterns is mixed
    with pytest.raises(ValueError, match="d2"):
        pk.PatternNet(model, pattern_type="relu", patterns=mixed)
    with pytest.raises(ValueError, match="nope"):
        pk.PatternComputer(model, pattern_type={"nope": "linear"})
    with pytest.raises(ValueError, match="nope"):
        pk.PatternNet(model, pattern_type={"nope": "relu"})
    with pytest.raises(ValueError):
        pk.PatternComputer(model, pattern_type={"d1": "quadratic"})
    with pytest.raises(ValueError):
        pk.PatternComputer(model, pattern_type="quadratic")


def test_analyze_before_fit_raises_not_fitted(small):
    model, x, _ = small
    for cls in (pk.PatternNet, pk.PatternAttribution):
        analyzer = cls(model)
        assert analyzer.patterns is None
        with pytest.raises(pk.NotFittedError) as info:
            analyzer.analyze(x[:2])
        message = str(info.value)
        assert "fit" in message and "load" in message, message


def test_shifts_are_the_first_batch_means(fitted_models):
    """The shifts are the first batch's means (of each layer's input, and of its output
    without bias per neuron), taken in the first batch's own step on a single replica: against
    numpy float64 means of that batch, and the same whatever comes after it."""
    model, x, _ = fitted_models("dense")
    stats = pk.PatternComputer(model).compute_statistics(x, batch_size=16, verbose=0)
    later = pk.PatternComputer(model).compute_statistics(
        np.concatenate([x[:16], x[::-1]]), batch_size=16, verbose=0
    )
    for name in MODELS["dense"][2]:
        x_in = layer_input(model, name, x[:16]).astype(np.float64)
        y = x_in @ model.get_layer(name).kernel.numpy().astype(np.float64)
        layer = stats.layers[name]
        np.testing.assert_allclose(layer.shift_x, x_in.mean(), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(
            layer.shift_y, y.mean(0), rtol=1e-5, atol=1e-5 * np.abs(y).max(), err_msg=name
        )
        assert later.layers[name].shift_x == layer.shift_x
        np.testing.assert_array_equal(later.layers[name].shift_y, layer.shift_y)
