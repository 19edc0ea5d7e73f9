"""Strided convolutions through every analyzer and the fit, in a process of its own.

TensorFlow 2.21 with oneDNN crashes the process (segfault, "double free") on the kernel and input
gradients of a 1×1 stride-2 convolution over some even-sized inputs (NOTES.md, 2026-11-29).
pattern_keras applies 1×1 convolutions as matrix products and crops every other convolution's
input to the extent its windows read; this script checks that nothing crashes, over input sizes
28–64, so that ``tests/test_strided_convolutions.py`` can run it in a subprocess: a crash fails one
test there, not the whole run.

Usage::

    python tests/_conv_sweep_worker.py --kernel 1 --mode eager
    python tests/_conv_sweep_worker.py --kernel 3 --mode compiled

One model holds every size at once (one input, stride-2 convolutions and a global pooling per
size, the branches summed), so each analyzer is traced once for all sizes.

``eager`` runs every ``tf.function`` eagerly: every analyzer and the fit (both estimators) on every
size 28–64. ``compiled`` pays a trace per analyzer (seconds each for this wide model), so it runs
one analyzer per backward rule that touches a convolution (the kernel ``W``: Gradient and the
analyzers built on it; LRP's z/ε rule; αβ; the bounded rule; the pattern kernels) and the fit, on
the even sizes 28–64: those where a stride-2 window misses the input's last row and column, the
inputs on which TensorFlow crashes. Prints ``OK`` last when all gave finite results.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZES = tuple(range(28, 65))
#: One analyzer per backward rule applied to a convolution, for the compiled sweep.
COMPILED_ANALYZERS = (
    "gradient",
    "lrp.epsilon",
    "lrp.alpha_2_beta_1",
    "deep_taylor.bounded",
    "pattern.attribution",
)
CHANNELS = 2
BATCH = 2


def build_model(kernel: int, sizes=SIZES):
    """One input per size; from each, stride-2 convolutions with 'valid' and 'same' padding
    (one for a 1×1 kernel, where the two are the same), a ReLU, and a global average pooling;
    then the sum of all branches and a Dense layer."""
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inputs, branches = [], []
    for n in sizes:
        x = keras.Input((n, n, CHANNELS), name=f"x{n}")
        inputs.append(x)
        for padding in ("valid",) if kernel == 1 else ("valid", "same"):
            h = L.Conv2D(
                CHANNELS,
                kernel,
                strides=2,
                padding=padding,
                activation="relu",
                name=f"conv{n}_{padding}",
            )(x)
            branches.append(L.GlobalAveragePooling2D(name=f"gap{n}_{padding}")(h))
    h = L.Add(name="sum")(branches)
    return keras.Model(inputs, L.Dense(2, name="logits")(h), name=f"sweep_k{kernel}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", type=int, choices=(1, 3), required=True)
    parser.add_argument("--mode", choices=("eager", "compiled"), required=True)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    import pattern_keras as pk

    eager = args.mode == "eager"
    if eager:
        tf.config.run_functions_eagerly(True)
    sizes = SIZES if eager else tuple(n for n in SIZES if n % 2 == 0)
    names = pk.analyzer_names() if eager else COMPILED_ANALYZERS
    model = build_model(args.kernel, sizes)
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(BATCH, n, n, CHANNELS)).astype(np.float32) for n in sizes]

    fitted = {}
    for pattern_type in ("relu", "linear") if eager else ("relu",):
        analyzer = pk.PatternAttribution(model, pattern_type=pattern_type)
        analyzer.fit(data, batch_size=BATCH, verbose=0)
        fitted[pattern_type] = analyzer.patterns
        for key in analyzer.patterns.keys():
            if not np.all(np.isfinite(analyzer.patterns[key])):
                print(f"FAIL: fit ({pattern_type}) gave a non-finite pattern for {key}")
                return 1
        print(f"fit {pattern_type}", flush=True)

    options = {"integrated_gradients": {"steps": 2}, "smoothgrad": {"samples": 2}}
    for name in names:
        kwargs = dict(options.get(name, {}))
        if name.startswith("pattern."):
            kwargs["patterns"] = fitted["relu"]
        analyzer = pk.create_analyzer(name, model, **kwargs)
        out = analyzer.analyze(data)
        for n, x, r in zip(sizes, data, out):
            if r.shape != x.shape or not np.all(np.isfinite(r)):
                print(f"FAIL: {name} gave shape {r.shape} or non-finite values at size {n}")
                return 1
        print(name, flush=True)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
