"""The layers of real models and the rule table, against independent references.

Small chains ``input → preprocessing → Dense → activation → ... → Dense logits`` built from the new
layers are explained by every analyzer and compared with a float64 numpy backward pass written
from the rule table (README, "Rule table"): the gradient family takes the exact derivative;
DeConvNet rectifies at ReLU and gating activations; Guided BackProp multiplies by ``g(z)`` and
rectifies; LRP passes relevance through activations and takes the z-rule at Dense layers and
elementwise affine maps; PatternNet/PatternAttribution multiply by ``g(z)``. ``g`` is written in
closed form here (the library computes ``f(z)/z``). LayerNormalization is exact for the
gradient and a linear map with its scale held for LRP, DeConvNet, Guided BackProp and the
pattern methods. A Multiply by a gate (``x·sigmoid(x)``, squeeze-and-excitation) sends nothing
into the gate's branch, and the two spellings of swish and hard swish give the same explanation
for every analyzer.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import EVERY_ANALYZER
from keras.src.applications.convnext import LayerScale
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
from scipy.special import erf

import pattern_keras as pk
from pattern_keras import engine

L = keras.layers


@pytest.fixture(autouse=True)
def eagerly(request):
    """Small models run eagerly (the same rule code, op by op; tracing dozens of analyzers
    costs more than running them); a test marked ``compiled`` runs as users run it."""
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly("compiled" not in request.keywords)
    yield
    tf.config.run_functions_eagerly(previous)


pytestmark = pytest.mark.filterwarnings("ignore:Even though the .*run_functions_eagerly")

SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# g(z) of each gating activation, f(z) = z·g(z), in closed form (params: a slope or alpha).
GATES = {
    "silu": lambda z, p: sigmoid(z),
    "hard_silu": lambda z, p: np.clip(z + 3.0, 0.0, 6.0) / 6.0,
    "gelu": lambda z, p: 0.5 * (1.0 + erf(z / np.sqrt(2.0))),
    "tanh": lambda z, p: np.where(z == 0, 1.0, np.tanh(z) / np.where(z == 0, 1.0, z)),
    "elu": lambda z, p: np.where(z > 0, 1.0, p * np.expm1(z) / np.where(z == 0, 1.0, z)),
    "selu": lambda z, p: (
        SELU_SCALE * np.where(z > 0, 1.0, SELU_ALPHA * np.expm1(z) / np.where(z == 0, 1.0, z))
    ),
    "leaky_relu": lambda z, p: np.where(z > 0, 1.0, p),
    "prelu": lambda z, p: np.where(z > 0, 1.0, p),
}
# ReLU keeps its forward gate in every rule where a gating activation uses g(z) (API.md).
GATES_AND_RELU = dict(GATES, relu=lambda z, p: np.float64(z > 0))
# f'(z) of the other activations.
DERIVATIVES = {
    "sigmoid": lambda z: sigmoid(z) * (1.0 - sigmoid(z)),
    "softplus": lambda z: sigmoid(z),
    "hard_sigmoid": lambda z: ((z > -3.0) & (z < 3.0)) / 6.0,
}


def f_prime(name, z, p):
    """f'(z) for the gradient rows: the derivative of ``z·g(z)`` by a central difference in
    float64 is not exact enough; take it from explicit TF ops on the activation alone."""
    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        if name == "prelu" or name == "leaky_relu":
            y = tf.where(zt > 0, zt, p * zt)
        elif name == "elu":
            y = tf.where(zt > 0, zt, p * tf.math.expm1(zt))
        elif name == "relu":
            y = tf.nn.relu(zt)
        else:
            y = keras.activations.get(name)(zt)
    return tape.gradient(y, zt).numpy()


# ---------------------------------------------------------------------------------------------
# Chain models and their numpy backward pass


def activation_layer(name):
    """The layer for an activation name, and its parameter (slope / alpha) for the reference."""
    if name == "leaky_relu":
        return L.LeakyReLU(negative_slope=0.15), 0.15
    if name == "prelu":
        return L.PReLU(), None
    if name == "elu_layer":
        return L.ELU(alpha=0.7), 0.7
    return L.Activation(name), 1.0


def chain_model(activations, preprocessing=True, layer_norm=False, final_sigmoid=False, seed=0):
    """``x → [Rescaling → Normalization (adapted)] → Dense → act₁ → [LayerNorm] → LayerScale →
    x·1.5 + 0.25 → Dense → act₂ → ... → Dense(3)``; returns the model and a recipe for the
    numpy reference (one step per op)."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    data = rng.normal(1.0, 2.0, (64, 6)).astype("float32")
    x = keras.Input((6,))
    h, steps = x, []
    if preprocessing:
        rescale = L.Rescaling(scale=0.5, offset=0.2)
        norm = L.Normalization(axis=-1)
        norm.adapt(rescale(data))
        h = norm(rescale(h))
        steps.append(("affine", np.full(6, 0.5), np.full(6, 0.2)))
        sd = np.maximum(np.sqrt(np.float64(norm.variance.numpy()).ravel()), 1e-7)
        mean = np.float64(norm.mean.numpy()).ravel()
        steps.append(("affine", 1.0 / sd, -mean / sd))
    for i, name in enumerate(activations):
        dense = L.Dense(5, name=f"dense{i}")
        h = dense(h)
        steps.append(("dense", dense))
        layer, param = activation_layer(name)
        h = layer(h)
        if name == "prelu":
            layer.alpha.assign(rng.uniform(0.05, 0.4, layer.alpha.shape).astype("float32"))
            param = np.float64(layer.alpha.numpy())
        steps.append(("act", "elu" if name == "elu_layer" else name, param))
        if layer_norm:
            ln = L.LayerNormalization(epsilon=1e-3)
            h = ln(h)
            ln.gamma.assign(rng.uniform(0.5, 1.5, 5).astype("float32"))
            ln.beta.assign(rng.normal(0, 0.2, 5).astype("float32"))
            steps.append(("ln", ln))
        scale = LayerScale(0.5, 5)
        h = scale(h)
        scale.gamma.assign(rng.uniform(0.5, 1.5, 5).astype("float32"))
        steps.append(("affine", np.float64(scale.gamma.numpy()), np.zeros(5)))
        h = h * 1.5 + 0.25
        steps.append(("affine", np.full(5, 1.5), np.full(5, 0.25)))
    out = L.Dense(3, name="logits", activation="sigmoid" if final_sigmoid else None)
    h = out(h)
    steps.append(("dense", out))
    return keras.Model(x, h), steps, data


