"""Files, second pass (issue 22): a full disk during a save, leftovers of writers on other hosts,
the identity of a fit in its statistics (no sample merged twice).

The full-disk cases lower ``RLIMIT_FSIZE`` around one save in a subprocess (HDF5 used to leave
its state corrupted there, and the process died at the next close or at exit).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
_ENV = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------
# Item 10: a full disk during a save


_FULL_DISK_SAVE = """
import importlib.util, os, resource, signal, sys
import numpy as np
import pytest
# The file module alone (not the package, which imports TensorFlow): a quick subprocess.
spec = importlib.util.spec_from_file_location("pk_io", sys.argv[2])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)

class Patterns(dict):
    n_samples = 1
    pattern_types = {"fc": "relu", "head": "relu"}
    fingerprint = {"layers": [["fc", "Dense", [[50, 80]]], ["head", "Dense", [[80, 3]]]],
                   "weights_sha256": "0" * 64}
    def has_negative(self, key):
        return False

target = sys.argv[1]
io.save(target, Patterns(fc=np.ones((50, 80)), head=np.ones((80, 3))))
before = open(target, "rb").read()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write beyond the limit fails with EFBIG
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
for limit in (100, 4000, len(before) - 100):     # in the data, in the metadata, at the end
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        io.save(target, Patterns(fc=np.zeros((50, 80)), head=np.ones((80, 3))))
    except OSError as err:
        print("refused:", type(err).__name__, err.errno)
    else:
        raise SystemExit("the save beyond the file size limit succeeded")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert open(target, "rb").read() == before, "the old file changed"
    assert sorted(os.listdir(os.path.dirname(target))) == ["p.h5"], "a temporary file is left"
io.save(target, Patterns(fc=np.full((50, 80), 2.0), head=np.ones((80, 3))))
print("saved again")
"""


def test_full_disk_save_keeps_the_process_and_the_old_file(tmp_path):
    """A save that hits the file size limit raises OSError; the process lives on (exit 0, not a
    segmentation fault at the next close or at exit), the old file is byte for byte intact, no
    temporary file is left, and a later save works."""
    target = tmp_path / "p.h5"
    proc = _run(_FULL_DISK_SAVE, str(target), str(REPO / "pattern_keras" / "patterns" / "io.py"))
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert proc.stdout.count("refused: OSError 27") == 3, proc.stdout  # EFBIG
    assert "saved again" in proc.stdout


_FULL_DISK_CHECKPOINT = """
import os, resource, signal, sys
import keras
import numpy as np
import pytest
import pattern_keras as pk

x_in = keras.Input((5,))
h = keras.layers.Dense(8, activation="relu", name="fc")(x_in)
model = keras.Model(x_in, keras.layers.Dense(3, name="head")(h))
x = np.random.default_rng(1).normal(1.0, 1.0, (96, 5)).astype("float32")
ck = sys.argv[1]
computer = pk.PatternComputer(model)
computer.compute_statistics(x[:32], batch_size=16, checkpoint_path=ck, verbose=0)
before = open(ck, "rb").read()

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, hard))
try:
    computer.compute_statistics(x[:64], batch_size=16, checkpoint_path=ck, verbose=0)
except OSError as err:
    print("refused:", err.errno)
else:
    raise SystemExit("the checkpoint beyond the file size limit was written")
finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
assert open(ck, "rb").read() == before, "the old checkpoint changed"

# The same process resumes the fit from the intact checkpoint.
resumed = computer.compute_statistics(x, batch_size=16, checkpoint_path=ck, verbose=0)
whole = pk.PatternComputer(model).compute_statistics(x, batch_size=16, verbose=0)
assert resumed.n_samples == 96, resumed.n_samples
for key in whole:
    for name, value in whole[key].sums.items():
        np.testing.assert_allclose(resumed[key].sums[name], value, rtol=1e-6, atol=1e-6)
