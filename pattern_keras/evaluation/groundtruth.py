"""Explanations scored against a known signal (data from :mod:`pattern_keras.datasets`).

Two measures, both per sample:

- :func:`signal_cosine`: how well an explanation's *direction* matches the true signal, the
  measure the PatternNet paper uses on its toy example (a signal estimator is good when it
  recovers ``a_s·y``, up to scale and sign);
- :func:`topk_precision`: how many of an attribution's highest pixels fall on the signal's
  support, which asks only where the explanation points, not how it weights.

All arrays are numpy; a leading axis of length ``n`` indexes samples, the remaining axes (for
images ``(H, W, C)``) are features.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["signal_cosine", "topk_precision"]


def signal_cosine(explanation: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Per-sample absolute cosine similarity between an explanation and the true signal.

    Parameters
    ----------
    explanation : array_like, shape (n, ...)
        One explanation per sample, e.g. (n, H, W, C).
    signal : array_like, shape (n, ...) or (...)
        The true signal of each sample, or one map shared by all samples (shaped like a single
        explanation, e.g. the signal pattern ``a_s``).

    Returns
    -------
    np.ndarray, shape (n,), float64
        ``|⟨e, s⟩| / (‖e‖·‖s‖)`` over the flattened features, in [0, 1]. The absolute value
        makes the score blind to the sign, since ``a_s·y`` and ``−a_s·y`` carry the same
        direction. 0 where either map is all zero (never NaN).

    Raises
    ------
    ValueError
        If ``explanation`` has no sample axis, or ``signal`` is neither shaped like it nor like one
        of its samples.
    """
    explanation = np.asarray(explanation, dtype=np.float64)
    if explanation.ndim < 2:
        raise ValueError(
            "explanation must have a sample axis and feature axes, shape (n, ...); "
            f"received shape {explanation.shape}."
        )
    signal = _per_sample(np.asarray(signal, dtype=np.float64), explanation.shape, "signal")
    e = explanation.reshape(len(explanation), -1)
    s = signal.reshape(len(signal), -1)
    dot = np.abs(np.einsum("ij,ij->i", e, s))
    norms = np.linalg.norm(e, axis=1) * np.linalg.norm(s, axis=1)
    cosine = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    # Rounding can push |cos| of parallel maps a hair past 1.
    return np.minimum(cosine, 1.0)


def topk_precision(
    attribution: np.ndarray,
    support: np.ndarray,
    k: int | None = None,
    absolute: bool = False,
) -> np.ndarray:
    """Per-sample fraction of the k highest-ranked features that lie in the support.

    Parameters
    ----------
    attribution : array_like, shape (n, ...)
        One attribution map per sample, e.g. (n, H, W, C).
    support : array_like of bool, shape (...) or (n, ...)
        Where the true signal lives: one mask shared by all samples (shaped like a single
        attribution map) or one per sample. Non-boolean input is read as ``support != 0``.
    k : int, optional
        How many features to take per sample, ``1 <= k <=`` features per sample. Defaults to the
        support's size, per sample; then a perfect ranking scores exactly 1.
    absolute : bool
        False (default): rank by the signed attribution, highest first, so evidence *against*
        the class ranks last. True: rank by ``|attribution|``, for methods whose sign is not
        meaningful or when negative evidence should count as found.

    Returns
    -------
    np.ndarray, shape (n,), float64
        Values in [0, 1]. Ties in the ranking are broken by the features' flat (C-order) index,
        lowest first, so the result is deterministic.

    Raises
    ------
    ValueError
        On mismatched shapes, a ``k`` out of range, or (with ``k=None``) a sample with an empty
        support.
    """
    attribution = np.asarray(attribution)
    if attribution.ndim < 2:
        raise ValueError(
            "attribution must have a sample axis and feature axes, shape (n, ...); "
            f"received shape {attribution.shape}."
        )
    support = _per_sample(np.asarray(support) != 0, attribution.shape, "support")
    n = len(attribution)
    scores = attribution.reshape(n, -1).astype(np.float64)
    mask = support.reshape(n, -1)
    n_features = scores.shape[1]
    if absolute:
        scores = np.abs(scores)
    per_sample_k = _resolve_k(k, mask, n_features)

    ranking = np.argsort(-scores, axis=1, kind="stable")
    hits = np.cumsum(np.take_along_axis(mask, ranking, axis=1), axis=1)
    return hits[np.arange(n), per_sample_k - 1] / per_sample_k


def _resolve_k(k: int | None, mask: np.ndarray, n_features: int) -> np.ndarray:
    """k for each sample, shape (n,)."""
    if k is None:
        sizes = mask.sum(axis=1)
        empty = np.flatnonzero(sizes == 0)
        if empty.size:
            raise ValueError(
                "k defaults to the support's size, but the support is empty for sample(s) "
                f"{empty[:10].tolist()}; pass k explicitly."
            )
        return sizes
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_features:
        raise ValueError(
            f"k must be an integer in [1, {n_features}] (features per sample); received {k!r}."
        )
    return np.full(len(mask), int(k))


def _per_sample(values: np.ndarray, batch_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Broadcast a shared map (...) to (n, ...), or pass a per-sample one through."""
    if values.shape == batch_shape:
        return values
    if values.shape == batch_shape[1:]:
        return np.broadcast_to(values, batch_shape)
    raise ValueError(
        f"{name} must be shaped like the batch {batch_shape} or like one sample "
        f"{batch_shape[1:]}; received shape {values.shape}."
    )
