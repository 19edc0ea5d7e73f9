"""Every public class of ``keras.layers`` is listed (``tests/layer_cases``): supported (its
smallest model through every analyzer, against independent references), refused by name with a
reason, or a base class whose subclasses are looked into (``Layer``, ``Wrapper``). A class the list does not name
fails :func:`test_every_keras_layers_class_is_listed`, so that a new Keras release is noticed.
"""

from __future__ import annotations

import inspect

import keras
import pytest
from layer_cases import SmallModel, all_cases, check_model, check_refused

CASES = all_cases()


def _public_classes() -> dict[str, type]:
    """``{class name: class}`` of ``keras.layers`` (aliases such as ``Convolution2D`` fold into
    the class they name)."""
    return {
        value.__name__: value
        for name, value in vars(keras.layers).items()
        if not name.startswith("_") and inspect.isclass(value)
    }


def _present(name: str) -> bool:
    return isinstance(getattr(keras.layers, name, None), type)


def test_every_keras_layers_class_is_listed():
    classes = _public_classes()
    missing = sorted(set(classes) - set(CASES))
    assert not missing, f"keras.layers classes the coverage list does not name: {missing}"
    counts = {}
    for case in CASES.values():
        counts[case.status] = counts.get(case.status, 0) + 1
    print(f"\nkeras.layers: {len(classes)} classes; {counts}")


def test_supported_classes_are_registered():
    """Every class listed as supported has a rule (the registry's or a base class's), except
    those read by looking inside them (owner "lead")."""
    from pattern_keras.layers.registry import _REGISTRY

    for name, case in CASES.items():
        if case.status == "supported" and case.owner != "lead" and _present(name):
            cls = getattr(keras.layers, name)
            assert any(base in _REGISTRY for base in cls.__mro__), name


def _models() -> dict[SmallModel, list[str]]:
    """The supported cases' models, each with the classes it stands for."""
    models: dict[SmallModel, list[str]] = {}
    for name, case in CASES.items():
        if case.status == "supported" and _present(name):
            models.setdefault(case.model, []).append(name)
    return models


MODELS = _models()


@pytest.mark.parametrize("spec", list(MODELS), ids=["+".join(n) for n in MODELS.values()])
def test_supported_model_through_every_analyzer(spec):
    model = spec.build()
    present = {type(layer).__name__ for layer in _all_layers(model)}
    absent = sorted(set(MODELS[spec]) - present)
    assert not absent, f"{model.name} does not contain {absent}"
    check_model(spec)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layer"):  # a wrapper's layer
            yield layer.layer
        if hasattr(layer, "cell"):  # a recurrent layer's cell, and a stack's cells
            yield layer.cell
            yield from getattr(layer.cell, "cells", [])


REFUSED = [case for case in CASES.values() if case.status == "refused" and _present(case.name)]


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_refused_class_is_refused_by_name(case):
    check_refused(case)


def test_equalization_still_cannot_be_built():
    """Listed as refused on a bare instance because Keras 3.15 cannot build a model with it;
    a release that can is noticed here (then give it a model: it is the identity at
    inference)."""
    if not _present("Equalization"):
        pytest.skip("this Keras release has no Equalization")
    x = keras.Input((8, 8, 3))
    with pytest.raises(ValueError, match="cycle"):
        keras.Model(x, keras.layers.Equalization()(x))
