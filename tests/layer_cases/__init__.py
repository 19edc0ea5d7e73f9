"""The cases of the coverage test (``tests/test_layer_coverage.py``): one :class:`LayerCase` per
public class of ``keras.layers``, and the checks a supported class's smallest model goes
through.

Each owner keeps its cases in a module of its own (``ops.py``, ``attention.py``, ``text.py``,
``recurrent.py``) and adds them with :func:`add`; :func:`all_cases` imports them all. A class
is listed once, by its class name (aliases such as ``Convolution2D`` are the same class).

Statuses
--------
``"supported"``
    Every analyzer explains its smallest model (:class:`SmallModel`), checked by
    :func:`check_model` against independent references.
``"refused"``
    Every analyzer but the gradient family refuses a model with it, naming the layer and the
    reason (``reason``: a regular expression the error must match); the gradient family
    differentiates it as it is (equal to the tape).
``"lead"``
    A base class of the layers that are analyzed by looking inside them (graph.py's work: a
    layer whose ``call`` is made of other layers and ``keras.ops``). A concrete class read that
    way is ``"supported"`` with owner ``"lead"``.
``"not a layer"``
    A public class of ``keras.layers`` that is no layer (``InputSpec``).
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "LayerCase",
    "SmallModel",
    "STATUSES",
    "add",
    "all_cases",
    "check_model",
    "check_refused",
    "held_activation",
]

STATUSES = ("supported", "refused", "lead", "not a layer")

#: The modules holding the cases, one per owner.
MODULES = ("ops", "attention", "text", "recurrent")


@dataclasses.dataclass(frozen=True, eq=False)
class SmallModel:
    """A smallest model for one or more supported classes, with its references.

    Attributes
    ----------
    build : callable
        ``build() -> keras.Model``, seeded (the same weights every call).
    data : callable, optional
        ``data(rng) -> array`` of a few samples; default standard normal, 3 samples.
    exact : callable, optional
        ``exact(model, x) -> logits``: what the gradient family differentiates; default
        ``model(x, training=False)`` (a model ending in a softmax: its logits).
    held : callable, optional
        ``held(model, x) -> logits``: the same model with every activation ``f`` replaced by
        ``z·stop_gradient(f(z)/z)`` and every held quantity under ``stop_gradient``; LRP-z is
        ``x ⊙ ∇`` of it, DeConvNet and Guided BackProp (where ``gated`` is false) and
        PatternNet with its patterns set to its kernels ``y · ∇``. Default ``exact``.
    gated : bool
        The model has a ReLU or another gate: DeConvNet and Guided BackProp are then only
        checked to be finite, non-zero and of the input's shape.
    refused : tuple of str
        Analyzers (class names) that refuse the model by name, with a ``ValueError`` naming a
        layer (DeepTaylor on a recurrent layer).
    """

    build: Callable[[], keras.Model]
    data: Callable[[np.random.Generator], np.ndarray] | None = None
    exact: Callable[[keras.Model, Any], Any] | None = None
    held: Callable[[keras.Model, Any], Any] | None = None
    gated: bool = False
    refused: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class LayerCase:
    """One public class of ``keras.layers`` and what the coverage test expects of it.

    Attributes
    ----------
    name : str
        The class's ``__name__`` (``getattr(keras.layers, name)``).
    status : str
        One of :data:`STATUSES`.
    owner : str
        Who brings it: ``"ops"``, ``"attention"``, ``"text"``, ``"recurrent"`` or ``"lead"``.
    model : SmallModel, optional
        For ``"supported"``: a smallest model that contains the class. For ``"refused"``: a
        model every analyzer must refuse (``None``: the refusal is checked on a bare instance
        of the class, for classes that cannot be built here, such as ``TFSMLayer``).
    reason : str
        For ``"refused"``: a regular expression the error message must match (besides the
        layer's name and class); for the other statuses a note.
    """

    name: str
    status: str
    owner: str = "ops"
    model: SmallModel | Callable[[], keras.Model] | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"{self.name}: status {self.status!r} not in {STATUSES}.")
        if self.status == "supported" and not isinstance(self.model, SmallModel):
            raise ValueError(f"{self.name}: a supported class needs its SmallModel.")


_CASES: dict[str, LayerCase] = {}


def add(*cases: LayerCase) -> None:
    """Add cases to the collection; a class listed twice is an error."""
    for case in cases:
        if case.name in _CASES:
            raise ValueError(f"{case.name} is listed twice ({_CASES[case.name].owner}).")
        _CASES[case.name] = case


def all_cases() -> dict[str, LayerCase]:
    """Every case, by class name, from every owner's module."""
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return dict(_CASES)


# ------------------------------------------------------------------------------------------
# References


def held_activation(layer: Any, z: Any) -> Any:
    """``z · stop_gradient(f(z)/z)`` for an activation layer ``f`` (``0`` where ``z = 0``)."""
    f = layer(z)
    return z * tf.stop_gradient(tf.math.divide_no_nan(f, z))


def _logit(spec: SmallModel, model: keras.Model, x: Any, which: str) -> Any:
    fn = spec.exact if which == "exact" else (spec.held or spec.exact)
    return model(x, training=False) if fn is None else fn(model, x)


def _tape(spec: SmallModel, model: keras.Model, x: np.ndarray, index: int, which: str):
    """``(y, ∂y/∂x)`` of output ``index`` of the exact or held forward pass (float32)."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = _logit(spec, model, xt, which)
        y = tf.reshape(logits, (len(x), -1))[:, index]
    return y.numpy(), tape.gradient(y, xt).numpy()


def _patterns_from_kernels(analyzer: Any, ones: bool) -> Any:
    """Patterns equal to each linear op's own kernel (``ones``: to 1, so that ``W ⊙ A = W``),
    both regimes where a layer keeps both: PatternNet then backpropagates ``W``, and so does
    PatternAttribution with ``A = 1``."""
    from pattern_keras import Patterns

    positive, negative, types = {}, {}, {}
    for key, plan in analyzer._computer.plans.items():
        kernel = np.asarray(plan.part.kernel, np.float32)
        positive[key] = np.ones_like(kernel) if ones else kernel
        if plan.pattern_type == "relu" and not plan.rectified:
            negative[key] = positive[key]
        types[key] = plan.pattern_type
    return Patterns(positive, negative=negative, pattern_types=types)


def _run(analyzer: Any, x: np.ndarray, index: int, compiled: bool) -> np.ndarray:
    """One analyzer on ``x`` for output ``index``: through ``analyze`` (the compiled pass,
    batch axis ``None``) or the same pass run eagerly (the coverage test runs most analyzers
    eagerly: a trace per analyzer and model would cost most of its time)."""
    selection = np.full(len(x), index, np.int32)
    if compiled:
        return analyzer.analyze(x, neuron_selection=selection, verbose=0)
    analyzer._check_ready()
    out = analyzer._explain_batch([tf.constant(x)], tf.constant(selection))
    return out[0].numpy()


#: Analyzers run through ``analyze`` (compiled) by :func:`check_model`; the others eagerly.
COMPILED = ("Gradient",)


def check_model(
    spec: SmallModel, index: int = 0, rtol: float = 1e-5, compiled: tuple[str, ...] = COMPILED
) -> dict[str, np.ndarray]:
    """Run every analyzer on ``spec``'s model and check it against the references.

    - Gradient, InputTimesGradient, IntegratedGradients (4 midpoint steps) and SmoothGrad
      (noise 0) equal the tape of the exact forward pass.
    - LRP-z equals ``x ⊙ ∇`` of the held forward pass (:class:`SmallModel`).
    - PatternNet with its patterns set to its kernels, PatternAttribution with its patterns set
      to 1, and (without a gate) DeConvNet and Guided BackProp equal ``y · ∇`` of it.
    - Every other result (LRP-ε, αβ, z⁺, DeepTaylor; DeConvNet and Guided BackProp with a
      gate) is finite, non-zero and shaped like the input.

    The analyzers named in ``compiled`` run through ``analyze`` (compiled, batch axis
    ``None``), the others eagerly. Returns the results by analyzer name.
    """
    from conftest import EVERY_ANALYZER, assert_close

    import pattern_keras as pk

    if hasattr(spec, "check"):  # a model on token ids (text.py): references at the vectors
        return spec.check(index, rtol)
    model = spec.build()
    rng = np.random.default_rng(0)
    x = (spec.data or (lambda r: r.normal(size=(3,) + tuple(model.inputs[0].shape[1:]))))(rng)
    x = np.asarray(x, np.float32)
    _, grad = _tape(spec, model, x, index, "exact")
    y_held, grad_held = _tape(spec, model, x, index, "held")
    y_held = y_held.reshape((-1,) + (1,) * (x.ndim - 1))
    results = {}
    for cls in EVERY_ANALYZER:
        name = cls.__name__
        kwargs = {"neuron_selection_mode": "index"}
        if cls is pk.IntegratedGradients:
            kwargs["steps"] = 4
        elif cls is pk.SmoothGrad:
            kwargs.update(samples=2, noise_scale=0.0)
        if name in spec.refused:
            import pytest

            with pytest.raises(ValueError, match="layer '"):
                cls(model, **kwargs)
            continue
        analyzer = cls(model, **kwargs)
        if analyzer.needs_patterns:
            analyzer.set_patterns(_patterns_from_kernels(analyzer, ones=name != "PatternNet"))
        r = _run(analyzer, x, index, compiled=name in compiled)
        results[name] = r
        message = f"{name} on {model.name}"
        assert r.shape == x.shape, message
        assert np.all(np.isfinite(r)), message
        assert np.any(r != 0), message
        if name in ("Gradient", "SmoothGrad"):
            assert_close(r, grad, rtol, err_msg=message)
        elif name == "InputTimesGradient":
            assert_close(r, x * grad, rtol, err_msg=message)
        elif name == "IntegratedGradients":
            assert_close(r, _integrated_gradients(spec, model, x, index), rtol, err_msg=message)
        elif name == "LRPZ":
            assert_close(r, x * grad_held, rtol, err_msg=message)
        elif name in ("PatternNet", "PatternAttribution") or (
            name in ("DeConvNet", "GuidedBackprop") and not spec.gated
        ):
            assert_close(r, y_held * grad_held, rtol, err_msg=message)
    return results


def _integrated_gradients(spec, model, x, index, steps: int = 4) -> np.ndarray:
    """``x ⊙ mean_k ∇y(α_k x)``, ``α_k = (k + ½)/steps``: IG from the zero baseline by the
    midpoint rule, each gradient from the tape."""
    total = np.zeros_like(x)
    for k in range(steps):
        total += _tape(spec, model, (k + 0.5) / steps * x, index, "exact")[1]
    return x * total / steps


#: The analyzers that differentiate a layer without a rule as it is (an "opaque" op).
GRADIENT_FAMILY = ("Gradient", "InputTimesGradient", "IntegratedGradients", "SmoothGrad")


def check_refused(case: LayerCase) -> None:
    """Every analyzer but the gradient family refuses ``case``'s model, naming the layer, its
    class and the reason; the gradient family explains it, ``Gradient`` equal to the tape (for
    a model with a float input). Without a model the registry must refuse a bare instance of
    the class (classes that need files or other frameworks)."""
    import pytest
    from conftest import EVERY_ANALYZER, assert_close

    import pattern_keras as pk
    from pattern_keras import graph
    from pattern_keras.layers import ops_for_node

    cls = getattr(keras.layers, case.name)
    pattern = rf"of class {case.name}\b.*{case.reason}" if case.reason else case.name
    build = case.model.build if isinstance(case.model, SmallModel) else case.model
    if build is None:
        layer = object.__new__(cls)  # no __init__: these need files or other frameworks
        node = graph.CallNode("bare", layer, (0,), (1,), lambda xs: xs, ((None, 2),), ((None, 2),))
        with pytest.raises(ValueError, match=rf"'bare' {pattern}"):
            ops_for_node(node, (None, 2))
        return
    model = build()
    for analyzer in EVERY_ANALYZER:
        if analyzer.__name__ in GRADIENT_FAMILY:
            analyzer(model)
            continue
        with pytest.raises(ValueError, match=pattern):
            analyzer(model)
    if not model.inputs[0].dtype.startswith("float"):
        return
    x = np.random.default_rng(0).normal(size=(3,) + tuple(model.inputs[0].shape[1:]))
    x = x.astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=False)[:, 0]
    want = tape.gradient(y, xt, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    gradient = pk.Gradient(model, neuron_selection_mode="index")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a zero gradient (indices) is warned about
        got = gradient.analyze(x, neuron_selection=0, verbose=0)
    assert_close(got, want.numpy(), 1e-5, err_msg=case.name)
