"""Shared test setup: quiet TensorFlow logs, float32 tolerances, and the reference network.

Tolerances
----------
Every float32 result is compared with :func:`assert_close`: the error allowed is a fraction
(``rtol_of_max``) of the *largest* magnitude of the expected array, the meaning of "equal to
1e-6 relative" in the README. Float32 rounding is relative to the size of the terms that were
summed, not to the size of each result: an element near zero that is a sum of large terms
carries the absolute error of those terms, so an elementwise relative tolerance holds only by
luck. The fractions, from the arithmetic (u = 2⁻²⁴ ≈ 6e-8, float32's unit roundoff):

``PASS`` (1e-5)
    A float32 forward or backward pass of a small network against a float64 or
    ``tf.GradientTape`` reference. Each layer rounds its dot products of K ≤ ~10³ terms to
    about log₂K·u ≈ 6e-7 of the terms' magnitude in blocked/pairwise order, and ~√K·u ≈ 2e-6 in
    the worst usual order (oneDNN's blocking differs between CPUs); a few layers, each term at
    most a few times the largest output, stay below ~5e-6: 1e-5 leaves a factor ≥ 2 for
    another summation order.
``STATISTICS`` (1e-4)
    Patterns from float32 per-batch sums against a float64 reference on the same data, or
    against another fit of the same data that took other shifts (other batch sizes, fits of
    shards merged): each side carries its own rounding. The sums
    ``Σ x'y'`` over N·P products (shifted values) are rounded to ~√(NP)·u of ``Σ|x'y'|``, and
    the pattern ``(E[xy] − E[x]E[y]) / wᵀ(·)`` divides by a covariance that can be several
    times smaller than ``E|x'y'|`` (weak correlations, the less populated regime): errors of
    1e-5 of the largest pattern entry are normal (1.5e-5 measured on an AMD EPYC CPU for the
    depthwise a₋ of ``test_architectures``); 1e-4 leaves a factor ~7.
``DEEP_PASS`` (1e-4)
    The same for a network of tens of layers (``keras.applications`` models): rounding errors
    of ~50 layers add up (√50 ≈ 7 times one layer's), and BatchNorm folding moves roundings.
``SPLIT`` (1e-5)
    The same data and shifts with the float32 per-batch sums grouped otherwise (the replicas
    of a ``tf.distribute`` strategy, workers) against a single-device fit: only the summation
    order of the float32 sums differs (everything after them is float64). ≲ √(NP)·u ≈ 2e-6 of
    the terms for the batches here; measured 3.5e-7 of the largest entry; 1e-5 leaves a
    factor ≥ 5.

Where a test wants exactness (the same code path, a saved and reloaded array, float64 sums) it
compares bit for bit (``np.testing.assert_array_equal``) or in float64.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Fractions of the expected array's largest magnitude; see the module docstring.
PASS = 1e-5
DEEP_PASS = 1e-4
STATISTICS = 1e-4
SPLIT = 1e-5


def assert_close(actual, expected, rtol_of_max: float = PASS, *, err_msg: str = "") -> None:
    """Assert ``|actual − expected| ≤ rtol_of_max · max|expected|`` elementwise.

    Shapes must agree; NaNs must sit at the same places. An all-zero ``expected`` needs an
    exactly zero ``actual``. See the module docstring for how to choose ``rtol_of_max``.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(finite.max()) if finite.size else 0.0
    atol = rtol_of_max * scale
    np.testing.assert_allclose(
        actual,
        expected,
        rtol=0,
        atol=atol,
        err_msg=f"{err_msg} (tolerance {rtol_of_max:g} of the largest magnitude {scale:.6g})",
    )


