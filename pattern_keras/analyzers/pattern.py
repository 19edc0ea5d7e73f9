"""PatternNet and PatternAttribution (Kindermans et al., ICLR 2018).

Both are one backward pass on the engine with the linear layers' kernels replaced: by the
patterns ``A`` (PatternNet: the estimated signal) or by ``W ⊙ A`` (PatternAttribution: its
contribution to the output). ReLUs and max pooling gate as the gradient does. A layer that keeps
both regimes of the two-component estimator (one not followed by a ReLU, e.g. the logits) uses
``A₊`` where its pre-activation is positive and ``A₋`` elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from pattern_keras._concurrency import ReadWriteLock
from pattern_keras.analyzers.base import Analyzer
from pattern_keras.patterns import PatternComputer, Patterns, PatternStatistics
from pattern_keras.patterns.fingerprint import WeightsChecksum, first_mismatch
from pattern_keras.rules import ActivationRule, Composite, GradientRule, LinearRule

__all__ = ["PatternNet", "PatternAttribution", "NotFittedError", "StalePatternsError"]


class NotFittedError(RuntimeError):
    """An analyzer that needs patterns was used before :meth:`fit` or :meth:`load_patterns`."""


class StalePatternsError(RuntimeError):
    """The model's weights changed after its patterns were fitted (trained further, new
    weights loaded): the patterns describe the old weights. Refit, or pass
    ``allow_stale_patterns=True`` to :meth:`analyze` to use them anyway."""


@dataclasses.dataclass(frozen=True)
class _Fitted:
    """What an analyzer uses, replaced as one: the patterns, the statistics of the fit that gave
    them (``None`` for patterns set or loaded), and the weights' checksum when they were set."""

    patterns: Patterns
    statistics: PatternStatistics | None
    weights: Any


