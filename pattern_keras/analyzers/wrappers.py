"""Gradients averaged over many inputs: Integrated Gradients and SmoothGrad.

Both evaluate the gradient of the selected output neuron at many points derived from each
sample (a path from a baseline, or noisy copies), and combine them. The points of a batch are
pushed through the same compiled engine pass as :class:`~pattern_keras.Gradient` in chunks of
about ``inner_batch_size`` network inputs (points × samples), inside one ``tf.while_loop``, so a
call traces the model once whatever the number of steps.

The neuron explained is chosen once per sample, on the sample itself (not on each point), and
the backward pass is seeded with 1 at it, as for the gradient.

The points are taken where each input is explained (:mod:`pattern_keras.points`): the input
itself, the float an integer input becomes, or the (summed) embedding vectors of ids, whose
other inputs (masks, the ids themselves for the masks computed from them) stay the sample's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from pattern_keras import _checks, engine
from pattern_keras.analyzers.base import Analyzer
from pattern_keras.analyzers.gradient import gradient_composite
from pattern_keras.layers.recurrent import repeated_samples
from pattern_keras.rules import Composite

__all__ = ["IntegratedGradients", "SmoothGrad"]


class _PointwiseGradients(Analyzer):
    """Gradients at ``num_points`` points per sample, combined with weights.

    Subclasses define :meth:`_points` (the points of a chunk and their weights) and
    :meth:`_combine` (from the weighted sum of gradients to the result).
    """

    seed_with_value = False
    explains_opaque_ops = True  # gradients, whatever the layer
    num_points: int = 1

    def __init__(
        self, model: Any, neuron_selection_mode: str = "max_activation", inner_batch_size: int = 32
    ) -> None:
        self.inner_batch_size = _checks.positive_int(inner_batch_size, "inner_batch_size")
        super().__init__(model, neuron_selection_mode=neuron_selection_mode)

    def _composite(self, values) -> Composite:
        return gradient_composite()

    def _prepare(self, inputs: list[Any], values: dict[int, Any]) -> Any:
        """What the points of a batch need beyond the explained values (a baseline)."""
        return None

    def _points(self, xs: list[Any], index: Any, context: Any) -> tuple[list[Any], Any]:
        """For point indices ``index`` (``m`` of them, some possibly ``>= num_points``: weight
        0), the points of every sample at the explained values ``xs``, ``(m·n, ...)`` each,
        with the point index outermost, and the weights ``(m,)``."""
        raise NotImplementedError

    def _combine(self, xs: list[Any], weighted: list[Any], context: Any) -> list[Any]:
        return weighted

    def _explain(self, inputs, selection):
        program = self._program
        inputs = list(inputs)
        values = engine.forward(program, inputs)
        _, mask = _checks.selection_mask(
            values[program.output], self.neuron_selection_mode, selection, self.num_outputs
        )  # (n, outputs)
        slots = program.explained_slots
        xs = [values[s] for s in slots]
        context = self._prepare(inputs, values)
        n = tf.shape(inputs[0])[0]
        total = self.num_points
        # Chunks of m points (m·n network inputs ≈ inner_batch_size), balanced so the last
        # chunk wastes as little as possible.
        m0 = tf.clip_by_value(self.inner_batch_size // n, 1, total)
        chunks = (total + m0 - 1) // m0
        m = (total + chunks - 1) // chunks
        out_shape = tf.concat(
            [[m * n], tf.constant(self._program.output_shape[1:], tf.int32)], axis=0
        )
        seed = tf.reshape(tf.tile(mask, [m, 1]), out_shape)

        def body(i, acc):
            index = i * m + tf.range(m)
            points, weights = self._points(xs, index, context)
            with repeated_samples():  # a stateful recurrent layer repeats its states per point
                values = engine.forward(
                    program, _repeated(inputs, points, program, m), at=dict(zip(slots, points))
                )
            grads = engine.backward(program, values, seed, self._composite(values))
            new = []
            for a, g, x in zip(acc, grads, xs):
                g = tf.reshape(g, tf.concat([[m], tf.shape(x)], axis=0))
                w = tf.reshape(tf.cast(weights, g.dtype), [-1] + [1] * len(x.shape))
                new.append(a + tf.reduce_sum(w * g, axis=0))
            return i + 1, new

        acc = [tf.zeros_like(x) for x in xs]
        _, acc = tf.while_loop(lambda i, _: i < chunks, body, (tf.constant(0), acc))
        return self._combine(xs, acc, context)


def _repeated(inputs: list[Any], points: list[Any], program: Any, m: Any) -> list[Any]:
    """The model inputs of ``m`` points per sample: an input explained at itself is its
    points; the others (ids, integer inputs, masks) are repeated ``m`` times, point index
    outermost, for the ops that read them (masks computed from the ids)."""
    at_input = {
        p.index: x
        for p, x in zip((p for p in program.points if p.slot is not None), points)
        if p.kind == "float"
    }
    return [
        at_input[i]
        if i in at_input
        else tf.tile(x, tf.concat([[m], tf.ones([len(x.shape) - 1], tf.int32)], axis=0))
        for i, x in enumerate(inputs)
    ]


class IntegratedGradients(_PointwiseGradients):
    """Integrated Gradients (Sundararajan et al. 2017).

    ``IG(x) = (x − x̄) ⊙ ∫₀¹ ∂y/∂x(x̄ + α(x − x̄)) dα``, the integral approximated with ``steps``
    gradient evaluations along the straight path from the baseline ``x̄``. It satisfies
    completeness, ``Σ_i IG_i(x) ≈ y(x) − y(x̄)``, up to the quadrature error. Seeded with 1.

    Parameters
    ----------
    model : keras.Model
    steps : int
        Gradient evaluations per sample (default 64).
    baseline : float, array or list
        ``x̄``: a scalar, or an array broadcastable to one sample's shape; one per input for a
        model with several inputs. Default 0. For an input of token ids it replaces the token
        embeddings (an array broadcastable to one sample of them, ``(T, d)``; default: zero
        vectors), the position and segment embeddings being kept; for an integer input read as
        a number, it is the float it becomes.
    baseline_token : int or list, optional
        For inputs of token ids: the id whose embedding replaces every token's on the
        baseline (a padding or mask token), instead of ``baseline``; one per input (``None``
        for the others) for a model with several inputs.
    method : {"midpoint", "trapezoid"}
        The quadrature: the Riemann midpoint rule (points ``(k + ½)/steps``, equal weights;
        default), or the trapezoid rule (points ``k/(steps − 1)``, both ends included, half
        weights there). Both are exact for a linear model and second-order accurate.
    neuron_selection_mode : {"max_activation", "index", "all"}
        Chosen at ``x`` itself, not along the path.
    inner_batch_size : int
        About how many network inputs (path points × samples) one pass of the engine takes
        (default 32): memory against speed. The path of one call to the compiled function is
        processed in chunks inside one ``tf.while_loop``.

    Examples
    --------
    >>> ig = pk.IntegratedGradients(model, steps=128)
    >>> attributions = ig.analyze(x)          # Σ ≈ y(x) − y(0) per sample
    """

    METHODS = ("midpoint", "trapezoid")

    def __init__(
        self,
        model: Any,
        steps: int = 64,
        baseline: Any = 0.0,
        method: str = "midpoint",
        neuron_selection_mode: str = "max_activation",
        inner_batch_size: int = 32,
        baseline_token: Any = None,
    ) -> None:
        self.steps = _checks.positive_int(steps, "steps")
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}.")
        if method == "trapezoid" and self.steps < 2:
            raise ValueError("The trapezoid rule needs steps >= 2.")
        self.method = method
        self.num_points = self.steps
        super().__init__(
            model, neuron_selection_mode=neuron_selection_mode, inner_batch_size=inner_batch_size
        )
        self.baseline = self._check_baseline(baseline)
        self.baseline_token = self._check_baseline_token(baseline_token)

    def _per_input(self, value: Any, name: str) -> list[Any]:
        specs = self._program.input_specs
        if len(specs) > 1 and isinstance(value, (list, tuple)):
            if len(value) != len(specs):
                raise ValueError(
                    f"{name} must be one value per input ({len(specs)}), got {len(value)}."
                )
            return list(value)
        return [value] * len(specs)

    def _check_baseline_token(self, token: Any) -> list[int | None]:
        out = []
        for point, t in zip(self._program.points, self._per_input(token, "baseline_token")):
            if t is None or point.kind != "embedding":
                out.append(None)
                continue
            vocabulary = point.lookup.table.vocabulary
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"baseline_token must be a token id (an int), got {t!r}.")
            if not 0 <= int(t) < vocabulary:
                raise ValueError(
                    f"baseline_token {t} is out of range: the embedding of input {point.index} "
                    f"has {vocabulary} rows."
                )
            out.append(int(t))
        return out

    def _check_baseline(self, baseline: Any) -> list[np.ndarray]:
        specs = self._program.input_specs
        values = self._per_input(baseline, "baseline")
        out = []
        for i, (b, (shape, dtype), point) in enumerate(zip(values, specs, self._program.points)):
            try:
                arr = np.asarray(b, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"baseline must be numeric, got {b!r}.") from None
            sample = tuple(shape[1:])
            if point.kind == "embedding":  # replaces the token embeddings: one sample of them
                sample = tuple(self._program.shapes[point.token_slot][1:])
                dtype = self._program.dtypes[point.token_slot]
            try:
                np.broadcast_shapes(arr.shape, (1,) + tuple(1 if d is None else d for d in sample))
                if arr.ndim > len(sample) + 1 or (
                    arr.ndim == len(sample) + 1 and arr.shape[0] != 1
                ):
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"baseline of shape {arr.shape} does not broadcast to one sample of input "
                    f"{i}, shaped {sample}."
                ) from None
            if not np.all(np.isfinite(arr)):
                raise ValueError("baseline must be finite.")
            out.append(
                arr.astype(np.dtype(dtype))
                if np.issubdtype(np.dtype(dtype), np.floating)
                else arr.astype(np.float32)
            )
        return out

    def _alphas(self, index: Any) -> tuple[Any, Any]:
        valid = tf.cast(index < self.steps, tf.float32)
        index = tf.minimum(index, self.steps - 1)  # padding points: weight 0, kept on the path
        k = tf.cast(index, tf.float32)
        if self.method == "midpoint":
            return (k + 0.5) / self.steps, valid / self.steps
        last = self.steps - 1
        ends = tf.cast((index == 0) | (index == last), tf.float32)
        return k / last, valid * (1.0 - 0.5 * ends) / last

    def _prepare(self, inputs, values):
        """The baselines at the explained points: for ids, the sum of the baseline token
        embeddings (a token's, or the ``baseline`` vectors) and the position and segment
        embeddings the sample has."""
        program = self._program
        baselines = []
        for point in program.points:
            if point.slot is None:
                continue
            b = self.baseline[point.index]
            if point.kind != "embedding":
                baselines.append(tf.cast(b, values[point.slot].dtype))
                continue
            tokens = values[point.token_slot]
            token = self.baseline_token[point.index]
            if token is not None:
                ids = tf.fill(
                    tf.shape(inputs[point.index]), tf.constant(token, inputs[point.index].dtype)
                )
                b = point.lookup.forward([ids])[0]
            b = tf.broadcast_to(tf.cast(b, tokens.dtype), tf.shape(tokens))
            if point.slot == point.token_slot:
                baselines.append(b)
            else:
                baselines.append(
                    engine.forward(program, inputs, at={point.token_slot: b})[point.slot]
                )
        return baselines

    def _points(self, xs, index, baselines):
        alphas, weights = self._alphas(index)
        points = []
        for x, b in zip(xs, baselines):
            a = tf.reshape(tf.cast(alphas, x.dtype), [-1, 1] + [1] * (len(x.shape) - 1))
            p = b + a * (x - b)[None]  # (m, n, ...)
            points.append(tf.reshape(p, tf.concat([[-1], tf.shape(x)[1:]], axis=0)))
        return points, weights

    def _combine(self, xs, weighted, baselines):
        return [(x - b) * g for x, b, g in zip(xs, baselines, weighted)]

    def __repr__(self) -> str:
        return (
            f"IntegratedGradients(model={self.model.name!r}, steps={self.steps}, "
            f"method={self.method!r}, neuron_selection_mode={self.neuron_selection_mode!r})"
        )


class SmoothGrad(_PointwiseGradients):
    """SmoothGrad (Smilkov et al. 2017): the gradient averaged over noisy copies of the input.

    Each sample gets ``samples`` copies ``x + ε``, ``ε ~ N(0, σ²)`` with
    ``σ = noise_scale · (max(x) − min(x))`` over that sample's values (per input). Seeded with 1;
    with ``noise_scale = 0`` the result is the gradient.

    Parameters
    ----------
    model : keras.Model
    samples : int
        Noisy copies per sample (default 64).
    noise_scale : float
        The noise level relative to each sample's value range (default 0.1; the paper
        recommends 0.1 to 0.2).
    seed : int
        Seeds the stateless noise generator: the same call gives the same result, whatever
        ``inner_batch_size``. The noise depends on a sample's position within its batch (and
        on the batch's size), not on the other samples' values.
    neuron_selection_mode : {"max_activation", "index", "all"}
        Chosen on the clean sample, so every noisy copy explains the same neuron.
    inner_batch_size : int
        About how many network inputs (copies × samples) one pass of the engine takes.

    Examples
    --------
    >>> pk.SmoothGrad(model, samples=32, noise_scale=0.15).analyze(x)
    """

    token_reduction = "norm"

    def __init__(
        self,
        model: Any,
        samples: int = 64,
        noise_scale: float = 0.1,
        seed: int = 0,
        neuron_selection_mode: str = "max_activation",
        inner_batch_size: int = 32,
    ) -> None:
        self.samples = _checks.positive_int(samples, "samples")
        noise_scale = float(noise_scale)
        if not np.isfinite(noise_scale) or noise_scale < 0:
            raise ValueError(f"noise_scale must be finite and >= 0, got {noise_scale}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}.")
        self.noise_scale = noise_scale
        self.seed = int(seed)
        self.num_points = self.samples
        super().__init__(
            model, neuron_selection_mode=neuron_selection_mode, inner_batch_size=inner_batch_size
        )

    def _points(self, xs, index, context):
        weights = tf.cast(index < self.samples, tf.float32) / self.samples
        points = []
        for j, x in enumerate(xs):
            axes = list(range(1, len(x.shape)))
            sigma = self.noise_scale * (
                tf.reduce_max(x, axis=axes, keepdims=True)
                - tf.reduce_min(x, axis=axes, keepdims=True)
            )
            # One stateless stream per noisy copy and input: the noise does not depend on how
            # the copies are chunked.
            noise = tf.map_fn(
                lambda k, x=x, j=j: tf.random.stateless_normal(
                    tf.shape(x),
                    seed=tf.stack([tf.constant(self.seed, tf.int32), k * len(xs) + j]),
                    dtype=x.dtype,
                ),
                index,
                fn_output_signature=x.dtype,
            )
            p = x[None] + sigma[None] * noise
            points.append(tf.reshape(p, tf.concat([[-1], tf.shape(x)[1:]], axis=0)))
        return points, weights

    def __repr__(self) -> str:
        return (
            f"SmoothGrad(model={self.model.name!r}, samples={self.samples}, "
            f"noise_scale={self.noise_scale:g}, seed={self.seed}, "
            f"neuron_selection_mode={self.neuron_selection_mode!r})"
        )
