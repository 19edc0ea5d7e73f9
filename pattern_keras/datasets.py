"""Small data sets that need no download.

``signal_distractor`` generates images with a known ground-truth signal, the setting of the
PatternNet paper's toy example (Kindermans et al., ICLR 2018, section 2): every image is a
class-carrying signal plus distractors that carry no class information but overlap the signal
spatially and are louder than it. A good explanation recovers the signal direction ``a_s``; a
naive one (the gradient, i.e. the classifier's weights) is bent away from it by the distractors.

``signal_distractor_tokens`` is the same model for sequences: every token is a feature vector,
a class-carrying signal direction sits at a few positions of each sequence, under louder
distractors that share one amplitude over the whole sequence and overlap the signal's direction.

``signal_distractor_series`` is the same model for multichannel time series (EEG, ECG, sensor
data): a class-carrying waveform in a few channels and a window of time, under louder
distractors that are shared across all channels and last the whole sequence.

``load_digits`` wraps scikit-learn's bundled 8×8 digits, the only natural images that install
with a package on an offline machine.

Conventions: images are channels_last, ``(n, H, W, 1)``, float32; token sequences ``(n, T, d)``;
series ``(n, steps, channels)``, float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SignalDistractorData",
    "signal_distractor",
    "TokenSignalDistractorData",
    "signal_distractor_tokens",
    "SignalDistractorSeries",
    "signal_distractor_series",
    "load_digits",
]


@dataclass(frozen=True, eq=False)
class SignalDistractorData:
    """One draw of the signal/distractor model (see :func:`signal_distractor`).

    Attributes
    ----------
    x : np.ndarray, shape (n, H, W, 1), float32
        The images ``a_s·y + Σ_k a_dk·ε_k + noise``.
    labels : np.ndarray, shape (n,), int64
        Class of each image, 0 or 1.
    signal : np.ndarray, shape (n, H, W, 1), float32
        The true signal component ``a_s·y`` of each image.
    signal_pattern : np.ndarray, shape (H, W, 1), float32
        The signal direction ``a_s``; zero outside ``support``.
    distractor_patterns : np.ndarray, shape (k, H, W, 1), float32
        The distractor directions ``a_dk``.
    support : np.ndarray, shape (H, W, 1), bool
        Where ``a_s != 0``.
    signal_amplitude : np.ndarray, shape (n,), float64
        ``y = (2·label − 1)·u`` with ``u ~ U[0.5, 1.5]``, so ``signal = a_s·y``.
    distractor_amplitude : np.ndarray, shape (n, k), float64
        ``ε``, independent standard normal, independent of the labels.
    """

    x: np.ndarray
    labels: np.ndarray
    signal: np.ndarray
    signal_pattern: np.ndarray
    distractor_patterns: np.ndarray
    support: np.ndarray
    signal_amplitude: np.ndarray
    distractor_amplitude: np.ndarray

    @property
    def distractors(self) -> np.ndarray:
        """Distractor component ``Σ_k a_dk·ε_k`` of each image, shape (n, H, W, 1), float64."""
        patterns = self.distractor_patterns.astype(np.float64)
        return np.tensordot(self.distractor_amplitude, patterns, axes=1)


def signal_distractor(
    n: int,
    shape: tuple[int, int] = (16, 16),
    n_distractors: int = 3,
    noise: float = 0.05,
    seed: int = 0,
    signal_fraction: float = 0.12,
    distractor_scale: float = 2.0,
    pattern_seed: int = 0,
) -> SignalDistractorData:
    """Images of a class-carrying signal hidden under louder, overlapping distractors.

    Each image is ``x = a_s·y + Σ_k a_dk·ε_k + σ·η`` where

    - ``a_s`` (the signal pattern) is a compact round blob at the image centre covering about
      ``signal_fraction`` of the pixels (ties in distance from the centre are all included, so
      slightly more), with values from 1 at its centre down to 0.5 at its rim and exactly 0
      outside;
    - ``y = (2·label − 1)·u``, ``label ~ Bernoulli(0.5)``, ``u ~ U[0.5, 1.5]``: the sign of the
      signal carries the class, its amplitude varies;
    - ``a_dk`` (the distractor patterns) alternate between broad Gaussian blobs centred within the
      signal's radius and sinusoidal stripes whose crest passes through the signal's centre, so
      each overlaps the signal's support; each is scaled to a peak absolute value of
      ``distractor_scale`` (twice the signal's by default);
    - ``ε_k ~ N(0, 1)`` independent of each other and of the label;
    - ``η ~ N(0, 1)`` iid per pixel, ``σ = noise``.

    Parameters
    ----------
    n : int
        Number of images, ``n >= 1``.
    shape : tuple of int
        Image size ``(H, W)``, each at least 2.
    n_distractors : int
        Number ``k >= 0`` of distractor patterns.
    noise : float
        Standard deviation ``σ >= 0`` of the pixel noise.
    seed : int
        Seed of the samples (labels, amplitudes, noise), drawn from
        ``numpy.random.default_rng(seed)`` in that order.
    signal_fraction : float
        Target fraction of pixels in the signal's support, in (0, 1].
    distractor_scale : float
        Peak absolute value of each distractor pattern (the signal's peak is 1).
    pattern_seed : int
        Seed of the distractor patterns' random placement. Kept apart from ``seed`` so that a
        training set and a test set drawn with different ``seed`` share the same patterns.

    Returns
    -------
    SignalDistractorData
        ``x`` and ``signal`` shaped (n, H, W, 1) float32, ``labels`` (n,) in {0, 1}, the patterns
        and the support (see :class:`SignalDistractorData`).

    Examples
    --------
    >>> data = signal_distractor(100, seed=1)
    >>> data.x.shape, int(data.support.sum())
    ((100, 16, 16, 1), 32)
    """
    _check_arguments(n, shape, n_distractors, noise, signal_fraction, distractor_scale)
    h, w = int(shape[0]), int(shape[1])
    signal_pattern, radius = _signal_blob(h, w, signal_fraction)
    distractor_patterns = _distractor_patterns(
        h, w, n_distractors, radius, distractor_scale, pattern_seed
    )

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    amplitude = (2 * labels - 1) * rng.uniform(0.5, 1.5, size=n)
    epsilon = rng.standard_normal((n, n_distractors))
    pixel_noise = noise * rng.standard_normal((n, h, w))

    # Sum in float64, round once at the end, so that the parts returned add up to x to
    # float32 precision.
    signal = amplitude[:, None, None] * signal_pattern
    distractors = np.tensordot(epsilon, distractor_patterns, axes=1)
    x = signal + distractors + pixel_noise
    return SignalDistractorData(
        x=x[..., None].astype(np.float32),
        labels=labels,
        signal=signal[..., None].astype(np.float32),
        signal_pattern=signal_pattern[..., None].astype(np.float32),
        distractor_patterns=distractor_patterns[..., None].astype(np.float32),
        support=(signal_pattern != 0)[..., None],
        signal_amplitude=amplitude,
        distractor_amplitude=epsilon,
    )


def _check_arguments(n, shape, n_distractors, noise, signal_fraction, distractor_scale) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer; received {n!r}.")
    if len(shape) != 2 or any(int(s) != s or s < 2 for s in shape):
        raise ValueError(f"shape must be (H, W) with integers >= 2; received {shape!r}.")
    if int(n_distractors) != n_distractors or n_distractors < 0:
        raise ValueError(f"n_distractors must be an integer >= 0; received {n_distractors!r}.")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0; received {noise!r}.")
    if not 0 < signal_fraction <= 1:
        raise ValueError(f"signal_fraction must be in (0, 1]; received {signal_fraction!r}.")
    if not distractor_scale > 0:
        raise ValueError(f"distractor_scale must be > 0; received {distractor_scale!r}.")


def _centre_distance(h: int, w: int) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    return np.hypot(rows - (h - 1) / 2, cols - (w - 1) / 2)


def _signal_blob(h: int, w: int, fraction: float) -> tuple[np.ndarray, float]:
    """Round blob (H, W): 1 at the image centre, 0.5 at its rim, 0 outside; and its radius."""
    distance = _centre_distance(h, w)
    n_pixels = max(1, int(round(fraction * h * w)))
    radius = float(np.sort(distance, axis=None)[n_pixels - 1])
    inside = distance <= radius
    # Falls off towards the rim but stays clear of 0, so the support is exactly the disc.
    profile = 1.0 - 0.5 * (distance / radius) ** 2 if radius > 0 else np.ones_like(distance)
    return np.where(inside, profile, 0.0), radius


def _distractor_patterns(
    h: int, w: int, k: int, radius: float, scale: float, seed: int
) -> np.ndarray:
    """(k, H, W): broad blobs (even k) and stripes (odd k), all overlapping the signal's disc."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    size = min(h, w)
    patterns = np.empty((k, h, w))
    for index in range(k):
        if index % 2 == 0:
            # Centred within the signal's radius, and far wider than it: covers the disc.
            angle = rng.uniform(0, 2 * np.pi)
            offset = rng.uniform(0, max(radius, 1.0))
            cy, cx = centre + offset * np.array([np.sin(angle), np.cos(angle)])
            sigma = rng.uniform(0.25, 0.4) * size
            pattern = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * sigma**2))
        else:
            # Crest through the centre: the stripes are at their strongest on the signal.
            theta = rng.uniform(0, np.pi)
            period = rng.uniform(0.5, 1.0) * size
            along = (rows - centre[0]) * np.sin(theta) + (cols - centre[1]) * np.cos(theta)
            pattern = np.cos(2 * np.pi * along / period)
        patterns[index] = scale * pattern / np.abs(pattern).max()
    return patterns


