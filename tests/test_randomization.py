"""The sanity checks: randomization_test (MPRT, sMPRT, eMPRT) and random_logit_test.

Closed forms on a linear model ``y = Wx``: the gradient is ``W_c`` and input × gradient is
``x ⊙ W_c``, so after the kernel is re-initialized to ``W′`` the reported similarities must be
those of ``(W_c, W′_c)`` and ``(x ⊙ W_c, x ⊙ W′_c)``, computed here directly.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from scipy import stats

import pattern_keras as pk
from pattern_keras.evaluation import (
    random_logit_test,
    randomization_test,
)
from pattern_keras.evaluation.randomization import build_analyzer, randomizable_layers
from pattern_keras.evaluation.similarity import similarity

H, W, CLASSES = 6, 7, 4


@keras.saving.register_keras_serializable(package="test_randomization")
class Fixed(keras.initializers.Initializer):
    """Always the same array: the 'random' weights are known to the test."""

    def __init__(self, value):
        self.value = np.asarray(value, dtype=np.float32)

    def __call__(self, shape, dtype=None):
        return keras.ops.convert_to_tensor(self.value.reshape(shape), dtype=dtype)

    def get_config(self):
        return {"value": self.value.tolist()}


def _linear(w_new, seed=0):
    rng = np.random.default_rng(seed)
    inp = keras.Input((H, W, 1))
    flat = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(
        CLASSES, use_bias=False, kernel_initializer=Fixed(w_new), name="linear"
    )(flat)
    model = keras.Model(inp, out)
    w = rng.normal(size=(H * W, CLASSES)).astype(np.float32)
    model.get_layer("linear").kernel.assign(w)
    return model, w


def _x(n=5, seed=1):
    return np.random.default_rng(seed).normal(size=(n, H, W, 1)).astype(np.float32)


def _column_maps(w, classes):
    """(n, H, W): the kernel's column of each sample's class, as an image."""
    return w[:, classes].T.reshape(len(classes), H, W).astype(np.float64)


def test_linear_model_closed_form_after_randomization():
    w_new = np.random.default_rng(5).normal(size=(H * W, CLASSES)).astype(np.float32)
    model, w = _linear(w_new)
    x = _x()
    result = randomization_test(
        model, {"Gradient": "gradient", "InputTimesGradient": "input_t_gradient"}, x, shown=5
    )
    assert result.layers == ("linear",)
    target = np.argmax(x.reshape(len(x), -1) @ w, axis=1)
    np.testing.assert_array_equal(result.target, target)
    gradient, input_times = result.methods.index("Gradient"), 1
    # The gradient after randomization is W′_c exactly, before it W_c.
    np.testing.assert_array_equal(result.maps[gradient, 1], _column_maps(w_new, target))
    np.testing.assert_array_equal(result.maps[gradient, 0], _column_maps(w, target))
    pixels = x[..., 0].astype(np.float64)
    pairs = {
        gradient: (_column_maps(w, target), _column_maps(w_new, target)),
        input_times: (pixels * _column_maps(w, target), pixels * _column_maps(w_new, target)),
    }
    for i, (before, after) in pairs.items():
        direct = similarity(before, after)
        for j, measure in enumerate(result.measures):
            np.testing.assert_allclose(result.scores[i, 0, j], direct[measure], rtol=1e-6)
        # And the Spearman correlations are scipy's, pair by pair.
        for s in range(len(x)):
            rho = stats.spearmanr(np.abs(before[s]).ravel(), np.abs(after[s]).ravel())[0]
            np.testing.assert_allclose(result.scores[i, 0, 0, s], rho, rtol=1e-6)
    # The prediction changed where W′ picks another class.
    new_classes = np.argmax(x.reshape(len(x), -1) @ w_new, axis=1)
    assert result.agreement[0] == np.mean(new_classes == target)


def _two_heads():
    inp = keras.Input((H, W, 1))
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")(keras.layers.Flatten()(inp))
    a = keras.layers.Dense(1, name="head_a")(hidden)
    b = keras.layers.Dense(1, name="head_b")(hidden)
    return keras.Model(inp, keras.layers.Concatenate(name="both")([a, b]))


def test_a_layer_off_the_explained_output_gives_similarity_exactly_one():
    keras.utils.set_random_seed(3)
    model = _two_heads()
    x = _x(6)
    result = randomization_test(
        model, {"Gradient": "gradient", "LRP-Z": "lrp.z"}, x, mode="independent", neuron_selection=0
    )
    assert set(result.layers) == {"head_a", "head_b", "hidden"}
    for method in result.methods:
        off_path = result[method]["head_b"]
        assert all(v == 1.0 for v in off_path.values()), (method, off_path)
        i, k = result.methods.index(method), result.layers.index("head_b")
        assert np.all(result.scores[i, k] == 1.0)
        on_path = result[method]["head_a"]
        assert on_path["spearman"] < 1.0, (method, on_path)


def _digits_like_cnn():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    h = keras.layers.BatchNormalization(
        name="bn", gamma_initializer="random_normal", beta_initializer="random_normal"
    )(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(8, activation="relu", name="dense")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(h))


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(0)
    model = _digits_like_cnn()
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.normal(size=4).astype(np.float32) * 0.1)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=4).astype(np.float32))
    x = rng.normal(size=(24, 8, 8, 1)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patterns = pk.PatternAttribution(model).fit(x, verbose=0).patterns
    return model, x, patterns


def test_model_weights_and_outputs_are_bit_identical_after_every_test(cnn):
    model, x, patterns = cnn
    weights = [w.copy() for w in model.get_weights()]
    outputs = np.asarray(model(x))
    analyzers = {
        "Gradient": pk.Gradient(model),
        "PatternAttribution": pk.PatternAttribution(model, patterns=patterns),
    }
    randomization_test(model, analyzers, x[:6], refit_data=x, smooth_samples=2)
    randomization_test(model, analyzers, x[:6], mode="independent", layers=["bn", "conv"])
    random_logit_test(model, analyzers, x[:6])
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(np.asarray(model(x)), outputs)
    analyzers["PatternAttribution"].analyze(x[:2], verbose=0)  # the patterns are still current


def test_each_analyzer_traces_once_for_all_steps(cnn):
    model, x, patterns = cnn
    built = {}

    def factory(name, **kwargs):
        def make(m):
            analyzer = pk.create_analyzer(name, m, **kwargs)
            built.setdefault(name, []).append(analyzer)
            return analyzer

        return make

    analyzers = {
        "gradient": factory("gradient"),
        "pattern.attribution": factory("pattern.attribution", patterns=patterns),
    }
    result = randomization_test(
        model, analyzers, x[:10], refit_data=x, smooth_samples=3, batch_size=4
    )
    assert len(result.layers) == 4  # logits, dense, bn, conv
    kept, refitted = built["pattern.attribution"]
    for name, analyzers_built in built.items():
        for analyzer in analyzers_built:
            assert analyzer._compiled.experimental_get_tracing_count() == 1, name
    state = refitted._computer._cached_state
    assert state._step_fn.experimental_get_tracing_count() == 1
    assert kept.patterns is patterns  # never re-fitted


def test_batch_norm_gamma_and_beta_are_reinitialized_and_moving_statistics_kept(cnn):
    model, _, _ = cnn
    layers = {layer.key: layer for layer in randomizable_layers(model, seed=7)}
    assert list(layers) == ["logits", "dense", "bn", "conv"]
    bn = layers["bn"]
    assert [v.name for v in bn.variables] == ["gamma", "beta"]
    again = {layer.key: layer for layer in randomizable_layers(model, seed=7)}
    other = {layer.key: layer for layer in randomizable_layers(model, seed=8)}
    for a, b, c in zip(bn.randomized, again["bn"].randomized, other["bn"].randomized):
        np.testing.assert_array_equal(a, b)  # seeded
        assert not np.array_equal(a, c)
    # The conv bias is drawn from its zeros initializer; its kernel is new.
    conv = layers["conv"]
    np.testing.assert_array_equal(conv.randomized[1], 0.0)
    assert not np.allclose(conv.randomized[0], model.get_layer("conv").kernel.numpy())


def test_a_trainable_weight_without_initializer_is_refused():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.factor = self.add_weight(shape=(1,), initializer="ones", name="factor")

        def call(self, x):
            return x * self.factor

    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2)(Scale(name="scale")(inp)))
    with pytest.raises(ValueError, match="'scale'.*'factor'"):
        randomizable_layers(model)


def test_smpr_with_one_sample_is_mprt_and_smooth_gradient_of_a_linear_model_is_exact():
    w_new = np.random.default_rng(5).normal(size=(H * W, CLASSES)).astype(np.float32)
    model, _ = _linear(w_new)
    x = _x()
    one = randomization_test(model, {"InputTimesGradient": "input_t_gradient"}, x, smooth_samples=1)
    np.testing.assert_array_equal(one.smooth_scores, one.scores)
    # A linear model's gradient does not depend on the input: noise averages to the same map.
    many = randomization_test(model, {"Gradient": "gradient"}, x, smooth_samples=5)
    np.testing.assert_allclose(many.smooth_scores, many.scores, rtol=1e-6, atol=1e-6)


def test_emprt_is_the_relative_rise_of_histogram_entropy():
    w_new = np.random.default_rng(5).normal(size=(H * W, CLASSES)).astype(np.float32)
    model, w = _linear(w_new)
    x = _x()
    result = randomization_test(model, {"Gradient": "gradient"}, x, shown=5)
    before = _column_maps(w, result.target)
    after = _column_maps(w_new, result.target)
    h0 = [stats.entropy(np.histogram(m, bins=100)[0]) for m in before]
    h1 = [stats.entropy(np.histogram(m, bins=100)[0]) for m in after]
    np.testing.assert_allclose(result.complexity[0, 0], h0, rtol=1e-12)
    np.testing.assert_allclose(
        result.emprt_per_sample[0], (np.array(h1) - h0) / np.array(h0), rtol=1e-12
    )


def test_random_logit_on_a_linear_model_matches_its_closed_form():
    model, w = _linear(np.zeros((H * W, CLASSES)))
    x = _x(8)
    result = random_logit_test(model, {"Gradient": "gradient"}, x, seed=3)
    target = np.argmax(x.reshape(len(x), -1) @ w, axis=1)
    np.testing.assert_array_equal(result.target, target)
    assert np.all(result.other != target) and np.all((0 <= result.other) & (result.other < 4))
    direct = similarity(_column_maps(w, target), _column_maps(w, result.other))
    for j, measure in enumerate(result.measures):
        np.testing.assert_allclose(result.scores[0, j], direct[measure], rtol=1e-6)
    assert result["Gradient"]["spearman"] == pytest.approx(np.mean(direct["spearman"]))


@pytest.mark.parametrize("name", pk.analyzer_names())
def test_an_analyzer_rebuilt_on_the_model_explains_as_the_original(cnn, name):
    model, x, patterns = cnn
    kwargs = {"patterns": patterns} if pk.analyzer_class(name).needs_patterns else {}
    if name in ("integrated_gradients", "smoothgrad"):
        kwargs.update(steps=5) if name == "integrated_gradients" else kwargs.update(samples=3)
    original = pk.create_analyzer(name, model, neuron_selection_mode="index", **kwargs)
    rebuilt = build_analyzer(original, model)
    assert rebuilt is not original and rebuilt.neuron_selection_mode == "index"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = original.analyze(x[:4], neuron_selection=1, verbose=0)
        np.testing.assert_array_equal(
            rebuilt.analyze(x[:4], neuron_selection=1, verbose=0), expected
        )


def test_result_indexing_plots_and_errors(cnn):
    model, x, patterns = cnn
    result = randomization_test(model, {"Gradient": "gradient"}, x[:4], layers=["logits", "conv"])
    assert result.layers == ("logits", "conv")
    assert set(result["Gradient"]["conv"]) == set(result.measures)
    assert result.plot().axes and result.plot_cascade(1).axes
    with pytest.raises(KeyError, match="No method"):
        result["LRP"]
    with pytest.raises(ValueError, match="unknown"):
        randomization_test(model, {"Gradient": "gradient"}, x[:4], layers=["nope"])
    with pytest.raises(ValueError, match="mode"):
        randomization_test(model, {"Gradient": "gradient"}, x[:4], mode="bottom_up")
    with pytest.raises(ValueError, match="refit_data is only used"):
        randomization_test(model, {"Gradient": "gradient"}, x[:4], refit_data=x)
    with pytest.raises(ValueError, match="no patterns"):
        randomization_test(model, {"PA": "pattern.attribution"}, x[:4])
    refit_only = randomization_test(
        model, {"PA": "pattern.attribution"}, x[:4], refit_data=x, layers=["logits"]
    )
    assert refit_only.methods == ("PA (patterns re-fitted)",)
