"""Bad data and damaged files: a clear error, never a silent zero, nothing lost.

One test per case found by a hostile try of the API, the command line and the files: damaged,
tampered or oversized pattern files and checkpoints, stale patterns, resuming with another batch
size, non-finite data, Keras-style data. Tampered files are re-signed (their checksum recomputed)
where a test checks the structural checks behind the checksum.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import pattern_keras as pk
from pattern_keras.patterns import io as pio

L = keras.layers
REPO = Path(__file__).resolve().parent.parent


def mlp(seed=0, hidden=8):
    """Input(5) → Dense 'fc'(hidden, relu) → Dense 'head'(3): 'head' keeps both regimes."""
    x = keras.Input((5,), name="x")
    h = L.Dense(hidden, activation="relu", name="fc")(x)
    model = keras.Model(x, L.Dense(3, name="head")(h), name="mlp")
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
    return model


def data(n=96, seed=1):
    return np.random.default_rng(seed).normal(1.0, 1.0, (n, 5)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    model = mlp()
    x = data()
    analyzer = pk.PatternAttribution(model).fit(x, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("bad") / "p.h5"
    analyzer.save_patterns(str(path))
    return model, x, analyzer, path


def copy_of(path: Path, folder: Path, name: str = "copy.h5") -> Path:
    out = folder / name
    out.write_bytes(path.read_bytes())
    return out


def resign(path: Path) -> None:
    """Recompute the checksum of a tampered file (as a buggy writer would have written it)."""
    with h5py.File(path, "a") as f:
        f.attrs[pio.METADATA_CHECKSUM_ATTR] = pio._digest(f, values=False)
        f.attrs[pio.CHECKSUM_ATTR] = pio._digest(f)


def loaders(model):
    return {
        "Patterns.load": pk.Patterns.load,
        "PatternStatistics.load": pk.PatternStatistics.load,
        "analyzer": lambda p: pk.PatternNet(model).load_patterns(p),
    }


def refused_everywhere(path, model, match, skip=()):
    for name, load in loaders(model).items():
        if name in skip:
            continue
        with pytest.raises(pk.PatternFileError, match=match) as info:
            load(str(path))
        assert path.name in str(info.value), name


# ---------------------------------------------------------------------------------------------
# Files: shapes before reading, a_negative, missing/extra/duplicated/malformed entries


def test_declared_shape_is_checked_before_any_array_is_read(fitted, tmp_path, monkeypatch):
    """A small file declaring a huge chunked dataset is refused without reading it."""
    model, _, _, path = fitted
    bad = copy_of(path, tmp_path)
    with h5py.File(bad, "a") as f:
        del f["patterns/head/a"]
        f["patterns/head"].create_dataset(
            "a", shape=(200_000, 100_000), dtype="f8", chunks=(1000, 1000)
        )  # 160 GB declared, never written
        # Its metadata re-signed (not its values: the checksum over them would read them).
        f.attrs[pio.METADATA_CHECKSUM_ATTR] = pio._digest(f, values=False)
    assert bad.stat().st_size < 200_000
    read = []
    original = h5py.Dataset.__getitem__

    def spy(self, *args):
        read.append(self.name)
        return original(self, *args)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    refused_everywhere(bad, model, r"/patterns/head/a' has shape \(200000, 100000\)")
    assert "/patterns/head/a" not in read


def test_group_for_a_layer_the_model_lacks_is_refused(fitted, tmp_path):
    model, _, _, path = fitted
    bad = copy_of(path, tmp_path)
    with h5py.File(bad, "a") as f:
        g = f["patterns"].create_group("ghost")
        g.attrs["key"] = "ghost"
        g.attrs["pattern_type"] = "relu"
        g.create_dataset("a", data=np.zeros((5, 8), np.float32))
    resign(bad)
    refused_everywhere(bad, model, "extra entry '/patterns/ghost'")
    with pytest.raises(pk.PatternFileError, match="the model has no pattern layer 'ghost'"):
        pk.PatternNet(model).load_patterns(str(bad))


@pytest.mark.parametrize("case", ["missing", "scalar", "wrong shape", "where none belongs"])
def test_a_negative_is_validated_like_a(fitted, tmp_path, case):
    model, x, analyzer, path = fitted
    bare = tmp_path / "bare.h5"  # patterns only: no statistics to say which regimes exist
    analyzer.save_patterns(str(bare), include_statistics=False)
    for source, with_stats in ((bare, False), (path, True)):
        bad = copy_of(source, tmp_path, f"{case}-{with_stats}.h5")
        with h5py.File(bad, "a") as f:
            if case == "where none belongs":
                f["patterns/fc"].create_dataset("a_negative", data=np.ones((5, 8), np.float32))
            else:
                del f["patterns/head/a_negative"]
                if case == "scalar":
                    f["patterns/head"].create_dataset("a_negative", data=np.float32(1.0))
                elif case == "wrong shape":
                    f["patterns/head"].create_dataset(
                        "a_negative", data=np.ones((3, 8), np.float32)
                    )
        resign(bad)
        if case in ("scalar", "wrong shape"):
            refused_everywhere(bad, model, r"a_negative' has shape")
        elif with_stats:
            refused_everywhere(bad, model, "a_negative")
        else:
            # Without statistics only the model knows which layers keep both regimes.
            with pytest.raises(ValueError, match="'(head|fc)'.*a_negative"):
                pk.PatternAttribution(model, patterns=str(bad))
    # In memory too: a scalar or missing a₋ is refused by set_patterns.
    good = analyzer.patterns
    for negative, message in (
        ({"head": np.float32(1.0)}, r"shape \(\)"),
        ({}, "no negative-regime pattern"),
    ):
        hand = pk.Patterns(
            {k: good[k] for k in good},
            negative=negative,
            pattern_types=good.pattern_types,
            fingerprint=good.fingerprint,
        )
        with pytest.raises(ValueError, match=message):
            pk.PatternAttribution(model).set_patterns(hand)


def test_damaged_checkpoint_entries_raise_pattern_file_error(fitted, tmp_path):
    """A missing, wrong-shaped, extra, duplicated or non-finite entry names itself."""
    model, x, _, path = fitted
    cases = {
        "missing sum": (
            lambda f: f.__delitem__("statistics/head/sum_xy"),
            "lacks the entry 'sum_xy'",
        ),
        "wrong-shaped sum": (
            lambda f: (
                f.__delitem__("statistics/head/n"),
                f["statistics/head"].create_dataset("n", data=[1.0]),
            ),
            r"/statistics/head/n' has shape \(1,\)",
        ),
        "extra sum": (
            lambda f: f["statistics/fc"].create_dataset("sum_x", data=np.ones((5, 8))),
            "unexpected entry 'sum_x'",
        ),
        "integer sum": (
            lambda f: (
                f.__delitem__("statistics/head/n"),
                f["statistics/head"].create_dataset("n", data=[1, 2, 3]),
            ),
            "dtype int64",
        ),
        "duplicated layer": (
            lambda f: f["patterns"].__setitem__("copy", f["patterns/head"]),
            "claims the layer key 'head'.*duplicated",
        ),
        "NaN sum": (
            lambda f: f["statistics/head/sum_y"].__setitem__(0, np.nan),
            "sum_y' holds 1 NaN",
        ),
        "missing root attribute": (
            lambda f: f.attrs.__delitem__("n_samples"),
            "lacks the attribute 'n_samples'",
        ),
        "malformed out_axes": (
            lambda f: f["statistics/head"].attrs.__setitem__("out_axes", np.array([5])),
            "malformed attribute 'out_axes'",
        ),
    }
    for name, (tamper, message) in cases.items():
        bad = copy_of(path, tmp_path, name.replace(" ", "_") + ".h5")
        with h5py.File(bad, "a") as f:
            tamper(f)
        resign(bad)
        skip = ("Patterns.load", "analyzer") if name == "NaN sum" else ()
        with pytest.raises(pk.PatternFileError, match=message):
            pk.PatternStatistics.load(str(bad))
        refused_everywhere(bad, model, message, skip=skip)
        # And a fit does not resume from it, leaving it as it was.
        before = bad.read_bytes()
        with pytest.raises(pk.PatternFileError, match=message):
            pk.PatternComputer(model).compute_statistics(x, verbose=0, checkpoint_path=str(bad))
        assert bad.read_bytes() == before, name


@pytest.mark.parametrize(
    "fingerprint, message",
    [
        ("{}", "malformed fingerprint.*'layers' and 'weights_sha256'"),
        ("[1, 2]", "malformed fingerprint"),
        ('{"layers": [["fc", "Dense", [[5, 8]]]], "weights_sha256": 7}', "not a SHA-256"),
        (
            '{"layers": [["fc", "Dense", "x"]], "weights_sha256": "' + "0" * 64 + '"}',
            "layer entry 0",
        ),
        ("{not json", "malformed fingerprint.*not JSON"),
    ],
)
def test_malformed_fingerprint_is_refused(fitted, tmp_path, fingerprint, message):
    model, _, _, path = fitted
    bad = copy_of(path, tmp_path)
    with h5py.File(bad, "a") as f:
        f.attrs["fingerprint"] = fingerprint
    resign(bad)
    refused_everywhere(bad, model, message)


def test_links_external_storage_and_virtual_datasets_are_not_followed(fitted, tmp_path):
    model, _, _, path = fitted
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f.create_dataset("a", data=np.ones((8, 3), np.float32))
    raw = tmp_path / "raw.bin"
    np.ones((8, 3), np.float32).tofile(raw)

    def replace_head_a(f, how):
        del f["patterns/head/a"]
        g = f["patterns/head"]
        if how == "external link":
            g["a"] = h5py.ExternalLink(str(outside), "/a")
        elif how == "soft link":
            g["a"] = h5py.SoftLink("/patterns/fc/a")
        elif how == "external storage":
            g.create_dataset("a", shape=(8, 3), dtype="f4", external=[(str(raw), 0, 96)])
        else:
            layout = h5py.VirtualLayout(shape=(8, 3), dtype="f4")
            layout[:] = h5py.VirtualSource(str(outside), "a", shape=(8, 3))
            g.create_virtual_dataset("a", layout)

    for how, message in (
        ("external link", "external link"),
        ("soft link", "soft link"),
        ("external storage", "external files"),
        ("virtual", "virtual dataset"),
    ):
        bad = copy_of(path, tmp_path, how.replace(" ", "_") + ".h5")
        with h5py.File(bad, "a") as f:
            replace_head_a(f, how)
        refused_everywhere(bad, model, message)


# ---------------------------------------------------------------------------------------------
# Files: checksum, version 1


def _flip_bit(path: Path, offset: int, bit: int = 3) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def test_flipped_bits_in_a_dataset_and_in_attributes_are_detected(fitted, tmp_path):
    model, _, _, path = fitted
    # A dataset: one bit of a stored sum, found at its place in the file.
    bad = copy_of(path, tmp_path, "dataset.h5")
    with h5py.File(bad, "r") as f:
        offset = f["statistics/head/sum_xy"].id.get_offset()
    assert offset is not None
    _flip_bit(bad, offset + 5)
    refused_everywhere(bad, model, "checksum does not match")
    # An attribute: one bit of the fingerprint's text (a digit of its weight SHA-256).
    bad = copy_of(path, tmp_path, "fingerprint.h5")
    digest = json.loads(str(h5py.File(path, "r").attrs["fingerprint"]))["weights_sha256"]
    offset = bad.read_bytes().index(digest.encode())
    raw = bytearray(bad.read_bytes())
    raw[offset] = ord("0") if raw[offset] != ord("0") else ord("1")  # still valid hex
    bad.write_bytes(bytes(raw))
    refused_everywhere(bad, model, "checksum does not match")
    # An attribute: one bit of a layer's shift (a float attribute), the file otherwise intact.
    bad = copy_of(path, tmp_path, "shift.h5")
    with h5py.File(bad, "a") as f:
        shift = np.float64(f["statistics/head"].attrs["shift_x"])
        bits = shift.view(np.uint64) ^ np.uint64(1 << 20)
        f["statistics/head"].attrs["shift_x"] = bits.view(np.float64)
    refused_everywhere(bad, model, "checksum does not match")


def test_version_1_files_load_with_a_warning(fitted, tmp_path):
    model, x, analyzer, path = fitted
    old = copy_of(path, tmp_path, "v1.h5")
    with h5py.File(old, "a") as f:
        f.attrs["format_version"] = 1
        del f.attrs[pio.CHECKSUM_ATTR]
        del f.attrs[pio.METADATA_CHECKSUM_ATTR]
        del f.attrs[pio.FIT_IDS_ATTR]  # version 3
    with pytest.warns(pio.PatternFileWarning, match="version 1.*no checksum"):
        loaded = pk.PatternAttribution(model, patterns=str(old))
    np.testing.assert_array_equal(loaded.analyze(x[:4]), analyzer.analyze(x[:4]))
    with pytest.warns(pio.PatternFileWarning):
        pk.PatternStatistics.load(str(old))
    # Saved again, it is version 2 and loads silently.
    loaded.save_patterns(str(old), include_statistics=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.Patterns.load(str(old))


# ---------------------------------------------------------------------------------------------
# Files: saving


_KILLED_SAVE = """
import importlib.util, os, signal, sys
import numpy as np
# The file module alone (not the package, which imports TensorFlow): a quick subprocess.
spec = importlib.util.spec_from_file_location("pk_io", sys.argv[2])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)

