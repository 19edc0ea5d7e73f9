"""LRP-αβ, LRP-z⁺ and deep Taylor decomposition (zᴮ) against float64 numpy re-implementations in
matrix form, and their properties: conservation, non-negativity, BatchNorm canonization, the
treatment of Add and average pooling, bounds through padding."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import PASS, assert_close, mlp

import pattern_keras as pk
from pattern_keras.rules import AlphaBetaRule, BoundedRule

L = keras.layers


# ---------------------------------------------------------------------------------------------
# float64 references (matrix form: contributions z_ij = x_i w_ij, explicitly)


def _safe_ratio(r, z):
    return np.where(z != 0, r / np.where(z != 0, z, 1.0), 0.0)


def ref_alpha_beta(x, w, b, r, alpha, beta, bias=True):
    """``R_i = Σ_j (α (z_ij)₊ / z_j⁺ − β (z_ij)₋ / z_j⁻) R_j``,
    ``z_j^± = Σ_i (z_ij)_± (+ b_j^±)``."""
    z = x[:, :, None] * w[None]  # (n, i, j)
    zp, zn = np.maximum(z, 0), np.minimum(z, 0)
    bp = np.maximum(b, 0) if bias else 0.0
    bn = np.minimum(b, 0) if bias else 0.0
    sp = _safe_ratio(r, zp.sum(1) + bp)
    sn = _safe_ratio(r, zn.sum(1) + bn)
    return alpha * (zp * sp[:, None, :]).sum(2) - beta * (zn * sn[:, None, :]).sum(2)


def ref_bounded(x, w, low, high, r):
    """``R_i = Σ_j (x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻) / Σ_i(·) R_j`` (no bias)."""
    z = (
        x[:, :, None] * w[None]
        - low[:, :, None] * np.maximum(w, 0)[None]
        - high[:, :, None] * np.minimum(w, 0)[None]
    )
    s = _safe_ratio(r, z.sum(1))
    return (z * s[:, None, :]).sum(2)


def dense_params(model):
    return [
        (
            np.float64(lay.kernel.numpy()),
            np.float64(lay.bias.numpy()) if lay.use_bias else np.zeros(lay.units),
        )
        for lay in model.layers
        if isinstance(lay, L.Dense)
    ]


def ref_backward(model, x, first_rule, rule):
    """Seed ``y`` at the largest output, ``rule`` at every Dense but the first (``first_rule``),
    ReLUs pass relevance."""
    params = dense_params(model)
    acts = [np.float64(x)]
    for k, (w, b) in enumerate(params):
        z = acts[-1] @ w + b
        acts.append(np.maximum(z, 0) if k < len(params) - 1 else z)
    y = acts[-1]
    r = np.zeros_like(y)
    idx = y.argmax(1)
    r[np.arange(len(y)), idx] = y[np.arange(len(y)), idx]
    for k in range(len(params) - 1, -1, -1):
        w, b = params[k]
        r = (first_rule if k == 0 else rule)(acts[k], w, b, r)
    return r


def signed_inputs(n=8, d=10, seed=3):
    return np.random.default_rng(seed).normal(size=(n, d)).astype("float32")


# ---------------------------------------------------------------------------------------------
# Against the references


@pytest.mark.parametrize("alpha, beta", [(2.0, 1.0), (1.0, 0.0), (3.0, 2.0)])
@pytest.mark.parametrize("bias", [True, False])
def test_alpha_beta_equals_numpy_reference(alpha, beta, bias):
    model = mlp()
    x = signed_inputs()
    if (alpha, beta) == (2.0, 1.0) and bias:
        analyzer = pk.LRPAlpha2Beta1(model)
    elif (alpha, beta) == (1.0, 0.0):
        analyzer = pk.LRPAlpha1Beta0(model, bias=bias)
    else:
        analyzer = pk.LRPAlphaBeta(model, alpha=alpha, beta=beta, bias=bias)

    def rule(a, w, b, r):
        return ref_alpha_beta(a, w, b, r, alpha, beta, bias)

    assert_close(analyzer.analyze(x), ref_backward(model, x, rule, rule))


def test_z_plus_equals_numpy_reference_and_alpha1_beta0_without_bias():
    model = mlp()
    x = signed_inputs()

    def rule(a, w, b, r):
        return ref_alpha_beta(a, w, b, r, 1.0, 0.0, bias=False)

    want = ref_backward(model, x, rule, rule)
    got = pk.LRPZPlus(model).analyze(x)
    assert_close(got, want)
    assert_close(got, pk.LRPAlpha1Beta0(model, bias=False).analyze(x), PASS)
    # With biases counted the result differs: the test can tell the two apart.
    assert not np.allclose(got, pk.LRPAlpha1Beta0(model).analyze(x), rtol=1e-3)


@pytest.mark.parametrize("low, high", [(-3.0, 3.0), ("array", "array")])
def test_deep_taylor_bounded_equals_numpy_reference(low, high):
    model = mlp()
    x = signed_inputs()
    if low == "array":
        rng = np.random.default_rng(7)
        low = (x.min(0) - rng.uniform(0.1, 1.0, 10)).astype("float32")  # one per feature
        high = (x.max(0) + rng.uniform(0.1, 1.0, 10)).astype("float32")
    lo = np.broadcast_to(np.float64(low), x.shape)
    hi = np.broadcast_to(np.float64(high), x.shape)

    def first(a, w, b, r):
        return ref_bounded(a, w, lo, hi, r)

    def z_plus(a, w, b, r):
        return ref_alpha_beta(a, w, b, r, 1.0, 0.0, bias=False)

    got = pk.DeepTaylor(model, low=low, high=high).analyze(x)
    assert_close(got, ref_backward(model, x, first, z_plus))


def test_deep_taylor_default_bounds_are_each_samples_range():
    model = mlp()
    x = signed_inputs()
    lo = np.broadcast_to(np.float64(x.min(1, keepdims=True)), x.shape)
    hi = np.broadcast_to(np.float64(x.max(1, keepdims=True)), x.shape)

    def first(a, w, b, r):
        return ref_bounded(a, w, lo, hi, r)

    def z_plus(a, w, b, r):
        return ref_alpha_beta(a, w, b, r, 1.0, 0.0, bias=False)

    assert_close(pk.DeepTaylor(model).analyze(x), ref_backward(model, x, first, z_plus))


# ---------------------------------------------------------------------------------------------
# Properties


def positive_selected(model, x):
    return model(x).numpy().max(1) > 0


def cnn(use_bias=False, seed=1):
    """Conv (same padding) → max pool → residual block with Add → average pooling → Dense."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((10, 10, 3))
    h = L.Conv2D(6, 3, padding="same", activation="relu", use_bias=use_bias, name="c1")(x)
    h = L.MaxPooling2D(2, name="mp")(h)
    r = L.Conv2D(6, 3, padding="same", activation="relu", use_bias=use_bias, name="c2")(h)
    h = L.Add(name="add")([h, r])
    h = L.AveragePooling2D(2, name="ap")(h)
    h = L.Flatten()(h)
    h = L.Dense(8, activation="relu", use_bias=use_bias, name="fc")(h)
    return keras.Model(x, L.Dense(4, use_bias=use_bias, name="out")(h))


