"""``create_analyzer``: analyzers by name (iNNvestigate's names, where it had them)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_analyzer", "analyzer_names", "analyzer_class", "register_analyzer"]

_ANALYZERS: dict[str, type] = {}


def register_analyzer(name: str, cls: type) -> None:
    """Make ``cls`` available as ``create_analyzer(name, ...)``.

    Parameters
    ----------
    name : str
        The name to register (replaces an analyzer already registered under it).
    cls : type
        An :class:`~pattern_keras.Analyzer` subclass, called as ``cls(model, **kwargs)``.
    """
    _ANALYZERS[name] = cls


def analyzer_names() -> list[str]:
    """The names ``create_analyzer`` accepts.

    Returns
    -------
    list of str
        In registration order.
    """
    return list(_ANALYZERS)


def analyzer_class(name: str) -> type:
    """The class ``create_analyzer(name, ...)`` builds.

    Parameters
    ----------
    name : str
        One of :func:`analyzer_names`.

    Returns
    -------
    type
        The registered :class:`~pattern_keras.Analyzer` subclass: its docstring, whether it
        ``needs_patterns``, ...

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    try:
        return _ANALYZERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown analyzer {name!r}. Known analyzers: {', '.join(_ANALYZERS)}."
        ) from None


def create_analyzer(name: str, model: Any, **kwargs: Any):
    """Build an analyzer by name.

    Parameters
    ----------
    name : str
        One of :func:`analyzer_names`, e.g. ``"gradient"``, ``"lrp.z"``,
        ``"pattern.attribution"``.
    model : keras.Model
    **kwargs
        Passed to the analyzer's constructor (``neuron_selection_mode``, ``epsilon``,
        ``pattern_type``, ``patterns``, ...).

    Returns
    -------
    Analyzer
        A new analyzer of the registered class.

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    return analyzer_class(name)(model, **kwargs)
