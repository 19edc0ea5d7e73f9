"""Convolutions without the crashing TensorFlow kernels: 1×1 as matrix products, the rest cropped.

TensorFlow 2.21 with oneDNN crashes the process on the kernel and input gradients of a 1×1
stride-2 convolution over some even-sized inputs (NOTES.md, 2026-11-29). Here: the replacement
maps equal the layers and independent float64 numpy references (forward, kernel gradient, input
gradient) on small shapes; a 1×1 convolution leaves no convolution op in any traced analyzer or
fit; and, in subprocesses (a crash fails one test, not the run), the strided sweep of
``tests/_conv_sweep_worker.py`` through every analyzer and the fit.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L

import pattern_keras as pk
from pattern_keras.layers.linear import conv_parts as _conv_parts

HERE = pathlib.Path(__file__).parent


# ---------------------------------------------------------------------------------------------
# Independent reference: a 2-D convolution over explicit windows, float64


def _same_pads(n, k, s, d):
    eff = (k - 1) * d + 1
    total = max((-(-n // s) - 1) * s + eff - n, 0)
    return total // 2, total - total // 2


def _windows(x, kernel_spatial, strides, dilation, padding):
    """``(padded x, list of (window index, out index slices))`` for a channels-last 2-D input."""
    pads = [(0, 0)]
    for n, k, s, d in zip(x.shape[1:3], kernel_spatial, strides, dilation):
        pads.append(_same_pads(n, k, s, d) if padding == "same" else (0, 0))
    pads.append((0, 0))
    xp = np.pad(x, pads)
    outs = [
        (xp.shape[1 + i] - ((kernel_spatial[i] - 1) * dilation[i] + 1)) // strides[i] + 1
        for i in range(2)
    ]
    taps = []
    for a in range(kernel_spatial[0]):
        for b in range(kernel_spatial[1]):
            rows = slice(
                a * dilation[0], a * dilation[0] + (outs[0] - 1) * strides[0] + 1, strides[0]
            )
            cols = slice(
                b * dilation[1], b * dilation[1] + (outs[1] - 1) * strides[1] + 1, strides[1]
            )
            taps.append(((a, b), rows, cols))
    return xp, pads, taps


def reference(x, kernel, u, strides, dilation, padding, depthwise):
    """``(z, dK, dx)`` of a 2-D (depthwise) convolution for upstream ``u``, float64."""
    x, kernel, u = (np.float64(t) for t in (x, kernel, u))
    xp, pads, taps = _windows(x, kernel.shape[:2], strides, dilation, padding)
    n, c = x.shape[0], x.shape[-1]
    groups = 1 if depthwise else c // kernel.shape[2]
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    z = 0.0
    for (a, b), rows, cols in taps:
        window = xp[:, rows, cols, :]
        k = kernel[a, b]
        if depthwise:  # output channel c·m + j
            m = k.shape[-1]
            z = z + (window[..., :, None] * k).reshape(window.shape[:3] + (c * m,))
            uu = u.reshape(u.shape[:3] + (c, m))
            dk[a, b] += np.einsum("nhwc,nhwcm->cm", window, uu)
            dxp[:, rows, cols, :] += np.einsum("nhwcm,cm->nhwc", uu, k)
        else:
            cin, cout = k.shape
            wg = window.reshape(window.shape[:3] + (groups, cin))
            kg = k.reshape(cin, groups, cout // groups)
            z = z + np.einsum("nhwgi,igo->nhwgo", wg, kg).reshape(window.shape[:3] + (cout,))
            ug = u.reshape(u.shape[:3] + (groups, cout // groups))
            dk[a, b] += np.einsum("nhwgi,nhwgo->igo", wg, ug).reshape(cin, cout)
            dxp[:, rows, cols, :] += np.einsum("nhwgo,igo->nhwgi", ug, kg).reshape(window.shape)
    (_, _), (t, bt), (lft, rt), (_, _) = pads
    dx = dxp[:, t : dxp.shape[1] - bt, lft : dxp.shape[2] - rt, :]
    assert n == dx.shape[0]
    return z, dk, dx


CASES = {
    # name: (layer, input shape)
    "1x1 stride 2 valid": (lambda: L.Conv2D(3, 1, strides=2), (2, 10, 11, 2)),
    "1x1 stride 2 same": (lambda: L.Conv2D(3, 1, strides=2, padding="same"), (2, 10, 11, 2)),
    "1x1 stride (3, 2)": (lambda: L.Conv2D(3, 1, strides=(3, 2)), (2, 10, 11, 2)),
    "1x1 grouped": (lambda: L.Conv2D(6, 1, groups=2), (2, 5, 6, 4)),
    "1x1 depthwise stride 2": (
        lambda: L.DepthwiseConv2D(1, strides=2, depth_multiplier=2),
        (2, 10, 11, 3),
    ),
    "3x3 stride 2 valid": (lambda: L.Conv2D(3, 3, strides=2), (2, 10, 11, 2)),
    "3x3 stride 2 same": (lambda: L.Conv2D(3, 3, strides=2, padding="same"), (2, 10, 11, 2)),
    "2x2 stride 3 same": (lambda: L.Conv2D(3, 2, strides=3, padding="same"), (2, 12, 11, 2)),
    "3x3 dilation 2": (lambda: L.Conv2D(3, 3, dilation_rate=2), (2, 10, 11, 2)),
    "3x3 depthwise stride 2": (
        lambda: L.DepthwiseConv2D(3, strides=2, depth_multiplier=2),
        (2, 10, 11, 3),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_convolution_apply_equals_layer_and_numpy_gradients(case):
    """Forward equals the Keras layer; kernel and input gradients equal numpy float64."""
    make, shape = CASES[case]
    layer = make()
    rng = np.random.default_rng(len(case))
    x = rng.normal(size=shape).astype("float32")
    z_layer = layer(x).numpy()
    ((_, part),) = _conv_parts(layer, (None,) + shape[1:])
    depthwise = isinstance(layer, L.DepthwiseConv2D)
    kernel = part.kernel
    u = rng.normal(size=z_layer.shape).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([xt, kernel])
        z = part.apply(xt, kernel)
    dk = tape.gradient(z, kernel, output_gradients=u).numpy()
    dx = tape.gradient(z, xt, output_gradients=u).numpy()
    z_ref, dk_ref, dx_ref = reference(
        x, kernel.numpy(), u, layer.strides, layer.dilation_rate, layer.padding, depthwise
    )
    np.testing.assert_allclose(part.add_bias(z).numpy(), z_layer, rtol=1e-5, atol=1e-5)
    for got, want in ((z.numpy(), z_ref), (dk, dk_ref), (dx, dx_ref)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize(
    "layer",
    [
        lambda: L.Conv1D(3, 3, strides=2, padding="causal"),
        lambda: L.Conv1D(3, 1, strides=2, padding="causal"),
        lambda: L.Conv1D(3, 2, strides=3, padding="valid"),
    ],
    ids=["causal 3", "causal 1x1", "valid 2 stride 3"],
)
def test_conv1d_apply_and_input_gradient_equal_layer(layer):
    """1-D, causal padding included: forward and input gradient equal the layer's (the
    layer's own gradients do not crash on these small shapes)."""
    layer = layer()
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 10, 2)).astype("float32"))
    layer.build(x.shape)
    ((_, part),) = _conv_parts(layer, (None, 10, 2))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = part.add_bias(part.apply(x, part.kernel))
        theirs = layer(x)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    u = tf.constant(np.random.default_rng(4).normal(size=theirs.shape).astype("float32"))
    np.testing.assert_allclose(
        tape.gradient(ours, x, output_gradients=u).numpy(),
        tape.gradient(theirs, x, output_gradients=u).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_apply_crops_inputs_of_unknown_size():
    """With spatial sizes unknown at trace time, the crop is computed in the graph."""
    layer = L.Conv2D(3, 3, strides=2)
    layer.build((None, None, None, 2))
    ((_, part),) = _conv_parts(layer, (None, None, None, 2))
    spec = tf.TensorSpec((None, None, None, 2))
    apply = tf.function(lambda x: part.apply(x, part.kernel), input_signature=[spec])
    for n in (9, 10):
        x = np.random.default_rng(n).normal(size=(2, n, n + 1, 2)).astype("float32")
        np.testing.assert_allclose(
            part.add_bias(apply(x)).numpy(), layer(x).numpy(), rtol=1e-5, atol=1e-5
        )


def _op_types(concrete) -> set[str]:
    graph_def = concrete.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types


def test_pointwise_convolutions_leave_no_convolution_op():
    """A model of 1×1 convolutions (strided, depthwise, separable's pointwise part): no
    convolution op, forward or gradient, in a traced analyzer or in the fit's traced step."""
    keras.utils.set_random_seed(5)
    x = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 1, strides=2, activation="relu")(x)
    h = L.DepthwiseConv2D(1, strides=2, depth_multiplier=2, activation="relu")(h)
    h = L.SeparableConv2D(3, 1, activation="relu")(h)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
    data = np.random.default_rng(6).normal(size=(4, 8, 8, 2)).astype("float32")
    analyzers = [
        pk.Gradient(model),
        pk.LRPAlpha2Beta1(model),
        pk.LRPEpsilon(model),
        pk.PatternAttribution(model).fit(data, batch_size=4, verbose=0),
    ]
    concretes = [a._compiled_fn().get_concrete_function() for a in analyzers]
    concretes.append(analyzers[-1]._computer._cached_state._step_fn.get_concrete_function())
    for concrete in concretes:
        types = _op_types(concrete)
        assert "MatMul" in types or "BatchMatMulV2" in types or "Einsum" in types
        assert not [t for t in types if "Conv" in t], sorted(t for t in types if "Conv" in t)


# ---------------------------------------------------------------------------------------------
# The sweep, one subprocess per kernel size and mode


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("kernel", [1, 3])
def test_strided_convolution_sweep_does_not_crash(kernel, mode):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(HERE.parent)]
            + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "_conv_sweep_worker.py"),
            "--kernel",
            str(kernel),
            "--mode",
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, (
        f"exit status {proc.returncode} (negative: killed by signal)\n{tail}"
    )
    assert proc.stdout.strip().splitlines()[-1] == "OK", tail
