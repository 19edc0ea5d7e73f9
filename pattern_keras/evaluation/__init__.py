"""Evaluation of explanations and signal estimators.

- :func:`signal_estimator_quality` / :func:`plot_signal_estimator_quality`: the paper's ρ(S)
  per layer and estimator (figure 3);
- :func:`image_degradation` / :func:`plot_degradation`: region perturbation (deletion) and
  AOPC (section 5); :func:`insertion` (Petsiuk et al.) and :func:`mufidelity` (Bhatt et al.);
- :func:`signal_cosine` / :func:`topk_precision`: explanations scored against a known signal
  (data from :func:`pattern_keras.datasets.signal_distractor`);
- :func:`randomization_test` (MPRT, sMPRT, eMPRT) and :func:`random_logit_test`: the sanity
  checks, with the similarity measures of :mod:`pattern_keras.evaluation.similarity`;
- :func:`evidence_table`: all of these for several methods on one model, as one table.
"""

from pattern_keras.evaluation.degradation import (
    DegradationResult,
    image_degradation,
    plot_degradation,
)
from pattern_keras.evaluation.groundtruth import signal_cosine, topk_precision
from pattern_keras.evaluation.perturbation import (
    InsertionResult,
    MuFidelityResult,
    insertion,
    mufidelity,
    plot_insertion,
)
from pattern_keras.evaluation.quality import (
    QualityResult,
    plot_signal_estimator_quality,
    signal_estimator_quality,
)
from pattern_keras.evaluation.randomization import (
    RandomizationResult,
    RandomLogitResult,
    random_logit_test,
    randomization_test,
)
from pattern_keras.evaluation.report import EvidenceTable, evidence_table
from pattern_keras.evaluation.similarity import similarity

__all__ = [
    "signal_estimator_quality",
    "plot_signal_estimator_quality",
    "QualityResult",
    "image_degradation",
    "DegradationResult",
    "plot_degradation",
    "insertion",
    "InsertionResult",
    "plot_insertion",
    "mufidelity",
    "MuFidelityResult",
    "signal_cosine",
    "topk_precision",
    "randomization_test",
    "RandomizationResult",
    "random_logit_test",
    "RandomLogitResult",
    "similarity",
    "evidence_table",
    "EvidenceTable",
]
