"""Pattern fits under tf.distribute equal the single-device fit.

Each strategy runs in a subprocess (``tests/_fit_worker.py``): logical CPU devices must be set up
before TensorFlow's first op, and a MultiWorkerMirroredStrategy owns its process. Every
subprocess is bounded by a hard kill (TensorFlow catches SIGTERM; a worker whose peer is gone
waits for ever), so a stuck worker fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import _fit_worker as worker
import numpy as np
import pytest
from conftest import SPLIT, assert_close

from pattern_keras import PatternNet
from pattern_keras.patterns import PatternComputer, PatternStatistics

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(worker.__file__).resolve()
#: A hang guard, not a speed test: on a loaded 2-core machine TensorFlow's import alone takes
#: ~35 s per process and the mirrored worker's six fits ~80 s more.
TIMEOUT_S = 300
#: 4 full batches of 32 and a final batch of 1: an odd number of batches, and a last batch that
#: leaves one of two replicas an empty shard.
N_SAMPLES = 4 * worker.BATCH_SIZE + 1


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def start_worker(mode: str, files: dict, *args: str, env=None, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(WORKER),
        mode,
        "--weights",
        str(files["weights"]),
        "--data",
        str(files["data"]),
        *args,
    ]
    handle = open(log, "wb")
    try:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env or worker_env(), stdout=handle, stderr=subprocess.STDOUT
        )
    finally:
        handle.close()


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = TIMEOUT_S):
    """Wait for every process; SIGKILL all of them at the deadline (or on any error)."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker(s) still running after {timeout} s; killed.\n" + tails(logs))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [proc.returncode for proc in procs]


def tails(logs: list[Path], n: int = 3000) -> str:
    return "\n".join(
        f"--- {log.name}:\n{log.read_bytes()[-n:].decode(errors='replace')}"
        for log in logs
        if log.exists()
    )


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def assert_same_patterns(results, reference: dict, case: str) -> None:
    """Every pattern of ``case`` equals the reference's to ``SPLIT`` of its largest entry: the
    replicas sum their float32 per-batch shards in another order (conftest.py)."""
    keys = [k for k in reference if not k.endswith("::n_samples")]
    assert int(results[f"{case}::n_samples"]) == N_SAMPLES
    for ref_key in keys:
        key = case + "::" + ref_key.split("::", 1)[1]
        assert key in results, f"{key} missing; have {sorted(results)}"
        want = reference[ref_key]
        assert_close(results[key], want, SPLIT, err_msg=key)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The model's weights and data on disk, and the single-device reference fit."""
    folder = tmp_path_factory.mktemp("cnn")
    model = worker.build_cnn()
    weights = folder / "cnn.weights.h5"
    model.save_weights(weights)
    x = worker.make_data(N_SAMPLES)
    data = folder / "data.npz"
    np.savez(data, x=x)
    stats = PatternComputer(model).compute_statistics(x, batch_size=worker.BATCH_SIZE, verbose=0)
    reference = worker.stats_results("single", stats)
    assert len([k for k in reference if k.count("::") == 1]) == 5  # n_samples + 4 layers
    return {
        "weights": weights,
        "data": data,
        "folder": folder,
        "model": model,
        "x": x,
        "reference": reference,
        "stats": stats,
    }


def test_mirrored_strategy_equals_single_device(cnn, tmp_path):
    out = tmp_path / "mirrored.npz"
    log = tmp_path / "mirrored.log"
    proc = start_worker("mirrored", cnn, "--out", str(out), "--replicas", "2", log=log)
    (code,) = wait_all([proc], [log])
    assert code == 0, tails([log])
    results = np.load(out)
    assert int(results["replicas"]) == 2
    assert sorted(results["last_shards"]) == [0, 1]  # the last batch leaves a replica empty
    cases = sorted({k.split("::")[0] for k in results.files if "::" in k})
    assert cases == sorted(f"{where}-{kind}-{how}" for where, kind, how in worker.MIRRORED_CASES)
    for case in cases:
        assert_same_patterns(results, cnn["reference"], case)


def test_multi_worker_mirrored_strategy_equals_single_device(cnn, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    checkpoint = tmp_path / "chief.h5"
    procs, logs, outs = [], [], []
    try:
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            outs.append(tmp_path / f"worker{index}.npz")
            logs.append(tmp_path / f"worker{index}.log")
            procs.append(
                start_worker(
                    "multiworker",
                    cnn,
                    "--out",
                    str(outs[-1]),
                    "--checkpoint",
                    str(checkpoint),
                    env=worker_env(TF_CONFIG=tf_config),
                    log=logs[-1],
                )
            )
        codes = wait_all(procs, logs)
    finally:
        for proc in procs:  # also when starting the second worker failed
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0, 0], tails(logs)
    for index, out in enumerate(outs):
        results = np.load(out)
        assert int(results["replicas"]) == 2 and int(results["task_index"]) == index
        for case in ("numpy-computer", "generator-analyzer"):
            assert_same_patterns(results, cnn["reference"], case)
        # Only the chief (worker 0) writes the checkpoint (once, at the end).
        assert int(results["checkpoint_writes"]) == (1 if index == 0 else 0)
        # A NaN in the data: both workers refused the same batch and returned.
        assert "holds 1 NaN or infinite value in batch" in str(results["nonfinite_error"])
    saved = PatternStatistics.load(checkpoint)
    assert saved.n_samples == N_SAMPLES and saved.n_batches == 5
    assert_same_patterns(worker.stats_results("chief", saved), cnn["reference"], "chief")


def test_in_process_default_strategy_matches_explicit_one(cnn):
    """The default strategy (no ``strategy=``) and ``tf.distribute.get_strategy()`` agree, and
    ``analyzer.fit`` gives the computer's patterns."""
    import tensorflow as tf

    model = cnn["model"]
    x = cnn["x"]
    explicit = PatternComputer(model, strategy=tf.distribute.get_strategy()).compute(
        x, batch_size=worker.BATCH_SIZE, verbose=0
    )
    analyzer = PatternNet(model).fit(x, batch_size=worker.BATCH_SIZE, verbose=0)
    for key in explicit:
        np.testing.assert_array_equal(explicit[key], analyzer.patterns[key])