class _PatternAnalyzer(Analyzer):
    """Shared machinery: patterns as variables, fit, save and load.

    The patterns, their statistics and the variables the compiled pass reads change together,
    under :attr:`_lock` held alone; every ``analyze`` call holds it shared for its whole length
    (see :mod:`pattern_keras._concurrency`), so it explains with one set of patterns.
    """

    seed_with_value = True
    fold_batch_norm = True
    needs_patterns = True
    #: "A" for PatternNet, "WA" for PatternAttribution.
    kernel_choice = "A"

    def __init__(
        self,
        model: Any,
        pattern_type: str | Mapping[str, str] = "relu",
        patterns: Patterns | str | None = None,
        neuron_selection_mode: str = "max_activation",
        renormalize: bool = False,
    ) -> None:
        self._renormalize = bool(renormalize)
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)
        self.pattern_type = pattern_type
        # One program: the patterns are checked against the ops the rules read.
        self._computer = PatternComputer(model, pattern_type=pattern_type, program=self._program)
        self._fitted: _Fitted | None = None
        self._lock = ReadWriteLock()
        self._variables: dict[str, tuple[tf.Variable, tf.Variable | None]] = {}
        self._weights_checksum = WeightsChecksum(model)
        if patterns is not None:
            if isinstance(patterns, Patterns):
                self.set_patterns(patterns)
            else:
                self.load_patterns(patterns)

    # -- patterns -----------------------------------------------------------------------------

    @property
    def patterns(self) -> Patterns | None:
        """The patterns in use (read-only arrays), or ``None`` before a fit or load."""
        fitted = self._fitted
        return None if fitted is None else fitted.patterns

    @property
    def statistics(self) -> PatternStatistics | None:
        """The sufficient statistics of the fit that gave :attr:`patterns`; ``None`` when the
        patterns were set or loaded (they belong to another fit, or to none)."""
        fitted = self._fitted
        return None if fitted is None else fitted.statistics

    @patterns.setter
    def patterns(self, value: Any) -> None:
        raise AttributeError(
            "analyzer.patterns cannot be assigned: use `analyzer.set_patterns(patterns)`, which "
            "checks them against the model and hands them to the compiled pass."
        )

    @statistics.setter
    def statistics(self, value: Any) -> None:
        raise AttributeError(
            "analyzer.statistics cannot be assigned: it is the statistics of the fit that gave "
            "the patterns; use `analyzer.set_patterns(statistics.patterns())`."
        )

    def fit(
        self,
        data: Any,
        batch_size: int = 32,
        steps: int | None = None,
        verbose: int = 1,
        strategy: tf.distribute.Strategy | None = None,
        checkpoint_path: str | None = None,
        checkpoint_every: int | None = None,
    ) -> _PatternAnalyzer:
        """Learn the patterns from ``data`` in one streaming pass, and use them from now on.

        The fit's sufficient statistics are kept in :attr:`statistics` (float64 sums, see
        :class:`~pattern_keras.PatternStatistics`), so that :meth:`save_patterns` can store
        them for a later merge or resume.

        Parameters
        ----------
        data : array, list of arrays, tf.data.Dataset, generator or keras.utils.PyDataset
            A numpy array (batched here with ``batch_size``), a dataset of batches yielding
            ``x``, ``(x, y)`` or ``(x, y, w)`` (only ``x`` is used), a Python generator of such
            batches, or a ``PyDataset``.
        batch_size : int
            Global batch size for array data (default 32).
        steps : int, optional
            Number of batches to use (required for an endless generator).
        verbose : int
            1: a Keras progress bar (default); 0: silent.
        strategy : tf.distribute.Strategy, optional
            Run the fit under this strategy (several GPUs or hosts); ``batch_size`` is then the
            global batch.
        checkpoint_path : str, optional
            Write the statistics there every ``checkpoint_every`` batches (atomically) and at
            the end; if the file exists at start, resume from it, skipping the batches it
            already counted. Refuses a checkpoint of another model or pattern type.
        checkpoint_every : int, optional
            Batches between checkpoints (default: only at the end).

        Returns
        -------
        PatternNet or PatternAttribution
            ``self``, fitted, so that ``pk.PatternAttribution(model).fit(x)`` can be chained.

        Raises
        ------
        ValueError
            If the data yields no batch, or a checkpoint belongs to another model or pattern
            type.
        """
        statistics = self._computer.compute_statistics(
            data,
            batch_size=batch_size,
            steps=steps,
            verbose=verbose,
            strategy=strategy,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
        )
        self._set_patterns(statistics.patterns(), statistics.fingerprint, statistics)
        return self

    def set_patterns(self, patterns: Patterns) -> None:
        """Use ``patterns`` (fitted on this model) from now on.

        The analyzer remembers the weights they belong to: :meth:`analyze` refuses to run once
        the model's weights have changed (see :class:`StalePatternsError`). The statistics of
        an earlier fit are dropped (:attr:`statistics` becomes ``None``): they belong to other
        patterns, and :meth:`save_patterns` must not write them beside these. The swap waits
        for ``analyze`` calls in progress, which finish with the old patterns.

        Parameters
        ----------
        patterns : Patterns
            Patterns fitted on this model with this analyzer's pattern type (from
            :meth:`fit`, :meth:`PatternComputer.compute` or :meth:`Patterns.load`).

        Raises
        ------
        ValueError
            If they were fitted on another model (naming the first difference), miss a layer or
            have one the model lacks, have another shape or another pattern type, lack the
            negative-regime pattern ``a₋`` of a layer that keeps both regimes (or have one
            where it does not), or hold NaN or infinite values.
        """
        self._set_patterns(patterns, self._computer.fingerprint())

    def _set_patterns(
        self, patterns: Patterns, fingerprint, statistics: PatternStatistics | None = None
    ) -> None:
        plans = self._computer.plans
        _check_is_patterns(patterns)
        _check_same_model(patterns, fingerprint)
        _check_same_layers(patterns, plans)
        for key, plan in plans.items():
            _check_layer_pattern(patterns, key, plan)
        if not patterns.fingerprint:  # built by hand: they belong to the model as it is now
            patterns = _with_fingerprint(patterns, fingerprint)
        weights = self._weights_checksum()
        with self._lock.write():
            self._assign_variables(patterns)
            self._fitted = _Fitted(patterns, statistics, weights)

    def _assign_variables(self, patterns: Patterns) -> None:
        """Copy the patterns into the variables the compiled pass reads (new variables, and a
        new trace, only where a layer gains or loses its negative regime)."""
        rebuilt = False
        for key in self._computer.plans:
            positive = patterns[key]
            negative = patterns.negative(key) if patterns.has_negative(key) else None
            current = self._variables.get(key)
            if current is not None and (current[1] is None) == (negative is None):
                current[0].assign(positive)
                if negative is not None:
                    current[1].assign(negative)
            else:
                self._variables[key] = (
                    tf.Variable(positive, trainable=False, name="pattern"),
                    None
                    if negative is None
                    else tf.Variable(negative, trainable=False, name="pattern_negative"),
                )
                rebuilt = True
        if rebuilt:
            self._reset_compiled()

    def save_patterns(self, path: str, include_statistics: bool = True) -> None:
        """Write the patterns to an HDF5 file.

        Parameters
        ----------
        path : str
            The file to write (replaced if it exists); the layout is described in the README,
            "The pattern file".
        include_statistics : bool
            Also store the fit's float64 sufficient statistics, when there are any (default
            ``True``), so that the fit can later be merged with another or resumed.
            Patterns set or loaded have none (not even when a fit came before: a file never
            holds the patterns of one fit beside the statistics of another).

        Raises
        ------
        NotFittedError
            If the analyzer has no patterns yet.
        """
        self._check_ready()
        fitted = self._fitted  # patterns and statistics of one fit, read as one
        stats = fitted.statistics if include_statistics else None
        fitted.patterns.save(path, statistics=stats)

    def load_patterns(self, path: str) -> _PatternAnalyzer:
        """Read patterns from an HDF5 file written by :meth:`save_patterns`.

        Parameters
        ----------
        path : str
            A pattern file fitted on this model (its fingerprint is checked).

        Returns
        -------
        PatternNet or PatternAttribution
            ``self``, with the patterns set; :attr:`statistics` is ``None`` (read a file's
            statistics with :meth:`PatternStatistics.load`).

        Raises
        ------
        ValueError
            If the file was written for another model (naming the first difference) or is
            truncated or corrupt (:class:`~pattern_keras.patterns.PatternFileError`).
        """
        from pattern_keras.patterns import io

        fingerprint = self._computer.fingerprint()
        expected = {key: plan.part.kernel_shape for key, plan in self._computer.plans.items()}
        self._set_patterns(
            io.load_patterns(path, expected=expected, fingerprint=fingerprint), fingerprint
        )
        return self

    def _check_ready(self) -> None:
        if self._fitted is None:
            raise NotFittedError(
                f"{type(self).__name__} has no patterns yet: call `.fit(data)` to learn them, "
                "or `.load_patterns(path)` to read fitted ones."
            )

    def check_patterns_current(self) -> None:
        """Check that the model's weights are those the patterns were fitted on.

        One wrapping sum of the bit patterns of every weight variable, computed where the
        weights live (on the device), compared with the sums taken when the patterns were set
        or fitted: about 1 % of an ``analyze`` call of 8 images on VGG16 or ResNet50
        (``benchmarks/stale_check.py``).

        Raises
        ------
        StalePatternsError
            If a weight changed (naming the first one), e.g. the model was trained further.
        NotFittedError
            If there are no patterns yet.
        """
        self._check_ready()
        changed = self._weights_checksum.first_change(
            self._fitted.weights, self._weights_checksum()
        )
        if changed is not None:
            raise StalePatternsError(
                f"The weights of model '{self.model.name}' changed after its patterns were "
                f"fitted (first changed: '{changed}'): the patterns describe the old weights. "
                "Refit them (`analyzer.fit(data)`), or pass `allow_stale_patterns=True` to "
                "`analyze` to use them anyway."
            )

    def analyze(
        self,
        x: Any,
        neuron_selection: Any = None,
        batch_size: int | None = None,
        *,
        allow_stale_patterns: bool = False,
        **kwargs: Any,
    ):
        """Explain the selected output neuron for every sample with the fitted patterns.

        Parameters
        ----------
        x : array, tensor, list of arrays, or tf.data.Dataset
            The samples, as for :meth:`Analyzer.analyze`.
        neuron_selection : int or sequence of int, optional
            As for :meth:`Analyzer.analyze`.
        batch_size : int, optional
            Samples per backward pass (default 32).
        allow_stale_patterns : bool
            Use the patterns even if the model's weights changed since they were fitted
            (default ``False``: that raises :class:`StalePatternsError`; see
            :meth:`check_patterns_current`).
        **kwargs
            Passed on to :meth:`Analyzer.analyze`.

        Returns
        -------
        numpy.ndarray or list of numpy.ndarray
            The explanation, shaped like ``x`` (one array per input for several inputs).

        Raises
        ------
        StalePatternsError
            If the model's weights changed since the patterns were fitted.
        NotFittedError
            If there are no patterns yet.
        ValueError
            For inputs the model cannot take (see :meth:`Analyzer.analyze`).
        """
        # Shared for the whole call: every batch is explained with the same patterns, and a
        # refit or set_patterns in another thread waits for it (see _concurrency).
        with self._lock.read():
            self._check_ready()
            if not allow_stale_patterns:
                self.check_patterns_current()
            return super().analyze(
                x, neuron_selection=neuron_selection, batch_size=batch_size, **kwargs
            )

    # -- rules --------------------------------------------------------------------------------

    def _kernels(self, op, z) -> list[tuple[Any, Any]]:
        positive, negative = self._variables[op.pattern_key]
        weights = op.linear.kernel if self.kernel_choice == "WA" else None

        def kernel(pattern):
            # float32 patterns; a float64 model's kernel keeps its precision (the product is
            # cast to the layer's compute dtype where the kernel is applied).
            a = tf.convert_to_tensor(pattern)
            return a if weights is None else weights * tf.cast(a, weights.dtype)

        if negative is None:
            return [(kernel(positive), None)]
        # K₊ where z > 0, K₋ elsewhere, as K₋ everywhere plus (K₊ − K₋) where z > 0: the same
        # two transposed products, but one select of the signal instead of two masks and
        # products (the difference is taken on the kernel, which is small).
        k_negative = kernel(negative)
        return [(k_negative, None), (kernel(positive) - k_negative, z > 0)]

    def _composite(self, values) -> Composite:
        # Everything but the kernels and the ReLU gates crosses as the gradient does.
        return Composite(
            {
                "linear": LinearRule(self._kernels, name=self.kernel_choice),
                "activation": ActivationRule("pattern"),
                "affine": GradientRule(held=True),
            },
            default=GradientRule(),
        )

    def __repr__(self) -> str:
        state = "fitted" if self.patterns is not None else "not fitted"
        return (
            f"{type(self).__name__}(model={self.model.name!r}, "
            f"pattern_type={self.pattern_type!r}, {state})"
        )


