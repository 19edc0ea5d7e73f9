"""The shortcuts of issue 14 ("Residual networks at the arithmetic floor") compute what the
plain TensorFlow ops they replace compute.

- ``layers._subsample``: a strided slice whose gradient is a padding and a reshape, equal bit for
  bit to TensorFlow's ``StridedSliceGrad``, eagerly and compiled, for even and odd sizes.
- ``layers.shared_kernels``: one kernel tensor per part and pass, a fresh read outside it, and
  weights changed between two ``analyze`` calls are seen.
- ``LinearPart.add_bias`` as ``BiasAdd`` (channels last and first) equals the broadcast add.
- The XLA-fused elementwise rules equal the TensorFlow ops they stand for, bit for bit.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, assert_close

import pattern_keras as pk
from pattern_keras import engine, rules
from pattern_keras.layers import shared_kernels
from pattern_keras.layers.linear import _subsample

L = keras.layers


def strided(x, strides):
    return x[(slice(None),) + tuple(slice(None, None, s) for s in strides)]


@pytest.mark.parametrize(
    "shape, strides",
    [
        ((2, 8, 8, 3), (2, 2)),
        ((2, 7, 9, 3), (2, 3)),
        ((3, 5, 4), (2,)),
        ((1, 6, 7, 5, 2), (2, 2, 3)),
    ],
)
@pytest.mark.parametrize("compiled", [False, True])
def test_subsample_gradient_equals_strided_slice_gradient(shape, strides, compiled):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    kept_shape = (shape[0],) + tuple(-(-n // s) for n, s in zip(shape[1:-1], strides)) + shape[-1:]
    u = tf.constant(rng.normal(size=kept_shape).astype("float32"))

    def both(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours, theirs = _subsample(x, strides), strided(x, strides)
        return ours, theirs, tape.gradient(ours, x, u), tape.gradient(theirs, x, u)

    if compiled:
        spec = tf.TensorSpec((None,) * (len(shape) - 1) + shape[-1:], tf.float32)
        both = tf.function(both, input_signature=[spec])
    ours, theirs, g_ours, g_theirs = both(x)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(g_ours.numpy(), g_theirs.numpy())


def small_conv_bn():
    keras.utils.set_random_seed(4)
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(3, 3, padding="same", name="c")(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Activation("relu")(h)
    h = L.Conv2D(4, 1, strides=2, name="pointwise")(h)
    h = L.Flatten()(h)
    return keras.Model(x, L.Dense(3, name="out")(h))


def test_shared_kernels_one_tensor_per_pass():
    program = engine.Program(small_conv_bn(), fold_batch_norm=True)
    part = next(op for op in program.ops if op.key == "c").linear
    assert part.kernel is not part.kernel  # outside: a fresh read (and fold) each time
    with shared_kernels():
        first = part.kernel
        assert part.kernel is first
        with shared_kernels():  # a nested pass has its own
            assert part.kernel is not first
        assert part.kernel is first
    assert_close(first.numpy(), part.kernel.numpy(), PASS)


def test_weights_changed_between_calls_are_seen():
    model = small_conv_bn()
    x = np.random.default_rng(5).normal(size=(3, 6, 6, 2)).astype("float32")
    analyzer = pk.LRPZ(model)
    before = analyzer.analyze(x, verbose=0)
    conv = model.get_layer("c")
    conv.kernel.assign(conv.kernel.numpy() * -1.5)
    after = analyzer.analyze(x, verbose=0)
    assert_close(after, pk.LRPZ(model).analyze(x, verbose=0), PASS)
    assert np.abs(after - before).max() > 1e-3 * np.abs(before).max()


@pytest.mark.parametrize("channels_last", [True, False])
def test_bias_add_equals_broadcast_add(channels_last):
    program = engine.Program(small_conv_bn())
    part = next(op for op in program.ops if op.key == "c").linear
    z = tf.constant(np.random.default_rng(6).normal(size=(2, 5, 5, 3)).astype("float32"))
    if not channels_last:
        z = tf.transpose(z, [0, 3, 1, 2])
        part.channel_axis = 1
    bias = part.bias.numpy()
    shape = [1, 1, 1, 3] if channels_last else [1, 3, 1, 1]
    np.testing.assert_array_equal(part.add_bias(z).numpy(), (z + bias.reshape(shape)).numpy())


def test_fused_rules_equal_their_ops():
    rng = np.random.default_rng(7)
    s = tf.constant(rng.normal(size=(4, 5, 6)).astype("float32"))
    z = rng.normal(size=(4, 5, 6)).astype("float32")
    z[0, 0, :3] = 0.0  # exact zeros
    z = tf.constant(z)
    eps = tf.constant(0.3, tf.float32)
    magnitude = tf.abs(z)
    np.testing.assert_array_equal(
        rules._epsilon_rescaled(s, z, eps).numpy(),
        (s * magnitude / (magnitude + eps)).numpy(),
    )
    # |z|/(|z| + ε) is the ε-rule's z/(z + ε·sign(z)), sign(0) = +1
    stabilized = z + tf.where(z >= 0, eps, -eps)
    assert_close(rules._epsilon_rescaled(s, z, eps).numpy(), (s * z / stabilized).numpy(), PASS)
    np.testing.assert_array_equal(
        rules._nonzero_rescaled(s, z).numpy(), np.where(z.numpy() != 0, s.numpy(), 0.0)
    )
    relu_gradient = tf.raw_ops.ReluGrad(gradients=tf.nn.relu(s), features=z)
    np.testing.assert_array_equal(rules._gated_rectified(s, z).numpy(), relu_gradient.numpy())
