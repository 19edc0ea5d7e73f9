"""Sanity checks: does an explanation depend on the model's parameters, and on the class?

- :func:`randomization_test`: the model parameter randomization test (MPRT) of Adebayo et al.
  (NeurIPS 2018, "Sanity checks for saliency maps"): the layers' weights are re-initialized,
  from the logits down one after another (``"cascading"``) or one at a time
  (``"independent"``), and each explanation of the randomized model is compared with the
  trained model's by the measures of :mod:`pattern_keras.evaluation.similarity`. A method
  whose explanations stay alike explains something other than the model. With it, the two
  repairs of Hedström et al. (2023, "Sanity checks revisited"): sMPRT (the same comparison of
  explanations averaged over noisy copies of the input, which removes the noise that
  gradient-like maps share with a random model's) and eMPRT (the relative rise of the
  explanation's complexity, the entropy of its histogram, from the trained to the fully
  randomized model).
- :func:`random_logit_test` (Sixt et al., ICML 2020, "When explanations lie"): the explanation
  of the predicted class against that of a random other class. A class-sensitive method gives
  different maps.

The model is never changed: its weights are copied into one clone (``keras.models.
clone_model``), randomized there by assignment into the clone's variables, so every analyzer
is built once on the clone and traces once for all steps.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import keras
import numpy as np

from pattern_keras import _checks
from pattern_keras import graph as _graph
from pattern_keras.evaluation import similarity as _sim

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "MODES",
    "RandomizationResult",
    "randomization_test",
    "RandomLogitResult",
    "random_logit_test",
    "build_analyzer",
    "randomizable_layers",
]

#: How layers are randomized: from the logits down, each step adding one layer, or one at a
#: time with the others trained.
MODES = ("cascading", "independent")

#: An analyzer (rebuilt on the clone), a registry name, or a factory ``model -> analyzer``.
AnalyzerSpec = Union[str, Any, Callable[[Any], Any]]  # noqa: UP007

# Weights kept when a layer is re-initialized: BatchNormalization's moving statistics describe
# the data, not learned parameters (Adebayo et al. re-initialize the trainable variables).
_KEPT_WEIGHTS = ("moving_mean", "moving_variance")

# Warnings expected from randomized models (dead units, zero explanations): the result shows
# their consequence (NaN similarities), one line per step would drown the output.
_QUIET = (
    r".*explanation is zero everywhere.*",
    r".*Patterns undefined.*",
)


# --- results ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class RandomizationResult:
    """Outcome of :func:`randomization_test`; ``result[method][layer][measure]`` is a mean.

    Attributes
    ----------
    methods : tuple of str
        The methods, in the order given; a pattern analyzer appears as ``"name (patterns
        kept)"`` and, with ``refit_data``, ``"name (patterns re-fitted)"``.
    layers : tuple of str
        The randomization steps by layer key, from the output down. In ``"cascading"`` mode
        step ``k`` has layers ``0 .. k`` randomized; in ``"independent"`` mode only layer ``k``.
    measures : tuple of str
        The similarity measures (see :data:`pattern_keras.evaluation.similarity.MEASURES`).
    mode : str
        ``"cascading"`` or ``"independent"``.
    scores : np.ndarray, shape (methods, layers, measures, n)
        Similarity of each sample's explanation after each step to the trained model's.
    smooth_scores : np.ndarray or None, shape (methods, layers, measures, n)
        sMPRT: the same for the explanations averaged over noisy copies of the input; None
        when ``smooth_samples == 0``.
    complexity : np.ndarray, shape (methods, layers + 1, n)
        Entropy of each explanation's histogram (``histogram_entropy``), for the trained model
        (index 0) and after each step: eMPRT's complexity.
    agreement : np.ndarray, shape (layers,)
        Fraction of samples whose predicted class is still the explained class after each
        step: a check that the randomization changed the model.
    maps : np.ndarray, shape (methods, layers + 1, shown, ...)
        The 2-D maps (``explanation_maps``) of the first ``shown`` samples, trained model
        first, for :meth:`plot_cascade`.
    target : np.ndarray, shape (n,), int
        The explained output neuron of each sample (the same at every step).
    """

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    measures: tuple[str, ...]
    mode: str
    scores: np.ndarray
    smooth_scores: np.ndarray | None
    complexity: np.ndarray
    agreement: np.ndarray
    maps: np.ndarray
    target: np.ndarray

    def __getitem__(self, method: str) -> dict[str, dict[str, float]]:
        """``{layer: {measure: mean over samples}}`` of one method (NaNs left out)."""
        i = self._method_index(method)
        return {
            layer: {m: _nanmean(self.scores[i, k, j]) for j, m in enumerate(self.measures)}
            for k, layer in enumerate(self.layers)
        }

    def _method_index(self, method: str) -> int:
        if method not in self.methods:
            raise KeyError(f"No method {method!r}; the methods are {list(self.methods)}.")
        return self.methods.index(method)

    def curves(self, measure: str, smooth: bool = False) -> dict[str, np.ndarray]:
        """Mean similarity per step of every method by one measure.

        Parameters
        ----------
        measure : str
            One of :attr:`measures`.
        smooth : bool
            The sMPRT scores instead of the plain ones.

        Returns
        -------
        dict of str to np.ndarray
            ``{method: (layers,)}``, means over samples with NaNs left out.
        """
        if measure not in self.measures:
            raise KeyError(f"No measure {measure!r}; the measures are {list(self.measures)}.")
        scores = self.smooth_scores if smooth else self.scores
        if scores is None:
            raise ValueError("No sMPRT scores: run randomization_test with smooth_samples > 0.")
        j = self.measures.index(measure)
        return {
            method: np.array([_nanmean(v) for v in scores[i, :, j]])
            for i, method in enumerate(self.methods)
        }

    @property
    def emprt_per_sample(self) -> np.ndarray:
        """(methods, n): eMPRT, ``(H_last − H_0) / H_0``, the relative rise of each
        explanation's complexity from the trained model to the model after the last step
        (in ``"cascading"`` mode over all layers: the fully randomized model). NaN where
        ``H_0 = 0``."""
        first, last = self.complexity[:, 0], self.complexity[:, -1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(first > 0, (last - first) / first, np.nan)

    @property
    def emprt(self) -> dict[str, float]:
        """``{method: mean eMPRT}`` (see :attr:`emprt_per_sample`); higher means the
        explanation lost more of its structure when the model lost its parameters."""
        values = self.emprt_per_sample
        return {m: _nanmean(values[i]) for i, m in enumerate(self.methods)}

    def plot(self, measures: Sequence[str] | None = None, smooth: bool = False) -> Figure:
        """Similarity curves: one panel per measure, one line per method.

        Parameters
        ----------
        measures : sequence of str, optional
            Which of :attr:`measures` (default all).
        smooth : bool
            Draw the sMPRT scores.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure

        measures = list(self.measures if measures is None else measures)
        figure = Figure(figsize=(3.6 * len(measures) + 2.4, 3.6), layout="constrained")
        axes = figure.subplots(1, len(measures), squeeze=False)[0]
        ticks = ["trained", *self.layers]
        for ax, measure in zip(axes, measures):
            for method, curve in self.curves(measure, smooth=smooth).items():
                ax.plot(np.arange(len(ticks)), [1.0, *curve], marker=".", label=method)
            ax.set_xticks(np.arange(len(ticks)), ticks, rotation=60, ha="right", fontsize=7)
            ax.set_title(measure)
            ax.set_ylim(-1.05, 1.05)
            ax.axhline(0.0, color="0.7", linewidth=0.8)
        axes[0].set_ylabel("similarity to the trained model")
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
        what = "sMPRT" if smooth else "MPRT"
        figure.suptitle(f"{what}, {self.mode} randomization (from the output down)")
        return figure

    def plot_cascade(self, sample: int = 0) -> Figure:
        """The grid of maps of one sample: methods in rows, the trained model then each step
        in columns (Adebayo et al.'s figure). Each map is scaled to its own largest magnitude
        (red positive, blue negative).

        Parameters
        ----------
        sample : int
            Which of the kept samples (``0 .. shown − 1``).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure

        if not 0 <= sample < self.maps.shape[2]:
            raise IndexError(f"sample must be in [0, {self.maps.shape[2]}); received {sample}.")
        rows, columns = len(self.methods), len(self.layers) + 1
        figure = Figure(figsize=(1.1 * columns + 2.0, 1.1 * rows + 0.8), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False)
        for i, method in enumerate(self.methods):
            for k in range(columns):
                m = self.maps[i, k, sample]
                image = m if m.ndim == 2 else m.reshape(1, -1)
                peak = float(np.max(np.abs(image))) or 1.0
                ax = axes[i, k]
                ax.imshow(image, cmap="bwr", vmin=-peak, vmax=peak, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title("trained" if k == 0 else self.layers[k - 1], fontsize=7)
            axes[i, 0].set_ylabel(method, fontsize=7, rotation=0, ha="right", va="center")
        figure.suptitle(f"{self.mode} randomization, sample {sample}", fontsize=9)
        return figure


@dataclasses.dataclass(frozen=True, eq=False)
class RandomLogitResult:
    """Outcome of :func:`random_logit_test`; ``result[method][measure]`` is a mean.

    Attributes
    ----------
    methods : tuple of str
        The methods, in the order given.
    measures : tuple of str
        The similarity measures.
    scores : np.ndarray, shape (methods, measures, n)
        Similarity of the explanation of each sample's class to that of a random other class;
        lower means the method tells the classes apart.
    target : np.ndarray, shape (n,), int
        The explained class of each sample.
    other : np.ndarray, shape (n,), int
        The random other class of each sample (never ``target``).
    """

    methods: tuple[str, ...]
    measures: tuple[str, ...]
    scores: np.ndarray
    target: np.ndarray
    other: np.ndarray

    def __getitem__(self, method: str) -> dict[str, float]:
        """``{measure: mean over samples}`` of one method (NaNs left out)."""
        if method not in self.methods:
            raise KeyError(f"No method {method!r}; the methods are {list(self.methods)}.")
        i = self.methods.index(method)
        return {m: _nanmean(self.scores[i, j]) for j, m in enumerate(self.measures)}

    def plot(self) -> Figure:
        """Bars of the mean similarity per method, one group per measure.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure

        figure = Figure(figsize=(7.5, 3.6), layout="constrained")
        ax = figure.add_subplot()
        width = 0.8 / max(1, len(self.methods))
        for i, method in enumerate(self.methods):
            means = [self[method][m] for m in self.measures]
            ax.bar(np.arange(len(self.measures)) + i * width, means, width, label=method)
        ax.set_xticks(np.arange(len(self.measures)) + 0.4 - width / 2, self.measures)
        ax.set_ylabel("similarity: class vs random class")
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
        ax.set_title("random-logit test (lower: the method tells classes apart)")
        return figure


