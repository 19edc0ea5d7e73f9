"""The signal/distractor experiment (``examples/signal_distractor_experiment.py``), run once.

A small ReLU CNN with a single logit is trained on :func:`pattern_keras.datasets.signal_distractor`
data, whose true signal is known, and every analyzer is scored against it (see the example's
docstring for what is explained and how explanations are oriented).

What is asserted, and what is not: only what held in *every* one of 8 runs checked while writing
this test (``run_experiment(seed)`` for seeds 0–7: each seed draws its own data and
initialization; 20 epochs, 3000 training and 500 test images, test accuracy 1.000 in all):

- PatternAttribution ranks the signal's support higher than LRP-z: with linear patterns by a
  wide margin (top-k precision 0.48–0.67 against 0.36–0.40; smallest margin 0.10), with the
  two-component patterns by a small one (0.41–0.48; margins 0.03–0.12);
- the learned estimators (linear, two-component) leave far less of ``y`` in the distractor
  estimate than the filter and random directions, in every layer (ρ: conv 0.97–1.00, dense
  0.64–0.75, logit 0.87–1.00, against at most 0.02 for filter and random).

Not asserted, because it did not hold for every trained network:

- PatternNet's signal cosine beats Gradient, DeConvNet and Guided BackProp with *linear* patterns
  in 6 of 8 runs (0.48–0.85 against a best baseline of 0.42–0.58), and with the *two-component*
  patterns in 3 of 8: those are about as good as the gradient here (0.42–0.55; Gradient
  0.42–0.52, DeConvNet 0.42–0.58). The two-component estimator (the paper's formula,
  ``a₊ ∝ E₊[xy] − E₊[x]E[y]``) is not invariant to the mean of a layer's input: with
  ``x = E[x] + x̃`` it equals the same formula on ``x̃`` plus ``E[x]·(E₊[y] − E[y])``, so every
  layer after a ReLU (whose inputs have a large mean) gets its mean input activation mixed into
  ``a₊``, most harmfully at the logit layer, which keeps both regimes. In a diagnostic rerun of
  the 8 runs, PatternNet's cosine came within 0.05 of the all-linear one's both with linear
  patterns on the logit layer only (two-component below) and with two-component patterns whose
  regime statistics were computed on mean-centred inputs (within 0.03).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "signal_distractor_experiment.py"


def load_example():
    spec = importlib.util.spec_from_file_location("signal_distractor_experiment", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def experiment():
    module = load_example()
    return module, module.run_experiment(seed=0)


def test_network_learns_the_task(experiment):
    _, run = experiment
    assert run["accuracy"] >= 0.97


def test_scores_are_complete_and_in_range(experiment):
    module, run = experiment
    assert list(run["scores"]) == list(module.METHODS)
    for name, score in run["scores"].items():
        # Strictly inside (0, 1): an all-zero (dead) explanation has cosine 0, a copy of the
        # true signal would have 1; neither is a real method's.
        assert 0 < score["cosine"] < 1, (name, score)
        assert 0 < score["topk"] < 1, (name, score)


def test_patternattribution_beats_lrp_z_in_topk_precision(experiment):
    _, run = experiment
    scores = run["scores"]
    assert scores["PatternAttribution (linear)"]["topk"] > scores["LRPZ"]["topk"] + 0.05, scores
    assert scores["PatternAttribution (relu)"]["topk"] > scores["LRPZ"]["topk"] + 0.01, scores
    # On a ReLU network LRP-z is input×gradient (and LRP-ε close to it).
    assert scores["LRPZ"]["topk"] == pytest.approx(scores["InputTimesGradient"]["topk"], abs=0.01)


def test_learned_estimators_beat_filter_and_random(experiment):
    _, run = experiment
    quality = run["quality"]
    assert list(quality) == ["conv", "dense", "logit"]
    for layer, rho in quality.items():
        for learned in ("linear", "relu"):
            assert rho[learned] > max(rho["filter"], rho["random"]) + 0.3, (layer, rho)


def test_tables(experiment):
    module, run = experiment
    table = module.markdown_tables([run])
    for name in module.METHODS:
        assert f"| {name} |" in table
    assert "| conv |" in table and "ρ two-component" in table
    claims = module.claims_table([run, run])
    assert claims.count("/2 seeds") == 4
    assert np.isfinite(run["train_seconds"])
