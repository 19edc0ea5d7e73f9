"""The reverse engine: a model as a program of ops, run forward, then backward by rules.

This is the only traversal in pattern_keras. :class:`Program` turns a Keras model into a list
of :class:`~pattern_keras.layers.Op` in topological order (fused activations split off, a final
softmax stripped, optionally BatchNormalization folded into the preceding linear layer).
:func:`forward` replays it and keeps every intermediate tensor; :func:`backward` walks it in
reverse, asks a *rule* for each op how the backward signal crosses it, and sums the signals of
tensors used by several ops (so residual connections and branches need no special code).

Analyzers only choose rules (see :mod:`pattern_keras.rules` and :mod:`pattern_keras.analyzers`).
Both functions are plain TensorFlow code meant to run inside one ``tf.function``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from pattern_keras import graph as _graph
from pattern_keras import points as _points
from pattern_keras.layers import LinearPart, Op, ops_for_node, resolve_products
from pattern_keras.layers.attention import resolve_attention
from pattern_keras.layers.core import whole_call_op
from pattern_keras.layers.registry import builder_for

__all__ = [
    "Program",
    "forward",
    "forward_intervals",
    "backward",
    "backward_ops",
    "if_samples",
    "Rule",
]

# A rule: (op, op inputs, op outputs, backward signals at the outputs) -> signals at the inputs.
Rule = Callable[[Op, Sequence[Any], Sequence[Any], Sequence[Any]], Sequence[Any]]


class Program:
    """A Keras model as a flat program of ops, ready to be run forward and backward.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model (nested models allowed) with one output.
    strip_softmax : bool
        Drop a final softmax or sigmoid (a layer's fused activation, an ``Activation`` or a
        ``Softmax`` layer) so that explanations are of the logit.
    fold_batch_norm : bool
        Fold every inference-mode BatchNormalization that directly follows a linear layer (and
        is its only consumer) into that layer's kernel and bias: the canonization that makes
        patterns belong to the effective kernel and the following ReLU gate the real one.

    Attributes
    ----------
    ops : list of Op
        Topologically ordered; only ops that lead to the output.
    inputs : list of int
        Input slots, in ``model.inputs`` order.
    output : int
        The output slot (after stripping a softmax).
    input_specs : list of (shape, dtype)
        The model's input shapes (batch axis ``None``) and dtypes.
    masks : dict
        ``{slot: mask slot}``: the Keras masks the replay gives the tensors, as ``model(x)``
        does.
    captures : bool
        The program holds values computed from the weights when it was built (see
        :class:`~pattern_keras.graph.ModelGraph`): it must be rebuilt once they change.
    output_shape : tuple
        The model output's static shape (batch axis ``None``); a stripped softmax keeps it.
    points : list of ExplainedPoint
        Where each input is explained (:mod:`pattern_keras.points`): the input itself, the
        float an integer input is cast to, the (summed) embedding vectors of ids, or nowhere.
    shapes, dtypes : dict
        Static shape and dtype name of every slot.

    Raises
    ------
    ValueError
        For a model with several outputs. A layer without a rule, a softmax anywhere but at
        the end or as held attention weights, and a product of two tensors that is not
        attention (see :func:`~pattern_keras.layers.attention.resolve_attention`) become
        ``"opaque"`` ops, which the analyzers other than the gradient family refuse.
    RuntimeError
        When Keras runs on another backend than TensorFlow (saying how to select it).
    """

    def __init__(
        self, model: Any, *, strip_softmax: bool = True, fold_batch_norm: bool = False
    ) -> None:
        _graph.require_tensorflow_backend()
        graph = _graph.trace_model(model, has_rule=lambda layer: builder_for(layer) is not None)
        if len(graph.outputs) != 1:
            raise ValueError(
                f"Model '{model.name}' has {len(graph.outputs)} outputs; pattern_keras explains "
                "models with one output. Build a sub-model with the output you want explained: "
                "`keras.Model(model.inputs, model.outputs[i])`."
            )
        ops: list[Op] = []
        for node in graph.nodes:
            ops.extend(_ops_or_opaque(node))
        self.model = model
        self.masks = dict(graph.masks)
        self.captures = graph.captures
        self.inputs = list(graph.inputs)
        self.output = graph.outputs[0]
        self.input_specs = graph.input_specs
        self.output_shape = next(
            (
                n.output_shapes[n.outputs.index(self.output)]
                for n in graph.nodes
                if self.output in n.outputs
            ),
            graph.input_specs[graph.inputs.index(self.output)][0]
            if self.output in graph.inputs
            else None,
        )
        self.ops = ops
        shapes = {slot: spec[0] for slot, spec in zip(graph.inputs, graph.input_specs)}
        self.dtypes = {slot: spec[1] for slot, spec in zip(graph.inputs, graph.input_specs)}
        for node in graph.nodes:
            shapes.update(zip(node.outputs, node.output_shapes))
            self.dtypes.update(zip(node.outputs, node.output_dtypes))
        self.shapes = shapes
        resolve_products(self.ops, shapes)
        if strip_softmax:
            self._strip_final_softmax()
        if fold_batch_norm:
            self._fold_batch_norms()
        self._prune()
        # The hold analysis: what attention products hold, which ops a held pass reaches.
        self._reached_when_held = resolve_attention(self.ops, self.output)
        self._mark_rectified()
        self.points = _points.find_points(self)
        if all(p.slot is None for p in self.points):
            raise ValueError(
                f"Model '{model.name}' has no input that can be explained: "
                + "; ".join(f"input {p.index}: {p.reason}" for p in self.points)
                + "."
            )

    # -- construction ----------------------------------------------------------------------

    def producer(self, slot: int) -> Op | None:
        for op in self.ops:
            if slot in op.outputs:
                return op
        return None

    def consumers(self, slot: int) -> list[Op]:
        return [op for op in self.ops if slot in op.inputs]

    def reached_when_held(self, op: Op) -> bool:
        """Whether a backward pass that holds every held quantity (what the rule-based
        analyzers run: no signal into attention weights, queries or keys) reaches ``op``.
        The query and key projections of attention are not reached: they need no pattern."""
        return id(op) in self._reached_when_held

    def _strip_final_softmax(self) -> None:
        """Drop a final softmax or sigmoid: explanations are of the logit."""
        last = self.producer(self.output)
        if (
            last is not None
            and last.kind == "activation"
            and last.activation in ("softmax", "sigmoid")
        ):
            self.ops.remove(last)
            self.output = last.inputs[0]

    def _prune(self) -> None:
        """Keep only the ops whose outputs the model's output depends on."""
        needed = {self.output}
        kept = []
        for op in reversed(self.ops):
            if needed.intersection(op.outputs):
                kept.append(op)
                needed.update(op.inputs)
                needed.update(self.masks[s] for s in op.inputs if s in self.masks)
        self.ops = kept[::-1]

    def _mark_rectified(self) -> None:
        for op in self.ops:
            if op.kind != "linear" or op.outputs[0] == self.output:
                continue
            users = self.consumers(op.outputs[0])
            op.rectified = (
                len(users) == 1 and users[0].kind == "activation" and users[0].activation == "relu"
            )

    def _fold_batch_norms(self) -> None:
        for bn in [op for op in self.ops if op.kind == "affine" and op.affine is not None]:
            linear = self.producer(bn.inputs[0])
            if linear is None or linear.kind != "linear":
                continue
            if len(self.consumers(bn.inputs[0])) != 1 or bn.inputs[0] == self.output:
                continue
            part = linear.linear
            if part.neuron_axes is not None:
                continue  # neurons over several axes (EinsumDense): BN normalizes one
            if bn.affine()[2] % bn.rank != part.channel_axis % bn.rank:
                continue  # normalizes another axis than the linear layer's neurons
            folded = _fold(part, bn.affine)
            index = self.ops.index(linear)
            self.ops[index] = Op(
                key=linear.key,
                kind="linear",
                layer=linear.layer,
                inputs=linear.inputs,
                outputs=bn.outputs,
                forward=lambda xs, p=folded: [p.add_bias(p.apply(xs[0], p.kernel))],
                linear=folded,
                pattern_key=linear.pattern_key,
            )
            self.ops.remove(bn)

    # -- introspection ---------------------------------------------------------------------

    @property
    def explained_slots(self) -> list[int]:
        """The slots at which the explained inputs are explained (see :mod:`pattern_keras.
        points`), in input order, inputs that are not explained left out."""
        return [p.slot for p in self.points if p.slot is not None]

    @property
    def linear_ops(self) -> list[Op]:
        return [op for op in self.ops if op.kind == "linear"]


