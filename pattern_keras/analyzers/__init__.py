"""Analyzers: each one a choice of backward rules on the one reverse engine."""

from pattern_keras.analyzers.base import Analyzer, NEURON_SELECTION_MODES
from pattern_keras.analyzers.gradient import DeConvNet, Gradient, GuidedBackprop, InputTimesGradient
from pattern_keras.analyzers.lrp import LRPEpsilon, LRPZ

__all__ = [
    "Analyzer",
    "NEURON_SELECTION_MODES",
    "Gradient",
    "InputTimesGradient",
    "DeConvNet",
    "GuidedBackprop",
    "LRPZ",
    "LRPEpsilon",
]
