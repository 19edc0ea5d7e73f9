"""What the randomization test costs beyond the explanations it must compute.

The full cascading randomization test for every analyzer on 64 digits with the digits CNN
(``examples/digits.py``), patterns re-fitted on the 1437 training digits at every step,
against what the same explanations and fits cost by hand: per analyzer one first ``analyze``
call (trace + run) plus ``steps`` warm calls (``steps`` = the trained model and each
randomization step), and per re-fitted analyzer one first fit plus ``steps − 1`` warm fits.
The figure is the CPU-time ratio test / by hand (``time.process_time()``), the target ≤ 1.3;
wall times beside it. That each analyzer traces once is counted in
``tests/test_randomization.py``, not here.

Run::

    python benchmarks/randomization.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))


def _clock():
    return time.process_time(), time.perf_counter()


def _since(start):
    cpu, wall = _clock()
    return cpu - start[0], wall - start[1]


def setup(seed: int = 0):
    import keras
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
    )
    model.fit(x[:split], labels[:split], epochs=10, batch_size=64, verbose=0)
    return model, x[:split], x[split : split + 64]


def specs(model, fit):
    """Every registered analyzer, by factory; pattern analyzers fitted (relu)."""
    import pattern_keras as pk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patterns = pk.PatternNet(model).fit(fit, batch_size=128, verbose=0).patterns
    out = {}
    for name in pk.analyzer_names():
        kwargs = {"patterns": patterns} if pk.analyzer_class(name).needs_patterns else {}
        if name == "integrated_gradients":
            kwargs["steps"] = 16
        if name == "smoothgrad":
            kwargs["samples"] = 16
        out[name] = lambda m, n=name, k=kwargs: pk.create_analyzer(n, m, **k)
    return out


def by_hand(model, analyzers, x, fit, steps: int, batch_size: int, fit_batch: int):
    """CPU and wall seconds of the explanations and fits the test needs, done directly."""
    from pattern_keras.evaluation.randomization import _clone

    clone = _clone(model)
    start = _clock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = np.argmax(np.asarray(clone(x)), axis=1)
        for factory in analyzers.values():
            analyzer = factory(clone)
            analyzer.neuron_selection_mode = "index"
            kwargs = {"allow_stale_patterns": True} if analyzer.needs_patterns else {}
            for _ in range(steps):
                analyzer.analyze(
                    x, neuron_selection=target, batch_size=batch_size, verbose=0, **kwargs
                )
            if analyzer.needs_patterns:  # the re-fitted variant: a fit and an analyze per step
                again = factory(clone)
                again.neuron_selection_mode = "index"
                for _ in range(steps):
                    again.fit(fit, batch_size=fit_batch, verbose=0)
                    again.analyze(x, neuron_selection=target, batch_size=batch_size, verbose=0)
    return _since(start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from pattern_keras.evaluation import randomization_test
    from pattern_keras.evaluation.randomization import randomizable_layers

    model, fit, x = setup()
    analyzers = specs(model, fit)
    steps = len(randomizable_layers(model)) + 1  # the trained model and each step
    print(
        f"{len(analyzers)} analyzers, 64 digits, {steps - 1} randomization steps + the trained model"
    )
    ratios = []
    for repeat in range(args.repeats):
        hand_cpu, hand_wall = by_hand(model, analyzers, x, fit, steps, 32, 32)
        start = _clock()
        randomization_test(model, analyzers, x, refit_data=fit, batch_size=32, refit_batch_size=32)
        test_cpu, test_wall = _since(start)
        ratios.append(test_cpu / hand_cpu)
        print(
            f"run {repeat + 1}: test {test_cpu:.1f} s CPU ({test_wall:.1f} s wall), by hand "
            f"{hand_cpu:.1f} s CPU ({hand_wall:.1f} s wall): ratio {ratios[-1]:.2f}"
        )
    print(f"median CPU ratio {np.median(ratios):.2f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