class PatternNet(_PatternAnalyzer):
    """PatternNet: the estimated signal in input space.

    The backward pass replaces every kernel ``W`` by its pattern ``A`` and is seeded with the
    selected neuron's value ``y``; for a linear model the result is ``a·y``.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    pattern_type : {"relu", "linear", "filter"} or dict
        The signal estimator (see :class:`~pattern_keras.PatternComputer`); a dict
        ``{layer name: type}`` overrides it per layer.
    patterns : Patterns or str, optional
        Fitted patterns, or the path of a pattern file.
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    renormalize : bool
        Rescale the backward signal to a common per-sample scale after every linear layer
        (default ``False``). The explanation's direction is unchanged, its scale becomes
        arbitrary (like iNNvestigate's per-layer projection). Use it where patterns amplify
        the signal layer after layer until float32 overflows: deep networks with random or
        poorly fitted weights, where ``‖a‖·‖w‖ ≫ 1``.

    Examples
    --------
    >>> analyzer = pk.PatternNet(model).fit(x_train)
    >>> signal = analyzer.analyze(x_test)      # shaped like x_test
    """

    kernel_choice = "A"
    token_reduction = "norm"


class PatternAttribution(_PatternAnalyzer):
    """PatternAttribution: the signal's contribution to the output.

    The backward pass replaces every kernel ``W`` by ``W ⊙ A`` and is seeded with the selected
    neuron's value ``y``; for a linear model the result is ``w ⊙ a · y``.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output (see :class:`Analyzer`).
    pattern_type : {"relu", "linear", "filter"} or dict
        The signal estimator (see :class:`~pattern_keras.PatternComputer`); a dict
        ``{layer name: type}`` overrides it per layer.
    patterns : Patterns or str, optional
        Fitted patterns, or the path of a pattern file.
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained (see :class:`Analyzer`).
    renormalize : bool
        Keep the backward signal at a common per-sample scale (see :class:`PatternNet`).

    Examples
    --------
    >>> analyzer = pk.PatternAttribution(model).fit(x_train)
    >>> heatmaps = analyzer.analyze(x_test)    # shaped like x_test
    """

    kernel_choice = "WA"


