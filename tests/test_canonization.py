"""BatchNormalization folding (``engine.Program(fold_batch_norm=True)``): the folded program
computes what the model computes, folds only what it may, leaves the model untouched, and makes
patterns belong to the effective kernel of a layer that the following ReLU makes rectified."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import PASS, SPLIT, assert_close
from conftest import randomize_batch_norm as _randomize_batch_norm

import pattern_keras as pk
from pattern_keras import engine

L = keras.layers


def randomize_batch_norm(model, seed=0):
    """Wide statistics, negative scales included: folding must carry the sign."""
    _randomize_batch_norm(model, seed, gamma=(-2.0, 2.0))


def folded_output(model, x, fold=True):
    program = engine.Program(model, fold_batch_norm=fold)
    values = engine.forward(program, [tf.constant(x)])
    return program, values[program.output].numpy()


def check_fold(model, x, n_affine_left=0):
    want = model(x, training=False).numpy()
    program, got = folded_output(model, x)
    assert_close(got, want, PASS)
    kinds = [op.kind for op in program.ops]
    assert kinds.count("affine") == n_affine_left, kinds
    return program


def conv_bn_relu(use_bias=True):
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(5, 3, padding="same", use_bias=use_bias, name="conv")(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.Conv2D(4, 3, strides=2, name="conv2")(h)
    h = L.BatchNormalization(name="bn2", center=False, scale=False)(h)
    h = L.Flatten()(h)
    model = keras.Model(x, L.Dense(3, name="out")(h))
    randomize_batch_norm(model)
    return model


def images(shape, seed=1, n=4):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype("float32")


@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_bn_relu_folds_and_preserves_output(use_bias):
    model = conv_bn_relu(use_bias)
    program = check_fold(model, images((8, 8, 3)))
    conv = next(op for op in program.ops if op.key == "conv")
    assert conv.rectified  # the ReLU after the BN gates the folded layer
    assert conv.linear.bias_fn is not None  # the BN's shift became a bias
    conv2 = next(op for op in program.ops if op.key == "conv2")
    assert not conv2.rectified
    # Without folding the BN stays an op and the conv is not rectified.
    unfolded = engine.Program(model)
    assert [op.kind for op in unfolded.ops].count("affine") == 2
    assert not next(op for op in unfolded.ops if op.key == "conv").rectified


def test_folded_kernel_and_bias_values():
    model = conv_bn_relu()
    conv, bn = model.get_layer("conv"), model.get_layer("bn")
    gamma, beta, mean, var = [
        v.numpy() for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)
    ]
    scale = gamma / np.sqrt(var + bn.epsilon)
    program = engine.Program(model, fold_batch_norm=True)
    part = next(op for op in program.ops if op.key == "conv").linear
    assert_close(part.kernel.numpy(), conv.kernel.numpy() * scale, PASS)
    assert_close(part.bias.numpy(), (conv.bias.numpy() - mean) * scale + beta, PASS)
    # The model itself is untouched.
    assert not np.allclose(conv.kernel.numpy(), part.kernel.numpy())


def test_folding_follows_weight_changes():
    """The folded kernel is read when called: later weight changes are seen."""
    model = conv_bn_relu()
    program = engine.Program(model, fold_batch_norm=True)
    x = images((8, 8, 3))
    model.get_layer("bn").moving_variance.assign(np.full(5, 4.0, "float32"))
    got = engine.forward(program, [tf.constant(x)])[program.output].numpy()
    assert_close(got, model(x).numpy(), PASS)


def test_dense_bn():
    keras.utils.set_random_seed(2)
    x = keras.Input((7,))
    h = L.BatchNormalization(name="bn_in")(x)  # no linear layer before: stays affine
    h = L.Dense(6, name="d1")(h)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.Activation("relu")(h)
    h = L.Dense(5, activation="relu", name="d2")(h)
    h = L.BatchNormalization(name="bn2")(h)  # after a fused ReLU: stays affine
    model = keras.Model(x, L.Dense(3, name="out")(h))
    randomize_batch_norm(model)
    program = check_fold(model, images((7,)), n_affine_left=2)
    assert [op.key for op in program.ops if op.kind == "affine"] == ["bn_in", "bn2"]
    assert next(op for op in program.ops if op.key == "d1").rectified


def test_bn_after_add_and_shared_input_stay_affine():
    """A BN after an Add, and a BN whose linear layer's output is also used elsewhere, are not
    folded (folding would change the other consumer's input)."""
    keras.utils.set_random_seed(3)
    x = keras.Input((6, 6, 2))
    c = L.Conv2D(2, 3, padding="same", name="c")(x)
    a = L.BatchNormalization(name="bn_shared")(c)
    s = L.Add(name="add")([a, c])
    s = L.BatchNormalization(name="bn_add")(s)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(s)))
    randomize_batch_norm(model)
    check_fold(model, images((6, 6, 2)), n_affine_left=2)


def test_bn_on_another_axis_is_not_folded():
    """Dense acts on the last axis; a BN normalizing axis 1 of a sequence is not per neuron."""
    keras.utils.set_random_seed(4)
    x = keras.Input((5, 4))
    h = L.Dense(3, name="d")(x)
    h = L.BatchNormalization(axis=1, name="bn_time")(h)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
    randomize_batch_norm(model)
    check_fold(model, images((5, 4)), n_affine_left=1)


