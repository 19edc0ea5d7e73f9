"""Attention models: EinsumDense as a linear layer, attention weights held, and the oracles.

The rule (README, "Attention models"): a matmul or einsum one of whose operands is attention
weights (a softmax output) is linear in the other operand, the weights held per sample; the
product of queries and keys feeding that softmax passes nothing; LayerNormalization holds its
1/σ. Every rule-based analyzer holds them, the gradient family differentiates through them.

References here are written without pattern_keras: the *held model* is the same network computed
in TensorFlow from the layers' weights, with every activation ``f`` replaced by
``z · stop_gradient(f(z)/z)``, LayerNormalization's ``1/σ`` (not its mean) and the attention
weights under ``stop_gradient``. LRP-z must equal ``x ⊙ ∇`` of it, PatternNet with every pattern
set to its own kernel ``y · ∇`` of it, and the gradient family the tape on the real model.
Models are float64, so the comparisons are to rounding.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, STATISTICS, assert_close

import pattern_keras as pk
from pattern_keras import engine

L = keras.layers
F64 = "float64"
T, D, HEADS, HEAD_DIM, FF = 5, 8, 2, 4, 12


def randomize(model, seed, bias_scale=0.3, beta_scale=0.3):
    """Non-default LayerNorm γ, β and biases (set to 0 with scale 0), so that they matter."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.LayerNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(beta_scale * rng.standard_normal(layer.beta.shape))
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(bias_scale * rng.standard_normal(layer.bias.shape))


# ---------------------------------------------------------------------------------------------
# The two-block model and its held twin


def projection(name, heads=True):
    """A query/key/value projection ``(b, t, D) → (b, t, HEADS, HEAD_DIM)`` or the output
    projection back to ``D``, as MultiHeadAttention builds them."""
    if heads:
        return L.EinsumDense(
            "abc,cde->abde", (None, HEADS, HEAD_DIM), bias_axes="de", name=name, dtype=F64
        )
    return L.EinsumDense("abcd,cde->abe", (None, D), bias_axes="e", name=name, dtype=F64)


def two_block_model(seed=0, bias=True):
    """Token embedding by Dense → block 1 (``dot_product_attention``) → block 2 (einsum scores,
    scaled, ``Softmax`` layer, Dropout, einsum with the values: MultiHeadAttention's path with
    dropout) → average over tokens → logits. Each block: attention, residual, LayerNorm, a GELU
    feed-forward, residual, LayerNorm."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((T, D), dtype=F64)
    h = L.Dense(D, name="embed", dtype=F64)(x)
    for block in (1, 2):
        q = projection(f"b{block}_query")(h)
        k = projection(f"b{block}_key")(h)
        v = projection(f"b{block}_value")(h)
        if block == 1:
            a = keras.ops.dot_product_attention(q, k, v)
        else:
            scores = keras.ops.einsum("aecd,abcd->acbe", k, q * (1.0 / np.sqrt(HEAD_DIM)))
            w = L.Softmax(axis=-1, name="b2_softmax", dtype=F64)(scores)
            w = L.Dropout(0.2, name="b2_dropout")(w)
            a = keras.ops.einsum("acbe,aecd->abcd", w, v)
        h = L.LayerNormalization(name=f"b{block}_ln1", dtype=F64)(
            h + projection(f"b{block}_output", heads=False)(a)
        )
        f = L.Dense(FF, activation="gelu", name=f"b{block}_ff1", dtype=F64)(h)
        f = L.Dense(D, name=f"b{block}_ff2", dtype=F64)(f)
        h = L.LayerNormalization(name=f"b{block}_ln2", dtype=F64)(h + f)
    h = L.GlobalAveragePooling1D()(h)
    model = keras.Model(x, L.Dense(3, name="logits", dtype=F64)(h))
    randomize(model, seed, bias_scale=0.3 if bias else 0.0, beta_scale=0.3 if bias else 0.0)
    return model


def held(f, z):
    """``z · stop_gradient(f(z)/z)``: ``f``'s value, linear in ``z``."""
    return z * tf.stop_gradient(f(z) / z)


