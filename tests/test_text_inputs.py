"""Integer inputs: token ids explained at their embedding vectors (per token and in full), integer
inputs read as numbers explained at the float they become, inputs that only carry masks not
explained; against the same analyzers on the model cut after the embedding sum (the embedding
vectors given as a float input), the tape, and closed forms (conservation, completeness)."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import EVERY_ANALYZER, PASS, STATISTICS, assert_close

import pattern_keras as pk
from pattern_keras import engine

V, T, D = 11, 6, 5


def _pos_table(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, (T, D)).astype("float32")


def _body_layers(use_bias: bool, activation: str):
    return [
        keras.layers.Dense(7, activation=activation, use_bias=use_bias, name="d1"),
        keras.layers.Conv1D(4, 3, padding="same", activation="relu", use_bias=use_bias, name="c1"),
        keras.layers.GlobalAveragePooling1D(name="pool"),
        keras.layers.Dense(3, use_bias=use_bias, name="out"),
    ]


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def text_models(use_bias=True, activation="relu", seed=0, segments=False):
    """``(text model, cut model, embed)``: ids (and segment ids) → token embedding + a constant
    position table (+ segment embedding) → Dense → Conv1D → pooling → Dense; the cut model is
    the same layers from the summed embedding vectors as a float input; ``embed(ids[, seg])``
    gives those vectors."""
    keras.utils.set_random_seed(seed)
    pos = _pos_table(seed)
    body = _body_layers(use_bias, activation)
    ids = keras.Input((T,), dtype="int32", name="ids")
    tok = keras.layers.Embedding(V, D, name="tok")
    summed = tok(ids) + pos
    inputs = [ids]
    if segments:
        seg_ids = keras.Input((T,), dtype="int32", name="segment_ids")
        seg = keras.layers.Embedding(2, D, name="seg")
        summed = keras.layers.Add(name="with_segments")([summed, seg(seg_ids)])
        inputs.append(seg_ids)
    model = keras.Model(inputs if segments else ids, _apply(body, summed))
    embed = keras.Model(inputs if segments else ids, summed)
    vectors = keras.Input((T, D), name="vectors")
    cut = keras.Model(vectors, _apply(body, vectors))
    return model, cut, embed, tok, pos


@pytest.fixture(scope="module")
def relu_text():
    model, cut, embed, tok, pos = text_models()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, (5, T)).astype("int32")
    train = rng.integers(0, V, (120, T)).astype("int32")
    return model, cut, embed, tok, pos, ids, train


@pytest.fixture(scope="module")
def fitted_patterns(relu_text):
    """Patterns of the text model and of the cut model, fitted on the same sequences."""
    model, cut, embed, *_, train = relu_text
    return (
        pk.PatternNet(model).fit(train, verbose=0).patterns,
        pk.PatternNet(cut).fit(embed.predict(train, verbose=0), verbose=0).patterns,
    )


def _light(cls, model, data=None, **kwargs):
    """``cls(model)`` with few path points / noisy copies; pattern methods fitted on ``data``
    (PatternAttribution reusing PatternNet's fit of the same model)."""
    if cls is pk.IntegratedGradients:
        kwargs.setdefault("steps", 8)
    if cls is pk.SmoothGrad:
        kwargs.setdefault("samples", 4)
    if cls.needs_patterns and "patterns" not in kwargs:
        cached = _light.cache.get(id(model))
        if cached is None or cached[0] is not model:  # the model is kept: its id stays its own
            cached = (model, pk.PatternNet(model).fit(data, verbose=0).patterns)
            _light.cache[id(model)] = cached
        kwargs["patterns"] = cached[1]
    return cls(model, **kwargs)


_light.cache = {}


@pytest.mark.parametrize("cls", EVERY_ANALYZER, ids=lambda c: c.__name__)
def test_per_token_and_full_maps_equal_the_cut_model(relu_text, fitted_patterns, cls):
    model, cut, embed, tok, pos, ids, train = relu_text
    vectors = embed.predict(ids, verbose=0)
    table = tok.embeddings.numpy()
    text_kwargs, cut_kwargs = {}, {}
    if cls is pk.DeepTaylor:  # the box: the table's range at the token, positions kept
        cut_kwargs = dict(low=pos + table.min(0), high=pos + table.max(0))
    if cls is pk.IntegratedGradients:  # zero token vectors, positions kept
        cut_kwargs = dict(baseline=pos)
    tolerance = PASS
    if cls.needs_patterns:
        text_kwargs, cut_kwargs = (dict(patterns=p) for p in fitted_patterns)
        tolerance = STATISTICS
    text_analyzer = _light(cls, model, **text_kwargs)
    cut_analyzer = _light(cls, cut, **cut_kwargs)
    full = text_analyzer.analyze(ids, per_token=False, verbose=0)
    expected = cut_analyzer.analyze(vectors, verbose=0)
    assert full.shape == (len(ids), T, D)
    assert_close(full, expected, tolerance)
    per_token = text_analyzer.analyze(ids, verbose=0)
    assert per_token.shape == ids.shape
    if text_analyzer.token_reduction == "norm":
        assert_close(per_token, np.linalg.norm(expected, axis=-1), tolerance)
    else:
        assert_close(per_token, expected.sum(-1), tolerance)


def test_token_reduction_is_the_norm_for_signals_and_the_sum_for_attributions():
    signals = {pk.Gradient, pk.SmoothGrad, pk.DeConvNet, pk.GuidedBackprop, pk.PatternNet}
    for cls in EVERY_ANALYZER:
        assert cls.token_reduction == ("norm" if cls in signals else "sum"), cls.__name__


def test_segment_ids_are_explained_with_the_tokens(relu_text):
    model, cut, embed, tok, pos = text_models(segments=True, seed=3)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, V, (4, T)).astype("int32")
    seg = rng.integers(0, 2, (4, T)).astype("int32")
    result = pk.LRPZ(model).analyze([ids, seg], per_token=False, verbose=0)
    assert isinstance(result, list) and len(result) == 2 and result[1] is None
    assert_close(result[0], pk.LRPZ(cut).analyze(embed.predict([ids, seg], verbose=0)), PASS)