def layer_norm_jacobian(u, ln):
    """Per-sample Jacobian of LayerNorm at ``u`` (n, d): exact and with 1/σ held."""
    d = u.shape[1]
    mean = u.mean(1, keepdims=True)
    var = u.var(1, keepdims=True)
    inv = 1.0 / np.sqrt(var + ln.epsilon)
    gamma = np.float64(ln.gamma.numpy())
    centre = np.eye(d) - 1.0 / d
    c = u - mean
    # held: J = γ_j/σ (δ_jk − 1/d);  exact adds −γ_j c_j c_k / (d σ³)
    held = inv[:, :, None] * gamma[None, :, None] * centre[None]
    exact = held - (gamma[None, :, None] * c[:, :, None] * c[:, None, :] * inv[:, :, None] ** 3 / d)
    return exact, held


def chain_forward(steps, x):
    """Values before and after each step (float64)."""
    values = [np.float64(x)]
    for step in steps:
        v = values[-1]
        if step[0] == "affine":
            values.append(v * step[1] + step[2])
        elif step[0] == "dense":
            layer = step[1]
            values.append(v @ np.float64(layer.kernel.numpy()) + np.float64(layer.bias.numpy()))
        elif step[0] == "act":
            _, name, p = step
            if name in GATES_AND_RELU:
                values.append(v * GATES_AND_RELU[name](v, p))
            else:
                values.append(np.float64(keras.activations.get(name)(tf.constant(v)).numpy()))
        elif step[0] == "ln":
            ln = step[1]
            mean, var = v.mean(1, keepdims=True), v.var(1, keepdims=True)
            values.append(
                (v - mean) / np.sqrt(var + ln.epsilon) * np.float64(ln.gamma.numpy())
                + np.float64(ln.beta.numpy())
            )
    return values


