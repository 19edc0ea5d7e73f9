"""Where each model input is explained: its *explained point*.

An explanation is a backward signal read at a tensor. For a float input that tensor is the input
itself. An integer input carries no signal (there is no derivative in an integer), so it is read
where the integer becomes a float:

``"float"``
    A float input: explained at itself.
``"cast"``
    An integer input that float ops read directly (a ``uint8`` image into ``Rescaling``, an
    ``int32`` vector into ``Dense``): a cast to the float it becomes is put in front of those
    ops, and the input is explained at that cast, shaped like the input.
``"embedding"``
    Ids into embedding lookups (ops of kind ``"lookup"``): explained at the embedding vectors,
    after the additions that sum the token vectors with the position and segment embeddings of
    the same positions (``tok + pos``, ``tok + pos + seg``, a constant added): the *summed*
    vectors, ``ids.shape + (d,)``. Attributions there are the sum of those at the token,
    position and segment embeddings (every rule splits an addition in proportion to its
    summands); signals are taken once, at the sum. Several ids inputs whose embeddings are
    summed into the same vectors (token and segment ids) are explained once, at the input with
    the largest table; the others are ``"none"``.
``"none"``
    An input that only carries masks or indices (BERT's ``padding_mask``: read only by integer
    ops such as comparisons and casts to integers, or as a mask), or whose embeddings are
    explained with another input's: not explained (``None`` in the results).

The backward pass runs from the output to the explained points only: the ops before them (the
cast, the lookups, the embedding sums) are never visited backward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from pattern_keras.layers import Op
from pattern_keras.layers.embedding import is_addition

__all__ = ["ExplainedPoint", "find_points", "live_ops"]

POINT_KINDS = ("float", "cast", "embedding", "none")


@dataclasses.dataclass(eq=False)
class ExplainedPoint:
    """Where one model input is explained.

    Attributes
    ----------
    index : int
        The model input (``model.inputs`` order).
    kind : {"float", "cast", "embedding", "none"}
        See the module's documentation.
    slot : int or None
        The tensor whose backward signal is the input's explanation; ``None`` for ``"none"``.
    lookup : Op or None
        For ``"embedding"``: the input's lookup. Its output (the token embeddings) is what
        Integrated Gradients' baseline replaces; its table gives deep Taylor's box.
    shape : tuple
        The static shape of the tensor at ``slot`` (batch axis ``None``).
    ids_rank : int
        The input's rank (batch axis included): per-token results keep these axes.
    reason : str
        What the point is, in words; for ``"none"``, why the input is not explained.
    """

    index: int
    kind: str
    slot: int | None
    lookup: Op | None = None
    shape: tuple[Any, ...] = ()
    ids_rank: int = 0
    reason: str = ""

    @property
    def token_slot(self) -> int | None:
        """The token embeddings (the lookup's output) for ``"embedding"``, else ``None``."""
        return self.lookup.outputs[0] if self.lookup is not None else None


def _is_float(dtype: Any) -> bool:
    return tf.as_dtype(dtype).is_floating


def _reach(program: Any, slot: int) -> tuple[list[Op], list[Op]]:
    """The lookups whose ids are ``slot`` or derive from it through integer ops, and the
    float ops that read ``slot`` itself as data (not as ids, indices or a mask)."""
    lookups: list[Op] = []
    users: list[Op] = []
    stack, seen = [(slot, True)], {slot}
    while stack:
        s, direct = stack.pop()
        for op in program.consumers(s):
            positions = [i for i, x in enumerate(op.inputs) if x == s]
            if op.kind == "lookup" and positions == [0]:
                lookups.append(op)
            elif op.kind == "index":
                for out in op.outputs:
                    if out not in seen:
                        seen.add(out)
                        stack.append((out, False))
            elif direct and any(i not in op.index_inputs for i in positions):
                users.append(op)
    return lookups, users


def _embedding_slots(program: Any) -> dict[int, int]:
    """``{slot: summed slot}`` for every lookup output and every partial sum of embeddings:
    the slot where its vectors end up after the additions of position and segment embeddings.

    An addition continues a sum when each of its operands is an embedding (a lookup's output
    or a sum of them) or a tensor no model input's value reaches (a constant, a table sliced by
    shape), at least one is an embedding, and it is the only op that reads each embedding
    operand as data.
    """
    live = _signal_slots(program)
    embedding = {op.outputs[0] for op in program.ops if op.kind == "lookup"}
    next_of: dict[int, int] = {}
    for op in program.ops:
        if not is_addition(op) or len(op.outputs) != 1:
            continue
        operands = [s for s in op.inputs if s in embedding]
        if not operands or any(s not in embedding and s in live for s in op.inputs):
            continue
        if any(len(_data_users(program, s)) != 1 for s in operands):
            continue
        embedding.add(op.outputs[0])
        for s in operands:
            next_of[s] = op.outputs[0]
    summed = {}
    for slot in embedding:
        end = slot
        while end in next_of:
            end = next_of[end]
        summed[slot] = end
    return summed


def _data_users(program: Any, slot: int) -> list[Op]:
    return [op for op in program.consumers(slot) if op.kind not in ("index", "lookup", "constant")]


def _signal_slots(program: Any) -> set[int]:
    """Slots that a model input's value reaches through float ops (lookups included): the
    others are constants for the explanation (a position table sliced by the input's shape)."""
    live = {s for s, (_, dtype) in zip(program.inputs, program.input_specs) if _is_float(dtype)}
    for op in program.ops:
        if op.kind == "lookup" or (
            op.kind not in ("index", "constant") and live.intersection(op.inputs)
        ):
            live.update(op.outputs)
    return live


def find_points(program: Any) -> list[ExplainedPoint]:
    """The explained point of every model input; inserts the casts of ``"cast"`` points into
    ``program.ops`` (and rewires the float ops reading the integer input to the cast).

    Parameters
    ----------
    program : engine.Program
        Pruned, with ``shapes``, ``dtypes`` and ``masks`` of its slots.

    Returns
    -------
    list of ExplainedPoint
        One per model input, in input order.

    Raises
    ------
    ValueError
        For an input that is both looked up and read as a number, or looked up by several
        lookups whose vectors are not summed into one.
    """
    summed = _embedding_slots(program)
    points = []
    for index, (slot, (shape, dtype)) in enumerate(zip(program.inputs, program.input_specs)):
        lookups, users = _reach(program, slot)
        name = f"input {index} ('{_input_name(program, index)}', {dtype})"
        if lookups and users:
            raise ValueError(
                f"The model's {name} is both looked up in an embedding ('{lookups[0].key}') and "
                f"read as a number by '{users[0].key}': it cannot be explained at one point."
            )
        if lookups:
            ends = {summed[op.outputs[0]] for op in lookups}
            if len(ends) > 1:
                keys = ", ".join(f"'{op.key}'" for op in lookups)
                raise ValueError(
                    f"The model's {name} is looked up in several embeddings ({keys}) whose "
                    "vectors are not summed into one: a per-token explanation of it is not "
                    "defined."
                )
            end = ends.pop()
            points.append(
                ExplainedPoint(
                    index,
                    "embedding",
                    end,
                    lookup=lookups[0],
                    shape=program.shapes.get(end, ()),
                    ids_rank=len(shape),
                    reason=f"the embedding vectors of '{lookups[0].key}'"
                    + ("" if end == lookups[0].outputs[0] else ", with what is added to them"),
                )
            )
        elif _is_float(dtype):
            points.append(ExplainedPoint(index, "float", slot, shape=tuple(shape), reason="itself"))
        elif users and tf.as_dtype(dtype) != tf.bool:
            cast = _insert_cast(program, slot, users, index)
            points.append(
                ExplainedPoint(
                    index,
                    "cast",
                    cast,
                    shape=tuple(shape),
                    ids_rank=len(shape),
                    reason=f"the {program.dtypes[cast]} it becomes",
                )
            )
        else:
            read = bool(users or program.consumers(slot))
            points.append(
                ExplainedPoint(
                    index,
                    "none",
                    None,
                    ids_rank=len(shape),
                    reason="it only carries masks or indices"
                    if read
                    else "the output does not depend on it",
                )
            )
    _share_summed_points(points)
    return points


def _input_name(program: Any, index: int) -> str:
    inputs = getattr(program.model, "inputs", None) or []
    if index < len(inputs):
        name = getattr(inputs[index], "name", None)
        if name:
            return str(name).split(":")[0]
    return f"input_{index}"


def _insert_cast(program: Any, slot: int, users: list[Op], index: int) -> int:
    """Put a cast of the integer input ``slot`` in front of the float ops that read it; return
    the cast's slot. The cast is to the float the first of those ops computes in (the widest,
    where they differ), as Keras casts it."""
    dtypes = [program.dtypes.get(u.outputs[0]) for u in users]
    floats = [tf.as_dtype(d) for d in dtypes if d is not None and _is_float(d)]
    dtype = max(floats, key=lambda d: d.size) if floats else tf.as_dtype("float32")
    op = Op(
        key=f"{_input_name(program, index)}/cast",
        kind="move",
        layer=None,
        inputs=(slot,),
        outputs=(),
        forward=lambda xs: [tf.cast(xs[0], dtype)],
        rank=len(program.input_specs[index][0]),
    )
    cast = -id(op)
    op.outputs = (cast,)
    for user in users:
        user.inputs = tuple(
            cast if (s == slot and i not in user.index_inputs) else s
            for i, s in enumerate(user.inputs)
        )
    program.ops.insert(min(program.ops.index(u) for u in users), op)
    if slot in program.masks:
        program.masks[cast] = program.masks[slot]
    program.dtypes[cast] = dtype.name
    program.shapes[cast] = tuple(program.input_specs[index][0])
    return cast


def _share_summed_points(points: list[ExplainedPoint]) -> None:
    """Ids inputs whose embeddings are summed into the same vectors (token and segment ids)
    are explained once: at the input whose table is largest (the tokens); the others get
    ``"none"``."""
    by_slot: dict[int, list[ExplainedPoint]] = {}
    for p in points:
        if p.kind == "embedding":
            by_slot.setdefault(p.slot, []).append(p)
    for group in by_slot.values():
        if len(group) < 2:
            continue
        keep = max(group, key=lambda p: p.lookup.table.vocabulary)
        for p in group:
            if p is not keep:
                p.kind, p.slot, p.lookup, p.shape = "none", None, None, ()
                p.reason = (
                    f"its embeddings are summed with those of input {keep.index}, which is "
                    "explained at the sum"
                )


def live_ops(program: Any, slots: list[int]) -> list[Op]:
    """The ops, in order, that read a tensor computed from ``slots``: the only ones a backward
    pass to those slots needs to visit.

    Parameters
    ----------
    program : engine.Program
    slots : list of int
        The explained points.

    Returns
    -------
    list of Op
    """
    live = set(slots)
    kept = []
    for op in program.ops:
        if live.intersection(op.inputs):
            kept.append(op)
            live.update(op.outputs)
    return kept