def held_layer_norm(layer, x):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    scale = tf.stop_gradient(tf.math.rsqrt(variance + layer.epsilon))
    return (x - mean) * scale * layer.gamma + layer.beta


def dense(layer, x):
    y = tf.tensordot(x, layer.kernel, 1)
    return y if layer.bias is None else y + layer.bias


def einsum_dense(layer, x):
    y = tf.einsum(layer.equation, x, layer.kernel)
    return y if layer.bias is None else y + layer.bias


def held_weights(logits, mask=None):
    """Softmax over the last axis (masked positions get 0), under stop_gradient."""
    if mask is not None:
        logits = tf.where(mask, logits, tf.constant(-1e30, logits.dtype))
    w = tf.nn.softmax(logits, axis=-1)
    if mask is not None:
        w = tf.where(mask, w, tf.zeros_like(w))
    return tf.stop_gradient(w)


def held_two_block(model, x):
    """The held twin of :func:`two_block_model`, from its weights."""
    get = model.get_layer
    h = dense(get("embed"), x)
    for block in (1, 2):
        q, k, v = (einsum_dense(get(f"b{block}_{n}"), h) for n in ("query", "key", "value"))
        logits = tf.einsum("aecd,abcd->acbe", k, q) / np.sqrt(HEAD_DIM)
        a = tf.einsum("acbe,aecd->abcd", held_weights(logits), v)
        h = held_layer_norm(get(f"b{block}_ln1"), h + einsum_dense(get(f"b{block}_output"), a))
        f = held(keras.activations.gelu, dense(get(f"b{block}_ff1"), h))
        h = held_layer_norm(get(f"b{block}_ln2"), h + dense(get(f"b{block}_ff2"), f))
    return dense(get("logits"), tf.reduce_mean(h, axis=1))


def held_gradient(model, twin, x, selection):
    """``(y, ∂y/∂x)`` of the held twin at the selected logit of every sample."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.gather(twin(model, x), selection, axis=1, batch_dims=1)
    return y.numpy(), tape.gradient(y, x).numpy()


def inputs(seed=1, n=4, shape=(T, D)):
    return np.random.default_rng(seed).standard_normal((n, *shape))


def test_held_twin_computes_the_model():
    model = two_block_model()
    x = inputs()
    assert_close(held_two_block(model, tf.constant(x)).numpy(), model(x).numpy(), PASS)


def test_lrp_z_equals_input_times_gradient_of_the_held_model():
    """Must be shown (a): LRP-z = x ⊙ ∇ of the held model, with GELU, LayerNorm (β), biases."""
    model = two_block_model()
    x = inputs()
    selection = model(x).numpy().argmax(axis=1)
    _, grad = held_gradient(model, held_two_block, x, selection)
    got = pk.LRPZ(model, neuron_selection_mode="index").analyze(x, neuron_selection=selection)
    assert_close(got, x * grad, PASS)
    # The rule-based analyzers really hold: the exact gradient differs.
    exact = pk.InputTimesGradient(model, neuron_selection_mode="index").analyze(
        x, neuron_selection=selection
    )
    assert np.abs(exact - x * grad).max() > 1e-3 * np.abs(exact).max()


def test_relevance_is_conserved_without_biases():
    """Must be shown (b): with every bias and β at 0 the relevance sums to the explained logit."""
    model = two_block_model(bias=False)
    x = inputs(seed=2)
    y = model(x).numpy()
    selection = y.argmax(axis=1)
    relevance = pk.LRPZ(model, neuron_selection_mode="index").analyze(x, neuron_selection=selection)
    assert_close(relevance.sum(axis=(1, 2)), y[np.arange(len(y)), selection], PASS)


def own_kernel_patterns(analyzer):
    """Patterns equal to each layer's own kernel, both regimes."""
    kernels = {
        key: np.asarray(plan.part.kernel, np.float32)
        for key, plan in analyzer._computer.plans.items()
    }
    return pk.Patterns(kernels, negative=kernels)


