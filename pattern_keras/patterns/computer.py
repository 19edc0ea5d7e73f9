"""The PatternComputer: one streaming pass over the data, statistics summed on the device.

Per batch, the model is replayed by the engine (:func:`pattern_keras.engine.forward`); for each
linear layer its input ``x`` and pre-activation ``z`` give the statistics of
:mod:`pattern_keras.patterns.statistics`. A convolution's per-neuron sums over batch and
positions are kernel gradients (``Σ_{n,p} patch_p(x_n)·u_{n,p}`` is the gradient of
``conv(x, K)`` with respect to ``K`` for upstream ``u``), so no image patch is ever
materialized. The per-batch ops run in float32 on shifted values (float64 for a float64 model;
float32 under the mixed policies too, whose float16 sums over a batch's positions would
overflow); the sums are cast to float64, all-reduced across replicas (``tf.distribute``), and
accumulated in float64 variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pattern_keras import _checks, engine
from pattern_keras.layers import Op, shared_kernels
from pattern_keras.layers.recurrent import cell_linear_ops, cell_values
from pattern_keras.patterns.fingerprint import model_fingerprint
from pattern_keras.patterns.lock import CheckpointLock
from pattern_keras.patterns.statistics import (
    ESTIMATORS,
    SUMS,
    LayerStatistics,
    PatternStatistics,
    needed_statistics,
    new_fit_id,
)

__all__ = ["PatternComputer"]


@dataclasses.dataclass(eq=False)
class _LayerPlan:
    """What to accumulate for one pattern key (possibly several calls of one layer)."""

    key: str
    ops: list[Op]
    pattern_type: str
    rectified: bool
    shiftable: bool
    stats: tuple[str, ...]

    @property
    def part(self):
        return self.ops[0].linear


class PatternComputer:
    """Fits patterns: the statistics of every linear layer's signal estimator, from data.

    Parameters
    ----------
    model : keras.Model
        The Functional or Sequential model to fit patterns for (a final softmax is ignored).
    pattern_type : {"relu", "linear", "filter"} or dict
        The signal estimator: ``"relu"`` the two-component estimator (default), ``"linear"``,
        or ``"filter"`` (``w/wᵀw``, the estimator behind DeConvNet/Guided BackProp, for
        comparison). A dict ``{layer key: type}`` overrides it per layer (keys left out get
        ``"relu"``).
    strategy : tf.distribute.Strategy, optional
        Spread the statistics over the strategy's replicas (and hosts); sums are all-reduced.
    fold_batch_norm : bool
        Fold inference-mode BatchNormalization into the preceding linear layer first, so
        patterns belong to the effective kernel (default ``True``).
    program : engine.Program, optional
        The model's program, when the caller has built it already (a pattern analyzer shares
        its own, so the patterns it sets are checked against the ops its rules read);
        ``fold_batch_norm`` is then the program's.
    both_regimes : bool
        Keep the sums of the negative regime for every layer, also those that feed a ReLU
        (default ``False``: only where the estimator uses them). The evaluation compares
        estimators on such statistics.

    Attributes
    ----------
    keys : list of str
        The pattern keys: every linear layer (Dense, EinsumDense, convolutions) on the path
        from input to output that the pattern methods' backward pass reaches (not the query
        and key projections of attention, whose signal the held attention weights stop).
    """

    def __init__(
        self,
        model: Any,
        pattern_type: str | Mapping[str, str] = "relu",
        strategy: tf.distribute.Strategy | None = None,
        fold_batch_norm: bool = True,
        *,
        program: engine.Program | None = None,
        both_regimes: bool = False,
    ) -> None:
        self.model = model
        self.strategy = strategy
        if program is None:
            program = engine.Program(model, fold_batch_norm=fold_batch_norm)
        elif program.model is not model:
            raise ValueError("program must be the Program of the same model.")
        self.program = program
        for op in program.ops:
            # Patterns serve analyzers that refuse such a model (unless their held pass never
            # reaches the op: in a product of queries and keys).
            if op.kind == "opaque" and program.reached_when_held(op):
                raise ValueError(op.refusal)
        grouped: dict[str, list[Op]] = {}
        # The query and key projections of attention are not reached by a pass that holds the
        # attention weights: they need no pattern. A recurrent layer's candidate kernels are
        # linear ops inside its cell.
        reached = [op for op in self.program.ops if self.program.reached_when_held(op)]
        for op in cell_linear_ops(reached):
            grouped.setdefault(op.pattern_key, []).append(op)
        if not grouped:
            raise ValueError(
                f"Model '{model.name}' has no Dense or convolution layer on the "
                "path from input to output: there is nothing to fit."
            )
        types = _resolve_pattern_types(pattern_type, list(grouped))
        self.plans = {}
        for key, ops in grouped.items():
            rectified = all(op.rectified for op in ops) and not both_regimes
            self.plans[key] = _LayerPlan(
                key=key,
                ops=ops,
                pattern_type=types[key],
                rectified=rectified,
                shiftable=all(op.linear.shiftable for op in ops),
                stats=needed_statistics(types[key], rectified),
            )
        self.pattern_types = types
        # The last fit's accumulators and traced step, for the next fit to reuse; a fit
        # running in another thread keeps its own (see _state).
        self._cached_state: _State | None = None
        self._state_guard = threading.Lock()

    def fingerprint(self) -> dict[str, Any]:
        """The model's fingerprint now.

        It hashes every weight, so it is taken when patterns are fitted, set or loaded (the
        model may have been trained since this computer was built), not on every access.

        Returns
        -------
        dict
            See :func:`~pattern_keras.patterns.fingerprint.model_fingerprint`.
        """
        return model_fingerprint(self.model)

    @property
    def keys(self) -> list[str]:
        return list(self.plans)

    # -- public API -----------------------------------------------------------------------

    def compute(
        self,
        data: Any,
        batch_size: int = 32,
        steps: int | None = None,
        verbose: int = 1,
        strategy: tf.distribute.Strategy | None = None,
        checkpoint_path: str | None = None,
        checkpoint_every: int | None = None,
    ):
        """Fit the patterns on ``data``: :meth:`compute_statistics`, then the estimators.

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
        Patterns
            One pattern per linear layer, shaped like its kernel.
        """
        return self.compute_statistics(
            data,
            batch_size=batch_size,
            steps=steps,
            verbose=verbose,
            strategy=strategy,
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
        ).patterns()

    def compute_statistics(
        self,
        data: Any,
        batch_size: int = 32,
        steps: int | None = None,
        verbose: int = 1,
        strategy: tf.distribute.Strategy | None = None,
        checkpoint_path: str | None = None,
        checkpoint_every: int | None = None,
    ) -> PatternStatistics:
        """One streaming pass over ``data``, returning the sufficient statistics.

        Parameters
        ----------
        data : array, list of arrays, tf.data.Dataset, generator or keras.utils.PyDataset
            A numpy array (batched here with ``batch_size``), a dataset of batches yielding
            ``x``, ``(x, y)`` or ``(x, y, w)`` (only ``x`` is used), a Python generator of such
            batches, or a ``PyDataset``.
        batch_size : int
            Global batch size for array data.
        steps : int, optional
            Number of batches to use (required for an endless generator).
        verbose : int
            1: a Keras progress bar; 0: silent.
        strategy : tf.distribute.Strategy, optional
            Overrides the constructor's strategy.
        checkpoint_path : str, optional
            Write the statistics there every ``checkpoint_every`` batches (atomically) and at
            the end; if the file exists at start, resume from it, skipping the batches it
            already counted. Refuses a checkpoint of another model or pattern type.
        checkpoint_every : int, optional
            Batches between checkpoints (default: only at the end).

        Returns
        -------
        PatternStatistics
        """
        strategy = strategy or self.strategy or tf.distribute.get_strategy()
        if checkpoint_every is not None:
            checkpoint_every = _checks.positive_int(checkpoint_every, "checkpoint_every")
            if not checkpoint_path:
                raise ValueError("checkpoint_every needs a checkpoint_path.")
        _checks.finite_weights(self.model)
        # Held from before the checkpoint is read until the last write: a second fit on the
        # same file waits for nothing and mixes nothing, it is refused. Only the chief writes
        # (and so locks); the other workers of a multi-worker fit only read it.
        lock = (
            CheckpointLock(checkpoint_path)
            if checkpoint_path and _is_chief(strategy)
            else contextlib.nullcontext()
        )
        with lock:
            source = self._as_dataset(data, batch_size, steps)
            resumed = None
            if checkpoint_path and os.path.exists(checkpoint_path):
                resumed = self._load_checkpoint(checkpoint_path)
                # By samples, not batches: a resumed fit may use another batch size.
                source.dataset = _skip_samples(source.dataset, resumed.n_samples)
            distributed = strategy.experimental_distribute_dataset(source.dataset)
            state = self._state(strategy, distributed.element_spec, resumed)
            try:
                return self._stream(
                    source, distributed, state, resumed, verbose, checkpoint_path, checkpoint_every
                )
            finally:
                state.busy = False

    def _stream(
        self, source, distributed, state, resumed, verbose, checkpoint_path, checkpoint_every
    ) -> PatternStatistics:
        """The pass over the batches: accumulate, checkpoint, and refuse a bad batch."""
        strategy = state.strategy
        progbar = keras.utils.Progbar(source.target, unit_name="batch") if verbose else None
        done = start = resumed.n_batches if resumed else 0
        if progbar is not None and done and (source.target is None or done <= source.target):
            progbar.update(done)
        chief = _is_chief(strategy)
        keep = checkpoint_path if chief else None

        def save_and_raise(error: BaseException, done: int) -> None:
            if keep and done > start:
                state.statistics(done).save(keep)  # keep what was accumulated
            raise error

        iterator = iter(distributed)
        for batch in iterator:
            before = int(state.n_samples.numpy())
            bad, overflow = state.step(batch)
            if bad:
                del iterator
                message = _bad_batch_message(
                    bad, overflow, done + 1, before + _first_bad(strategy, batch, state.dtypes)
                )
                save_and_raise(
                    ValueError(
                        message
                        + (
                            f" and resume from the checkpoint '{checkpoint_path}'."
                            if checkpoint_path and done > start
                            else "."
                        )
                    ),
                    done,
                )
            done += 1
            if progbar is not None:
                progbar.update(done)
            if checkpoint_every and done % checkpoint_every == 0 and chief:
                state.statistics(done).save(checkpoint_path)
        # Free the (multi-worker) iterator now, while the workers are still in step: deleting
        # it waits on the other workers, so the chief's final write must come after.
        del iterator
        if source.failure:  # the user's generator or PyDataset raised: their error, as it was
            save_and_raise(source.failure[0], done)
        if done == 0:
            raise ValueError("The data yielded no batches: nothing to fit patterns on.")
        if int(state.n_samples.numpy()) == 0:
            raise ValueError(
                f"The data yielded {done} batch(es) but no samples: nothing to fit patterns on."
            )
        stats = state.statistics(done)
        if keep:
            stats.save(keep)
        return stats

    # -- data -------------------------------------------------------------------------------

    @property
    def _input_names(self) -> list[str]:
        inputs = getattr(self.model, "inputs", None) or []
        names = [str(getattr(t, "name", "")) for t in inputs]
        if len(names) != len(self.program.inputs) or len(set(names)) != len(names):
            names = [f"input_{i}" for i in range(len(self.program.inputs))]
        return names

    def _select_x(self, element: Any) -> Any:
        """``x`` from a batch in Keras's forms (``x``, ``(x, y)``, ``(x, y, sample_weight)``,
        ``x`` a dict keyed by input name for several inputs); see :func:`_checks.keras_x`."""
        return _checks.keras_x(element, self._input_names)

    def _as_dataset(self, data: Any, batch_size: int, steps: int | None) -> _Source:
        """The data as a dataset of ``x`` batches, checked before the first batch is read.

        Every form gets the same checks (numeric, real, in the model's range, shaped like its
        inputs): arrays here, a generator's or ``PyDataset``'s batches one by one as they come,
        a ``tf.data`` pipeline by its element spec here and its values in the step.
        """
        batch_size = _checks.positive_int(batch_size, "batch_size")
        if steps is not None:
            steps = _checks.positive_int(steps, "steps")
        if isinstance(data, tf.data.Dataset):
            source = self._dataset_source(data, steps)
        elif isinstance(data, keras.utils.PyDataset):
            length = len(data)
            target = min(steps, length) if steps else length
            source = self._iterator_source(data[i] for i in range(target))
            source.target = target
        elif (
            isinstance(data, (np.ndarray, list, tuple, dict))
            or tf.is_tensor(data)
            or (hasattr(data, "__array__") and not isinstance(data, Iterator))
        ):
            source = self._array_source(data, batch_size, steps)
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, set, frozenset)):
            source = self._iterator_source(iter(data))
            source.target = steps
        else:
            raise ValueError(
                f"Cannot read data of type {type(data).__name__}: pass a numpy array (or a "
                "list or dict of them, one per input), a tuple (x, y), a tf.data.Dataset, a "
                "generator of batches, or a keras.utils.PyDataset."
            )
        dataset = source.dataset
        if steps is not None:
            dataset = dataset.take(steps)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        source.dataset = dataset.with_options(options)
        return source

    def _dataset_source(self, data: tf.data.Dataset, steps: int | None) -> _Source:
        _checks.dense(data.element_spec, "dataset's element")
        if steps is None:
            _checks.finite_dataset(data, "pass `steps`, the number of batches to fit on")
        dataset = data.map(lambda *e: self._select_x(e if len(e) > 1 else e[0]))
        _checks.dataset_dtypes(dataset.element_spec)
        # The values keep their dtype here; the step casts them to the model's after counting
        # those the cast would make infinite (see _State._checked_inputs).
        return _Source(dataset.map(lambda *x: self._check_batch_shapes(x)), steps)

    def _array_source(self, data: Any, batch_size: int, steps: int | None) -> _Source:
        n_inputs = len(self.program.inputs)
        if isinstance(data, (tf.RaggedTensor, tf.SparseTensor)):
            _checks.dense(data)
        if isinstance(data, list) and n_inputs == 1 and len(data) > 1:
            # As in Keras, a list is x (one array per input), not (x, y) nor batches.
            raise ValueError(
                f"The data is a list of {len(data)} values for a model with 1 input: pass "
                "x, or (x, y) as a tuple; for a sequence of batches, a generator or a "
                "tf.data.Dataset."
            )
        x = self._select_x(data)
        arrays = _checks.model_inputs(x, self.program.input_specs, name="data", as_numpy=True)
        n = arrays[0].shape[0]
        dataset = tf.data.Dataset.from_tensor_slices(
            arrays[0] if n_inputs == 1 else tuple(arrays)
        ).batch(batch_size)
        batches = -(-n // batch_size)
        return _Source(dataset, min(steps, batches) if steps else batches)

    def _iterator_source(self, iterator) -> _Source:
        failure: list[BaseException] = []
        dataset = _from_iterator(iterator, self._select_x, self.program.input_specs, failure)
        return _Source(dataset, None, failure)

    def _check_batch_shapes(self, x: tuple[Any, ...]) -> Any:
        """Inside the pipeline (at trace time): each input's static shape against the model's."""
        for t, spec in zip(x, self.program.input_specs):
            _checks.batch_shape(t.shape, spec)
        return x if len(x) > 1 else x[0]

    def _state(self, strategy, element_spec, resumed) -> _State:
        """This fit's accumulators and traced step, marked busy until the fit returns.

        The last fit's, reset, when this fit has the same strategy and batch spec and no other
        fit uses them (a refit, or a fit on new data of the same kind, traces nothing);
        otherwise new ones. Two fits at once (two threads) so never share accumulators.
        """
        with self._state_guard:
            cached = self._cached_state
            if (
                cached is not None
                and not cached.busy
                and cached.strategy is strategy
                and cached.element_spec == element_spec
            ):
                cached.busy = True
            else:
                cached = None
        if cached is not None:
            try:
                cached.reset(resumed)
            except BaseException:
                cached.busy = False
                raise
            return cached
        state = _State(self, strategy, resumed, element_spec)
        state.busy = True
        with self._state_guard:
            if self._cached_state is None or not self._cached_state.busy:
                self._cached_state = state
        return state

    def _load_checkpoint(self, path: str) -> PatternStatistics:
        from pattern_keras.patterns.io import _OtherModel

        expected = {key: plan.part.kernel_shape for key, plan in self.plans.items()}
        try:
            # Layout, shapes and the model are checked before any array is read.
            stats = PatternStatistics.load(path, expected=expected, fingerprint=self.fingerprint())
        except _OtherModel as err:
            raise ValueError(
                f"Checkpoint '{path}' was written for another model: {err.mismatch}."
            ) from None
        for key, plan in self.plans.items():
            layer = stats.layers[key]
            if (layer.pattern_type, layer.rectified) != (plan.pattern_type, plan.rectified):
                raise ValueError(
                    f"Checkpoint '{path}' was written with another pattern type for layer "
                    f"'{key}': {layer.pattern_type!r} (rectified={layer.rectified}) instead "
                    f"of {plan.pattern_type!r} (rectified={plan.rectified})."
                )
        return stats


@dataclasses.dataclass
class _Source:
    """The data of a fit as a dataset of ``x`` batches, the number of batches when known, and
    where an exception of the user's generator or ``PyDataset`` is kept for the caller."""

    dataset: tf.data.Dataset
    target: int | None
    failure: list[BaseException] = dataclasses.field(default_factory=list)


