"""The Keras adapter: the only module that touches private Keras internals.

Keras 3 exposes the layers of a model (``model.operations``) but not its wiring: which call
of which layer feeds which other call. That lives in private attributes (``Functional._nodes_by_depth``,
``Node.arguments``, ``Sequential._functional``). Every use of them is in this file, so a Keras
release that moves them breaks one small module with its own test (``tests/test_graph.py``),
not the engine.

The adapter turns a model into a flat, topologically ordered list of :class:`CallNode` objects,
one per *call* of a layer (a layer called twice gives two nodes), with nested models inlined:
their inner nodes get keys ``"outer/inner"``. Tensors are identified by integer *slots*.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras.src.models.functional import Functional  # private: the Functional graph class

__all__ = [
    "CallNode",
    "ModelGraph",
    "trace_model",
    "call_has_training_arg",
    "causal_padding",
    "require_tensorflow_backend",
    "operation_class",
    "application_class",
]


def require_tensorflow_backend() -> None:
    """Raise ``RuntimeError`` unless Keras runs on its TensorFlow backend.

    The engine replays and differentiates models with TensorFlow ops (``tf.function``,
    ``tf.GradientTape``); on another backend it would fail deep inside with an unrelated error.
    """
    backend = keras.config.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"pattern_keras needs Keras's TensorFlow backend, but Keras runs on {backend!r}: "
            "set the environment variable KERAS_BACKEND=tensorflow before Keras is first "
            'imported (or "backend": "tensorflow" in ~/.keras/keras.json).'
        )


@dataclasses.dataclass(eq=False)
class CallNode:
    """One call of one layer (or operation) in a model graph.

    Attributes
    ----------
    key : str
        The layer's name, prefixed by the names of the enclosing nested models
        (``"outer/inner"``). A layer called twice has two nodes with the same key.
    layer : keras.Operation
        The layer or operation that is called.
    inputs, outputs : tuple of int
        Slots of the tensors consumed and produced, in the order of ``Node.input_tensors``
        and of the flattened outputs.
    call : callable
        ``call(list_of_input_tensors) -> list_of_output_tensors``: runs the layer on concrete
        tensors with the original call's non-tensor arguments (and ``training=False``).
    input_shapes, output_shapes : tuple of tuple
        Static shapes (batch axis ``None``) of the inputs and outputs.
    output_dtypes : tuple of str
        The outputs' dtypes (``"float32"``, ``"bool"``, ``"int32"``, ...).
    """

    key: str
    layer: Any
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    call: Callable[[Sequence[Any]], list[Any]]
    input_shapes: tuple[tuple[Any, ...], ...] = ()
    output_shapes: tuple[tuple[Any, ...], ...] = ()
    output_dtypes: tuple[str, ...] = ()


@dataclasses.dataclass(eq=False)
class ModelGraph:
    """A model's call graph, nested models inlined.

    Attributes
    ----------
    inputs : list of int
        Slots of the model's inputs, in ``model.inputs`` order.
    outputs : list of int
        Slots of the model's outputs.
    nodes : list of CallNode
        Every call node, in a topological order.
    input_specs : list of tuple
        ``(shape, dtype)`` of each model input; the shape includes the batch axis (``None``).
    """

    inputs: list[int]
    outputs: list[int]
    nodes: list[CallNode]
    input_specs: list[tuple[tuple[Any, ...], str]]


def operation_class(name: str) -> type | None:
    """A class of Keras's graph operations, which ``keras.ops`` functions create but do not
    export: ``"numpy.Add"`` is the node ``x + y`` becomes inside a functional model.

    Parameters
    ----------
    name : str
        ``"<module>.<class>"`` under ``keras.src.ops`` (``"numpy.Add"``, ``"nn.Relu"``).

    Returns
    -------
    type or None
        ``None`` where this Keras release has no such class (the registry then skips it).
    """
    return _private_class("keras.src.ops", name)


def application_class(name: str) -> type | None:
    """A layer class that ``keras.applications`` defines for itself
    (``"convnext.LayerScale"``), or ``None`` where this Keras release has none."""
    return _private_class("keras.src.applications", name)


def _private_class(package: str, name: str) -> type | None:
    module_name, _, class_name = name.rpartition(".")
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except ImportError:  # pragma: no cover - depends on the Keras release
        return None
    found = getattr(module, class_name, None)
    return found if isinstance(found, type) else None


def _functional_of(model: Any) -> Functional | None:
    """The Functional graph behind ``model``, or ``None`` for a subclassed model or a layer."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"The Sequential model '{model.name}' is not built: give it an `Input` or call "
                "`model.build(input_shape)` before explaining it."
            )
        return functional
    if isinstance(model, Functional):
        return model
    return None


