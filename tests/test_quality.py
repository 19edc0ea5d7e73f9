"""Tests of pattern_keras.evaluation.quality: the signal estimator measure ρ(S).

The closed form is checked against a brute-force computation in numpy (float64, explicit patches,
patterns from MATH.md's formulas, an explicit least-squares fit with intercept), and on a linear
generative model where the answer is known: the linear estimator recovers the signal exactly, so
its residual carries nothing about ``y`` (ρ ≈ 1), while the filter and a random direction do not.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import STATISTICS, assert_close
from matplotlib.figure import Figure

from pattern_keras.evaluation import (
    QualityResult,
    plot_signal_estimator_quality,
    quality,
    signal_estimator_quality,
)

L = keras.layers
ESTIMATORS = ("random", "filter", "linear", "relu")


# ---------------------------------------------------------------------------------------------
# The brute-force reference


def correlated(shape, seed):
    """Non-isotropic, non-zero-mean data: a common factor per sample plus noise and an offset."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(shape[0],) + (1,) * (len(shape) - 1))
    return (0.3 + rng.normal(size=shape) + 0.7 * common).astype("float32")


def randomize_weights(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(
                [rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()]
            )
    return model


def reference_patterns(x, w, b):
    """MATH.md's estimators in float64 from explicit input vectors ``x`` (n, D)."""
    y = x @ w
    gate = (y + b) > 0
    out = {"filter": (w / np.sum(w * w, axis=0),) * 2}
    cov_xy = (x - x.mean(0)).T @ (y - y.mean(0)) / len(x)
    a = cov_xy / np.sum(w * cov_xy, axis=0)
    out["linear"] = (a, a)
    regimes = []
    for mask in (gate, ~gate):
        n_r = np.maximum(mask.sum(0), 1)
        e_xy = x.T @ (y * mask) / n_r
        e_x = x.T @ mask / n_r
        num = e_xy - e_x * y.mean(0)
        den = np.sum(w * num, axis=0)
        # A regime without samples has no pattern: 0 (MATH.md), never NaN.
        regimes.append(np.where(mask.any(0), num / np.where(mask.any(0), den, 1.0), 0.0))
    out["relu"] = tuple(regimes)
    return out


def reference_rho(x_reg, x_test, w, b, a_pos, a_neg):
    """ρ per neuron by explicit least squares (with intercept) and an explicit correlation."""
    rho = []
    for j in range(w.shape[1]):

        def residual(x, j=j):
            y = x @ w[:, j]
            gate = (y + b[j]) > 0
            scale = np.where(gate, 1.0, 0.0)[:, None]
            return y, x - scale * y[:, None] * a_pos[:, j] - (1 - scale) * y[:, None] * a_neg[:, j]

        y_reg, d_reg = residual(x_reg)
        design = np.column_stack([d_reg, np.ones(len(d_reg))])
        coef = np.linalg.lstsq(design, y_reg, rcond=1e-10)[0]
        y_test, d_test = residual(x_test)
        rho.append(1 - abs(np.corrcoef(y_test, d_test @ coef[:-1])[0, 1]))
    return np.array(rho)


def conv_patches(x, kernel_size, padding, strides):
    """Receptive-field patches of a 2-D convolution, flattened in the kernel's (kh, kw, c) order."""
    x = np.asarray(x, np.float64)
    kh, kw = kernel_size
    sh, sw = strides
    if padding == "same":
        h, w = x.shape[1:3]
        out_h, out_w = -(-h // sh), -(-w // sw)
        ph = max((out_h - 1) * sh + kh - h, 0)
        pw = max((out_w - 1) * sw + kw - w, 0)
        x = np.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)])
    h, w = x.shape[1:3]
    rows = []
    for n in range(len(x)):
        for i in range(0, h - kh + 1, sh):
            for j in range(0, w - kw + 1, sw):
                rows.append(x[n, i : i + kh, j : j + kw, :].reshape(-1))
    return np.array(rows)