class _State:
    """The float64 accumulators and the compiled per-batch functions of one fit."""

    #: Whether a fit is using this state now (set and cleared by PatternComputer).
    busy = False

    def __init__(
        self,
        computer: PatternComputer,
        strategy,
        resumed: PatternStatistics | None,
        element_spec=None,
    ):
        self.computer = computer
        self.strategy = strategy
        #: The model's input dtypes: the step casts the data to them.
        self.dtypes = [tf.as_dtype(dtype) for _, dtype in computer.program.input_specs]
        plans = computer.plans
        self.shift_x = {k: tf.Variable(0.0, dtype=tf.float32, trainable=False) for k in plans}
        self.shift_y = {
            k: tf.Variable(tf.zeros(p.part.neuron_shape), trainable=False) for k, p in plans.items()
        }
        self.sums = {}
        self.n_samples = tf.Variable(tf.constant(0, tf.int64), trainable=False)
        for key, plan in plans.items():
            part = plan.part
            self.sums[key] = {
                name: tf.Variable(
                    tf.zeros(
                        part.neuron_shape if SUMS[name].over == "neuron" else part.kernel_shape,
                        tf.float64,
                    ),
                    trainable=False,
                )
                for name in plan.stats
            }
        self.element_spec = element_spec
        self.reset(resumed)
        # Partials (no __code__): each fit's traces are counted on their own by TensorFlow.
        # Traced once for the data's element spec (batch axis None): a final partial batch
        # does not trace the step a second time.
        signature = None if element_spec is None else [element_spec]
        step_signature = None if signature is None else signature + [tf.TensorSpec((), tf.bool)]
        self._init_fn = tf.function(
            functools.partial(_State._init_step, self), input_signature=signature, autograph=False
        )
        self._step_fn = tf.function(
            functools.partial(_State._step, self), input_signature=step_signature, autograph=False
        )

    def reset(self, resumed: PatternStatistics | None = None) -> None:
        """Start a new fit: zero sums and no shifts, or the state of a resumed checkpoint."""
        # Hashed once per fit, not per checkpoint: the weights do not change during a fit.
        self.fingerprint = self.computer.fingerprint()
        # The fit's identity, kept by a resumed fit: merging two files of one fit is refused.
        self.fit_ids = resumed.fit_ids if resumed is not None else frozenset([new_fit_id()])
        self.shifted = False
        self.n_samples.assign(0)
        for key in self.sums:
            self.shift_x[key].assign(0.0)
            self.shift_y[key].assign(tf.zeros_like(self.shift_y[key]))
            for var in self.sums[key].values():
                var.assign(tf.zeros_like(var))
        if resumed is not None:
            for key, layer in resumed.layers.items():
                self.shift_x[key].assign(layer.shift_x)
                self.shift_y[key].assign(layer.shift_y.astype(np.float32))
                for name, var in self.sums[key].items():
                    var.assign(layer.sums[name])
            self.n_samples.assign(resumed.n_samples)
            self.shifted = True

    # -- per replica --------------------------------------------------------------------------

    # A replica (or a whole step) without samples contributes zeros without running the
    # model: see engine.if_samples.

    @staticmethod
    def _op_moments(op: Op, values) -> tuple[Any, Any, Any, Any]:
        """``(Σx, number of x values, Σy per neuron, number of y values per neuron)`` of one
        op's input and output without bias, in float32: what the shifts are taken from."""
        dtype = _statistics_dtype(values[op.outputs[0]])
        x = tf.cast(values[op.inputs[0]], dtype)
        y = _without_bias(op, tf.cast(values[op.outputs[0]], dtype))
        return (
            tf.cast(tf.reduce_sum(x), tf.float32),
            tf.cast(tf.size(x), tf.float32),
            tf.cast(op.linear.per_neuron_sum(y), tf.float32),
            _count_per_neuron(op, y),
        )

    def _checked_inputs(self, inputs) -> tuple[list[Any], Any, Any]:
        """The batch cast to the model's dtypes, the number of its values that are not finite
        there (NaN or infinite in the data, or finite values too large for the dtype), and the
        number of those that were finite in the data (too large)."""
        raw = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
        cast = [tf.cast(t, dtype) for t, dtype in zip(raw, self.dtypes)]
        bad = tf.add_n([_count_non_finite(t) for t in cast])
        not_finite_before = tf.add_n([_count_non_finite(t) for t in raw])
        return cast, bad, bad - not_finite_before

    def _replica_moments(self, inputs):
        inputs, _, _ = self._checked_inputs(inputs)
        plans = self.computer.plans

        def moments():
            values = _replayed(self.computer.program, inputs)
            return {key: self._op_moments(plan.ops[0], values) for key, plan in plans.items()}

        def nothing():
            zero = tf.zeros((), tf.float32)
            return {
                key: (
                    zero,
                    zero,
                    tf.zeros(plan.part.neuron_shape, tf.float32),
                    tf.zeros(plan.part.neuron_shape, tf.float32),
                )
                for key, plan in plans.items()
            }

        out = engine.if_samples(inputs[0], moments, nothing)
        out["__n__"] = tf.cast(tf.shape(inputs[0])[0], tf.int64)
        return out

    def _plan_sums(self, values, shifts) -> dict[str, dict[str, Any]]:
        """The float64 sums of every pattern key from the replayed ``values``, with the shifts
        ``{key: (shift_x, shift_y)}``."""
        out = {}
        for key, plan in self.computer.plans.items():
            total = None
            for op in plan.ops:
                op_sums = self._op_sums(plan, op, values, *shifts[key])
                total = op_sums if total is None else {n: total[n] + op_sums[n] for n in total}
            out[key] = total
        return out

    def _no_sums(self) -> dict[str, dict[str, Any]]:
        """Zeros shaped like :meth:`_plan_sums`: what a replica without samples adds."""
        return {
            key: {
                name: tf.zeros(
                    plan.part.neuron_shape
                    if SUMS[name].over == "neuron"
                    else plan.part.kernel_shape,
                    tf.float64,
                )
                for name in plan.stats
            }
            for key, plan in self.computer.plans.items()
        }

    @property
    def _shifts_in_step(self) -> bool:
        """Whether the first batch's step takes the shifts itself (a single replica): from the
        same replay of the model as its sums, where a pass of their own would replay the first
        batch twice. Several replicas need the means over all of them before any sum."""
        return self.strategy.num_replicas_in_sync == 1

    def _replica_sums(self, inputs, first):
        """The batch's sums; with :attr:`_shifts_in_step`, also the shifts they were taken
        with (under ``"__shifts__"``): the variables', or the batch's means when ``first``."""
        inputs, bad, overflow = self._checked_inputs(inputs)
        plans = self.computer.plans

        def current():
            return {
                key: (tf.identity(self.shift_x[key]), tf.identity(self.shift_y[key]))
                for key in plans
            }

        def sums():
            # One read (and BatchNorm fold) of each kernel for the replay and the statistics.
            with shared_kernels():
                return statistics()

        def statistics():
            values = _replayed(self.computer.program, inputs)
            if not self._shifts_in_step:
                return self._plan_sums(values, current())

            def from_batch():
                shifts = {}
                for key, plan in plans.items():
                    sum_x, count_x, sum_y, count_y = self._op_moments(plan.ops[0], values)
                    shift_x = (
                        tf.math.divide_no_nan(sum_x, count_x)
                        if plan.shiftable
                        else tf.zeros((), tf.float32)
                    )
                    shifts[key] = (shift_x, tf.math.divide_no_nan(sum_y, count_y))
                return shifts

            shifts = tf.cond(first, from_batch, current)
            out = self._plan_sums(values, shifts)
            out["__shifts__"] = shifts
            return out

        def nothing():
            out = self._no_sums()
            if self._shifts_in_step:
                out["__shifts__"] = current()
            return out

        out = engine.if_samples(inputs[0], sums, nothing)
        out["__n__"] = tf.cast(tf.shape(inputs[0])[0], tf.int64)
        out["__bad__"] = bad
        out["__overflow__"] = overflow
        return out

    def _op_sums(self, plan: _LayerPlan, op: Op, values, shift_x, shift_y) -> dict[str, Any]:
        part = op.linear
        # At least float32 whatever the layer computes in (float16 kernel sums over a batch's
        # positions overflow); float64 for a float64 model. The replay's values are cast.
        dtype = _statistics_dtype(values[op.outputs[0]])
        x = tf.cast(values[op.inputs[0]], dtype)
        z = tf.cast(values[op.outputs[0]], dtype)
        rank = len(z.shape)
        # y' = z − b − shift_y, in one pass over the output.
        offset = part.to_output(tf.cast(shift_y, dtype), rank)
        if part.bias_fn is not None:
            offset = offset + part.to_output(tf.cast(part.bias, dtype), rank)
        ys = z - offset
        positive = tf.cast(z > 0, dtype)
        kernel = tf.cast(part.kernel, dtype)
        shift_x = tf.cast(shift_x, dtype)
        if plan.shiftable and part.padded_apply is not None:
            pad, apply = part.padded_apply
            xs = pad(x) - shift_x
        elif plan.shiftable:
            apply = part.raw_apply
            xs = x - shift_x
        else:
            apply, xs = part.raw_apply, x

        def kernel_sum(u):
            # Σ_{n,p} patch_p(x'_n) u_{n,p}: the kernel gradient of the linear map. (One
            # gradient per sum: tiling the kernel to get them all from one gradient measured
            # no faster on the VGG-style benchmark and took 1.4x the memory.)
            with tf.GradientTape() as tape:
                tape.watch(kernel)
                out = apply(xs, kernel)
            return tape.gradient(out, kernel, output_gradients=u)

        def input_sum():
            # Σ_{n,p} patch_p(x'_n) is the same for every neuron where every neuron reads the
            # same patches: one neuron's column of the kernel gradient, broadcast, gives it at
            # 1/neurons of the cost (a convolution feeding a residual sum keeps both regimes,
            # so this is one of its four kernel sums).
            if not _every_neuron_reads_every_input(op, x):
                return kernel_sum(tf.ones_like(z))
            column = kernel[..., :1]
            with tf.GradientTape() as tape:
                tape.watch(column)
                out = apply(xs, column)
            return tf.broadcast_to(
                tape.gradient(out, column, output_gradients=tf.ones_like(out)), part.kernel_shape
            )

        weights = {
            "y": lambda: ys,
            "positive": lambda: positive,
            "y_positive": lambda: ys * positive,
        }
        sums = {}
        for name in plan.stats:
            what = SUMS[name]
            if what.over == "neuron" and what.weight == "one":
                value = _count_per_neuron(op, z)  # a count: the same for every neuron
            elif what.over == "neuron":
                value = part.per_neuron_sum(weights[what.weight]())
            elif what.weight == "one":
                value = input_sum()
            else:
                value = kernel_sum(weights[what.weight]())
            sums[name] = tf.cast(value, tf.float64)
        return sums

    # -- cross replica ------------------------------------------------------------------------

    def _run_and_sum(self, fn, batch):
        """``fn(batch)`` on every replica, summed over replicas (and hosts).

        With several replicas the outputs travel as one float64 vector, so a step costs one
        all-reduce, not one per tensor: per-tensor collectives made a step many times slower
        and left a multi-worker iterator slow to delete (a stall, up to a deadlock, when the
        workers leave a fit at different times).
        """
        if self.strategy.num_replicas_in_sync == 1:
            return tf.nest.map_structure(
                lambda t: self.strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None),
                self.strategy.run(fn, args=(batch,)),
            )
        specs = []

        def packed(replica_batch):
            out = fn(replica_batch)
            flat = tf.nest.flatten(out)
            specs[:] = [out, [(t.shape, t.dtype) for t in flat]]
            return tf.concat([tf.reshape(tf.cast(t, tf.float64), [-1]) for t in flat], 0)

        total = self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, self.strategy.run(packed, args=(batch,)), axis=None
        )
        structure, shapes = specs
        parts = tf.split(total, [int(np.prod(shape)) for shape, _ in shapes])
        flat = [
            tf.cast(tf.reshape(part, shape), dtype) for part, (shape, dtype) in zip(parts, shapes)
        ]
        return tf.nest.pack_sequence_as(structure, flat)

    def _init_step(self, batch):
        moments = self._run_and_sum(self._replica_moments, batch)
        n = moments.pop("__n__")
        for key, plan in self.computer.plans.items():
            sum_x, count_x, sum_y, count_y = moments[key]
            if plan.shiftable:
                self.shift_x[key].assign(tf.math.divide_no_nan(sum_x, count_x))
            self.shift_y[key].assign(tf.math.divide_no_nan(sum_y, count_y))
        return n

    def _step(self, batch, first):
        """Accumulate one batch, unless it holds a value that is not finite in the model's
        dtype; returns their number, how many of them were finite but too large, and the
        number of samples. With ``first`` (only with :attr:`_shifts_in_step`), the shifts
        are taken from this batch, and kept unless it is refused.

        The count is all-reduced with the sums, so under a multi-worker strategy every worker
        sees the same count and refuses the same batch (none waits for the others for ever).
        """
        sums = self._run_and_sum(lambda b: self._replica_sums(b, first), batch)
        n = sums["__n__"]
        overflow = sums.pop("__overflow__")
        if not self._shifts_in_step:
            return self._accumulate(sums), overflow, n
        shifts = sums.pop("__shifts__")

        def set_shifts():
            for key, (shift_x, shift_y) in shifts.items():
                self.shift_x[key].assign(shift_x)
                self.shift_y[key].assign(shift_y)
            return tf.constant(0, tf.int64)

        keep = tf.logical_and(first, tf.equal(sums["__bad__"], 0))
        with tf.control_dependencies([tf.cond(keep, set_shifts, lambda: tf.constant(0, tf.int64))]):
            return self._accumulate(sums), overflow, n

    def _accumulate(self, sums):
        """Add a batch's reduced sums to the accumulators, unless it holds a non-finite value;
        returns their number."""
        bad = sums.pop("__bad__")
        n = sums.pop("__n__")

        def accumulate():
            self.n_samples.assign_add(n)
            for key, named in sums.items():
                for name, value in named.items():
                    self.sums[key][name].assign_add(value)
            return tf.constant(0, tf.int64)

        return tf.cond(tf.equal(bad, 0), accumulate, lambda: tf.constant(0, tf.int64)) + bad

    def init_shifts(self, batch) -> None:
        """Take the shifts from this batch's means; a batch without samples (on any replica)
        leaves them for the next one."""
        # Every worker reads the same all-reduced count, so all of them agree on it.
        self.shifted = int(self._init_fn(batch)) > 0

    def step(self, batch) -> tuple[int, int]:
        """Accumulate a batch; returns the number of values that refused it (not finite in the
        model's dtype) and how many of those were finite values too large for it.

        Until the shifts are set (the first batch with samples), the batch also sets them: in
        the same replay of the model on a single replica, in a pass of its own on several
        (whose shifts need the means over all replicas before any sum).
        """
        first = not self.shifted
        if first and not self._shifts_in_step:
            self.init_shifts(batch)
            first = False
        bad, overflow, n = self._step_fn(batch, tf.constant(first))
        bad = int(bad.numpy())
        if first:
            self.shifted = not bad and int(n.numpy()) > 0
        return bad, int(overflow.numpy())

    def statistics(self, n_batches: int) -> PatternStatistics:
        layers = {}
        for key, plan in self.computer.plans.items():
            part = plan.part
            layers[key] = LayerStatistics(
                pattern_type=plan.pattern_type,
                rectified=plan.rectified,
                kernel=part.kernel.numpy(),
                out_axes=part.out_axes,
                shift_x=float(self.shift_x[key].numpy()),
                shift_y=self.shift_y[key].numpy().astype(np.float64),
                sums={name: var.numpy() for name, var in self.sums[key].items()},
            )
        return PatternStatistics(
            layers,
            n_samples=int(self.n_samples.numpy()),
            n_batches=n_batches,
            fingerprint=self.fingerprint,
            fit_ids=self.fit_ids,
        )


