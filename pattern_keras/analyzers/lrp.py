"""Layer-wise relevance propagation: the z-, ε-, αβ- and z⁺-rules, and deep Taylor decomposition.

Relevance starts as the selected neuron's value ``y`` and is redistributed at every linear
layer, BatchNormalization, Add and average pooling in proportion to the contributions
(``R_i = x_i · Σ_j ∂z_j/∂x_i · R_j / z_j``). ReLUs pass relevance unchanged; max pooling routes it
to the winner; reshapes move it.

The rules that split contributions by sign (:class:`LRPAlphaBeta`, :class:`LRPZPlus`,
:class:`DeepTaylor`) apply at linear layers, with BatchNormalization folded into the preceding
linear layer first. Ops that sum their inputs without a learned kernel (Add, Average, average
pooling, and a BatchNormalization that follows no linear layer) keep the z-rule: a sum's
summands are its contributions, each gets its share ``R·x_i/z``, whatever its sign.

=================  =================================  =============================
analyzer           linear layers                      Add / avg pool / lone BN
=================  =================================  =============================
LRPZ, LRPEpsilon   z (ε)                              z (ε)
LRPAlphaBeta       αβ, ``α − β = 1``                  z
LRPZPlus           z⁺                                 z
DeepTaylor         zᴮ on the input, z⁺ elsewhere      z
=================  =================================  =============================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from pattern_keras import engine
from pattern_keras.analyzers.base import Analyzer
from pattern_keras.rules import (
    ActivationRule,
    AlphaBetaRule,
    BoundedRule,
    Composite,
    GradientRule,
    RatioZRule,
    ZPlusRule,
    ZRule,
)

__all__ = [
    "LRPZ",
    "LRPEpsilon",
    "LRPAlphaBeta",
    "LRPAlpha1Beta0",
    "LRPAlpha2Beta1",
    "LRPZPlus",
    "DeepTaylor",
]


class LRPZ(Analyzer):
    """LRP with the z-rule (Bach et al. 2015), seeded with the selected neuron's value.

    On a ReLU network (biases or not) the result equals
    :class:`~pattern_keras.InputTimesGradient`: the seed ``y`` is divided by ``z = y`` at the
    output layer, so LRP seeded with ``y`` and input×gradient seeded with 1 agree. On a bias-free
    ReLU network relevance is also conserved (``Σ_i R_i = y``).

    The backward pass carries relevance in ratio form, ``s = R / x`` per tensor
    (:class:`~pattern_keras.rules.RatioZRule`), and multiplies by the input once at the end:
    the same result as redistributing ``R`` at every op (:class:`~pattern_keras.rules.ZRule`),
    at the cost of one gradient. BatchNormalization is folded into the preceding linear layer
    (for the z-rule an exact identity: ``R/z`` crosses ``y = s·z + t`` as ``s·R/y``).

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    """

    seed_with_value = True
    fold_batch_norm = True
    epsilon = 0.0

    def __init__(self, model: Any, neuron_selection_mode: str = "max_activation") -> None:
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)
        gated = _gated_slots(self._program)
        self._gated_output = lambda op: all(slot in gated for slot in op.outputs)

    def _seed(self, y, mask):
        # Ratio form: the output's relevance y over its value y (0 where y = 0, as R = 0 there).
        return mask * tf.math.divide_no_nan(y, y)

    def _postprocess(self, inputs, signals):
        return [x * s for x, s in zip(inputs, signals)]  # R = x ⊙ s

    def _composite(self, values) -> Composite:
        z = RatioZRule(self.epsilon, skip_zero_mask=self._gated_output)
        return Composite(
            {
                "linear": z,
                "affine": z,
                "sum": z,
                "activation": ActivationRule("ratio_pass"),
                # They copy values, so a ratio moves as its relevance does.
                "max_pool": GradientRule(),
                "move": GradientRule(),
            }
        )


class LRPEpsilon(LRPZ):
    """LRP with the ε-rule: ``z + ε·sign(z)`` in the denominator (``sign(0) = +1``).

    Parameters
    ----------
    model : keras.Model
    epsilon : float
        The stabilizer (default 1e-7). As ``ε → 0`` the result tends to :class:`LRPZ`'s.
    neuron_selection_mode : str
    """

    def __init__(
        self, model: Any, epsilon: float = 1e-7, neuron_selection_mode: str = "max_activation"
    ) -> None:
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
        self.epsilon = float(epsilon)
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)


def _gated_slots(program) -> set[int]:
    """Slots from which a zero value sends no ratio back: every consumer is an activation whose
    ratio-form pass multiplies by ``f(z)/z``, 0 at ``z = 0`` (not a linear activation; a gate
    operand gets nothing at all), or the slot is the output (its seed is 0 where ``y = 0``)."""
    slots = {program.output}
    for op in program.ops:
        for slot in op.outputs:
            users = program.consumers(slot)
            if users and all(u.kind == "activation" and u.activation != "linear" for u in users):
                slots.add(slot)
    return slots


# ----------------------------------------------------------------------------------------------
# Rules that split contributions by sign: αβ, z⁺, and deep Taylor decomposition


def _nonnegative_slots(program) -> set[int]:
    """Slots whose tensors are ``≥ 0`` by construction: outputs of a ReLU (ReLU6 included),
    and what max pooling, data movement, or averaging/adding (``op.averages``) makes of such
    tensors only."""
    slots: set[int] = set()
    for op in program.ops:
        if op.kind == "activation" and op.activation == "relu":
            slots.update(op.outputs)
        elif op.kind in ("move", "max_pool") or op.averages:
            if op.inputs and all(s in slots for s in op.inputs):
                slots.update(op.outputs)
    return slots


class _SignSplitLRP(Analyzer):
    """Shared by the αβ, z⁺ and deep Taylor analyzers.

    BatchNormalization is folded into the preceding linear layer first (the canonization that
    makes the rule see the effective kernel ``W·γ/σ`` and bias); a BatchNormalization that
    follows no linear layer (DenseNet's pre-activation blocks) stays an affine op. Ops that
    are sums of contributions without a learned kernel (Add, Average, average pooling, those
    left-over BatchNormalizations) take the z-rule, which splits relevance in proportion to the
    summands, as :class:`LRPZ` does; ReLUs pass relevance, max pooling routes it to the winner.
    """

    seed_with_value = True
    fold_batch_norm = True

    def __init__(self, model: Any, neuron_selection_mode: str = "max_activation") -> None:
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)
        nonnegative = _nonnegative_slots(self._program)
        self._nonnegative_input = lambda op: op.inputs[0] in nonnegative

    def _linear_rule(self, values) -> Any:
        raise NotImplementedError

    def _composite(self, values) -> Composite:
        z = ZRule(0.0)
        return Composite(
            {
                "linear": self._linear_rule(values),
                "affine": z,
                "sum": z,
                "activation": ActivationRule("pass"),
                "max_pool": GradientRule(),
                "move": GradientRule(),
            }
        )


class LRPAlphaBeta(_SignSplitLRP):
    """LRP-αβ (Bach et al. 2015): positive and negative contributions weighted apart.

    At every linear layer (BatchNormalization folded in) relevance flows back as
    ``R_i = Σ_j (α·(x_i w_ij)₊ / z_j⁺ − β·(x_i w_ij)₋ / z_j⁻)·R_j`` (see
    :class:`~pattern_keras.rules.AlphaBetaRule`); sum-like ops take the z-rule, ReLUs pass
    relevance. Seeded with the selected neuron's value ``y``.

    Parameters
    ----------
    model : keras.Model
    alpha, beta : float
        ``α ≥ 1``, ``β ≥ 0`` with ``α − β = 1``.
    bias : bool
        Whether biases take their share of relevance (``b⁺`` in ``z⁺``, ``b⁻`` in ``z⁻``;
        default True, as iNNvestigate). On a bias-free network with ``β = 0`` and non-negative
        inputs relevance is non-negative and conserved (``Σ_i R_i = y``).
    neuron_selection_mode : str

    Raises
    ------
    ValueError
        If ``α − β ≠ 1`` or either is negative.
    """

    def __init__(
        self,
        model: Any,
        alpha: float = 1.0,
        beta: float = 0.0,
        bias: bool = True,
        neuron_selection_mode: str = "max_activation",
    ) -> None:
        alpha, beta = float(alpha), float(beta)
        if not (np.isfinite(alpha) and np.isfinite(beta)) or alpha < 0 or beta < 0:
            raise ValueError(
                f"alpha and beta must be finite and >= 0, got alpha={alpha}, beta={beta}."
            )
        if abs(alpha - beta - 1.0) > 1e-9:
            raise ValueError(
                f"LRP-αβ requires alpha - beta = 1 (so that relevance is conserved); got "
                f"alpha={alpha:g}, beta={beta:g} (alpha - beta = {alpha - beta:g}). For "
                "example alpha=1, beta=0 or alpha=2, beta=1."
            )
        self.alpha, self.beta, self.bias = alpha, beta, bool(bias)
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)

    def _linear_rule(self, values) -> Any:
        return AlphaBetaRule(
            self.alpha, self.beta, bias=self.bias, nonnegative_input=self._nonnegative_input
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model.name!r}, alpha={self.alpha:g}, "
            f"beta={self.beta:g}, neuron_selection_mode={self.neuron_selection_mode!r})"
        )


class LRPAlpha1Beta0(LRPAlphaBeta):
    """LRP-α1β0: only positive contributions count (:class:`LRPAlphaBeta` with α=1, β=0).

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    bias : bool
        Whether biases take their share of relevance (default True; see
        :class:`LRPAlphaBeta`).
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    """

    def __init__(
        self, model: Any, bias: bool = True, neuron_selection_mode: str = "max_activation"
    ) -> None:
        super().__init__(
            model, alpha=1.0, beta=0.0, bias=bias, neuron_selection_mode=neuron_selection_mode
        )


class LRPAlpha2Beta1(LRPAlphaBeta):
    """LRP-α2β1 (:class:`LRPAlphaBeta` with α=2, β=1).

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    bias : bool
        Whether biases take their share of relevance (default True; see
        :class:`LRPAlphaBeta`).
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    """

    def __init__(
        self, model: Any, bias: bool = True, neuron_selection_mode: str = "max_activation"
    ) -> None:
        super().__init__(
            model, alpha=2.0, beta=1.0, bias=bias, neuron_selection_mode=neuron_selection_mode
        )


class LRPZPlus(_SignSplitLRP):
    """LRP with the z⁺ rule (Montavon et al. 2017).

    ``R_i = Σ_j (x_i w_ij)₊ / Σ_i' (x_i' w_i'j)₊ · R_j`` at every linear layer.

    Biases are ignored. Where inputs are non-negative (after a ReLU) this is the deep Taylor
    decomposition's z⁺ rule with ``w⁺``; for inputs of either sign the positive contributions
    ``x⁺w⁺ + x⁻w⁻`` are used (iNNvestigate's ``ZPlusRule``). Equal to
    ``LRPAlpha1Beta0(bias=False)``. Seeded with ``y``.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    """

    def _linear_rule(self, values) -> Any:
        return ZPlusRule(nonnegative_input=self._nonnegative_input)


class DeepTaylor(_SignSplitLRP):
    """Deep Taylor decomposition for bounded inputs (Montavon et al. 2017).

    The linear layers that read the input (directly or through padding, reshapes, pooling)
    take the zᴮ rule for inputs in the box ``[low, high]``
    (:class:`~pattern_keras.rules.BoundedRule`); every deeper linear layer the z⁺ rule.
    Seeded with ``y``.

    Parameters
    ----------
    model : keras.Model
    low, high : float, array, list or None
        The input domain: a scalar, or an array broadcastable to one sample (or to the batch),
        one per input for a model with several inputs. ``None`` (default) uses each sample's
        own minimum (maximum) value. Padding the model adds is fixed at zero: both its bounds
        are zero. An integer input read as a number takes them at the float it becomes. An
        input of token ids takes none: its box is the embedding table's per-dimension minimum
        and maximum at the token embeddings (the position and segment embeddings added to
        them kept as they are).
    neuron_selection_mode : str

    Examples
    --------
    >>> pk.DeepTaylor(model, low=-1.0, high=1.0).analyze(x)   # images scaled to [-1, 1]
    """

    def __init__(
        self,
        model: Any,
        low: Any = None,
        high: Any = None,
        neuron_selection_mode: str = "max_activation",
    ) -> None:
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)
        for op in self._program.ops:
            if op.kind == "recurrent":
                raise ValueError(
                    f"DeepTaylor does not explain the recurrent layer '{op.key}' "
                    f"({type(op.layer).__name__}): its zᴮ rule needs the box of every linear "
                    "layer's input, undefined for a cell that reads its own previous output. "
                    "Use LRPZPlus (z⁺ everywhere) or LRPAlpha1Beta0 instead."
                )
        n_inputs = len(self._program.inputs)
        self.low = self._per_input(low, "low", n_inputs)
        self.high = self._per_input(high, "high", n_inputs)
        for lo, hi in zip(self.low, self.high):
            if lo is not None and hi is not None and np.any(lo > hi):
                raise ValueError("DeepTaylor needs low <= high everywhere.")
        for point, lo, hi in zip(self._program.points, self.low, self.high):
            if point.kind == "embedding" and (lo is not None or hi is not None):
                raise ValueError(
                    f"Input {point.index} holds token ids, explained at their embedding "
                    "vectors: its box is the embedding table's per-dimension range. Pass "
                    "low=None and high=None for it (a list with None there, for a model with "
                    "several inputs)."
                )

    @staticmethod
    def _per_input(value: Any, name: str, n_inputs: int) -> list[Any]:
        if n_inputs > 1 and isinstance(value, (list, tuple)):
            if len(value) != n_inputs:
                raise ValueError(
                    f"{name} must be one value per input ({n_inputs}), got {len(value)}."
                )
            values = list(value)
        else:
            values = [value] * n_inputs
        out = []
        for v in values:
            if v is None:
                out.append(None)
                continue
            arr = np.asarray(v, dtype=np.float32)
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite, got {v!r}.")
            out.append(arr)
        return out

    def _input_bounds(self, values: dict[int, Any]) -> dict[int, tuple[Any, Any]]:
        """Bounds of the input slots and of every tensor computed from them without a linear
        layer (padding, reshapes, pooling): elementwise monotone maps of the input, run by the
        engine on the bounds themselves."""
        program = self._program
        lows, highs, slots = [], [], []
        for point, lo, hi in zip(program.points, self.low, self.high):
            if point.slot is None:
                continue
            x = values[point.slot]
            if point.kind == "embedding":
                # The token embedding ranges over the table's rows; what is added to it stays.
                table = point.lookup.table()
                rest = x - values[point.token_slot]
                lo = rest + tf.cast(tf.reduce_min(table, axis=0), x.dtype)
                hi = rest + tf.cast(tf.reduce_max(table, axis=0), x.dtype)
            else:
                axes = list(range(1, len(x.shape)))
                lo = tf.reduce_min(x, axis=axes, keepdims=True) if lo is None else lo
                hi = tf.reduce_max(x, axis=axes, keepdims=True) if hi is None else hi
            lows.append(tf.broadcast_to(tf.cast(lo, x.dtype), tf.shape(x)))
            highs.append(tf.broadcast_to(tf.cast(hi, x.dtype), tf.shape(x)))
            slots.append(point.slot)

        # Masks and indices are the sample's own at both bounds, not run on the bounds; the
        # bounds start at the explained points (the ops before them are not run on bounds).
        fixed = {s: values[s] for op in program.ops if op.kind == "index" for s in op.outputs}
        return engine.forward_intervals(
            program,
            lows,
            highs,
            where=lambda op: op.kind not in ("linear", "index", "lookup", "constant"),
            fixed=fixed,
            slots=slots,
        )

    def _linear_rule(self, values) -> Any:
        bounds = self._input_bounds(values)
        bounded = BoundedRule(
            lambda op: bounds[op.inputs[0]][0], lambda op: bounds[op.inputs[0]][1]
        )
        z_plus = ZPlusRule(nonnegative_input=self._nonnegative_input)

        def rule(op, inputs, outputs, upstream):
            if op.inputs[0] in bounds:
                return bounded(op, inputs, outputs, upstream)
            return z_plus(op, inputs, outputs, upstream)

        return rule
