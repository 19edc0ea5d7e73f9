"""Analyzers: each one a choice of backward rules on the one reverse engine."""

from pattern_keras.analyzers.base import NEURON_SELECTION_MODES, Analyzer
from pattern_keras.analyzers.gradient import DeConvNet, Gradient, GuidedBackprop, InputTimesGradient
from pattern_keras.analyzers.lrp import LRPEpsilon, LRPZ
from pattern_keras.analyzers.pattern import NotFittedError, PatternAttribution, PatternNet
from pattern_keras.analyzers.registry import analyzer_names, create_analyzer, register_analyzer

for _name, _cls in [
    ("gradient", Gradient),
    ("input_t_gradient", InputTimesGradient),
    ("deconvnet", DeConvNet),
    ("guided_backprop", GuidedBackprop),
    ("lrp.z", LRPZ),
    ("lrp.epsilon", LRPEpsilon),
    ("pattern.net", PatternNet),
    ("pattern.attribution", PatternAttribution),
]:
    register_analyzer(_name, _cls)

__all__ = [
    "Analyzer",
    "NEURON_SELECTION_MODES",
    "Gradient",
    "InputTimesGradient",
    "DeConvNet",
    "GuidedBackprop",
    "LRPZ",
    "LRPEpsilon",
    "PatternNet",
    "PatternAttribution",
    "NotFittedError",
    "create_analyzer",
    "analyzer_names",
    "register_analyzer",
]