def check_against_reference(result, key, inputs, w, b):
    """Patterns and ρ of ``key`` agree with the brute force; ``inputs`` = (fit, reg, test)."""
    fit, reg, test = inputs
    want_patterns = reference_patterns(fit, w, b)
    for name in ESTIMATORS:
        got = result.estimator_patterns[key][name]
        if name == "random":
            np.testing.assert_allclose(np.sum(w * got[0], axis=0), 1.0, rtol=1e-10)
            pair = got
        else:
            for g, want in zip(got, want_patterns[name]):
                assert_close(g, want, STATISTICS, err_msg=f"{key}/{name}")
            pair = want_patterns[name]
        want_rho = reference_rho(reg, test, w, b, *pair)
        np.testing.assert_allclose(
            result.per_neuron[key][name].reshape(-1), want_rho, atol=1e-4, err_msg=f"{key}/{name}"
        )
        assert result[key][name] == pytest.approx(np.mean(want_rho), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Closed form = brute force


def test_dense_layers_match_brute_force():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    hidden = L.Dense(4, activation="relu", name="hidden")(inp)
    out = L.Dense(3, name="logits")(hidden)
    model = randomize_weights(keras.Model(inp, out), seed=1)
    x_train, x_test = correlated((800, 6), seed=2), correlated((400, 6), seed=3)
    result = signal_estimator_quality(model, x_train, x_test, batch_size=128)

    assert isinstance(result, QualityResult) and isinstance(result, dict)
    assert list(result) == ["hidden", "logits"]
    assert result.estimators == ESTIMATORS
    assert result.n_samples == {"hidden": (400, 400), "logits": (400, 400)}
    x64 = lambda a: np.asarray(a, np.float64)
    w1, b1 = (x64(v) for v in model.get_layer("hidden").get_weights())
    w2, b2 = (x64(v) for v in model.get_layer("logits").get_weights())
    splits = (x_train[:400], x_train[400:], x_test)
    check_against_reference(result, "hidden", [x64(s) for s in splits], w1, b1)
    hidden = [np.maximum(x64(s) @ w1 + b1, 0) for s in splits]
    check_against_reference(result, "logits", hidden, w2, b2)


@pytest.mark.parametrize("padding,strides", [("same", (1, 1)), ("valid", (2, 1))])
def test_conv_layer_matches_brute_force(padding, strides):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 5, 2))
    h = L.Conv2D(3, (3, 2), padding=padding, strides=strides, activation="relu", name="conv")(inp)
    out = L.Dense(2, name="logits")(L.Flatten()(h))
    model = randomize_weights(keras.Model(inp, out), seed=4)
    x_train, x_test = correlated((300, 6, 5, 2), seed=5), correlated((150, 6, 5, 2), seed=6)
    result = signal_estimator_quality(
        model, x_train, x_test, batch_size=64, layers=["conv"], max_patches=10**6
    )
    assert list(result) == ["conv"]
    assert result.per_neuron["conv"]["relu"].shape == (3,)
    kernel, bias = (np.asarray(v, np.float64) for v in model.get_layer("conv").get_weights())
    w = kernel.reshape(-1, 3)
    splits = (x_train[:150], x_train[150:], x_test)
    patches = [conv_patches(s, (3, 2), padding, strides) for s in splits]
    assert result.n_samples["conv"] == (len(patches[1]), len(patches[2]))
    check_against_reference(result, "conv", patches, w, bias)


