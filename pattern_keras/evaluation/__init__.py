"""Evaluation of explanations and signal estimators.

- :func:`signal_estimator_quality` / :func:`plot_signal_estimator_quality`: the paper's ρ(S)
  per layer and estimator (figure 3);
- :func:`image_degradation` / :func:`plot_degradation`: region perturbation and AOPC (section 5);
- :func:`signal_cosine` / :func:`topk_precision`: explanations scored against a known signal
  (data from :func:`pattern_keras.datasets.signal_distractor`).
"""

from pattern_keras.evaluation.degradation import (
    DegradationResult,
    image_degradation,
    plot_degradation,
)
from pattern_keras.evaluation.groundtruth import signal_cosine, topk_precision
from pattern_keras.evaluation.quality import (
    QualityResult,
    plot_signal_estimator_quality,
    signal_estimator_quality,
)

__all__ = [
    "signal_estimator_quality",
    "plot_signal_estimator_quality",
    "QualityResult",
    "image_degradation",
    "DegradationResult",
    "plot_degradation",
    "signal_cosine",
    "topk_precision",
]
