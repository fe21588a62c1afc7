"""``pip install .`` into a fresh virtual environment, then, from an empty folder: ``synovia --version``,
``synovia configs list``, ``synovia run ra -o ra.h5``, the file opened through ``solver.open_dataset``
with its coordinates, ``ncdump -h`` naming its dimensions, and docs/example.ipynb executed in a kernel
of that environment. Offline: the new environment sees this one's dependencies through a ``.pth`` file
and pip builds synovia without build isolation or an index."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = __import__("tomllib").loads((REPO / "pyproject.toml").read_text())["project"]["version"]
#: the preset cut to seconds: a coarse grid, two frames
FAST = ["--set", "geometry.spacing_mm=1.0", "--set", "run.t_end_h=2", "--set", "run.output_interval_h=1", "-q"]

pytestmark = pytest.mark.slow


def _source_tree(to: Path) -> Path:
    """A copy of the checkout as an sdist would hold it (no environments, builds or run files)."""
    junk = shutil.ignore_patterns(".*", "*.egg-info", "__pycache__", "build", "dist", "bench_results", "*.h5", "*.xdmf")
    in_configs = lambda d: Path(d).relative_to(REPO).parts[:1] == ("configs",)  # noqa: E731
    return shutil.copytree(REPO, to, ignore=lambda d, names: [] if in_configs(d) else junk(d, names))


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with synovia installed by ``pip install .`` (not editable)."""
    root = tmp_path_factory.mktemp("fresh")
    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=300)
    python = env / "bin" / "python"
    inner = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    )
    # this environment's dependencies (jax, h5py, xarray, pip, setuptools, ...), after the new one's own packages
    Path(inner.stdout.strip(), "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    tree = _source_tree(root / "tree")
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "."],
        cwd=tree, capture_output=True, text=True, timeout=600, env=_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shutil.rmtree(tree)  # nothing of the checkout is left to import from
    return env


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPLBACKEND", "VIRTUAL_ENV")}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONDONTWRITEBYTECODE": "1"}


def _in(env: Path, folder: Path, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([*argv], cwd=folder, capture_output=True, text=True, timeout=timeout, env=_env())
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def ran(venv, tmp_path_factory) -> Path:
    """An empty folder in which the installed command ran the ``ra`` preset into ra.h5."""
    folder = tmp_path_factory.mktemp("empty")
    _in(venv, folder, str(venv / "bin" / "synovia"), "run", "ra", "-o", "ra.h5", *FAST)
    return folder


def test_the_installed_command_prints_its_version_and_lists_the_presets(venv, tmp_path):
    synovia = str(venv / "bin" / "synovia")
    assert _in(venv, tmp_path, synovia, "--version").stdout.strip() == f"synovia {VERSION}"
    listed = _in(venv, tmp_path, synovia, "configs", "list").stdout
    assert all(name in listed for name in ("ra", "oa", "knee2d", "fit_synthetic"))
    # the installed package, not the checkout
    where = _in(venv, tmp_path, str(venv / "bin" / "python"), "-c", "import solver; print(solver.__file__)").stdout
    assert str(venv) in where and str(REPO) not in where


def test_the_run_opens_through_the_xarray_reader_with_coordinates(venv, ran):
    assert {"ra.h5", "ra.xdmf"} <= {p.name for p in ran.iterdir()}
    code = (
        "import json, solver\n"
        "with solver.open_dataset('ra.h5') as ds:\n"
        "    print(json.dumps({'coords': {k: [float(v) for v in ds[k].values[:3]] for k in ds.coords},\n"
        "        'units': {k: ds[k].attrs['units'] for k in ds.coords}, 'dims': dict(ds.sizes),\n"
        "        'tnf': list(ds['tnf'].dims), 'summary': list(ds['synovial_fluid_leukocytes'].dims)}))\n"
    )
    seen = json.loads(_in(venv, ran, str(venv / "bin" / "python"), "-c", code).stdout)
    assert seen["coords"]["time"] == [0.0, 1.0, 2.0] and seen["units"] == {"time": "h", "y": "mm", "x": "mm"}
    assert seen["coords"]["x"] == [0.5, 1.5, 2.5]  # cell centres of the 1 mm grid
    assert seen["tnf"] == ["time", "y", "x"] and seen["summary"] == ["time"] and seen["dims"]["time"] == 3


@pytest.mark.skipif(shutil.which("ncdump") is None, reason="ncdump (Debian netcdf-bin) not installed")
def test_ncdump_shows_the_named_dimensions(venv, ran):
    header = _in(venv, ran, "ncdump", "-h", "ra.h5").stdout
    dimensions = header.split("dimensions:")[1].split("variables:")[0]
    assert {line.split("=")[0].strip() for line in dimensions.strip().splitlines()} == {"time", "y", "x"}
    assert "phony_dim" not in header and "float tnf(time, y, x)" in header


def test_the_example_notebook_runs_in_the_installed_package(venv, tmp_path):
    pytest.importorskip("nbclient", reason="nbclient is not installed (the dev extra has it)")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (the dev extra has it)")
    shutil.copy(REPO / "docs" / "example.ipynb", tmp_path)
    code = (
        "import nbclient, nbformat\n"
        "nb = nbformat.read('example.ipynb', as_version=4)\n"
        "nbclient.NotebookClient(nb, timeout=600, kernel_name='python3').execute()\n"
        "import solver; print(solver.__file__)\n"
    )
    done = _in(venv, tmp_path, str(venv / "bin" / "python"), "-c", code)
    assert str(venv) in done.stdout