def test_einsum_dense_with_two_neuron_axes_matches_brute_force():
    # Neurons (heads, units) on two output axes, every token one input vector: the layout of
    # attention's value projection.
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4))
    h = L.EinsumDense(
        "abc,cde->abde", output_shape=(5, 2, 3), bias_axes="de", activation="relu", name="proj"
    )(inp)
    model = randomize_weights(keras.Model(inp, L.Dense(2, name="logits")(L.Flatten()(h))), 7)
    x_train, x_test = correlated((240, 5, 4), seed=8), correlated((120, 5, 4), seed=9)
    result = signal_estimator_quality(model, x_train, x_test, batch_size=50, layers=["proj"])
    assert result.per_neuron["proj"]["relu"].shape == (2, 3)
    assert result.n_samples["proj"] == (600, 600)
    kernel, bias = (np.asarray(v, np.float64) for v in model.get_layer("proj").get_weights())
    splits = (x_train[:120], x_train[120:], x_test)
    rows = [np.asarray(s, np.float64).reshape(-1, 4) for s in splits]
    check_against_reference(result, "proj", rows, kernel.reshape(4, 6), bias.reshape(6))


def test_attention_value_projection_matches_brute_force_and_query_key_are_left_out():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4))
    h = L.MultiHeadAttention(2, 3, name="mha")(inp, inp)
    model = keras.Model(inp, L.Dense(1, name="logit")(L.GlobalAveragePooling1D()(h)))
    model = randomize_weights(model, 11)
    x_train, x_test = correlated((240, 5, 4), seed=12), correlated((120, 5, 4), seed=13)
    result = signal_estimator_quality(model, x_train, x_test, batch_size=50)
    assert list(result) == ["mha/value", "mha/attention_output", "logit"]
    value = model.get_layer("mha")._value_dense
    kernel, bias = (np.asarray(v, np.float64) for v in value.get_weights())
    splits = (x_train[:120], x_train[120:], x_test)
    rows = [np.asarray(s, np.float64).reshape(-1, 4) for s in splits]
    check_against_reference(result, "mha/value", rows, kernel.reshape(4, 6), bias.reshape(6))
    with pytest.raises(ValueError, match="no signal"):
        signal_estimator_quality(model, x_train, x_test, layers=["mha/query"])


# ---------------------------------------------------------------------------------------------
# A known answer: the linear generative model


def generative(n, seed, a_s, a_d, noise=0.1):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, size=n)
    eps = rng.normal(size=(n, a_d.shape[1]))
    return (np.outer(y, a_s) + eps @ a_d.T + noise * rng.normal(size=(n, len(a_s)))).astype(
        "float32"
    )


def test_linear_estimator_is_right_on_a_linear_generative_model():
    """x = a_s·y + A_d·ε + noise, explained by the optimal filter (wᵀa_s = 1, wᵀA_d = 0). The
    linear estimator leaves cov(d̂, y) = 0, so ρ → 1 up to sampling error (which shrinks like
    1/√n: about 0.04 at n = 20,000 here, hence the large n). The filter's residual keeps
    (a_s − w/wᵀw)·y, hidden only partly among the distractors; a random direction's keeps ``y``."""
    rng = np.random.default_rng(7)
    dim = 8
    a_s = rng.normal(size=dim)
    a_d = 0.5 * rng.normal(size=(dim, 3))
    w = np.linalg.pinv(np.column_stack([a_s, a_d]).T)[:, 0]
    inp = keras.Input((dim,))
    out = L.Dense(1, use_bias=False, name="filter")(inp)
    model = keras.Model(inp, out)
    model.get_layer("filter").set_weights([w[:, None].astype("float32")])
    x_train = generative(60000, 8, a_s, a_d)
    x_test = generative(20000, 9, a_s, a_d)
    result = signal_estimator_quality(model, x_train, x_test, batch_size=4096, max_patches=10**6)
    rho = result["filter"]
    assert rho["linear"] > 0.97, rho
    assert rho["relu"] > 0.97, rho  # zero-mean distractors: both regimes find a_s too
    assert rho["linear"] > rho["filter"] + 0.2, rho
    assert rho["random"] < 0.2, rho
    # The linear pattern is a_s (up to the noise the filter lets through).
    a = result.estimator_patterns["filter"]["linear"][0][:, 0]
    cosine = a @ a_s / np.linalg.norm(a) / np.linalg.norm(a_s)
    assert cosine > 0.99