def test_lrp_z_conserves_on_a_bias_free_text_model():
    model, *_ = text_models(use_bias=False, seed=5)
    ids = np.random.default_rng(3).integers(0, V, (6, T)).astype("int32")
    relevance = pk.LRPZ(model).analyze(ids, verbose=0)
    y = model.predict(ids, verbose=0).max(axis=1)
    assert_close(relevance.sum(axis=1), y, PASS)


@pytest.mark.parametrize("baseline_token", [None, 0])
def test_integrated_gradients_per_token_sum_is_the_output_difference(baseline_token):
    model, cut, embed, tok, pos = text_models(activation="gelu", seed=7)
    ids = np.random.default_rng(4).integers(1, V, (4, T)).astype("int32")
    ig = pk.IntegratedGradients(model, steps=128, baseline_token=baseline_token)
    scores = ig.analyze(ids, verbose=0)
    y = model.predict(ids, verbose=0)
    chosen = y.argmax(axis=1)
    if baseline_token is None:  # zero token vectors: only the positions remain
        at_baseline = cut.predict(np.broadcast_to(pos, (len(ids), T, D)), verbose=0)
    else:  # every token replaced by the baseline token, at the same positions
        at_baseline = model.predict(np.full_like(ids, baseline_token), verbose=0)
    rows = np.arange(len(ids))
    difference = y[rows, chosen] - at_baseline[rows, chosen]
    np.testing.assert_allclose(scores.sum(axis=1), difference, rtol=0.01)


def test_take_on_a_table_is_a_lookup():
    keras.utils.set_random_seed(0)
    table = keras.Variable(np.random.default_rng(0).normal(size=(V, D)).astype("float32"))
    body = [keras.layers.Dense(4, activation="relu"), keras.layers.Flatten(), keras.layers.Dense(2)]
    ids = keras.Input((T,), dtype="int32")
    model = keras.Model(ids, _apply(body, keras.ops.take(table, ids, axis=0)))
    vectors_input = keras.Input((T, D))
    cut = keras.Model(vectors_input, _apply(body, vectors_input))  # from the lookup's output
    x = np.random.default_rng(1).integers(0, V, (3, T)).astype("int32")
    grad = pk.Gradient(model).analyze(x, per_token=False, verbose=0)
    vectors = tf.constant(np.take(table.numpy(), x, axis=0))
    with tf.GradientTape() as tape:
        tape.watch(vectors)
        y = cut(vectors)
        chosen = tf.reduce_max(y, axis=1)
    assert_close(grad, tape.gradient(chosen, vectors).numpy(), PASS)