def _ops_or_opaque(node: _graph.CallNode) -> list[Op]:
    """The ops of one call node, or one ``"opaque"`` op when the layer has no rule (or could
    not be looked into): the gradient family differentiates it as it is, every other analyzer
    refuses it with this message."""
    gradient_family = (
        "The gradient family (Gradient, InputTimesGradient, IntegratedGradients, SmoothGrad) "
        "explains it through its own gradient"
    )
    if node.unreadable is not None:
        reason = (
            f"Layer '{node.key}' of class {type(node.layer).__name__} has no rule of its own "
            f"and could not be looked into: {node.unreadable}. {gradient_family}; the other "
            "methods need a rule for each of its parts."
        )
    else:
        try:
            return ops_for_node(node, node.input_shapes[0] if node.input_shapes else ())
        except ValueError as err:
            reason = f"{err} {gradient_family}."
    return [whole_call_op(node, "opaque", refusal=reason)]


def _fold(part: LinearPart, affine: Callable[[], tuple[Any, Any, int]]) -> LinearPart:
    """``BN(apply(x, K) + b)`` as one linear part: kernel ``K·s``, bias ``b·s + shift``."""
    rank = len(part.kernel_shape)
    kernel_scale_shape = [1] * rank
    for axis, size in zip(part.out_axes, part.neuron_shape):
        kernel_scale_shape[axis] = size

    def kernel() -> Any:
        scale = affine()[0]
        k = part.kernel
        return k * tf.cast(tf.reshape(scale, kernel_scale_shape), k.dtype)

    def bias() -> Any:
        scale, shift, _ = affine()
        b = shift if part.bias_fn is None else part.bias * scale + shift
        return b

    return LinearPart(
        kernel,
        bias,
        part.raw_apply,
        kernel_shape=part.kernel_shape,
        out_axes=part.out_axes,
        channel_axis=part.channel_axis,
        neuron_axes=part.neuron_axes,
        padded_apply=part.padded_apply,
        shiftable=part.shiftable,
        compute_dtype=part.compute_dtype,
    )