# ---------------------------------------------------------------------------------------------
# Range, options, errors


@pytest.fixture(scope="module")
def relu_net():
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = L.MaxPooling2D()(h)
    h = L.Dense(6, activation="relu", name="fc")(L.Flatten()(h))
    model = keras.Model(inp, L.Dense(2, name="logits")(h))
    return model, correlated((400, 8, 8, 1), seed=10), correlated((200, 8, 8, 1), seed=11)


def test_values_in_unit_interval_and_shapes(relu_net):
    model, x_train, x_test = relu_net
    result = signal_estimator_quality(model, x_train, x_test, max_patches=2000)
    assert list(result) == ["conv", "fc", "logits"]
    for key, per_layer in result.items():
        assert list(per_layer) == list(ESTIMATORS)
        for name, value in per_layer.items():
            rho = result.per_neuron[key][name]
            finite = rho[np.isfinite(rho)]
            assert np.all((finite >= 0) & (finite <= 1)), (key, name, rho)
            assert finite.size > 0, (key, name)
            assert value == pytest.approx(float(np.mean(finite)), rel=1e-9), (key, name)
    assert result.per_neuron["conv"]["linear"].shape == (4,)
    assert result.per_neuron["fc"]["relu"].shape == (6,)
    # The conv layer has 36 positions × 200 samples per split: subsampled to about 2000.
    n_reg, n_test = result.n_samples["conv"]
    assert 2000 <= n_reg <= 2000 + 10 and 2000 <= n_test <= 2000 + 10


def test_seeded_and_estimator_subset(relu_net):
    model, x_train, x_test = relu_net
    first = signal_estimator_quality(
        model, x_train, x_test, estimators=["random", "linear"], seed=5, max_patches=1500
    )
    again = signal_estimator_quality(
        model, x_train, x_test, estimators=("random", "linear"), seed=5, max_patches=1500
    )
    assert first == again
    assert first.estimators == ("random", "linear")
    assert all(list(v) == ["random", "linear"] for v in first.values())


def test_dead_neuron_is_nan_and_left_out_of_the_mean():
    inp = keras.Input((4,))
    out = L.Dense(2, name="d")(inp)
    model = keras.Model(inp, out)
    # Neuron 1 looks only at an input that never varies: y is constant.
    model.get_layer("d").set_weights(
        [np.array([[1, 0], [0.5, 0], [0, 0], [0, 1]], "float32"), np.zeros(2, "float32")]
    )
    x = correlated((400, 4), seed=1)
    x[:, 3] = 2.0
    result = signal_estimator_quality(model, x[:300], x[300:], estimators=("linear", "filter"))
    rho = result.per_neuron["d"]["linear"]
    assert np.isfinite(rho[0]) and np.isnan(rho[1])
    assert result["d"]["linear"] == pytest.approx(rho[0])


def reference_ridge_rho(x_reg, x_test, w, b, a_pos, a_neg, ridge):
    """ρ per neuron with the closed form's own regression: ridge ``λ = ridge · trace(Σ_xx) / D``,
    solved stably as an augmented least-squares problem on explicit residuals."""
    dim = x_reg.shape[1]
    lam = ridge * np.trace(np.cov(x_reg.T, bias=True)) / dim
    rho = []
    for j in range(w.shape[1]):

        def residual(x, j=j):
            y = x @ w[:, j]
            gate = ((y + b[j]) > 0)[:, None]
            return y, x - np.where(gate, y[:, None] * a_pos[:, j], y[:, None] * a_neg[:, j])

        y_reg, d_reg = residual(x_reg)
        n = len(y_reg)
        design = np.vstack([(d_reg - d_reg.mean(0)) / np.sqrt(n), np.sqrt(lam) * np.eye(dim)])
        target = np.concatenate([(y_reg - y_reg.mean()) / np.sqrt(n), np.zeros(dim)])
        v = np.linalg.lstsq(design, target, rcond=None)[0]
        y_test, d_test = residual(x_test)
        rho.append(1 - abs(np.corrcoef(y_test, d_test @ v)[0, 1]))
    return np.array(rho)