# ----------------------------------------------------------------------------------------------
# helpers


def _replayed(program: engine.Program, inputs) -> dict[int, Any]:
    """Every slot's value for a batch, with the inputs and outputs of the linear ops inside
    recurrent layers' cells over all samples and unmasked steps (``cell_values``)."""
    return cell_values(program.ops, engine.forward(program, inputs))


def _statistics_dtype(z: Any) -> tf.DType:
    """The dtype of a layer's per-batch statistics: float64 for a float64 layer, else float32."""
    return tf.float64 if z.dtype == tf.float64 else tf.float32


def _without_bias(op: Op, z: Any) -> Any:
    part = op.linear
    if part.bias_fn is None:
        return z
    return z - part.to_output(tf.cast(part.bias, z.dtype), len(z.shape))


def _count_non_finite(t: Any) -> Any:
    if not t.dtype.is_floating:
        return tf.constant(0, tf.int64)
    return tf.math.count_nonzero(tf.logical_not(tf.math.is_finite(t)), dtype=tf.int64)


def _first_bad(strategy, batch, dtypes) -> int:
    """Index in the (global, or this worker's) batch of the first sample with a value that is
    not finite in the model's dtype (``dtypes``, one per input)."""
    flags = None
    for component, dtype in zip(tf.nest.flatten(batch), dtypes):
        rows = []
        for part in strategy.experimental_local_results(component):
            value = np.asarray(part)
            if not np.issubdtype(value.dtype, np.floating):
                rows.append(np.zeros(len(value), bool))
                continue
            with np.errstate(over="ignore"):
                value = value.astype(dtype.as_numpy_dtype)
            rows.append(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))
        row = np.concatenate(rows)
        flags = row if flags is None else flags | row
    hits = np.flatnonzero(flags)
    return int(hits[0]) if len(hits) else 0