def forward(
    program: Program, inputs: Sequence[Any], at: dict[int, Any] | None = None
) -> dict[int, Any]:
    """Run the program; return every slot's tensor (inputs, intermediates, output).

    Parameters
    ----------
    program : Program
    inputs : list of tensor
        One per model input.
    at : dict, optional
        ``{slot: tensor}``: values that replace those slots' own (the explained points of the
        path or noisy points of Integrated Gradients and SmoothGrad, the token embeddings of a
        baseline); an op whose outputs are all replaced is not run.
    """
    at = at or {}
    values = dict(zip(program.inputs, inputs))
    values.update(at)
    for op in program.ops:
        if op.outputs and all(s in at for s in op.outputs):
            continue
        for slot in op.inputs:
            if slot in program.masks:  # as Keras gives a layer its input's mask
                _graph.attach_mask(values[slot], values[program.masks[slot]])
        outs = op.forward([values[s] for s in op.inputs])
        values.update((s, o) for s, o in zip(op.outputs, outs) if s not in at)
    return values


def if_samples(batch: Any, fn: Callable[[], Any], empty: Callable[[], Any]) -> Any:
    """``fn()`` when ``batch`` has samples, ``empty()`` when it has none.

    No model op may run on an empty batch: some TensorFlow kernels get its shape wrong (on
    AMD EPYC CPUs with oneDNN, a convolution of 0 images returns its *input's* channel count,
    and the next op fails). Empty batches are ordinary: a last global batch smaller than the
    number of replicas leaves some replicas without samples, and a dataset may end with an
    empty batch. ``empty`` gives what the batch contributes instead (zeros of the same
    structure, dtypes and static shapes as ``fn``'s result) without calling the model, which
    is also cheaper.

    A ``tf.cond`` on the batch size: it works eagerly, inside a ``tf.function`` (no retrace
    per batch) and in a replica function under ``tf.distribute``.

    Parameters
    ----------
    batch : tensor
        Any tensor with the batch axis first (e.g. the first model input).
    fn, empty : callable
        Without arguments; only the chosen one runs.

    Returns
    -------
    The chosen function's result.
    """
    return tf.cond(tf.shape(batch)[0] > 0, fn, empty)


def forward_intervals(
    program: Program,
    lows: Sequence[Any],
    highs: Sequence[Any],
    where: Callable[[Op], bool],
    fixed: dict[int, Any] | None = None,
    slots: Sequence[int] | None = None,
) -> dict[int, tuple[Any, Any]]:
    """Elementwise bounds ``(low, high)`` of ``slots`` (default: the input slots) and of every
    slot computed from them by ops that ``where(op)`` admits, each op run on both bounds of its
    inputs.

    Exact bounds for ops that are elementwise monotone in each input (padding, reshapes,
    pooling, adding, ReLU); used by deep Taylor decomposition for the box its bounded rule
    needs, up to the first linear layer. ``fixed`` gives slots whose value is the same at
    both bounds (a Keras mask computed from the sample: pooling averages over the same steps).
    """
    slots = program.inputs if slots is None else slots
    bounds = {slot: (lo, hi) for slot, lo, hi in zip(slots, lows, highs)}
    bounds.update({slot: (v, v) for slot, v in (fixed or {}).items()})
    for op in program.ops:
        if not where(op) or not all(s in bounds for s in op.inputs):
            continue
        if all(s in bounds for s in op.outputs):  # bounds given (an explained point) stay
            continue
        los = op.forward([bounds[s][0] for s in op.inputs])
        his = op.forward([bounds[s][1] for s in op.inputs])
        for slot, lo, hi in zip(op.outputs, los, his):
            bounds[slot] = (tf.minimum(lo, hi), tf.maximum(lo, hi))
    return bounds


