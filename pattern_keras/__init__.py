"""pattern_keras: PatternNet, PatternAttribution and the gradient/LRP family for Keras 3.

>>> import pattern_keras as pk
>>> analyzer = pk.PatternAttribution(model)
>>> analyzer.fit(x_train)
>>> heatmaps = analyzer.analyze(x)
"""

from pattern_keras._version import __version__
from pattern_keras.analyzers import (
    Analyzer,
    DeConvNet,
    DeepTaylor,
    Gradient,
    GuidedBackprop,
    InputTimesGradient,
    IntegratedGradients,
    LRPAlpha1Beta0,
    LRPAlpha2Beta1,
    LRPAlphaBeta,
    LRPEpsilon,
    LRPZ,
    LRPZPlus,
    NotFittedError,
    PatternAttribution,
    PatternNet,
    SmoothGrad,
    analyzer_names,
    create_analyzer,
    register_analyzer,
)
from pattern_keras.layers import register_layer
from pattern_keras.patterns import (
    PatternComputer,
    PatternFileError,
    Patterns,
    PatternStatistics,
    model_fingerprint,
)

__all__ = [
    "__version__",
    "Analyzer",
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
    "create_analyzer",
    "analyzer_names",
    "register_analyzer",
    "register_layer",
    "PatternComputer",
    "Patterns",
    "PatternStatistics",
    "PatternFileError",
    "model_fingerprint",
]