def chain_reference(method, steps, x, patterns=None):
    """The rule table's backward pass through the chain, float64. ``patterns``: {name: (a₊, a₋
    or None)} for PatternNet ("A") and PatternAttribution ("WA")."""
    values = chain_forward(steps, x)
    y = values[-1]
    sel = np.argmax(y, axis=1)
    seed = np.zeros_like(y)
    seed[np.arange(len(y)), sel] = (
        1.0 if method in ("gradient", "ixg") else y[np.arange(len(y)), sel]
    )
    g = seed
    for i in range(len(steps) - 1, -1, -1):
        step, v_in, v_out = steps[i], values[i], values[i + 1]
        if step[0] == "dense":
            w = np.float64(step[1].kernel.numpy())
            if method in ("lrpz",):
                g = v_in * ((g / np.where(v_out == 0, 1.0, v_out) * (v_out != 0)) @ w.T)
            elif method in ("A", "WA"):
                a_pos, a_neg = patterns[step[1].name]
                k_pos = a_pos if method == "A" else w * a_pos
                if a_neg is None:
                    g = g @ k_pos.T
                else:
                    k_neg = a_neg if method == "A" else w * a_neg
                    g = (g * (v_out > 0)) @ k_pos.T + (g * (v_out <= 0)) @ k_neg.T
            else:
                g = g @ w.T
        elif step[0] == "affine":
            if method == "lrpz":
                g = v_in * step[1] * np.where(v_out == 0, 0.0, g / np.where(v_out == 0, 1.0, v_out))
            else:
                g = g * step[1]
        elif step[0] == "ln":
            exact, held = layer_norm_jacobian(v_in, step[1])
            if method == "lrpz":
                g = v_in * np.einsum("nj,njk->nk", g / v_out, held)
            elif method in ("A", "WA", "deconvnet", "guided"):
                # Every rule-based analyzer holds the scale; the gradient family does not.
                g = np.einsum("nj,njk->nk", g, held)
            else:
                g = np.einsum("nj,njk->nk", g, exact)
        elif step[0] == "act":
            _, name, p = step
            gating = name in GATES_AND_RELU
            if method == "lrpz":
                pass
            elif method == "deconvnet" and gating:
                g = np.maximum(g, 0.0)
            elif method == "guided" and gating:
                g = np.maximum(g * GATES_AND_RELU[name](v_in, p), 0.0)
            elif method in ("A", "WA") and gating:
                g = g * GATES_AND_RELU[name](v_in, p)
            elif gating or method in ("gradient", "ixg"):
                g = g * f_prime(name, v_in, p)
            else:
                g = g * DERIVATIVES[name](v_in)
    return g * x if method == "ixg" else g


ANALYZERS = {
    "gradient": pk.Gradient,
    "ixg": pk.InputTimesGradient,
    "deconvnet": pk.DeConvNet,
    "guided": pk.GuidedBackprop,
    "lrpz": pk.LRPZ,
}


def check_chain(model, steps, data, x, rtol=2e-4):
    for method, cls in ANALYZERS.items():
        got = cls(model).analyze(x)
        want = chain_reference(method, steps, x)
        scale = np.abs(want).max()
        assert scale > 0, method
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale, err_msg=method)
    for method, cls in (("A", pk.PatternNet), ("WA", pk.PatternAttribution)):
        analyzer = cls(model).fit(data, batch_size=32, verbose=0)
        patterns = {}
        for key in analyzer.patterns:
            a_neg = (
                np.float64(analyzer.patterns.negative(key))
                if analyzer.patterns.has_negative(key)
                else None
            )
            patterns[key] = (np.float64(analyzer.patterns[key]), a_neg)
        got = analyzer.analyze(x)
        want = chain_reference(method, steps, x, patterns)
        np.testing.assert_allclose(
            got, want, rtol=0, atol=rtol * np.abs(want).max(), err_msg=method
        )
    return analyzer


