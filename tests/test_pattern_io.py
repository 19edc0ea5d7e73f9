"""The pattern file (HDF5): round trips, layout, refusal of other models and of damaged files,
statistics (save, load, merge), and the fitted patterns and analyses of the reference
implementation (iNNvestigate 1.0.9, ``tests/data/innvestigate-1.0.9-mlp.npz``)."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import STATISTICS, assert_close

import pattern_keras as pk
from pattern_keras.patterns import io as pio

L = keras.layers
DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------------------------
# Helpers


def mlp(seed=0, hidden=8, name="mlp"):
    """Input(5) → nested Sequential 'block' (Dense 'fc', relu) → Dense 'head'(3)."""
    inner = keras.Sequential(
        [keras.Input((5,)), L.Dense(hidden, activation="relu", name="fc")], name="block"
    )
    x = keras.Input((5,))
    model = keras.Model(x, L.Dense(3, name="head")(inner(x)), name=name)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
    return model


def data(n=120, seed=1, loc=1.0):
    return np.random.default_rng(seed).normal(loc, 1.0, (n, 5)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A PatternAttribution fitted on the nested MLP and saved (with statistics)."""
    model = mlp()
    x = data()
    analyzer = pk.PatternAttribution(model).fit(x, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("patterns") / "mlp.h5"
    analyzer.save_patterns(str(path))
    return model, x, analyzer, path


# ---------------------------------------------------------------------------------------------
# Round trip and layout


def test_save_load_analyze_identical(fitted):
    model, x, analyzer, path = fitted
    expected = analyzer.analyze(x[:20])
    for loaded in (
        pk.PatternAttribution(model, patterns=str(path)),
        pk.PatternAttribution(model).load_patterns(str(path)),
    ):
        np.testing.assert_array_equal(loaded.analyze(x[:20]), expected)
    patterns = pk.Patterns.load(str(path))
    assert sorted(patterns) == sorted(analyzer.patterns) == ["block/fc", "head"]
    for key in patterns:
        np.testing.assert_array_equal(patterns[key], analyzer.patterns[key])
        assert patterns.has_negative(key) == analyzer.patterns.has_negative(key)
    np.testing.assert_array_equal(patterns.negative("head"), analyzer.patterns.negative("head"))
    assert patterns.pattern_types == analyzer.patterns.pattern_types
    assert patterns.n_samples == len(x)
    # The same file serves PatternNet (the patterns do not depend on the analyzer).
    net = pk.PatternNet(model, patterns=str(path))
    np.testing.assert_array_equal(net.patterns["head"], analyzer.patterns["head"])


def test_file_layout(fitted):
    model, x, analyzer, path = fitted
    with h5py.File(path, "r") as f:
        assert int(f.attrs["format_version"]) == pio.FORMAT_VERSION == 3
        assert len(str(f.attrs["checksum_sha256"])) == 64
        assert str(f.attrs["library_version"]) == pk.__version__
        assert int(f.attrs["n_samples"]) == len(x)
        fingerprint = json.loads(str(f.attrs["fingerprint"]))
        names = [layer[0] for layer in fingerprint["layers"]]
        classes = dict((layer[0], layer[1]) for layer in fingerprint["layers"])
        shapes = dict((layer[0], layer[2]) for layer in fingerprint["layers"])
        assert "block/fc" in names and "head" in names
        assert classes["block/fc"] == "Dense" and classes["head"] == "Dense"
        assert shapes["block/fc"] == [[5, 8], [8]] and shapes["head"] == [[8, 3], [3]]
        digest = fingerprint["weights_sha256"]
        assert len(digest) == 64 and int(digest, 16) >= 0
        assert fingerprint == pk.model_fingerprint(model)
        # One group per layer key; "outer/inner" nests.
        assert isinstance(f["patterns/block"], h5py.Group)
        for key, shape in (("block/fc", (5, 8)), ("head", (8, 3))):
            g = f["patterns"][key]
            assert str(g.attrs["pattern_type"]) == "relu"
            assert g["a"].shape == shape and g["a"].dtype == np.float32
            np.testing.assert_array_equal(g["a"][()], analyzer.patterns[key])
        assert "a_negative" not in f["patterns/block/fc"]  # rectified: a₊ only
        np.testing.assert_array_equal(
            f["patterns/head/a_negative"][()], analyzer.patterns.negative("head")
        )
        assert "statistics" in f and "block/fc" in f["statistics"]


def _walk(f):
    """Every (name, object) of an HDF5 file, the root included."""
    items = [("/", f)]
    f.visititems(lambda name, obj: items.append((name, obj)))
    return items


def test_file_holds_only_arrays_and_attributes(fitted, monkeypatch):
    _, _, _, path = fitted
    with h5py.File(path, "r") as f:
        for name, obj in _walk(f):
            assert isinstance(obj, (h5py.Group, h5py.Dataset)), name
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind in "fiub", (name, obj.dtype)
            for attr in obj.attrs:
                dtype = obj.attrs.get_id(attr).dtype
                assert dtype.kind in "fiub" or h5py.check_string_dtype(dtype) is not None, (
                    name,
                    attr,
                    dtype,
                )
                value = obj.attrs[attr]
                assert isinstance(value, (str, np.ndarray, np.number, np.bool_)), (name, attr)
                if isinstance(value, np.ndarray):
                    assert value.dtype.kind in "fiub", (name, attr, value.dtype)

    # And loading unpickles nothing.
    def refuse(*args, **kwargs):
        raise AssertionError("loading a pattern file must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    pk.Patterns.load(str(path))
    pk.PatternStatistics.load(str(path))


# ---------------------------------------------------------------------------------------------
# Other models


def test_loading_into_another_model_names_the_first_mismatch(fitted):
    _, _, _, path = fitted
    wider = mlp(hidden=7)  # another architecture: block/fc has 7 units
    with pytest.raises(ValueError, match="block/fc") as info:
        pk.PatternNet(wider, patterns=str(path))
    assert "[5, 7]" in str(info.value) and "[5, 8]" in str(info.value)
    with pytest.raises(ValueError, match="block/fc"):
        pk.PatternAttribution(wider).load_patterns(str(path))
    retrained = mlp(seed=42)  # same architecture, other weights
    with pytest.raises(ValueError, match="weight values differ"):
        pk.PatternAttribution(retrained, patterns=str(path))
    x = keras.Input((5,))
    renamed = keras.Model(x, L.Dense(3, name="other")(L.Dense(8, activation="relu", name="fc")(x)))
    with pytest.raises(ValueError, match="'block/fc'") as info:  # the first layer differs
        pk.PatternNet(renamed, patterns=str(path))
    assert "'fc'" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Damaged files


def test_damaged_files_raise_pattern_file_error(fitted, tmp_path):
    _, _, _, path = fitted
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("weights", data=np.ones(3))
    gutted = tmp_path / "gutted.h5"
    gutted.write_bytes(raw)
    with h5py.File(gutted, "a") as f:
        del f["patterns/head/a"]
    future = tmp_path / "future.h5"
    future.write_bytes(raw)
    with h5py.File(future, "a") as f:
        f.attrs["format_version"] = 99
    cases = {
        truncated: "truncated|corrupt|damaged",
        garbage: "HDF5|corrupt",
        foreign: "not a pattern_keras pattern file",
        gutted: "damaged",
        future: "version 99",
    }
    loaders = (
        pk.Patterns.load,
        pk.PatternStatistics.load,
        lambda p: pk.PatternNet(mlp(), patterns=p),
    )
    for bad, message in cases.items():
        # (The gutted file's statistics are intact: only the pattern readers must refuse it.)
        for load in loaders if bad is not gutted else loaders[::2]:
            with pytest.raises(pk.PatternFileError, match=message) as info:
                load(str(bad))
            assert bad.name in str(info.value)
            assert isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        pk.Patterns.load(str(tmp_path / "missing.h5"))
    with pytest.raises(FileNotFoundError):
        pk.PatternNet(mlp()).load_patterns(str(tmp_path / "missing.h5"))


# ---------------------------------------------------------------------------------------------
# Statistics


def _stats_equal(a, b):
    assert sorted(a) == sorted(b)
    assert (a.n_samples, a.n_batches) == (b.n_samples, b.n_batches)
    assert a.fingerprint == b.fingerprint
    for key in a:
        la, lb = a[key], b[key]
        assert (la.pattern_type, la.rectified, tuple(la.out_axes)) == (
            lb.pattern_type,
            lb.rectified,
            tuple(lb.out_axes),
        )
        assert la.shift_x == lb.shift_x
        np.testing.assert_array_equal(la.shift_y, lb.shift_y)
        np.testing.assert_array_equal(la.kernel, lb.kernel)
        assert sorted(la.sums) == sorted(lb.sums)
        for name in la.sums:
            np.testing.assert_array_equal(la.sums[name], lb.sums[name])


def test_statistics_round_trip(fitted, tmp_path):
    model, x, analyzer, path = fitted
    loaded = pk.PatternStatistics.load(str(path))
    _stats_equal(loaded, analyzer.statistics)
    assert loaded.n_samples == len(x) and loaded.n_batches == 4
    patterns = loaded.patterns()
    for key in analyzer.patterns:
        np.testing.assert_array_equal(patterns[key], analyzer.patterns[key])
    # PatternStatistics.save writes a file that loads back the same.
    again = tmp_path / "stats.h5"
    loaded.save(str(again))
    _stats_equal(pk.PatternStatistics.load(str(again)), loaded)
    # Without statistics, loading them says how to get them.
    bare = tmp_path / "bare.h5"
    analyzer.save_patterns(str(bare), include_statistics=False)
    with pytest.raises(ValueError, match="statistics"):
        pk.PatternStatistics.load(str(bare))
    np.testing.assert_array_equal(pk.Patterns.load(str(bare))["head"], analyzer.patterns["head"])


@pytest.mark.parametrize("pattern_type", ["relu", "linear"])
def test_merge_of_two_halves_equals_the_whole(pattern_type, tmp_path):
    model = mlp()
    # Halves with different means: each half's fit picks another shift from its first batch.
    x = np.concatenate([data(64, seed=2, loc=1.0), data(64, seed=3, loc=4.0)])
    computer = pk.PatternComputer(model, pattern_type=pattern_type)
    first = computer.compute_statistics(x[:64], batch_size=16, verbose=0)
    second = computer.compute_statistics(x[64:], batch_size=16, verbose=0)
    whole = computer.compute_statistics(x, batch_size=16, verbose=0)
    assert first["head"].shift_x != second["head"].shift_x
    before = (copy.deepcopy(first.layers), copy.deepcopy(second.layers))
    merged = first.merge(second)
    assert merged is not first and merged is not second
    assert merged.n_samples == 128 and merged.n_batches == 8
    expected, got = whole.patterns(), merged.patterns()
    for key in expected:
        assert_close(got[key], expected[key], STATISTICS, err_msg=key)  # other shifts
        if expected.has_negative(key):
            assert_close(got.negative(key), expected.negative(key), STATISTICS, err_msg=key)
    # Both inputs unchanged.
    for stats, old in zip((first, second), before):
        for key, layer in stats.layers.items():
            assert layer.shift_x == old[key].shift_x
            np.testing.assert_array_equal(layer.shift_y, old[key].shift_y)
            for name in layer.sums:
                np.testing.assert_array_equal(layer.sums[name], old[key].sums[name])
    # Merging statistics read from files gives the same.
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    first.save(str(a))
    second.save(str(b))
    from_files = pk.PatternStatistics.load(str(a)).merge(pk.PatternStatistics.load(str(b)))
    for key in expected:  # float64 sums, saved and read: the same merge bit for bit
        np.testing.assert_array_equal(from_files.patterns()[key], got[key], err_msg=key)


def test_merge_refuses_other_models_and_types():
    model = mlp()
    x = data(48)
    stats = pk.PatternComputer(model).compute_statistics(x, batch_size=16, verbose=0)
    other_weights = pk.PatternComputer(mlp(seed=5)).compute_statistics(x, verbose=0)
    with pytest.raises(ValueError, match="different models"):
        stats.merge(other_weights)
    other_shape = pk.PatternComputer(mlp(hidden=4)).compute_statistics(x, verbose=0)
    with pytest.raises(ValueError, match="block/fc"):
        stats.merge(other_shape)
    linear = pk.PatternComputer(model, pattern_type="linear").compute_statistics(x, verbose=0)
    with pytest.raises(ValueError, match="pattern type"):
        stats.merge(linear)
    with pytest.raises(TypeError):
        stats.merge(stats.patterns())


# ---------------------------------------------------------------------------------------------
# The reference implementation (iNNvestigate 1.0.9)


@pytest.fixture(scope="module")
def reference(reference_mlp):
    return reference_mlp


@pytest.mark.parametrize("pattern_type", ["linear", "relu"])
def test_reference_patterns_and_analyses(reference, pattern_type):
    model, ref = reference
    patterns = pk.PatternComputer(model, pattern_type=pattern_type).compute(
        ref["x_fit"], batch_size=64, verbose=0
    )
    for name in ("dense1", "dense2", "dense3"):
        # The reference varies by ~2e-5 relative from run to run (REFERENCE.md).
        assert_close(
            patterns[name], ref[f"patterns/{pattern_type}/{name}"], STATISTICS, err_msg=name
        )
    x = ref["x_analyze"]
    logits = ref["logits"]
    assert np.all(logits.max(1) > 0)  # max_activation rows: a₊ regime, comparable everywhere
    positive3 = logits[:, 3] > 0
    assert 0 < positive3.sum() < len(x)
    for cls, name in (
        (pk.PatternNet, "pattern.net"),
        (pk.PatternAttribution, "pattern.attribution"),
    ):
        out = cls(model, pattern_type=pattern_type, patterns=patterns).analyze(x)
        expected = ref[f"{name}[{pattern_type}]/max_activation"]
        assert_close(out, expected, STATISTICS, err_msg=f"{name} max_activation")
        out3 = cls(
            model, pattern_type=pattern_type, patterns=patterns, neuron_selection_mode="index"
        ).analyze(x, neuron_selection=3)
        expected3 = ref[f"{name}[{pattern_type}]/index3"]
        # The reference uses only a₊ for the logits; our "relu" logits keep both regimes, so
        # rows with logit 3 ≤ 0 differ by design (MATH.md).
        rows = positive3 if pattern_type == "relu" else slice(None)
        assert_close(out3[rows], expected3[rows], STATISTICS, err_msg=f"{name} index3")
        if pattern_type == "relu":
            assert not np.allclose(out3[~positive3], expected3[~positive3], rtol=1e-2)


def test_patterns_of_the_model_before_further_training_are_refused():
    """The fingerprint is taken when patterns are set, not when the analyzer was built: after
    the model's weights change, patterns fitted on the old weights no longer load."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]
    )
    x = np.random.default_rng(3).normal(size=(64, 4)).astype("float32")
    analyzer = pk.PatternNet(model).fit(x, verbose=0)
    old = analyzer.patterns
    kernel, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([kernel + 0.5, bias])  # "trained further"
    with pytest.raises(ValueError, match="weight values differ"):
        analyzer.set_patterns(old)
    analyzer.fit(x, verbose=0)  # a new fit is accepted
    assert analyzer.patterns.fingerprint == pk.model_fingerprint(model)