def backward(
    program: Program,
    values: dict[int, Any],
    seed: Any,
    rule_for: Callable[[Op], Rule],
    renormalize: bool = False,
) -> list[Any]:
    """Walk the program in reverse from ``seed`` at the output; return signals at the inputs.

    Parameters
    ----------
    program : Program
    values : dict
        The result of :func:`forward`.
    seed : tensor
        The backward signal at the output, shaped like the output.
    rule_for : callable
        ``rule_for(op) -> rule``; the rule maps the signals at an op's outputs to signals at
        its inputs.
    renormalize : bool
        After every linear op, divide *all* pending signals by one common per-sample factor
        (their largest magnitude). For rules that are linear in the signal (the gradient and the
        pattern rules, whose gates come from the forward pass) this changes only each sample's
        overall scale, never the explanation's direction or the relative weight of branches,
        and it keeps float32 from overflowing where every layer amplifies the signal (patterns
        of random-weight networks). The result's scale is then arbitrary.

    Returns
    -------
    list of tensor
        One signal per explained point (``program.explained_slots``), shaped like the tensor
        there (zeros for an input the output ignores). Ops before the explained points (casts
        of integer inputs, embedding lookups and their sums) are not visited.
    """
    explained = program.explained_slots
    return backward_ops(
        _points.live_ops(program, explained),
        values,
        {program.output: seed},
        explained,
        rule_for,
        renormalize,
    )


def backward_ops(
    ops: Sequence[Op],
    values: dict[int, Any],
    seeds: dict[int, Any],
    inputs: Sequence[int],
    rule_for: Callable[[Op], Rule],
    renormalize: bool = False,
) -> list[Any]:
    """:func:`backward` over any list of ops, from signals at several slots: the program's, or
    one step of a recurrent layer's cell (:mod:`pattern_keras.layers.recurrent`).

    Parameters
    ----------
    ops : sequence of Op
        In topological order.
    values : dict
        Every slot's forward value (a slot an op does not need backward may hold a non-tensor
        record, such as a recurrent op's per-step values: it gets no zero signal).
    seeds : dict
        ``{slot: signal}`` to start from.
    inputs : sequence of int
        The slots whose signals are returned.
    rule_for, renormalize
        As for :func:`backward`.

    Returns
    -------
    list of tensor
        One signal per slot of ``inputs`` (zeros where none arrived).
    """
    signals: dict[int, Any] = dict(seeds)
    for op in reversed(ops):
        if op.kind in ("index", "constant"):  # no signal crosses an integer or a constant
            continue
        upstream = [signals.pop(s, None) for s in op.outputs]
        if all(g is None for g in upstream):
            continue
        upstream = [
            _zeros_like(values[s]) if g is None else g for s, g in zip(op.outputs, upstream)
        ]
        downstream = rule_for(op)(
            op, [values[s] for s in op.inputs], [values[s] for s in op.outputs], upstream
        )
        for slot, g in zip(op.inputs, downstream):
            if g is None:
                continue
            signals[slot] = g if slot not in signals else signals[slot] + g
        if renormalize and op.kind == "linear":
            signals = _renormalized(signals)
    return [signals.get(s, tf.zeros_like(values[s])) for s in inputs]


def _zeros_like(value: Any) -> Any:
    """The zero signal of a forward value; ``None`` for a non-tensor record."""
    return tf.zeros_like(value) if tf.is_tensor(value) else None


def _renormalized(signals: dict[int, Any]) -> dict[int, Any]:
    """All signals divided by their common per-sample largest magnitude (1 where it is 0)."""

    def per_sample_max(t):
        return tf.reduce_max(tf.abs(tf.reshape(t, [tf.shape(t)[0], -1])), axis=1)

    scale = tf.reduce_max(tf.stack([per_sample_max(t) for t in signals.values()]), axis=0)
    scale = tf.where(scale > 0, scale, tf.ones_like(scale))
    return {
        slot: t / tf.reshape(tf.cast(scale, t.dtype), [-1] + [1] * (len(t.shape) - 1))
        for slot, t in signals.items()
    }
