"""Layer-wise relevance propagation: the z-rule and the ε-rule.

Relevance starts as the selected neuron's value ``y`` and is redistributed at every linear
layer, BatchNormalization, Add and average pooling in proportion to the contributions
(``R_i = x_i · Σ_j ∂z_j/∂x_i · R_j / z_j``). ReLUs pass relevance unchanged; max pooling routes it
to the winner; reshapes move it.
"""

from __future__ import annotations

from typing import Any

from pattern_keras.analyzers.base import Analyzer
from pattern_keras.rules import ActivationRule, Composite, ZRule

__all__ = ["LRPZ", "LRPEpsilon"]


class LRPZ(Analyzer):
    """LRP with the z-rule (Bach et al. 2015), seeded with the selected neuron's value.

    On a bias-free ReLU network relevance is conserved (``Σ_i R_i = y``) and, since LRP is
    seeded with ``y`` and :class:`~pattern_keras.InputTimesGradient` with 1, the result equals
    ``y · InputTimesGradient``.
    """

    seed_with_value = True
    epsilon = 0.0

    def _composite(self) -> Composite:
        z = ZRule(self.epsilon)
        return Composite({"linear": z, "affine": z, "sum": z,
                          "activation": ActivationRule("pass")})


class LRPEpsilon(LRPZ):
    """LRP with the ε-rule: ``z + ε·sign(z)`` in the denominator (``sign(0) = +1``).

    Parameters
    ----------
    model : keras.Model
    epsilon : float
        The stabilizer (default 1e-7). As ``ε → 0`` the result tends to :class:`LRPZ`'s.
    neuron_selection_mode : str
    """

    def __init__(self, model: Any, epsilon: float = 1e-7,
                 neuron_selection_mode: str = "max_activation") -> None:
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}.")
        self.epsilon = float(epsilon)
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)
