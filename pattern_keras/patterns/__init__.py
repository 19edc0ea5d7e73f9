"""Patterns: the statistics, the estimators, the fit, and the HDF5 file."""

from pattern_keras.patterns.computer import PatternComputer
from pattern_keras.patterns.fingerprint import model_fingerprint
from pattern_keras.patterns.io import PatternFileError
from pattern_keras.patterns.patterns import Patterns
from pattern_keras.patterns.statistics import PATTERN_TYPES, LayerStatistics, PatternStatistics

__all__ = [
    "PatternComputer",
    "Patterns",
    "PatternStatistics",
    "LayerStatistics",
    "PatternFileError",
    "PATTERN_TYPES",
    "model_fingerprint",
]
