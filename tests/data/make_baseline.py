"""The frozen baseline: every analyzer's output on three reference networks.

``baseline-<commit>.npz`` holds, under ``<network>/<analyzer>/<mode>``, what every analyzer of
:func:`pattern_keras.analyzer_names` returned at that commit on

- ``mlp``: the trained MLP of the iNNvestigate reference (``innvestigate-1.0.9-mlp.npz``), its
  32 analysis samples; patterns fitted on its 1000 fitting samples;
- ``vgg_style``: the network of ``benchmarks/analyze.py`` (64×64×3, random weights, seed 0),
  2 images; patterns fitted on 16 images;
- ``resnet``: a small residual CNN (:func:`small_resnet`: Conv → BN → ReLU, an identity skip
  through ``Add``, max and global average pooling; BatchNorm statistics randomized), 4 images;
  patterns fitted on 64.

Modes: ``max_activation``, ``index3`` (output neuron 3 for every sample) and, on the two small
networks, ``all``. Analyzers with a random or iterative part run with fixed, small settings
(:data:`SETTINGS`). Inputs are stored too (``<network>/inputs/x``); weights only where they are
small (the residual net's, ``resnet/weights/<i>``); the VGG-style net is rebuilt from its seed
and checked against the stored sum of its weights (``vgg_style/weights/checksum``).

Later work compares today's outputs with these (``tests/test_baseline.py``) and replaces the file
only in a commit that says why. Regenerate with::

    PYTHONPATH=. python tests/data/make_baseline.py        # writes baseline-<HEAD>.npz
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent

#: Settings for analyzers whose defaults are costly or random; the others use their defaults.
SETTINGS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 8, "noise_scale": 0.1, "seed": 3},
    "deep_taylor.bounded": {"low": -1.0, "high": 1.0},
}

#: Output neuron explained in mode ``index3``.
INDEX = 3


def small_resnet():
    """A residual CNN on 16×16×3 with BatchNorm (its statistics randomized) and an identity skip."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(21)
    x = keras.Input((16, 16, 3))
    stem = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="res_conv1")(stem)
    h = L.BatchNormalization(name="res_bn1")(h)
    h = L.ReLU(name="res_relu1")(h)
    h = L.Conv2D(8, 3, padding="same", name="res_conv2")(h)
    h = L.BatchNormalization(name="res_bn2")(h)
    h = L.Add(name="res_add")([stem, h])
    h = L.ReLU(name="res_relu2")(h)
    h = L.MaxPooling2D(2, name="pool")(h)
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x, L.Dense(10, name="logits")(h), name="small_resnet")
    rng = np.random.default_rng(22)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.7, 1.3, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
    return model


def _vgg_style():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import analyze as bench  # benchmarks/analyze.py
    finally:
        sys.path.pop(0)
    return bench.vgg_style(seed=0)


def networks(stored: dict[str, np.ndarray] | None = None) -> dict[str, tuple]:
    """``{network: (model, x_analyze, x_fit, modes, fit_batch_size)}``.

    With ``stored`` (a loaded baseline), the residual net takes the stored weights and every
    network the stored analysis inputs, so a change of Keras's initializers cannot move them.
    """
    import keras

    nets = {}
    ref = np.load(HERE / "innvestigate-1.0.9-mlp.npz")
    x = keras.Input((64,))
    h = keras.layers.Dense(32, activation="relu", name="dense1")(x)
    h = keras.layers.Dense(16, activation="relu", name="dense2")(h)
    mlp = keras.Model(x, keras.layers.Dense(10, name="dense3")(h), name="mlp")
    for name in ("dense1", "dense2", "dense3"):
        mlp.get_layer(name).set_weights(
            [ref[f"weights/{name}/kernel"], ref[f"weights/{name}/bias"]]
        )
    modes = ("max_activation", "index3", "all")
    nets["mlp"] = (mlp, ref["x_analyze"], ref["x_fit"], modes, 64)

    rng = np.random.default_rng(5)
    vgg = _vgg_style()
    x_vgg = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    fit_vgg = rng.uniform(-1, 1, (16, 64, 64, 3)).astype("float32")
    nets["vgg_style"] = (vgg, x_vgg, fit_vgg, ("max_activation", "index3"), 16)

    res = small_resnet()
    rng = np.random.default_rng(6)
    x_res = rng.uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
    fit_res = rng.uniform(-1, 1, (64, 16, 16, 3)).astype("float32")
    nets["resnet"] = (res, x_res, fit_res, modes, 32)

    if stored is not None:
        n_weights = len(res.get_weights())
        res.set_weights([stored[f"resnet/weights/{i}"] for i in range(n_weights)])
        nets = {
            name: (m, stored[f"{name}/inputs/x"], *rest) for name, (m, _, *rest) in nets.items()
        }
    return nets


def weight_checksum(model) -> np.ndarray:
    """Sum and sum of squares of all weights, in float64 (detects a rebuilt net that differs)."""
    ws = [np.asarray(w, np.float64) for w in model.get_weights()]
    return np.array([sum(w.sum() for w in ws), sum((w * w).sum() for w in ws)])


def make_analyzer(name: str, model, mode: str, x_fit: np.ndarray, fit_batch_size: int):
    """The analyzer ``name`` in ``mode``, fitted where it needs patterns."""
    import pattern_keras as pk

    selection_mode = "index" if mode.startswith("index") else mode
    analyzer = pk.create_analyzer(
        name, model, neuron_selection_mode=selection_mode, **SETTINGS.get(name, {})
    )
    if hasattr(analyzer, "fit"):
        analyzer.fit(x_fit, batch_size=fit_batch_size, verbose=0)
    return analyzer


def outputs(
    network: str, spec: tuple, analyzers: list[str] | None = None, fitted: dict | None = None
) -> dict[str, np.ndarray]:
    """``{"<network>/<analyzer>/<mode>": explanation}`` for ``spec`` from :func:`networks`.

    ``fitted`` caches pattern analyzers' statistics between modes: the fit does not depend on
    the mode, so one fit per network and pattern analyzer.
    """
    import pattern_keras as pk

    model, x, x_fit, modes, fit_batch = spec
    names = analyzers if analyzers is not None else pk.analyzer_names()
    out = {}
    for name in names:
        for mode in modes:
            analyzer = make_analyzer(name, model, mode, x_fit, fit_batch)
            kwargs = {"neuron_selection": INDEX} if mode.startswith("index") else {}
            out[f"{network}/{name}/{mode}"] = np.asarray(analyzer.analyze(x, **kwargs))
    return out


def main() -> int:
    commit = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    arrays: dict[str, np.ndarray] = {}
    for network, spec in networks().items():
        model, x = spec[0], spec[1]
        arrays[f"{network}/inputs/x"] = x
        if network == "resnet":
            for i, w in enumerate(model.get_weights()):
                arrays[f"resnet/weights/{i}"] = w
        arrays[f"{network}/weights/checksum"] = weight_checksum(model)
        arrays.update(outputs(network, spec))
        print(f"{network}: done", file=sys.stderr, flush=True)
    path = HERE / f"baseline-{commit}.npz"
    np.savez_compressed(path, **arrays)
    bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
    print(
        f"wrote {path.name}: {len(arrays)} arrays, {path.stat().st_size / 1e6:.2f} MB; "
        f"non-finite: {bad or 'none'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
