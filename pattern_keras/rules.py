"""Backward rules: how a backward signal crosses one op.

A rule is a callable ``rule(op, inputs, outputs, upstream) -> downstream`` (lists of tensors, one
per op input / output). The engine (:mod:`pattern_keras.engine`) calls it for every op in
reverse order. Rules are small and composable; an analyzer is a choice of rule per op kind
(see :class:`Composite`).

Conventions: ``upstream`` is shaped like the op's outputs, ``downstream`` like its inputs. For a
linear op, ``outputs[0]`` is the pre-activation ``z = Wᵀx + b`` (bias included), since fused
activations are separate ops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from pattern_keras import graph as _graph
from pattern_keras.layers import KINDS, Op

__all__ = [
    "vjp",
    "held_vjp",
    "GradientRule",
    "LinearRule",
    "ActivationRule",
    "BasicRule",
    "Term",
    "ZRule",
    "RatioZRule",
    "RecurrentRule",
    "Composite",
]


def vjp(
    fn: Callable[[Sequence[Any]], Sequence[Any]], inputs: Sequence[Any], upstream: Sequence[Any]
) -> list[Any]:
    """Vector-Jacobian product of ``fn`` at ``inputs`` with ``upstream``.

    Inside a ``tf.function`` the recomputed forward ops that the product does not need are
    pruned, and identical ones are shared with the forward pass, so this costs what the
    gradient costs. Inputs and outputs that are not floating point (masks, indices) carry no
    signal: ``None`` comes back for such an input.
    """
    inputs = _distinct(inputs)
    signal = [_differentiable(x) for x in inputs]
    with tf.GradientTape() as tape:
        for x, s in zip(inputs, signal):
            if s:
                tape.watch(x)
        outputs = list(fn(inputs))
    pairs = [(y, g) for y, g in zip(outputs, upstream) if _differentiable(y) and g is not None]
    sources = [x for x, s in zip(inputs, signal) if s]
    if not pairs or not sources:
        return [None] * len(inputs)
    grads = iter(
        tape.gradient(
            [y for y, _ in pairs],
            sources,
            output_gradients=[g for _, g in pairs],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
    )
    return [next(grads) if s else None for s in signal]


def _differentiable(t: Any) -> bool:
    dtype = getattr(t, "dtype", None)
    return dtype is not None and (dtype.is_floating or dtype.is_complex)


def held_vjp(op: Op, inputs: Sequence[Any], upstream: Sequence[Any]) -> list[Any]:
    """Vector-Jacobian product of the op's ``held`` forward pass (its ``forward`` where it has
    none) with respect to the inputs it does not hold; ``None`` for the held inputs
    (``op.held_inputs``: attention weights, queries and keys), which so receive no signal and
    are never visited by the engine. What every rule-based analyzer takes through an op with
    held quantities."""
    forward = op.held if op.held is not None else op.forward
    free = [i for i in range(len(inputs)) if i not in op.held_inputs]
    if len(free) == len(inputs):
        return vjp(forward, inputs, upstream)
    grads = vjp(_on_free_inputs(forward, inputs, free), [inputs[i] for i in free], upstream)
    out: list[Any] = [None] * len(inputs)
    for i, g in zip(free, grads):
        out[i] = g
    return out


def _on_free_inputs(
    fn: Callable[[Sequence[Any]], Sequence[Any]], inputs: Sequence[Any], free: Sequence[int]
) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """``fn`` as a function of the inputs at positions ``free``, the others fixed."""

    def on_free(xs):
        full = list(inputs)
        for i, x in zip(free, xs):
            full[i] = x
        return fn(full)

    return on_free


def _distinct(inputs: Sequence[Any]) -> list[Any]:
    """``inputs`` with every repeated tensor object replaced by an identity copy.

    A tape asked for the gradient of one tensor listed twice (``Concatenate()([h, h])``,
    ``Add()([h, Identity()(h)])``: the replay gives both operands the same tensor) returns the
    *total* gradient at each position; the engine then adds both, counting the signal twice.
    With a copy per position each gets its own share, as the op's inputs are distinct uses. The
    copy keeps the Keras mask the tensor carries.
    """
    seen: set[int] = set()
    distinct = []
    for x in inputs:
        if id(x) in seen:
            x = _graph.copy_mask(x, tf.identity(x))
        seen.add(id(x))
        distinct.append(x)
    return distinct


class GradientRule:
    """The op's own vector-Jacobian product: what the gradient does.

    Parameters
    ----------
    held : bool
        Differentiate the op's ``held`` forward pass where it has one (LayerNormalization with
        its normalizing scale held constant: a linear map; an attention product with its
        attention weights held), with no signal into held operands (:func:`held_vjp`): what
        every rule-based analyzer does.
    """

    def __init__(self, held: bool = False) -> None:
        self.held = bool(held)

    def __call__(self, op: Op, inputs, outputs, upstream):
        if self.held:
            return held_vjp(op, inputs, upstream)
        return vjp(op.forward, inputs, upstream)

    def __repr__(self) -> str:
        return "GradientRule(held=True)" if self.held else "GradientRule()"


class LinearRule:
    """Backward through a linear op with a chosen kernel: ``x ← K g``.

    Parameters
    ----------
    kernel : callable, optional
        ``kernel(op, z) -> list of (kernel tensor, mask or None)``. The signal crosses the op as
        ``Σ_i VJP_x[apply(x, K_i)](g ⊙ mask_i)``; a boolean mask selects ``g`` where it is
        true. Default: the layer's own kernel ``W`` (the gradient). The pattern rules pass ``A``
        or ``W ⊙ A``, split by regime where a layer keeps both.
    """

    def __init__(
        self, kernel: Callable[[Op, Any], list[tuple[Any, Any]]] | None = None, name: str = "W"
    ) -> None:
        self.kernel = kernel
        self.name = name

    def __call__(self, op: Op, inputs, outputs, upstream):
        if op.kind != "linear":
            return vjp(op.forward, inputs, upstream)
        part = op.linear
        g = upstream[0]
        if self.kernel is None:
            kernels = [(part.kernel, None)]
        else:
            kernels = self.kernel(op, outputs[0])
        total = None
        for k, mask in kernels:
            if mask is None:
                gi = g
            elif mask.dtype == tf.bool:  # one select instead of a cast and a product
                gi = tf.where(mask, g, tf.constant(0, g.dtype))
            else:
                gi = g * mask
            (dx,) = vjp(lambda xs, k=k: [part.apply(xs[0], k)], inputs, [gi])
            total = dx if total is None else total + dx
        return [total]

    def __repr__(self) -> str:
        return f"LinearRule({self.name})"


class ActivationRule:
    """Backward through an activation: the rule table of the README.

    Three classes of activation op: ReLU (and ReLU6), the *gating* activations
    ``f(z) = z·g(z)`` (``op.gate`` gives ``g(z)``: leaky ReLU, PReLU, ELU, SELU, swish, hard
    swish, GELU, tanh, and a Multiply by a gate, whose second input is the gate), and the other
    activations (sigmoid, softplus, hard sigmoid). A linear activation always passes the signal.

    Parameters
    ----------
    mode : {"gate", "rectify", "gate_rectify", "pass", "pattern"}
        ``"gate"``: the exact derivative for every activation, through a gate's branch too (the
        product rule): the gradient family.
        ``"rectify"``: ReLU and gating activations pass ``max(g, 0)`` whatever the forward pass,
        nothing into a gate's branch; other activations their derivative (DeConvNet).
        ``"gate_rectify"``: ReLU gates by its own derivative, a gating activation multiplies by
        ``g(z)``, then only positive signals pass, nothing into a gate's branch; other
        activations their derivative (Guided BackProp).
        ``"pass"``: pass the signal unchanged, nothing into a gate's branch (LRP: relevance
        crosses an activation as it is).
        ``"pattern"``: ReLU gates by its own derivative (the forward gate), a gating activation
        multiplies by ``g(z)``, nothing into a gate's branch; other activations their
        derivative (PatternNet, PatternAttribution).
        ``"ratio_pass"``: ``"pass"`` for a signal in ratio form (``s = R / x``, see
        :class:`RatioZRule`): relevance crosses unchanged, so its ratio is multiplied by
        ``f(z)/z`` (``0`` where ``z = 0``): a plain ReLU's forward gate, ``g(z)`` for a gating
        activation; nothing into a gate's branch.
    """

    MODES = ("gate", "rectify", "gate_rectify", "pass", "pattern", "ratio_pass")

    def __init__(self, mode: str = "gate") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}.")
        self.mode = mode

    def __call__(self, op: Op, inputs, outputs, upstream):
        g = upstream[0]
        if op.kind != "activation":
            return vjp(op.forward, inputs, upstream)
        # Signals into a gate's branch (the second input of a product): none, except for the
        # gradient family, which differentiates the product.
        rest = [None] * (len(inputs) - 1)
        if op.activation == "linear" or self.mode == "pass":
            return [g] + rest
        if self.mode == "ratio_pass":
            if op.plain_relu:  # relu(z)/z is its forward gate: TensorFlow's ReLU gradient
                return vjp(op.forward, inputs, upstream)
            return [g * tf.math.divide_no_nan(outputs[0], tf.cast(inputs[0], g.dtype))] + rest
        if self.mode == "gate":
            return vjp(op.forward, inputs, upstream)
        relu = op.activation == "relu"
        gating = op.gate is not None
        if self.mode == "rectify" and (relu or gating):
            return [tf.nn.relu(g)] + rest
        if self.mode == "gate_rectify" and relu:
            if op.plain_relu:  # the forward gate and the rectification as one fused loop
                return [_gated_rectified(g, tf.cast(inputs[0], g.dtype))]
            return vjp(op.forward, inputs, [tf.nn.relu(g)])
        if self.mode in ("gate_rectify", "pattern") and gating:
            gated = g * tf.cast(op.gate(inputs), g.dtype)
            return [tf.nn.relu(gated) if self.mode == "gate_rectify" else gated] + rest
        return vjp(op.forward, inputs, upstream)

    def __repr__(self) -> str:
        return f"ActivationRule({self.mode!r})"


class Term:
    """One summand of a contribution rule: the inputs (after the input modifier), the map whose
    vector-Jacobian product carries relevance back (the op with modified parameters) and a sign.

    ``value``, if given, is ``fn(inputs)`` already computed (the forward pass's output).
    """

    __slots__ = ("inputs", "fn", "sign", "value")

    def __init__(
        self,
        inputs: Sequence[Any],
        fn: Callable[[Sequence[Any]], Sequence[Any]],
        sign: float = 1.0,
        value: Sequence[Any] | None = None,
    ) -> None:
        self.inputs = list(inputs)
        self.fn = fn
        self.sign = sign
        self.value = value


class BasicRule:
    """The template of the relevance rules (in the spirit of Zennit's ``BasicHook``).

    A rule is one or more *groups* of terms, each made by :meth:`groups` from the op's input and
    output (the input and parameter modifiers). For a group with weight ``ω``, terms
    ``t = (x_t, f_t, σ_t)`` and bias ``b``:

        ``z = Σ_t σ_t f_t(x_t) + b``                       (the output modifier adds ``b``)
        ``s = R / stabilize(z)``                            (:meth:`stabilize`)
        ``R_in = Σ_groups ω · Σ_t σ_t x_t ⊙ VJP[f_t](s)``  (the reduction)

    The z-, ε-, αβ-, z⁺- and bounded rules below are short parameterisations of it. Relevance
    comes back as one tensor per op input.

    Parameters
    ----------
    epsilon : float
        The stabilizer: ``z + ε·sign(z)`` (``sign(0) = +1``); with ``0`` (default) a zero ``z``
        passes no relevance instead of dividing by zero.
    """

    def __init__(self, epsilon: float = 0.0) -> None:
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
        self.epsilon = float(epsilon)

    def groups(self, op: Op, inputs, outputs) -> list[tuple[float | None, list[Term], Any]]:
        """``[(weight or None, terms, bias or None), ...]``: the contributions of ``op``."""
        raise NotImplementedError

    def stabilize(self, r: Any, z: Any) -> Any:
        """``r / z`` with the stabilizer (the output modifier of the denominator)."""
        if self.epsilon == 0.0:
            return tf.math.divide_no_nan(r, z)
        # ε·sign(z) with sign(0) = +1, as one select of two scalars: fewer passes over the
        # (large) tensor than building a ±1 sign tensor and scaling it.
        eps = tf.constant(self.epsilon, z.dtype)
        return r / (z + tf.where(z >= 0, eps, -eps))

    def __call__(self, op: Op, inputs, outputs, upstream):
        # ``Σ_groups ω Σ_t σ_t x_t ⊙ VJP[f_t](s)`` computed as ``Σ_x x ⊙ Σ_(groups, t with x_t = x)
        # ±VJP[f_t](|ω|·s)``: the weight scales the ratio (skipped for ω = 1), the VJPs of
        # terms that share their inputs (αβ's two signs on the same x⁺) are summed before one
        # product with the input. Fewer passes over large tensors, the same sum.
        groups = self.groups(op, inputs, outputs)
        if len(groups) == 1:
            return self._relevance(groups, upstream)
        # With several groups nothing may start before the signal arrives: the terms' forward
        # products depend only on the forward pass, and TensorFlow ran every layer's at once,
        # early, holding them all until the backward pass reached them (measured on ResNet50:
        # LRP-α2β1's peak memory over the tape gradient's, 5.5× without this). With one group
        # its order already keeps the product near its use (the same peak), and the dependency
        # measured 7 % slower (z⁺ 1.56 → 1.66 gradients).
        with tf.control_dependencies([u for u in upstream if u is not None]):
            return self._relevance(groups, upstream)

    def _relevance(self, groups, upstream):
        gathered: dict[tuple[int, ...], tuple[list[Any], list[Any], bool]] = {}
        for weight, terms, bias in groups:
            z = None
            for t in terms:
                value = list(t.fn(t.inputs) if t.value is None else t.value)
                if z is None:
                    z = value if t.sign > 0 else [-v for v in value]
                else:
                    z = [a + v if t.sign > 0 else a - v for a, v in zip(z, value)]
            if bias is not None:
                z = [z[0] + bias] + z[1:]
            ratios = [self.stabilize(r, zi) for r, zi in zip(upstream, z)]
            if weight is not None and abs(weight) != 1.0:
                ratios = [abs(weight) * r for r in ratios]
            group_sign = -1.0 if weight is not None and weight < 0 else 1.0
            for t in terms:
                grads = vjp(t.fn, t.inputs, ratios)
                positive = group_sign * t.sign > 0
                key = tuple(id(x) for x in t.inputs)
                if key not in gathered:
                    gathered[key] = (t.inputs, list(grads), positive)
                    continue
                xs, acc, acc_positive = gathered[key]
                add = positive == acc_positive  # acc holds ±(its first term's sign)·sum
                acc = [a + g if add else a - g for a, g in zip(acc, grads)]
                gathered[key] = (xs, acc, acc_positive)
        total = None
        for xs, acc, positive in gathered.values():
            # An input without a gradient (a mask or index operand) gets no relevance: None.
            part = [None if g is None else x * g for x, g in zip(xs, acc)]
            if total is None:
                total = part if positive else [None if p is None else -p for p in part]
            elif positive:
                total = [a if p is None else a + p for a, p in zip(total, part)]
            else:
                total = [a if p is None else a - p for a, p in zip(total, part)]
        return total


class ZRule(BasicRule):
    """LRP's z- and ε-rule on any op that is a sum of contributions.

    Relevance ``R`` at the outputs flows back as ``R_i = x_i · Σ_j ∂z_j/∂x_i · R_j / (z_j + ε·sign(z_j))``:
    for a linear layer ``x ⊙ (W (R / z))``, for Add and average pooling the share of each
    summand, for BatchNormalization the ε-rule on ``γ/σ·x + β'``. ``z`` includes the bias.
    With ``epsilon == 0`` a zero ``z`` passes no relevance (instead of a division by zero).

    As a :class:`BasicRule`: one term, the op itself on its own inputs, its forward output as
    ``z``.

    Parameters
    ----------
    epsilon : float
        Stabilizer; ``sign(0) = +1``.
    """

    def groups(self, op, inputs, outputs):
        # LayerNormalization: its normalizing scale held constant, a linear map (Ali et al. 2022);
        # an attention product: its attention weights held, linear in the values. Held operands
        # are no contributions: the term is a function of the others only.
        forward = op.held if op.held is not None else op.forward
        free = [i for i in range(len(inputs)) if i not in op.held_inputs]
        if len(free) < len(inputs):
            forward = _on_free_inputs(forward, inputs, free)
            inputs = [inputs[i] for i in free]
        return [(None, [Term(inputs, forward, value=outputs)], None)]

    def __call__(self, op: Op, inputs, outputs, upstream):
        relevance = super().__call__(op, inputs, outputs, upstream)
        if not op.held_inputs:
            return relevance
        out: list[Any] = [None] * len(inputs)
        free = [i for i in range(len(inputs)) if i not in op.held_inputs]
        for i, r in zip(free, relevance):
            out[i] = r
        return out

    def __repr__(self) -> str:
        return f"ZRule(epsilon={self.epsilon})"


# The rescalings of the ratio form, each one fused loop (XLA) instead of two to four
# elementwise TensorFlow ops, each a pass over a large tensor: measured on ResNet50, the
# unfused ε factor alone cost a quarter of a gradient. Bit for bit the same values. Shapes are
# generalized (one trace), XLA compiles once per concrete shape at the first call.
@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _epsilon_rescaled(s: Any, z: Any, epsilon: Any) -> Any:
    """``s · z / (z + ε·sign(z)) = s · |z| / (|z| + ε)``."""
    magnitude = tf.abs(z)
    return s * magnitude / (magnitude + epsilon)


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _nonzero_rescaled(s: Any, z: Any) -> Any:
    """``s`` where ``z ≠ 0``, 0 elsewhere."""
    return tf.where(tf.not_equal(z, 0), s, tf.zeros_like(s))


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _gated_rectified(g: Any, z: Any) -> Any:
    """``max(g, 0)`` where ``z > 0``, 0 elsewhere: Guided BackProp at a ReLU (TensorFlow's
    ``ReluGrad(relu(g), z)``, bit for bit, in one pass instead of two)."""
    return tf.where(z > 0, tf.maximum(g, tf.zeros_like(g)), tf.zeros_like(g))


class RatioZRule:
    """LRP's z- and ε-rule in *ratio form*: the backward signal is ``s = R / x``.

    :class:`ZRule` sends relevance back as ``R_in = x ⊙ VJP(R_out / stab(z))``, with ``z`` the
    op's output. Written for the relevance *per unit of activation* at each tensor,
    ``s_t = R_t / x_t``, the same rule reads

        ``s_in = VJP(s_out ⊙ z / stab(z))``

    (``R_out / stab(z) = s_out ⊙ z / stab(z)``): the op's own vector-Jacobian product of a
    rescaled signal, with no division and no product by the input at every op. The input
    ``x ⊙`` is applied once, at the model's input; a ReLU passes relevance, so its ratio
    crosses by the forward gate (``relu(z)/z``, :class:`ActivationRule` ``"ratio_pass"``);
    moves and max pooling copy values, so the ratio moves as the relevance does. The result
    equals :class:`ZRule`'s (tested) and costs what the gradient costs, plus the rescaling:
    with ``ε > 0`` the factor ``z / (z + ε·sign(z)) = |z| / (|z| + ε)``; with ``ε = 0``
    ``[z ≠ 0]`` (a zero ``z`` passes no relevance, as ``ZRule``'s ``divide_no_nan``), skipped
    where ``skip_zero_mask(op)`` says the consumers of the op's output already send nothing
    back from a zero value (a ReLU's gate).

    Parameters
    ----------
    epsilon : float
        The stabilizer (``≥ 0``; ``sign(0) = +1``).
    skip_zero_mask : callable, optional
        ``skip_zero_mask(op) -> bool``; only read with ``epsilon == 0``.
    """

    def __init__(self, epsilon: float = 0.0, skip_zero_mask: Callable[[Op], bool] | None = None):
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
        self.epsilon = float(epsilon)
        self.skip_zero_mask = skip_zero_mask

    def _rescaled(self, s: Any, z: Any, skip_mask: bool) -> Any:
        z = tf.cast(z, s.dtype)
        if self.epsilon > 0.0:
            return _epsilon_rescaled(s, z, tf.constant(self.epsilon, s.dtype))
        if skip_mask:
            return s
        return _nonzero_rescaled(s, z)

    def __call__(self, op: Op, inputs, outputs, upstream):
        # LayerNormalization: its normalizing scale held constant, a linear map (Ali et al. 2022);
        # an attention product: its attention weights held, nothing into them (held_vjp).
        skip = self.epsilon == 0.0 and self.skip_zero_mask is not None and self.skip_zero_mask(op)
        rescaled = [self._rescaled(s, z, skip) for s, z in zip(upstream, outputs)]
        return held_vjp(op, inputs, rescaled)

    def __repr__(self) -> str:
        return f"RatioZRule(epsilon={self.epsilon})"


class RecurrentRule:
    """Backward through a recurrent op: the analyzer's own rules on its cell, step by step.

    A recurrent layer's cell is a small program of ops of the ordinary kinds (linear maps,
    sums, activations, gated products; see :mod:`pattern_keras.layers.recurrent`). The op's
    backward walks the time steps in reverse (one ``tf.while_loop``); at every step this rule
    runs :func:`pattern_keras.engine.backward_ops` on the cell with the analyzer's composite,
    from the signals at the step's output and new states to its input and previous states.
    So a gated product passes the signal as every product does in that analyzer (LRP: all of
    it to the signal operand; Guided BackProp: times the gate, then rectified; DeConvNet:
    rectified), the cell-state sum and the GRU's interpolation take the analyzer's sum rule,
    and the candidate's kernels its linear rule. :class:`Composite` hands this rule out for
    kind ``"recurrent"``.

    Parameters
    ----------
    composite : Composite
        The analyzer's rules, applied inside the cell.
    """

    def __init__(self, composite: Composite) -> None:
        self.composite = composite

    def __call__(self, op: Op, inputs, outputs, upstream):
        from pattern_keras import engine  # the engine imports the layers this module reads

        cell = op.recurrent.cell

        def step(values, seeds):
            return engine.backward_ops(cell.ops, values, seeds, cell.inputs, self.composite)

        return op.recurrent.backward(inputs, outputs, upstream, step)

    def __repr__(self) -> str:
        return f"RecurrentRule({self.composite!r})"


class Composite:
    """A choice of rule per op kind: what an analyzer is.

    Parameters
    ----------
    rules : mapping
        ``{kind: rule}`` for kinds among :data:`~pattern_keras.layers.KINDS` (``"linear"``,
        ``"affine"``, ``"activation"``, ``"max_pool"``, ``"sum"``, ``"move"``).
    default : rule, optional
        The rule of every kind ``rules`` leaves out (e.g. ``GradientRule()``: "the rest as the
        gradient"). Without one, an op of a kind that has no rule is refused with a
        ``ValueError`` naming it: an analyzer never explains a layer by a rule it did not
        choose. A recurrent op, unless ``rules`` names the kind, gets :class:`RecurrentRule`
        with this composite: the same rules inside its cell.
    """

    def __init__(self, rules: Mapping[str, Any], default: Any = None) -> None:
        unknown = set(rules) - set(KINDS)
        if unknown:
            raise ValueError(f"Unknown op kinds {sorted(unknown)}; known: {KINDS}.")
        self.rules = dict(rules)
        self.default = default

    def __call__(self, op: Op):
        if op.kind == "opaque" and "opaque" not in self.rules:
            # Never through the default: a layer nobody could read is not explained by the
            # gradient in an analyzer that promises another rule.
            raise ValueError(op.refusal or f"Op '{op.key}' has no rule in {self!r}.")
        if op.kind == "recurrent" and "recurrent" not in self.rules:
            return RecurrentRule(self)
        rule = self.rules.get(op.kind, self.default)
        if rule is None:
            raise ValueError(
                f"No backward rule for op '{op.key}' of kind {op.kind!r} in {self!r}: give the "
                "Composite a rule for this kind (or a default)."
            )
        return rule

    def __repr__(self) -> str:
        default = "" if self.default is None else f", default={self.default!r}"
        return f"Composite({self.rules}{default})"


# ----------------------------------------------------------------------------------------------
# Rules that split contributions by sign: LRP-αβ, z⁺ and the bounded (zᴮ) rule of deep Taylor
# decomposition. They apply to linear ops only (``op.kind == "linear"``); an analyzer maps the
# other kinds to other rules (see :mod:`pattern_keras.analyzers.lrp`).

__all__ += ["AlphaBetaRule", "ZPlusRule", "BoundedRule"]


def _signed_parts(t: Any) -> tuple[Any, Any]:
    """``(max(t, 0), min(t, 0))``."""
    return tf.maximum(t, 0.0), tf.minimum(t, 0.0)


def _linear_term(op: Op, x: Any, kernel: Any, sign: float = 1.0) -> Term:
    """The term ``σ · apply(x, kernel)`` of a linear op (bias excluded)."""
    return Term([x], lambda xs: [op.linear.apply(xs[0], kernel)], sign)


def _require_linear(op: Op, rule: Any) -> None:
    if op.kind != "linear":
        raise TypeError(
            f"{rule!r} applies to linear ops only; op '{op.key}' is of kind "
            f"{op.kind!r}. Map other kinds to another rule in the Composite."
        )


class AlphaBetaRule(BasicRule):
    """LRP-αβ (Bach et al. 2015) on a linear op; with ``alpha=1, beta=0, bias=False`` the z⁺ rule.

    With contributions ``z_ij = x_i w_ij`` split by sign, ``z_j⁺ = Σ_i (z_ij)₊ (+ b_j⁺)`` and
    ``z_j⁻ = Σ_i (z_ij)₋ (+ b_j⁻)``, relevance flows back as

        ``R_i = Σ_j (α · (z_ij)₊ / z_j⁺ − β · (z_ij)₋ / z_j⁻) · R_j``.

    The positive contributions are ``x⁺ w⁺ + x⁻ w⁻`` (so inputs of either sign are handled), and
    each term is one transposed linear map: ``R⁺ = x⁺ ⊙ Wᵀ⁺(R/z⁺) + x⁻ ⊙ Wᵀ⁻(R/z⁺)``. A zero
    ``z_j⁺`` (no positive contribution) passes nothing through its term instead of dividing by
    zero. With ``α − β = 1`` relevance is conserved wherever both ``z_j⁺`` and ``z_j⁻`` are
    non-zero and the biases take no share (``bias=False``, or bias-free layers).

    Parameters
    ----------
    alpha, beta : float
        Weights of the positive and negative contributions, ``α − β = 1`` (checked by the
        analyzers, not here, so the rule can be studied with other values).
    bias : bool
        Count the bias as a contribution (``b⁺`` to ``z⁺``, ``b⁻`` to ``z⁻``; it absorbs its
        share of relevance), as iNNvestigate's ``Alpha1Beta0Rule``/``Alpha2Beta1Rule`` do.
        ``False`` ignores it (the z⁺ rule, iNNvestigate's ``ZPlusRule``).
    nonnegative_input : callable, optional
        ``nonnegative_input(op) -> bool``: the op's input is known to be ``≥ 0`` (it comes from a
        ReLU), so the ``x⁻`` terms are skipped (they are zero): half the work.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.0,
        bias: bool = True,
        nonnegative_input: Callable[[Op], bool] | None = None,
    ) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}.")
        super().__init__(0.0)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.bias = bool(bias)
        self.nonnegative_input = nonnegative_input

    def groups(self, op, inputs, outputs):
        _require_linear(op, self)
        part = op.linear
        x = inputs[0]
        kernel = tf.cast(part.kernel, x.dtype)
        w_pos, w_neg = _signed_parts(kernel)
        nonnegative = self.nonnegative_input is not None and self.nonnegative_input(op)
        x_pos, x_neg = (x, None) if nonnegative else _signed_parts(x)
        bias = None
        if self.bias and part.bias_fn is not None:
            bias = part.to_output(tf.cast(part.bias, outputs[0].dtype), len(outputs[0].shape))

        def regime(k_for_pos, k_for_neg):
            """The contributions of one sign: ``x⁺ w^± + x⁻ w^∓``."""
            terms = [_linear_term(op, x_pos, k_for_pos)]
            if x_neg is not None:
                terms.append(_linear_term(op, x_neg, k_for_neg))
            return terms

        groups = [
            (self.alpha, regime(w_pos, w_neg), None if bias is None else tf.maximum(bias, 0.0))
        ]
        if self.beta != 0.0:
            # Not ``(z − b) − x·w⁺`` from the forward pass, which would save a product: measured,
            # its cancellation costs 3e-5 of the largest relevance against float64.
            groups.append(
                (-self.beta, regime(w_neg, w_pos), None if bias is None else tf.minimum(bias, 0.0))
            )
        return groups

    def __repr__(self) -> str:
        return f"AlphaBetaRule(alpha={self.alpha:g}, beta={self.beta:g}, bias={self.bias})"


class ZPlusRule(AlphaBetaRule):
    """The z⁺ rule (Montavon et al. 2017): :class:`AlphaBetaRule` with ``α = 1``, ``β = 0`` and
    no bias, ``R_i = Σ_j (x_i w_ij)₊ / Σ_i' (x_i' w_i'j)₊ · R_j``."""

    def __init__(self, nonnegative_input: Callable[[Op], bool] | None = None) -> None:
        super().__init__(1.0, 0.0, bias=False, nonnegative_input=nonnegative_input)

    def __repr__(self) -> str:
        return "ZPlusRule()"


class BoundedRule(BasicRule):
    """The zᴮ rule of deep Taylor decomposition (Montavon et al. 2017) for inputs in a box.

    For inputs known to lie in ``[low, high]`` (pixels, say), each neuron's root point is searched
    inside the box, which gives

        ``R_i = Σ_j z_ij / Σ_i' z_i'j · R_j``  with  ``z_ij = x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻``.

    The bias is not a contribution. For ``x`` inside the box every term is ``≥ 0``, so non-negative
    relevance stays non-negative and is conserved where the denominator is non-zero (a zero one
    passes nothing).

    Parameters
    ----------
    low, high : callable
        ``low(op)``, ``high(op)``: the bounds of the op's input, tensors broadcastable to it.
    """

    def __init__(self, low: Callable[[Op], Any], high: Callable[[Op], Any]) -> None:
        super().__init__(0.0)
        self.low = low
        self.high = high

    def groups(self, op, inputs, outputs):
        _require_linear(op, self)
        x = inputs[0]
        low = tf.broadcast_to(tf.cast(self.low(op), x.dtype), tf.shape(x))
        high = tf.broadcast_to(tf.cast(self.high(op), x.dtype), tf.shape(x))
        kernel = tf.cast(op.linear.kernel, x.dtype)
        w_pos, w_neg = _signed_parts(kernel)
        return [
            (
                None,
                [
                    _linear_term(op, x, kernel),
                    _linear_term(op, low, w_pos, -1.0),
                    _linear_term(op, high, w_neg, -1.0),
                ],
                None,
            )
        ]

    def __repr__(self) -> str:
        return "BoundedRule()"