def test_reversible_embedding_lookup_and_tied_logits():
    keras.utils.set_random_seed(0)
    embedding = keras.layers.ReversibleEmbedding(V, D, name="tied")
    ids = keras.Input((T,), dtype="int32")
    h = keras.layers.Dense(D, use_bias=False, activation="relu")(embedding(ids))
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(ids, embedding(pooled, reverse=True))
    x = np.random.default_rng(1).integers(0, V, (4, T)).astype("int32")
    relevance = pk.LRPZ(model).analyze(x, verbose=0)
    assert_close(relevance.sum(axis=1), model.predict(x, verbose=0).max(axis=1), PASS)
    vectors = tf.constant(embedding.embeddings.numpy()[x])
    with tf.GradientTape() as tape:
        tape.watch(vectors)
        logits = tf.matmul(
            tf.reduce_mean(tf.nn.relu(vectors @ model.layers[2].kernel), axis=1),
            embedding.embeddings,
            transpose_b=True,
        )
        chosen = tf.reduce_max(logits, axis=1)
    grad = pk.Gradient(model).analyze(x, per_token=False, verbose=0)
    assert_close(grad, tape.gradient(chosen, vectors).numpy(), PASS)
    assert "tied/reverse" in {op.pattern_key for op in engine.Program(model).linear_ops}


def test_deep_taylor_takes_no_box_for_token_ids(relu_text):
    with pytest.raises(ValueError, match="token ids.*embedding table's per-dimension range"):
        pk.DeepTaylor(relu_text[0], low=0.0, high=1.0)


def test_token_ids_out_of_the_table_are_refused(relu_text):
    model = relu_text[0]
    ids = np.zeros((2, T), "int32")
    ids[1, 3] = V
    with pytest.raises(ValueError, match=rf"token id {V} \(sample 1.*\[0, {V}\)"):
        pk.Gradient(model).analyze(ids, verbose=0)


# --- integer inputs read as numbers ----------------------------------------------------------


def _image_model(dtype: str):
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 2), dtype=dtype)
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(3)(h))


@pytest.fixture(scope="module")
def image_models():
    integer, floating = _image_model("uint8"), _image_model("float32")
    floating.set_weights(integer.get_weights())
    rng = np.random.default_rng(0)
    return integer, floating, rng.integers(0, 256, (4, 6, 6, 2)).astype("uint8")


