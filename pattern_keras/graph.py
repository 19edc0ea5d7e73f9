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

import contextlib
import copy
import dataclasses
import importlib
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
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
    "attach_mask",
    "copy_mask",
    "call_arguments",
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
    unreadable : str or None
        For a layer without a rule whose computation could not be looked into: why (the node
        is then the whole layer call).
    constant : bool
        The layer's output does not depend on its inputs' values, only (at most) on their
        shape: a position table broadcast over the batch. No signal crosses it.
    inside : bool
        The node was traced from inside a looked-into ``call`` (where graph operations such
        as ``x + y`` get new automatic names at every trace).
    """

    key: str
    layer: Any
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    call: Callable[[Sequence[Any]], list[Any]]
    input_shapes: tuple[tuple[Any, ...], ...] = ()
    output_shapes: tuple[tuple[Any, ...], ...] = ()
    output_dtypes: tuple[str, ...] = ()
    unreadable: str | None = None
    constant: bool = False
    inside: bool = False


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
    masks : dict
        ``{slot: mask slot}``: the Keras mask each tensor carries where a layer consumes it
        (e.g. the output of ``Embedding(mask_zero=True)``).
    captures : bool
        Some node holds a constant tensor computed while the graph was traced (a layer that
        tiles its class token over the batch inside ``call``): a copy of weights as they were
        then, so the graph describes the model only until its weights change.
    """

    inputs: list[int]
    outputs: list[int]
    nodes: list[CallNode]
    input_specs: list[tuple[tuple[Any, ...], str]]
    masks: dict[int, int] = dataclasses.field(default_factory=dict)
    captures: bool = False


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
        # A None beside the tensors has no slot (see _nodes_without_none_outputs).
        return [v for v in keras.tree.flatten(operation(*args, **kwargs)) if v is not None]

    call.keras_node = node  # read by call_arguments
    return call


def trace_model(model: keras.Model, has_rule: Callable[[Any], bool] | None = None) -> ModelGraph:
    """Flatten a model into call nodes: nested models inlined, layers without a rule looked into.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model, or a subclassed model that has been built (called
        once, or ``build(input_shape)``; its one input is taken as floating point).
    has_rule : callable, optional
        ``has_rule(layer) -> bool``. A layer (or subclassed model) without a rule is *looked
        into*: its ``call`` is run on symbolic inputs of the same shapes, dtypes and masks,
        which gives a graph of its sublayers and ``keras.ops`` calls; those are traced in turn
        (keys ``"outer/inner"``). Where that fails, the node stays whole and carries the reason
        (``CallNode.unreadable``). Default: every layer has a rule (nothing is looked into).

    Returns
    -------
    ModelGraph

    Raises
    ------
    ValueError
        For a subclassed model that was never built, or a Sequential model without an input.
    """
    tracer = _Tracer(has_rule or (lambda layer: True))
    functional = _functional_of(model)
    if functional is not None:
        input_slots = [tracer.new_slot() for _ in functional.inputs]
        output_slots = tracer.inline(functional, input_slots, "")
        input_specs = [(tuple(t.shape), str(t.dtype)) for t in functional.inputs]
    else:
        input_specs = [_subclassed_input_spec(model)]
        input_slots = [tracer.new_slot()]
        stand_in = keras.KerasTensor(input_specs[0][0], dtype=input_specs[0][1])
        output_slots = tracer.call_whole(model, stand_in, input_slots[0])
    return ModelGraph(
        inputs=input_slots,
        outputs=output_slots,
        nodes=tracer.nodes,
        input_specs=input_specs,
        masks=tracer.masks,
        captures=tracer.captures,
    )


def _subclassed_input_spec(model: Any) -> tuple[tuple[Any, ...], str]:
    """``(shape with batch axis None, dtype)`` of a built subclassed model's one input."""
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) != 1 or not isinstance(next(iter(shapes.values())), (tuple, list)):
        raise ValueError(
            f"Model '{getattr(model, 'name', model)}' of class {type(model).__name__} is a "
            "subclassed model that "
            + ("has not been built" if not shapes else "takes several inputs")
            + ": pattern_keras reads a subclassed model from one call on an input of known "
            "shape. Call it once on data, or wrap it in a functional model: "
            "`inp = keras.Input(shape, dtype=...); keras.Model(inp, model(inp))`."
        )
    shape = tuple(next(iter(shapes.values())))
    dtype = getattr(model, "compute_dtype", None) or "float32"
    return (None,) + shape[1:], str(dtype)


class _Unreadable(Exception):
    """A layer's computation could not be read as a graph (the message says why)."""


#: Batch sizes of the two symbolic traces of a layer whose ``call`` needs its batch size (a
#: reshape to ``(batch, -1, d)``, a class token tiled over the batch): every value that
#: differs between them is a function of the batch size (see :class:`_Tracer`).
_PROBE_BATCHES = (7, 11)
#: Sizes given to the other unknown axes (a sequence length) when checking whether a layer's
#: output depends on its inputs' values at all: small, so that they fit any position table.
_PROBE_LENGTHS = (3, 4)


