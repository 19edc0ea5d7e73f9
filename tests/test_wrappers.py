"""IntegratedGradients and SmoothGrad: completeness, exactness on linear models, the relative
noise scale, seeding, batching invariance, selection modes and errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, assert_close, mlp

import pattern_keras as pk

L = keras.layers


def cnn(seed=1):
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    h = L.MaxPooling2D(2)(h)
    h = L.Flatten()(h)
    return keras.Model(x, L.Dense(3)(h))


def data(shape=(6, 10), seed=3):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def selected(model, x, idx=None):
    y = model(x).numpy().reshape(len(x), -1)
    if idx is None:
        idx = y.argmax(1)
    return np.asarray(idx), y


@pytest.fixture(scope="module")
def small():
    return mlp()


# ---------------------------------------------------------------------------------------------
# Integrated Gradients


@pytest.mark.parametrize("method", ["midpoint", "trapezoid"])
@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_integrated_gradients_completeness(small, method, baseline):
    x = data()
    base = 0.0 if baseline == "zero" else data((10,), seed=9)
    ig = pk.IntegratedGradients(
        small, steps=2048, baseline=base, method=method, inner_batch_size=4096
    )
    attributions = ig.analyze(x)
    idx, y = selected(small, x)
    y_base = small(np.broadcast_to(np.float32(base), x.shape)).numpy()
    want = y[np.arange(len(x)), idx] - y_base[np.arange(len(x)), idx]
    np.testing.assert_allclose(attributions.sum(1), want, rtol=0.01, atol=1e-3 * np.abs(want).max())


def test_integrated_gradients_completeness_cnn_and_index_mode():
    model = cnn()
    x = data((4, 8, 8, 2))
    ig = pk.IntegratedGradients(model, steps=128, neuron_selection_mode="index")
    attributions = ig.analyze(x, neuron_selection=[0, 1, 2, 1])
    y = model(x).numpy()
    y0 = model(np.zeros_like(x)).numpy()
    idx = np.array([0, 1, 2, 1])
    want = y[np.arange(4), idx] - y0[np.arange(4), idx]
    np.testing.assert_allclose(
        attributions.reshape(4, -1).sum(1), want, rtol=0.01, atol=1e-3 * np.abs(want).max()
    )


def test_integrated_gradients_exact_on_linear_model():
    keras.utils.set_random_seed(5)
    x_in = keras.Input((7,))
    model = keras.Model(x_in, L.Dense(3)(x_in))
    w = model.layers[-1].kernel.numpy()
    x = data((5, 7))
    base = data((7,), seed=11)
    idx, _ = selected(model, x)
    for method, steps in [("midpoint", 1), ("trapezoid", 2), ("midpoint", 5)]:
        got = pk.IntegratedGradients(model, steps=steps, baseline=base, method=method).analyze(x)
        assert_close(got, (x - base) * w[:, idx].T, PASS)


def test_integrated_gradients_is_the_quadrature_of_tape_gradients(small):
    """Midpoint rule by hand: the gradients at (k + ½)/steps along the path, averaged."""
    x = data((3, 10))
    steps = 5
    idx, _ = selected(small, x)
    total = np.zeros_like(x)
    for k in range(steps):
        p = tf.constant(x * (k + 0.5) / steps)
        with tf.GradientTape() as tape:
            tape.watch(p)
            out = tf.gather(small(p), idx, axis=1, batch_dims=1)
        total += tape.gradient(out, p).numpy() / steps
    got = pk.IntegratedGradients(small, steps=steps).analyze(x)
    assert_close(got, x * total, PASS)


def test_integrated_gradients_batching_does_not_change_the_result(small):
    x = data((7, 10))
    ref = pk.IntegratedGradients(small, steps=9).analyze(x)
    for inner in (1, 5, 13, 1000):
        for batch in (1, 3, 7):
            got = pk.IntegratedGradients(small, steps=9, inner_batch_size=inner).analyze(
                x, batch_size=batch
            )
            assert_close(got, ref, PASS, err_msg=f"inner {inner}, batch {batch}")


def test_integrated_gradients_multi_input():
    keras.utils.set_random_seed(8)
    a = keras.Input((4,))
    b = keras.Input((3,))
    h = L.Concatenate()([L.Dense(5, activation="relu")(a), L.Dense(5, activation="relu")(b)])
    model = keras.Model([a, b], L.Dense(2)(h))
    xa, xb = data((5, 4)), data((5, 3), seed=4)
    ig = pk.IntegratedGradients(model, steps=200, baseline=[0.0, np.ones(3, "float32")])
    ra, rb = ig.analyze([xa, xb])
    assert ra.shape == xa.shape and rb.shape == xb.shape
    y = model([xa, xb]).numpy()
    y0 = model([np.zeros_like(xa), np.ones_like(xb)]).numpy()
    idx = y.argmax(1)
    want = y[np.arange(5), idx] - y0[np.arange(5), idx]
    np.testing.assert_allclose(
        ra.sum(1) + rb.sum(1), want, rtol=0.01, atol=1e-3 * np.abs(want).max()
    )


def test_integrated_gradients_errors(small):
    for kwargs, pattern in [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"method": "simpson"}, "method"),
        ({"method": "trapezoid", "steps": 1}, "steps >= 2"),
        ({"baseline": np.zeros(9)}, r"baseline of shape \(9,\)"),
        ({"baseline": np.nan}, "finite"),
        ({"inner_batch_size": 0}, "inner_batch_size"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            pk.IntegratedGradients(small, **kwargs)


# ---------------------------------------------------------------------------------------------
# SmoothGrad


def test_smoothgrad_zero_noise_is_the_gradient(small):
    x = data()
    g = pk.Gradient(small).analyze(x)
    assert_close(pk.SmoothGrad(small, samples=3, noise_scale=0.0).analyze(x), g, PASS)
    # As the noise vanishes, SmoothGrad tends to the gradient (a piecewise constant one here:
    # noise of 1e-6 of the range flips no ReLU gate, so only rounding differs).
    assert_close(pk.SmoothGrad(small, samples=8, noise_scale=1e-6).analyze(x), g, PASS)


def test_smoothgrad_changes_with_noise_scale_and_seed(small):
    x = data()
    a = pk.SmoothGrad(small, samples=16, noise_scale=0.1).analyze(x)
    b = pk.SmoothGrad(small, samples=16, noise_scale=0.3).analyze(x)
    g = pk.Gradient(small).analyze(x)
    assert not np.allclose(a, b, rtol=1e-2)
    assert not np.allclose(a, g, rtol=1e-2)
    # Seeded: the same call gives the same result, another seed another one.
    np.testing.assert_array_equal(a, pk.SmoothGrad(small, samples=16, noise_scale=0.1).analyze(x))
    c = pk.SmoothGrad(small, samples=16, noise_scale=0.1, seed=1).analyze(x)
    assert not np.allclose(a, c, rtol=1e-2)


def test_smoothgrad_is_the_mean_of_noisy_gradients():
    """Many samples: the average converges to the expected gradient under the noise, estimated
    independently here with numpy noise of the documented σ = noise_scale·(max − min)."""
    model = mlp(seed=2)
    x = data((3, 10), seed=6)
    scale = 0.2
    sigma = scale * (x.max(1) - x.min(1))
    rng = np.random.default_rng(0)
    n = 4000
    idx, _ = selected(model, x)
    noisy = tf.constant(
        (x[None] + sigma[None, :, None] * rng.normal(size=(n,) + x.shape))
        .reshape(-1, 10)
        .astype("float32")
    )
    with tf.GradientTape() as tape:
        tape.watch(noisy)
        out = tf.gather(model(noisy), np.tile(idx, n), axis=1, batch_dims=1)
    want = tape.gradient(out, noisy).numpy().reshape(n, 3, 10).mean(0)
    got = pk.SmoothGrad(model, samples=n, noise_scale=scale, inner_batch_size=3000).analyze(x)
    spread = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=0.05 * spread)


def test_smoothgrad_noise_is_relative_to_each_samples_range():
    """g(x) = f(x / c): SmoothGrad of g at c·x is SmoothGrad of f at x divided by c, since the
    noise scales with the sample's range; two samples of very different ranges, each alone."""
    model = mlp(seed=4)
    c = 50.0
    x_in = keras.Input((10,))
    first = model.get_layer("d1")
    h = L.Dense(16, activation="relu", name="d1")(x_in)
    h = L.Dense(12, activation="relu", name="d2")(h)
    scaled = keras.Model(x_in, L.Dense(5, name="out")(h))
    for name in ("d1", "d2", "out"):
        scaled.get_layer(name).set_weights(model.get_layer(name).get_weights())
    scaled.get_layer("d1").kernel.assign(first.kernel.numpy() / c)
    x = data((2, 10), seed=8)
    x[1] *= 30.0
    a = pk.SmoothGrad(model, samples=32, noise_scale=0.2).analyze(x, batch_size=1)
    b = pk.SmoothGrad(scaled, samples=32, noise_scale=0.2).analyze(c * x, batch_size=1)
    assert_close(b * c, a, PASS)  # the same noise, scaled: equal up to rounding