def _nanmean(values: np.ndarray) -> float:
    finite = np.asarray(values)[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


# --- analyzers on the clone ------------------------------------------------------------------


@dataclasses.dataclass
class _Method:
    label: str
    analyzer: Any
    refit: bool

    def explain(self, x: np.ndarray, target: np.ndarray, batch_size: int) -> np.ndarray:
        kwargs = {}
        if self.analyzer.needs_patterns and not self.refit:
            # The kept patterns describe the trained weights, by design of the test.
            kwargs["allow_stale_patterns"] = True
        result = self.analyzer.analyze(
            x, neuron_selection=target, batch_size=batch_size, verbose=0, **kwargs
        )
        return np.asarray(result, dtype=np.float64)


def build_analyzer(spec: AnalyzerSpec, model: Any) -> Any:
    """An analyzer like ``spec`` on ``model``, explaining the neuron given to ``analyze``.

    Parameters
    ----------
    spec : str, Analyzer or callable
        A registry name (``create_analyzer``); an analyzer instance, rebuilt with the same
        constructor arguments (read back from its attributes) and its patterns; or a factory
        ``model -> analyzer``.
    model : keras.Model
        The model to build it on.

    Returns
    -------
    Analyzer
        With ``neuron_selection_mode="index"``.

    Raises
    ------
    TypeError
        If ``spec`` is none of these, or an instance's constructor argument is not kept as an
        attribute (then pass a factory).
    """
    from pattern_keras.analyzers import Analyzer, create_analyzer

    if isinstance(spec, str):
        return create_analyzer(spec, model, neuron_selection_mode="index")
    if isinstance(spec, Analyzer):
        return _rebuild(spec, model)
    if callable(spec):
        analyzer = spec(model)
        if not isinstance(analyzer, Analyzer):
            raise TypeError(
                f"An analyzer factory must return a pattern_keras Analyzer; received "
                f"{type(analyzer).__name__}."
            )
        if analyzer.model is not model:
            raise ValueError(
                "An analyzer factory must build its analyzer on the model it is given."
            )
        analyzer.neuron_selection_mode = "index"  # set before its first (traced) call
        return analyzer
    raise TypeError(
        "analyzers must map labels to analyzers, registry names or factories model -> "
        f"analyzer; received {type(spec).__name__}."
    )


def _rebuild(analyzer: Any, model: Any) -> Any:
    cls = type(analyzer)
    kwargs: dict[str, Any] = {}
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, model
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "neuron_selection_mode":
            kwargs[p.name] = "index"
        elif p.name == "patterns":
            kwargs[p.name] = analyzer.patterns
        elif hasattr(analyzer, p.name) or hasattr(analyzer, "_" + p.name):
            attribute = p.name if hasattr(analyzer, p.name) else "_" + p.name
            value = getattr(analyzer, attribute)
            # Per-input settings (a baseline, input bounds) are kept as one entry per input.
            if isinstance(value, list) and len(value) == 1 and not analyzer._multi_input:
                value = value[0]
            kwargs[p.name] = value
        else:
            raise TypeError(
                f"Cannot rebuild {cls.__name__} on another model: its argument '{p.name}' is "
                f"not kept as an attribute. Pass a factory instead, e.g. "
                f"`lambda model: {cls.__name__}(model, ...)`."
            )
    return cls(model, **kwargs)


def _methods(
    analyzers: Mapping[str, AnalyzerSpec], model: Any, refit: bool, variants: bool
) -> list[_Method]:
    """The analyzers built on ``model``; with ``variants`` a pattern analyzer is labelled
    "(patterns kept)", and with ``refit`` it comes a second time, "(patterns re-fitted)"."""
    if not isinstance(analyzers, Mapping) or not analyzers:
        raise TypeError(
            "analyzers must be a non-empty mapping {label: analyzer, registry name or factory}."
        )
    methods = []
    for label, spec in analyzers.items():
        analyzer = build_analyzer(spec, model)
        if not analyzer.needs_patterns:
            methods.append(_Method(str(label), analyzer, refit=False))
            continue
        if analyzer.patterns is not None:
            suffix = " (patterns kept)" if variants else ""
            methods.append(_Method(f"{label}{suffix}", analyzer, refit=False))
        elif not refit:
            raise ValueError(
                f"'{label}' has no patterns: pass a fitted analyzer, or a factory that fits or "
                "loads its patterns"
                + (", or refit_data to fit them at every step." if variants else ".")
            )
        if refit:
            again = build_analyzer(spec, model)
            methods.append(_Method(f"{label} (patterns re-fitted)", again, refit=True))
    return methods


# --- randomizing a clone ---------------------------------------------------------------------


def _clone(model: Any) -> Any:
    try:
        clone = keras.models.clone_model(model)
    except Exception as err:  # Keras raises many types for models it cannot clone
        reason = " ".join(str(err).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise ValueError(
            f"The randomization test works on a copy of model '{model.name}', and "
            f"keras.models.clone_model could not copy it: {reason}"
        ) from None
    if len(clone.weights) != len(model.weights) or any(
        tuple(a.shape) != tuple(b.shape) for a, b in zip(clone.weights, model.weights)
    ):
        raise ValueError(
            f"keras.models.clone_model's copy of model '{model.name}' has other weights than "
            "the model: it cannot stand in for it."
        )
    clone.set_weights(model.get_weights())
    return clone


def _initializer(layer: Any, name: str) -> Any:
    """The layer's own initializer of its weight ``name`` (``kernel`` -> ``kernel_initializer``,
    ``depthwise_kernel`` -> ``depthwise_initializer``), or None."""
    for attribute in (f"{name}_initializer", f"{name.removesuffix('_kernel')}_initializer"):
        init = getattr(layer, attribute, None)
        if init is not None:
            return keras.initializers.get(init)
    return None


@dataclasses.dataclass
class _Layer:
    key: str
    variables: list[Any]
    randomized: list[np.ndarray]
    trained: list[np.ndarray]

    def randomize(self) -> None:
        for v, value in zip(self.variables, self.randomized):
            v.assign(value)

    def restore(self) -> None:
        for v, value in zip(self.variables, self.trained):
            v.assign(value)


def _seeded(init: Any, seed: int) -> Any:
    config = init.get_config()
    if "seed" in config:
        return type(init).from_config({**config, "seed": seed})
    return init  # a constant initializer: nothing to seed


def randomizable_layers(model: Any, seed: int = 0) -> list[_Layer]:
    """The layers with weights to re-initialize, from the output down, with their new values.

    Every weight a layer has an initializer attribute for is drawn anew from that initializer
    (seeded: ``seed`` and the layer's position; constant initializers give their constant),
    BatchNormalization's moving statistics excepted. A trainable weight without an initializer
    is refused.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model (nested models are walked through).
    seed : int
        Seeds the new values.

    Returns
    -------
    list
        One entry per layer with weights, output first; ``key`` is the layer key
        (``outer/inner`` inside nested models).

    Raises
    ------
    ValueError
        For a trainable weight the layer has no initializer for.
    """
    seen: dict[str, Any] = {}
    for node in _graph.trace_model(model).nodes:
        layer = node.layer
        if node.key not in seen and getattr(layer, "weights", None):
            seen[node.key] = layer
    streams = np.random.SeedSequence(seed).spawn(len(seen))
    layers = []
    for (key, layer), stream in zip(seen.items(), streams):
        variables, values = [], []
        weights = [v for v in layer.weights if v.name not in _KEPT_WEIGHTS]
        seeds = stream.generate_state(max(1, len(weights)))
        for v, s in zip(weights, seeds):
            init = _initializer(layer, v.name)
            if init is None:
                if v.trainable:
                    raise ValueError(
                        f"Layer '{key}' ({type(layer).__name__}) has a trainable weight "
                        f"'{v.name}' without an initializer ('{v.name}_initializer'): it cannot "
                        "be re-initialized. Leave the layer out with `layers=[...]`."
                    )
                continue  # non-trainable state (a counter, a statistic): kept
            value = _seeded(init, int(s) & 0x7FFFFFFF)(shape=tuple(v.shape), dtype=v.dtype)
            variables.append(v)
            values.append(np.array(keras.ops.convert_to_numpy(value)))
        if variables:
            trained = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
            layers.append(_Layer(key, variables, values, trained))
    return layers[::-1]


# --- the tests -------------------------------------------------------------------------------


def _targets(model: Any, x: np.ndarray, neuron_selection: Any, batch_size: int) -> np.ndarray:
    if neuron_selection is not None:
        target = np.broadcast_to(np.asarray(neuron_selection), (len(x),))
        if not np.issubdtype(target.dtype, np.integer):
            raise ValueError(
                f"neuron_selection must be an int or one int per sample; received "
                f"{neuron_selection!r}."
            )
        return target.astype(np.int64)
    return np.argmax(_outputs(model, x, batch_size), axis=1)


def _outputs(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    parts = [
        np.asarray(keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False)))
        for i in range(0, len(x), batch_size)
    ]
    out = np.concatenate(parts)
    return out.reshape(len(out), -1)


def _as_batch(x: Any) -> np.ndarray:
    x = np.asarray(keras.ops.convert_to_numpy(x))
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a batch (n, ...) with n >= 1; received shape {x.shape}.")
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _noisy_copies(x: np.ndarray, samples: int, noise: float, seed: int) -> np.ndarray:
    """sMPRT's inputs: ``samples − 1`` noisy copies then ``x`` itself, stacked on the batch
    axis, ``(samples · n, ...)``; noise ``N(0, σ²)`` with ``σ = noise · (max − min)`` per
    sample (Hedström et al., as Quantus)."""
    axes = tuple(range(1, x.ndim))
    sigma = noise * (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True))
    rng = np.random.default_rng(seed)
    copies = [x + sigma * rng.standard_normal(x.shape) for _ in range(samples - 1)]
    return np.concatenate([*copies, x]).astype(x.dtype)


