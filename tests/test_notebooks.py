"""Execute the notebooks headless (nbclient) with small settings.

The kernel is pinned to the interpreter running the tests: a temporary ``python3`` kernelspec
whose ``argv[0]`` is ``sys.executable`` is put first on ``JUPYTER_PATH``, so a system-wide
``python3`` kernel of another environment is never picked up. The notebooks' install cells are
skipped (``PK_NB_SKIP_INSTALL=1``), the repository is put on the kernel's ``PYTHONPATH`` (so
an uninstalled checkout works too), and ``PK_NB_QUICK=1`` makes every step tiny.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT = 300


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A python3 kernelspec for this interpreter, and the notebooks' environment variables."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    jupyter_path = [str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH", "")]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(p for p in jupyter_path if p))
    python_path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in python_path if p))
    monkeypatch.setenv("PK_NB_SKIP_INSTALL", "1")
    monkeypatch.setenv("PK_NB_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("PK_NB_WORKDIR", str(workdir))
    return workdir


def test_the_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "patterns_for_your_own_model.ipynb"} <= names


def test_kernel_is_this_interpreter(kernel_env):
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable
    import ipykernel

    # ipykernel comes from this environment, not from another one on the path.
    assert pathlib.Path(ipykernel.__file__).resolve().is_relative_to(
        pathlib.Path(sys.prefix).resolve())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    # First cell of code: the local install (skipped via PK_NB_SKIP_INSTALL); the Colab cell is
    # all comments. Check both stay that way, so CI never installs anything.
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert "PK_NB_SKIP_INSTALL" in code_cells[0].source
    assert all(line.startswith("#") or not line.strip()
               for line in code_cells[1].source.splitlines())
    # Prove the kernel runs this interpreter: a check cell at the front.
    check = nbformat.v4.new_code_cell(
        "import sys\n"
        f"assert sys.executable == {sys.executable!r}, sys.executable")
    nb.cells.insert(0, check)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=TIMEOUT,
        resources={"metadata": {"path": str(kernel_env)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the notebook displayed no figure"