print("resumed", resumed.n_samples)
"""


def test_full_disk_checkpoint_then_resume_in_the_same_process(tmp_path):
    """A checkpoint that hits a full disk raises OSError; the old checkpoint is intact and the
    fit resumes from it in the same process, giving the statistics of one fit on all data."""
    proc = _run(_FULL_DISK_CHECKPOINT, str(tmp_path / "ck.h5"))
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert "refused: 27" in proc.stdout and "resumed 96" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------------------------
# Item 13: leftovers of writers on other hosts


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_are_removed_only_when_provably_dead(tmp_path):
    """A leftover temporary file is removed when it is this host's (and PID namespace's) and
    its PID is dead, or when it is older than LEFTOVER_AGE_S; a fresh file of another host (a
    writer whose PID is not visible here) is kept, in the old naming too."""
    from pattern_keras.patterns import io as pio

    dead = _dead_pid()
    tag = pio._host_tag()
    other_tag = "0" * 12 if tag != "0" * 12 else "1" * 12
    names = {
        "mine_dead": f"p.h5.{tag}-{dead}.abc12345.tmp",
        "mine_alive": f"p.h5.{tag}-{os.getppid()}.abc12345.tmp",
        "other_host_fresh": f"p.h5.{other_tag}-{dead}.abc12345.tmp",
        "other_host_old": f"p.h5.{other_tag}-{dead}.def12345.tmp",
        "old_naming_fresh": f"p.h5.{dead}.abc12345.tmp",  # a writer of a version before 0.x
        "old_naming_old": f"p.h5.{dead}.def12345.tmp",
        "other_target": f"q.h5.{tag}-{dead}.abc12345.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    stale = time.time() - pio.LEFTOVER_AGE_S - 60
    for key in ("other_host_old", "old_naming_old"):
        os.utime(tmp_path / names[key], (stale, stale))
    pio._remove_leftovers(str(tmp_path), "p.h5")
    kept = {key for key, name in names.items() if (tmp_path / name).exists()}
    assert kept == {"mine_alive", "other_host_fresh", "old_naming_fresh", "other_target"}


def test_the_host_tag_is_in_the_temporary_name(tmp_path, monkeypatch):
    """The temporary file of a save carries this host's tag and this process's PID."""
    from pattern_keras.patterns import io as pio

    seen = []
    replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)

    class Patterns(dict):
        n_samples = 1
        pattern_types = {"fc": "relu"}
        fingerprint = {"layers": [["fc", "Dense", [[5, 8]]]], "weights_sha256": "0" * 64}

        def has_negative(self, key):
            return False

    pio.save(str(tmp_path / "p.h5"), Patterns(fc=np.ones((5, 8))))
    assert len(seen) == 1 and seen[0].startswith(f"p.h5.{pio._host_tag()}-{os.getpid()}.")


# ---------------------------------------------------------------------------------------------
# Item 7: every fit has an identity; statistics that share one are not merged


def _mlp():
    import keras

    x = keras.Input((5,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="fc")(x)
    model = keras.Model(x, keras.layers.Dense(3, name="head")(h), name="mlp")
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory):
    """Two fits of one model on disjoint halves of the data, saved as a.h5 and b.h5."""
    import pattern_keras as pk

    model = _mlp()
    x = np.random.default_rng(1).normal(1.0, 1.0, (64, 5)).astype(np.float32)
    folder = tmp_path_factory.mktemp("fits")
    computer = pk.PatternComputer(model)
    for name, part in (("a.h5", x[:32]), ("b.h5", x[32:])):
        computer.compute_statistics(part, batch_size=16, verbose=0).save(str(folder / name))
    return model, x, folder


def test_each_fit_has_its_own_identity_and_a_merge_carries_both(two_fits):
    import pattern_keras as pk

    _, _, folder = two_fits
    a = pk.PatternStatistics.load(str(folder / "a.h5"))
    b = pk.PatternStatistics.load(str(folder / "b.h5"))
    assert len(a.fit_ids) == 1 and len(b.fit_ids) == 1 and a.fit_ids != b.fit_ids
    merged = a.merge(b)
    assert merged.fit_ids == a.fit_ids | b.fit_ids and merged.n_samples == 64
    merged.save(str(folder / "ab.h5"))
    assert pk.PatternStatistics.load(str(folder / "ab.h5")).fit_ids == merged.fit_ids


def test_statistics_sharing_a_fit_are_not_merged(two_fits, tmp_path):
    """The same file twice, a copy of it, or a merged file and one of its parts: refused, not
    counted twice."""
    import pattern_keras as pk
    from pattern_keras.patterns.statistics import OverlappingStatisticsError

    _, _, folder = two_fits
    a_path = folder / "a.h5"
    copy = tmp_path / "copy.h5"
    copy.write_bytes(a_path.read_bytes())
    a = pk.PatternStatistics.load(str(a_path))
    b = pk.PatternStatistics.load(str(folder / "b.h5"))
    for other in (pk.PatternStatistics.load(str(a_path)), pk.PatternStatistics.load(str(copy))):
        with pytest.raises(OverlappingStatisticsError, match="counted twice"):
            a.merge(other)
    with pytest.raises(ValueError, match="both hold the fit"):
        a.merge(b).merge(pk.PatternStatistics.load(str(a_path)))


def test_cli_merge_of_a_file_with_itself_is_refused(two_fits, tmp_path, capsys):
    from pattern_keras.cli import main

    _, _, folder = two_fits
    a = str(folder / "a.h5")
    out = tmp_path / "c.h5"
    assert main(["merge", a, a, "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "counted twice" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert main(["merge", a, str(folder / "b.h5"), "-o", str(out), "-q"]) == 0


def test_a_resumed_fit_keeps_the_identity_of_its_checkpoint(two_fits, tmp_path):
    import pattern_keras as pk
    from pattern_keras.patterns.statistics import OverlappingStatisticsError

    model, x, _ = two_fits
    ck = str(tmp_path / "ck.h5")
    computer = pk.PatternComputer(model)
    computer.compute_statistics(x[:32], batch_size=16, checkpoint_path=ck, verbose=0)
    first = pk.PatternStatistics.load(ck)
    resumed = computer.compute_statistics(x, batch_size=16, checkpoint_path=ck, verbose=0)
    assert resumed.n_samples == 64 and resumed.fit_ids == first.fit_ids
    assert pk.PatternStatistics.load(ck).fit_ids == first.fit_ids
    with pytest.raises(OverlappingStatisticsError):
        resumed.merge(first)  # the checkpoint's samples are inside the resumed fit
    # A new fit (no checkpoint) is a fit of its own.
    again = computer.compute_statistics(x[:32], batch_size=16, verbose=0)
    assert again.fit_ids.isdisjoint(first.fit_ids)


def _as_version_2(path: Path) -> None:
    """Rewrite a file as pattern_keras 0.1.0 wrote it: format version 2, no fit identities."""
    import h5py

    from pattern_keras.patterns import io as pio

    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 2
        del f.attrs[pio.FIT_IDS_ATTR]
        f.attrs[pio.METADATA_CHECKSUM_ATTR] = pio._digest(f, values=False)
        f.attrs[pio.CHECKSUM_ATTR] = pio._digest(f)


def test_old_files_get_an_identity_derived_from_their_content(two_fits, tmp_path):
    """A file written before identities existed loads with ``file-sha256:<content digest>``:
    the same old file (or a copy) given twice is refused; merged with another fit it works,
    with a warning that overlaps inside it cannot be checked."""
    import pattern_keras as pk
    from pattern_keras.patterns.statistics import (
        LegacyStatisticsWarning,
        OverlappingStatisticsError,
    )

    _, _, folder = two_fits
    old = tmp_path / "old.h5"
    old.write_bytes((folder / "a.h5").read_bytes())
    _as_version_2(old)
    copy = tmp_path / "old_copy.h5"
    copy.write_bytes(old.read_bytes())
    first = pk.PatternStatistics.load(str(old))
    (derived,) = first.fit_ids
    assert derived.startswith("file-sha256:")
    assert pk.PatternStatistics.load(str(copy)).fit_ids == first.fit_ids
    with pytest.raises(OverlappingStatisticsError):
        first.merge(pk.PatternStatistics.load(str(copy)))
    with pytest.warns(LegacyStatisticsWarning, match="cannot be"):
        merged = first.merge(pk.PatternStatistics.load(str(folder / "b.h5")))
    assert derived in merged.fit_ids and len(merged.fit_ids) == 2


@pytest.mark.parametrize(
    "value, message",
    [
        ('["not an id"]', "fit_ids"),
        ("[]", "fit_ids"),
        ('["' + "a" * 32 + '", "' + "a" * 32 + '"]', "distinct"),
        ("{", "not JSON"),
    ],
)
def test_malformed_fit_ids_are_refused(two_fits, tmp_path, value, message):
    import h5py

    import pattern_keras as pk
    from pattern_keras.patterns import io as pio

    _, _, folder = two_fits
    bad = tmp_path / "bad.h5"
    bad.write_bytes((folder / "a.h5").read_bytes())
    with h5py.File(bad, "a") as f:
        f.attrs[pio.FIT_IDS_ATTR] = value
        f.attrs[pio.METADATA_CHECKSUM_ATTR] = pio._digest(f, values=False)
        f.attrs[pio.CHECKSUM_ATTR] = pio._digest(f)
    with pytest.raises(pk.PatternFileError, match=message):
        pk.PatternStatistics.load(str(bad))


# ---------------------------------------------------------------------------------------------
# Item 8: 16-bit PNGs


def _ramp16() -> np.ndarray:
    """A 64-level 16-bit ramp, 8×8 (0, 1040, ..., 65520)."""
    return (np.arange(64, dtype=np.uint32) * 1040).astype(np.uint16).reshape(8, 8)


def _write_png16(path: Path, values: np.ndarray) -> None:
    import tensorflow as tf

    if values.ndim == 2:
        values = values[..., None]
    path.write_bytes(tf.io.encode_png(values).numpy())


@pytest.mark.parametrize("mode", ["grayscale", "rgb", "rgba"])
def test_16_bit_grey_png_is_read_at_its_depth_and_scaled_to_0_255(tmp_path, mode):
    """Each of the 64 levels keeps its own value, value × 255 / 65535, for every colour mode
    (it became 0 and 255 for an RGB model, and stayed 0..65520 for a grayscale one)."""
    from pattern_keras.cli import load_data

    ramp = _ramp16()
    _write_png16(tmp_path / "ramp.png", ramp)
    from pattern_keras import _images

    image = _images.read_image(str(tmp_path / "ramp.png"), mode, None)
    want = ramp.astype(np.float64) * 255 / 65535
    channels = {"grayscale": 1, "rgb": 3, "rgba": 4}[mode]
    assert image.shape == (8, 8, channels) and image.dtype == np.float32
    for c in range(min(channels, 3)):
        np.testing.assert_allclose(image[..., c], want, rtol=1e-6)
    if mode == "rgba":
        np.testing.assert_array_equal(image[..., 3], 255.0)
    assert len(np.unique(image[..., 0])) == 64
    # Through the command line's reader, with --preprocess unit: the 16-bit values / 65535.
    x, names = load_data(str(tmp_path / "ramp.png"), preprocess="unit")
    assert names == ["ramp"] and x.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(x[0, ..., 1], ramp / 65535, rtol=1e-6)


def test_16_bit_colour_png_to_grey_and_resized(tmp_path):
    """An RGB 16-bit PNG for a grayscale model: ITU-R 601-2 luma of the full-depth values;
    resized as keras.utils.load_img resizes (nearest neighbour: halving takes the odd rows and
    columns)."""
    from pattern_keras import _images

    ramp = _ramp16()
    rgb = np.stack([ramp, ramp[::-1], 65535 - ramp], axis=-1)
    _write_png16(tmp_path / "c.png", rgb)
    grey = _images.read_image(str(tmp_path / "c.png"), "grayscale", None)
    r, g, b = (rgb[..., i].astype(np.float64) * 255 / 65535 for i in range(3))
    np.testing.assert_allclose(grey[..., 0], 0.299 * r + 0.587 * g + 0.114 * b, rtol=1e-6)
    small = _images.read_image(str(tmp_path / "c.png"), "rgb", (4, 4))
    np.testing.assert_allclose(small[..., 0], r[1::2, 1::2], rtol=1e-6)
    np.testing.assert_allclose(small[..., 2], b[1::2, 1::2], rtol=1e-6)
    # An 8-bit PNG is read as before (by Pillow), its values unscaled.
    import keras

    keras.utils.save_img(tmp_path / "e.png", (ramp // 257)[..., None].astype("uint8"), scale=False)
    eight = _images.read_image(str(tmp_path / "e.png"), "grayscale", None)
    np.testing.assert_array_equal(eight[..., 0], ramp // 257)
