"""Jupyter kernels for running the notebooks: a fresh environment without pattern_keras, or
this interpreter with the checkout on its path.

``fresh_kernel`` is the Colab case made cheap. A new virtual environment (``venv
--without-pip``, about a second) gets one ``.pth`` file listing this interpreter's
site-packages folders, so TensorFlow, Keras, ipykernel and pip are found without being
installed again. A ``.pth`` line only adds its folder to ``sys.path``: the ``.pth`` files
*inside* those folders are not run, so an editable install of pattern_keras there (a ``.pth``
path or import hook, which is how ``pip install -e .`` installs it) is invisible, and the
checkout is not on ``PYTHONPATH`` either. pattern_keras is therefore really missing until the
notebook's install cell runs ``pip install $PK_PIP_SPEC`` into the new environment.

``repo_kernel`` runs this interpreter with the checkout first on ``PYTHONPATH``: what
``tools/regenerate.py notebooks`` uses to store outputs made by the current code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import site
import subprocess
import sys
import venv

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNEL_NAME = "pk-notebook"


def _write_kernelspec(jupyter_dir: pathlib.Path, python: str, env: dict[str, str]) -> None:
    spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pattern_keras notebooks)",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def _site_packages() -> list[str]:
    """This interpreter's site-packages folders (its venv's, then the user's, if any)."""
    folders = list(site.getsitepackages())
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and user and os.path.isdir(user):
        folders.append(user)
    return [f for f in folders if os.path.isdir(f)]


def make_fresh_env(path: pathlib.Path) -> str:
    """A new venv at ``path`` that sees this interpreter's packages but not pattern_keras.

    Returns the path of its Python.
    """
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt", clear=True).create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pathlib.Path(target, "_pk_shared_site.pth").write_text(
        "".join(f"{folder}\n" for folder in _site_packages())
    )
    return str(python)


def _notebook_env(workdir: pathlib.Path | None, quick: bool) -> dict[str, str]:
    env = {
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONNOUSERSITE": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    if workdir is not None:
        env["PK_NB_WORKDIR"] = str(workdir)
    if quick:
        env["PK_NB_QUICK"] = "1"
    return env


@contextlib.contextmanager
def _jupyter_path(jupyter_dir: pathlib.Path):
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(jupyter_dir), old) if p)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


@contextlib.contextmanager
def fresh_kernel(tmp: pathlib.Path, pip_spec: str, quick: bool = True):
    """Yield ``(kernel name, workdir, env python)`` for a kernel in a fresh venv at ``tmp``."""
    python = make_fresh_env(tmp / "venv")
    workdir = tmp / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    env = _notebook_env(workdir, quick)
    # No checkout on the path: the kernel must get pattern_keras from the install cell.
    env.update({"PYTHONPATH": "", "PK_PIP_SPEC": pip_spec, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    _write_kernelspec(tmp / "jupyter", python, env)
    with _jupyter_path(tmp / "jupyter"):
        yield KERNEL_NAME, workdir, python


@contextlib.contextmanager
def repo_kernel(tmp: pathlib.Path, quick: bool = False):
    """Yield ``(kernel name, workdir)`` for this interpreter with the checkout on its path.

    The kernel runs in ``workdir`` with the notebooks' default output folder (a relative path),
    so that the saved outputs name no temporary folder.
    """
    workdir = tmp / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    env = _notebook_env(None, quick)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    _write_kernelspec(tmp / "jupyter", sys.executable, env)
    with _jupyter_path(tmp / "jupyter"):
        yield KERNEL_NAME, workdir
