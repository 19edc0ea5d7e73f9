"""Float policies: float64 models, and mixed_float16 / mixed_bfloat16 models.

Linear layers compute in their compute dtype (as the Keras layer does) with patterns cast to it;
per-batch statistics run in float32 (float64 for a float64 model) and accumulate in float64;
patterns are stored float32. Each test restores the global dtype policy and floatx.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L

import pattern_keras as pk


@pytest.fixture
def restore_policy():
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def conv_model(seed: int = 0):
    """3×3 'same' conv (relu) → 1×1 stride-2 conv → BatchNorm → ReLU → Dense (relu) → logits."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    h = L.Conv2D(5, 1, strides=2, name="c2")(h)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.Flatten(name="flat")(L.MaxPooling2D(2, name="pool")(h))
    h = L.Dense(6, activation="relu", name="d1")(h)
    return keras.Model(x, L.Dense(3, name="logits")(h))


def data(n: int = 24, seed: int = 1, offset: float = 0.5):
    return (offset + np.random.default_rng(seed).normal(size=(n, 8, 8, 2))).astype("float32")


def tape_gradient(model, x):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt)
        score = tf.reduce_sum(y * tf.one_hot(tf.argmax(y, 1), y.shape[-1], dtype=y.dtype))
    return tape.gradient(score, xt).numpy()


# ---------------------------------------------------------------------------------------------
# float64


def dense_patterns(X, W, b):
    """Two-component patterns ``(a₊, a₋)`` of a Dense map ``Y = XW + b``, float64 (MATH.md)."""
    Y = X @ W + b
    out = []
    for mask in (Y > 0, Y <= 0):
        a = np.zeros_like(W)
        for k in range(W.shape[1]):
            m = mask[:, k]
            ex = X[m].mean(0)
            exy = (X[m] * Y[m, k : k + 1]).mean(0)
            num = exy - ex * Y[:, k].mean()
            a[:, k] = num / (W[:, k] @ num)
        out.append(a)
    return Y, out


def test_float64_model_gradient_and_patterns(restore_policy):
    """Gradient equals the float64 tape; patterns equal a float64 numpy reference (a 1×1
    stride-2 convolution is a Dense map on every other position)."""
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # once any layer exists, floatx alone is not read
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 1, strides=2, activation="relu", name="conv")(inp)
    model = keras.Model(inp, L.Dense(3, name="logits")(L.Flatten()(h)))
    assert model.get_layer("conv").kernel.dtype == "float64"
    # A large offset: float32 per-batch products would lose digits here.
    x = 100.0 + np.random.default_rng(3).normal(size=(40, 6, 6, 3))
    # Biases at the median pre-activation: every neuron active on about half of its samples.
    conv, logits = model.get_layer("conv"), model.get_layer("logits")
    X = x[:, ::2, ::2, :].reshape(-1, 3)
    conv.bias.assign(-np.median(X @ conv.kernel.numpy()[0, 0], axis=0))
    H = np.maximum(X @ conv.kernel.numpy()[0, 0] + conv.bias.numpy(), 0).reshape(len(x), -1)
    logits.bias.assign(-np.median(H @ logits.kernel.numpy(), axis=0))

    grad = pk.Gradient(model).analyze(x)
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, tape_gradient(model, x), rtol=1e-12, atol=1e-12)

    analyzer = pk.PatternAttribution(model).fit(x, batch_size=16, verbose=0)
    _, (a_conv, _) = dense_patterns(X, conv.kernel.numpy()[0, 0], conv.bias.numpy())
    _, (a_pos, a_neg) = dense_patterns(H, logits.kernel.numpy(), logits.bias.numpy())
    patterns = analyzer.patterns
    assert patterns["conv"].dtype == np.float32
    np.testing.assert_allclose(patterns["conv"][0, 0], a_conv, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(patterns["logits"], a_pos, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(patterns.negative("logits"), a_neg, rtol=1e-5, atol=1e-7)
    out = analyzer.analyze(x[:4])
    assert out.dtype == np.float64 and np.all(np.isfinite(out)) and np.abs(out).max() > 0


# ---------------------------------------------------------------------------------------------
# mixed precision


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)])
def test_mixed_policy_every_analyzer_and_fit(restore_policy, policy, tolerance):
    """Every analyzer and the fit run; Gradient equals the mixed model's own tape; the patterns
    match those of a float32 copy of the model within ``tolerance`` of each layer's largest
    (measured: 2.4e-3 for float16, 1.9e-2 for bfloat16, at the logits)."""
    keras.config.set_dtype_policy(policy)
    model = conv_model()
    assert model.get_layer("c1").compute_dtype != "float32"
    keras.config.set_dtype_policy("float32")
    reference = conv_model()
    reference.set_weights(model.get_weights())
    x = data()

    grad = pk.Gradient(model).analyze(x)
    want = tape_gradient(model, x)
    # The replay computes as the layers do, so a quarter of the tolerance: identical on some
    # CPUs; on others a few bfloat16 values round one bfloat16 step (2⁻⁸ relative) apart, up to
    # 0.85 % of the largest (measured: 12 of 3072).
    np.testing.assert_allclose(grad, want, rtol=0, atol=0.25 * tolerance * np.abs(want).max())

    fitted = pk.PatternAttribution(model).fit(x, batch_size=8, verbose=0)
    expected = pk.PatternAttribution(reference).fit(x, batch_size=8, verbose=0).patterns
    for key in expected:
        got, want = fitted.patterns[key], expected[key]
        assert got.dtype == np.float32
        np.testing.assert_allclose(
            got, want, rtol=0, atol=tolerance * np.abs(want).max(), err_msg=key
        )
    np.testing.assert_allclose(
        fitted.patterns.negative("logits"),
        expected.negative("logits"),
        rtol=0,
        atol=tolerance * np.abs(expected.negative("logits")).max(),
    )

    options = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 4}}
    for name in pk.analyzer_names():
        kwargs = dict(options.get(name, {}))
        if name.startswith("pattern."):
            kwargs["patterns"] = fitted.patterns
        out = pk.create_analyzer(name, model, **kwargs).analyze(x[:4])
        assert out.shape == x[:4].shape, name
        assert np.all(np.isfinite(out)) and np.abs(out).max() > 0, name
