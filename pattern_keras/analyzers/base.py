"""The common analyzer API: input checks, neuron selection, batching, one compiled pass."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Union

import keras
import numpy as np
import tensorflow as tf

from pattern_keras import _checks, engine
from pattern_keras._checks import NEURON_SELECTION_MODES
from pattern_keras.layers import shared_kernels
from pattern_keras.patterns.fingerprint import WeightsChecksum
from pattern_keras.rules import Composite

__all__ = ["Analyzer", "NEURON_SELECTION_MODES"]

DEFAULT_BATCH_SIZE = 32

ArrayLike = Union[np.ndarray, tf.Tensor, Sequence[np.ndarray], tf.data.Dataset]  # noqa: UP007


class Analyzer:
    """Base class: explains one output neuron per sample with one backward pass.

    Subclasses only say which backward rule each kind of op gets (:meth:`_composite`), how the
    backward pass is seeded (:attr:`seed_with_value`) and, optionally, how the signal at the
    inputs is post-processed (:meth:`_postprocess`). The traversal is
    :mod:`pattern_keras.engine`'s, run once per batch as a ``tf.function`` traced once per input
    signature.

    Parameters
    ----------
    model : keras.Model
        A Functional or Sequential model with one output. A final softmax is stripped:
        explanations are of the pre-softmax value. Layers without a rule are refused here,
        with a ``ValueError`` naming them.
    neuron_selection_mode : {"max_activation", "index", "all"}
        Which output neuron is explained: per sample the one with the largest value, the one
        given by ``neuron_selection`` in :meth:`analyze`, or the sum over all outputs.

    Notes
    -----
    Seeds: analyzers with ``seed_with_value = False`` (Gradient, InputTimesGradient) start the
    backward pass from 1 at the selected neuron; the others (DeConvNet, GuidedBackprop, the LRP
    rules, PatternNet, PatternAttribution) from the selected neuron's value ``y``, so that
    relevance is conserved (``Σ R = y`` for LRP on a bias-free ReLU network).
    """

    #: Start the backward pass from the selected neuron's value (True) or from 1 (False).
    seed_with_value: bool = False
    #: Fold BatchNormalization into the preceding linear layer before explaining.
    fold_batch_norm: bool = False
    #: Keep the backward signal at a common per-sample scale (see ``engine.backward``).
    _renormalize: bool = False
    #: Needs fitted patterns (``fit`` or ``load_patterns``) before ``analyze``.
    needs_patterns: bool = False
    #: Takes ``"opaque"`` ops (layers without a rule that could not be looked into) by their
    #: own gradient: only the gradient family, whose result is the gradient anyway.
    explains_opaque_ops: bool = False
    #: How the map at an ids input's embedding vectors ``(n, T, d)`` becomes one score per
    #: token ``(n, T)``: ``"sum"`` over the embedding axis for attributions (the sum is what
    #: is conserved), ``"norm"`` (L2) for signals (gradients, patterns).
    token_reduction: str = "sum"

    def __init__(self, model: Any, neuron_selection_mode: str = "max_activation") -> None:
        _checks.selection_mode(neuron_selection_mode)
        self.model = model
        self.neuron_selection_mode = neuron_selection_mode
        self._program = engine.Program(model, fold_batch_norm=self.fold_batch_norm)
        self._refuse_opaque_ops()
        self._built_weights = None
        if self._program.captures:
            self._built_weights_checksum = WeightsChecksum(model)
            self._built_weights = self._built_weights_checksum()
        self._compiled = None
        self._compiled_region = None
        shape = self._program.output_shape
        if shape is None or any(d is None for d in shape[1:]):
            raise ValueError(
                f"The output of model '{model.name}' has shape {shape}: the number of output "
                "neurons must be known."
            )
        self.num_outputs = int(math.prod(shape[1:]))

    def _check_captured_weights(self) -> None:
        """Refuse to run once the weights changed, where the program holds values computed
        from them when it was built (a class token tiled over the batch inside a layer's
        ``call``): it would explain the old model."""
        if self._built_weights is None:
            return
        checksum = self._built_weights_checksum
        changed = checksum.first_change(self._built_weights, checksum())
        if changed is not None:
            raise RuntimeError(
                f"{type(self).__name__}: the weights of model '{self.model.name}' changed after "
                f"this analyzer was built (first changed: '{changed}'), and the model computes "
                "values from its weights inside a layer's `call` that the analyzer read once, "
                "when it was built. Build a new analyzer for the model as it is now."
            )

    def _warn_if_unreadable_probabilities(self, inputs: list[Any]) -> None:
        """Warn (once) where the explained output comes out of a layer that could not be read
        and looks like probabilities: a softmax inside an unreadable ``call`` cannot be
        stripped, so the explanation is of a probability, not of a logit."""
        if getattr(self, "_probabilities_checked", False):
            return
        self._probabilities_checked = True
        last = self._program.producer(self._program.output)
        if last is None or last.kind != "opaque" or self.num_outputs < 2:
            return
        sample = [t[:8] for t in inputs]
        y = np.asarray(engine.forward(self._program, sample)[self._program.output])
        y = y.reshape(y.shape[0], -1).astype(np.float64)
        if y.size and np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-4):
            warnings.warn(
                f"{type(self).__name__}: the output of model '{self.model.name}' looks like "
                f"probabilities (each row sums to 1) and comes out of '{last.key}', whose "
                "computation could not be read, so a final softmax could not be stripped: "
                "the explanation is of a probability, not of a logit. Explain the logits "
                "instead, e.g. a model that returns them (the same layers without the "
                "softmax, or `classifier_activation=None` for keras.applications and "
                "keras-hub models).",
                RuntimeWarning,
                stacklevel=4,
            )

    def _refuse_opaque_ops(self) -> None:
        """Refuse, naming the layer and why, a model with a layer this analyzer has no rule
        for, now rather than at the first call (never a silent gradient in its place)."""
        if self.explains_opaque_ops:
            return
        for op in self._program.ops:
            # An op the held pass never reaches (in the product of queries and keys that only
            # feeds held attention weights) is never asked for a rule.
            if op.kind == "opaque" and self._program.reached_when_held(op):
                raise ValueError(f"{type(self).__name__}: {op.refusal}")

    # -- what subclasses define ------------------------------------------------------------

    def _composite(self, values: Mapping[int, Any]) -> Composite:
        """The rule of every op kind; ``values`` are the forward pass's tensors by slot (for
        rules that depend on them, such as deep Taylor's input bounds)."""
        raise NotImplementedError

    def _seed(self, y: Any, mask: Any) -> Any:
        """The backward signal at the output, shape ``(batch, outputs)``: ``mask·y`` or
        ``mask`` (see :attr:`seed_with_value`); ``mask`` is 1 at the selected neurons."""
        return mask * y if self.seed_with_value else mask

    def _postprocess(self, inputs: list[Any], signals: list[Any]) -> list[Any]:
        return signals

    def _check_ready(self) -> None:
        """Raise if the analyzer needs something (fitted patterns) before it can run."""

    # -- the compiled pass -----------------------------------------------------------------

    def _explain(self, inputs: list[Any], selection: Any) -> list[Any]:
        with shared_kernels():  # one read (and fold) of each kernel for the whole pass
            return self._explain_pass(inputs, selection)

    def _explain_pass(self, inputs: list[Any], selection: Any) -> list[Any]:
        """The signals at the explained points (one per explained input), post-processed."""
        program = self._program
        values = engine.forward(program, inputs)
        y = values[program.output]
        flat, mask = _checks.selection_mask(
            y, self.neuron_selection_mode, selection, self.num_outputs
        )
        seed = self._seed(flat, mask)
        composite = self._composite(values)
        signals = engine.backward(
            program, values, tf.reshape(seed, tf.shape(y)), composite, renormalize=self._renormalize
        )
        return self._postprocess([values[s] for s in program.explained_slots], signals)

    def _explain_batch(self, inputs: list[Any], selection: Any) -> list[Any]:
        """:meth:`_explain`, or zeros for an empty batch without running the model (see
        :func:`pattern_keras.engine.if_samples`)."""
        inputs = list(inputs)
        return engine.if_samples(
            inputs[0],
            lambda: list(self._explain(inputs, selection)),
            lambda: self._empty_results(inputs),
        )

    def _empty_results(self, inputs: list[Any]) -> list[Any]:
        """Zeros shaped like the explained points of an empty batch."""
        out = []
        for p in self._program.points:
            if p.slot is None:
                continue
            x = inputs[p.index]
            dtype = self._program.dtypes.get(p.slot, "float32")
            if p.kind == "float":
                out.append(tf.zeros_like(x))
            elif p.kind == "cast":
                out.append(tf.zeros(tf.shape(x), dtype))
            else:  # the ids' shape, then the embedding's own axes
                extra = [int(d) for d in p.shape[p.ids_rank :]]
                out.append(tf.zeros(tf.concat([tf.shape(x), extra], axis=0), dtype))
        return out

    def _compiled_fn(self, region: bool = False):
        """The compiled pass; ``region``: the selection is output-shaped weights ``(n,
        outputs)`` instead of one index per sample."""
        if (self._compiled_region if region else self._compiled) is None:
            selection = (
                tf.TensorSpec((None, self.num_outputs), tf.float32)
                if region
                else tf.TensorSpec((None,), tf.int32)
            )
            signature = [
                [
                    tf.TensorSpec((None,) + tuple(shape[1:]), dtype)
                    for shape, dtype in self._program.input_specs
                ],
                selection,
            ]
            # A partial (no __code__) makes TensorFlow count each analyzer's traces on their
            # own: every analyzer traces once, which is not the "frequent retracing" it warns of.
            # No AutoGraph: the pass has no tensor-dependent Python control flow to convert.
            compiled = tf.function(
                functools.partial(type(self)._explain_batch, self),
                input_signature=signature,
                autograph=False,
            )
            if region:
                self._compiled_region = compiled
            else:
                self._compiled = compiled
        return self._compiled_region if region else self._compiled

    def _reset_compiled(self) -> None:
        self._compiled = self._compiled_region = None

    # -- the public API --------------------------------------------------------------------

    def analyze(
        self,
        x: ArrayLike,
        neuron_selection: Any = None,
        batch_size: int | None = None,
        verbose: int = 1,
        per_token: bool = True,
    ) -> np.ndarray | list[np.ndarray | None]:
        """Explain the selected output neuron (or region) for every sample.

        Parameters
        ----------
        x : array, tensor, list of arrays, or tf.data.Dataset
            The samples, shaped like the model's input with a batch axis (a list with one array
            per input for a model with several inputs). A dataset yields batches of ``x`` or
            tuples ``(x, ...)`` of which only ``x`` is used.
        neuron_selection : int, sequence of int, or array shaped like the output, optional
            With ``neuron_selection_mode="index"``: the output neuron (index into the
            flattened output), one for all samples or one per sample. In any mode, an array
            shaped like one sample's output (or with a leading axis of one per sample) of
            weights or a 0/1 mask (float or bool; an integer array of rank > 1 too) explains
            ``Σ mask ⊙ output``, a class over a region of a segmentation map;
            ``neuron_selection_mode`` is then ignored.
        batch_size : int, optional
            Samples per backward pass (default 32).
        verbose : int
            1 (default): a Keras progress bar over the batches, when there is more than one;
            0: silent.
        per_token : bool
            For an input of token ids: one score per token, shaped like the ids (default), or
            the full map at the embedding vectors, ``ids.shape + (d,)`` (``False``). Scores
            are the sum over the embedding axis for attribution methods and the L2 norm for
            signal methods (:attr:`token_reduction`). Other inputs ignore it.

        Returns
        -------
        numpy.ndarray or list of (numpy.ndarray or None)
            The explanation, shaped like ``x`` (one array per input for several inputs, in
            input order). An input of ids is explained at its embedding vectors (summed with
            the position and segment embeddings added to them) and an integer input read as a
            number at the float it becomes (see the README, "Text and other integer inputs");
            an input that only carries masks or indices is not explained: ``None``.

        Raises
        ------
        ValueError
            For data of the wrong rank, shape or type, an empty batch, NaN or infinite values
            (naming their number and the first sample), or a neuron index out of range; with
            what was expected and what came.
        """
        self._check_ready()
        self._check_captured_weights()
        if isinstance(x, tf.data.Dataset):
            return self._analyze_dataset(x, neuron_selection, verbose, per_token)
        inputs = self._validate_inputs(x)
        _checks.finite_values(inputs, "input")
        self._warn_if_unreadable_probabilities(inputs)
        n = int(inputs[0].shape[0])
        selection = self._validate_selection(neuron_selection, n)
        batch_size = _checks.positive_int(
            DEFAULT_BATCH_SIZE if batch_size is None else batch_size, "batch_size"
        )
        fn = self._compiled_fn(selection.dtype != tf.int32)
        parts: list[list[np.ndarray]] = [[] for _ in self._program.explained_slots]
        n_batches = -(-n // batch_size)
        progbar = (
            keras.utils.Progbar(n_batches, unit_name="batch") if verbose and n_batches > 1 else None
        )
        for index, start in enumerate(range(0, n, batch_size)):
            stop = min(start + batch_size, n)
            out = fn([t[start:stop] for t in inputs], selection[start:stop])
            for i, o in enumerate(out):
                parts[i].append(o.numpy())
            if progbar is not None:
                progbar.update(index + 1)
        results = [np.concatenate(p, axis=0) for p in parts]
        self._check_finite_results(results)
        return self._results(results, per_token)

    def _results(
        self, maps: list[np.ndarray], per_token: bool, stacklevel: int = 4
    ) -> np.ndarray | list[np.ndarray | None]:
        """From the maps at the explained points to what :meth:`analyze` returns: per-token
        scores for ids inputs (unless ``per_token`` is false), ``None`` for inputs that are not
        explained, one array (not a list) for a single-input model."""
        self._warn_if_zero(maps, stacklevel=stacklevel)
        found = iter(maps)
        results: list[np.ndarray | None] = []
        for point in self._program.points:
            if point.slot is None:
                results.append(None)
                continue
            r = next(found)
            if per_token and point.kind == "embedding":
                axes = tuple(range(point.ids_rank, r.ndim))
                if self.token_reduction == "norm":
                    r = np.sqrt(np.sum(np.square(r, dtype=np.float64), axis=axes)).astype(r.dtype)
                else:
                    r = np.sum(r, axis=axes, dtype=np.float64).astype(r.dtype)
            results.append(r)
        return results if self._multi_input else results[0]

    def _analyze_dataset(
        self,
        dataset: tf.data.Dataset,
        neuron_selection: Any,
        verbose: int = 1,
        per_token: bool = True,
    ):
        # analyze has no `steps`: an endless dataset would fill memory with results for ever.
        _checks.finite_dataset(dataset, "pass a finite one, e.g. `dataset.take(n)` for n batches")
        region = _checks.is_region(
            neuron_selection, self.neuron_selection_mode, tuple(self._program.output_shape[1:])
        )
        per_sample = neuron_selection is not None and np.ndim(neuron_selection) == 1 + (
            self._region_rank if region else 0
        )
        if per_sample:  # checked once, whole, before the first batch
            neuron_selection = np.asarray(neuron_selection)
            self._validate_selection(neuron_selection, len(neuron_selection))
        parts = None
        offset = 0
        cardinality = int(dataset.cardinality())
        progbar = (
            keras.utils.Progbar(cardinality if cardinality > 0 else None, unit_name="batch")
            if verbose and cardinality != 1
            else None
        )
        for element in dataset:
            if isinstance(element, (tuple, list)) and not self._multi_input:
                element = element[0]
            elif (
                isinstance(element, tuple)
                and self._multi_input
                and len(element) > 0
                and isinstance(element[0], (tuple, list))
            ):
                element = element[0]
            # An empty batch (a dataset may end with one) adds no rows; the compiled pass
            # returns them without running the model.
            inputs = self._validate_inputs(element, allow_empty=True, offset=offset)
            _checks.finite_values(inputs, "input", offset=offset)
            n = int(inputs[0].shape[0])
            sel = neuron_selection
            if per_sample:
                _selection_covers(sel, offset + n, at_least=True)
                sel = sel[offset : offset + n]
            selection = self._validate_selection(sel, n)
            out = self._compiled_fn(selection.dtype != tf.int32)(inputs, selection)
            if parts is None:
                parts = [[] for _ in out]
            for i, o in enumerate(out):
                parts[i].append(o.numpy())
            offset += n
            if progbar is not None:
                progbar.add(1)
        if parts is None:
            raise ValueError("The dataset yielded no batches: nothing to analyze.")
        if offset == 0:
            raise ValueError("The dataset yielded only empty batches: nothing to analyze.")
        if per_sample:
            _selection_covers(neuron_selection, offset, at_least=False)
        results = [np.concatenate(p, axis=0) for p in parts]
        self._check_finite_results(results)
        # analyze's caller, past this method and _results
        return self._results(results, per_token, stacklevel=5)

    def _check_finite_results(self, results: list[np.ndarray]) -> None:
        """Explanations with NaN or infinite values (the inputs were checked finite): refuse
        them if a weight of the model is not finite, naming it; else warn that the backward
        signal overflowed."""
        bad = sum(int(r.size - np.count_nonzero(np.isfinite(r))) for r in results)
        if not bad:
            return
        _checks.finite_weights(self.model)
        warnings.warn(
            f"{type(self).__name__}: the explanations hold {bad} NaN or infinite values, from "
            "finite inputs and weights: the backward signal overflowed the model's dtype on "
            "the way (a deep network that amplifies it layer after layer). "
            + (
                "`renormalize=True` keeps it at a common scale."
                if self.needs_patterns and not self._renormalize
                else "Try a float64 model, or another method."
            ),
            RuntimeWarning,
            stacklevel=4,
        )

    def _warn_if_zero(self, results: list[np.ndarray], stacklevel: int = 3) -> None:
        """One warning naming the samples whose explanation is zero everywhere (all inputs)."""
        zero = np.ones(results[0].shape[0], dtype=bool)
        for r in results:
            zero &= ~np.any(r.reshape(r.shape[0], -1) != 0, axis=1)
        if not zero.any():
            return
        indices = np.flatnonzero(zero)
        shown = ", ".join(str(i) for i in indices[:10]) + (", ..." if len(indices) > 10 else "")
        seed = (
            "the selected output's value is 0 (this method starts the backward pass from it), "
            if self.seed_with_value
            else ""
        )
        warnings.warn(
            f"{type(self).__name__}: the explanation is zero everywhere for "
            f"{len(indices)} of {len(zero)} samples (indices {shown}). This happens when the "
            f"backward signal dies on the way: {seed}every ReLU between the input and the "
            "selected output is inactive for that sample (a dead or untrained network, an "
            "input far from the training data), or a rule that rectifies the signal (Guided "
            "BackProp, DeConvNet, LRP-αβ) removes all of it. Check the model's output for these "
            "samples, or try another method.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )

    @property
    def _multi_input(self) -> bool:
        return len(self._program.inputs) > 1

    def _validate_inputs(
        self, x: Any, allow_empty: bool = False, offset: int = 0
    ) -> list[tf.Tensor]:
        inputs = _checks.model_inputs(
            x, self._program.input_specs, name="input", allow_empty=allow_empty, offset=offset
        )
        for point in self._program.points:
            lookup = point.lookup
            if lookup is not None and lookup.inputs[0] == self._program.inputs[point.index]:
                _checks.token_ids(
                    inputs[point.index], lookup.table.vocabulary, point.index, offset=offset
                )
        return inputs

    @property
    def _region_rank(self) -> int:
        return len(self._program.output_shape) - 1

    def _validate_selection(self, neuron_selection: Any, n: int) -> tf.Tensor:
        return _checks.neuron_selection(
            neuron_selection,
            self.neuron_selection_mode,
            n,
            self.num_outputs,
            output_shape=tuple(self._program.output_shape[1:]),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model.name!r}, "
            f"neuron_selection_mode={self.neuron_selection_mode!r})"
        )


def _selection_covers(selection: np.ndarray, n: int, at_least: bool) -> None:
    """Refuse a per-sample ``neuron_selection`` shorter than the ``n`` samples a dataset has
    given so far (``at_least``), or, at its end, of another length than its ``n`` samples."""
    if len(selection) < n or (not at_least and len(selection) != n):
        held = f"at least {n}" if at_least else str(n)
        raise ValueError(
            f"neuron_selection has {len(selection)} entries, one per sample, but the dataset "
            f"holds {held} samples: pass one index per sample of the whole dataset, or one int "
            "for all."
        )