def test_smoothgrad_batching_and_selection(small):
    x = data((5, 10))
    ref = pk.SmoothGrad(small, samples=6, noise_scale=0.2).analyze(x)
    got = pk.SmoothGrad(small, samples=6, noise_scale=0.2, inner_batch_size=7).analyze(x)
    assert_close(got, ref, PASS)
    # Neuron selection happens on the clean sample: mode "index" with the argmax agrees.
    idx, _ = selected(small, x)
    by_index = pk.SmoothGrad(
        small, samples=6, noise_scale=0.2, neuron_selection_mode="index"
    ).analyze(x, neuron_selection=idx)
    np.testing.assert_array_equal(by_index, ref)  # the same pass, the same neurons


def test_smoothgrad_errors(small):
    for kwargs, pattern in [
        ({"samples": 0}, "samples"),
        ({"noise_scale": -0.1}, "noise_scale"),
        ({"noise_scale": np.inf}, "noise_scale"),
        ({"seed": 1.5}, "seed"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            pk.SmoothGrad(small, **kwargs)


@pytest.mark.parametrize(
    "name, cls", [("integrated_gradients", pk.IntegratedGradients), ("smoothgrad", pk.SmoothGrad)]
)
def test_registered_names(small, name, cls):
    analyzer = pk.create_analyzer(
        name, small, **({"steps": 4} if "integ" in name else {"samples": 4})
    )
    assert type(analyzer) is cls
    x = data((2, 10))
    assert analyzer.analyze(x).shape == x.shape


def test_traced_once_for_many_steps(small):
    """The path runs in a tf.while_loop: one trace however many chunks."""
    ig = pk.IntegratedGradients(small, steps=50, inner_batch_size=4)
    ig.analyze(data((2, 10)))
    ig.analyze(data((3, 10)))
    assert ig._compiled_fn().experimental_get_tracing_count() == 1
