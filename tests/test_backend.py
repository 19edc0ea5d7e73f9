"""Another Keras backend than TensorFlow: a one-sentence error saying how to select TensorFlow."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import pytest

import pattern_keras as pk

ROOT = pathlib.Path(__file__).parent.parent


def small_model():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(3, activation="relu")(x)))


@pytest.mark.parametrize("build", [pk.Gradient, pk.LRPZ, pk.PatternAttribution, pk.PatternComputer])
def test_other_backend_is_refused_in_one_sentence(monkeypatch, build):
    model = small_model()
    monkeypatch.setattr(keras.config, "backend", lambda: "jax")
    with pytest.raises(RuntimeError) as info:
        build(model)
    message = str(info.value)
    assert "TensorFlow backend" in message and "'jax'" in message
    assert "KERAS_BACKEND=tensorflow" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_in_a_subprocess():
    code = (
        "import keras, pattern_keras as pk\n"
        "x = keras.Input((4,))\n"
        "model = keras.Model(x, keras.layers.Dense(2)(x))\n"
        "try:\n"
        "    pk.Gradient(model)\n"
        "except RuntimeError as err:\n"
        "    print('REFUSED', err)\n"
    )
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout and "KERAS_BACKEND=tensorflow" in proc.stdout, proc.stdout