def test_pattern_net_with_kernel_patterns_is_y_times_held_gradient():
    """Must be shown (c): PatternNet with every pattern (both regimes) set to its own kernel
    equals y · the gradient of the held model; the query and key projections have none."""
    model = two_block_model()
    x = inputs(seed=3)
    selection = model(x).numpy().argmax(axis=1)
    analyzer = pk.PatternNet(model, neuron_selection_mode="index")
    assert sorted(analyzer._computer.keys) == sorted(
        ["embed", "logits"]
        + [f"b{b}_{n}" for b in (1, 2) for n in ("value", "output", "ff1", "ff2")]
    )
    analyzer.set_patterns(own_kernel_patterns(analyzer))
    y, grad = held_gradient(model, held_two_block, x, selection)
    got = analyzer.analyze(x, neuron_selection=selection)
    assert_close(got, y[:, None, None] * grad, PASS)


def test_pattern_analyzers_fit_and_run_on_attention():
    """Patterns for the value, output and feed-forward projections (tokens counted as samples);
    both pattern analyzers give finite, non-zero explanations."""
    model = two_block_model()
    data = inputs(seed=4, n=16)
    pattern_net = pk.PatternNet(model).fit(data, batch_size=16, verbose=0)
    stats = pattern_net.statistics.layers
    assert stats["b1_value"].sums["n"].shape == (HEADS, HEAD_DIM)
    np.testing.assert_array_equal(stats["b1_value"].sums["n"], 16 * T)
    assert "b1_query" not in stats and "b2_key" not in stats
    attribution = pk.PatternAttribution(model, patterns=pattern_net.patterns)
    for analyzer in (pattern_net, attribution):
        out = analyzer.analyze(data[:3])
        assert out.shape == (3, T, D) and np.all(np.isfinite(out)) and np.abs(out).max() > 0


# ---------------------------------------------------------------------------------------------
# EinsumDense as a linear layer

EINSUM_CASES = [
    # equation, partial output shape, bias axes, input shape
    ("abc,cd->abd", (T, 6), "d", (T, D)),
    ("abc,cde->abde", (T, 2, 3), "de", (T, D)),
    ("abc,cde->abde", (T, 2, 3), "e", (T, D)),
    ("abc,cde->abed", (T, 3, 2), "de", (T, D)),
    ("...b,bc->...c", 6, "c", (T, D)),
    ("abcd,cde->abe", (T, 6), "e", (T, 2, 4)),
]


@pytest.mark.parametrize("equation, out_shape, bias_axes, in_shape", EINSUM_CASES)
def test_einsum_dense_is_a_linear_layer(equation, out_shape, bias_axes, in_shape):
    """Gradient = the tape, LRP-z = x ⊙ ∇ (a linear model), and the fitted linear pattern of the
    EinsumDense equals the estimator computed in numpy with every token a sample."""
    keras.utils.set_random_seed(5)
    x_in = keras.Input(in_shape, dtype=F64)
    layer = L.EinsumDense(equation, out_shape, bias_axes=bias_axes, name="ed", dtype=F64)
    h = L.Flatten()(layer(x_in))
    model = keras.Model(x_in, L.Dense(3, name="logits", dtype=F64)(h))
    randomize(model, 6)
    x = inputs(seed=7, n=40, shape=in_shape)
    tx = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tx)
        y = tf.reduce_max(model(tx), axis=1)
    grad = tape.gradient(y, tx).numpy()
    assert_close(pk.Gradient(model).analyze(x), grad, PASS)
    assert_close(pk.LRPZ(model).analyze(x), x * grad, PASS)

    analyzer = pk.PatternNet(model, pattern_type="linear").fit(x, batch_size=16, verbose=0)
    kernel = layer.kernel.numpy()
    operands, out_spec = equation.split("->")
    k_spec = operands.split(",")[1]
    n_in = int(np.prod([n for c, n in zip(k_spec, kernel.shape) if c not in out_spec]))
    xs = x.reshape(-1, n_in)  # every token a sample; the kernel's input axes come first
    w = kernel.reshape(n_in, -1)
    ys = xs @ w
    cov = (xs - xs.mean(0)).T @ (ys - ys.mean(0)) / len(xs)
    expected = (cov / np.sum(w * cov, axis=0, keepdims=True)).reshape(kernel.shape)
    assert_close(analyzer.patterns["ed"], expected, STATISTICS)
    np.testing.assert_array_equal(analyzer.statistics.layers["ed"].sums["n"], xs.shape[0])