@pytest.mark.parametrize("kind", ["depthwise", "separable", "transpose", "conv1d", "dense3d"])
def test_other_linear_layers_fold(kind):
    keras.utils.set_random_seed(5)
    if kind == "conv1d":
        x = keras.Input((12, 3))
        h = L.Conv1D(4, 3, padding="causal", name="lin")(x)
    elif kind == "dense3d":
        x = keras.Input((5, 4))
        h = L.Dense(3, name="lin")(x)
    else:
        x = keras.Input((7, 7, 3))
        layer = {
            "depthwise": lambda: L.DepthwiseConv2D(
                3, depth_multiplier=2, padding="same", name="lin"
            ),
            "separable": lambda: L.SeparableConv2D(4, 3, name="lin"),
            "transpose": lambda: L.Conv2DTranspose(4, 3, strides=2, name="lin"),
        }[kind]()
        h = layer(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU()(h)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
    randomize_batch_norm(model)
    program = check_fold(model, images(tuple(model.input.shape[1:])))
    last = [op for op in program.ops if op.key == "lin"][-1]
    assert last.rectified


def test_channels_first():
    keras.utils.set_random_seed(6)
    x_in = keras.Input((3, 8, 8))
    h = L.Conv2D(4, 3, padding="same", data_format="channels_first", name="conv")(x_in)
    h = L.BatchNormalization(axis=1, name="bn")(h)
    h = L.ReLU()(h)
    model = keras.Model(x_in, L.Dense(2)(L.Flatten()(h)))
    randomize_batch_norm(model)
    x = images((3, 8, 8))
    try:
        model(x)
    except tf.errors.UnimplementedError:
        pytest.skip(
            "channels_first convolutions do not run on this device (TensorFlow's CPU "
            "kernels are NHWC only)"
        )
    program = check_fold(model, x)
    assert next(op for op in program.ops if op.key == "conv").rectified


def test_nested_models_fold():
    keras.utils.set_random_seed(7)
    i = keras.Input((6, 6, 2))
    h = L.BatchNormalization(name="bn")(L.Conv2D(3, 3, padding="same", name="conv")(i))
    block = keras.Model(i, L.ReLU()(h), name="block")
    x = keras.Input((6, 6, 2))
    model = keras.Model(x, L.Dense(2)(L.Flatten()(block(x))))
    randomize_batch_norm(model)
    program = check_fold(model, images((6, 6, 2)))
    op = next(op for op in program.ops if op.key == "block/conv")
    assert op.rectified and op.pattern_key == "block/conv"


# ---------------------------------------------------------------------------------------------
# Patterns belong to the folded kernel


def hand_folded(model):
    """The same network with the BN folded by hand into the convolution (numpy)."""
    conv, bn = model.get_layer("conv"), model.get_layer("bn")
    gamma, beta, mean, var = bn.get_weights()
    scale = gamma / np.sqrt(var + bn.epsilon)
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(5, 3, padding="same", activation="relu", name="conv")(x)
    h = L.Conv2D(4, 3, strides=2, name="conv2")(h)
    h = L.BatchNormalization(name="bn2", center=False, scale=False)(h)
    h = L.Flatten()(h)
    folded = keras.Model(x, L.Dense(3, name="out")(h))
    folded.get_layer("conv").set_weights(
        [conv.kernel.numpy() * scale, (conv.bias.numpy() - mean) * scale + beta]
    )
    for name in ("conv2", "bn2", "out"):
        folded.get_layer(name).set_weights(model.get_layer(name).get_weights())
    return folded


def test_patterns_belong_to_the_folded_kernel():
    model = conv_bn_relu()
    folded = hand_folded(model)
    x = images((8, 8, 3), n=64)
    assert_close(folded(x), model(x), PASS)
    computer = pk.PatternComputer(model)
    assert computer.plans["conv"].rectified
    assert not computer.plans["conv2"].rectified
    assert_close(
        computer.plans["conv"].part.kernel.numpy(), folded.get_layer("conv").kernel.numpy(), PASS
    )
    patterns = computer.compute(x, batch_size=32, verbose=0)
    reference = pk.PatternComputer(folded).compute(x, batch_size=32, verbose=0)
    assert sorted(patterns) == sorted(reference) == ["conv", "conv2", "out"]
    for key in patterns:
        assert patterns[key].shape == model.get_layer(key).kernel.shape
        # The same data and batches through kernels folded by TensorFlow and by numpy: the
        # forward passes differ by rounding only, which moves the sums about as much as
        # another summation order does (SPLIT).
        assert_close(patterns[key], reference[key], SPLIT, err_msg=key)
    assert not patterns.has_negative("conv")
    # PatternAttribution on the BN model is PatternAttribution on the hand-folded one.
    a = pk.PatternAttribution(model, patterns=patterns).analyze(x[:4])
    b = pk.PatternAttribution(folded, patterns=reference).analyze(x[:4])
    assert_close(a, b, SPLIT)