# ----------------------------------------------------------------------------------------------
# The checks of set_patterns, one rule each


def _check_is_patterns(patterns: Any) -> None:
    if not isinstance(patterns, Patterns):
        raise TypeError(f"set_patterns takes a Patterns object, got {type(patterns).__name__}.")


def _check_same_model(patterns: Patterns, fingerprint: Mapping[str, Any]) -> None:
    """Patterns that carry a fingerprint must carry this model's (hand-built ones carry none)."""
    if patterns.fingerprint:
        mismatch = first_mismatch(fingerprint, patterns.fingerprint)
        if mismatch:
            raise ValueError(f"These patterns were fitted on another model: {mismatch}.")


def _check_same_layers(patterns: Patterns, plans: Mapping[str, Any]) -> None:
    """One pattern per layer with a kernel: none missing, none extra."""
    extra = sorted(set(patterns) - set(plans))
    if extra:
        raise ValueError(
            f"The patterns have an entry for layer '{extra[0]}', which the "
            f"model has no pattern for (its layers: {sorted(plans)})."
        )
    missing = [key for key in plans if key not in patterns]
    if missing:
        raise ValueError(f"The patterns have no entry for layer '{missing[0]}'.")


def _check_layer_pattern(patterns: Patterns, key: str, plan: Any) -> None:
    """One layer's patterns: shape, pattern type, regimes and finite values."""
    _check_shape(patterns[key], key, plan, "pattern")
    kind = patterns.pattern_types.get(key, plan.pattern_type)
    if kind != plan.pattern_type:
        raise ValueError(
            f"The pattern of layer '{key}' is of type {kind!r}; this analyzer was "
            f"built with pattern_type {plan.pattern_type!r}."
        )
    two_regimes = _check_regimes(patterns, key, plan)
    arrays = [("a", patterns[key])]
    if two_regimes:
        _check_shape(patterns.negative(key), key, plan, "negative-regime pattern")
        arrays.append(("a_negative", patterns.negative(key)))
    for name, value in arrays:
        if not np.all(np.isfinite(value)):
            raise ValueError(f"The pattern {name} of layer '{key}' holds NaN or infinite values.")