@dataclass(frozen=True, eq=False)
class TokenSignalDistractorData:
    """One draw of the token-sequence signal/distractor model (see
    :func:`signal_distractor_tokens`).

    Attributes
    ----------
    x : np.ndarray, shape (n, T, d), float32
        The sequences ``signal + distractors + noise``.
    labels : np.ndarray, shape (n,), int64
        Class of each sequence, 0 or 1.
    signal : np.ndarray, shape (n, T, d), float32
        The true signal: ``a_s·y`` at the signal positions, 0 elsewhere.
    signal_direction : np.ndarray, shape (d,), float32
        ``a_s``, of unit norm.
    distractor_patterns : np.ndarray, shape (k, T, d), float32
        ``p_k(t)·a_dk``: a profile over positions times a direction.
    support : np.ndarray, shape (n, T), bool
        The signal positions of each sequence.
    signal_amplitude : np.ndarray, shape (n,), float64
        ``y = (2·label − 1)·u``, ``u ~ U[0.5, 1.5]``.
    distractor_amplitude : np.ndarray, shape (n, k), float64
        ``ε``, independent standard normal, independent of the labels.
    """

    x: np.ndarray
    labels: np.ndarray
    signal: np.ndarray
    signal_direction: np.ndarray
    distractor_patterns: np.ndarray
    support: np.ndarray
    signal_amplitude: np.ndarray
    distractor_amplitude: np.ndarray


