"""Coverage cases of the attention helper (issue 20, item 4): EinsumDense and the attention
layers.

The held references are written here from the layers' definitions: the attention weights under
``stop_gradient`` (LRP-z is ``x ⊙ ∇`` of them, PatternNet with kernel patterns ``y · ∇``).
MultiHeadAttention, GroupedQueryAttention, Attention and AdditiveAttention have no rule of their own: they are
looked into (graph.py, owner "lead" in the coverage test's sense), and what is inside them
(EinsumDense, ``dot_product_attention``, ``einsum``/``matmul`` of the weights and the values)
has the attention rules.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers as L

from layer_cases import LayerCase, SmallModel, add

T, D = 4, 6


def _einsum(layer, x):
    y = tf.einsum(layer.equation, x, layer.kernel)
    return y if layer.bias is None else y + layer.bias


def _logits(model, h):
    return model.get_layer("logits")(tf.reduce_mean(h, axis=1))


def _tokens_to_logits(name, attention):
    """``(T, D)`` tokens → ``attention(x)`` → mean over tokens → logits, seeded."""
    keras.utils.set_random_seed(0)
    x = keras.Input((T, D))
    h = L.GlobalAveragePooling1D()(attention(x))
    return keras.Model(x, L.Dense(3, name="logits", bias_initializer="random_normal")(h), name=name)


# -- EinsumDense ------------------------------------------------------------------------------


def _einsum_dense_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((T, D)),
            L.EinsumDense(
                "abc,cde->abde", (T, 2, 3), bias_axes="de", bias_initializer="random_normal"
            ),
            L.Flatten(),
            L.Dense(3, bias_initializer="random_normal"),
        ],
        name="einsum_dense",
    )


# -- MultiHeadAttention -----------------------------------------------------------------------


def _mha_model():
    return _tokens_to_logits(
        "multi_head_attention",
        lambda x: L.MultiHeadAttention(2, 3, name="mha", bias_initializer="random_normal")(x, x),
    )


def _held_mha(model, x):
    mha = model.get_layer("mha")
    q, k, v = (_einsum(p, x) for p in (mha.query_dense, mha.key_dense, mha.value_dense))
    w = tf.nn.softmax(tf.einsum("aecd,abcd->acbe", k, q) / np.sqrt(3.0), axis=-1)
    a = tf.einsum("acbe,aecd->abcd", tf.stop_gradient(w), v)
    return _logits(model, _einsum(mha.output_dense, a))


# -- GroupedQueryAttention --------------------------------------------------------------------


def _gqa_model():
    return _tokens_to_logits(
        "grouped_query_attention",
        lambda x: L.GroupQueryAttention(3, 4, 2, name="gqa", bias_initializer="random_normal")(
            x, x
        ),
    )


def _held_gqa(model, x):
    gqa = model.get_layer("gqa")
    q = _einsum(gqa._query_dense, x)  # (b, t, 4 heads, 3)
    k, v = (tf.repeat(_einsum(p, x), 2, axis=2) for p in (gqa._key_dense, gqa._value_dense))
    w = tf.nn.softmax(tf.einsum("bquh,bkuh->buqk", q, k) / np.sqrt(3.0), axis=-1)
    a = tf.einsum("buqk,bkuh->bquh", tf.stop_gradient(w), v)
    return _logits(model, _einsum(gqa._output_dense, a))


# -- Attention (Luong-style, one head) --------------------------------------------------------


def _attention_model():
    def attention(x):
        q = L.Dense(D, name="q", bias_initializer="random_normal")(x)
        v = L.Dense(D, name="v", bias_initializer="random_normal")(x)
        return L.Attention(name="attention")([q, v])

    return _tokens_to_logits("attention", attention)


def _held_attention(model, x):
    q, v = model.get_layer("q")(x), model.get_layer("v")(x)
    w = tf.nn.softmax(tf.matmul(q, v, transpose_b=True), axis=-1)
    return _logits(model, tf.matmul(tf.stop_gradient(w), v))


def _additive_attention_model():
    def attention(x):
        q = L.Dense(D, name="q", bias_initializer="random_normal")(x)
        v = L.Dense(D, name="v", bias_initializer="random_normal")(x)
        return L.AdditiveAttention(name="attention")([q, v])

    model = _tokens_to_logits("additive_attention", attention)
    scale = model.get_layer("attention").scale  # a variable multiplying symbolic scores
    scale.assign(np.linspace(0.5, 2.0, D).astype(scale.dtype))
    return model


def _held_additive_attention(model, x):
    q, v = model.get_layer("q")(x), model.get_layer("v")(x)
    scale = model.get_layer("attention").scale
    scores = tf.reduce_sum(scale * tf.tanh(q[:, :, None, :] + v[:, None, :, :]), axis=-1)
    w = tf.nn.softmax(scores, axis=-1)
    return _logits(model, tf.matmul(tf.stop_gradient(w), v))


looked_into = "looked into (graph.py); what is inside has the attention rules (attention helper)"
add(
    LayerCase("EinsumDense", "supported", "attention", SmallModel(_einsum_dense_model)),
    LayerCase(
        "MultiHeadAttention",
        "supported",
        "lead",
        SmallModel(_mha_model, held=_held_mha),
        reason=looked_into,
    ),
    # Needs the ops helper's rule for Repeat (key and value heads repeated to the query heads).
    LayerCase(
        "GroupedQueryAttention",
        "supported",
        "lead",
        SmallModel(_gqa_model, held=_held_gqa),
        reason=looked_into,
    ),
    LayerCase(
        "Attention",
        "supported",
        "lead",
        SmallModel(_attention_model, held=_held_attention),
        reason=looked_into,
    ),
    LayerCase(
        "AdditiveAttention",
        "supported",
        "lead",
        SmallModel(_additive_attention_model, held=_held_additive_attention),
        reason=looked_into,
    ),
)