GATING = ["silu", "hard_silu", "gelu", "tanh", "elu", "selu", "leaky_relu", "prelu"]
OTHER = ["sigmoid", "softplus", "hard_sigmoid"]


@pytest.mark.parametrize(
    "activations",
    [
        ["silu", "gelu", "tanh"],
        ["hard_silu", "elu", "selu"],
        ["leaky_relu", "prelu", "elu_layer"],
        ["sigmoid", "softplus", "hard_sigmoid"],
        ["relu", "silu"],
    ],
)
def test_activation_rows_and_affine_layers_equal_reference(activations):
    model, steps, data = chain_model(activations)
    x = data[:5]
    analyzer = check_chain(model, steps, data, x)
    # A linear layer followed by a non-ReLU gating activation keeps both regimes.
    for i, name in enumerate(activations):
        assert analyzer.patterns.has_negative(f"dense{i}") == (name != "relu"), name


def test_layer_norm_exact_for_gradient_held_for_the_rule_based_analyzers():
    model, steps, data = chain_model(["silu", "relu"], layer_norm=True, seed=3)
    check_chain(model, steps, data, data[:5])
    # The held forward pass computes the same values as the layer.
    program = engine.Program(model)
    ln = [op for op in program.ops if op.held is not None]
    assert len(ln) == 2
    values = engine.forward(program, [tf.constant(data[:5])])
    for op in ln:
        np.testing.assert_allclose(
            op.held([values[op.inputs[0]]])[0].numpy(),
            values[op.outputs[0]].numpy(),
            rtol=1e-5,
            atol=1e-5,
        )


def test_final_sigmoid_is_stripped():
    with_sigmoid, _, data = chain_model(["silu"], final_sigmoid=True, seed=4)
    without, steps, _ = chain_model(["silu"], final_sigmoid=False, seed=4)
    program = engine.Program(with_sigmoid)
    assert program.ops[-1].kind == "linear"
    for cls in (pk.Gradient, pk.LRPZ, pk.GuidedBackprop):
        np.testing.assert_allclose(
            cls(with_sigmoid).analyze(data[:4]),
            chain_reference(
                {pk.Gradient: "gradient", pk.LRPZ: "lrpz", pk.GuidedBackprop: "guided"}[cls],
                steps,
                data[:4],
            ),
            rtol=1e-4,
            atol=1e-6,
        )


def test_normalization_invert_and_identity_augmentation():
    """An inverting Normalization is ``x·σ + μ``; the augmentation layers are the identity at
    inference; each is explained as the reference chain says."""
    rng = np.random.default_rng(5)
    mean, var = rng.normal(0, 1, 4), rng.uniform(0.5, 2.0, 4)
    keras.utils.set_random_seed(5)
    x = keras.Input((3, 3, 4))
    h = L.Normalization(axis=-1, mean=mean, variance=var, invert=True)(x)
    for layer in (
        L.RandomFlip(),
        L.RandomRotation(0.2),
        L.RandomZoom(0.2),
        L.RandomTranslation(0.1, 0.1),
        L.RandomContrast(0.3),
        L.RandomBrightness(0.2),
    ):
        h = layer(h)
    h = L.Reshape((36,))(h)
    dense, out = L.Dense(5), L.Dense(3)
    model = keras.Model(x, out(L.Activation("gelu")(dense(h))))
    program = engine.Program(model)
    assert [op.kind for op in program.ops][:8] == ["affine"] + ["move"] * 7
    steps = [
        ("affine", np.tile(np.sqrt(var), 9), np.tile(mean, 9)),
        ("dense", dense),
        ("act", "gelu", None),
        ("dense", out),
    ]
    data = rng.normal(0, 1, (40, 3, 3, 4)).astype("float32")
    flat = data.reshape(40, 36)
    values = engine.forward(program, [tf.constant(data)])
    np.testing.assert_allclose(
        values[program.output].numpy(), chain_forward(steps, flat)[-1], rtol=1e-4, atol=1e-4
    )

    class Flat:  # the reference works on flat vectors
        pass

    for method, cls in ANALYZERS.items():
        got = cls(model).analyze(data[:4]).reshape(4, 36)
        want = chain_reference(method, steps, flat[:4])
        np.testing.assert_allclose(
            got, want, rtol=0, atol=2e-4 * np.abs(want).max(), err_msg=method
        )


