"""How good is a signal estimator? The measure ρ(S) of the PatternNet paper (eq. 1, figure 3).

For one linear neuron ``y = wᵀx`` and a signal estimator ``S``, the distractor estimate is
``d̂ = x − S(x)``. A good estimator leaves no information about ``y`` in ``d̂``::

    ρ(S) = 1 − max_v |corr(wᵀx, vᵀ(x − S(x)))|

Higher is better, ``ρ ∈ [0, 1]``. The maximizing ``v`` is the least-squares regression of ``y`` on
``d̂`` (with intercept), so ``max_v corr`` is the multiple correlation of ``y`` with ``d̂``. The
protocol is the paper's: patterns are fitted on the first half of the training data, ``v`` on the
second half, and the correlation is measured on held-out test data.

Everything is a second moment of ``(x, y)`` per layer, so ρ comes in closed form
(see :func:`signal_estimator_quality` for the details and the choices made).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

import pattern_keras.patterns.statistics as pattern_statistics
from pattern_keras import _checks, engine
from pattern_keras.layers import Op
from pattern_keras.layers.recurrent import cell_linear_ops, cell_values
from pattern_keras.patterns.computer import PatternComputer
from pattern_keras.patterns.statistics import PATTERN_TYPES, LayerStatistics, estimator

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ESTIMATORS",
    "QualityResult",
    "signal_estimator_quality",
    "plot_signal_estimator_quality",
]

#: The estimators :func:`signal_estimator_quality` knows: a random direction (the paper's
#: baseline) and every pattern type of :data:`pattern_keras.patterns.statistics.ESTIMATORS`,
#: from the data-free filter to the two-component estimator (the paper's order).
ESTIMATORS = ("random",) + tuple(reversed(PATTERN_TYPES))

# Images per patch-extraction call are chosen so that one call holds at most this many values.
_CHUNK_VALUES = 1 << 24


class QualityResult(dict):
    """``{layer key: {estimator: mean ρ}}``, layers in network order; more on attributes.

    A plain ``dict`` (so it prints, compares and serializes like one) with extra attributes.

    Attributes
    ----------
    per_neuron : dict
        ``{layer key: {estimator: np.ndarray}}``: ρ of every neuron, shaped like the layer's
        neurons (its kernel's output axes). NaN for a neuron whose ``y`` does not vary on the
        test data (ρ is undefined there); the means leave those out.
    estimators : tuple of str
        The estimators evaluated, in the order asked for.
    estimator_patterns : dict
        ``{layer key: {estimator: (a_pos, a_neg)}}``: the patterns each estimator used, float64
        arrays of shape ``(D, neurons)`` (``D`` the neuron's input size, flattened in the kernel's
        order). ``a_pos`` and ``a_neg`` are the same array for the one-regime estimators.
    n_samples : dict
        ``{layer key: (rows for v, rows for ρ)}``: how many input vectors (patches, for a
        convolution) the regression and the evaluation used.
    """

    def __init__(
        self,
        means: Mapping[str, Mapping[str, float]],
        per_neuron: Mapping[str, Mapping[str, np.ndarray]],
        estimators: Sequence[str],
        estimator_patterns: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
        n_samples: Mapping[str, tuple[int, int]],
    ) -> None:
        super().__init__({k: dict(v) for k, v in means.items()})
        self.per_neuron = {k: dict(v) for k, v in per_neuron.items()}
        self.estimators = tuple(estimators)
        self.estimator_patterns = {k: dict(v) for k, v in estimator_patterns.items()}
        self.n_samples = dict(n_samples)

    def __repr__(self) -> str:
        return f"QualityResult({dict.__repr__(self)})"


def signal_estimator_quality(
    model: Any,
    x_train: Any,
    x_test: Any,
    estimators: Sequence[str] = ESTIMATORS,
    batch_size: int = 256,
    seed: int = 0,
    *,
    layers: Sequence[str] | None = None,
    max_patches: int = 20000,
    max_dim: int = 4096,
    ridge: float = 1e-6,
) -> QualityResult:
    """ρ(S) of each signal estimator for every Dense/convolution layer (the paper's figure 3).

    Protocol (the paper's): the patterns are fitted with :class:`PatternComputer` on the first
    half of ``x_train``; the regression ``v`` of ``y`` on ``d̂`` on the second half; the
    correlation is measured on ``x_test``. ``y = wᵀx`` is every neuron's pre-activation without
    its bias, over all samples (and, for a convolution, output positions).

    Parameters
    ----------
    model : keras.Model
        The model (any model :class:`~pattern_keras.engine.Program` accepts). Inference-mode
        BatchNormalization is folded into the preceding layer, as for the patterns.
    x_train : array or list of arrays
        Training inputs (a list with one array per model input for several inputs); at least
        4 samples. The first half fits the patterns, the second the regression.
    x_test : array or list of arrays
        Held-out inputs on which ρ is measured.
    estimators : sequence of str
        Any of ``"random"`` (a random direction ``u`` per neuron with ``wᵀu = 1``, seeded),
        ``"filter"`` (``w / wᵀw``, the estimator behind DeConvNet and Guided BackProp),
        ``"linear"`` (``a = cov[x, y] / σ²_y``) and ``"relu"`` (the two-component estimator).
    batch_size : int
        Samples per forward pass.
    seed : int
        Seeds the random directions and the choice of patches.
    layers : sequence of str, optional
        Evaluate only these layer (pattern) keys; default every Dense/convolution layer, in
        network order.
    max_patches : int
        At most about this many input vectors per layer and split enter the moments. A Dense
        layer has one per sample; a convolution one receptive-field patch per sample and output
        position, of which a uniformly random subset is kept (drawn per batch, in proportion to
        the batch's size) when there are more. Keep it well above ``D``: the regression has
        ``D`` coefficients.
    max_dim : int
        Refuse layers whose neurons have more than ``max_dim`` inputs ``D`` (the closed form holds
        ``D × D`` float64 matrices). Raise it, or leave the layer out with ``layers``.
    ridge : float
        Tikhonov regularization (> 0) of the regression, relative to the mean variance of the
        layer's inputs (``λ = ridge · trace(Σ_xx) / D``), for inputs that never vary (image
        corners, dead units, padding) and for the direction ``w`` that ``d̂`` never has
        (``wᵀd̂ = 0`` for every estimator here). Far below the default (about ``1e-10`` and
        under) float64 no longer resolves the regularized directions and the closed form loses
        accuracy (it still returns rather than raising).

    Returns
    -------
    QualityResult
        A dict ``{layer key: {estimator: mean ρ}}`` in network order, with ``per_neuron``
        (``{layer: {estimator: array of ρ per neuron}}``), ``estimator_patterns`` and
        ``n_samples`` as attributes (see :class:`QualityResult`).

    Raises
    ------
    ValueError
        For unknown estimators, too few samples, inputs that do not match the model, a layer
        named in ``layers`` that is not evaluated, or a layer with ``D > max_dim``.

    Notes
    -----
    *Estimators.* ``"linear"`` and ``"relu"`` come from :class:`PatternComputer` fits on the first
    half (``pattern_type="linear"`` and ``"relu"``); ``"filter"`` is the library's filter
    estimator (no data needed). The two-component estimator is evaluated with both regimes,
    ``S(x) = a₊·y`` where the layer's real gate ``z = wᵀx + b`` is ``> 0`` and ``a₋·y`` elsewhere
    (the split the patterns are fitted with). The ``"relu"`` fit keeps only ``a₊`` for a layer that
    feeds a ReLU, so ``a₋`` is derived from the ``"linear"`` fit's sums (all samples) minus the
    ``"relu"`` fit's (positive regime), with the library's own estimator formula. Every pattern
    is rescaled in float64 so that ``wᵀa = 1`` exactly (it is 1 up to float32 rounding): a
    rounding error ``δ`` would leave ``δ·y`` in ``d̂``, an exact copy of ``y`` that an
    unregularized regression finds. A neuron whose pattern is 0 (no variance in its regime)
    keeps ``d̂ = x`` there, so ρ is low: the estimator failed.

    *Closed form.* ``d̂ = x − a₊y₊ − a₋y₋`` with ``y₊ = y·[z > 0]``, ``y₋ = y − y₊`` (one regime:
    ``a₊ = a₋``). So ``cov(d̂) = Σ_xx + U S Uᵀ`` with ``U = [a₊, a₋, cov(x, y₊), cov(x, y₋)]`` and a
    fixed 4×4 ``S`` made of the variances of ``y₊``, ``y₋``. The per-layer ``Σ_xx`` (``D × D``) is
    shared by all neurons: one eigendecomposition per layer, then a Woodbury update per neuron
    gives ``v = (cov(d̂) + λI)⁻¹ cov(d̂, y)`` in ``O(D²)``. Where a neuron's 4×4 Woodbury system
    is numerically singular (a pattern made huge by a neuron that hardly varies, or a ridge too
    small to register), its minimum-norm least-squares solution is used instead; a neuron whose
    system overflows gets ``ρ = NaN``. On the test split the same moments give
    ``corr(y, vᵀd̂)``. ``y`` is recomputed in float64 as ``wᵀx`` from the gathered input vectors
    (it equals the forward pass's pre-activation minus the bias up to float32 rounding); the
    gate comes from the forward pass. Moments are accumulated in float64 around the first
    batch's means.

    *Patches.* A convolution's receptive-field patches are extracted by running the layer's own
    linear map with an identity kernel (``D`` output channels, one per kernel entry), so they
    follow the layer's padding, strides, dilation and flattening order exactly. Supported: Dense
    and the ordinary (ungrouped) convolutions, including a separable convolution's pointwise
    kernel, and EinsumDense (attention's value and output projections: a neuron per head and
    unit, ``(heads, units)``, each token one input vector), the candidate kernels of recurrent
    cells; layers whose neurons do not share one input vector (depthwise and grouped
    convolutions, transposed convolutions, an einsum whose neuron axes index its input) are
    skipped with a warning. The query and key projections of attention are left out without
    one, as the patterns leave them out: the held attention weights send them no signal.

    *Undefined ρ.* A neuron whose ``y`` has (numerically) zero variance on the test data gets
    ``ρ = NaN`` and is left out of the layer's mean (``NaN`` if all are). A ``d̂`` from which the
    regression predicts nothing (``vᵀd̂`` constant) gives ``corr = 0``, ``ρ = 1``.

    Examples
    --------
    >>> result = signal_estimator_quality(model, x_train, x_test)
    >>> result["dense"]["linear"], result.per_neuron["dense"]["linear"].shape
    (0.93..., (16,))
    >>> fig = plot_signal_estimator_quality(result)
    """
    estimators = _check_estimators(estimators)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    max_patches = _checks.positive_int(max_patches, "max_patches")
    max_dim = _checks.positive_int(max_dim, "max_dim")
    if isinstance(ridge, bool) or not (isinstance(ridge, numbers.Real) and ridge > 0):
        raise ValueError(f"ridge must be a number > 0; received {ridge!r}.")

    program = engine.Program(model, fold_batch_norm=True)
    train = _checks.model_inputs(x_train, program.input_specs, "x_train", as_numpy=True)
    test = _checks.model_inputs(x_test, program.input_specs, "x_test", as_numpy=True)
    n_train = len(train[0])
    if n_train < 4:
        raise ValueError(f"x_train needs at least 4 samples (two halves of 2); got {n_train}.")
    if len(test[0]) < 2:
        raise ValueError(f"x_test needs at least 2 samples; got {len(test[0])}.")
    half = n_train // 2
    fit_part = [a[:half] for a in train]
    reg_part = [a[half:] for a in train]

    plans = _layer_plans(program, layers, max_dim)
    seeds = np.random.SeedSequence(seed).spawn(3)
    patterns = _estimator_patterns(
        model, program, plans, fit_part, estimators, batch_size, np.random.default_rng(seeds[0])
    )
    forward = _compiled_forward(program, plans)
    reg = _gather_moments(
        forward, plans, reg_part, batch_size, max_patches, np.random.default_rng(seeds[1])
    )
    tst = _gather_moments(
        forward, plans, test, batch_size, max_patches, np.random.default_rng(seeds[2])
    )

    means: dict[str, dict[str, float]] = {}
    per_neuron: dict[str, dict[str, np.ndarray]] = {}
    for key, plan in plans.items():
        means[key], per_neuron[key] = {}, {}
        # Σ_xx and its decomposition are the layer's, shared by every estimator.
        reg_cov, test_cov = reg[key].covariances(), tst[key].covariances()
        inv = _ridge_inverse(reg_cov["xx"], ridge)
        for name in estimators:
            a_pos, a_neg = patterns[key][name]
            rho = _rho(reg_cov, test_cov, inv, plan.w, a_pos, a_neg)
            per_neuron[key][name] = rho.reshape(plan.neuron_shape)
            means[key][name] = float(np.nanmean(rho)) if np.any(np.isfinite(rho)) else math.nan
    n_samples = {key: (reg[key].n, tst[key].n) for key in plans}
    return QualityResult(means, per_neuron, estimators, patterns, n_samples)


def plot_signal_estimator_quality(
    result: Mapping[str, Mapping[str, float]],
    ax: Axes | None = None,
    title: str | None = "Signal estimator quality ρ(S) per layer (higher is better)",
) -> Figure:
    """Draw ρ(S) as grouped bars: one group per layer (network order), one bar per estimator.

    The paper's figure 3. Layers are categories, so they get bars, not a line joining them. A
    note under the axes says what ρ(S) is: ``1 − max_v |corr(wᵀx, vᵀ(x − S(x)))|``, 1 when
    the distractor ``x − S(x)`` left by the estimator ``S`` holds no trace of the output, 0
    when some projection of it predicts the output perfectly.

    Parameters
    ----------
    result : QualityResult or mapping
        ``{layer: {estimator: mean ρ}}``, e.g. from :func:`signal_estimator_quality`.
    ax : matplotlib.axes.Axes, optional
        Where to draw; by default a new ``matplotlib.figure.Figure`` with one axes (no pyplot
        state, nothing displayed).
    title : str or None, optional
        Axes title (default: "Signal estimator quality ρ(S) per layer (higher is better)");
        ``None`` for none.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding ``ax``; save it with ``fig.savefig(path)``.
    """
    if not result:
        raise ValueError("result is empty: pass {layer: {estimator: rho}}.")
    from matplotlib.figure import Figure  # imported here: plotting is optional

    layer_keys = list(result)
    names = list(getattr(result, "estimators", ()))
    for per_layer in result.values():
        names += [n for n in per_layer if n not in names]
    own_figure = ax is None
    if own_figure:
        figure = Figure(figsize=(max(6.5, 1.0 * len(layer_keys) + 3.5), 4.4), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    positions = np.arange(len(layer_keys), dtype=float)
    width = 0.8 / max(1, len(names))
    colors = {"random": "0.6", "filter": "tab:orange", "linear": "tab:blue", "relu": "tab:green"}
    for i, name in enumerate(names):
        values = [result[k].get(name, math.nan) for k in layer_keys]
        bars = ax.bar(
            positions + (i - (len(names) - 1) / 2) * width,
            values,
            width,
            label=_LABELS.get(name, name),
            color=colors.get(name),
        )
        # The value on every bar: a ρ of 0 has no bar to see.
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(positions)
    ax.set_xticklabels(
        layer_keys,
        rotation=45 if len(layer_keys) > 4 else 0,
        ha="right" if len(layer_keys) > 4 else "center",
    )
    ax.set_xlabel("layer (network order)")
    ax.set_ylabel("ρ(S)")
    ax.set_ylim(0.0, 1.1)
    if title is not None:
        ax.set_title(title)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        title="signal estimator S",
        title_fontsize="small",
    )
    if own_figure:
        figure.text(0.01, 0.0, _RHO_NOTE, fontsize="small", ha="left", va="bottom", wrap=True)
        figure.get_layout_engine().set(rect=(0, 0.14, 1, 0.86))
    return figure


#: What ρ(S) measures, under the figure.
_RHO_NOTE = (
    "ρ(S) = 1 − max_v |corr(wᵀx, vᵀ(x − S(x)))| on held-out data: how little of a "
    "neuron's output y = wᵀx\ncan still be predicted from the distractor x − S(x) that "
    "the signal estimator S leaves.\n1: the estimator took all of the signal; 0: the "
    "signal is still in the distractor. Mean over each layer's neurons."
)


_LABELS = {
    "random": "random (S_rand)",
    "filter": "filter (S_w)",
    "linear": "linear (S_a)",
    "relu": "two-component (S_a±)",
}


# --- layers ----------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Plan:
    key: str
    ops: list[Op]
    w: np.ndarray  # (D, N) float64, the kernel flattened in its own order
    kernel_shape: tuple[int, ...]
    neuron_shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        return self.w.shape[0]


def _unsupported_reason(op: Op) -> str | None:
    part = op.linear
    rank = len(part.kernel_shape)
    outs = tuple(a % rank for a in part.out_axes)
    # The kernel's input axes must come first (``w`` is the kernel reshaped to (D, neurons));
    # several neuron axes only for an EinsumDense (a depthwise kernel has two as well).
    trailing = outs == tuple(range(rank - len(outs), rank))
    if not trailing or (len(outs) > 1 and part.neuron_axes is None):
        return "its neurons do not share one input vector (a depthwise or transposed convolution)"
    if _neurons_index_the_input(op.layer):
        return (
            "its neurons do not share one input vector (an einsum whose neuron axes also "
            "index its input)"
        )
    if int(getattr(op.layer, "groups", 1) or 1) > 1:
        return "it is a grouped convolution (each neuron sees only its group's channels)"
    return None


def _neurons_index_the_input(layer: Any) -> bool:
    """Whether an EinsumDense's neuron letters also index its input (``"abc,cbd->abd"``: neuron
    ``(b, d)`` reads only token ``b``), so that its neurons read different input vectors."""
    equation = getattr(layer, "equation", None)
    if not isinstance(equation, str):
        return False
    operands, out_spec = equation.replace(" ", "").split("->")
    x_spec, k_spec = operands.split(",")
    return any(c in x_spec and c in out_spec for c in k_spec)


def _layer_plans(
    program: engine.Program, layers: Sequence[str] | None, max_dim: int
) -> dict[str, _Plan]:
    # As for the patterns: the query and key projections of attention, which the held
    # attention weights send no signal, have no pattern to evaluate.
    reached = [op for op in program.ops if program.reached_when_held(op)]
    grouped: dict[str, list[Op]] = {}
    for op in cell_linear_ops(reached):  # a recurrent cell's candidate kernels too
        grouped.setdefault(op.pattern_key, []).append(op)
    unreached = {op.pattern_key for op in cell_linear_ops(program.ops)} - set(grouped)
    if layers is not None:
        if isinstance(layers, str):
            layers = [layers]
        held = [k for k in layers if k in unreached]
        if held:
            raise ValueError(
                f"Layer(s) {held} cannot be evaluated: the held attention weights send them no "
                "signal (the query and key projections), so they have no pattern."
            )
        unknown = [k for k in layers if k not in grouped]
        if unknown:
            raise ValueError(
                f"layers names {unknown}, which are not Dense/convolution layers of "
                f"the model. Layers: {list(grouped)}."
            )
    plans: dict[str, _Plan] = {}
    for key, ops in grouped.items():
        if layers is not None and key not in layers:
            continue
        reason = _unsupported_reason(ops[0])
        if reason is not None:
            if layers is not None:
                raise ValueError(f"Layer '{key}' cannot be evaluated: {reason}.")
            warnings.warn(f"signal_estimator_quality skips layer '{key}': {reason}.", stacklevel=3)
            continue
        part = ops[0].linear
        dim = int(np.prod([part.kernel_shape[a] for a in part.input_axes]))
        if dim > max_dim:
            gib = 3 * dim * dim * 8 / 2**30
            raise ValueError(
                f"Layer '{key}' has D = {dim} inputs per neuron, above max_dim = {max_dim}: the "
                f"closed form holds D × D float64 matrices (about {gib:.1f} GiB here). Raise "
                f"max_dim, or leave the layer out with layers=[...] (layers: {list(grouped)})."
            )
        kernel = part.kernel.numpy().astype(np.float64)
        plans[key] = _Plan(
            key=key,
            ops=ops,
            w=kernel.reshape(dim, -1),
            kernel_shape=tuple(part.kernel_shape),
            neuron_shape=tuple(part.neuron_shape),
        )
    if not plans:
        raise ValueError(
            f"Model '{program.model.name}' has no Dense/convolution layer that "
            "signal_estimator_quality can evaluate."
        )
    return plans


# --- patterns --------------------------------------------------------------------------------


def _estimator_patterns(model, program, plans, fit_part, estimators, batch_size, rng):
    """{key: {estimator: (a_pos, a_neg)}}, each (D, N) float64 with wᵀa = 1 where defined.

    One fit gathers the sums of every data-driven estimator: those of ``"relu"`` with both
    regimes kept for every layer, which are all of ``SUMS``; each estimator's pattern is then
    its own derivation from the table, applied to these sums.
    """
    data = fit_part[0] if len(fit_part) == 1 else list(fit_part)
    stats = None
    if any(name not in ("random", "filter") for name in estimators):
        stats = PatternComputer(model, pattern_type="relu", both_regimes=True).compute_statistics(
            data, batch_size=batch_size, verbose=0
        )
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key, plan in plans.items():
        w = plan.w
        out[key] = {}
        for name in estimators:
            if name == "random":
                a = _random_directions(w, rng)
                pair = (a, a)
            else:
                layer = _filter_statistics(plan) if stats is None else stats[key]
                a_pos, a_neg, _ = estimator(name).derive(
                    dataclasses.replace(layer, pattern_type=name)
                )
                pair = (_flat(a_pos, plan), _flat(a_pos if a_neg is None else a_neg, plan))
            out[key][name] = tuple(_normalized(a, w) for a in pair)
    return out


def _flat(pattern: np.ndarray, plan: _Plan) -> np.ndarray:
    return np.asarray(pattern, np.float64).reshape(plan.dim, -1)


def _filter_statistics(plan: _Plan) -> LayerStatistics:
    """The library's filter estimator, which needs no data: ``w / wᵀw``."""
    n = plan.w.shape[1]
    return LayerStatistics(
        pattern_type="filter",
        rectified=False,
        kernel=plan.w.reshape(plan.kernel_shape),
        out_axes=(-1,),
        shift_x=0.0,
        shift_y=np.zeros(n),
        sums={},
    )


def _random_directions(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per neuron an isotropic random direction ``r``, scaled to ``wᵀu = 1`` (redrawn in the
    unlikely case it is almost orthogonal to ``w``, where the scaling would blow up)."""
    dim, n = w.shape
    out = np.zeros_like(w)
    for j in range(n):
        wj = w[:, j]
        norm = np.linalg.norm(wj)
        if norm == 0:
            continue
        for _ in range(100):
            r = rng.standard_normal(dim)
            dot = wj @ r
            if abs(dot) > 1e-3 * norm * np.linalg.norm(r) / math.sqrt(dim):
                break
        out[:, j] = r / dot
    return out


def _normalized(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rescale each pattern so that ``wᵀa = 1`` in float64 (it is 1 up to float32 rounding)."""
    dots = np.sum(w * a, axis=0)
    close = np.abs(dots - 1.0) < 1e-3
    return np.where(close, a / np.where(close, dots, 1.0), a)


# --- moments ---------------------------------------------------------------------------------


class _Moments:
    """Float64 sums of one split's ``x`` (D), ``y₊`` and ``y₋`` (N), around fixed shifts."""

    def __init__(self, dim: int, n_neurons: int) -> None:
        self.n = 0
        self.shift_x = self.shift_p = self.shift_m = None
        self.sx = np.zeros(dim)
        self.sxx = np.zeros((dim, dim))
        self.sp = np.zeros(n_neurons)
        self.sm = np.zeros(n_neurons)
        self.sxp = np.zeros((dim, n_neurons))
        self.sxm = np.zeros((dim, n_neurons))
        self.spp = np.zeros(n_neurons)
        self.smm = np.zeros(n_neurons)
        self.spm = np.zeros(n_neurons)

    def add(self, x: np.ndarray, y_pos: np.ndarray, y_neg: np.ndarray) -> None:
        if not len(x):
            return
        if self.shift_x is None:
            self.shift_x, self.shift_p, self.shift_m = x.mean(0), y_pos.mean(0), y_neg.mean(0)
        x = x - self.shift_x
        p = y_pos - self.shift_p
        m = y_neg - self.shift_m
        self.n += len(x)
        self.sx += x.sum(0)
        self.sxx += x.T @ x
        self.sp += p.sum(0)
        self.sm += m.sum(0)
        self.sxp += x.T @ p
        self.sxm += x.T @ m
        self.spp += np.einsum("ij,ij->j", p, p)
        self.smm += np.einsum("ij,ij->j", m, m)
        self.spm += np.einsum("ij,ij->j", p, m)

    def covariances(self) -> dict[str, np.ndarray]:
        """Population covariances (shift-invariant, so the shifts need no undoing)."""
        n = self.n
        if n == 0:
            raise ValueError("No samples reached the moments.")
        mx, mp, mm = self.sx / n, self.sp / n, self.sm / n
        return {
            "xx": self.sxx / n - np.outer(mx, mx),
            "xp": self.sxp / n - np.outer(mx, mp),
            "xm": self.sxm / n - np.outer(mx, mm),
            "pp": self.spp / n - mp * mp,
            "mm": self.smm / n - mm * mm,
            "pm": self.spm / n - mp * mm,
        }


def _compiled_forward(program: engine.Program, plans: Mapping[str, _Plan]):
    signature = [
        tf.TensorSpec((None,) + tuple(shape[1:]), dtype) for shape, dtype in program.input_specs
    ]

    def run(*inputs):
        values = cell_values(program.ops, engine.forward(program, list(inputs)))
        return {
            key: [(values[op.inputs[0]], values[op.outputs[0]]) for op in plan.ops]
            for key, plan in plans.items()
        }

    return tf.function(run, input_signature=signature)


def _neurons_last(t: np.ndarray, part: Any) -> np.ndarray:
    """An output-shaped array with the neuron axes last, in kernel order (so that it reshapes
    to (samples·positions, neurons) as the kernel reshapes to (D, neurons))."""
    if part.neuron_axes is None:
        return np.moveaxis(t, part.channel_axis % t.ndim, -1)
    axes = [a % t.ndim for a in part.neuron_axes]
    return np.moveaxis(t, axes, list(range(t.ndim - len(axes), t.ndim)))


def _patches(op: Op, x: tf.Tensor, dim: int, rows_per_image: int) -> np.ndarray:
    """Every input vector of the layer for a batch, shape (batch·positions, D), float32."""
    part = op.linear
    if len(part.kernel_shape) == 2 and getattr(op.layer, "equation", None) is None:
        return np.reshape(x.numpy(), (-1, dim))  # Dense: the input vectors themselves
    # The layer's own map with an identity kernel: D neurons on the first neuron axis, one on
    # any other (an EinsumDense's heads), each copying one entry of the input vector.
    n_out = len(part.out_axes)
    shape = tuple(part.kernel_shape[:-n_out]) + (dim,) + (1,) * (n_out - 1)
    eye = tf.reshape(tf.eye(dim, dtype=x.dtype), shape)
    per_call = max(1, _CHUNK_VALUES // max(1, rows_per_image * dim))
    chunks = []
    for start in range(0, int(x.shape[0]), per_call):
        out = part.raw_apply(x[start : start + per_call], eye)
        chunks.append(_neurons_last(np.asarray(out), part).reshape(-1, dim))
    return np.concatenate(chunks)


def _gather_moments(
    forward,
    plans: Mapping[str, _Plan],
    inputs: list[np.ndarray],
    batch_size: int,
    max_patches: int,
    rng: np.random.Generator,
):
    moments = {key: _Moments(plan.dim, plan.w.shape[1]) for key, plan in plans.items()}
    n = len(inputs[0])
    for start in range(0, n, batch_size):
        batch = [tf.constant(a[start : start + batch_size]) for a in inputs]
        b = int(batch[0].shape[0])
        outputs = forward(*batch)
        for key, plan in plans.items():
            for op, (x, z) in zip(plan.ops, outputs[key]):
                part = op.linear
                z = _neurons_last(z.numpy(), part).reshape(-1, plan.w.shape[1])
                rows_per_image = len(z) // b
                total = n * rows_per_image * len(plan.ops)
                take = (
                    len(z)
                    if total <= max_patches
                    else min(len(z), math.ceil(max_patches * len(z) / total))
                )
                rows = (
                    np.arange(len(z))
                    if take == len(z)
                    else np.sort(rng.choice(len(z), size=take, replace=False))
                )
                patches = _patches(op, x, plan.dim, rows_per_image)[rows].astype(np.float64)
                y = patches @ plan.w
                gate = z[rows] > 0
                y_pos = np.where(gate, y, 0.0)
                moments[key].add(patches, y_pos, y - y_pos)
    return moments


# --- ρ ---------------------------------------------------------------------------------------


def _low_rank(cov: Mapping[str, np.ndarray], a_pos: np.ndarray, a_neg: np.ndarray):
    """``U`` (N, D, 4) and ``S`` (N, 4, 4) with ``cov(d̂) = Σ_xx + U S Uᵀ`` per neuron, and
    ``cov(d̂, y)`` (N, D), for ``d̂ = x − a₊y₊ − a₋y₋``."""
    n_neurons = a_pos.shape[1]
    u = np.stack([a_pos.T, a_neg.T, cov["xp"].T, cov["xm"].T], axis=-1)
    s = np.zeros((n_neurons, 4, 4))
    s[:, 0, 0] = cov["pp"]
    s[:, 1, 1] = cov["mm"]
    s[:, 0, 1] = s[:, 1, 0] = cov["pm"]
    s[:, 0, 2] = s[:, 2, 0] = -1.0
    s[:, 1, 3] = s[:, 3, 1] = -1.0
    cov_py = cov["pp"] + cov["pm"]  # cov(y₊, y)
    cov_my = cov["mm"] + cov["pm"]  # cov(y₋, y)
    dy = (cov["xp"] + cov["xm"] - a_pos * cov_py - a_neg * cov_my).T
    return u, s, dy


def _ridge_inverse(cov_xx: np.ndarray, ridge: float) -> np.ndarray:
    """``(Σ_xx + λI)⁻¹`` with ``λ = ridge · trace(Σ_xx) / D``, from one eigendecomposition.

    Computed once per layer: it is the same for every estimator and neuron."""
    dim = cov_xx.shape[0]
    evals, evecs = np.linalg.eigh(cov_xx)
    evals = np.clip(evals, 0.0, None)
    lam = ridge * max(float(evals.sum()) / dim, np.finfo(float).tiny)
    return (evecs / (evals + lam)) @ evecs.T


def _solve_small(inner: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``inner⁻¹ rhs`` per neuron (``inner`` (N, 4, 4), ``rhs`` (N, 4)).

    ``inner`` is singular in exact arithmetic only if ``cov(d̂) + λI`` is, which it is not. In
    float64 it can be: the update must cancel all of ``Σ_xx``'s variance along ``w`` down to
    ``λ``, which fails when ``λ`` is below rounding (a tiny ``ridge``) or when a neuron that hardly
    varies has a huge pattern (the float32 fit's noise on inputs that never vary, amplified by
    ``1/λ``). Those neurons get the minimum-norm least-squares solution instead of an error
    (``NaN`` if the system is not even finite); every other neuron is solved exactly as by one
    batched ``np.linalg.solve``."""
    try:
        return np.linalg.solve(inner, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        pass
    out = np.full_like(rhs, np.nan)  # NaN (ρ undefined) where even that fails: non-finite input
    for j in range(len(inner)):
        try:
            out[j] = np.linalg.solve(inner[j], rhs[j])
        except np.linalg.LinAlgError:
            if np.all(np.isfinite(inner[j])) and np.all(np.isfinite(rhs[j])):
                out[j] = np.linalg.lstsq(inner[j], rhs[j], rcond=None)[0]
    return out


def _rho(
    c: Mapping[str, np.ndarray],
    t: Mapping[str, np.ndarray],
    inv: np.ndarray,
    w: np.ndarray,
    a_pos: np.ndarray,
    a_neg: np.ndarray,
) -> np.ndarray:
    """ρ per neuron: ``v`` from the regression split's covariances ``c`` (``inv`` is its
    :func:`_ridge_inverse`), the correlation on the test split's ``t``."""
    u, s, dy = _low_rank(c, a_pos, a_neg)
    # (Σ_xx + λI)⁻¹ once per layer (inv), then Woodbury per neuron:
    # (A + U S Uᵀ)⁻¹ = A⁻¹ − A⁻¹U (I + S UᵀA⁻¹U)⁻¹ S UᵀA⁻¹ (needs no inverse of S).
    b = dy @ inv  # (N, D): A⁻¹ cov(d̂, y), A symmetric
    inv_u = np.einsum("de,nek->ndk", inv, u)
    k = np.einsum("ndi,ndj->nij", u, inv_u)
    inner = np.eye(4) + s @ k
    rhs = np.einsum("nij,nj->ni", s, np.einsum("ndk,nd->nk", u, b))
    v = b - np.einsum("ndk,nk->nd", inv_u, _solve_small(inner, rhs))

    u_t, s_t, dy_t = _low_rank(t, a_pos, a_neg)
    cov_yd = np.einsum("nd,nd->n", v, dy_t)
    uv = np.einsum("ndk,nd->nk", u_t, v)
    var_d = np.einsum("nd,de,ne->n", v, t["xx"], v) + np.einsum("ni,nij,nj->n", uv, s_t, uv)
    var_y = t["pp"] + t["mm"] + 2 * t["pm"]
    scale_y = np.sum(w * w, axis=0) * max(float(np.trace(t["xx"])), np.finfo(float).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(var_d > 0, cov_yd / np.sqrt(np.maximum(var_y, 0) * var_d), 0.0)
    corr = np.clip(np.abs(np.nan_to_num(corr)), 0.0, 1.0)
    # A regression that overflowed says nothing (and must not read as corr = 0, ρ = 1).
    defined = (var_y > 1e-12 * scale_y) & np.all(np.isfinite(v), axis=1)
    return np.where(defined, 1.0 - corr, np.nan)


# --- validation ------------------------------------------------------------------------------


def _check_estimators(estimators: Any) -> tuple[str, ...]:
    if isinstance(estimators, str):
        estimators = (estimators,)
    estimators = tuple(estimators)
    known = ("random", *pattern_statistics.ESTIMATORS)  # the table as it is now
    unknown = [e for e in estimators if e not in known]
    if unknown or not estimators:
        raise ValueError(
            f"estimators must be a non-empty selection of {known}; received {estimators!r}."
        )
    if len(set(estimators)) != len(estimators):
        raise ValueError(f"estimators lists one twice: {estimators!r}.")
    return estimators
