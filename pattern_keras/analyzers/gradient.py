"""The gradient family: Gradient, InputTimesGradient, DeConvNet, GuidedBackprop.

They differ only in how a backward signal crosses a ReLU (and in the seed):

============================  =========================  ======
analyzer                      ReLU rule                  seed
============================  =========================  ======
Gradient                      gate by forward pass       1
InputTimesGradient            gate, then ``x ⊙ ·``       1
DeConvNet                     ``max(g, 0)``              ``y``
GuidedBackprop                gate and ``max(g, 0)``     ``y``
============================  =========================  ======

Linear layers pass the signal back through their own kernel ``W``.
"""

from __future__ import annotations

from pattern_keras.analyzers.base import Analyzer
from pattern_keras.rules import ActivationRule, Composite, GradientRule, LinearRule

__all__ = ["Gradient", "InputTimesGradient", "DeConvNet", "GuidedBackprop", "gradient_composite"]


class Gradient(Analyzer):
    """The gradient of the selected output neuron with respect to the input (saliency).

    Seeded with 1 at the selected neuron, so the result equals ``tf.GradientTape``'s gradient.
    Shows how the network filters the input (the weights), not where the signal is.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    """

    seed_with_value = False
    explains_opaque_ops = True  # its result is the gradient, whatever the layer
    token_reduction = "norm"
    # BatchNorm stays unfolded: folding computes the same function with other roundings, and on
    # deep random-weight networks a pre-activation within rounding of 0 then flips its ReLU gate
    # (measured on ResNet50: 2.7e-4 of the largest value from the tape's gradient, where the
    # gradient must match the tape to 1e-4). It would save about 5 % of a pass.

    def _composite(self, values) -> Composite:
        return gradient_composite()


def gradient_composite() -> Composite:
    """Every op by its own vector-Jacobian product: the gradient (layers without a rule
    included: their gradient is exact)."""
    return Composite(
        {
            "linear": LinearRule(),
            "activation": ActivationRule("gate"),
            "opaque": GradientRule(),
        },
        default=GradientRule(),
    )


class InputTimesGradient(Gradient):
    """The input times the gradient, ``x ⊙ ∂y/∂x`` (seeded with 1).

    Equals LRP-z on a bias-free ReLU network.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    """

    token_reduction = "sum"

    def _postprocess(self, inputs, signals):
        return [x * g for x, g in zip(inputs, signals)]


class DeConvNet(Analyzer):
    """DeConvNet (Zeiler & Fergus 2014): ReLUs pass ``max(g, 0)`` regardless of the forward pass.

    Seeded with the selected neuron's value ``y``.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    """

    seed_with_value = True
    token_reduction = "norm"

    def _composite(self, values) -> Composite:
        # Held quantities (a normalizer's per-sample scale) stay at their forward values, as
        # for every rule-based analyzer: the rest crosses by the held map's derivative.
        return Composite(
            {"linear": LinearRule(), "activation": ActivationRule("rectify")},
            default=GradientRule(held=True),
        )


class GuidedBackprop(Analyzer):
    """Guided Backpropagation (Springenberg et al. 2015): ReLUs gate by the forward pass and
    pass only positive signals.

    Seeded with the selected neuron's value ``y``.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    """

    seed_with_value = True
    token_reduction = "norm"

    def _composite(self, values) -> Composite:
        return Composite(
            {"linear": LinearRule(), "activation": ActivationRule("gate_rectify")},
            default=GradientRule(held=True),  # held quantities stay held, as for DeConvNet
        )
