"""Every notebook runs top to bottom where pattern_keras is not installed: the Colab case.

Each notebook gets a kernel in a fresh virtual environment that sees this interpreter's
packages (TensorFlow, Keras, ipykernel, pip) but not pattern_keras (see ``notebook_env``), with
``PK_PIP_SPEC`` pointing at a wheel built once from this checkout. The notebook's own install
cell must find pattern_keras missing and install it; cells added by the test check both. With
``PK_NB_QUICK=1`` every step is tiny.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from notebook_env import fresh_kernel  # noqa: E402  (pytest puts tests/ on sys.path)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT = 600


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel of this checkout (what a Colab user would upload), built once."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    (path,) = out.glob("pattern_keras-*.whl")
    return path


def test_the_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "patterns_for_your_own_model.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_figures(path):
    """Outputs are saved (``tools/regenerate.py notebooks``): figures show when only viewed."""
    nb = nbformat.read(path, as_version=4)
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert images and not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_where_pattern_keras_is_missing(path, wheel, tmp_path):
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    install = code_cells[0]
    # One pip spec, set at the top of the first code cell, overridable from the environment.
    assert install.source.startswith('PK_PIP_SPEC = "pattern-keras"')
    assert 'os.environ.get("PK_PIP_SPEC", PK_PIP_SPEC)' in install.source
    assert 'find_spec("pattern_keras") is None' in install.source
    position = nb.cells.index(install)
    before = nbformat.v4.new_code_cell(
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('pattern_keras') is None, 'preinstalled'\n"
        f"assert sys.prefix == {str(tmp_path / 'venv')!r}, sys.prefix"
    )
    after = nbformat.v4.new_code_cell(
        "import pattern_keras, pathlib\n"
        f"assert pathlib.Path(pattern_keras.__file__).is_relative_to({str(tmp_path / 'venv')!r})"
        ", pattern_keras.__file__"
    )
    nb.cells[position : position + 1] = [before, install, after]
    with fresh_kernel(tmp_path, pip_spec=str(wheel), quick=True) as (kernel, workdir, _):
        client = nbclient.NotebookClient(
            nb, kernel_name=kernel, timeout=TIMEOUT, resources={"metadata": {"path": str(workdir)}}
        )
        client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    install_text = "".join(o.get("text", "") for o in install.outputs)
    assert "pattern_keras is missing: pip install" in install_text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure displayed"
