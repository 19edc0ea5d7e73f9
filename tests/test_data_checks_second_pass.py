"""Data and argument checks, second pass (issue 22): the same checks for every form of data.

Complex inputs, a model with NaN weights, finite values too large for float32, endless
datasets, the user's own exceptions from a generator or a ``PyDataset``, ``neuron_selection``
against a dataset's length, ``checkpoint_every``, and a fully convolutional model fitted from a
generator of images of several sizes.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import pattern_keras as pk
from pattern_keras.patterns import PatternComputer

L = keras.layers


def mlp(seed: int = 0) -> keras.Model:
    """Input(5) → Dense 'fc'(8, relu) → Dense 'head'(3)."""
    x = keras.Input((5,), name="x")
    h = L.Dense(8, activation="relu", name="fc")(x)
    model = keras.Model(x, L.Dense(3, name="head")(h), name="mlp")
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
    return model


def data(n: int = 64, seed: int = 1, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 1.0, (n, 5)).astype(dtype)


def forms(x: np.ndarray, batch_size: int = 16) -> dict:
    """The same samples as every form of data ``fit`` takes."""

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return -(-len(x) // batch_size)

        def __getitem__(self, i):
            return x[i * batch_size : (i + 1) * batch_size]

    return {
        "array": x,
        "dataset": tf.data.Dataset.from_tensor_slices(x).batch(batch_size),
        "generator": (x[i : i + batch_size] for i in range(0, len(x), batch_size)),
        "pydataset": Batches(),
    }


@pytest.fixture(scope="module")
def fitted():
    model = mlp()
    return model, pk.PatternAttribution(model).fit(data(), verbose=0)


# -- item 9: complex inputs, NaN weights, values too large for float32 ------------------------


def test_complex_inputs_are_refused_not_cut_to_their_real_part(fitted):
    model, analyzer = fitted
    x = data(32).astype(np.complex64) + 1j
    for explain in (analyzer, pk.Gradient(model)):
        with pytest.raises(ValueError, match="complex.*imaginary part"):
            explain.analyze(x, verbose=0)
        with pytest.raises(ValueError, match="complex"):
            explain.analyze(tf.data.Dataset.from_tensor_slices(x).batch(8), verbose=0)
    for form in forms(x).values():
        with pytest.raises(ValueError, match="complex"):
            PatternComputer(model).compute_statistics(form, verbose=0)


def test_a_nan_weight_is_named_by_analyze_and_fit():
    model = mlp()
    x = data()
    analyzer = pk.PatternAttribution(model).fit(x, verbose=0)
    kernel = model.get_layer("head").kernel
    broken = kernel.numpy()
    broken[2, 1] = np.nan
    kernel.assign(broken)
    for explain in (pk.Gradient(model), pk.LRPEpsilon(model)):
        with pytest.raises(
            ValueError, match=r"NaN or infinite weights: 'head/kernel' holds 1 of 24"
        ):
            explain.analyze(x, verbose=0)
    with pytest.raises(ValueError, match="'head/kernel'"):
        analyzer.analyze(x, verbose=0, allow_stale_patterns=True)
    with pytest.raises(ValueError, match="NaN or infinite weights: 'head/kernel'") as info:
        pk.PatternAttribution(model).fit(x, verbose=0)
    assert "magnitude" not in str(info.value)


def test_an_overflowing_backward_signal_is_a_warning_not_silent():
    """Finite inputs and weights, patterns so large that the backward pass overflows float32:
    a warning that says so (and what to try), not a silent infinity."""
    model = mlp()
    analyzer = pk.PatternNet(model)
    huge = {
        k: np.full(p.part.kernel_shape, 1e30, np.float32)
        for k, p in analyzer._computer.plans.items()
    }
    analyzer.set_patterns(pk.Patterns(huge, negative={"head": huge["head"]}))
    with pytest.warns(RuntimeWarning, match="overflowed.*renormalize=True"):
        out = analyzer.analyze(data(4), verbose=0)
    assert not np.all(np.isfinite(out))


def test_finite_values_too_large_for_float32_are_named_as_such(fitted):
    model, analyzer = fitted
    x = data(64, dtype=np.float64)
    x[37, 2] = 1e39
    with pytest.raises(
        ValueError, match=r"1 finite value too large for float32.*1e\+39 in sample 37"
    ):
        analyzer.analyze(x, verbose=0)
    with pytest.raises(ValueError, match=r"too large for float32.*sample 37"):
        analyzer.analyze(tf.data.Dataset.from_tensor_slices(x).batch(16), verbose=0)
    for name, form in forms(x).items():
        match = (
            r"1 finite value too large for the model's input dtype .* in batch 3 \(the first in "
            r"sample 37 of the stream"
            if name == "dataset"
            else r"too large for float32.*sample 37"
        )
        with pytest.raises(ValueError, match=match):
            PatternComputer(model).compute_statistics(form, verbose=0)
    # NaN stays NaN: not "too large".
    x[37, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or infinite value \(the first in sample 37"):
        analyzer.analyze(x, verbose=0)


# -- item 12: endless datasets -------------------------------------------------------------------


def endless(x: np.ndarray, limit: int = 200) -> tf.data.Dataset:
    """An endless dataset (infinite cardinality) that fails after ``limit`` batches, so that a
    fit or analyze that does not refuse it up front ends (in a TensorFlow error) instead of
    running for ever."""
    count = tf.Variable(0, dtype=tf.int64)

    def guard(batch):
        check = tf.debugging.assert_less(count.assign_add(1), tf.constant(limit, tf.int64))
        with tf.control_dependencies([check]):
            return tf.identity(batch)

    return tf.data.Dataset.from_tensor_slices(x).batch(16).repeat().map(guard)


def test_an_endless_dataset_is_refused_up_front(fitted):
    model, analyzer = fitted
    x = data()
    dataset = endless(x)
    assert dataset.cardinality() == tf.data.INFINITE_CARDINALITY
    with pytest.raises(ValueError, match="endless.*pass `steps`"):
        PatternComputer(model).compute_statistics(dataset, verbose=0)
    with pytest.raises(ValueError, match="endless.*`dataset.take\\(n\\)`"):
        analyzer.analyze(dataset, verbose=0)
    # With steps, the fit reads that many batches.
    stats = PatternComputer(model).compute_statistics(endless(x), steps=6, verbose=0)
    assert stats.n_samples == 6 * 16 and stats.n_batches == 6


# -- item 14: the user's exceptions reach the caller as they were --------------------------------


class BrokenReader(RuntimeError):
    """The user's own error."""