@pytest.fixture(scope="session")
def reference_mlp():
    """The trained MLP of iNNvestigate 1.0.9's reference outputs (``tests/data/REFERENCE.md``),
    rebuilt with its weights, and the reference arrays; its logits are checked."""
    import pathlib

    import keras
    import numpy as np

    data = np.load(pathlib.Path(__file__).parent / "data" / "innvestigate-1.0.9-mlp.npz")
    ref = {k: data[k] for k in data.files}
    x = keras.Input((64,))
    h = keras.layers.Dense(32, activation="relu", name="dense1")(x)
    h = keras.layers.Dense(16, activation="relu", name="dense2")(h)
    model = keras.Model(x, keras.layers.Dense(10, name="dense3")(h))
    for name in ("dense1", "dense2", "dense3"):
        model.get_layer(name).set_weights(
            [ref[f"weights/{name}/kernel"], ref[f"weights/{name}/bias"]]
        )
    assert_close(model.predict(ref["x_analyze"], verbose=0), ref["logits"], PASS)
    return model, ref


def randomize_batch_norm(
    model,
    seed: int = 0,
    *,
    mean_scale: float = 1.0,
    variance: tuple[float, float] = (0.3, 3.0),
    gamma: tuple[float, float] = (0.5, 2.0),
    beta_scale: float = 0.5,
) -> None:
    """Give every BatchNormalization of ``model`` (nested models too, each with ``seed + 1``)
    random inference statistics, so that folding and the affine rules are really exercised
    (fresh layers are the identity). Per layer, in this order: moving mean ~ N(0, mean_scale),
    moving variance ~ U(variance), γ ~ U(gamma) (if the layer scales; a range below 0 gives
    negative scales), β ~ N(0, beta_scale) (if it centres). Callers state the ranges they need:
    ``BN_MILD`` keeps deep ``keras.applications`` networks well scaled."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            randomize_batch_norm(
                layer,
                seed + 1,
                mean_scale=mean_scale,
                variance=variance,
                gamma=gamma,
                beta_scale=beta_scale,
            )
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, mean_scale, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(*variance, n).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(*gamma, n).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0.0, beta_scale, n).astype("float32"))


#: Statistics that keep a deep random-weight network's activations near unit scale.
BN_MILD = dict(mean_scale=0.1, variance=(0.5, 1.5), gamma=(0.7, 1.3), beta_scale=0.1)


def mlp(
    sizes: tuple[int, ...] = (10, 16, 12, 5),
    *,
    use_bias: bool = True,
    seed: int = 0,
    bias_scale: float = 0.3,
    softmax: str | None = None,
    output_name: str = "out",
):
    """The tests' small MLP: ``Input(sizes[0])`` → ReLU Dense layers ``d1, d2, ...`` → a linear
    Dense ``output_name`` (10 → 16 → 12 → 5 by default). Kernels from Keras's seeded
    initializer; biases ~ N(0, bias_scale) (0: Keras's zeros), so that rules which treat the
    bias specially are exercised. ``softmax``: ``"fused"`` (the last layer's activation),
    ``"activation"`` or ``"layer"`` (a separate layer ``sm``), or None."""
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((sizes[0],))
    h = x
    for i, n in enumerate(sizes[1:-1], start=1):
        h = keras.layers.Dense(n, activation="relu", use_bias=use_bias, name=f"d{i}")(h)
    fused = "softmax" if softmax == "fused" else None
    out = keras.layers.Dense(sizes[-1], activation=fused, use_bias=use_bias, name=output_name)(h)
    if softmax == "activation":
        out = keras.layers.Activation("softmax", name="sm")(out)
    elif softmax == "layer":
        out = keras.layers.Softmax(name="sm")(out)
    model = keras.Model(x, out)
    if use_bias and bias_scale:
        rng = np.random.default_rng(seed + 1)
        for layer in model.layers:
            if getattr(layer, "bias", None) is not None:
                layer.bias.assign(rng.normal(0, bias_scale, layer.bias.shape).astype("float32"))
    return model


def _every_analyzer() -> list:
    import pattern_keras as pk

    return [
        pk.Gradient,
        pk.InputTimesGradient,
        pk.DeConvNet,
        pk.GuidedBackprop,
        pk.LRPZ,
        pk.LRPEpsilon,
        pk.LRPAlpha1Beta0,
        pk.LRPAlpha2Beta1,
        pk.LRPZPlus,
        pk.DeepTaylor,
        pk.IntegratedGradients,
        pk.SmoothGrad,
        pk.PatternNet,
        pk.PatternAttribution,
    ]


#: Every analyzer class, for tests that run them all on one model.
EVERY_ANALYZER = _every_analyzer()