def test_dense_on_rank_4_patterns_per_output_unit():
    """Dense on (batch, h, w, c): one pattern per output unit, statistics summed over every
    leading position, equal to a numpy estimator on the flattened positions."""
    keras.utils.set_random_seed(6)
    x = keras.Input((4, 4, 3))
    dense = L.Dense(5, name="pointwise")
    h = L.Activation("gelu")(dense(x))
    model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
    data = np.random.default_rng(6).normal(0.5, 1.0, (16, 4, 4, 3)).astype("float32")
    net = pk.PatternNet(model).fit(data, batch_size=8, verbose=0)
    X = np.float64(data.reshape(-1, 3))
    w, b = np.float64(dense.kernel.numpy()), np.float64(dense.bias.numpy())
    for o in range(5):
        y = X @ w[:, o]
        z = y + b[o]
        for mask, got in (
            (z > 0, net.patterns["pointwise"][:, o]),
            (z <= 0, net.patterns.negative("pointwise")[:, o]),
        ):
            num = (X[mask] * y[mask, None]).mean(0) - X[mask].mean(0) * y.mean()
            np.testing.assert_allclose(got, num / (w[:, o] @ num), rtol=1e-4, atol=1e-5)
    tape_check(model, data[:3])


def tape_check(model, x):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        selected = tf.reduce_sum(tf.reduce_max(model(xt), axis=1))
    want = tape.gradient(selected, xt).numpy()
    np.testing.assert_allclose(
        pk.Gradient(model).analyze(x), want, rtol=0, atol=1e-5 * np.abs(want).max()
    )


# ---------------------------------------------------------------------------------------------
# Products: the two spellings of swish and hard swish, squeeze-and-excitation, refusals


def hard_sigmoid_as_ops(h):
    return L.ReLU(6.0)(h + 3.0) * (1.0 / 6.0)


SPELLINGS = {
    "swish": (
        lambda h: L.Activation("swish")(h),
        lambda h: L.Multiply()([h, L.Activation("sigmoid")(h)]),
    ),
    "silu_ops": (lambda h: L.Activation("silu")(h), lambda h: keras.ops.sigmoid(h) * h),
    "hard_swish": (
        lambda h: L.Activation("hard_swish")(h),
        lambda h: L.Multiply()([h, hard_sigmoid_as_ops(h)]),
    ),
}