def _bad_batch_message(bad: int, overflow: int, batch: int, first: int) -> str:
    """Why batch number ``batch`` (from 1) was refused, up to the advice's end."""
    what = []
    if bad > overflow:
        n = bad - overflow
        what.append(f"{n} NaN or infinite value{'s' if n > 1 else ''}")
    if overflow:
        what.append(
            f"{overflow} finite value{'s' if overflow > 1 else ''} too large for the model's "
            "input dtype (they would overflow to infinity)"
        )
    return (
        f"The data holds {' and '.join(what)} in batch {batch} (the first in sample {first} of "
        "the stream, counting from 0); nothing of that batch was accumulated. Clean, rescale or "
        "drop those samples"
    )


def _skip_samples(dataset: tf.data.Dataset, n_skip: int) -> tf.data.Dataset:
    """The stream of batches without its first ``n_skip`` samples (a batch that straddles the
    boundary is cut), whatever the batch size."""
    if n_skip <= 0:
        return dataset
    skip = tf.constant(n_skip, tf.int64)

    def size(element):
        first = element[0] if isinstance(element, tuple) else element
        return tf.shape(first, out_type=tf.int64)[0]

    def scan(seen, *element):
        element = element if len(element) > 1 else element[0]
        return seen + size(element), (seen, element)

    def keep(seen, element):
        return seen + size(element) > skip

    def cut(seen, element):
        start = tf.maximum(skip - seen, 0)
        return tf.nest.map_structure(lambda t: t[start:], element)

    return (
        dataset.scan(tf.constant(0, tf.int64), scan)
        .filter(lambda seen, *e: keep(seen, e if len(e) > 1 else e[0]))
        .map(lambda seen, *e: cut(seen, e if len(e) > 1 else e[0]))
    )