class _Tracer:
    """Builds the flat list of call nodes; the slot counter and the mask table are shared by
    every level of nesting.

    A layer without a rule is looked into by tracing its ``call`` on symbolic stand-ins of
    its inputs. With the batch axis unknown (``None``), layers that use their batch size fail
    (``ops.shape(x)[0]`` is ``None``); those are traced twice more with two fixed batch sizes,
    and the two graphs are compared node by node: an integer that differs is an affine
    function of the batch size (``a·batch + c``, read off the two values), a constant tensor
    whose first axis differs is one row repeated over the batch. The replay recomputes both
    from the actual batch size. A layer whose output does not depend on its inputs' values
    (a position table broadcast to its input's shape) becomes a *constant* node.
    """

    def __init__(self, has_rule: Callable[[Any], bool]) -> None:
        self.has_rule = has_rule
        self.nodes: list[CallNode] = []
        self.masks: dict[int, int] = {}
        self.captures = False
        self._depth = 0  # how many looked-into calls enclose the graph being traced
        self._counter = iter(range(1 << 62))
        #: Shapes of tensors of a probe trace, the batch-dependent dimensions ``None``.
        self._shapes: dict[int, tuple[Any, ...]] = {}

    def new_slot(self) -> int:
        return next(self._counter)

    def _shape(self, tensor: Any) -> tuple[Any, ...]:
        return self._shapes.get(id(tensor), tuple(tensor.shape))

    # -- one level of graph ----------------------------------------------------------------

    def inline(
        self, function: Any, input_slots: list[int], prefix: str, twin: Any = None
    ) -> list[int]:
        """Append the call nodes of a Functional (or a ``Function`` of a layer's call) whose
        inputs have the given slots; return the slots of its outputs. ``twin`` is the same
        computation traced at the second probe batch size (see the class docstring)."""
        slot_of = {id(t): s for t, s in zip(function.inputs, input_slots)}
        for node, twin_node in _node_pairs(function, twin):
            if node.operation is None or node.is_input:
                continue
            if any(id(t) not in slot_of for t in node.input_tensors):
                continue  # not reachable from these inputs
            if twin_node is not None:
                self._record_shapes(node.input_tensors, twin_node.input_tensors)
                self._record_shapes(node.outputs, twin_node.outputs)
            out_slots = self._node(node, slot_of, prefix, twin_node)
            for t, s in zip(node.outputs, out_slots):
                slot_of[id(t)] = s
        missing = [t for t in function.outputs if id(t) not in slot_of]
        if missing:
            raise ValueError(f"Model '{function.name}' has outputs not connected to its inputs.")
        return [slot_of[id(t)] for t in function.outputs]

    def _record_shapes(self, tensors: Sequence[Any], twins: Sequence[Any]) -> None:
        for t, u in zip(tensors, twins):
            self._shapes[id(t)] = tuple(
                a if a == b else None for a, b in zip(self._shape(t), tuple(u.shape))
            )

    def _node(
        self, node: Any, slot_of: dict[int, int], prefix: str, twin_node: Any = None
    ) -> list[int]:
        operation = node.operation
        in_slots = [slot_of[id(t)] for t in node.input_tensors]
        inner = _functional_of(operation) if isinstance(operation, keras.Model) else None
        if inner is not None:
            if len(node.input_tensors) != len(inner.inputs):
                raise ValueError(
                    f"Nested model '{operation.name}' is called with "
                    f"{len(node.input_tensors)} tensors but has {len(inner.inputs)} inputs."
                )
            if self._more_specific(node.input_tensors, inner.inputs):
                inner = self._specialized(inner, node.input_tensors)
            return self.inline(inner, in_slots, f"{prefix}{operation.name}/")
        unreadable = None
        if isinstance(operation, keras.Layer) and not self.has_rule(operation):
            try:
                return self._look_inside(node, slot_of, prefix)
            except _Unreadable as err:
                unreadable = str(err)
            except _ConstantOutput:
                return self._leaf(node, slot_of, prefix, None, twin_node, constant=True)
        return self._leaf(node, slot_of, prefix, unreadable, twin_node)

    def _more_specific(self, outer: Sequence[Any], inner: Sequence[Any]) -> bool:
        """Whether the tensors a nested model is called with fix an axis its inputs leave
        open (a backbone with inputs of any length, called on inputs of one length)."""
        for t, u in zip(outer, inner):
            for a, (d, e) in enumerate(zip(self._shape(t), tuple(u.shape))):
                if a and d is not None and e is None:
                    return True
        return False

    def _specialized(self, functional: Any, outer: Sequence[Any]) -> Any:
        """``functional``'s graph run again on symbolic inputs of the outer tensors' shapes,
        so that every tensor in it, and every layer looked into, has the fixed sizes."""
        stand_ins = [keras.KerasTensor(self._shape(t), dtype=t.dtype) for t in outer]
        try:
            outputs = functional._run_through_graph(stand_ins, operation_fn=lambda op: op)
        except Exception:  # keep the general graph; layers that need the sizes say so
            return functional
        return _function(stand_ins, keras.tree.flatten(outputs))

    def _leaf(
        self,
        node: Any,
        slot_of: dict[int, int],
        prefix: str,
        unreadable: str | None,
        twin_node: Any = None,
        constant: bool = False,
    ) -> list[int]:
        """One call node for ``node`` as it is; the masks its inputs carry are recorded, so the
        replay gives them to the layer as Keras does (some layers read them from the tensor)."""
        for t in node.input_tensors:
            mask = _symbolic_mask_of(t)
            if mask is not None:
                self.masks[slot_of[id(t)]] = self._slot_for(mask, slot_of, prefix)
        if twin_node is None:
            call = _node_caller(node)
        else:
            try:
                call = _probed_caller(node, twin_node)
            except _Unreadable as err:
                call, unreadable = _node_caller(node), unreadable or str(err)
        if _captures_tensors(node):
            self.captures = True
        out_slots = [self.new_slot() for _ in node.outputs]
        self.nodes.append(
            CallNode(
                key=f"{prefix}{node.operation.name}",
                layer=node.operation,
                inputs=tuple(slot_of[id(t)] for t in node.input_tensors),
                outputs=tuple(out_slots),
                call=call,
                input_shapes=tuple(self._shape(t) for t in node.input_tensors),
                output_shapes=tuple(self._shape(t) for t in node.outputs),
                output_dtypes=tuple(str(t.dtype) for t in node.outputs),
                unreadable=unreadable,
                constant=constant,
                inside=self._depth > 0,
            )
        )
        return out_slots

    def _slot_for(self, tensor: Any, slot_of: dict[int, int], prefix: str) -> int:
        """The slot of ``tensor``, tracing the nodes that compute it if they are not traced yet
        (a mask that no layer of the model consumes explicitly is outside the model's graph)."""
        if id(tensor) in slot_of:
            return slot_of[id(tensor)]
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            raise _Unreadable(f"a mask tensor {tensor} has no history")
        node = history.operation._inbound_nodes[history.node_index]
        for t in node.input_tensors:
            self._slot_for(t, slot_of, prefix)
        out_slots = self._node(node, slot_of, prefix)
        for t, s in zip(node.outputs, out_slots):
            slot_of[id(t)] = s
        return slot_of[id(tensor)]

    # -- looking inside a layer ------------------------------------------------------------

    def _look_inside(self, node: Any, slot_of: dict[int, int], prefix: str) -> list[int]:
        """Trace ``node``'s layer's ``call`` on symbolic stand-ins of its inputs and inline the
        graph it gives; raise :class:`_Unreadable` where that is not possible, and
        :class:`_ConstantOutput` where the output does not depend on the inputs' values."""
        layer = node.operation
        outer_slots = self._stand_in_slots(node, slot_of, prefix)
        try:
            inner_inputs, outputs = self._traced(node, batch=None)
            _check_known_sizes(inner_inputs, outputs)
        except _Unreadable as first:
            try:
                return self._look_inside_probed(node, outer_slots, prefix)
            except _Unreadable as second:
                raise (first if "batch" not in str(second) else second) from None
        return self._inline_call(layer, inner_inputs, outputs, outer_slots, prefix)

    def _stand_in_slots(self, node: Any, slot_of: dict[int, int], prefix: str) -> list[int]:
        """The outer slots of a looked-into node's distinct inputs and their masks, in the
        order :meth:`_traced` makes its stand-ins."""
        slots, seen = [], set()
        for t in node.input_tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            slots.append(slot_of[id(t)])
            mask = _symbolic_mask_of(t)
            if mask is not None:
                slots.append(self._slot_for(mask, slot_of, prefix))
        return slots

    def _constant_output(self, node: Any) -> bool:
        """Whether the layer's ``call``, on symbolic inputs with every unknown axis fixed (to
        two different sizes), returns only concrete values: its output depends on its inputs'
        shape at most (a position table broadcast to the input's shape)."""
        for batch, length in zip(_PROBE_BATCHES, _PROBE_LENGTHS):
            try:
                self._traced(node, batch, fill=length)
            except _ConstantOutput:
                continue
            except _Unreadable:
                return False
            return False
        return True

    def _traced(
        self, node: Any, batch: int | None, fill: int | None = None
    ) -> tuple[list[Any], list[Any]]:
        """``(stand-in inputs, outputs)`` of the node's layer's ``call`` on symbolic inputs (the
        batch axis ``batch``): one stand-in per distinct input tensor (a tensor passed twice,
        as query and value, is one input), followed by a stand-in of its mask if it has one
        (the layer may read it from its input)."""
        stand_ins: dict[int, Any] = {}
        inner_inputs = []
        for t in node.input_tensors:
            if id(t) in stand_ins:
                continue
            stand_in = keras.KerasTensor(_with_batch(self._shape(t), batch, fill), t.dtype)
            stand_ins[id(t)] = stand_in
            inner_inputs.append(stand_in)
            mask = _mask_of(t)
            if mask is not None:
                mask_in = keras.KerasTensor(_with_batch(self._shape(mask), batch, fill), mask.dtype)
                _set_mask(stand_in, mask_in)
                inner_inputs.append(mask_in)
        args, kwargs = node.arguments.fill_in(stand_ins)
        kwargs = _with_masks(node.operation, args, kwargs)
        outputs = _symbolic_call(node.operation, args, kwargs)
        if len(outputs) != len(node.outputs):
            raise _Unreadable(
                f"its call returned {len(outputs)} tensors where the model records "
                f"{len(node.outputs)}"
            )
        return inner_inputs, outputs

    def _look_inside_probed(self, node: Any, outer_slots: list[int], prefix: str) -> list[int]:
        """The layer traced at the two probe batch sizes, the two graphs compared."""
        if any(self._shape(t)[:1] not in ((None,), ()) for t in node.input_tensors):
            raise _Unreadable("it fails on inputs of a known batch size")
        if self._constant_output(node):
            raise _ConstantOutput()
        open_axes = sorted(
            {a for t in node.input_tensors for a, d in enumerate(self._shape(t)) if a and d is None}
        )
        if open_axes:
            raise _Unreadable(
                "its `call` needs the size of input axis "
                + ", ".join(str(a) for a in open_axes)
                + ", which the model leaves open (None). Explain the model at a fixed input "
                "shape: `inp = keras.Input(shape, dtype=...); keras.Model(inp, model(inp))` "
                "with every axis but the batch given"
            )
        traces = [self._traced(node, batch) for batch in _PROBE_BATCHES]
        (inputs, outputs), (twin_inputs, twin_outputs) = traces
        for t, u in zip(inputs, twin_inputs):  # the stand-ins: batch axis None
            self._shapes[id(t)] = (None,) + tuple(t.shape)[1:]
            self._shapes[id(u)] = (None,) + tuple(u.shape)[1:]
        function = _function(inputs, outputs)
        twin = _function(twin_inputs, twin_outputs)
        return self._inline_inside(function, outer_slots, f"{prefix}{node.operation.name}/", twin)

    def call_whole(self, model: Any, stand_in: Any, input_slot: int) -> list[int]:
        """A subclassed model at the top: looked into, or one node if it cannot be read."""
        try:
            outputs = _symbolic_call(model, [stand_in], {})
            return self._inline_call(model, [stand_in], outputs, [input_slot], "", own=False)
        except (_Unreadable, _ConstantOutput) as err:
            return self._whole_model_node(model, stand_in, input_slot, str(err) or "constant")

    def _inline_call(
        self,
        layer: Any,
        inner_inputs: list[Any],
        outputs: list[Any],
        outer_slots: list[int],
        prefix: str,
        own: bool = True,
    ) -> list[int]:
        function = _function(inner_inputs, outputs)
        inner_prefix = f"{prefix}{layer.name}/" if own else prefix
        return self._inline_inside(function, outer_slots, inner_prefix)

    def _inline_inside(
        self, function: Any, outer_slots: list[int], prefix: str, twin: Any = None
    ) -> list[int]:
        self._depth += 1
        try:
            return self.inline(function, outer_slots, prefix, twin)
        finally:
            self._depth -= 1

    def _whole_model_node(
        self, model: Any, stand_in: Any, input_slot: int, reason: str
    ) -> list[int]:
        try:
            outputs = keras.tree.flatten(model.compute_output_spec(stand_in))
        except Exception:  # learn the output shape from one sample instead
            probe = keras.ops.zeros((1,) + tuple(stand_in.shape[1:]), dtype=stand_in.dtype)
            outputs = [
                keras.KerasTensor((None,) + tuple(o.shape[1:]), dtype=o.dtype)
                for o in keras.tree.flatten(model(probe, training=False))
            ]
        out_slots = [self.new_slot() for _ in outputs]

        def call(values: Sequence[Any]) -> list[Any]:
            return list(keras.tree.flatten(model(values[0], training=False)))

        self.nodes.append(
            CallNode(
                key=model.name,
                layer=model,
                inputs=(input_slot,),
                outputs=tuple(out_slots),
                call=call,
                input_shapes=(tuple(stand_in.shape),),
                output_shapes=tuple((None,) + tuple(o.shape[1:]) for o in outputs),
                output_dtypes=tuple(str(o.dtype) for o in outputs),
                unreadable=reason,
            )
        )
        return out_slots


