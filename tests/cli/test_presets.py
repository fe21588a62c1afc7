"""The shipped presets and the package's metadata: ``synovia --version``, ``synovia configs`` (list, show,
copy), a preset run by its name from an empty folder, and a wheel built from the sdist that holds the
presets, the data they read and the LICENSE."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import inference
import solver
from solver import RunFile
from solver.cli import main
from solver.setup import ConfigError, copy_preset, find_config, preset_files, presets, presets_folder

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
#: a preset run cut to seconds: a coarse grid, two frames
FAST = ["--set", "geometry.spacing_mm=1.0", "--set", "run.t_end_h=2", "--set", "run.output_interval_h=1", "-q"]


def _files(folder: Path) -> set[str]:
    """The files below ``folder`` (posix paths relative to it), less Python's caches."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _main(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse: --version, usage errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


# --- the version, the license, the citation ---


def test_version_is_the_pyproject_one(capsys):
    assert solver.__version__ == inference.__version__ == metadata.version("synovia") == VERSION
    code, out, _ = _main(["--version"], capsys)
    assert code == 0 and out.strip() == f"synovia {VERSION}"


def test_the_command_prints_its_version():
    """The entry point itself (the ``synovia`` script runs synovia_command.main)."""
    done = subprocess.run(
        [sys.executable, "-m", "synovia_command", "--version"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == f"synovia {VERSION}", done.stderr[-2000:]
    probe = (
        "import sys, synovia_command; synovia_command.main(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'jax'))"
    )
    done = subprocess.run([sys.executable, "-c", probe, "--version"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == [f"synovia {VERSION}", "[]"], done.stderr[-2000:]  # JAX was not loaded


def test_license_and_citation():
    assert PYPROJECT["project"]["license"] == "MIT" and "LICENSE" in PYPROJECT["project"]["license-files"]
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "Copyright (c) 2026 synovia developers" in license_text
    cff = (REPO / "CITATION.cff").read_text()
    keys = dict(re.findall(r"^([a-z-]+):[ ]*(.*)$", cff, flags=re.M))  # the top-level keys of the YAML
    assert keys["cff-version"] == "1.2.0"
    assert {"message", "title", "authors", "version", "license"} <= set(keys), sorted(keys)
    assert keys["version"].strip("\"'") == VERSION, "CITATION.cff's version is not the pyproject's"
    assert keys["license"] == "MIT"
    assert re.search(r"^authors:\n  - name: \"synovia developers\"$", cff, flags=re.M)


# --- synovia configs ---


def test_configs_list_names_every_preset_with_its_kind(capsys):
    code, out, err = _main(["configs", "list"], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert rows["knee2d"] == rows["ra"] == rows["oa"] == "run"
    assert rows["sweep_ra"] == "sweep" and rows["fit_synthetic"] == "fit" and rows["calibration/calibrate_ra"] == "fit"
    assert set(rows) == {p.removesuffix(".toml") for p in _files(CONFIGS) if p.endswith(".toml")}
    assert "Rheumatoid arthritis" in next(line for line in out.splitlines() if line.startswith("ra "))
    assert "synovia run NAME" in err


def test_configs_show_prints_the_toml(capsys):
    code, out, _ = _main(["configs", "show", "ra"], capsys)
    assert code == 0 and out == (CONFIGS / "ra.toml").read_text()
    code, out, _ = _main(["configs", "show", "calibration/calibrate_ra.toml"], capsys)
    assert code == 0 and out == (CONFIGS / "calibration" / "calibrate_ra.toml").read_text()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["configs", "show", "kne2d"], ["no preset 'kne2d'", "did you mean 'knee2d'", "knee2d", "ra,", "calibration/"]),
        (["configs", "copy", "calibrate_ra"], ["did you mean 'calibration/calibrate_ra'"]),
        (["run", "kne2d"], ["'kne2d' is neither a file here nor a preset", "did you mean 'knee2d'", "sweep_ra"]),
        (["sweep", "nope.toml", "-o", "s"], ["'nope.toml' does not exist", "knee2d"]),
        (["fit", "fit_synthtic"], ["did you mean 'fit_synthetic'"]),
        (["run", "configs/ra.toml"], ["'configs/ra.toml' does not exist here", "from any folder: 'ra'"]),
    ],
    ids=["show", "copy", "run", "sweep", "fit", "a checkout's path elsewhere"],
)
def test_an_unknown_name_lists_the_presets(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(argv, capsys)
    assert code == 2 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("synovia: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not list(tmp_path.iterdir()), "a refused command wrote something"


@pytest.mark.parametrize(
    "argv, words",
    [(["run", "nope", "--resume", "no.h5"], ["--resume", "no CONFIG"]), (["sweep", "nope", "--status", "s"], ["--status"])],
    ids=["run --resume", "sweep --status"],
)
def test_a_mode_without_config_says_so_before_looking_for_presets(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(argv, capsys)
    assert code == 2 and all(w in err for w in words) and "preset" not in err, err


def test_configs_copy_brings_the_files_a_preset_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["configs", "copy", "fit_synthetic"], capsys)
    assert code == 0, err
    assert out.split() == ["fit_synthetic.toml", "fit_truth.toml", "data/synthetic_knee.h5"]
    assert _files(tmp_path) == {"fit_synthetic.toml", "fit_truth.toml", "data/synthetic_knee.h5"}
    for name in _files(tmp_path):
        assert (tmp_path / name).read_bytes() == (CONFIGS / name).read_bytes()
    assert "synovia fit fit_synthetic.toml" in err
    # a subfolder's preset keeps its relative paths (../data/clinical_ra.csv): copied at the same places
    code, _, err = _main(["configs", "copy", "calibration/calibrate_ra", "elsewhere"], capsys)
    assert code == 0, err
    expected = {"calibration/calibrate_ra.toml", "calibration/ra_scenario.toml", "data/clinical_ra.csv"}
    assert _files(tmp_path / "elsewhere") == expected


def test_configs_copy_never_overwrites_without_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _main(["configs", "copy", "sweep_ra"], capsys)[0] == 0
    assert _main(["configs", "copy", "sweep_ra"], capsys)[0] == 0  # the same bytes: nothing to replace
    edited = (tmp_path / "ra.toml").read_text() + "# mine\n"
    (tmp_path / "ra.toml").write_text(edited)
    for argv in (["configs", "copy", "ra"], ["configs", "copy", "sweep_therapies"]):  # sweep_therapies reads ra.toml
        code, out, err = _main(argv, capsys)
        assert code == 2 and not out and "'ra.toml'" in err and "--overwrite" in err, err
        assert (tmp_path / "ra.toml").read_text() == edited
    assert not (tmp_path / "sweep_therapies.toml").exists(), "nothing is copied when one file is refused"
    code, _, err = _main(["configs", "copy", "ra", "--overwrite"], capsys)
    assert code == 0 and "replaced" in err
    assert (tmp_path / "ra.toml").read_bytes() == (CONFIGS / "ra.toml").read_bytes()
    code, _, err = _main(["configs", "copy", "ra", "ra.toml"], capsys)  # DIR is a file
    assert code == 2 and "it is a file" in err
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "a temporary file was left"


def test_copy_preset_from_python(tmp_path):
    copied = copy_preset("knee2d", tmp_path / "new" / "folder")
    assert [(c.path.name, c.status) for c in copied] == [("knee2d.toml", "copied")]
    assert [c.status for c in copy_preset("knee2d", tmp_path / "new" / "folder")] == ["unchanged"]
    with pytest.raises(ConfigError, match="no preset"):
        copy_preset("nope", tmp_path)


# --- a preset by its name, from any folder ---


@pytest.mark.filterwarnings("ignore:grid spacing 1.0 mm exceeds")  # the coarse grid is for speed
def test_a_preset_runs_by_its_name_from_an_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(["run", "ra", *FAST], capsys)
    assert code == 0, err
    written = {p for p in _files(tmp_path) if not p.startswith(".")}  # less the writer's lock file
    assert written == {"ra.h5", "ra.xdmf"}, "the output is named after the preset, in this folder"
    with RunFile.open(tmp_path / "ra.h5") as f:
        assert len(f.time) == 3
        assert Path(f.attrs["config_dir"]) == presets_folder().resolve()
        config = tomllib.loads(f.attrs["config_toml"])
    ra = tomllib.loads((CONFIGS / "ra.toml").read_text())
    assert config["parameters"]["fluid_recruitment"] == ra["parameters"]["fluid_recruitment"]
    assert config["geometry"]["spacing_mm"] == 1.0


def test_a_sweep_preset_finds_its_scenario_from_an_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["sweep", "sweep_knee2d", "--dry-run"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "point,parameters.recruitment_rate,injury.rate" and len(out.splitlines()) == 13


def test_a_file_here_wins_over_the_preset(tmp_path, monkeypatch, capsys):
    """``synovia run knee2d`` beside a knee2d.toml (copied and edited) runs that file."""
    monkeypatch.chdir(tmp_path)
    box = '[run]\nt_end_h = 1.0\noutput_interval_h = 1.0\n[geometry]\nkind = "box"\nndim = 2\nsize_mm = [2.0, 2.0]\n'
    (tmp_path / "knee2d.toml").write_text(box + 'spacing_mm = 0.5\n[initial]\nstart = "baseline"\n')
    assert find_config("knee2d") == "knee2d.toml"
    code, _, err = _main(["run", "knee2d", "-q"], capsys)
    assert code == 0, err
    with RunFile.open(tmp_path / "knee2d.h5") as f:
        assert tomllib.loads(f.attrs["config_toml"])["geometry"]["kind"] == "box"


def test_every_preset_finds_the_files_it_names():
    for name, p in presets().items():
        assert Path(find_config(name)) == p.path
        for path in preset_files(name):
            assert path.is_file(), (name, path)
    assert [f.name for f in preset_files("fit_synthetic")] == ["fit_synthetic.toml", "fit_truth.toml", "synthetic_knee.h5"]
    tables = [f"synthetic_knee_{t}.tsv" for t in ("measurements", "observables", "parameters")]
    assert [f.name for f in preset_files("fit_petab")] == ["fit_petab.toml", "fit_truth.toml", *tables]


# --- the package: every module and preset in the wheel ---


def test_the_pyproject_lists_every_package():
    """The packages are listed (configs/ is mapped onto synovia_presets): a new subpackage must be added."""
    found = sorted(
        ".".join(p.parent.relative_to(REPO).parts)
        for name in ("fields", "solver", "inference")
        for p in (REPO / name).rglob("__init__.py")
        if "__pycache__" not in p.parts
    )
    listed = PYPROJECT["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted([*found, "synovia_presets"]), "add the package to [tool.setuptools] packages"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"synovia_presets": "configs"}


def _build(backend_call: str, source: Path, out: Path) -> Path:
    """``setuptools.build_meta.<backend_call>`` run in ``source`` (no network, no isolation): the file it made."""
    code = f"from setuptools import build_meta; print(build_meta.{backend_call}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def test_the_wheel_holds_the_presets_and_the_license(tmp_path):
    """An sdist of (a copy of) the source tree, a wheel from the sdist, as pip does for an install from PyPI."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} cannot build this pyproject (>= 77: the dev extra has it)")
    junk = shutil.ignore_patterns(".*", "*.egg-info", "__pycache__", "build", "dist", "bench_results", "*.h5", "*.xdmf")
    in_configs = lambda d: Path(d).relative_to(REPO).parts[:1] == ("configs",)  # noqa: E731
    tree = shutil.copytree(REPO, tmp_path / "tree", ignore=lambda d, names: [] if in_configs(d) else junk(d, names))
    sdist = _build("build_sdist", tree, tmp_path / "dist")
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert {"LICENSE", "CITATION.cff", "README.md", "pyproject.toml"} <= in_sdist
    assert {f"configs/{p}" for p in _files(CONFIGS)} <= in_sdist
    wheel = _build("build_wheel", tmp_path / "unpacked" / sdist.name.removesuffix(".tar.gz"), tmp_path / "dist")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"synovia-{VERSION}.dist-info/METADATA").decode()
    assert {f"synovia_presets/{p}" for p in _files(CONFIGS)} <= names, "a file of configs/ is not in the wheel"
    assert {"synovia_presets/ra.toml", "synovia_presets/knee2d.toml", "synovia_presets/data/synthetic_knee.h5"} <= names
    modules = {p.relative_to(REPO).as_posix() for name in ("fields", "solver", "inference") for p in (REPO / name).rglob("*.py")}
    assert modules | {"synovia_command.py"} <= names, sorted(modules - names)
    typed = {f"{name}/py.typed" for name in ("fields", "solver", "inference")}  # PEP 561: the packages ship their types
    assert typed <= names, f"not in the wheel: {sorted(typed - names)}"
    assert f"synovia-{VERSION}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
