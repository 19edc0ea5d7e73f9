"""Patterns: the statistics, the estimators, the fit, and the HDF5 file.

The public names are imported on first use (PEP 562): the command line reads
:data:`PATTERN_TYPES` (numpy only) without importing TensorFlow.
"""

import importlib as _importlib

_EXPORTS = {
    "CheckpointInUseError": "pattern_keras.patterns.lock",
    "PatternComputer": "pattern_keras.patterns.computer",
    "model_fingerprint": "pattern_keras.patterns.fingerprint",
    "PatternFileError": "pattern_keras.patterns.io",
    "Patterns": "pattern_keras.patterns.patterns",
    "PATTERN_TYPES": "pattern_keras.patterns.statistics",
    "ESTIMATORS": "pattern_keras.patterns.statistics",
    "LayerStatistics": "pattern_keras.patterns.statistics",
    "PatternStatistics": "pattern_keras.patterns.statistics",
}

__all__ = [
    "CheckpointInUseError",
    "PatternComputer",
    "Patterns",
    "PatternStatistics",
    "LayerStatistics",
    "PatternFileError",
    "PATTERN_TYPES",
    "ESTIMATORS",
    "model_fingerprint",
]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pattern_keras.patterns' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