# ---------------------------------------------------------------------------------------------
# MultiHeadAttention, with masks


def attention_mask(x, kind):
    """``None``, the padding mask of ``x``'s all-zero tokens (query and key both valid), or a
    causal mask; boolean ``(b, t, s)``, computed inside the model."""
    if kind == "causal":
        return None
    valid = keras.ops.any(keras.ops.not_equal(x, 0.0), axis=-1)
    if kind == "padding":
        return keras.ops.logical_and(valid[:, :, None], valid[:, None, :])
    return None


def mha_model(dropout=0.0, mask=None, seed=0):
    """Dense embedding → MultiHeadAttention (looked into: query/key/value EinsumDense,
    ``dot_product_attention`` without dropout or einsum + masked Softmax + Dropout + einsum
    with it, output EinsumDense) → residual, LayerNorm, GELU feed-forward, LayerNorm →
    (masked) average over tokens → logits. With ``mask == "padding"`` all-zero tokens are
    padding (an ``attention_mask`` computed in the model), and sequences of any length are
    taken."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((None if mask == "padding" else T, D), dtype=F64)
    mha = L.MultiHeadAttention(HEADS, HEAD_DIM, dropout=dropout, name="mha", dtype=F64)
    h = L.Dense(D, name="embed", dtype=F64)(x)
    a = mha(h, h, attention_mask=attention_mask(x, mask), use_causal_mask=mask == "causal")
    h = L.LayerNormalization(name="ln1", dtype=F64)(h + a)
    f = L.Dense(D, name="ff", activation="gelu", dtype=F64)(h)
    h = L.LayerNormalization(name="ln2", dtype=F64)(h + f)
    valid = keras.ops.any(keras.ops.not_equal(x, 0.0), axis=-1) if mask == "padding" else None
    h = L.GlobalAveragePooling1D(dtype=F64)(h, mask=valid)
    model = keras.Model(x, L.Dense(3, name="logits", dtype=F64)(h))
    randomize(model, seed)
    return model, mha


def held_mha_model(model, x, mask_kind):
    """The held twin of :func:`mha_model`."""
    get = model.get_layer
    mha = get("mha")
    n = tf.shape(x)[1]
    valid = tf.reduce_any(tf.not_equal(x, 0.0), axis=-1)
    mask = None
    if mask_kind == "padding":
        mask = tf.logical_and(valid[:, :, None], valid[:, None, :])[:, None]
    elif mask_kind == "causal":
        mask = tf.cast(tf.linalg.band_part(tf.ones((n, n)), -1, 0), tf.bool)[None, None]
    h = dense(get("embed"), x)
    q, k, v = (einsum_dense(p, h) for p in (mha.query_dense, mha.key_dense, mha.value_dense))
    logits = tf.einsum("aecd,abcd->acbe", k, q) / np.sqrt(HEAD_DIM)
    a = tf.einsum("acbe,aecd->abcd", held_weights(logits, mask), v)
    h = held_layer_norm(get("ln1"), h + einsum_dense(mha.output_dense, a))
    f = held(keras.activations.gelu, dense(get("ff"), h))
    h = held_layer_norm(get("ln2"), h + f)
    if mask_kind == "padding":
        w = tf.cast(valid, h.dtype)[:, :, None]
        pooled = tf.reduce_sum(h * w, axis=1) / tf.reduce_sum(w, axis=1)
    else:
        pooled = tf.reduce_mean(h, axis=1)
    return dense(get("logits"), pooled)


def padding(i):
    """The number of padded tokens of sample ``i``."""
    return i % (T - 1)


def padded_inputs(seed=8, n=4):
    """Tokens with the last :func:`padding` ``(i)`` of sample ``i`` set to zero."""
    x = inputs(seed=seed, n=n)
    for i in range(n):
        x[i, T - padding(i) :] = 0.0
    return x


# Dropout with a causal mask: MultiHeadAttention builds the mask from the projected queries'
# length, which the trace keeps (graph.py: EinsumDense keeps known axes while a call is traced).
MHA_CASES = [(0.0, "padding"), (0.0, "causal"), (0.1, "padding"), (0.1, "causal")]


@pytest.mark.parametrize("dropout, mask", MHA_CASES)
def test_multi_head_attention_against_tape_and_held_model(dropout, mask):
    """The gradient equals the tape; LRP-z equals x ⊙ ∇ and PatternNet with kernel
    patterns y · ∇ of the held model; with ``dot_product_attention`` (no dropout) and with
    einsum + masked Softmax (dropout), unmasked, padded and causal."""
    model, mha = mha_model(dropout, mask)
    x = padded_inputs() if mask == "padding" else inputs(seed=9)
    types = {type(op.layer).__name__ for op in engine.Program(model).ops}
    assert ("DotProductAttention" in types) == (dropout == 0.0), types
    assert_close(held_mha_model(model, tf.constant(x), mask).numpy(), model(x).numpy(), PASS)
    selection = model(x).numpy().argmax(axis=1)
    tx = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tx)
        y = tf.gather(model(tx), selection, axis=1, batch_dims=1)
    tape_grad = tape.gradient(y, tx).numpy()
    index = {"neuron_selection_mode": "index"}
    assert_close(pk.Gradient(model, **index).analyze(x, selection), tape_grad, PASS)

    y_held, grad = held_gradient(model, lambda m, t: held_mha_model(m, t, mask), x, selection)
    assert_close(pk.LRPZ(model, **index).analyze(x, selection), x * grad, PASS)
    pattern_net = pk.PatternNet(model, **index)
    keys = pattern_net._computer.keys
    assert "mha/value" in keys and "mha/attention_output" in keys
    assert "mha/query" not in keys and "mha/key" not in keys
    pattern_net.set_patterns(own_kernel_patterns(pattern_net))
    assert_close(pattern_net.analyze(x, selection), y_held[:, None, None] * grad, PASS)


def test_padded_positions_change_no_explanation():
    """With a padding mask (attention and pooling), the analyzers give exactly 0 at padded
    tokens, and at the others what they give for the same sequence without its padding. (The
    einsum path with a masked Softmax is checked against the held model above.)"""
    model, _ = mha_model(0.0, "padding")
    x = padded_inputs(seed=10)
    fitted = pk.PatternAttribution(model).fit(padded_inputs(seed=11, n=16), verbose=0)
    analyzers = [
        pk.Gradient(model),
        pk.LRPZ(model),
        fitted,
        pk.LRPAlpha2Beta1(model),
        pk.GuidedBackprop(model),
    ]
    for analyzer in analyzers:
        padded = analyzer.analyze(x)
        name = type(analyzer).__name__
        assert np.abs(padded).max() > 0, name
        for i in range(len(x)):
            n = T - padding(i)
            np.testing.assert_array_equal(padded[i, n:], 0.0, err_msg=name)
            alone = analyzer.analyze(x[i : i + 1, :n])
            assert_close(padded[i : i + 1, :n], alone, PASS, err_msg=name)


# ---------------------------------------------------------------------------------------------
# What the held weights send nothing to, and what stays refused


def cross_attention_model(seed=12):
    """Queries and keys from a context input ``c``, values from ``x`` (single head, as the
    ``Attention`` layer computes it: einsum scores, ``keras.ops.softmax``, ``matmul``)."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((T, D), dtype=F64, name="x")
    c = keras.Input((T, D), dtype=F64, name="c")
    q = L.Dense(D, name="query", dtype=F64)(c)
    k = L.Dense(D, name="key", dtype=F64)(c)
    v = L.Dense(D, name="value", dtype=F64)(x)
    w = keras.ops.softmax(keras.ops.einsum("btd,bsd->bts", q, k), axis=-1)
    h = L.LayerNormalization(name="ln", dtype=F64)(x + keras.ops.matmul(w, v))
    h = L.Dense(D, activation="gelu", name="ff", dtype=F64)(h)
    model = keras.Model([x, c], L.Dense(3, name="logits", dtype=F64)(L.Flatten()(h)))
    randomize(model, seed)
    return model


