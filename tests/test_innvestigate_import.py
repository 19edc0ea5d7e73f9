"""Pattern files of iNNvestigate 1.x (``.npz`` of ``arr_0 … arr_N``): import, refusal of files
that do not fit, the HDF5 round trip, and the ``import-patterns`` command.

The reference: the patterns and outputs of iNNvestigate 1.0.9 on its MLP
(``tests/data/innvestigate-1.0.9-mlp.npz``, see ``tests/data/REFERENCE.md``).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import pattern_keras as pk
from pattern_keras import cli
from pattern_keras.patterns import PatternFileError, Patterns
from pattern_keras.patterns.innvestigate import kernel_layers

L = keras.layers
LAYERS = ("dense1", "dense2", "dense3")


def reference_arrays(ref, pattern_type):
    """The reference's patterns as iNNvestigate keeps them: a list in layer order."""
    return [ref[f"patterns/{pattern_type}/{name}"] for name in LAYERS]


def close_to_largest(actual, desired, rel=1e-5, err_msg=""):
    """|actual - desired| <= rel · max|desired|, everywhere."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    np.testing.assert_allclose(
        actual, desired, rtol=0, atol=rel * float(np.max(np.abs(desired))), err_msg=err_msg
    )


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory, reference_mlp):
    _, ref = reference_mlp
    folder = tmp_path_factory.mktemp("innvestigate")
    paths = {}
    for pattern_type in ("relu", "linear"):
        paths[pattern_type] = folder / f"mlp_{pattern_type}.npz"
        np.savez(paths[pattern_type], *reference_arrays(ref, pattern_type))
    return paths


# ---------------------------------------------------------------------------------------------
# Equal to the reference implementation, on every row


@pytest.mark.parametrize("pattern_type", ["relu", "linear"])
def test_imported_reference_patterns_give_the_reference_outputs(
    reference_mlp, npz_files, pattern_type
):
    model, ref = reference_mlp
    patterns = Patterns.from_innvestigate(npz_files[pattern_type], model, pattern_type=pattern_type)
    assert list(patterns) == list(LAYERS)
    for name, array in zip(LAYERS, reference_arrays(ref, pattern_type)):
        assert np.array_equal(patterns[name], array)
        assert patterns.pattern_types[name] == pattern_type
    # The logits layer keeps both regimes here; the file's one pattern serves both.
    if pattern_type == "relu":
        assert [k for k in patterns if patterns.has_negative(k)] == ["dense3"]
        assert np.array_equal(patterns.negative("dense3"), patterns["dense3"])
    else:
        assert not any(patterns.has_negative(k) for k in patterns)
    assert patterns.fingerprint == pk.model_fingerprint(model)

    x, logits = ref["x_analyze"], ref["logits"]
    negative3 = logits[:, 3] <= 0
    assert negative3.sum() == 22  # the rows where a two-regime logits layer would differ
    for cls, name in (
        (pk.PatternNet, "pattern.net"),
        (pk.PatternAttribution, "pattern.attribution"),
    ):
        out = cls(model, pattern_type=pattern_type, patterns=patterns).analyze(x)
        close_to_largest(
            out, ref[f"{name}[{pattern_type}]/max_activation"], err_msg=f"{name} max_activation"
        )
        out3 = cls(
            model, pattern_type=pattern_type, patterns=patterns, neuron_selection_mode="index"
        ).analyze(x, neuron_selection=3)
        expected3 = ref[f"{name}[{pattern_type}]/index3"]
        close_to_largest(out3, expected3, err_msg=f"{name} index3, all rows")
        assert np.abs(expected3[negative3]).max() > 0.1 * np.abs(expected3).max()


def test_a_two_regime_fit_differs_where_the_import_agrees(reference_mlp, npz_files):
    """The imported patterns are not what a two-regime fit gives: with our own a₋ for the
    logits, rows whose logit 3 is ≤ 0 move away from the reference; with the file's pattern
    for both regimes they do not."""
    model, ref = reference_mlp
    imported = Patterns.from_innvestigate(npz_files["relu"], model)
    a_minus = (
        pk.PatternComputer(model).compute(ref["x_fit"], batch_size=64, verbose=0).negative("dense3")
    )
    assert not np.allclose(a_minus, imported["dense3"], rtol=1e-2)
    two_regimes = Patterns(
        {k: imported[k] for k in imported},
        negative={"dense3": a_minus},
        fingerprint=imported.fingerprint,
    )
    x, expected = ref["x_analyze"], ref["pattern.net[relu]/index3"]
    negative3 = ref["logits"][:, 3] <= 0
    out = pk.PatternNet(model, patterns=two_regimes, neuron_selection_mode="index").analyze(
        x, neuron_selection=3
    )
    assert not np.allclose(out[negative3], expected[negative3], rtol=1e-2)
    np.testing.assert_allclose(out[~negative3], expected[~negative3], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Files that do not fit: a clear error each


class _Detonator:
    """Unpickling it would record the fact: proof that nothing in the file is unpickled."""

    unpickled = False

    def __reduce__(self):
        return (_detonate, ())


def _detonate():
    _Detonator.unpickled = True


def _write(path, arrays=None, **named):
    np.savez(path, *(arrays or []), **named)
    return path


def test_one_array_too_few(reference_mlp, tmp_path):
    model, ref = reference_mlp
    arrays = reference_arrays(ref, "relu")
    with pytest.raises(
        ValueError,
        match=r"holds 2 arrays.*3 layers with a kernel.*first layer "
        r"without an array is 'dense3' \(kernel shape "
        r"\(16, 10\)\)",
    ):
        Patterns.from_innvestigate(_write(tmp_path / "few.npz", arrays[:2]), model)
    # Missing the first: the shapes shift, and the first that differs is named.
    with pytest.raises(
        ValueError,
        match=r"holds 2 arrays.*arr_0 for layer 'dense1': expected "
        r"shape \(64, 32\), found \(32, 16\)",
    ):
        Patterns.from_innvestigate(_write(tmp_path / "few0.npz", arrays[1:]), model)
    with pytest.raises(ValueError, match=r"holds 4 arrays.*arr_3 on \(shape \(16, 10\)\)"):
        Patterns.from_innvestigate(_write(tmp_path / "many.npz", arrays + arrays[-1:]), model)


def test_one_array_of_the_wrong_shape(reference_mlp, tmp_path):
    model, ref = reference_mlp
    arrays = reference_arrays(ref, "relu")
    arrays[1] = arrays[1].T
    with pytest.raises(
        ValueError,
        match=r"arr_1 .* has shape \(16, 32\), but layer 'dense2' "
        r"\(layer 1 with a kernel\) has a kernel of shape "
        r"\(32, 16\)",
    ):
        Patterns.from_innvestigate(_write(tmp_path / "shape.npz", arrays), model)


def test_a_pickled_object_array_is_refused_unopened(reference_mlp, tmp_path):
    model, ref = reference_mlp
    arrays = reference_arrays(ref, "relu")
    arrays[2] = np.array([_Detonator(), arrays[2]], dtype=object)
    path = _write(tmp_path / "pickled.npz", arrays)
    with pytest.raises(PatternFileError, match=r"arr_2 .* pickled object array"):
        Patterns.from_innvestigate(path, model)
    assert not _Detonator.unpickled
    # The usual cause: the list given as one argument (ragged arrays become one object array).
    ragged = np.empty(3, dtype=object)
    ragged[:] = reference_arrays(ref, "relu")
    with pytest.raises(PatternFileError, match=r"arr_0 .* pickled object array.*\*patterns"):
        Patterns.from_innvestigate(_write(tmp_path / "list.npz", [ragged]), model)


@pytest.mark.parametrize(
    "case", ["named arrays", "gap", "integers", "nan", "not npz", "npy", "missing", "pattern type"]
)
def test_other_files_that_cannot_be_patterns(reference_mlp, tmp_path, case):
    model, ref = reference_mlp
    arrays = reference_arrays(ref, "relu")
    path = tmp_path / "p.npz"
    kind, fragment, pattern_type = PatternFileError, None, "relu"
    if case == "named arrays":
        _write(path, dense1=arrays[0], dense2=arrays[1], dense3=arrays[2])
        fragment = r"named 'dense1'.*only arr_0, arr_1"
    elif case == "gap":
        _write(path, arr_0=arrays[0], arr_2=arrays[2])
        fragment = r"no array arr_1"
    elif case == "integers":
        _write(path, [arrays[0], arrays[1], np.ones((16, 10), np.int64)])
        fragment = r"arr_2 .* dtype int64"
    elif case == "nan":
        arrays[1] = arrays[1].copy()
        arrays[1][3, 4] = np.nan
        _write(path, arrays)
        kind, fragment = ValueError, r"arr_1 .*'dense2'.* NaN"
    elif case == "not npz":
        path.write_bytes(b"PK\x03\x04 not really a zip file")
        fragment = r"not a readable \.npz"
    elif case == "npy":
        path = tmp_path / "p.npy"
        np.save(path, arrays[0])
        fragment = r"single array of shape \(64, 32\)"
    elif case == "missing":
        path = tmp_path / "nope.npz"
        kind, fragment = FileNotFoundError, "does not exist"
    else:
        _write(path, arrays)
        kind, fragment, pattern_type = ValueError, r"pattern_type must be one of", "filter"
    with pytest.raises(kind, match=fragment):
        Patterns.from_innvestigate(path, model, pattern_type=pattern_type)


# ---------------------------------------------------------------------------------------------
# HDF5 round trip


def test_import_save_load_round_trip_is_exact(reference_mlp, npz_files, tmp_path):
    model, ref = reference_mlp
    imported = Patterns.from_innvestigate(npz_files["relu"], model)
    path = tmp_path / "imported.h5"
    imported.save(str(path))
    loaded = Patterns.load(str(path))
    assert list(loaded) == list(imported)
    for key in imported:
        assert loaded[key].dtype == imported[key].dtype == np.float32
        assert np.array_equal(loaded[key], imported[key])
        assert loaded.has_negative(key) == imported.has_negative(key)
    assert np.array_equal(loaded.negative("dense3"), imported.negative("dense3"))
    assert loaded.pattern_types == imported.pattern_types
    assert loaded.n_samples == imported.n_samples == 0
    assert loaded.fingerprint == imported.fingerprint
    x = ref["x_analyze"]
    a = pk.PatternAttribution(model, patterns=imported, neuron_selection_mode="index")
    b = pk.PatternAttribution(model, patterns=str(path), neuron_selection_mode="index")
    assert np.array_equal(a.analyze(x, neuron_selection=3), b.analyze(x, neuron_selection=3))


# ---------------------------------------------------------------------------------------------
# Layer order: nested models flattened, convolutions, layers off the path


def _conv_model():
    keras.utils.set_random_seed(5)
    block = keras.Sequential(
        [keras.Input((32,)), L.Dense(6, activation="relu", name="fc")], name="block"
    )
    x = keras.Input((6, 6, 1))
    h = L.Conv2D(2, 3, activation="relu", name="conv")(x)
    h = block(L.Flatten(name="flatten")(h))
    model = keras.Model(x, L.Dense(3, name="head")(h), name="convnet")
    return model


def test_nested_conv_model_in_layer_order():
    model = _conv_model()
    assert [k for k, _ in kernel_layers(model)] == ["conv", "block/fc", "head"]
    x = np.random.default_rng(5).normal(size=(64, 6, 6, 1)).astype(np.float32)
    fitted = pk.PatternComputer(model).compute(x, batch_size=32, verbose=0)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/conv.npz"
        np.savez(path, fitted["conv"], fitted["block/fc"], fitted["head"])
        imported = Patterns.from_innvestigate(path, model)
        for key in ("conv", "block/fc", "head"):
            assert np.array_equal(imported[key], fitted[key])
        assert np.array_equal(imported.negative("head"), fitted["head"])
        assert not imported.has_negative("conv") and not imported.has_negative("block/fc")
        # Swapped: the convolution's array where the nested Dense's belongs.
        np.savez(path, fitted["block/fc"], fitted["conv"], fitted["head"])
        with pytest.raises(ValueError, match=r"arr_0 .* has shape \(32, 6\), but layer 'conv'"):
            Patterns.from_innvestigate(path, model)


def test_separable_convolution_is_refused(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            L.SeparableConv2D(3, 3, activation="relu", name="sep"),
            L.Flatten(),
            L.Dense(2, name="head"),
        ]
    )
    path = _write(
        tmp_path / "sep.npz", [np.ones((3, 3, 2, 1), np.float32), np.ones((48, 2), np.float32)]
    )
    with pytest.raises(ValueError, match=r"'sep' is a separable convolution"):
        Patterns.from_innvestigate(path, model)


# ---------------------------------------------------------------------------------------------
# The command line


def test_import_patterns_command(reference_mlp, npz_files, tmp_path, capsys):
    model, ref = reference_mlp
    model_path = tmp_path / "mlp.keras"
    model.save(model_path)
    out = tmp_path / "imported.h5"
    code = cli.main(["import-patterns", str(model_path), str(npz_files["relu"]), "-o", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "dense1, dense2, dense3" in stdout and "dense3 serves both regimes" in stdout
    loaded = Patterns.load(str(out))
    for key in LAYERS:
        assert np.array_equal(loaded[key], ref[f"patterns/relu/{key}"])
    assert np.array_equal(loaded.negative("dense3"), loaded["dense3"])
    # ... and 'analyze' with it gives the reference, every row.
    np.save(tmp_path / "x.npy", ref["x_analyze"])
    code = cli.main(
        [
            "analyze",
            str(model_path),
            str(tmp_path / "x.npy"),
            "-m",
            "pattern.attribution",
            "--patterns",
            str(out),
            "--neuron",
            "3",
            "-o",
            str(tmp_path / "explained"),
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    close_to_largest(
        np.load(tmp_path / "explained" / "explanations.npy"),
        ref["pattern.attribution[relu]/index3"],
    )

    # A file for another model: exit 2, one line naming the layer.
    arrays = reference_arrays(ref, "relu")
    bad = _write(tmp_path / "bad.npz", [arrays[0], arrays[1].T, arrays[2]])
    code = cli.main(["import-patterns", str(model_path), str(bad), "-o", str(tmp_path / "b.h5")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "'dense2'" in err and "(32, 16)" in err, err
    assert not (tmp_path / "b.h5").exists()

    code = cli.main(["import-patterns", "--help"])
    assert code == 0 and "pattern-keras import-patterns" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The example: VGG16 with published patterns (smoke test: random weights, stand-in .npz)


def test_vgg16_published_patterns_example_smoke(tmp_path, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "vgg16_published_patterns.py"
    spec = importlib.util.spec_from_file_location("vgg16_published_patterns", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "out"
    assert example.main(["--output", str(out), "--image-size", "32"]) == 0
    assert "Imported 16 relu patterns" in capsys.readouterr().out
    stand_in = np.load(out / "stand_in.npz")
    saved = Patterns.load(str(out / "patterns.h5"))
    assert len(stand_in.files) == len(saved) == 16  # 13 convolutions, 3 Dense
    for i, key in enumerate(saved):
        assert np.array_equal(saved[key], stand_in[f"arr_{i}"])
    assert [k for k in saved if saved.has_negative(k)] == ["predictions"]
    for name in ("pattern_net.npy", "pattern_attribution.npy"):
        value = np.load(out / name)
        assert value.shape == (4, 32, 32, 3) and np.isfinite(value).all() and value.any()
    assert (out / "explanations.png").stat().st_size > 0
    assert len(list(out.glob("generated*.png"))) == 4
