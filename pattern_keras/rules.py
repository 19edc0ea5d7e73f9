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

from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

from pattern_keras.layers import KINDS, Op

__all__ = [
    "vjp",
    "GradientRule",
    "LinearRule",
    "ActivationRule",
    "ZRule",
    "Composite",
]


def vjp(fn: Callable[[Sequence[Any]], Sequence[Any]], inputs: Sequence[Any],
        upstream: Sequence[Any]) -> list[Any]:
    """Vector-Jacobian product of ``fn`` at ``inputs`` with ``upstream``.

    Inside a ``tf.function`` the recomputed forward ops that the product does not need are
    pruned, and identical ones are shared with the forward pass, so this costs what the
    gradient costs.
    """
    inputs = list(inputs)
    with tf.GradientTape() as tape:
        for x in inputs:
            tape.watch(x)
        outputs = fn(inputs)
    return tape.gradient(list(outputs), inputs, output_gradients=list(upstream),
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)


class GradientRule:
    """The op's own vector-Jacobian product: what the gradient does."""

    def __call__(self, op: Op, inputs, outputs, upstream):
        return vjp(op.forward, inputs, upstream)

    def __repr__(self) -> str:
        return "GradientRule()"


class LinearRule:
    """Backward through a linear op with a chosen kernel: ``x ← K g``.

    Parameters
    ----------
    kernel : callable, optional
        ``kernel(op, z) -> list of (kernel tensor, mask or None)``. The signal crosses the op as
        ``Σ_i VJP_x[apply(x, K_i)](g ⊙ mask_i)``. Default: the layer's own kernel ``W``
        (the gradient). The pattern rules pass ``A`` or ``W ⊙ A``, split by regime where a layer
        keeps both.
    """

    def __init__(self, kernel: Callable[[Op, Any], list[tuple[Any, Any]]] | None = None,
                 name: str = "W") -> None:
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
            gi = g if mask is None else g * mask
            (dx,) = vjp(lambda xs, k=k: [part.apply(xs[0], k)], inputs, [gi])
            total = dx if total is None else total + dx
        return [total]

    def __repr__(self) -> str:
        return f"LinearRule({self.name})"


class ActivationRule:
    """Backward through a ReLU-like activation.

    Parameters
    ----------
    mode : {"gate", "rectify", "gate_rectify", "pass"}
        ``"gate"``: the activation's own gradient (gradient, PatternNet).
        ``"rectify"``: pass ``max(g, 0)``, ignoring the forward pass (DeConvNet).
        ``"gate_rectify"``: gate by the forward pass and keep only ``g > 0`` (Guided BackProp).
        ``"pass"``: pass the signal unchanged (LRP: relevance crosses a ReLU as it is).
        A linear activation always passes the signal.
    """

    MODES = ("gate", "rectify", "gate_rectify", "pass")

    def __init__(self, mode: str = "gate") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}.")
        self.mode = mode

    def __call__(self, op: Op, inputs, outputs, upstream):
        g = upstream[0]
        if op.kind != "activation":
            return vjp(op.forward, inputs, upstream)
        if op.activation == "linear" or self.mode == "pass":
            return [g]
        if self.mode == "rectify":
            return [tf.nn.relu(g)]
        if self.mode == "gate_rectify":
            return vjp(op.forward, inputs, [tf.nn.relu(g)])
        return vjp(op.forward, inputs, upstream)

    def __repr__(self) -> str:
        return f"ActivationRule({self.mode!r})"


class ZRule:
    """LRP's z- and ε-rule on any op that is a sum of contributions.

    Relevance ``R`` at the outputs flows back as ``R_i = x_i · Σ_j ∂z_j/∂x_i · R_j / (z_j + ε·sign(z_j))``:
    for a linear layer ``x ⊙ (W (R / z))``, for Add and average pooling the share of each
    summand, for BatchNormalization the ε-rule on ``γ/σ·x + β'``. ``z`` includes the bias.
    With ``epsilon == 0`` a zero ``z`` passes no relevance (instead of a division by zero).

    Parameters
    ----------
    epsilon : float
        Stabilizer; ``sign(0) = +1``.
    """

    def __init__(self, epsilon: float = 0.0) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
        self.epsilon = float(epsilon)

    def __call__(self, op: Op, inputs, outputs, upstream):
        ratios = []
        for z, r in zip(outputs, upstream):
            if self.epsilon == 0.0:
                ratios.append(tf.math.divide_no_nan(r, z))
            else:
                sign = tf.where(z >= 0, tf.ones_like(z), -tf.ones_like(z))
                ratios.append(r / (z + self.epsilon * sign))
        contributions = vjp(op.forward, inputs, ratios)
        return [x * c for x, c in zip(inputs, contributions)]

    def __repr__(self) -> str:
        return f"ZRule(epsilon={self.epsilon})"


class Composite:
    """A choice of rule per op kind: what an analyzer is.

    Parameters
    ----------
    rules : mapping
        ``{kind: rule}`` for kinds among ``"linear"``, ``"affine"``, ``"activation"``,
        ``"max_pool"``, ``"sum"``, ``"move"``. Kinds left out use :class:`GradientRule`.
    """

    def __init__(self, rules: Mapping[str, Any]) -> None:
        unknown = set(rules) - set(KINDS)
        if unknown:
            raise ValueError(f"Unknown op kinds {sorted(unknown)}; known: {KINDS}.")
        self.rules = dict(rules)
        self._default = GradientRule()

    def __call__(self, op: Op):
        return self.rules.get(op.kind, self._default)

    def __repr__(self) -> str:
        return f"Composite({self.rules})"
