"""Analyzers: each one a choice of backward rules on the one reverse engine."""

from pattern_keras.analyzers.base import NEURON_SELECTION_MODES, Analyzer
from pattern_keras.analyzers.gradient import DeConvNet, Gradient, GuidedBackprop, InputTimesGradient
from pattern_keras.analyzers.lrp import (
    LRPZ,
    DeepTaylor,
    LRPAlpha1Beta0,
    LRPAlpha2Beta1,
    LRPAlphaBeta,
    LRPEpsilon,
    LRPZPlus,
)
from pattern_keras.analyzers.pattern import (
    NotFittedError,
    PatternAttribution,
    PatternNet,
    StalePatternsError,
)
from pattern_keras.analyzers.registry import (
    analyzer_class,
    analyzer_names,
    create_analyzer,
    register_analyzer,
)
from pattern_keras.analyzers.wrappers import IntegratedGradients, SmoothGrad

for _name, _cls in [
    ("gradient", Gradient),
    ("input_t_gradient", InputTimesGradient),
    ("deconvnet", DeConvNet),
    ("guided_backprop", GuidedBackprop),
    ("lrp.z", LRPZ),
    ("lrp.epsilon", LRPEpsilon),
    ("lrp.alpha_beta", LRPAlphaBeta),
    ("lrp.alpha_1_beta_0", LRPAlpha1Beta0),
    ("lrp.alpha_2_beta_1", LRPAlpha2Beta1),
    ("lrp.z_plus", LRPZPlus),
    ("deep_taylor.bounded", DeepTaylor),
    ("integrated_gradients", IntegratedGradients),
    ("smoothgrad", SmoothGrad),
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
    "LRPAlphaBeta",
    "LRPAlpha1Beta0",
    "LRPAlpha2Beta1",
    "LRPZPlus",
    "DeepTaylor",
    "IntegratedGradients",
    "SmoothGrad",
    "PatternNet",
    "PatternAttribution",
    "NotFittedError",
    "StalePatternsError",
    "create_analyzer",
    "analyzer_names",
    "analyzer_class",
    "register_analyzer",
]