def spelled(activation, seed=7):
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,))
    h = activation(L.Dense(8, name="d1")(x))
    h = activation(L.Dense(6, name="d2")(h))
    return keras.Model(x, L.Dense(3, name="out")(h))


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_two_spellings_give_the_same_explanation(name):
    one, other = (spelled(f) for f in SPELLINGS[name])
    other.set_weights(one.get_weights())
    data = np.random.default_rng(8).normal(0, 2, (32, 6)).astype("float32")
    x = data[:6]
    np.testing.assert_allclose(
        one.predict(x, verbose=0), other.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    for cls in EVERY_ANALYZER:
        a, b = make(cls, one), make(cls, other)
        if cls in (pk.PatternNet, pk.PatternAttribution):
            a.fit(data, verbose=0)
            b.fit(data, verbose=0)
        ra, rb = a.analyze(x), b.analyze(x)
        assert np.abs(ra).max() > 0, cls.__name__
        np.testing.assert_allclose(
            ra, rb, rtol=0, atol=1e-5 * np.abs(ra).max(), err_msg=cls.__name__
        )


def make(cls, model):
    """An analyzer with few samples / steps where it has them (SmoothGrad's noise is seeded)."""
    if cls is pk.SmoothGrad:
        return cls(model, samples=4, noise_scale=0.1, seed=1)
    if cls is pk.IntegratedGradients:
        return cls(model, steps=4)
    return cls(model)


def squeeze_excitation_model(spatial=3, seed=9):
    """``h = relu(Dense(x))`` per position, gate ``s = sigmoid(Dense(mean_p h))`` broadcast over
    positions, ``h·s`` → Flatten → logits."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((spatial, 4))
    d1, se, out = L.Dense(5, name="d1"), L.Dense(5, name="se"), L.Dense(3, name="out")
    h = L.Activation("relu")(d1(x))
    s = L.Activation("sigmoid")(se(L.GlobalAveragePooling1D(keepdims=True)(h)))
    model = keras.Model(x, out(L.Flatten()(L.Multiply()([h, s]))))
    return model, (d1, se, out)


@pytest.mark.parametrize("spatial", [3, 1])
def test_squeeze_excitation_gate(spatial):
    """Numpy reference: the gate ``s`` multiplies the signal to ``h`` (for every method but the
    gradient family, whose product rule also crosses the gate's branch: checked by the tape);
    nothing goes into the gate's branch. At one position the shapes are equal and the gate is
    the operand computed from the other."""
    model, (d1, se, out) = squeeze_excitation_model(spatial)
    rng = np.random.default_rng(10)
    x = rng.normal(0, 1, (5, spatial, 4)).astype("float32")
    tape_check(model, x)
    w1, b1 = np.float64(d1.kernel.numpy()), np.float64(d1.bias.numpy())
    ws, bs = np.float64(se.kernel.numpy()), np.float64(se.bias.numpy())
    wo, bo = np.float64(out.kernel.numpy()), np.float64(out.bias.numpy())
    X = np.float64(x)
    z1 = X @ w1 + b1
    h = np.maximum(z1, 0)
    s = sigmoid(h.mean(1, keepdims=True) @ ws + bs)
    hs = (h * s).reshape(len(x), -1)
    y = hs @ wo + bo
    sel = y.argmax(1)
    seed = np.zeros_like(y)
    seed[np.arange(len(y)), sel] = y[np.arange(len(y)), sel]
    g_hs = (seed @ wo.T).reshape(h.shape)
    refs = {
        pk.DeConvNet: (np.maximum(np.maximum(g_hs, 0), 0) @ w1.T),
        pk.GuidedBackprop: ((np.maximum(g_hs * s, 0) * (z1 > 0)) @ w1.T),
    }
    r_hs = hs * (np.where(seed != 0, seed / np.where(seed != 0, y, 1.0), 0.0) @ wo.T)
    r_h = r_hs.reshape(h.shape)
    refs[pk.LRPZ] = X * ((r_h / z1 * (z1 != 0)) @ w1.T)
    for cls, want in refs.items():
        np.testing.assert_allclose(
            cls(model).analyze(x),
            want,
            rtol=0,
            atol=1e-5 * np.abs(want).max(),
            err_msg=cls.__name__,
        )
    # DeConvNet rectifies after the product: max(g, 0) at the gate, again at the ReLU.
    program = engine.Program(model)
    product = [op for op in program.ops if op.activation == "product"][0]
    assert product.inputs[1] == program.consumers(product.inputs[1])[0].inputs[1]
    assert program.producer(product.inputs[1]).activation == "sigmoid"


def test_products_that_are_not_gates_are_refused():
    x = keras.Input((4,))
    a, b = L.Dense(3)(x), L.Dense(3)(x)
    # Refused by the rule-based analyzers (the gradient family differentiates them).
    with pytest.raises(ValueError, match="multiplies two tensors.*neither of which is a gate"):
        pk.LRPZ(keras.Model(x, L.Dense(2)(L.Multiply()([a, b]))))
    with pytest.raises(ValueError, match="divides two tensors"):
        pk.LRPZ(keras.Model(x, L.Dense(2)(a / b)))
    with pytest.raises(ValueError, match="multiplies 3 tensors"):
        pk.LRPZ(keras.Model(x, L.Dense(2)(L.Multiply()([a, b, a]))))


def test_custom_scale_layer_and_constant_arithmetic():
    """InceptionResNetV2's ``x + s·r`` and ``x - 0.5``, ``x / 4`` as graph ops: the gradient is
    the tape's; LRP-z splits relevance between the summands in proportion to ``x`` and
    ``s·r`` (numpy)."""
    keras.utils.set_random_seed(11)
    x = keras.Input((4,))
    d1, d2, out = L.Dense(5, name="d1"), L.Dense(5, name="d2"), L.Dense(3, name="out")
    a = d1(x)
    r = d2(x)
    h = CustomScaleLayer(0.3)([a, r])
    h = (h - 0.5) / 4.0
    model = keras.Model(x, out(h))
    data = np.random.default_rng(12).normal(0, 1, (6, 4)).astype("float32")
    tape_check(model, data)
    X = np.float64(data)
    A_ = X @ np.float64(d1.kernel.numpy()) + np.float64(d1.bias.numpy())
    R_ = X @ np.float64(d2.kernel.numpy()) + np.float64(d2.bias.numpy())
    h1 = A_ + 0.3 * R_
    h2 = h1 - 0.5
    h3 = h2 / 4.0
    wo = np.float64(out.kernel.numpy())
    y = h3 @ wo + np.float64(out.bias.numpy())
    sel = y.argmax(1)
    seed = np.zeros_like(y)
    seed[np.arange(6), sel] = y[np.arange(6), sel]
    rel = h3 * ((seed / y) @ wo.T)  # at h3
    rel = h2 * 0.25 * rel / h3  # the division: x·(1/4)·R/z
    rel = h1 * rel / h2  # the subtraction
    ra, rr = A_ * rel / h1, 0.3 * R_ * rel / h1
    want = X * ((ra / A_) @ np.float64(d1.kernel.numpy()).T) + X * (
        (rr / R_) @ np.float64(d2.kernel.numpy()).T
    )
    np.testing.assert_allclose(
        pk.LRPZ(model).analyze(data), want, rtol=0, atol=1e-5 * np.abs(want).max()
    )
    for cls in EVERY_ANALYZER:
        analyzer = make(cls, model)
        if cls in (pk.PatternNet, pk.PatternAttribution):
            analyzer.fit(data, verbose=0)
        assert np.all(np.isfinite(analyzer.analyze(data))), cls.__name__


@pytest.mark.compiled
def test_every_analyzer_on_a_model_of_the_new_layers():
    """A small image model with every new layer kind in one graph (Rescaling, adapted
    Normalization, augmentation, swish/gelu/hard swish, squeeze-and-excitation, LayerNorm,
    LayerScale, Dense on 4-D, leaky ReLU/PReLU/ELU, final sigmoid): every analyzer finite and
    non-zero, three of them compiled as users run them, the others eagerly (same rule code)."""
    keras.utils.set_random_seed(13)
    data = np.random.default_rng(13).uniform(0, 255, (8, 8, 8, 3)).astype("float32")
    x = keras.Input((8, 8, 3))
    norm = L.Normalization(axis=-1)
    norm.adapt(data / 255.0)
    h = L.RandomFlip()(norm(L.Rescaling(1 / 255.0)(x)))
    h = L.Activation("swish")(L.Conv2D(6, 3, padding="same")(h))
    s = L.Conv2D(6, 1, activation="sigmoid")(L.GlobalAveragePooling2D(keepdims=True)(h))
    h = L.Multiply()([h, s])
    h = L.LayerNormalization()(h)
    h = LayerScale(0.5, 8)(L.Activation("gelu")(L.Dense(8)(h)))
    h = L.Activation("hard_swish")(h)
    h = L.ELU()(L.PReLU()(L.LeakyReLU(0.1)(L.Conv2D(4, 3, strides=2)(h))))
    model = keras.Model(x, L.Dense(3, activation="sigmoid")(L.Flatten()(h)))
    xs = data[:3]
    compiled = (pk.Gradient, pk.LRPEpsilon, pk.PatternAttribution)  # traced: 10-30 s each
    for cls in EVERY_ANALYZER:
        eager = cls not in compiled
        tf.config.run_functions_eagerly(eager)
        analyzer = make(cls, model)
        if cls in (pk.PatternNet, pk.PatternAttribution):
            analyzer.fit(data, batch_size=4, verbose=0)
        r = analyzer.analyze(xs)
        what = f"{cls.__name__} ({'eager' if eager else 'compiled'})"
        assert r.shape == xs.shape and np.all(np.isfinite(r)) and np.abs(r).max() > 0, what
