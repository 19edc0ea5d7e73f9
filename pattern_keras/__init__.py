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

The public names are imported on first use (PEP 562): ``import pattern_keras`` and the
``pattern-keras`` command line start without importing TensorFlow.
"""

import importlib as _importlib

from pattern_keras._version import __version__

_EXPORTS = {
    "Analyzer": "pattern_keras.analyzers",
    "DeConvNet": "pattern_keras.analyzers",
    "DeepTaylor": "pattern_keras.analyzers",
    "Gradient": "pattern_keras.analyzers",
    "GuidedBackprop": "pattern_keras.analyzers",
    "InputTimesGradient": "pattern_keras.analyzers",
    "IntegratedGradients": "pattern_keras.analyzers",
    "LRPAlpha1Beta0": "pattern_keras.analyzers",
    "LRPAlpha2Beta1": "pattern_keras.analyzers",
    "LRPAlphaBeta": "pattern_keras.analyzers",
    "LRPEpsilon": "pattern_keras.analyzers",
    "LRPZ": "pattern_keras.analyzers",
    "LRPZPlus": "pattern_keras.analyzers",
    "NotFittedError": "pattern_keras.analyzers",
    "StalePatternsError": "pattern_keras.analyzers",
    "PatternAttribution": "pattern_keras.analyzers",
    "PatternNet": "pattern_keras.analyzers",
    "SmoothGrad": "pattern_keras.analyzers",
    "analyzer_names": "pattern_keras.analyzers",
    "analyzer_class": "pattern_keras.analyzers",
    "create_analyzer": "pattern_keras.analyzers",
    "register_analyzer": "pattern_keras.analyzers",
    "register_layer": "pattern_keras.layers",
    "CheckpointInUseError": "pattern_keras.patterns",
    "PatternComputer": "pattern_keras.patterns",
    "PatternFileError": "pattern_keras.patterns",
    "Patterns": "pattern_keras.patterns",
    "PatternStatistics": "pattern_keras.patterns",
    "model_fingerprint": "pattern_keras.patterns",
}
_SUBMODULES = (
    "analyzers",
    "datasets",
    "demo",
    "engine",
    "evaluation",
    "graph",
    "layers",
    "patterns",
    "plot",
    "rules",
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
    "StalePatternsError",
    "create_analyzer",
    "analyzer_names",
    "analyzer_class",
    "register_analyzer",
    "register_layer",
    "PatternComputer",
    "Patterns",
    "PatternStatistics",
    "PatternFileError",
    "CheckpointInUseError",
    "model_fingerprint",
]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"pattern_keras.{name}")
    else:
        raise AttributeError(f"module 'pattern_keras' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