def test_queries_and_keys_get_nothing_from_rule_based_analyzers():
    """The product of queries and keys passes nothing: every rule-based analyzer explains the
    context input (which only sets the attention weights) by exact zeros, visiting neither the
    query/key projections nor the scores; the gradient family does not hold them."""
    model = cross_attention_model()
    x, c = inputs(seed=13), inputs(seed=14)
    program = engine.Program(model)
    # Layers by name, operations by class (their automatic names depend on what ran before).
    reached = {
        op.key if isinstance(op.layer, L.Layer) else type(op.layer).__name__
        for op in program.ops
        if program.reached_when_held(op)
    }
    assert {"query", "key", "Einsum", "Softmax"}.isdisjoint(reached), reached
    assert {"value", "Matmul", "ln", "ff", "logits"} <= reached, reached
    data = [inputs(seed=15, n=16), inputs(seed=16, n=16)]
    pattern_net = pk.PatternNet(model).fit(data, verbose=0)
    assert sorted(pattern_net.patterns) == ["ff", "logits", "value"]
    for analyzer in (
        pk.LRPZ(model),
        pk.LRPAlpha2Beta1(model),
        pk.DeepTaylor(model),
        pk.DeConvNet(model),
        pattern_net,
        pk.PatternAttribution(model, patterns=pattern_net.patterns),
    ):
        on_x, on_c = analyzer.analyze([x, c])
        name = type(analyzer).__name__
        np.testing.assert_array_equal(on_c, 0.0, err_msg=name)
        assert np.all(np.isfinite(on_x)) and np.abs(on_x).max() > 0, name
    _, on_c = pk.Gradient(model).analyze([x, c])
    assert np.abs(on_c).max() > 0