@pytest.mark.parametrize("build", [lambda: mlp(use_bias=False), cnn])
def test_alpha1_beta0_nonnegative_and_conserved_bias_free(build):
    model = build()
    shape = (12,) + tuple(model.input.shape[1:])
    x = np.random.default_rng(4).uniform(0.0, 1.0, shape).astype("float32")
    keep = positive_selected(model, x)
    assert keep.sum() >= 6
    x = x[keep]
    y = model(x).numpy().max(1)
    for analyzer in (pk.LRPAlpha1Beta0(model), pk.LRPZPlus(model)):
        r = analyzer.analyze(x)
        assert r.shape == x.shape
        assert np.all(r >= 0), type(analyzer).__name__
        assert_close(r.reshape(len(x), -1).sum(1), y, PASS)


def test_alpha1_beta0_negative_inputs_conserved():
    """Inputs of both signs: the positive contributions are x⁺w⁺ + x⁻w⁻, still conserving."""
    model = mlp(use_bias=False)
    x = signed_inputs(12)
    x = x[positive_selected(model, x)]
    r = pk.LRPAlpha1Beta0(model).analyze(x)
    assert_close(r.sum(1), model(x).numpy().max(1), PASS)


def test_alpha2_beta1_conserves_where_both_regimes_exist():
    model = mlp(use_bias=False, sizes=(30, 40, 5))
    x = np.random.default_rng(5).normal(size=(10, 30)).astype("float32")
    r = pk.LRPAlpha2Beta1(model).analyze(x)
    assert_close(r.sum(1), model(x).numpy().max(1), PASS)
    assert (r < 0).any() and (r > 0).any()