class _Step:
    """Everything measured at one state of the clone."""

    def __init__(self, methods, x, target, noisy, smooth_samples, batch_size, refit):
        self.maps, self.smooth = [], []
        for method in methods:
            if method.refit:
                refit(method.analyzer)
            self.maps.append(_sim.explanation_maps(method.explain(x, target, batch_size)))
            if smooth_samples:
                tiled = np.tile(target, smooth_samples)
                e = method.explain(noisy, tiled, batch_size)
                e = e.reshape((smooth_samples, len(x)) + e.shape[1:]).mean(axis=0)
                self.smooth.append(_sim.explanation_maps(e))


def randomization_test(
    model: Any,
    analyzers: Mapping[str, AnalyzerSpec],
    x: Any,
    *,
    mode: str = "cascading",
    layers: Sequence[str] | None = None,
    measures: Sequence[str] | None = None,
    refit_data: Any = None,
    neuron_selection: Any = None,
    smooth_samples: int = 0,
    smooth_noise: float = 0.1,
    complexity_bins: int = 100,
    seed: int = 0,
    batch_size: int = 32,
    refit_batch_size: int = 32,
    shown: int = 4,
) -> RandomizationResult:
    """Model parameter randomization test (MPRT), with sMPRT and eMPRT.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model; it is cloned (``keras.models.clone_model``) and never
        changed.
    analyzers : mapping of str to analyzer, str or callable
        ``{label: spec}``: a fitted analyzer (rebuilt on the clone with the same arguments
        and, for PatternNet/PatternAttribution, the same patterns), a registry name, or a
        factory ``model -> analyzer``. Each is built once on the clone; it traces once.
        A pattern analyzer runs as ``"label (patterns kept)"`` (its patterns from the trained
        model, whatever the weights) and, with ``refit_data``, also as ``"label (patterns
        re-fitted)"`` (patterns fitted on ``refit_data`` for the clone's current weights, the
        trained ones included).
    x : array_like, shape (n, ...)
        The samples explained (one input).
    mode : {"cascading", "independent"}
        Randomize the layers from the output down, cumulatively, or one at a time.
    layers : sequence of str, optional
        The layer keys to randomize (default: every layer with weights), always in order from
        the output down.
    measures : sequence of str, optional
        The similarity measures (default: all four for images, the two Spearman correlations
        otherwise); see :func:`pattern_keras.evaluation.similarity.similarity`.
    refit_data : array_like, optional
        Data the re-fitted pattern variants fit on at every step.
    neuron_selection : int or array of int, optional
        The output neuron explained (one for all or one per sample); default each sample's
        largest output of the trained model. The same neuron at every step.
    smooth_samples : int
        sMPRT: average each explanation over this many inputs, ``smooth_samples − 1`` noisy
        copies and the sample itself (Hedström et al. use 50); 0 (default) skips sMPRT. The
        noise is drawn once, so every step sees the same copies.
    smooth_noise : float
        sMPRT's noise level relative to each sample's value range (default 0.1).
    complexity_bins : int
        Histogram bins of eMPRT's complexity measure (default 100).
    seed : int
        Seeds the new weights and sMPRT's noise.
    batch_size : int
        Samples per analyze call.
    refit_batch_size : int
        Batch size of the pattern re-fits.
    shown : int
        How many samples' maps to keep for :meth:`RandomizationResult.plot_cascade`.

    Returns
    -------
    RandomizationResult

    Raises
    ------
    ValueError
        For an unknown mode, measure or layer, a model that cannot be cloned, a layer weight
        without an initializer, ``refit_data`` without a pattern analyzer, or a pattern
        analyzer without patterns (and nothing to re-fit them on).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; received {mode!r}.")
    x = _as_batch(x)
    smooth_samples = int(smooth_samples)
    if smooth_samples < 0:
        raise ValueError(f"smooth_samples must be >= 0; received {smooth_samples}.")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    clone = _clone(model)
    steps = _select_layers(randomizable_layers(clone, seed), layers)
    methods = _methods(analyzers, clone, refit_data is not None, variants=True)
    if refit_data is not None and not any(m.refit for m in methods):
        raise ValueError("refit_data is only used by pattern analyzers; none was given.")
    target = _targets(clone, x, neuron_selection, batch_size)
    noisy = _noisy_copies(x, smooth_samples, smooth_noise, seed) if smooth_samples else None

    def refit(analyzer):
        analyzer.fit(refit_data, batch_size=refit_batch_size, verbose=0)

    def measure():
        with warnings.catch_warnings():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=message)
            return _Step(methods, x, target, noisy, smooth_samples, batch_size, refit)

    first = measure()
    measures = _sim.check_measures(measures, image=first.maps[0].ndim == 3)
    n_methods, n_steps = len(methods), len(steps)
    scores = np.empty((n_methods, n_steps, len(measures), len(x)))
    smooth_scores = np.empty_like(scores) if smooth_samples else None
    complexity = np.empty((n_methods, n_steps + 1, len(x)))
    agreement = np.empty(n_steps)
    shown = min(int(shown), len(x))
    maps = np.empty((n_methods, n_steps + 1, shown) + first.maps[0].shape[1:])
    _record(first, 0, complexity, maps, complexity_bins)
    previous = None
    for k, layer in enumerate(steps):
        if mode == "independent" and previous is not None:
            previous.restore()
        layer.randomize()
        previous = layer
        step = measure()
        _record(step, k + 1, complexity, maps, complexity_bins)
        for i in range(n_methods):
            plain = _sim.similarity(first.maps[i], step.maps[i], measures)
            scores[i, k] = [plain[m] for m in measures]
            if smooth_samples:
                smooth = _sim.similarity(first.smooth[i], step.smooth[i], measures)
                smooth_scores[i, k] = [smooth[m] for m in measures]
        agreement[k] = float(np.mean(np.argmax(_outputs(clone, x, batch_size), axis=1) == target))
    return RandomizationResult(
        methods=tuple(m.label for m in methods),
        layers=tuple(layer.key for layer in steps),
        measures=measures,
        mode=mode,
        scores=scores,
        smooth_scores=smooth_scores,
        complexity=complexity,
        agreement=agreement,
        maps=maps,
        target=target,
    )


def _select_layers(available: list[_Layer], layers: Sequence[str] | None) -> list[_Layer]:
    if not available:
        raise ValueError("The model has no layer with weights to randomize.")
    if layers is None:
        return available
    if isinstance(layers, str):
        layers = [layers]
    keys = [layer.key for layer in available]
    unknown = [k for k in layers if k not in keys]
    if unknown or not layers:
        raise ValueError(
            f"layers must name layers with weights; unknown: {unknown}; known (output first): "
            f"{keys}."
        )
    return [layer for layer in available if layer.key in set(layers)]


def _record(step: _Step, k: int, complexity, maps, bins: int) -> None:
    for i, m in enumerate(step.maps):
        complexity[i, k] = _sim.histogram_entropy(m, bins=bins)
        maps[i, k] = m[: maps.shape[2]]


def random_logit_test(
    model: Any,
    analyzers: Mapping[str, AnalyzerSpec],
    x: Any,
    *,
    measures: Sequence[str] | None = None,
    neuron_selection: Any = None,
    seed: int = 0,
    batch_size: int = 32,
) -> RandomLogitResult:
    """Random-logit test (Sixt et al., ICML 2020): the class's explanation against another's.

    Parameters
    ----------
    model : keras.Model
        The model (not changed); the analyzers are rebuilt on it to explain given neurons.
    analyzers : mapping of str to analyzer, str or callable
        As for :func:`randomization_test` (pattern analyzers with their own patterns).
    x : array_like, shape (n, ...)
        The samples.
    measures : sequence of str, optional
        Similarity measures (default: all four for images, the two Spearman correlations
        otherwise).
    neuron_selection : int or array of int, optional
        The explained class (default each sample's largest output).
    seed : int
        Seeds the choice of the other class: uniform over the classes but the explained one.
    batch_size : int
        Samples per analyze call.

    Returns
    -------
    RandomLogitResult

    Raises
    ------
    ValueError
        For a model with fewer than 2 outputs, or an unknown measure.
    """
    x = _as_batch(x)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    methods = _methods(analyzers, model, refit=False, variants=False)
    outputs = _outputs(model, x, batch_size)
    classes = outputs.shape[1]
    if classes < 2:
        raise ValueError("The random-logit test needs a model with at least 2 outputs.")
    target = (
        np.argmax(outputs, axis=1)
        if neuron_selection is None
        else _targets(model, x, neuron_selection, batch_size)
    )
    rng = np.random.default_rng(seed)
    other = (target + rng.integers(1, classes, size=len(x))) % classes
    scores = []
    resolved = None
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        for method in methods:
            a = _sim.explanation_maps(method.explain(x, target, batch_size))
            b = _sim.explanation_maps(method.explain(x, other, batch_size))
            resolved = _sim.check_measures(measures, image=a.ndim == 3)
            values = _sim.similarity(a, b, resolved)
            scores.append([values[m] for m in resolved])
    return RandomLogitResult(
        methods=tuple(m.label for m in methods),
        measures=resolved,
        scores=np.array(scores),
        target=target,
        other=other,
    )
