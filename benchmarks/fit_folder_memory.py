"""Peak memory of ``pattern-keras fit`` on folders of 200, 2,000 and 8,000 images.

    python benchmarks/fit_folder_memory.py [CODE_ROOT]

Writes 64x64 RGB PNGs to a temporary folder and runs ``pattern-keras fit --batch-size 50`` on
each folder in a fresh process (the checkout at CODE_ROOT, default this one, on PYTHONPATH),
printing the process's peak resident memory (``ru_maxrss``). Streaming keeps it flat; loading
the folder at once grows it by about 0.2 MB per image here (float32 array plus PIL copies).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

SCRIPT = """
import json, resource, sys
from pattern_keras import cli
code = cli.main(["fit", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "--batch-size", "50",
                 "-q"])
print(json.dumps({"code": code, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else str(pathlib.Path(__file__).resolve().parents[1])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        keras.utils.set_random_seed(5)
        model = keras.Sequential(
            [
                keras.Input((64, 64, 3)),
                keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(2),
            ]
        )
        model.save(tmp / "m.keras")
        rng = np.random.default_rng(6)
        print(f"{'images':>8}  peak RSS (MB)   [{root}]")
        for n in (200, 2000, 8000):
            folder = tmp / f"images{n}"
            folder.mkdir()
            for i in range(n):
                keras.utils.save_img(
                    folder / f"{i:05d}.png", rng.integers(0, 256, (64, 64, 3)), scale=False
                )
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    SCRIPT,
                    str(tmp / "m.keras"),
                    str(folder),
                    str(tmp / f"p{n}.h5"),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": root},
            )
            report = json.loads(result.stdout.strip().splitlines()[-1])
            if report["code"] != 0:
                sys.exit(result.stderr)
            print(f"{n:>8}  {report['peak_kb'] / 1024:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