def _every_neuron_reads_every_input(op: Op, x: Any) -> bool:
    """Whether the op is a Keras Dense layer or ungrouped convolution (not a subclass, whose
    registered map may differ): ``z[p, o] = Σ_i K[i, o] patch_p(x)[i]``, the same patches for
    every output neuron ``o`` (the last kernel axis), so that a kernel sliced to one neuron is
    the same map for that neuron."""
    part = op.linear
    layers = keras.layers
    rank = len(part.kernel_shape)
    return (
        type(op.layer) in (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D)
        and getattr(op.layer, "groups", 1) == 1
        and tuple(a % rank for a in part.out_axes) == (rank - 1,)
        and x.shape[part.channel_axis] == part.kernel_shape[-2]
    )


def _count_per_neuron(op: Op, z: Any) -> Any:
    """Samples × positions per neuron, as a float tensor shaped like the neurons."""
    part = op.linear
    per_neuron = tf.cast(tf.size(z), tf.float32) / float(np.prod(part.neuron_shape))
    return tf.fill(part.neuron_shape, per_neuron)


def _from_iterator(iterator, select, specs, failure: list[BaseException]) -> tf.data.Dataset:
    """A dataset over the batches of a Python iterator, each checked as an array would be.

    The signature is the model's input spec (a size the model leaves open stays open, so a
    fully convolutional model takes batches of several image sizes). TensorFlow would turn an
    exception raised by the iterator (or by the checks) into an ``UnknownError`` that names
    neither its type nor, cleanly, its message: it is kept in ``failure`` instead, the dataset
    ends there, and the fit raises it as it was.
    """
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("The generator yielded no batches: nothing to fit patterns on.") from None
    # Checked here, so that a first batch of strings or of the wrong shape is named as such
    # before anything runs. An empty batch is allowed: it adds nothing (the fit refuses data
    # without any sample).
    _checked_batch(select(first), specs, 0, 0)
    structure = tuple(
        tf.TensorSpec((None,) + tuple(shape[1:]), tf.as_dtype(dtype)) for shape, dtype in specs
    )

    def generate():
        seen = 0
        try:
            for index, element in enumerate(itertools.chain([first], iterator)):
                arrays = _checked_batch(select(element), specs, index, seen)
                seen += len(arrays[0])
                yield arrays[0] if len(arrays) == 1 else tuple(arrays)
        except GeneratorExit:  # the dataset is closed early (steps reached): not a failure
            raise
        except BaseException as err:  # KeyboardInterrupt and SystemExit included
            failure.append(err)

    return tf.data.Dataset.from_generator(
        generate, output_signature=structure[0] if len(specs) == 1 else structure
    )