@pytest.mark.parametrize("cls", EVERY_ANALYZER, ids=lambda c: c.__name__)
def test_uint8_image_model_gives_the_float_models_explanation(image_models, cls):
    integer, floating, x = image_models
    a, b = _light(cls, integer, x), _light(cls, floating, x.astype("float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no zero explanation
        result = a.analyze(x, verbose=0)
    assert result.dtype == np.float32 and result.shape == x.shape
    assert np.any(result != 0)
    assert_close(result, b.analyze(x.astype("float32"), verbose=0), PASS)


def test_int32_vector_into_dense_gives_the_float_models_explanation():
    def vector_model(dtype):
        keras.utils.set_random_seed(1)
        v = keras.Input((5,), dtype=dtype)
        return keras.Model(v, keras.layers.Dense(2)(keras.layers.Dense(6, activation="tanh")(v)))

    integer, floating = vector_model("int32"), vector_model("float32")
    x = np.random.default_rng(0).integers(-4, 5, (6, 5)).astype("int32")
    for cls in (pk.Gradient, pk.InputTimesGradient, pk.LRPZ, pk.IntegratedGradients):
        result = cls(integer).analyze(x, verbose=0)
        assert result.dtype == np.float32 and np.any(result != 0)
        assert_close(result, cls(floating).analyze(x.astype("float32"), verbose=0), PASS)
    xf = tf.constant(x.astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(xf)
        chosen = tf.reduce_max(floating(xf), axis=1)
    assert_close(pk.Gradient(integer).analyze(x, verbose=0), tape.gradient(chosen, xf).numpy())


def test_integer_inputs_refuse_fractions_and_values_out_of_range(image_models):
    integer, _, x = image_models
    analyzer = pk.Gradient(integer)
    with pytest.raises(ValueError, match="non-integer values.*uint8"):
        analyzer.analyze(x / 255.0, verbose=0)
    with pytest.raises(ValueError, match="value 256.*uint8"):
        analyzer.analyze(x.astype("int32") + 1, verbose=0)


# --- masks --------------------------------------------------------------------------------------


def _masked_model(variable_length: bool):
    """Padded ids (0 = padding) → Embedding(mask_zero=True) → Dense → masked pooling → Dense."""
    keras.utils.set_random_seed(2)
    ids = keras.Input((None if variable_length else T,), dtype="int32")
    h = keras.layers.Embedding(V, D, mask_zero=True)(ids)
    h = keras.layers.Dense(6, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(ids, keras.layers.Dense(3)(h))


def test_mask_zero_replay_and_padding_changes_no_explanation():
    model = _masked_model(variable_length=True)
    rng = np.random.default_rng(5)
    short = rng.integers(1, V, (3, 4)).astype("int32")
    padded = np.concatenate([short, np.zeros((3, 3), "int32")], axis=1)
    program = engine.Program(model)
    replay = engine.forward(program, [tf.constant(padded)])[program.output]
    assert_close(replay.numpy(), model(padded).numpy(), PASS)
    for cls in EVERY_ANALYZER:
        analyzer = _light(cls, model, padded)
        full = analyzer.analyze(padded, per_token=False, verbose=0)
        np.testing.assert_array_equal(full[:, 4:], 0, err_msg=cls.__name__)
        if cls is not pk.SmoothGrad:  # its noise depends on the whole sample's range
            assert_close(full[:, :4], analyzer.analyze(short, per_token=False, verbose=0), PASS)


def _padding_mask_model(attention: bool):
    """ids and a separate ``padding_mask`` input (read only as a mask) → ... → masked pooling."""
    keras.utils.set_random_seed(3)
    ids = keras.Input((T,), dtype="int32", name="token_ids")
    mask_input = keras.Input((T,), dtype="int32", name="padding_mask")
    mask = keras.ops.cast(mask_input, "bool")
    h = keras.layers.Embedding(V, D)(ids) + _pos_table(3)
    if attention:
        pair = keras.ops.logical_and(mask[:, :, None], mask[:, None, :])
        h = keras.layers.MultiHeadAttention(2, 4)(h, h, attention_mask=pair)
    h = keras.layers.Dense(6, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling1D()(h, mask=mask)
    return keras.Model([ids, mask_input], keras.layers.Dense(3)(h))


GRADIENT_FAMILY = (pk.Gradient, pk.InputTimesGradient, pk.IntegratedGradients, pk.SmoothGrad)


def _check_padded_ids_change_nothing(model, analyzers=EVERY_ANALYZER):
    rng = np.random.default_rng(6)
    ids = rng.integers(0, V, (3, T)).astype("int32")
    mask = np.ones((3, T), "int32")
    mask[:, 4:] = 0
    other = ids.copy()
    other[:, 4:] = rng.integers(0, V, (3, T - 4))
    program = engine.Program(model)
    replay = engine.forward(program, [tf.constant(ids), tf.constant(mask)])[program.output]
    assert_close(replay.numpy(), model([ids, mask]).numpy(), PASS)
    for cls in analyzers:
        analyzer = _light(cls, model, [ids, mask])
        first = analyzer.analyze([ids, mask], verbose=0)
        assert first[1] is None, cls.__name__  # the mask is not explained
        np.testing.assert_array_equal(first[0][:, 4:], 0, err_msg=cls.__name__)
        if cls is not pk.SmoothGrad:  # its noise depends on the whole sample's range
            second = analyzer.analyze([other, mask], verbose=0)
            assert_close(second[0], first[0], PASS, err_msg=cls.__name__)


def test_padding_mask_input_is_not_explained_and_padded_ids_change_nothing():
    _check_padded_ids_change_nothing(_padding_mask_model(attention=False))


def test_padding_mask_through_multi_head_attention_gradient_family():
    _check_padded_ids_change_nothing(_padding_mask_model(attention=True), GRADIENT_FAMILY)


def test_padding_mask_through_multi_head_attention_rule_based():
    model = _padding_mask_model(attention=True)
    _check_padded_ids_change_nothing(model, [c for c in EVERY_ANALYZER if c not in GRADIENT_FAMILY])


def test_an_input_read_only_as_a_mask_is_none_and_documented_in_the_points():
    model = _padding_mask_model(attention=False)
    kinds = [(p.kind, p.reason) for p in engine.Program(model).points]
    assert kinds[0][0] == "embedding" and kinds[1] == ("none", "it only carries masks or indices")


def test_empty_batch_gives_maps_shaped_like_the_embedding_vectors(relu_text):
    analyzer = pk.Gradient(relu_text[0])
    (out,) = analyzer._compiled_fn()([tf.zeros((0, T), tf.int32)], tf.zeros((0,), tf.int32))
    assert out.shape == (0, T, D)
