"""What each supported Keras layer *is*, seen by the reverse engine.

Every call of a layer becomes one or more :class:`Op` objects of a small set of *kinds*; the
backward rules are chosen per kind, never per layer class:

``"linear"``
    A kernel applied linearly, plus a bias (Dense, EinsumDense, Conv1D/2D/3D, DepthwiseConv, the
    two halves of a SeparableConv, ConvTranspose, and ``keras.ops.matmul``/``dot``/``einsum`` of
    a tensor with a constant shaped like a kernel). Carries a :class:`LinearPart`. A fused activation
    (``Dense(..., activation="relu")``) becomes a separate ``"activation"`` op after it.
``"affine"``
    A map that is affine in its input for LRP and the pattern methods: an elementwise scale and
    shift (inference-mode BatchNormalization, Rescaling, Normalization, ConvNeXt's LayerScale,
    constant arithmetic such as ``x * c`` or ``x + 3.0`` written as graph ops), and the
    normalizers with a per-sample scale (Layer-, Group-, RMS- and UnitNormalization), whose op
    carries ``held``: its forward pass with that scale held constant per sample (a linear map),
    which LRP, DeConvNet, Guided BackProp and the pattern methods differentiate. Also attention:
    ``dot_product_attention`` and a product of two tensors (``bilinear``), whose held operands
    (``held_inputs``: the attention weights; queries and keys) receive no signal from those
    analyzers (see :func:`~pattern_keras.layers.attention.resolve_attention`).
``"activation"``
    An elementwise nonlinearity: ``"relu"`` (ReLU, ReLU6, ``ReLU(max_value=...)``), ``"linear"``,
    the *gating* activations ``f(z) = z·g(z)`` (``leaky_relu``, ``prelu``, ``elu``, ``selu``,
    ``silu`` = swish, ``hard_silu`` = hard_swish, ``gelu``, ``tanh``; the op carries ``gate``),
    the other activations ``sigmoid``, ``softplus``, ``hard_sigmoid``, ``"softmax"`` (as the
    model's last op, where it is stripped, as is a final ``sigmoid``, or as held attention
    weights), and ``"product"``: a
    Multiply of two tensors whose second input is a gate computed from (or broadcast onto) the
    first (``x·sigmoid(x)``, squeeze-and-excitation); see :func:`resolve_products`.
``"max_pool"``
    A selection of maxima (or minima): max pooling (also global and adaptive), Maximum and
    Minimum, ``keras.ops.max``/``min`` over axes; backward signals are routed to the winners.
``"sum"``
    A linear map without a learned kernel: average pooling (also global and adaptive), Add,
    Subtract, Average, InceptionResNetV2's CustomScaleLayer, ``keras.ops.mean``/``sum`` over
    axes, bilinear resampling (these with ``averages``: fixed non-negative weights), and the
    fixed linear maps of both signs (bicubic resampling, other contractions with a constant).
``"move"``
    Data movement: Flatten, Reshape, padding, cropping, Concatenate, Dropout, Identity, Masking,
    RepeatVector, nearest-neighbour resampling, the ``keras.ops`` that slice, pad, split,
    transpose, reshape, stack or cast, and what is the identity at inference (noise, dropout
    and augmentation layers, ConvNeXt's StochasticDepth).
``"index"``
    An op whose outputs are not floating point (masks, indices, shapes: ``x != 0``, ``argmax``):
    no backward signal crosses it, for any method (there is no gradient of an integer), so the
    engine never visits it backward.
``"constant"``
    A layer whose output does not depend on its inputs' values, only on their shape (a
    position table broadcast over the batch): computed in the replay, never visited backward.
``"lookup"``
    An embedding lookup: integer ids (``inputs[0]``) to float vectors, rows of a table
    (Embedding, ``keras.ops.take(table, ids, axis=0)``). No signal crosses it backward; the
    vectors it gives (summed with the position and segment embeddings added to them) are where
    the ids input is explained (see :mod:`pattern_keras.points`).
``"opaque"``
    A layer without a rule whose computation could not be read (a subclassed model with Python
    control flow, a layer wrapping another framework): its own vector-Jacobian product is exact
    for the gradient family, which takes it; every other analyzer refuses the model, naming the
    layer and why (``Op.refusal``).
``"recurrent"``
    A recurrent layer call (SimpleRNN, LSTM, GRU, ConvLSTM, RNN of cells; each direction of a
    Bidirectional): its cell is a small program of the kinds above (``Op.recurrent``), replayed
    step by step in one loop; backward, :class:`~pattern_keras.rules.RecurrentRule` runs the
    analyzer's own rules on the cell at every step.

A user's own layer joins one of these kinds with :func:`register_layer`.

The package, by what a layer is: :mod:`~pattern_keras.layers.core` (``Op``, ``LinearPart``, the
kinds), :mod:`~pattern_keras.layers.linear` (Dense, convolutions),
:mod:`~pattern_keras.layers.activations`, :mod:`~pattern_keras.layers.normalization`,
:mod:`~pattern_keras.layers.elementwise` (affine maps, sums, products, the identity at
inference), :mod:`~pattern_keras.layers.shape` (data movement),
:mod:`~pattern_keras.layers.reduction` (means, sums, maxima, adaptive pooling),
:mod:`~pattern_keras.layers.resampling`, :mod:`~pattern_keras.layers.contraction` (matmul,
dot, einsum), :mod:`~pattern_keras.layers.attention` (``dot_product_attention``, the hold
analysis), :mod:`~pattern_keras.layers.recurrent` (recurrent layers, their cells,
Bidirectional, TimeDistributed), :mod:`~pattern_keras.layers.refused` (classes refused by
name) and
:mod:`~pattern_keras.layers.registry` (which builder a layer class gets).
"""

from __future__ import annotations

from pattern_keras.layers.activations import GATING_ACTIVATIONS, OTHER_ACTIVATIONS
from pattern_keras.layers.core import KINDS, LinearPart, Op, shared_kernels
from pattern_keras.layers.elementwise import resolve_products
from pattern_keras.layers.registry import ops_for_node, register_layer, supported_layer_names

__all__ = [
    "KINDS",
    "GATING_ACTIVATIONS",
    "OTHER_ACTIVATIONS",
    "LinearPart",
    "Op",
    "register_layer",
    "ops_for_node",
    "resolve_products",
    "shared_kernels",
    "supported_layer_names",
]
