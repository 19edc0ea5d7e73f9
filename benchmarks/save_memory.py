"""The memory a save of ResNet50's statistics takes, built in memory (as ``save`` does) or written
by HDF5 straight to the disk (as before: a full disk then left HDF5's state corrupted).

``keras.applications.ResNet50(weights=None)`` (224×224×3), its relu statistics from a fit of
``--images`` random images (default 2; the file's size does not depend on the data), saved once
with :meth:`PatternStatistics.save` to a work file. Then, each in a fresh subprocess that loads
that file, collects garbage and samples its resident set size (``/proc/self/statm``) every
millisecond in a thread:

- ``in memory``: ``PatternStatistics.save`` (the HDF5 file built in a ``BytesIO``, its bytes
  written with Python I/O);
- ``HDF5 to disk``: the same content written by HDF5 to a file on disk (``h5py.File(path, "w")``
  and ``io._write_content``), which is what ``save`` did before.

The table gives the file size and each one's peak resident set size during the save above the
level just before it. The difference is what building the file in memory costs.

Usage::

    python benchmarks/save_memory.py [--images 2] [--folder /tmp/save_memory]

Linux only (``/proc``). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import gc, os, sys, threading, time
sys.path.insert(0, sys.argv[3])
import h5py
from pattern_keras.patterns import PatternStatistics, io

source, mode = sys.argv[1], sys.argv[2]
stats = PatternStatistics.load(source)
patterns = stats._build_patterns(warn=False)
gc.collect()
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

peak = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)

before = rss()
thread = threading.Thread(target=sample)
thread.start()
target = source + "." + mode.replace(" ", "_") + ".h5"
if mode == "in memory":
    io.save(target, patterns, stats)
else:
    with h5py.File(target, "w") as f:
        io._write_content(f, patterns, stats)
done.set()
thread.join()
peak[0] = max(peak[0], rss())
print(before, peak[0], os.path.getsize(target))
os.remove(target)
"""


def _fit_statistics(path: str, images: int) -> None:
    import keras
    import numpy as np

    import pattern_keras as pk

    model = keras.applications.ResNet50(weights=None)
    x = np.random.default_rng(0).uniform(0, 255, (images, 224, 224, 3)).astype("float32")
    stats = pk.PatternComputer(model).compute_statistics(x, batch_size=images, verbose=0)
    stats.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--folder", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        source = os.path.join(folder, "resnet50_statistics.h5")
        # The fit in a subprocess of its own: TensorFlow's memory stays out of the children.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.path.insert(0, sys.argv[3]); "
                "from benchmarks.save_memory import _fit_statistics; "
                "_fit_statistics(sys.argv[1], int(sys.argv[2]))",
                source,
                str(args.images),
                repo,
            ],
            check=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        )
        rows = []
        for mode in ("HDF5 to disk", "in memory"):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, source, mode, repo],
                check=True,
                capture_output=True,
                text=True,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            ).stdout.split()
            before, peak, size = (int(v) for v in out[-3:])
            rows.append((mode, size, peak - before))
    mib = 2**20
    print("| save | file size (MiB) | peak RSS during the save above before it (MiB) |")
    print("|---|---:|---:|")
    for mode, size, extra in rows:
        print(f"| {mode} | {size / mib:.0f} | {extra / mib:.0f} |")
    print(f"\nin memory - HDF5 to disk: {(rows[1][2] - rows[0][2]) / mib:.0f} MiB")


if __name__ == "__main__":
    main()
