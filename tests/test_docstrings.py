"""Every public callable documents its parameters and what it returns (numpy style).

"Public" is what the API reference (``docs/api/*.md``) shows: the names in ``__all__`` of the
package and of its public submodules, and their public methods, inherited ones included as long
as they are defined in pattern_keras.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "pattern_keras",
    "pattern_keras.analyzers",
    "pattern_keras.patterns",
    "pattern_keras.evaluation",
    "pattern_keras.datasets",
    "pattern_keras.plot",
]
# pattern_keras.layers' other names (Op, LinearPart, ops_for_node) are the engine's internals.
EXTRA = {"pattern_keras.layers": ["register_layer", "supported_layer_names"]}


def _public_callables():
    seen = {}
    for module_name in [*MODULES, *EXTRA]:
        module = importlib.import_module(module_name)
        for name in EXTRA.get(module_name, getattr(module, "__all__", [])):
            obj = getattr(module, name)
            if inspect.isclass(obj) and obj.__module__.startswith("pattern_keras"):
                if not issubclass(obj, Exception):
                    seen.setdefault(id(obj), (f"{obj.__module__}.{obj.__qualname__}", obj))
                for klass in obj.__mro__:
                    if not klass.__module__.startswith("pattern_keras"):
                        continue
                    for attr, value in vars(klass).items():
                        if attr.startswith("_"):
                            continue
                        if isinstance(value, (staticmethod, classmethod)):
                            value = value.__func__
                        if inspect.isfunction(value):
                            seen.setdefault(id(value), (value.__qualname__, value))
            elif inspect.isfunction(obj):
                seen.setdefault(id(obj), (f"{obj.__module__}.{obj.__qualname__}", obj))
    return sorted(seen.values(), key=lambda item: item[0])


def _missing_sections(obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    params = [p for p in signature.parameters if p not in ("self", "cls")]
    missing = []
    if inspect.isclass(obj):
        # A class documents its constructor's parameters, or (a dataclass, a result) its
        # attributes.
        if params and not any(
            f"{section}\n----------" in doc for section in ("Parameters", "Attributes")
        ):
            missing.append("Parameters")
        return missing
    if params and "Parameters\n----------" not in doc:
        missing.append("Parameters")
    returns = signature.return_annotation
    if returns not in (None, "None") and not any(
        f"{section}\n{'-' * len(section)}" in doc for section in ("Returns", "Yields")
    ):
        missing.append("Returns")
    for name in params:
        # Every parameter is named in the docstring (its own entry, or a shared one like
        # "x, y : ...").
        if name not in doc:
            missing.append(f"parameter {name!r}")
    return missing


CALLABLES = _public_callables()


def test_the_walk_finds_the_api():
    names = {name for name, _ in CALLABLES}
    for expected in (
        "_PatternAnalyzer.fit",
        "_PatternAnalyzer.save_patterns",
        "Analyzer.analyze",
        "pattern_keras.analyzers.registry.create_analyzer",
    ):
        assert expected in names, expected


@pytest.mark.parametrize("name,obj", CALLABLES, ids=[n for n, _ in CALLABLES])
def test_public_callable_is_documented(name, obj):
    assert not _missing_sections(obj), f"{name}: missing {_missing_sections(obj)}"
