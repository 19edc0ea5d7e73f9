"""Shared test setup: quiet TensorFlow logs, and the reference network."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
        model.get_layer(name).set_weights([ref[f"weights/{name}/kernel"],
                                           ref[f"weights/{name}/bias"]])
    np.testing.assert_allclose(model.predict(ref["x_analyze"], verbose=0), ref["logits"],
                               rtol=1e-5, atol=1e-5)
    return model, ref