@pytest.fixture(scope="module")
def dead_unit_net():
    """A Dense layer whose input has constant-zero features: 4 of the 10 ReLU units before it
    never fire, so Σ_xx is singular (the ridge is all that stands in those directions)."""
    rng = np.random.default_rng(0)
    inp = keras.Input((6,))
    h = L.Dense(10, activation="relu", name="hidden")(inp)
    model = keras.Model(inp, L.Dense(4, name="d")(h))
    w1, b1 = rng.normal(size=(6, 10)).astype("float32"), np.zeros(10, "float32")
    b1[:4] = -100.0  # dead units
    w2 = rng.normal(size=(10, 4)).astype("float32")
    b2 = np.array([0.5, 0.0, -0.5, 0.0], "float32")
    model.get_layer("hidden").set_weights([w1, b1])
    model.get_layer("d").set_weights([w2, b2])
    x = correlated((600, 6), seed=0)
    hidden = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0)
    assert np.all(hidden[:, :4] == 0)
    return model, x, hidden, w2.astype(np.float64), b2.astype(np.float64)


def test_constant_zero_inputs_match_the_ridge_regression(dead_unit_net):
    model, x, hidden, w, b = dead_unit_net
    result = signal_estimator_quality(model, x[:400], x[400:], layers=["d"])
    for name in ESTIMATORS:
        rho = result.per_neuron["d"][name]
        assert np.all(np.isfinite(rho)) and np.all((rho >= 0) & (rho <= 1)), (name, rho)
        want = reference_ridge_rho(
            hidden[200:400], hidden[400:], w, b, *result.estimator_patterns["d"][name], ridge=1e-6
        )
        np.testing.assert_allclose(rho, want, atol=1e-4, err_msg=name)


def test_numerically_singular_update_does_not_raise(dead_unit_net):
    """Regression: with constant-zero inputs and a ridge too small to register in float64, the
    4 × 4 Woodbury systems are numerically singular and ``np.linalg.solve`` raised
    ``LinAlgError: Singular matrix`` (as on a trained model with dead ReLU units). The values at
    such a ridge are not accurate; what is checked is that the solve survives with ρ ∈ [0, 1]."""
    model, x, _, _, _ = dead_unit_net
    result = signal_estimator_quality(model, x[:400], x[400:], layers=["d"], ridge=1e-17)
    for name in ESTIMATORS:
        rho = result.per_neuron["d"][name]
        assert np.all(np.isfinite(rho)) and np.all((rho >= 0) & (rho <= 1)), (name, rho)


def test_small_solve_falls_back_to_least_squares_only_where_singular():
    rng = np.random.default_rng(0)
    inner = np.eye(4) + 0.3 * rng.normal(size=(3, 4, 4))
    inner[1] = [[1, 0, 0, 0], [4.4, 5.4, 0, 0], [-2, -2, 1, -1], [-2, -2, 0, 0]]  # rank 3
    rhs = rng.normal(size=(3, 4))
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.solve(inner, rhs[..., None])
    got = quality._solve_small(inner, rhs)
    for j in (0, 2):  # the regular systems: exactly as before
        np.testing.assert_array_equal(got[j], np.linalg.solve(inner[j], rhs[j]))
    np.testing.assert_allclose(got[1], np.linalg.lstsq(inner[1], rhs[1], rcond=None)[0])
    regular = inner[[0, 2]]
    np.testing.assert_array_equal(
        quality._solve_small(regular, rhs[[0, 2]]),
        np.linalg.solve(regular, rhs[[0, 2], :, None])[..., 0],
    )