def _check_shape(value: np.ndarray, key: str, plan: Any, what: str) -> None:
    shape = tuple(value.shape)
    if shape != plan.part.kernel_shape:
        raise ValueError(
            f"The {what} of layer '{key}' has shape {shape}; its kernel has shape "
            f"{plan.part.kernel_shape}."
        )


def _check_regimes(patterns: Patterns, key: str, plan: Any) -> bool:
    """Whether the layer keeps both regimes; raises if the patterns say otherwise."""
    two_regimes = plan.pattern_type == "relu" and not plan.rectified
    if patterns.has_negative(key) != two_regimes:
        raise ValueError(
            f"Layer '{key}' "
            + (
                "keeps both regimes (it does not feed a ReLU), but the patterns have "
                "no negative-regime pattern a_negative for it."
                if two_regimes
                else "keeps only its positive regime, but the patterns have a "
                "negative-regime pattern a_negative for it (fitted with another "
                "model or pattern type?)."
            )
        )
    return two_regimes


def _with_fingerprint(patterns: Patterns, fingerprint: Mapping[str, Any]) -> Patterns:
    """The same patterns, carrying ``fingerprint``."""
    return Patterns(
        {k: patterns[k] for k in patterns},
        negative={k: patterns.negative(k) for k in patterns if patterns.has_negative(k)},
        pattern_types=patterns.pattern_types,
        n_samples=patterns.n_samples,
        fingerprint=fingerprint,
    )
