"""Sufficient statistics of the signal estimators, and the patterns they give.

For every linear layer (pattern key) and every neuron, over all samples (and, for a
convolution, all output positions), with ``x`` the neuron's input (patch), ``y = wᵀx`` its
output without bias and ``z = y + b`` its pre-activation:

=============  ======================  ==========================================
name           shape                   sum of
=============  ======================  ==========================================
``n``          neurons                 1
``sum_y``      neurons                 ``y'``
``n_pos``      neurons                 ``[z > 0]``
``sum_y_pos``  neurons                 ``y' [z > 0]``
``sum_x_pos``  kernel                  ``x' [z > 0]``
``sum_xy_pos`` kernel                  ``x' y' [z > 0]``
``sum_x``      kernel                  ``x'``
``sum_xy``     kernel                  ``x' y'``
=============  ======================  ==========================================

with shifted values ``x' = x − shift_x`` (a scalar per layer) and ``y' = y − shift_y`` (one per
neuron), chosen from the first batch so that float32 products of large-offset data keep their
covariance (MATH.md, "Numerics"). Sums are float64. :data:`SUMS` is this table in code.

Only what the layer's estimator needs is kept. :data:`ESTIMATORS` is the one table of estimators
(``pattern_type`` → the sums it needs, the further sums of a layer that keeps its negative
regime, and how the pattern is derived); the computer, the pattern file, the command line and
the evaluation all read it.

Everything here is numpy; :mod:`pattern_keras.patterns.computer` produces the sums.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "LayerStatistics",
    "PatternStatistics",
    "PATTERN_TYPES",
    "ESTIMATORS",
    "SUMS",
    "Estimator",
    "Sum",
    "estimator",
    "needed_statistics",
    "UndefinedPatternWarning",
    "new_fit_id",
    "OverlappingStatisticsError",
    "LegacyStatisticsWarning",
    "derived_fit_id",
    "is_fit_id",
]


@dataclasses.dataclass(frozen=True)
class Sum:
    """One sufficient statistic: the sum over samples and positions of ``weight`` per neuron
    (``over="neuron"``: shaped like the neurons), or of the neuron's input ``x'`` times ``weight``
    (``over="kernel"``: shaped like the kernel). Weights: ``"one"``, ``"y"`` (``y'``),
    ``"positive"`` (``[z > 0]``) and ``"y_positive"`` (``y' [z > 0]``)."""

    over: str
    weight: str


#: Every sum an estimator may need, by name (the names of the pattern file format).
SUMS: dict[str, Sum] = {
    "n": Sum("neuron", "one"),
    "sum_y": Sum("neuron", "y"),
    "n_pos": Sum("neuron", "positive"),
    "sum_y_pos": Sum("neuron", "y_positive"),
    "sum_x_pos": Sum("kernel", "positive"),
    "sum_xy_pos": Sum("kernel", "y_positive"),
    "sum_x": Sum("kernel", "one"),
    "sum_xy": Sum("kernel", "y"),
}


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A signal estimator: the sums it needs and how a pattern is derived from them.

    Attributes
    ----------
    name : str
        The ``pattern_type`` that selects it.
    sums : tuple of str
        Names in :data:`SUMS` every layer needs.
    negative_sums : tuple of str
        Further sums for a layer that keeps its negative regime (one not followed by a ReLU).
    derive : callable
        ``derive(layer_statistics) -> (a, a_negative or None, undefined)``: float64 patterns
        shaped like the kernel, and ``{regime: number of neurons whose pattern is 0/0}``.
    description : str
        One line for help texts.
    """

    name: str
    sums: tuple[str, ...]
    negative_sums: tuple[str, ...]
    derive: Callable[[LayerStatistics], tuple[np.ndarray, np.ndarray | None, dict[str, int]]]
    description: str


@dataclasses.dataclass
class LayerStatistics:
    """The sums of one pattern key.

    Attributes
    ----------
    pattern_type : str
        ``"relu"``, ``"linear"`` or ``"filter"``.
    rectified : bool
        The layer feeds a ReLU: only the positive regime is kept.
    kernel : numpy.ndarray
        The (effective) kernel ``W`` the statistics belong to.
    out_axes : tuple of int
        Kernel axes that index neurons.
    shift_x : float
        The scalar subtracted from the layer's inputs.
    shift_y : numpy.ndarray
        The per-neuron value subtracted from ``y``.
    sums : dict of numpy.ndarray
        float64 sums, see the module docstring.
    """

    pattern_type: str
    rectified: bool
    kernel: np.ndarray
    out_axes: tuple[int, ...]
    shift_x: float
    shift_y: np.ndarray
    sums: dict[str, np.ndarray]

    @property
    def input_axes(self) -> tuple[int, ...]:
        rank = self.kernel.ndim
        outs = {a % rank for a in self.out_axes}
        return tuple(a for a in range(rank) if a not in outs)

    def to_kernel(self, per_neuron: np.ndarray) -> np.ndarray:
        """Broadcast a per-neuron array against the kernel.

        Parameters
        ----------
        per_neuron : numpy.ndarray
            One value per output neuron, shaped like the kernel's :attr:`out_axes`.

        Returns
        -------
        numpy.ndarray
            The same values reshaped with size-1 axes where the kernel has input axes.
        """
        shape = [1] * self.kernel.ndim
        for axis, size in zip(self.out_axes, per_neuron.shape):
            shape[axis] = size
        return per_neuron.reshape(shape)

    def reshift(self, shift_x: float, shift_y: np.ndarray) -> LayerStatistics:
        """The same statistics expressed with other shifts (exact: the sums are polynomial).

        Parameters
        ----------
        shift_x : float
            The new scalar subtracted from the layer's inputs.
        shift_y : numpy.ndarray
            The new per-neuron values subtracted from the layer's outputs.

        Returns
        -------
        LayerStatistics
            A new object; this one is unchanged.
        """
        dx = float(self.shift_x) - float(shift_x)
        dy = np.asarray(self.shift_y, np.float64) - np.asarray(shift_y, np.float64)
        s = self.sums
        k = self.to_kernel
        new = dict(s)
        new["sum_y"] = s["sum_y"] + s["n"] * dy
        for suffix, count in (("_pos", "n_pos"), ("", "n")):
            if "sum_x" + suffix not in s:
                continue
            n_r = s[count]
            sum_y_r = s["sum_y" + suffix] if suffix else s["sum_y"]
            new["sum_xy" + suffix] = (
                s["sum_xy" + suffix]
                + k(dy) * s["sum_x" + suffix]
                + dx * k(sum_y_r)
                + dx * k(n_r * dy)
            )
            new["sum_x" + suffix] = s["sum_x" + suffix] + dx * k(n_r)
        if "sum_y_pos" in s:
            new["sum_y_pos"] = s["sum_y_pos"] + s["n_pos"] * dy
        return dataclasses.replace(
            self, shift_x=float(shift_x), shift_y=np.asarray(shift_y, np.float64).copy(), sums=new
        )

    # -- the estimators ---------------------------------------------------------------------

    def _regime(
        self, n_r: np.ndarray, sum_y_r: np.ndarray, sum_x_r: np.ndarray, sum_xy_r: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """``(E_r[xy] − E_r[x]E[y]) / wᵀ(·)`` from shifted sums (MATH.md, eqs. 5–7), and the
        number of neurons whose pattern is undefined (0/0) and set to 0.

        Undefined means 0/0: the neuron never was in the regime (``n_r = 0``), or the
        covariance in the denominator vanishes (an input that never varies), numerically so
        when it is below ``1e-9`` of the sum of the magnitudes of its terms. A non-finite value
        from finite statistics (an overflow) is returned as is, for the caller to refuse.
        """
        s = self.sums
        k = self.to_kernel
        # Kernel-sized arrays are updated in place (two temporaries instead of a dozen): on
        # ResNet50 this derivation was a tenth of a 64-image fit. The operations and their
        # order are those of the formula as written in MATH.md.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            n_safe = np.where(n_r > 0, n_r, 1.0)
            mean_y = s["sum_y"] / np.where(s["n"] > 0, s["n"], 1.0)
            num = sum_xy_r / k(n_safe)
            term = sum_x_r / k(n_safe)
            term *= k(mean_y)
            num -= term
            num += self.shift_x * k(sum_y_r / n_safe - mean_y)
            w_num = np.multiply(self.kernel, num, out=term, dtype=np.float64)
            den = np.sum(w_num, axis=self.input_axes, keepdims=True)
            scale = np.sum(np.abs(w_num, out=w_num), axis=self.input_axes, keepdims=True)
            finite = np.isfinite(den) & np.isfinite(scale)
            undefined = finite & ((k(n_r) <= 0) | (np.abs(den) <= 1e-9 * scale))
            value = np.divide(num, np.where(undefined, 1.0, den), out=num)
            np.copyto(value, 0.0, where=np.broadcast_to(undefined, value.shape))
        return value, int(np.count_nonzero(undefined))

    def _patterns(self) -> tuple[np.ndarray, np.ndarray | None, dict[str, int]]:
        """:meth:`patterns`, with the number of undefined (0/0) neurons per regime: the
        derivation of the layer's estimator in :data:`ESTIMATORS`."""
        return estimator(self.pattern_type).derive(self)

    def patterns(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The patterns these sums give, by the layer's estimator (:data:`ESTIMATORS`).

        A neuron whose pattern is 0/0 (never in the regime, or an input that never varies) gets
        0; :meth:`PatternStatistics.patterns` warns how many.

        Returns
        -------
        tuple of numpy.ndarray
            ``(a, a_negative)``: the pattern (``a₊`` for ``"relu"``) and, where the layer keeps
            its negative regime, ``a₋`` (else ``None``). float64, shaped like the kernel.

        Raises
        ------
        ValueError
            If a pattern value is NaN or infinite other than 0/0 (statistics that overflowed).
        """
        a, a_neg, _ = self._patterns()
        _check_finite(a, a_neg, "this layer")
        return a, a_neg


def _read_only(array: np.ndarray) -> np.ndarray:
    """A new array, made read-only so that :class:`Patterns` takes it without a copy."""
    array.setflags(write=False)
    return array


def _check_finite(a: np.ndarray, a_neg: np.ndarray | None, where: str) -> None:
    for name, value in (("a", a), ("a_negative", a_neg)):
        if value is not None and not np.all(np.isfinite(value)):
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            raise ValueError(
                f"The pattern {name} of {where} has {bad} NaN or infinite values: its "
                "statistics overflowed or are not finite (data of a very large magnitude? "
                "rescale the inputs)."
            )


class UndefinedPatternWarning(UserWarning):
    """Some neurons' patterns are 0/0 (a neuron never in its regime, an input that never
    varies) and were set to 0."""


# --- the estimators: one entry of ESTIMATORS each, with its derivation ---------------------


def _derive_filter(stats: LayerStatistics) -> tuple[np.ndarray, None, dict[str, int]]:
    """``w / wᵀw``: needs no data."""
    w = stats.kernel.astype(np.float64)
    norm = np.sum(w * w, axis=stats.input_axes, keepdims=True)
    zero = norm <= 0
    return (
        np.where(zero, 0.0, w / np.where(zero, 1.0, norm)),
        None,
        {"a": int(np.count_nonzero(zero))},
    )


def _derive_linear(stats: LayerStatistics) -> tuple[np.ndarray, None, dict[str, int]]:
    """``a = cov[x, y] / σ²_y``, all samples in one regime."""
    s = stats.sums
    a, undefined = stats._regime(s["n"], s["sum_y"], s["sum_x"], s["sum_xy"])
    return a, None, {"a": undefined}


def _derive_relu(stats: LayerStatistics) -> tuple[np.ndarray, np.ndarray | None, dict[str, int]]:
    """The two-component estimator: ``a₊`` from the samples with ``z > 0``; ``a₋`` from the
    others (the totals minus the positive sums) where the layer keeps its negative regime."""
    s = stats.sums
    positive, undefined = stats._regime(s["n_pos"], s["sum_y_pos"], s["sum_x_pos"], s["sum_xy_pos"])
    if stats.rectified:
        return positive, None, {"a₊": undefined}
    negative, undefined_neg = stats._regime(
        s["n"] - s["n_pos"],
        s["sum_y"] - s["sum_y_pos"],
        s["sum_x"] - s["sum_x_pos"],
        s["sum_xy"] - s["sum_xy_pos"],
    )
    return positive, negative, {"a₊": undefined, "a₋": undefined_neg}


#: The signal estimators by ``pattern_type``. Adding one is one entry here plus its derivation.
ESTIMATORS: dict[str, Estimator] = {
    "relu": Estimator(
        "relu",
        ("n", "sum_y", "n_pos", "sum_y_pos", "sum_x_pos", "sum_xy_pos"),
        ("sum_x", "sum_xy"),
        _derive_relu,
        "two-component estimator (a₊, and a₋ where no ReLU follows)",
    ),
    "linear": Estimator(
        "linear",
        ("n", "sum_y", "sum_x", "sum_xy"),
        (),
        _derive_linear,
        "linear estimator a = cov[x, y] / var[y]",
    ),
    "filter": Estimator(
        "filter",
        ("n", "sum_y"),
        (),
        _derive_filter,
        "filter w / wᵀw (DeConvNet, Guided BackProp), for comparison",
    ),
}

#: The built-in ``pattern_type`` names, in the order help texts list them (code that must see
#: an estimator added to :data:`ESTIMATORS` later reads the table itself).
PATTERN_TYPES = tuple(ESTIMATORS)


def estimator(pattern_type: str) -> Estimator:
    """The :class:`Estimator` of ``pattern_type``; ``ValueError`` naming the known ones."""
    try:
        return ESTIMATORS[pattern_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown pattern type {pattern_type!r}; known: {tuple(ESTIMATORS)}."
        ) from None


def needed_statistics(pattern_type: str, rectified: bool) -> tuple[str, ...]:
    """Names of the sums a layer's estimator needs (``rectified``: the layer feeds a ReLU, so
    its negative regime is not kept)."""
    est = estimator(pattern_type)
    return est.sums if rectified else est.sums + est.negative_sums


#: A fit's identity: 32 random hex digits (a UUID4), or, for statistics read from a file written
#: before fits had identities, ``"file-sha256:"`` and the SHA-256 of the file's content.
_FIT_ID = re.compile(r"[0-9a-f]{32}|file-sha256:[0-9a-f]{64}")


def new_fit_id() -> str:
    """A new random fit identity (a UUID4 as 32 hex digits): one per fit, kept by a resumed
    fit and carried into every merge, so that no fit's samples are merged twice."""
    return uuid.uuid4().hex


def derived_fit_id(content_sha256: str) -> str:
    """The identity of the statistics in a file written before fits had identities: derived
    from the file's content, so the same file (or a copy) given twice shares one."""
    return f"file-sha256:{content_sha256}"


def is_fit_id(value: object) -> bool:
    """Whether ``value`` is a fit identity (:func:`new_fit_id` or :func:`derived_fit_id`)."""
    return isinstance(value, str) and _FIT_ID.fullmatch(value) is not None


class OverlappingStatisticsError(ValueError):
    """Statistics that share a fit: merging them would count its samples twice."""


class PatternStatistics(Mapping[str, LayerStatistics]):
    """The sufficient statistics of a pattern fit, per pattern key.

    Obtained from :meth:`PatternComputer.compute_statistics`; :meth:`patterns` derives the
    patterns, :meth:`merge` adds another data set's statistics (fits on disjoint shards merge
    into the fit on their union), :meth:`save`/:meth:`load` keep them in HDF5.

    Attributes
    ----------
    layers : dict of LayerStatistics
    n_samples : int
        Number of samples seen.
    n_batches : int
        Number of batches seen (used to resume a fit).
    fingerprint : dict
        The model fingerprint (:func:`pattern_keras.patterns.fingerprint.model_fingerprint`).
    fit_ids : frozenset of str
        The identities of the fits these statistics hold: one random identity per fit (kept
        when a fit is resumed from its checkpoint), the union of the parts' for merged
        statistics. :meth:`merge` refuses statistics that share one. Statistics read from a
        file written before identities existed get one derived from the file's content
        (:func:`derived_fit_id`).
    """

    def __init__(
        self,
        layers: Mapping[str, LayerStatistics],
        n_samples: int,
        n_batches: int,
        fingerprint: Mapping[str, Any],
        fit_ids: Iterable[str] | None = None,
    ) -> None:
        self.layers = dict(layers)
        self.n_samples = int(n_samples)
        self.n_batches = int(n_batches)
        self.fingerprint = dict(fingerprint)
        # Statistics made without identities are a fit of their own.
        ids = frozenset([new_fit_id()] if fit_ids is None else fit_ids)
        bad = sorted(repr(i) for i in ids if not is_fit_id(i))
        if bad or not ids:
            raise ValueError(
                "fit_ids must be one or more fit identities (new_fit_id()); got "
                + (", ".join(bad[:3]) if bad else "none")
                + "."
            )
        self.fit_ids = ids

    def __getitem__(self, key: str) -> LayerStatistics:
        return self.layers[key]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def patterns(self):
        """The patterns these statistics give.

        Neurons whose pattern is 0/0 (never in the regime, or an input that never varies) get
        0, with an :class:`UndefinedPatternWarning` counting them per layer.

        Returns
        -------
        Patterns
            One pattern per layer (float32), with the pattern types, the number of samples
            and the model's fingerprint.

        Raises
        ------
        ValueError
            Naming the layer, if a pattern value is NaN or infinite other than 0/0 (statistics
            that overflowed).
        """
        return self._build_patterns(warn=True)

    def _build_patterns(self, warn: bool):
        from pattern_keras.patterns.patterns import Patterns

        positive, negative, types = {}, {}, {}
        undefined = []
        for key, stats in self.layers.items():
            a, a_neg, counts = stats._patterns()
            _check_finite(a, a_neg, f"layer '{key}'")
            n_neurons = int(np.prod([stats.kernel.shape[ax] for ax in stats.out_axes]))
            undefined += [
                f"'{key}' {n} of {n_neurons} neurons ({regime})"
                for regime, n in counts.items()
                if n
            ]
            positive[key] = _read_only(a.astype(np.float32))
            if a_neg is not None:
                negative[key] = _read_only(a_neg.astype(np.float32))
            types[key] = stats.pattern_type
        if undefined and warn:
            warnings.warn(
                "Patterns undefined (0/0: a neuron never in the regime, or an input that never "
                f"varies) were set to 0: {'; '.join(undefined)}.",
                UndefinedPatternWarning,
                stacklevel=3,
            )
        return Patterns(
            positive,
            negative=negative,
            pattern_types=types,
            n_samples=self.n_samples,
            fingerprint=self.fingerprint,
        )

    def merge(self, other: PatternStatistics) -> PatternStatistics:
        """Statistics of both data sets together; a new object, both inputs unchanged.

        Statistics taken with different shifts (each fit picks its own from its first batch)
        are re-expressed with this object's shifts first, which is exact.

        Parameters
        ----------
        other : PatternStatistics
            Statistics of another data set, taken on the same model with the same pattern
            types.

        Returns
        -------
        PatternStatistics
            The statistics of both data sets together.

        Raises
        ------
        OverlappingStatisticsError
            A ``ValueError``: if both hold the same fit (:attr:`fit_ids`), which would count its
            samples twice: the same file given twice, a copy of it, a merged file and one of
            its parts, or a checkpoint and the fit resumed from it.
        ValueError
            If ``other`` comes from another model (fingerprint), other layers, or other pattern
            types.
        """
        if not isinstance(other, PatternStatistics):
            raise TypeError(f"Can only merge PatternStatistics, got {type(other).__name__}.")
        _check_disjoint(self.fit_ids, other.fit_ids)
        from pattern_keras.patterns.fingerprint import first_mismatch

        mismatch = first_mismatch(self.fingerprint, other.fingerprint)
        if mismatch:
            raise ValueError(f"Cannot merge statistics of different models: {mismatch}.")
        if set(self.layers) != set(other.layers):
            raise ValueError(
                "Cannot merge statistics of different layers: "
                f"{sorted(set(self.layers) ^ set(other.layers))}."
            )
        merged = {}
        for key, mine in self.layers.items():
            theirs = other.layers[key]
            if (mine.pattern_type, mine.rectified) != (theirs.pattern_type, theirs.rectified):
                raise ValueError(
                    f"Cannot merge statistics of layer '{key}': pattern type "
                    f"{mine.pattern_type!r} (rectified={mine.rectified}) against "
                    f"{theirs.pattern_type!r} (rectified={theirs.rectified})."
                )
            theirs = theirs.reshift(mine.shift_x, mine.shift_y)
            sums = {name: mine.sums[name] + theirs.sums[name] for name in mine.sums}
            merged[key] = dataclasses.replace(mine, sums=sums)
        return PatternStatistics(
            merged,
            self.n_samples + other.n_samples,
            self.n_batches + other.n_batches,
            self.fingerprint,
            fit_ids=self.fit_ids | other.fit_ids,
        )

    def save(self, path: str) -> None:
        """Write the statistics (and the patterns they give) to an HDF5 file.

        Parameters
        ----------
        path : str
            The file to write (replaced if it exists); a pattern file that
            :meth:`Patterns.load` also reads.
        """
        from pattern_keras.patterns import io

        io.save(path, patterns=self._build_patterns(warn=False), statistics=self)

    @classmethod
    def load(
        cls,
        path: str,
        expected: Mapping[str, tuple[int, ...]] | None = None,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> PatternStatistics:
        """Read statistics written by :meth:`save` (or ``Patterns.save(..., statistics=...)``).

        Parameters
        ----------
        path : str
            A pattern file that holds statistics.
        expected : mapping of layer key to kernel shape, optional
            The model's layers: the file must have exactly these (shapes checked before any
            array is read). Without it, against the weight shapes of the file's fingerprint.
        fingerprint : mapping, optional
            The model's fingerprint, compared before any array is read.

        Returns
        -------
        PatternStatistics

        Raises
        ------
        ValueError
            If the file holds patterns only (a :class:`PatternFileError` if it is damaged).
        """
        from pattern_keras.patterns import io

        stats = io.load_statistics(path, expected=expected, fingerprint=fingerprint)
        if stats is None:
            raise ValueError(
                f"'{path}' holds patterns but no statistics: save with "
                "`include_statistics=True` (the default) to be able to merge or "
                "resume."
            )
        return stats

    def __repr__(self) -> str:
        return (
            f"PatternStatistics({len(self.layers)} layers, n_samples={self.n_samples}, "
            f"n_batches={self.n_batches}, fits={len(self.fit_ids)})"
        )


def _check_disjoint(mine: frozenset[str], theirs: frozenset[str]) -> None:
    """Refuse a merge of statistics that share a fit; warn where a part's identity is only
    derived from an old file's content (an overlap inside such a file cannot be seen)."""
    shared = sorted(mine & theirs)
    if shared:
        raise OverlappingStatisticsError(
            f"Cannot merge statistics that both hold the fit {shared[0]}"
            + (f" (and {len(shared) - 1} more)" if len(shared) > 1 else "")
            + ": its samples would be counted twice (the same file given twice, a copy of "
            "it, a merged file and one of its parts, or a checkpoint and the fit resumed "
            "from it)."
        )
    if any(i.startswith("file-sha256:") for i in mine | theirs):
        warnings.warn(
            "Merging statistics from a file written before fits had identities "
            "(pattern_keras 0.1.0 and earlier): the same file given twice is refused, but "
            "whether it overlaps another file (one of its parts merged again, say) cannot be "
            "checked.",
            LegacyStatisticsWarning,
            stacklevel=3,
        )


class LegacyStatisticsWarning(UserWarning):
    """Statistics from a file written before fits had identities (see
    :attr:`PatternStatistics.fit_ids`): an overlap with them can be checked only in part."""