def test_layer_decomposition_is_computed_once_per_layer(relu_net, monkeypatch):
    model, x_train, x_test = relu_net
    calls = []
    eigh = np.linalg.eigh
    monkeypatch.setattr(
        np.linalg, "eigh", lambda a, *args, **kw: calls.append(a.shape) or eigh(a, *args, **kw)
    )
    signal_estimator_quality(model, x_train, x_test, max_patches=500)
    assert calls == [(9, 9), (36, 36), (6, 6)]  # one per layer, not per layer and estimator


def test_errors(relu_net):
    model, x_train, x_test = relu_net
    with pytest.raises(ValueError, match="estimators"):
        signal_estimator_quality(model, x_train, x_test, estimators=("gradient",))
    with pytest.raises(ValueError, match="max_dim"):
        signal_estimator_quality(model, x_train, x_test, max_dim=20)
    with pytest.raises(ValueError, match="not Dense/convolution"):
        signal_estimator_quality(model, x_train, x_test, layers=["nope"])
    with pytest.raises(ValueError, match="shape"):
        signal_estimator_quality(model, x_train[:, :4], x_test)
    with pytest.raises(ValueError, match="at least 4"):
        signal_estimator_quality(model, x_train[:3], x_test)


def test_depthwise_layer_is_skipped_with_a_warning():
    inp = keras.Input((6, 6, 2))
    h = L.DepthwiseConv2D(3, activation="relu", name="dw")(inp)
    out = L.Dense(2, name="logits")(L.Flatten()(h))
    model = keras.Model(inp, out)
    x = correlated((60, 6, 6, 2), seed=0)
    with pytest.warns(UserWarning, match="skips layer 'dw'"):
        result = signal_estimator_quality(model, x[:40], x[40:], estimators=("filter",))
    assert list(result) == ["logits"]
    with pytest.raises(ValueError, match="'dw' cannot be evaluated"):
        signal_estimator_quality(model, x[:40], x[40:], layers=["dw"])


def test_einsum_whose_neurons_index_the_input_is_skipped_with_a_warning():
    # "abc,cbd->abd": token b has its own kernel, so neuron (b, d) reads token b only.
    inp = keras.Input((4, 3))
    h = L.EinsumDense("abc,cbd->abd", output_shape=(4, 2), name="per_token")(inp)
    model = keras.Model(inp, L.Dense(1, name="logit")(L.Flatten()(h)))
    x = correlated((60, 4, 3), seed=0)
    with pytest.warns(UserWarning, match="skips layer 'per_token'.*index its input"):
        result = signal_estimator_quality(model, x[:40], x[40:], estimators=("filter",))
    assert list(result) == ["logit"]


# ---------------------------------------------------------------------------------------------
# The plot


def test_plot_returns_a_figure(relu_net):
    result = QualityResult(
        {
            "conv": {"random": 0.1, "filter": 0.3, "linear": 0.8, "relu": 0.9},
            "fc": {"random": 0.05, "filter": 0.2, "linear": 0.6, "relu": 0.85},
        },
        per_neuron={},
        estimators=ESTIMATORS,
        estimator_patterns={},
        n_samples={},
    )
    fig = plot_signal_estimator_quality(result)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    # Bars per layer (layers are categories: no line joins them), one group per layer.
    assert len(ax.lines) == 0 and len(ax.containers) == 4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv", "fc"]
    np.testing.assert_allclose([b.get_height() for b in ax.containers[3]], [0.9, 0.85])
    # The two-component bar of each layer sits inside that layer's group.
    centres = [b.get_x() + b.get_width() / 2 for b in ax.containers[3]]
    assert abs(centres[0] - 0) < 0.5 and abs(centres[1] - 1) < 0.5
    # Titled, and ρ(S) explained under the axes.
    assert "ρ(S)" in ax.get_title()
    assert any("x − S(x)" in t.get_text() for t in fig.texts)

    other = Figure()
    ax = other.add_subplot()
    assert plot_signal_estimator_quality({"a": {"linear": 0.5}}, ax=ax) is other
    with pytest.raises(ValueError, match="empty"):
        plot_signal_estimator_quality({})