class _ConstantOutput(Exception):
    """A layer's output does not depend on its inputs' values (only, at most, their shape)."""


def _with_batch(shape: tuple[Any, ...], batch: int | None, fill: int | None = None) -> tuple:
    """``shape`` with its batch axis set to ``batch``, and every other unknown axis to
    ``fill`` if given."""
    if batch is None or not shape:
        return shape
    return (batch,) + tuple(fill if fill is not None and d is None else d for d in shape[1:])


def _with_masks(layer: Any, args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the mask arguments a layer's ``__call__`` fills in before ``call``
    (and which calling ``call`` directly does not): ``mask`` from a single tensor argument,
    ``<name>_mask`` from the tensor argument ``<name>`` (MultiHeadAttention's ``value_mask``),
    where the call leaves them ``None``."""
    try:
        signature = inspect.signature(layer.call)
        bound = signature.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return kwargs
    tensors = {
        name: value
        for name, value in bound.items()
        if any(isinstance(v, keras.KerasTensor) for v in keras.tree.flatten(value))
    }
    filled = dict(kwargs)
    if len(tensors) == 1 and "mask" in signature.parameters and bound.get("mask") is None:
        mask = keras.tree.map_structure(_mask_of, next(iter(tensors.values())))
        if any(m is not None for m in keras.tree.flatten(mask)):
            filled["mask"] = mask
    elif len(tensors) > 1:
        for name, value in tensors.items():
            key = f"{name}_mask"
            if key in signature.parameters and bound.get(key) is None:
                mask = keras.tree.map_structure(_mask_of, value)
                if any(m is not None for m in keras.tree.flatten(mask)):
                    filled[key] = mask
    return filled


_SPEC_LOCK = threading.RLock()  # patches of Keras classes while a `call` is traced


@contextlib.contextmanager
def _tolerant_output_specs():
    """While tracing a layer's ``call``: a sublayer whose own ``compute_output_spec`` rejects
    an argument its ``call`` takes (keras-hub's ``CachedMultiHeadAttention`` is called with
    ``cache=None``, which ``MultiHeadAttention.compute_output_spec`` does not know) gets
    Keras's generic spec, from tracing its ``call``, instead of failing the trace."""
    from keras.src.layers.layer import Layer  # private: where Keras infers output specs

    original = Layer.symbolic_call

    def symbolic_call(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except TypeError:
            if type(self).compute_output_spec is Layer.compute_output_spec:
                raise
            return Layer.compute_output_spec(self, *args, **kwargs)

    with _SPEC_LOCK:
        Layer.symbolic_call = symbolic_call
        try:
            yield
        finally:
            Layer.symbolic_call = original


#: A Keras variable's arithmetic operators and the ``keras.ops`` function each stands for.
_VARIABLE_OPERATORS = {
    "add": ("__add__", "__radd__"),
    "subtract": ("__sub__", "__rsub__"),
    "multiply": ("__mul__", "__rmul__"),
    "divide": ("__truediv__", "__rtruediv__"),
    "matmul": ("__matmul__", "__rmatmul__"),
}


@contextlib.contextmanager
def _symbolic_variable_arithmetic():
    """While tracing a layer's ``call``: ``variable * x`` with a symbolic ``x`` becomes the
    ``keras.ops`` operation it stands for. A Keras variable's operators call the backend's
    functions directly, which reject symbolic tensors (``AdditiveAttention`` and
    ``Attention(use_scale=True)`` multiply their scores by a ``scale`` variable); as an
    operation, the variable is read at replay like any other weight."""
    from keras.src.backend.common.variables import Variable  # private: the operators' owner

    originals = {}

    def dispatching(name, method, reflected):
        function = getattr(keras.ops, name)
        original = getattr(Variable, method)

        def operator(self, other):
            if isinstance(other, keras.KerasTensor):
                return function(other, self) if reflected else function(self, other)
            return original(self, other)

        return operator

    with _SPEC_LOCK:
        for name, (method, reflected_method) in _VARIABLE_OPERATORS.items():
            for m, reflected in ((method, False), (reflected_method, True)):
                originals[m] = getattr(Variable, m)
                setattr(Variable, m, dispatching(name, m, reflected))
        try:
            yield
        finally:
            for m, original in originals.items():
                setattr(Variable, m, original)


@contextlib.contextmanager
def _einsum_dense_keeps_known_axes():
    """While tracing a layer's ``call``: an ``EinsumDense`` output axis that is an input axis
    keeps the input's length. Keras gives such an axis the length of the layer's
    ``output_shape``, ``None`` in MultiHeadAttention's projections, so the sequence length is
    lost after them, and a causal mask built from it (``ops.ones((1, T, S))``, with dropout
    > 0) cannot be traced."""
    original = keras.layers.EinsumDense.compute_output_shape

    def compute_output_shape(self, input_shape):
        shape = list(original(self, input_shape))
        inputs, _, outputs = self.equation.partition("->")
        letters = inputs.split(",")[0]
        if "." in letters or "." in outputs or len(outputs) != len(shape):
            return tuple(shape)
        for axis, letter in enumerate(outputs):
            if shape[axis] is None and letter in letters:
                shape[axis] = input_shape[letters.index(letter)]
        return tuple(shape)

    with _SPEC_LOCK:
        keras.layers.EinsumDense.compute_output_shape = compute_output_shape
        try:
            yield
        finally:
            keras.layers.EinsumDense.compute_output_shape = original


@contextlib.contextmanager
def _nodes_without_none_outputs():
    """While tracing a layer's ``call``: a sublayer that returns ``None`` beside its tensors
    (keras-hub's DeiT encoder block returns ``(output, None)`` without attention scores) gets a
    node of its tensor outputs only; Keras refuses such a node outside its own tracing. The
    replay drops the same ``None`` (:func:`_node_caller`)."""
    from keras.src.ops.node import Node  # private: the record of one symbolic call

    original = Node.__init__

    def __init__(self, operation, call_args=None, call_kwargs=None, outputs=None):
        if outputs is not None:
            outputs = [o for o in keras.tree.flatten(outputs) if o is not None]
        original(self, operation, call_args, call_kwargs, outputs)

    with _SPEC_LOCK:
        Node.__init__ = __init__
        try:
            yield
        finally:
            Node.__init__ = original


def _symbolic_call(layer: Any, args: Any, kwargs: dict[str, Any]) -> list[Any]:
    """A layer's ``call`` on symbolic arguments, flattened; :class:`_Unreadable` if it fails,
    :class:`_ConstantOutput` if no output is symbolic."""
    if call_has_training_arg(layer):
        kwargs = dict(kwargs, training=False)
    try:
        with (
            _tolerant_output_specs(),
            _symbolic_variable_arithmetic(),
            _einsum_dense_keeps_known_axes(),
            _nodes_without_none_outputs(),
        ):
            outputs = [o for o in keras.tree.flatten(layer.call(*args, **kwargs)) if o is not None]
    except Exception as err:  # any failure means "cannot be read this way"
        raise _Unreadable(
            f"running its `call` on symbolic inputs failed ({type(err).__name__}: "
            f"{_first_line(err)})"
        ) from None
    symbolic = [isinstance(o, keras.KerasTensor) for o in outputs]
    if outputs and not any(symbolic):
        raise _ConstantOutput()
    if not all(symbolic):
        raise _Unreadable("its `call` returns values some of which do not depend on its inputs")
    return outputs


def _function(inputs: list[Any], outputs: list[Any]) -> Any:
    from keras.src.ops.function import Function  # private: a graph of operations

    try:
        return Function(inputs, outputs)
    except Exception as err:
        raise _Unreadable(
            f"its computation is not a graph of Keras operations ({_first_line(err)})"
        ) from None


def _check_known_sizes(inputs: list[Any], outputs: list[Any]) -> None:
    """:class:`_Unreadable` if an operation of a call traced with the batch axis unknown
    recorded a size it computed from that axis: a ``None`` inside a shape among its settings
    (``ops.reshape(x, (ops.shape(x)[0], -1, d))`` records ``newshape=(None, -1, d)``, which
    the replay cannot run). The call is then read at the probe batch sizes instead."""
    for node in _node_pairs(_function(inputs, outputs), None):
        operation = node[0].operation
        if operation is None or isinstance(operation, keras.Layer):
            continue  # a layer's own settings hold no traced sizes; its call is read on its own
        for name, value in vars(operation).items():
            if name in _BOOKKEEPING or not isinstance(value, (list, tuple)):
                continue
            leaves = keras.tree.flatten(value)
            if None in leaves and any(_is_int(v) for v in leaves):
                raise _Unreadable(f"it records a size read from its batch axis ({name}={value})")


def _node_pairs(function: Any, twin: Any) -> list[tuple[Any, Any]]:
    """The nodes of ``function`` in topological order, each with the node of ``twin`` (the
    same computation traced at another batch size) in the same place, or ``None``."""
    depths = sorted(function._nodes_by_depth, reverse=True)
    nodes = [n for d in depths for n in function._nodes_by_depth[d]]
    if twin is None:
        return [(n, None) for n in nodes]
    twin_depths = sorted(twin._nodes_by_depth, reverse=True)
    twins = [n for d in twin_depths for n in twin._nodes_by_depth[d]]
    if depths != twin_depths or [type(n.operation) for n in nodes] != [
        type(n.operation) for n in twins
    ]:
        raise _Unreadable("its graph changes with the batch size")
    return list(zip(nodes, twins))


# Attributes of an operation that name it or link it into graphs (not what it computes).
_BOOKKEEPING = frozenset({"name", "_name", "_inbound_nodes", "_outbound_nodes", "_keras_history"})


def _probed_caller(node: Any, twin: Any) -> Callable[[Sequence[Any]], list[Any]]:
    """The caller of a node traced at the first probe batch size, with every value that
    differs at the second one recomputed from the actual batch size; :class:`_Unreadable` if
    a difference is not a function of the batch size."""
    operation = node.operation
    args = _batch_template(node.arguments.args, twin.arguments.args)
    kwargs = _batch_template(node.arguments.kwargs, twin.arguments.kwargs)
    attributes = {}
    if not isinstance(operation, keras.Layer):  # a layer is the same object in both traces
        own, other = vars(operation), vars(twin.operation)
        for name in own.keys() - _BOOKKEEPING:
            if not _plain(own[name]):
                continue  # policies, other objects: configuration, not batch-dependent values
            template = _batch_template(own[name], other.get(name))
            if template is not _SAME:
                attributes[name] = (template, own[name])
    dependent = args is not _SAME or kwargs is not _SAME or attributes
    if not dependent:
        return _node_caller(node)
    batch_of = _batch_reader(node, twin)
    input_ids = [id(t) for t in node.input_tensors]
    pass_training = call_has_training_arg(operation)

    def call(values: Sequence[Any]) -> list[Any]:
        batch = batch_of(values)
        tensors = dict(zip(input_ids, values))
        fill = lambda v: tensors.get(id(v)) if isinstance(v, keras.KerasTensor) else v
        call_args = keras.tree.map_structure(fill, _filled(args, node.arguments.args, batch))
        call_kwargs = keras.tree.map_structure(fill, _filled(kwargs, node.arguments.kwargs, batch))
        if pass_training:
            call_kwargs = dict(call_kwargs, training=False)
        target = operation
        if attributes:
            target = copy.copy(operation)
            for name, (template, original) in attributes.items():
                setattr(target, name, _filled(template, original, batch))
        return list(keras.tree.flatten(target(*call_args, **call_kwargs)))

    call.keras_node = node  # read by call_arguments
    return call


class _Same:
    def __repr__(self) -> str:
        return "_SAME"


#: A value equal in both probe traces.
_SAME = _Same()


class _BatchInt:
    """An integer ``a·batch + c``."""

    def __init__(self, a: int, c: int) -> None:
        self.a, self.c = a, c

    def value(self, batch: Any) -> Any:
        return batch * self.a + self.c


class _BatchRows:
    """A constant whose first axis repeats one row over the batch."""

    def __init__(self, row: Any) -> None:
        self.row = row

    def value(self, batch: Any) -> Any:
        row = tf.convert_to_tensor(self.row)
        return tf.broadcast_to(row, tf.concat([[batch], tf.shape(row)[1:]], 0))


def _batch_template(first: Any, second: Any) -> Any:
    """``_SAME`` where ``first`` and ``second`` (a value of the two probe traces) are equal;
    otherwise ``first``'s structure with each differing leaf replaced by its function of the
    batch size."""
    p1, p2 = _PROBE_BATCHES
    if _equal(first, second):
        return _SAME
    if _is_int(first) and _is_int(second):
        a, rest = divmod(int(second) - int(first), p2 - p1)
        if rest == 0 and a != 0:
            return _BatchInt(a, int(first) - a * p1)
        raise _Unreadable(f"a value ({first} and {second}) is not a function of the batch size")
    if tf.is_tensor(first) or isinstance(first, np.ndarray):
        a, b = np.asarray(first), np.asarray(second)
        if (
            a.ndim >= 1
            and a.shape[1:] == b.shape[1:]
            and (a.shape[0], b.shape[0]) == (p1, p2)
            and np.array_equal(a, np.broadcast_to(a[:1], a.shape))
            and np.array_equal(a[:1], b[:1])
        ):
            return _BatchRows(a[:1])
        raise _Unreadable("a constant tensor in it changes with the batch size")
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        if len(first) == len(second):
            parts = [_batch_template(x, y) for x, y in zip(first, second)]
            return _Seq(type(first), parts)
    if isinstance(first, dict) and isinstance(second, dict) and first.keys() == second.keys():
        return _Map({k: _batch_template(first[k], second[k]) for k in first})
    raise _Unreadable(f"a value of type {type(first).__name__} changes with the batch size")


class _Seq:
    def __init__(self, kind: type, parts: list[Any]) -> None:
        self.kind, self.parts = kind, parts


class _Map:
    def __init__(self, parts: dict[Any, Any]) -> None:
        self.parts = parts


def _filled(template: Any, original: Any, batch: Any) -> Any:
    """``original`` with the batch-dependent leaves of ``template`` computed for ``batch``."""
    if template is _SAME:
        return original
    if isinstance(template, (_BatchInt, _BatchRows)):
        return template.value(batch)
    if isinstance(template, _Seq):
        values = [_filled(t, o, batch) for t, o in zip(template.parts, original)]
        return template.kind(values) if template.kind in (list, tuple) else tuple(values)
    if isinstance(template, _Map):
        return {k: _filled(t, original[k], batch) for k, t in template.parts.items()}
    return template


def _equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, keras.KerasTensor) or isinstance(b, keras.KerasTensor):
        return isinstance(a, keras.KerasTensor) and isinstance(b, keras.KerasTensor)
    if isinstance(a, keras.Variable) or isinstance(b, keras.Variable):
        return a is b
    if tf.is_tensor(a) or isinstance(a, np.ndarray) or tf.is_tensor(b) or isinstance(b, np.ndarray):
        try:
            x, y = np.asarray(a), np.asarray(b)
        except Exception:
            return False
        return x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return False


def _plain(value: Any) -> bool:
    """Numbers, strings, tensors and arrays, and lists, tuples and dicts of them."""
    if value is None or isinstance(value, (int, float, str, np.generic, np.ndarray)):
        return True
    if tf.is_tensor(value) and not isinstance(value, keras.Variable):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _batch_reader(node: Any, twin: Any) -> Callable[[Sequence[Any]], Any]:
    """``values -> batch size``, from the first input whose first axis is an affine function
    of the batch size in the two traces."""
    p1, p2 = _PROBE_BATCHES
    for index, (t, u) in enumerate(zip(node.input_tensors, twin.input_tensors)):
        if not t.shape or t.shape[0] is None or u.shape[0] is None:
            continue
        a, rest = divmod(int(u.shape[0]) - int(t.shape[0]), p2 - p1)
        if rest == 0 and a > 0:
            c = int(t.shape[0]) - a * p1

            def read(values, index=index, a=a, c=c):
                return (tf.shape(values[index])[0] - c) // a

            return read
    raise _Unreadable("a value in it depends on the batch size, which no input of it carries")


def _captures_tensors(node: Any) -> bool:
    """Whether a node's arguments or its operation's settings hold a concrete tensor (not a
    variable, which is read when the node runs)."""
    values = list(node.arguments._flat_arguments)
    if not isinstance(node.operation, keras.Layer):
        values += [v for k, v in vars(node.operation).items() if k not in _BOOKKEEPING]
    return any(
        (tf.is_tensor(v) or isinstance(v, np.ndarray))
        and not isinstance(v, (keras.KerasTensor, keras.Variable, tf.Variable))
        for v in keras.tree.flatten(values)
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _mask_of(tensor: Any) -> Any:
    """The Keras mask a (symbolic) tensor carries, or ``None``."""
    return getattr(tensor, "_keras_mask", None)


def _symbolic_mask_of(tensor: Any) -> Any:
    """The Keras mask a symbolic tensor carries if it depends on the model's inputs, else
    ``None``. A constant mask (MultiHeadAttention's causal mask once the sequence length is
    known) rides on the masked softmax's output; the call that consumes it explicitly keeps
    it as a constant argument, and the replay needs no slot for it."""
    mask = _mask_of(tensor)
    return mask if isinstance(mask, keras.KerasTensor) else None


def _set_mask(tensor: Any, mask: Any) -> None:
    from keras.src import backend  # private: how Keras attaches a mask to a tensor

    backend.set_keras_mask(tensor, mask)


def attach_mask(tensor: Any, mask: Any) -> None:
    """Give a concrete tensor the Keras mask ``mask``, as a layer's ``__call__`` does, so the
    next layer reads it (Keras layers such as MultiHeadAttention read their inputs' masks)."""
    _set_mask(tensor, mask)


def copy_mask(source: Any, target: Any) -> Any:
    """``target`` with ``source``'s Keras mask, if it has one (for a copy of a tensor)."""
    mask = _mask_of(source)
    if mask is not None:
        _set_mask(target, mask)
    return target


def call_arguments(node: CallNode) -> tuple[list[Any], dict[str, Any]] | None:
    """The arguments a call was made with: each of the node's input tensors as
    ``("input", k)`` (its position in ``node.inputs``), anything else as ``("constant", value)``
    (the matrix ``w`` of ``keras.ops.matmul(x, w)``, a captured variable, the ``0.5`` of
    ``keras.ops.maximum(x, 0.5)``, ``constant_values=-1.0``).

    Returns
    -------
    (list, dict) or None
        The positional and keyword arguments (top level only); ``None`` where the call's
        arguments cannot be read.
    """
    keras_node = getattr(node.call, "keras_node", None)
    if keras_node is None:
        return None
    index = {id(t): k for k, t in enumerate(keras_node.input_tensors)}

    def tag(a: Any) -> tuple[str, Any]:
        return ("input", index[id(a)]) if isinstance(a, keras.KerasTensor) else ("constant", a)

    arguments = keras_node.arguments
    return [tag(a) for a in arguments.args], {k: tag(v) for k, v in arguments.kwargs.items()}
