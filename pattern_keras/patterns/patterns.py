"""Fitted patterns: a mapping from layer key to an array shaped like that layer's kernel."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["Patterns"]


def _frozen(value: Any) -> np.ndarray:
    """``value`` as a float32 array nobody can change: a read-only copy, unless it is already a
    read-only float32 array that owns its data (a pattern derived from statistics)."""
    array = np.asarray(value, np.float32)
    if array.flags.writeable or array.base is not None:
        array = array.copy()
        array.setflags(write=False)
    return array


class Patterns(Mapping[str, np.ndarray]):
    """Patterns of a model, one array per linear layer, shaped like its kernel.

    ``patterns[key]`` is the linear pattern ``a`` (``pattern_type="linear"``), the positive
    regime's ``a₊`` (``"relu"``) or ``w / wᵀw`` (``"filter"``). Keys are layer names
    (``"outer/inner"`` inside a nested model; ``"name/depthwise_kernel"`` and
    ``"name/pointwise_kernel"`` for the two kernels of a separable convolution).

    Parameters
    ----------
    patterns : mapping of str to array
    negative : mapping of str to array, optional
        ``a₋`` for the layers that keep their negative regime (a ``"relu"`` layer whose output is
        not rectified, e.g. the logits).
    pattern_types : mapping of str to str, optional
    n_samples : int
        Samples the patterns were fitted on.
    fingerprint : mapping, optional
        The fingerprint of the model they were fitted on.

    Notes
    -----
    The arrays are read-only float32 copies (``writeable=False``): an analyzer copies its
    patterns into the variables its compiled pass reads, so an array changed in place would
    change what :meth:`save` writes but not what ``analyze`` uses. To change a pattern, build
    new ``Patterns`` and pass them to ``set_patterns``.
    """

    def __init__(
        self,
        patterns: Mapping[str, Any],
        negative: Mapping[str, Any] | None = None,
        pattern_types: Mapping[str, str] | None = None,
        n_samples: int = 0,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> None:
        self._positive = {k: _frozen(v) for k, v in patterns.items()}
        self._negative = {k: _frozen(v) for k, v in (negative or {}).items()}
        unknown = set(self._negative) - set(self._positive)
        if unknown:
            raise ValueError(f"Negative patterns for layers without a pattern: {sorted(unknown)}.")
        self.pattern_types = dict(pattern_types or {k: "relu" for k in self._positive})
        self.n_samples = int(n_samples)
        self.fingerprint = dict(fingerprint or {})

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._positive[key]
        except KeyError:
            raise KeyError(
                f"No pattern for layer '{key}'. Layers with patterns: {sorted(self._positive)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._positive)

    def __len__(self) -> int:
        return len(self._positive)

    def has_negative(self, key: str) -> bool:
        """Whether layer ``key`` keeps its negative regime.

        Parameters
        ----------
        key : str
            A layer key, as in ``patterns[key]``.

        Returns
        -------
        bool
            ``True`` when :meth:`negative` has an ``a₋`` for this layer.
        """
        return key in self._negative

    def negative(self, key: str) -> np.ndarray:
        """``a₋`` of layer ``key``.

        Parameters
        ----------
        key : str
            A layer key, as in ``patterns[key]``.

        Returns
        -------
        numpy.ndarray
            The negative-regime pattern, float32, shaped like the layer's kernel.

        Raises
        ------
        KeyError
            Saying why: the layer has no pattern, or it keeps only one regime (it feeds a ReLU,
            or its pattern type is not ``"relu"``).
        """
        if key not in self._positive:
            raise KeyError(f"No pattern for layer '{key}'.")
        if key not in self._negative:
            raise KeyError(
                f"Layer '{key}' has no negative-regime pattern: its pattern type is "
                f"{self.pattern_types.get(key)!r} and "
                + (
                    "it feeds a ReLU, so only a₊ matters."
                    if self.pattern_types.get(key) == "relu"
                    else "only the two-component ('relu') estimator has two regimes."
                )
            )
        return self._negative[key]

    def save(self, path: str, statistics: Any = None) -> None:
        """Write the patterns (and optionally their statistics) to an HDF5 file.

        Parameters
        ----------
        path : str
            The file to write (replaced if it exists). The layout is described in the README,
            "The pattern file".
        statistics : PatternStatistics, optional
            The fit's sufficient statistics, stored beside the patterns so that the fit can be
            merged with another or resumed.
        """
        from pattern_keras.patterns import io

        io.save(path, patterns=self, statistics=statistics)

    @classmethod
    def load(cls, path: str) -> Patterns:
        """Read a pattern file written by :meth:`save`.

        Without a model, the shapes in the file are checked against the weight shapes of its
        own fingerprint; an analyzer's ``load_patterns`` checks them against the model.

        Parameters
        ----------
        path : str
            An HDF5 pattern file. Only arrays and attributes are read; nothing is unpickled.

        Returns
        -------
        Patterns

        Raises
        ------
        PatternFileError
            If the file is not a pattern file, or is truncated, corrupt (checksum) or malformed.
        """
        from pattern_keras.patterns import io

        return io.load_patterns(path)

    @classmethod
    def from_innvestigate(cls, path: str, model: Any, pattern_type: str = "relu") -> Patterns:
        """Read the patterns of iNNvestigate 1.x (an ``.npz`` of ``arr_0 … arr_N``) for ``model``.

        iNNvestigate saves one pattern per layer with a kernel (Dense, convolutions), in the
        order of the model's layers, each shaped like that kernel: ``np.savez(path,
        *analyzer._patterns)``, and the published VGG16/VGG19 ImageNet pattern files. Array
        ``arr_i`` goes to the ``i``-th layer with a kernel of ``model.layers`` (a nested
        model's layers flattened in place). Save the result with :meth:`save` (it carries
        ``model``'s fingerprint) so the import is done once.

        A layer that keeps both regimes here (the two-component estimator on a layer whose
        output is not rectified, e.g. the logits; see ``design/MATH.md``) gets the file's single
        pattern for both: ``negative(key)`` equals ``self[key]``. That is what iNNvestigate
        computes, so explanations equal its own, also where the selected logit is negative.

        Parameters
        ----------
        path : str
            The ``.npz`` file. It is read with ``allow_pickle=False``.
        model : keras.Model
            The model the patterns were fitted for (same architecture, layer order and
            weights).
        pattern_type : {"relu", "linear"}
            The estimator the file was fitted with (the file does not say): ``"relu"`` for
            iNNvestigate's ``pattern_type="relu"`` (its default, and the published files named
            ``..._pattern_type_relu_...``), ``"linear"`` for ``"linear"``.

        Returns
        -------
        Patterns
            ``n_samples`` is 0 (unknown: the file does not record it).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        PatternFileError
            If the file is not an ``.npz`` of ``arr_0 … arr_N``, or holds anything but plain
            floating-point arrays (a pickled object array is refused, never unpickled).
        ValueError
            If the number of arrays differs from the number of layers with a kernel, or an
            array's shape differs from its kernel's (naming the first layer that differs, its
            expected and found shapes); for NaN/inf values, a separable convolution (two
            kernels here, one array there), or an unsupported layer.
        """
        from pattern_keras.patterns.innvestigate import from_innvestigate

        return from_innvestigate(path, model, pattern_type=pattern_type)

    def __repr__(self) -> str:
        types = sorted(set(self.pattern_types.values()))
        return (
            f"Patterns({len(self)} layers, types={types}, n_samples={self.n_samples}, "
            f"negative regimes: {sorted(self._negative)})"
        )