class Patterns(dict):
    n_samples = 1
    pattern_types = {"fc": "relu"}
    fingerprint = {"layers": [["fc", "Dense", [[5, 8]]]], "weights_sha256": "0" * 64}
    def has_negative(self, key):
        return False

os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)   # killed just before the rename
io.save(sys.argv[1], Patterns(fc=np.ones((5, 8))))
"""


def test_leftover_of_a_killed_save_is_removed_by_the_next_save(fitted, tmp_path):
    _, _, analyzer, _ = fitted
    target = tmp_path / "p.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_SAVE,
            str(target),
            str(REPO / "pattern_keras" / "patterns" / "io.py"),
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert (
        len(leftovers) == 1 and leftovers[0].startswith("p.h5.") and leftovers[0].endswith(".tmp")
    ), leftovers  # named after its target
    other = tmp_path / "other.h5.1.abc.tmp"  # another target's temporary file: not touched
    other.write_bytes(b"x")
    analyzer.save_patterns(str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.h5.1.abc.tmp", "p.h5"]
    pk.Patterns.load(str(target))


def test_saving_keeps_a_symlink_and_the_file_mode(fitted, tmp_path):
    _, _, analyzer, _ = fitted
    real = tmp_path / "store" / "real.h5"
    real.parent.mkdir()
    analyzer.save_patterns(str(real))
    os.chmod(real, 0o600)
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    analyzer.save_patterns(str(link))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == ["real.h5"]
    pk.Patterns.load(str(link))


def test_patterns_without_a_fingerprint_are_not_saved(tmp_path):
    hand = pk.Patterns({"fc": np.ones((5, 8))})
    with pytest.raises(ValueError, match="no model fingerprint"):
        hand.save(str(tmp_path / "x.h5"))
    assert not list(tmp_path.iterdir())
    # Set on an analyzer, they belong to its model and save.
    model = mlp()
    patterns = {"fc": np.ones((5, 8)), "head": np.ones((8, 3))}
    analyzer = pk.PatternNet(model)
    analyzer.set_patterns(pk.Patterns(patterns, negative={"head": np.ones((8, 3))}))
    analyzer.save_patterns(str(tmp_path / "x.h5"))
    assert pk.Patterns.load(str(tmp_path / "x.h5")).fingerprint == pk.model_fingerprint(model)


# ---------------------------------------------------------------------------------------------
# Stale patterns


def test_patterns_of_weights_trained_further_are_refused_at_analyze(fitted, tmp_path):
    _, x, _, path = fitted
    model = mlp()
    analyzer = pk.PatternAttribution(model, patterns=str(path))
    expected = analyzer.analyze(x[:8])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x[:16], np.zeros((16, 3)), epochs=1, batch_size=16, verbose=0)  # one step
    with pytest.raises(
        pk.StalePatternsError,
        match="changed after its patterns were fitted"
        r".*Refit.*allow_stale_patterns=True",
    ) as info:
        analyzer.analyze(x[:8])
    assert "fc/kernel" in str(info.value)  # names the first changed weight
    # The explicit opt-out uses them anyway, on the new weights.
    stale = analyzer.analyze(x[:8], allow_stale_patterns=True)
    assert stale.shape == expected.shape and not np.allclose(stale, expected)
    # A refit makes them current again.
    analyzer.fit(x, verbose=0)
    analyzer.analyze(x[:8])
    # set_weights on one layer, one value changed: caught too.
    kernel, bias = model.get_layer("fc").get_weights()
    kernel[2, 3] = np.nextafter(kernel[2, 3], np.float32(np.inf))
    model.get_layer("fc").set_weights([kernel, bias])
    with pytest.raises(pk.StalePatternsError, match="fc/kernel"):
        analyzer.analyze(x[:8])


# ---------------------------------------------------------------------------------------------
# Resume by samples


def test_resume_with_another_batch_size_counts_every_sample_once(tmp_path):
    model = mlp()
    x = data(100)
    computer = pk.PatternComputer(model)
    whole = computer.compute_statistics(x, batch_size=16, verbose=0)
    checkpoint = tmp_path / "fit.h5"
    # 37 samples in batches of 10 (the last one partial), as if the fit had stopped there.
    part = computer.compute_statistics(
        x[:37], batch_size=10, verbose=0, checkpoint_path=str(checkpoint)
    )
    assert part.n_samples == 37
    for batch_size in (7, 64):  # a smaller and a larger batch size than the checkpoint's
        resumed_from = copy_of(checkpoint, tmp_path, f"resume{batch_size}.h5")
        resumed = computer.compute_statistics(
            x, batch_size=batch_size, verbose=0, checkpoint_path=str(resumed_from)
        )
        assert resumed.n_samples == 100
        for key in whole:
            for got, want in zip(resumed[key].patterns(), whole[key].patterns()):
                if want is not None:
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
            for name in whole[key].sums:
                if name in ("n", "n_pos"):
                    np.testing.assert_array_equal(resumed[key].sums[name], whole[key].sums[name])


# ---------------------------------------------------------------------------------------------
# Non-finite data


def test_one_nan_in_1e5_samples_is_named_and_nothing_of_its_batch_is_kept(tmp_path):
    model = mlp()
    x = np.random.default_rng(2).normal(0.5, 1.0, (100_000, 5)).astype(np.float32)
    position = 73_421
    computer = pk.PatternComputer(model)
    for value in (np.nan, -np.inf):
        bad = x.copy()
        bad[position, 3] = value
        checkpoint = tmp_path / "fit.h5"
        if checkpoint.exists():
            checkpoint.unlink()
        with pytest.raises(
            ValueError,
            match=r"holds 1 NaN or infinite value in batch 72 "
            rf"\(the first in sample {position} of the stream",
        ):
            computer.compute_statistics(
                bad, batch_size=1024, verbose=0, checkpoint_path=str(checkpoint)
            )
        # The checkpoint keeps exactly the 71 good batches before it, nothing of the bad one.
        kept = pk.PatternStatistics.load(str(checkpoint))
        assert kept.n_samples == 71 * 1024
    # Fixed, the fit resumes from there and equals the fit of the clean data.
    resumed = computer.compute_statistics(
        x, batch_size=4096, verbose=0, checkpoint_path=str(checkpoint)
    )
    whole = computer.compute_statistics(x, batch_size=1024, verbose=0)
    assert resumed.n_samples == whole.n_samples == 100_000
    for key in whole:
        for name in ("n", "n_pos"):  # counts: every sample once
            np.testing.assert_array_equal(resumed[key].sums[name], whole[key].sums[name])
        for name in whole[key].sums:  # float32 per-batch sums, batched otherwise
            np.testing.assert_allclose(
                resumed[key].sums[name],
                whole[key].sums[name],
                rtol=1e-5,
                atol=1e-5 * np.abs(whole[key].sums[name]).max(),
            )
    # Analyzer.fit refuses the same way.
    bad = x[:2048].copy()
    bad[1500, 0] = np.nan
    with pytest.raises(ValueError, match="sample 1500"):
        pk.PatternAttribution(model).fit(bad, verbose=0)


def test_zero_over_zero_is_zero_with_a_warning_and_an_overflow_is_an_error():
    x_in = keras.Input((3,))
    model = keras.Model(
        x_in, L.Dense(2, name="out")(L.Dense(4, activation="relu", name="hidden")(x_in))
    )
    hidden = model.get_layer("hidden")
    kernel = np.array([[1, -1, 0.5, 0], [0.5, -1, -0.5, 0], [0, -1, 1, 0]], np.float32)
    hidden.set_weights([kernel, np.array([0, -100, 0, 0], np.float32)])  # neuron 1 never fires
    model.get_layer("out").set_weights([np.ones((4, 2), np.float32), np.zeros(2, np.float32)])
    x = np.random.default_rng(0).uniform(0.1, 1, (64, 3)).astype(np.float32)
    with pytest.warns(
        pk.patterns.statistics.UndefinedPatternWarning, match=r"'hidden' 2 of 4 neurons \(a₊\)"
    ):  # the dead one and the zero one
        patterns = pk.PatternComputer(model).compute(x, verbose=0)
    np.testing.assert_array_equal(patterns["hidden"][:, [1, 3]], 0.0)
    assert np.all(np.isfinite(patterns["hidden"])) and np.any(patterns["hidden"][:, 0] != 0)
    # Finite data whose products overflow float32: an error naming the layer, not a zero.
    huge = np.full((64, 3), 3e37, np.float32) * np.random.default_rng(1).uniform(1, 2, (64, 3))
    with pytest.raises(ValueError, match="layer 'hidden'.*NaN or infinite"):
        pk.PatternComputer(model).compute(huge.astype(np.float32), verbose=0)


# ---------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_bad")
    model = mlp()
    model.save(folder / "model.keras")
    x = data(40)
    np.save(folder / "x.npy", x)
    bad = x.copy()
    bad[17, 2] = np.nan
    np.save(folder / "nan.npy", bad)
    (folder / "a_file").write_text("not a folder")
    return folder


def run_cli(argv, capsys):
    from pattern_keras import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_user_errors_are_one_line_exit_2_before_any_work(cli_files, capsys, monkeypatch):
    from pattern_keras.patterns import PatternComputer

    d = cli_files
    calls = []
    monkeypatch.setattr(
        PatternComputer,
        "compute_statistics",
        lambda *a, **k: calls.append(1) or pytest.fail("fitted anyway"),
    )
    cases = [
        (
            ["fit", d / "model.keras", d / "x.npy", "-o", d / "a_file" / "p.h5"],
            "cannot write .*a_file' is a file, not a folder",
        ),
        (
            [
                "analyze",
                d / "model.keras",
                d / "x.npy",
                "-m",
                "gradient",
                "-o",
                d / "a_file" / "out",
            ],
            "cannot write .*a_file' is a file, not a folder",
        ),
        (
            [
                "analyze",
                d / "model.keras",
                d / "x.npy",
                "-m",
                "patern.net",
                "--patterns",
                d / "p.h5",
                "-o",
                d / "out",
            ],
            "unknown method 'patern.net'; did you mean 'pattern.net'",
        ),
        (
            ["fit", d / "model.keras", d / "nan.npy", "-o", d / "p.h5"],
            r"holds 1 NaN or infinite values \(the first in sample 17",
        ),
        (
            ["analyze", d / "model.keras", d / "nan.npy", "-m", "gradient", "-o", d / "out"],
            r"holds 1 NaN or infinite values \(the first in sample 17",
        ),
    ]
    for argv, message in cases:
        code, out, err = run_cli(argv, capsys)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert __import__("re").search(message, err), err
    assert not calls and not (d / "p.h5").exists() and not (d / "out").exists()
    if os.geteuid() != 0:  # root may write anywhere
        locked = d / "locked"
        locked.mkdir()
        os.chmod(locked, 0o500)
        code, _, err = run_cli(
            ["fit", d / "model.keras", d / "x.npy", "-o", locked / "p.h5"], capsys
        )
        assert code == 2 and "no permission to write" in err


def test_cli_runtime_failure_is_one_line_exit_1_and_debug_shows_the_traceback(
    cli_files, capsys, monkeypatch
):
    from pattern_keras.patterns import PatternComputer

    d = cli_files

    def boom(*args, **kwargs):
        warnings.warn("a warning\nover two lines", UserWarning, stacklevel=2)
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(PatternComputer, "compute_statistics", boom)
    argv = ["fit", d / "model.keras", d / "x.npy", "-o", d / "p.h5", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert err.strip().splitlines() == [  # a library warning is one line too
        "pattern-keras fit: warning: a warning over two lines",
        "pattern-keras fit: error: RuntimeError: the device fell over (run with --debug for "
        "details)",
    ]
    code, _, err = run_cli(["--debug"] + argv, capsys)
    assert code == 1 and "Traceback" in err and "the device fell over" in err


@pytest.mark.parametrize("cls", [pk.Gradient, pk.PatternNet, pk.PatternAttribution])
def test_analyze_refuses_non_finite_inputs(fitted, cls):
    model, x, analyzer, _ = fitted
    explainer = cls(model) if cls is pk.Gradient else cls(model, patterns=analyzer.patterns)
    bad = x[:10].copy()
    bad[6, 1] = np.inf
    bad[8, 0] = np.nan
    with pytest.raises(
        ValueError,
        match=r"holds 2 NaN or infinite values \(the first in "
        r"sample 6",
    ):
        explainer.analyze(bad)
    import tensorflow as tf

    # In a dataset the sample is counted over the whole stream (here: batch 2, row 4).
    with pytest.raises(ValueError, match=r"holds 1 NaN or infinite value \(the first in sample 9"):
        explainer.analyze(
            tf.data.Dataset.from_tensor_slices(np.concatenate([x[:5], bad[:4], bad[8:9]])).batch(5)
        )
    explainer.analyze(x[:10])  # clean rows still work


# ---------------------------------------------------------------------------------------------
# Keras-style data


class _Batches(keras.utils.PyDataset):
    def __init__(self, parts):
        super().__init__()
        self.parts = parts

    def __len__(self):
        return len(self.parts)

    def __getitem__(self, i):
        return self.parts[i]


def _assert_same_fit(got, want):
    assert got.n_samples == want.n_samples
    a, b = got.patterns(), want.patterns()
    for key in b:
        np.testing.assert_allclose(
            a[key], b[key], rtol=1e-4, atol=1e-5 * np.abs(b[key]).max(), err_msg=key
        )


def test_fit_takes_keras_style_data_and_ignores_y():
    import tensorflow as tf

    model = mlp()
    x = data(96)
    labels = np.arange(96) % 3
    computer = pk.PatternComputer(model)
    want = computer.compute_statistics(x, batch_size=32, verbose=0)
    name = model.inputs[0].name

    def gen(y):
        for i in range(0, 96, 32):
            yield (x[i : i + 32], y[i : i + 32])

    forms = {
        "(x, labels)": (x, labels),
        "(x, y shaped like x)": (x, x * 2),  # an autoencoder's y: not fitted as data
        "(x, y, None)": (x, labels, None),
        "dataset (x, y)": tf.data.Dataset.from_tensor_slices((x, labels)).batch(32),
        "dataset ({name: x}, y)": tf.data.Dataset.from_tensor_slices(({name: x}, labels)).batch(32),
        "generator (x, y)": gen(labels),
        "generator of dicts": ({name: x[i : i + 32]} for i in range(0, 96, 32)),
        "PyDataset (x, y)": _Batches([(x[i : i + 32], labels[i : i + 32]) for i in (0, 32, 64)]),
    }
    for _label, form in forms.items():
        _assert_same_fit(computer.compute_statistics(form, batch_size=32, verbose=0), want)
    # The analyzer's fit takes them too.
    fitted = pk.PatternNet(model).fit((x, x), verbose=0)
    assert fitted.patterns.n_samples == 96


def test_fit_multi_input_data_as_list_or_dict_keyed_by_input_name():
    import tensorflow as tf

    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = L.Dense(4, activation="relu", name="fc")(L.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b}, L.Dense(2, name="head")(h))
    x = data(64)
    xa, xb = x[:, :3], x[:, 3:]
    computer = pk.PatternComputer(model)
    want = computer.compute_statistics([xa, xb], batch_size=16, verbose=0)
    for form in (
        {"b": xb, "a": xa},
        ({"a": xa, "b": xb}, np.zeros(64)),
        ((xa, xb), None),
        tf.data.Dataset.from_tensor_slices(({"b": xb, "a": xa}, np.zeros(64))).batch(16),
    ):
        _assert_same_fit(computer.compute_statistics(form, batch_size=16, verbose=0), want)
    with pytest.raises(ValueError, match=r"keys \['a'\].*inputs are \['a', 'b'\].*missing"):
        computer.compute_statistics({"a": xa}, verbose=0)


def test_fit_refuses_sample_weight_unknown_types_ragged_and_bad_steps():
    import tensorflow as tf

    model = mlp()
    x = data(64)
    w = np.ones(64, np.float32)
    computer = pk.PatternComputer(model)
    for form in (
        (x, None, w),
        tf.data.Dataset.from_tensor_slices((x, x[:, 0], w)).batch(16),
        ((x[i : i + 16], None, w[i : i + 16]) for i in range(0, 64, 16)),
    ):
        with pytest.raises(ValueError, match="sample_weight.*unweighted"):
            computer.compute_statistics(form, verbose=0)
    for form, message in (
        ("x.npy", "type str"),
        (7, "type int"),
        ({1, 2}, "set"),
        ([x, x], "list of 2 values"),
        (tf.ragged.constant([[1.0] * 5, [2.0] * 5]), "RaggedTensor"),
        (
            tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1.0] * 5, [2.0] * 4])).batch(2),
            "RaggedTensor",
        ),
        ((np.array(["a"] * 64, object)[:, None].repeat(5, 1) for _ in [0]), "numeric"),
    ):
        with pytest.raises(ValueError, match=message):
            computer.compute_statistics(form, verbose=0)
    for steps in (1.5, 0, "2", True):
        with pytest.raises(ValueError, match="steps must be an integer"):
            computer.compute_statistics(x, steps=steps, verbose=0)