def test_products_of_two_signals_are_refused_by_name():
    """A product of two tensors neither of which is attention weights is refused by every
    rule-based analyzer, naming it; so is a softmax whose output is used otherwise than as held
    attention weights. The gradient family differentiates both."""
    keras.utils.set_random_seed(17)
    x = keras.Input((T, D))
    a, b = L.Dense(4, name="a")(x), L.Dense(4, name="b")(x)
    gram = keras.ops.einsum("btd,bte->bde", a, b)
    # The weights also reach the output directly.
    w = keras.ops.softmax(keras.ops.einsum("btd,bsd->bts", a, b), axis=-1)
    both = L.Concatenate()([L.Flatten()(keras.ops.matmul(w, x)), L.Flatten()(w)])
    data = inputs(seed=18).astype("float32")
    for out, message in (
        (L.Flatten()(gram), r"'einsum(_\d+)?' of class Einsum multiplies two tensors neither of"),
        # The softmax is reached, and so is the product of a and b before it.
        (both, r"'einsum(_\d+)?' of class Einsum multiplies two tensors neither of"),
    ):
        model = keras.Model(x, L.Dense(2)(out))
        for cls in (pk.LRPZ, pk.LRPAlpha1Beta0, pk.DeConvNet, pk.GuidedBackprop, pk.PatternNet):
            with pytest.raises(ValueError, match=message):
                cls(model)
        tx = tf.constant(data)
        with tf.GradientTape() as tape:
            tape.watch(tx)
            y = tf.reduce_max(model(tx), axis=1)
        assert_close(pk.Gradient(model).analyze(data), tape.gradient(y, tx).numpy(), PASS)
    softmax = [op for op in engine.Program(model).ops if type(op.layer).__name__ == "Softmax"]
    assert softmax[0].kind == "opaque"
    assert "applies a softmax inside the model" in softmax[0].refusal