def call_has_training_arg(layer: Any) -> bool:
    """Whether ``layer.call`` takes a ``training`` argument (BatchNormalization, Dropout, ...)."""
    return bool(getattr(layer, "_call_has_training_arg", False))


def causal_padding(layer: Any) -> list[list[int]]:
    """The explicit padding a causal ``Conv1D`` applies before its 'valid' convolution."""
    return layer._compute_causal_padding()


def _node_caller(node: Any) -> Callable[[Sequence[Any]], list[Any]]:
    """A function running ``node``'s operation on concrete tensors in place of its inputs."""
    operation = node.operation
    input_ids = [id(t) for t in node.input_tensors]
    pass_training = call_has_training_arg(operation)

    def call(values: Sequence[Any]) -> list[Any]:
        args, kwargs = node.arguments.fill_in(dict(zip(input_ids, values)))
        if pass_training:
            kwargs = dict(kwargs, training=False)
        return list(keras.tree.flatten(operation(*args, **kwargs)))

    return call


def trace_model(model: keras.Model) -> ModelGraph:
    """Flatten a Functional or Sequential model (nested models inlined) into call nodes.

    Parameters
    ----------
    model : keras.Model
        A built Functional or Sequential model. Subclassed models have no graph to walk.

    Returns
    -------
    ModelGraph

    Raises
    ------
    ValueError
        For a subclassed model or an unbuilt Sequential model.
    """
    functional = _functional_of(model)
    if functional is None:
        raise ValueError(
            f"Model '{getattr(model, 'name', model)}' of class {type(model).__name__} is a "
            "subclassed model: its graph cannot be read. pattern_keras explains Functional and "
            "Sequential models (nested models included)."
        )
    counter = iter(range(1 << 62))
    nodes: list[CallNode] = []
    input_slots = [next(counter) for _ in functional.inputs]
    output_slots = _inline(functional, input_slots, "", nodes, counter)
    input_specs = [(tuple(t.shape), str(t.dtype)) for t in functional.inputs]
    return ModelGraph(
        inputs=input_slots, outputs=output_slots, nodes=nodes, input_specs=input_specs
    )


def _inline(
    functional: Functional,
    input_slots: list[int],
    prefix: str,
    nodes: list[CallNode],
    counter: Any,
) -> list[int]:
    """Append ``functional``'s call nodes to ``nodes``; return the slots of its outputs."""
    slot_of = {id(t): s for t, s in zip(functional.inputs, input_slots)}
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            if any(id(t) not in slot_of for t in node.input_tensors):
                continue  # not reachable from this model's inputs
            in_slots = [slot_of[id(t)] for t in node.input_tensors]
            operation = node.operation
            inner = _functional_of(operation) if isinstance(operation, keras.Model) else None
            if isinstance(operation, keras.Model) and inner is None:
                raise ValueError(
                    f"Nested model '{operation.name}' (class {type(operation).__name__}) is "
                    "subclassed: its graph cannot be read."
                )
            if inner is not None:
                if len(node.input_tensors) != len(inner.inputs):
                    raise ValueError(
                        f"Nested model '{operation.name}' is called with "
                        f"{len(node.input_tensors)} tensors but has {len(inner.inputs)} inputs."
                    )
                out_slots = _inline(inner, in_slots, f"{prefix}{operation.name}/", nodes, counter)
            else:
                out_slots = [next(counter) for _ in node.outputs]
                nodes.append(
                    CallNode(
                        key=f"{prefix}{operation.name}",
                        layer=operation,
                        inputs=tuple(in_slots),
                        outputs=tuple(out_slots),
                        call=_node_caller(node),
                        input_shapes=tuple(tuple(t.shape) for t in node.input_tensors),
                        output_shapes=tuple(tuple(t.shape) for t in node.outputs),
                        output_dtypes=tuple(str(t.dtype) for t in node.outputs),
                    )
                )
            for t, s in zip(node.outputs, out_slots):
                slot_of[id(t)] = s
    missing = [t for t in functional.outputs if id(t) not in slot_of]
    if missing:
        raise ValueError(f"Model '{functional.name}' has outputs not connected to its inputs.")
    return [slot_of[id(t)] for t in functional.outputs]
