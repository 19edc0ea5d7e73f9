"""pattern_keras: PatternNet, PatternAttribution and the gradient/LRP family for Keras 3.

>>> import pattern_keras as pk
>>> analyzer = pk.PatternAttribution(model)
>>> analyzer.fit(x_train)
>>> heatmaps = analyzer.analyze(x)

Analyzers
---------
Gradient, InputTimesGradient, DeConvNet, GuidedBackprop; LRPZ, LRPEpsilon, LRPAlphaBeta
(LRPAlpha1Beta0, LRPAlpha2Beta1), LRPZPlus, DeepTaylor; IntegratedGradients, SmoothGrad;
PatternNet, PatternAttribution. By name: ``create_analyzer(name, model, **kwargs)`` with a name
from ``analyzer_names()``.

Supported layers, and your own
------------------------------
Dense, the convolutions (1D/2D/3D, depthwise, separable, transposed), BatchNormalization,
ReLU/ReLU6 (and fused ``relu`` activations), pooling, Add/Average/Concatenate, reshapes,
padding, cropping, dropout, and nested Functional/Sequential models. A layer without a backward
rule (recurrent layers, attention, a custom layer) is refused when the analyzer is built, with
a ``ValueError`` naming it: nothing silently falls back to the gradient.

A custom layer that is one of the engine's kinds of op is declared with
``register_layer(cls, kind)``; every analyzer then treats it by that kind's rules:

>>> class Scale(keras.layers.Layer):          # y = x · factor, elementwise
...     def build(self, input_shape):
...         self.factor = self.add_weight(shape=input_shape[-1:], initializer="ones")
...     def call(self, x):
...         return x * self.factor
>>> pk.register_layer(Scale, "sum")

Kinds: ``"move"`` (only moves, copies or drops values: signals pass as the gradient does),
``"sum"`` (a fixed linear map without a learned kernel, such as a scaling or a sum of inputs:
LRP splits relevance in proportion to the contributions), ``"max_pool"`` (signals go to the
winners), ``"relu"`` (a rectifier: gated by the forward pass, rectified by DeConvNet) and
``"linear_activation"`` (an elementwise identity). A layer with a learned kernel that the
patterns should replace is not a kind one can register: Dense and convolutions only.
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
