"""Layer classes refused by name, each with the reason the error message gives.

A refused class is never looked into (its ``call`` is preprocessing, another framework, or
made of operations without a gradient), and is refused before anything else is decided about a
call (an integer output would otherwise make it an ``"index"`` op, through which no signal
crosses). As for any layer without a rule, the gradient family still differentiates it as it
is (an ``"opaque"`` op); every other analyzer refuses the model with this reason.
"""

from __future__ import annotations

from typing import Any

from keras import layers as L

__all__ = ["refusal", "REFUSED"]

_INDICES = (
    "turns its input into integer indices (or counts of them), which have no gradient: "
    "nothing before it can be explained. Apply it to the data before the model and explain "
    "the model from its output on."
)
_BEFORE = "Apply it to the data before the model, or build the model without it."

#: ``{class name: reason}``; names this Keras release lacks are skipped.
REFUSED: dict[str, str] = {
    "TFSMLayer": (
        "it wraps a TensorFlow SavedModel, a graph pattern_keras cannot read. Load the Keras "
        "model itself (`keras.saving.load_model` on its .keras file) instead."
    ),
    "JaxLayer": "it wraps a JAX function, which the TensorFlow backend cannot run backward.",
    "FlaxLayer": "it wraps a Flax module, which the TensorFlow backend cannot run backward.",
    "TorchModuleWrapper": (
        "it wraps a PyTorch module, which the TensorFlow backend cannot run backward."
    ),
    "StringLookup": f"it {_INDICES}",
    "IntegerLookup": f"it {_INDICES}",
    "TextVectorization": f"it {_INDICES}",
    "Hashing": f"it {_INDICES}",
    "HashedCrossing": f"it {_INDICES}",
    "Discretization": f"it {_INDICES}",
    "CategoryEncoding": (
        "it encodes integer indices as one-hot, multi-hot or count vectors: the indices have "
        f"no gradient. {_BEFORE}"
    ),
    "MelSpectrogram": f"audio preprocessing (a spectrogram's magnitudes). {_BEFORE}",
    "STFTSpectrogram": f"audio preprocessing (a spectrogram's magnitudes). {_BEFORE}",
    "AutoContrast": (
        "at inference it rescales each image by its own minimum and maximum (preprocessing, "
        f"not a map with a backward rule here). {_BEFORE}"
    ),
    "ContrastLimitedAdaptiveHistogramEqualization": (
        f"histogram equalization (preprocessing, without a backward rule). {_BEFORE}"
    ),
    "Equalization": f"histogram equalization (preprocessing, without a backward rule). {_BEFORE}",
    "RandomCrop": (
        f"at inference it crops or resizes depending on the input's size (preprocessing). {_BEFORE}"
    ),
}

_CLASSES: dict[type, str] = {
    getattr(L, name): reason
    for name, reason in REFUSED.items()
    if isinstance(getattr(L, name, None), type)
}


def refusal(layer: Any) -> str | None:
    """Why ``layer`` is refused by name, or ``None``: its class, or a base class whose
    ``call`` it keeps, is listed in :data:`REFUSED`."""
    for cls in type(layer).__mro__:
        if cls in _CLASSES and getattr(type(layer), "call", None) is getattr(cls, "call", None):
            return _CLASSES[cls]
    return None
