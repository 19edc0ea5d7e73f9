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
    Gradient,
    GuidedBackprop,
    InputTimesGradient,
    LRPEpsilon,
    LRPZ,
)
from pattern_keras.layers import register_layer

__all__ = [
    "__version__",
    "Analyzer",
    "Gradient",
    "InputTimesGradient",
    "DeConvNet",
    "GuidedBackprop",
    "LRPZ",
    "LRPEpsilon",
    "register_layer",
]