def test_deep_taylor_conserves_and_padding_has_zero_bounds():
    """zᴮ at a convolution behind zero padding (and 'same' padding): the padded zeros are fixed,
    so their bounds are 0 and no relevance leaks into the border; z⁺ above."""
    keras.utils.set_random_seed(2)
    x_in = keras.Input((8, 8, 2))
    h = L.ZeroPadding2D(2, name="zp")(x_in)
    h = L.Conv2D(4, 3, activation="relu", use_bias=False, name="c1")(h)
    h = L.Conv2D(4, 3, padding="same", activation="relu", use_bias=False, name="c2")(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(x_in, L.Dense(3, use_bias=False)(h))
    x = np.random.default_rng(6).uniform(0.1, 1.0, (10, 8, 8, 2)).astype("float32")
    x = x[positive_selected(model, x)]
    y = model(x).numpy().max(1)
    for low, high in [(0.0, 1.0), (-1.0, 2.0), (None, None)]:
        r = pk.DeepTaylor(model, low=low, high=high).analyze(x)
        assert r.min() >= -PASS * np.abs(r).max()  # ≥ 0 up to float32 rounding
        assert_close(r.reshape(len(x), -1).sum(1), y, PASS)


def test_sign_split_rules_fold_batch_norm():
    """With BatchNorm the rules see the canonized model: the same result as on a model whose
    convolution carries the folded kernel and bias."""
    keras.utils.set_random_seed(3)
    x_in = keras.Input((6, 6, 3))
    h = L.Conv2D(5, 3, name="conv")(x_in)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    h = L.Flatten()(h)
    model = keras.Model(x_in, L.Dense(3, name="out")(h))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.set_weights(
        [rng.uniform(0.5, 2, 5), rng.normal(0, 0.5, 5), rng.normal(0, 1, 5), rng.uniform(0.3, 3, 5)]
    )
    conv = model.get_layer("conv")
    conv.bias.assign(rng.normal(0, 0.3, 5).astype("float32"))
    gamma, beta, mean, var = bn.get_weights()
    scale = gamma / np.sqrt(var + bn.epsilon)
    keras.utils.set_random_seed(3)
    f_in = keras.Input((6, 6, 3))
    f = L.Conv2D(5, 3, activation="relu", name="conv")(f_in)
    folded = keras.Model(f_in, L.Dense(3, name="out")(L.Flatten()(f)))
    folded.get_layer("conv").set_weights(
        [conv.kernel.numpy() * scale, (conv.bias.numpy() - mean) * scale + beta]
    )
    folded.get_layer("out").set_weights(model.get_layer("out").get_weights())
    x = np.random.default_rng(1).normal(size=(6, 6, 6, 3)).astype("float32")
    assert_close(folded(x), model(x), PASS)
    for cls in (pk.LRPAlpha2Beta1, pk.LRPZPlus, pk.DeepTaylor):
        assert_close(cls(model).analyze(x), cls(folded).analyze(x), PASS, err_msg=cls.__name__)


def test_add_and_average_pooling_take_the_z_rule():
    """Relevance at an Add splits in proportion to the summands (z-rule): checked on a tiny
    residual MLP against the reference with the z-rule at the Add."""
    keras.utils.set_random_seed(4)
    x_in = keras.Input((6,))
    a = L.Dense(5, activation="relu", name="a")(x_in)
    b = L.Dense(5, activation="relu", name="b")(x_in)
    s = L.Add(name="add")([a, b])
    model = keras.Model(x_in, L.Dense(3, name="out")(s))
    x = np.random.default_rng(2).normal(size=(7, 6)).astype("float32")
    (wa, ba), (wb, bb), (wo, bo) = [
        [np.float64(v) for v in model.get_layer(n).get_weights()] for n in ("a", "b", "out")
    ]
    xa = np.maximum(x @ wa + ba, 0)
    xb = np.maximum(x @ wb + bb, 0)
    y = (xa + xb) @ wo + bo
    r = np.zeros_like(y)
    i = y.argmax(1)
    r[np.arange(len(y)), i] = y[np.arange(len(y)), i]
    rs = ref_alpha_beta(xa + xb, wo, bo, r, 2.0, 1.0)
    ratio = _safe_ratio(rs, xa + xb)
    ra, rb = xa * ratio, xb * ratio
    want = ref_alpha_beta(np.float64(x), wa, ba, ra, 2.0, 1.0) + ref_alpha_beta(
        np.float64(x), wb, bb, rb, 2.0, 1.0
    )
    assert_close(pk.LRPAlpha2Beta1(model).analyze(x), want)


# ---------------------------------------------------------------------------------------------
# Rules and errors


def test_alpha_beta_requires_alpha_minus_beta_one():
    model = mlp()
    for alpha, beta in [(2.0, 0.0), (1.0, 1.0), (0.5, -0.5)]:
        with pytest.raises(ValueError, match="alpha|beta"):
            pk.LRPAlphaBeta(model, alpha=alpha, beta=beta)
    with pytest.raises(ValueError, match=r"alpha - beta = 1.*alpha=2, beta=0"):
        pk.LRPAlphaBeta(model, alpha=2, beta=0)
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        pk.create_analyzer("lrp.alpha_beta", model, alpha=3, beta=1)
    assert pk.LRPAlphaBeta(model, alpha=3, beta=2).alpha == 3.0


def test_deep_taylor_bad_bounds():
    model = mlp()
    with pytest.raises(ValueError, match="low <= high"):
        pk.DeepTaylor(model, low=1.0, high=0.0)
    with pytest.raises(ValueError, match="finite"):
        pk.DeepTaylor(model, low=-np.inf, high=0.0)


def test_rules_refuse_non_linear_ops():
    model = cnn()
    program = pk.LRPZPlus(model)._program
    pool = next(op for op in program.ops if op.kind == "max_pool")
    for rule in (AlphaBetaRule(), BoundedRule(lambda op: 0.0, lambda op: 1.0)):
        with pytest.raises(TypeError, match="linear ops only"):
            rule(pool, [], [], [])


@pytest.mark.parametrize(
    "name, cls",
    [
        ("lrp.alpha_1_beta_0", pk.LRPAlpha1Beta0),
        ("lrp.alpha_2_beta_1", pk.LRPAlpha2Beta1),
        ("lrp.z_plus", pk.LRPZPlus),
        ("deep_taylor.bounded", pk.DeepTaylor),
    ],
)
def test_registered_names(name, cls):
    assert name in pk.analyzer_names()
    model = mlp()
    analyzer = pk.create_analyzer(name, model)
    assert type(analyzer) is cls
    x = signed_inputs(3)
    np.testing.assert_array_equal(analyzer.analyze(x), cls(model).analyze(x))
    assert pk.create_analyzer("deep_taylor.bounded", model, low=-4, high=4).low[0] == -4


def test_index_and_all_selection_modes():
    model = mlp()
    x = signed_inputs(4)

    def rule(a, w, b, r):
        return ref_alpha_beta(a, w, b, r, 2.0, 1.0)

    params = dense_params(model)
    acts = [np.float64(x)]
    for k, (w, b) in enumerate(params):
        z = acts[-1] @ w + b
        acts.append(np.maximum(z, 0) if k < len(params) - 1 else z)
    for mode, sel in [("index", 2), ("all", None)]:
        y = acts[-1]
        r = np.zeros_like(y)
        if mode == "index":
            r[:, sel] = y[:, sel]
        else:
            r = y.copy()
        for k in range(len(params) - 1, -1, -1):
            r = rule(acts[k], *params[k], r)
        got = pk.LRPAlpha2Beta1(model, neuron_selection_mode=mode).analyze(x, neuron_selection=sel)
        assert_close(got, r)