def signal_distractor_tokens(
    n: int,
    length: int = 16,
    dim: int = 8,
    signal_tokens: int = 3,
    n_distractors: int = 2,
    noise: float = 0.05,
    seed: int = 0,
    correlation: float = 0.6,
    distractor_scale: float = 2.0,
    pattern_seed: int = 0,
) -> TokenSignalDistractorData:
    """Token sequences with a class-carrying signal at a few positions, under louder
    distractors.

    Each sequence is ``x[t] = a_s·y·[t ∈ S] + Σ_k ε_k·p_k(t)·a_dk + σ·η[t]`` where

    - ``a_s ∈ R^d`` (the signal direction) is a fixed unit vector;
    - ``S`` is a set of ``signal_tokens`` positions drawn uniformly for each sequence (the
      signal is anywhere, as a keyword is);
    - ``y = (2·label − 1)·u``, ``label ~ Bernoulli(0.5)``, ``u ~ U[0.5, 1.5]``;
    - ``a_dk`` (the distractor directions) have norm ``distractor_scale`` and cosine
      ``correlation`` with ``a_s`` (they overlap the signal's direction);
    - ``p_k(t) = 1 + ½·cos(2π·f_k·t/T + φ_k)`` is a smooth profile over positions, never 0, so
      each distractor is present at the signal's positions, with one amplitude
      ``ε_k ~ N(0, 1)`` per sequence (the other positions tell its value);
    - ``η ~ N(0, I)`` per position, ``σ = noise``.

    Parameters
    ----------
    n : int
        Number of sequences, ``n >= 1``.
    length, dim : int
        ``T`` positions of ``d`` features each (``T >= signal_tokens``, ``d >= 2``).
    signal_tokens : int
        Positions carrying the signal in each sequence (``1 <= signal_tokens <= T``).
    n_distractors : int
        Number ``k >= 0`` of distractors.
    noise : float
        ``σ >= 0``.
    seed : int
        Seed of the samples (labels, amplitudes, positions, noise).
    correlation : float
        Cosine between each distractor direction and ``a_s``, in [0, 1).
    distractor_scale : float
        Norm of each distractor direction (the signal's is 1).
    pattern_seed : int
        Seed of ``a_s``, the distractor directions and profiles, kept apart from ``seed`` so
        that training and test sets share them.

    Returns
    -------
    TokenSignalDistractorData

    Examples
    --------
    >>> data = signal_distractor_tokens(100, seed=1)
    >>> data.x.shape, int(data.support[0].sum())
    ((100, 16, 8), 3)
    """
    _check_token_arguments(n, length, dim, signal_tokens, n_distractors, noise, correlation)
    if not distractor_scale > 0:
        raise ValueError(f"distractor_scale must be > 0; received {distractor_scale!r}.")
    direction, patterns = _token_patterns(
        length, dim, n_distractors, correlation, distractor_scale, pattern_seed
    )
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    amplitude = (2 * labels - 1) * rng.uniform(0.5, 1.5, size=n)
    support = np.zeros((n, length), bool)
    for row in support:
        row[rng.choice(length, size=signal_tokens, replace=False)] = True
    epsilon = rng.standard_normal((n, n_distractors))
    token_noise = noise * rng.standard_normal((n, length, dim))

    signal = amplitude[:, None, None] * support[..., None] * direction
    distractors = np.tensordot(epsilon, patterns, axes=1)
    x = signal + distractors + token_noise
    return TokenSignalDistractorData(
        x=x.astype(np.float32),
        labels=labels,
        signal=signal.astype(np.float32),
        signal_direction=direction.astype(np.float32),
        distractor_patterns=patterns.astype(np.float32),
        support=support,
        signal_amplitude=amplitude,
        distractor_amplitude=epsilon,
    )