def failing(x: np.ndarray, at: int, error: BaseException):
    for i, start in enumerate(range(0, len(x), 16)):
        if i == at:
            raise error
        yield x[start : start + 16]


def test_errors_of_the_users_generator_and_pydataset_reach_the_caller(tmp_path):
    model = mlp()
    x = data()
    computer = PatternComputer(model)
    with pytest.raises(BrokenReader, match="disk on fire"):
        computer.compute_statistics(failing(x, 2, BrokenReader("disk on fire")), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        computer.compute_statistics(failing(x, 2, KeyboardInterrupt()), verbose=0)
    with pytest.raises(BrokenReader, match="first"):  # before the first batch: as it was
        computer.compute_statistics(failing(x, 0, BrokenReader("first")), verbose=0)

    class Broken(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 3:
                raise KeyError(f"no item {i}")
            return x[i * 16 : (i + 1) * 16]

    with pytest.raises(KeyError, match="no item 3"):
        pk.PatternNet(model).fit(Broken(), verbose=0)
    # What was accumulated before the error is in the checkpoint; the fit resumes from it.
    checkpoint = tmp_path / "fit.h5"
    with pytest.raises(BrokenReader):
        computer.compute_statistics(
            failing(x, 3, BrokenReader("later")), verbose=0, checkpoint_path=str(checkpoint)
        )
    assert pk.PatternStatistics.load(str(checkpoint)).n_samples == 48
    resumed = computer.compute_statistics(
        (x[i : i + 16] for i in range(0, 64, 16)), verbose=0, checkpoint_path=str(checkpoint)
    )
    whole = computer.compute_statistics((x[i : i + 16] for i in range(0, 64, 16)), verbose=0)
    for key in whole:
        for name, value in whole[key].sums.items():
            np.testing.assert_array_equal(resumed[key].sums[name], value)


# -- item 16: the same checks and the same support for every form -------------------------------


def test_neuron_selection_is_checked_against_a_datasets_length(fitted):
    model, _ = fitted
    analyzer = pk.Gradient(model, neuron_selection_mode="index")
    x = data(12)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(5)
    selection = np.arange(12) % 3
    np.testing.assert_array_equal(
        analyzer.analyze(dataset, neuron_selection=selection, verbose=0),
        analyzer.analyze(x, neuron_selection=selection, batch_size=5, verbose=0),
    )
    for wrong, held in ((selection[:10], "at least 12"), (np.arange(14) % 3, "holds 12")):
        with pytest.raises(ValueError, match=f"neuron_selection has {len(wrong)} entries.*{held}"):
            analyzer.analyze(dataset, neuron_selection=wrong, verbose=0)
    with pytest.raises(ValueError, match="neuron_selection 7 is out of range"):
        analyzer.analyze(dataset, neuron_selection=np.full(12, 7), verbose=0)


@pytest.mark.parametrize("every", [1.5, True, 0, "2"])
def test_checkpoint_every_must_be_a_positive_integer(tmp_path, every):
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1"):
        PatternComputer(mlp()).compute_statistics(
            data(), verbose=0, checkpoint_path=str(tmp_path / "c.h5"), checkpoint_every=every
        )


def test_every_form_gets_the_same_shape_check_on_every_batch():
    model = mlp()
    x = data()
    bad = [x[:16], x[16:32], x[32:48, :4]]  # the third batch has 4 features, not 5
    with pytest.raises(ValueError, match=r"batch 3 has shape \(16, 4\).*axis 1 is 4, expected 5"):
        PatternComputer(model).compute_statistics(iter(bad), verbose=0)


def fully_convolutional() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((None, None, 3))
    h = L.Conv2D(4, 3, activation="relu", name="conv")(x)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(x, L.Dense(2, name="head")(h))


def test_a_fully_convolutional_model_fits_from_a_generator_of_several_sizes():
    """Batches of 8×8 and 12×12 images: a generator and a PyDataset give the statistics of the
    tf.data dataset of the same batches."""
    model = fully_convolutional()
    rng = np.random.default_rng(3)
    sizes = (8, 12, 8, 10)
    images = [rng.normal(size=(4, s, s, 3)).astype(np.float32) for s in sizes]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec((None, None, None, 3), tf.float32)
    )
    want = PatternComputer(model).compute_statistics(dataset, verbose=0)

    class Images(keras.utils.PyDataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i]

    for form in (iter(images), Images()):
        got = PatternComputer(model).compute_statistics(form, verbose=0)
        assert got.n_samples == want.n_samples == 16
        for key in want:
            for name, value in want[key].sums.items():
                np.testing.assert_array_equal(got[key].sums[name], value, err_msg=name)