def _checked_batch(x: Any, specs, index: int, seen: int) -> list[np.ndarray]:
    """Batch ``index`` (from 0) of a generator as arrays of the model's dtypes, with the checks
    of array data; ``seen`` samples came before it."""
    name = "first batch" if index == 0 else f"batch {index + 1}"
    return _checks.model_inputs(x, specs, name=name, as_numpy=True, allow_empty=True, offset=seen)


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and int(resolver.task_id or 0) == 0
    )


def _resolve_pattern_types(pattern_type, keys: list[str]) -> dict[str, str]:
    if isinstance(pattern_type, str):
        if pattern_type not in ESTIMATORS:
            raise ValueError(
                f"pattern_type must be one of {tuple(ESTIMATORS)} or a dict, got {pattern_type!r}."
            )
        return {k: pattern_type for k in keys}
    if not isinstance(pattern_type, Mapping):
        raise ValueError(f"pattern_type must be a string or a dict, got {pattern_type!r}.")
    unknown = [k for k in pattern_type if k not in keys]
    if unknown:
        raise ValueError(
            f"pattern_type names layers without patterns: {unknown}. Layers with patterns: {keys}."
        )
    bad = {k: v for k, v in pattern_type.items() if v not in ESTIMATORS}
    if bad:
        raise ValueError(f"Unknown pattern types {bad}; known: {tuple(ESTIMATORS)}.")
    return {k: pattern_type.get(k, "relu") for k in keys}