def _check_token_arguments(n, length, dim, signal_tokens, n_distractors, noise, correlation):
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer; received {n!r}.")
    if int(length) != length or length < 1 or int(dim) != dim or dim < 2:
        raise ValueError(f"length must be >= 1 and dim >= 2; received {length!r}, {dim!r}.")
    if int(signal_tokens) != signal_tokens or not 1 <= signal_tokens <= length:
        raise ValueError(
            f"signal_tokens must be an integer in [1, length={length}]; received {signal_tokens!r}."
        )
    if int(n_distractors) != n_distractors or n_distractors < 0:
        raise ValueError(f"n_distractors must be an integer >= 0; received {n_distractors!r}.")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0; received {noise!r}.")
    if not 0 <= correlation < 1:
        raise ValueError(f"correlation must be in [0, 1); received {correlation!r}.")


def _token_patterns(
    length: int, dim: int, k: int, correlation: float, scale: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``a_s`` (d,) of unit norm and the distractor patterns (k, T, d)."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    positions = np.arange(length)
    patterns = np.empty((k, length, dim))
    for index in range(k):
        other = rng.standard_normal(dim)
        other -= other @ direction * direction  # orthogonal to a_s, then mixed in
        other /= np.linalg.norm(other)
        along = correlation * direction + np.sqrt(1 - correlation**2) * other
        frequency, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
        profile = 1.0 + 0.5 * np.cos(2 * np.pi * frequency * positions / length + phase)
        patterns[index] = profile[:, None] * (scale * along)[None, :]
    return direction, patterns


def load_digits(n_class: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits as images (no download).

    Parameters
    ----------
    n_class : int
        Keep the digits ``0 .. n_class − 1`` (1 to 10).

    Returns
    -------
    x : np.ndarray, shape (n, 8, 8, 1), float32
        Pixel values scaled from 0..16 to [0, 1]; n = 1797 for all ten classes.
    labels : np.ndarray, shape (n,), int64
        The digit of each image.

    Raises
    ------
    ImportError
        If scikit-learn is not installed.
    """
    try:
        from sklearn import datasets as sklearn_datasets
    except ImportError as error:  # optional dependency: only this loader needs it
        raise ImportError(
            "load_digits needs scikit-learn, which ships the digits data: pip install scikit-learn"
        ) from error
    digits = sklearn_datasets.load_digits(n_class=n_class)
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    return x, digits.target.astype(np.int64)


# --- time series -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SignalDistractorSeries(SignalDistractorData):
    """One draw of the time-series signal/distractor model (see
    :func:`signal_distractor_series`): the fields and ``distractors`` of
    :class:`SignalDistractorData`, with steps × channels in place of height × width.

    Attributes
    ----------
    x : np.ndarray, shape (n, steps, channels), float32
        The series ``a_s·y + Σ_k a_dk·ε_k + noise``.
    labels : np.ndarray, shape (n,), int64
        Class of each series, 0 or 1.
    signal : np.ndarray, shape (n, steps, channels), float32
        The true signal component ``a_s·y`` of each series.
    signal_pattern : np.ndarray, shape (steps, channels), float32
        The signal ``a_s``: a waveform in a few channels and a window of time, zero elsewhere.
    distractor_patterns : np.ndarray, shape (k, steps, channels), float32
        The distractors ``a_dk``: each a waveform over all steps times a mixing over all
        channels.
    support : np.ndarray, shape (steps, channels), bool
        Where ``a_s != 0``.
    signal_amplitude : np.ndarray, shape (n,), float64
        ``y = (2·label − 1)·u`` with ``u ~ U[0.5, 1.5]``.
    distractor_amplitude : np.ndarray, shape (n, k), float64
        ``ε``, independent standard normal, independent of the labels.
    """


def signal_distractor_series(
    n: int,
    steps: int = 64,
    channels: int = 8,
    n_distractors: int = 3,
    noise: float = 0.05,
    seed: int = 0,
    distractor_scale: float = 2.0,
    pattern_seed: int = 0,
) -> SignalDistractorSeries:
    """Multichannel series with a class-carrying waveform under louder, shared distractors.

    Each series is ``x = a_s·y + Σ_k a_dk·ε_k + σ·η`` (``(steps, channels)``) where

    - ``a_s`` (the signal) is a burst of a sine of period ``steps/8`` (phased so that no step
      is a zero crossing) under a Hann window of ``steps/4`` steps centred at 5/8 of the
      sequence, in three adjacent channels around the
      middle one with weights 0.6, 1, 0.6 (peak absolute value 1), exactly 0 elsewhere;
    - ``y = (2·label − 1)·u``, ``label ~ Bernoulli(0.5)``, ``u ~ U[0.5, 1.5]``: the sign of the
      burst carries the class, its amplitude varies;
    - ``a_dk`` (the distractors) are each a waveform over the whole sequence times a smooth
      mixing over all channels (a broad bump across channels, as a common source seen by every
      sensor): a slow sine (period between half and all of the sequence), a sine of the
      signal's own period, and a slow drift, in turn, with random phases; each overlaps the
      signal in time and channels and is scaled to a peak absolute value of
      ``distractor_scale`` (twice the signal's by default);
    - ``ε_k ~ N(0, 1)`` independent of each other and of the label; ``η ~ N(0, 1)`` iid per
      value, ``σ = noise``.

    Parameters
    ----------
    n : int
        Number of series, ``n >= 1``.
    steps : int
        Time steps per series, at least 16.
    channels : int
        Channels per step, at least 3.
    n_distractors : int
        Number ``k >= 0`` of distractors.
    noise : float
        Standard deviation ``σ >= 0`` of the noise.
    seed : int
        Seed of the samples (labels, amplitudes, noise), drawn from
        ``numpy.random.default_rng(seed)`` in that order.
    distractor_scale : float
        Peak absolute value of each distractor (the signal's peak is 1).
    pattern_seed : int
        Seed of the distractors' phases, periods and channel mixings, apart from ``seed`` so
        that training and test sets share them.

    Returns
    -------
    SignalDistractorSeries
        ``x`` and ``signal`` shaped (n, steps, channels) float32, ``labels`` (n,) in {0, 1}, the
        patterns and the support.

    Examples
    --------
    >>> data = signal_distractor_series(100, seed=1)
    >>> data.x.shape, int(data.support.sum())
    ((100, 64, 8), 48)
    """
    _check_series_arguments(n, steps, channels, n_distractors, noise, distractor_scale)
    signal_pattern = _signal_burst(steps, channels)
    distractor_patterns = _series_distractors(
        steps, channels, n_distractors, distractor_scale, pattern_seed
    )
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    amplitude = (2 * labels - 1) * rng.uniform(0.5, 1.5, size=n)
    epsilon = rng.standard_normal((n, n_distractors))
    value_noise = noise * rng.standard_normal((n, steps, channels))
    signal = amplitude[:, None, None] * signal_pattern
    x = signal + np.tensordot(epsilon, distractor_patterns, axes=1) + value_noise
    return SignalDistractorSeries(
        x=x.astype(np.float32),
        labels=labels,
        signal=signal.astype(np.float32),
        signal_pattern=signal_pattern.astype(np.float32),
        distractor_patterns=distractor_patterns.astype(np.float32),
        support=signal_pattern != 0,
        signal_amplitude=amplitude,
        distractor_amplitude=epsilon,
    )


def _check_series_arguments(n, steps, channels, n_distractors, noise, distractor_scale) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer; received {n!r}.")
    if int(steps) != steps or steps < 16:
        raise ValueError(f"steps must be an integer >= 16; received {steps!r}.")
    if int(channels) != channels or channels < 3:
        raise ValueError(f"channels must be an integer >= 3; received {channels!r}.")
    if int(n_distractors) != n_distractors or n_distractors < 0:
        raise ValueError(f"n_distractors must be an integer >= 0; received {n_distractors!r}.")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0; received {noise!r}.")
    if not distractor_scale > 0:
        raise ValueError(f"distractor_scale must be > 0; received {distractor_scale!r}.")


def _signal_burst(steps: int, channels: int) -> np.ndarray:
    """(steps, channels): a sine burst under a Hann window, in three channels; peak 1."""
    t = np.arange(steps, dtype=np.float64)
    width = steps // 4
    start = int(round(5 * steps / 8 - width / 2))
    window = np.zeros(steps)
    # A Hann window of width + 2 points without its two zero ends: every step of the window
    # carries signal.
    window[start : start + width] = np.hanning(width + 2)[1:-1]
    wave = window * np.sin(2 * np.pi * (t - start) / (steps / 8) + np.pi / 8)
    weights = np.zeros(channels)
    middle = channels // 2
    weights[middle - 1 : middle + 2] = (0.6, 1.0, 0.6)
    pattern = wave[:, None] * weights[None, :]
    return pattern / np.abs(pattern).max()


def _series_distractors(steps: int, channels: int, k: int, scale: float, seed: int) -> np.ndarray:
    """(k, steps, channels): slow sines, sines at the signal's period, and drifts, in turn,
    each times a broad bump across all channels."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps, dtype=np.float64)
    c = np.arange(channels, dtype=np.float64)
    patterns = np.empty((k, steps, channels))
    for index in range(k):
        phase = rng.uniform(0, 2 * np.pi)
        kind = index % 3
        if kind == 0:
            wave = np.sin(2 * np.pi * t / (rng.uniform(0.5, 1.0) * steps) + phase)
        elif kind == 1:
            wave = np.sin(2 * np.pi * t / (steps / 8) + phase)
        else:
            wave = (t - rng.uniform(0.3, 0.7) * steps) / steps
        centre = rng.uniform(0.25, 0.75) * (channels - 1)
        mixing = np.exp(-((c - centre) ** 2) / (2 * (rng.uniform(0.4, 0.8) * channels) ** 2))
        pattern = wave[:, None] * mixing[None, :]
        patterns[index] = scale * pattern / np.abs(pattern).max()
    return patterns
