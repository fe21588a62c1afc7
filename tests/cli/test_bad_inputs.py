"""A corpus of bad inputs to every command: each ends with exit 2 and one ``synovia: error:`` line
that names the file, key or value at fault; never a traceback, never a hang, and nothing the user
had is replaced.

Each case is (name, files to make, argv, words the error must contain). Files are made in a fresh
folder that is the working directory; the command runs in this process (``solver.cli.main``)
under an alarm, so a hang fails the case instead of the suite.
"""

from __future__ import annotations

import os
import signal

import h5py
import numpy as np
import pytest

from solver.cli import main

#: a small, valid run: a 2D box of fluid, 2 h
BOX = """
[run]
t_end_h = 2.0
output_interval_h = 1.0
[geometry]
kind = "box"
ndim = 2
size_mm = [4.0, 4.0]
spacing_mm = 0.5
[initial]
start = "baseline"
"""
SWEEP = 'scenario = "box.toml"\n[vary]\n'
FIT = 'scenario = "box.toml"\nobservations = "obs.csv"\n[parameters.chemotaxis]\nlower = 0.01\nupper = 0.1\ninitial = 0.05\n'
OBS = "time_h,species,kind,where,value,sigma\n1.0,tnf,fluid,,10.0,1.0\n"


def _labels_file(name: str, spacing: bool = True) -> list[str]:
    """``run`` on a label file (geometry.kind = "file"); a .npy needs its spacing."""
    argv = ["run", "--set", "geometry.kind='file'", "--set", f"geometry.path='{name}'"]
    return argv + (["--set", "geometry.file_spacing_mm=[0.5, 0.5]"] if spacing else [])


def _box(**changes) -> str:
    text = BOX
    for key, value in changes.items():
        section, name = key.split("__")
        text = text.replace(f"[{section}]\n", f"[{section}]\n{name} = {value}\n", 1)
    return text


def _truncated(path, keep: int = 2000) -> None:
    with h5py.File(path, "w", libver=("v110", "v110")) as f:
        f["x"] = np.arange(20000.0)
    with open(path, "r+b") as fh:
        fh.truncate(keep)


def _foreign(path) -> None:
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((4, 4))


def _huge_declared(path, name: str = "labels") -> None:
    """A small file declaring a 200000 x 200000 dataset (never written, so the file stays small)."""
    with h5py.File(path, "w") as f:
        f.create_dataset(name, shape=(200_000, 200_000), dtype="u1", chunks=(1000, 1000))


def _npy(array, path) -> None:
    np.save(path, array, allow_pickle=True)


FILE_MAKERS = {
    "truncated.h5": _truncated,
    "foreign.h5": _foreign,
    "huge.h5": _huge_declared,
    "huge_tnf.h5": lambda p: _huge_declared(p, "tnf"),
    "wrongshape.h5": lambda p: h5py.File(p, "w").create_dataset("tnf", data=np.ones((3, 3))).file.close(),
    "float.npy": lambda p: _npy(np.zeros((8, 8)), p),
    "flat.npy": lambda p: _npy(np.zeros(8, np.uint8), p),
    "pickled.npy": lambda p: _npy(np.array([{"a": 1}], dtype=object), p),
}

CASES = [
    # --- run: the config file ---
    ("run: no such config", {}, ["run", "nope.toml"], ["nope.toml", "does not exist"]),
    ("run: config not UTF-8", {"c.toml": b"[run]\nt_end_h = 2 # caf\xe9\n"}, ["run", "c.toml"], ["c.toml", "UTF-8", "0xe9"]),
    ("run: config is binary", {"c.toml": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"}, ["run", "c.toml"], ["c.toml", "UTF-8"]),
    ("run: config not TOML", {"c.toml": "[run\nt_end_h = 2\n"}, ["run", "c.toml"], ["c.toml", "not valid TOML"]),
    ("run: config is a folder", {"c.toml/x": ""}, ["run", "c.toml"], ["c.toml"]),
    ("run: unknown section", {"c.toml": BOX + "[runn]\nx = 1\n"}, ["run", "c.toml"], ["runn"]),
    ("run: unknown key", {"c.toml": _box(run__t_end=2.0)}, ["run", "c.toml"], ["t_end", "t_end_h"]),
    # --- run: [run] ---
    ("run.t_end_h negative", {"c.toml": BOX.replace("t_end_h = 2.0", "t_end_h = -1.0")}, ["run", "c.toml"], ["run.t_end_h"]),
    ("run.t_end_h a string", {"c.toml": BOX.replace("t_end_h = 2.0", 't_end_h = "two"')}, ["run", "c.toml"], ["run.t_end_h"]),
    ("run.t_end_h not whole", {"c.toml": BOX.replace("t_end_h = 2.0", "t_end_h = 2.5")}, ["run", "c.toml"], ["run.t_end_h"]),
    ("run.t_end_h NaN", {"c.toml": BOX.replace("t_end_h = 2.0", "t_end_h = nan")}, ["run", "c.toml"], ["run.t_end_h"]),
    (
        "run.output_interval_h 0",
        {"c.toml": BOX.replace("output_interval_h = 1.0", "output_interval_h = 0.0")},
        ["run", "c.toml"],
        ["run.output_interval_h"],
    ),
    ("run.precision", {"c.toml": _box(run__precision='"float16"')}, ["run", "c.toml"], ["run.precision", "float16"]),
    ("run.stepper", {"c.toml": _box(run__stepper='"euler"')}, ["run", "c.toml"], ["run.stepper", "euler"]),
    ("run.safety 0", {"c.toml": _box(run__safety=0.0)}, ["run", "c.toml"], ["run.safety"]),
    ("run.dt_h negative", {"c.toml": _box(run__dt_h=-1.0)}, ["run", "c.toml"], ["run.dt_h"]),
    ("run.devices 0", {"c.toml": _box(run__devices=0)}, ["run", "c.toml"], ["run.devices", ">= 1"]),
    ("run.devices more than here", {"c.toml": _box(run__devices=64)}, ["run", "c.toml"], ["run.devices", "device(s)"]),
    (
        "run.dt_h too large",
        {"c.toml": _box(run__dt_h=0.9)},
        ["run", "c.toml"],
        ["run.dt_h", "set by positivity", "diffusion", "diffusivity_"],
    ),
    (
        "run.dt_h too large beside a Dirichlet wall",
        {"c.toml": _box(run__dt_h=0.5) + '[boundary.il1]\nx_min = {type = "dirichlet", value = 0.0}\n'},
        ["run", "c.toml"],
        ["run.dt_h", "IL-1 in synovial_fluid next to the dirichlet wall x_min", "diffusivity_il1"],
    ),
    (
        "a parameter forcing a tiny step",
        {},
        ["run", "--set", "parameters.decay_tnf=1e12"],
        ["set by positivity", "reaction 1e+12 /h from TNF loss", "decay_tnf = 1e+12"],
    ),
    # --- run: [geometry] ---
    ("geometry.spacing_mm 0", {"c.toml": BOX.replace("spacing_mm = 0.5", "spacing_mm = 0.0")}, ["run", "c.toml"], ["spacing_mm"]),
    (
        "geometry.spacing_mm tiny (memory)",
        {"c.toml": BOX.replace("spacing_mm = 0.5", "spacing_mm = 1e-5")},
        ["run", "c.toml"],
        ["geometry.spacing_mm", "1e-05", "this machine has"],
    ),
    ("knee spacing tiny (memory)", {}, ["run", "--set", "geometry.spacing_mm=1e-4"], ["geometry.spacing_mm", "TiB"]),
    ("geometry.kind", {"c.toml": BOX.replace('kind = "box"', 'kind = "sphere"')}, ["run", "c.toml"], ["geometry.kind", "sphere"]),
    ("geometry.preset", {}, ["run", "--set", "geometry.preset='elbow'"], ["geometry.preset", "elbow"]),
    ("geometry.ndim 4", {"c.toml": BOX.replace("ndim = 2", "ndim = 4")}, ["run", "c.toml"], ["geometry.ndim"]),
    (
        "geometry.size_mm length",
        {"c.toml": BOX.replace("size_mm = [4.0, 4.0]", "size_mm = [4.0]")},
        ["run", "c.toml"],
        ["size_mm"],
    ),
    ("geometry.tissue", {"c.toml": _box(geometry__tissue='"blood"')}, ["run", "c.toml"], ["blood"]),
    ("geometry.path missing", {}, _labels_file("no.h5", spacing=False), ["no.h5"]),
    (
        "geometry.path text as HDF5",
        {"t.h5": "hello"},
        _labels_file("t.h5", spacing=False),
        ["geometry.path", "t.h5", "not an HDF5 file"],
    ),
    (
        "geometry.path truncated",
        {"truncated.h5": None},
        _labels_file("truncated.h5", spacing=False),
        ["geometry.path", "truncated"],
    ),
    (
        "geometry.path foreign",
        {"foreign.h5": None},
        _labels_file("foreign.h5", spacing=False),
        ["geometry.path", "labels"],
    ),
    (
        "geometry.path huge dataset",
        {"huge.h5": None},
        _labels_file("huge.h5", spacing=False),
        ["geometry.path", "200000", "GiB"],
    ),
    (
        "geometry.path float labels",
        {"float.npy": None},
        _labels_file("float.npy"),
        ["float.npy", "integer"],
    ),
    (
        "geometry.path 1D labels",
        {"flat.npy": None},
        _labels_file("flat.npy"),
        ["flat.npy", "2D or 3D"],
    ),
    (
        "geometry.path pickled npy",
        {"pickled.npy": None},
        _labels_file("pickled.npy"),
        ["pickled.npy"],
    ),
    # --- run: [initial], [injury], [drug], [parameters], [tissues] ---
    ("initial.file missing", {"c.toml": _box(initial__file='"no.h5"')}, ["run", "c.toml"], ["initial.file", "no.h5"]),
    (
        "initial.file text",
        {"c.toml": _box(initial__file='"t.h5"'), "t.h5": "hello"},
        ["run", "c.toml"],
        ["initial.file", "not an HDF5 file"],
    ),
    (
        "initial.file truncated",
        {"c.toml": _box(initial__file='"truncated.h5"'), "truncated.h5": None},
        ["run", "c.toml"],
        ["initial.file", "truncated"],
    ),
    (
        "initial.file wrong shape",
        {"c.toml": _box(initial__file='"wrongshape.h5"'), "wrongshape.h5": None},
        ["run", "c.toml"],
        ["initial.file", "shape"],
    ),
    (
        "initial.file huge dataset",
        {"c.toml": _box(initial__file='"huge_tnf.h5"'), "huge_tnf.h5": None},
        ["run", "c.toml"],
        ["initial.file", "200000"],
    ),
    ("initial.start", {"c.toml": BOX.replace('start = "baseline"', 'start = "sleep"')}, ["run", "c.toml"], ["initial.start"]),
    ("injury.rate negative", {}, ["run", "--set", "injury.rate=-5"], ["injury.rate"]),
    ("injury.centre_mm length", {}, ["run", "--set", "injury.centre_mm=[1.0]"], ["injury.centre_mm"]),
    ("drug.name", {}, ["run", "--set", "drug.name='aspirin'"], ["drug.name", "aspirin"]),
    ("drug.route", {}, ["run", "--set", "drug.route='oral'"], ["drug.route", "oral"]),
    ("parameters unknown", {}, ["run", "--set", "parameters.chemotaxiss=0.1"], ["chemotaxiss", "chemotaxis"]),
    ("parameters negative", {}, ["run", "--set", "parameters.decay_tnf=-1"], ["decay_tnf"]),
    ("tissues unknown", {}, ["run", "--set", "tissues.blood.diffusivity_tnf=1"], ["blood"]),
    ("--set without =", {}, ["run", "--set", "run.t_end_h"], ["run.t_end_h"]),
    ("--set unknown section", {}, ["run", "--set", "nothing.x=1"], ["nothing"]),
    # --- run: the output ---
    ("-o in a missing folder", {}, ["run", "-o", "no/x.h5"], ["no/x.h5", "does not exist"]),
    ("-o existing file", {"x.h5": "mine"}, ["run", "-o", "x.h5"], ["x.h5", "--overwrite"]),
    ("-o NAME.xdmf", {}, ["run", "-o", "data.xdmf"], ["data.xdmf", "sidecar"]),
    ("-o beside a user's .xdmf", {"x.xdmf": "mine"}, ["run", "-o", "x.h5"], ["x.xdmf", "--overwrite"]),
    ("-o a folder", {"d/x": ""}, ["run", "-o", "d"], ["'d'", "folder"]),
    # --- run --resume ---
    ("--resume missing", {}, ["run", "--resume", "no.h5"], ["no.h5"]),
    ("--resume text", {"t.h5": "hello"}, ["run", "--resume", "t.h5"], ["t.h5", "not an HDF5 file"]),
    ("--resume truncated", {"truncated.h5": None}, ["run", "--resume", "truncated.h5"], ["truncated.h5", "truncated"]),
    ("--resume foreign", {"foreign.h5": None}, ["run", "--resume", "foreign.h5"], ["foreign.h5", "not a synovia run file"]),
    ("--resume with a config", {"foreign.h5": None}, ["run", "c.toml", "--resume", "foreign.h5"], ["--resume"]),
    # --- info, plot, repair ---
    ("info missing", {}, ["info", "no.h5"], ["no.h5", "does not exist"]),
    ("info text", {"t.h5": "hello"}, ["info", "t.h5"], ["t.h5", "not an HDF5 file"]),
    ("info truncated", {"truncated.h5": None}, ["info", "truncated.h5"], ["truncated.h5", "truncated"]),
    ("info foreign", {"foreign.h5": None}, ["info", "foreign.h5"], ["foreign.h5", "not a synovia run file"]),
    ("info a plain folder", {"d/x": ""}, ["info", "d"], ["'d'", "study"]),
    ("plot foreign", {"foreign.h5": None}, ["plot", "foreign.h5", "-o", "figs"], ["foreign.h5", "not a synovia run file"]),
    ("plot truncated", {"truncated.h5": None}, ["plot", "truncated.h5", "-o", "figs"], ["truncated.h5", "truncated"]),
    ("plot --slice", {"foreign.h5": None}, ["plot", "foreign.h5", "-o", "f", "--slice", "1,2"], ["--slice", "Z,Y,X"]),
    ("repair foreign", {"foreign.h5": None}, ["repair", "foreign.h5"], ["foreign.h5", "not a synovia run file"]),
    ("repair missing", {}, ["repair", "no.h5"], ["no.h5"]),
    # --- sweep ---
    ("sweep missing config", {}, ["sweep", "no.toml", "-o", "s"], ["no.toml"]),
    (
        "sweep count 1e9",
        {"box.toml": BOX, "s.toml": SWEEP + '"injury.rate" = { from = 1, to = 2, count = 1000000000 }\n'},
        ["sweep", "s.toml", "-o", "s"],
        ["vary.injury.rate.count", "1000000000"],
    ),
    (
        "sweep too many points",
        {
            "box.toml": BOX,
            "s.toml": SWEEP
            + "".join(f'"parameters.{k}" = {{ from = 1, to = 2, count = 1000 }}\n' for k in ("chemotaxis", "decay_tnf")),
        },
        ["sweep", "s.toml", "-o", "s"],
        ["1000000 points"],
    ),
    ("sweep no [vary]", {"box.toml": BOX, "s.toml": 'scenario = "box.toml"\n'}, ["sweep", "s.toml", "-o", "s"], ["vary"]),
    (
        "sweep unknown key",
        {"box.toml": BOX, "s.toml": 'scenario = "box.toml"\ncombne = "zip"\n'},
        ["sweep", "s.toml", "-o", "s"],
        ["combne"],
    ),
    (
        "sweep bad value",
        {"box.toml": BOX, "s.toml": SWEEP + '"run.t_end_h" = [-1.0]\n'},
        ["sweep", "s.toml", "-o", "s"],
        ["run.t_end_h"],
    ),
    (
        "sweep --jobs 0",
        {"box.toml": BOX, "s.toml": SWEEP + '"injury.rate" = [1.0]\n'},
        ["sweep", "s.toml", "-o", "s", "--jobs", "0"],
        ["--jobs"],
    ),
    (
        "sweep --point",
        {"box.toml": BOX, "s.toml": SWEEP + '"injury.rate" = [1.0]\n'},
        ["sweep", "s.toml", "-o", "s", "--point", "5"],
        ["--point 5"],
    ),
    (
        "sweep --slurm --points-per-task 0",
        {"box.toml": BOX, "s.toml": SWEEP + '"injury.rate" = [1.0]\n'},
        ["sweep", "s.toml", "-o", "s", "--slurm", "--points-per-task", "0"],
        ["--points-per-task 0"],
    ),
    (
        "sweep --slurm --time",
        {"box.toml": BOX, "s.toml": SWEEP + '"injury.rate" = [1.0]\n'},
        ["sweep", "s.toml", "-o", "s", "--slurm", "--time", "1h"],
        ["--time '1h'"],
    ),
    ("sweep --status not a study", {"x.txt": "x"}, ["sweep", "--status", "x.txt"], ["x.txt", "not a study folder"]),
    ("sweep --collect missing", {}, ["sweep", "--collect", "nowhere"], ["nowhere"]),
    # --- fit ---
    ("fit missing config", {}, ["fit", "no.toml"], ["no.toml"]),
    ("fit config not UTF-8", {"f.toml": b'scenario = "caf\xe9.toml"\n'}, ["fit", "f.toml"], ["f.toml", "UTF-8"]),
    ("fit -o NAME.png", {"box.toml": BOX, "f.toml": FIT, "obs.csv": OBS}, ["fit", "f.toml", "-o", "rep.png"], ["rep.png", ".h5"]),
    (
        "fit beside a user's _fitted.toml",
        {"box.toml": BOX, "f.toml": FIT, "obs.csv": OBS, "fit_fitted.toml": "mine"},
        ["fit", "f.toml"],
        ["fit_fitted.toml", "--overwrite"],
    ),
    (
        "fit beside a user's .png",
        {"box.toml": BOX, "f.toml": FIT, "obs.csv": OBS, "fit.png": "mine"},
        ["fit", "f.toml"],
        ["fit.png", "--overwrite"],
    ),
    (
        "fit CSV with a header only",
        {"box.toml": BOX, "f.toml": FIT, "obs.csv": OBS.splitlines()[0] + "\n"},
        ["fit", "f.toml"],
        ["obs.csv", "no rows"],
    ),
    (
        "fit CSV not UTF-8",
        {"box.toml": BOX, "f.toml": FIT, "obs.csv": OBS.encode() + b"1.0,tnf,fluid,,1\xe9,1\n"},
        ["fit", "f.toml"],
        ["obs.csv", "UTF-8"],
    ),
    (
        "fit CSV bad number",
        {"box.toml": BOX, "f.toml": FIT, "obs.csv": OBS + "2.0,tnf,fluid,,ten,1\n"},
        ["fit", "f.toml"],
        ["obs.csv", "ten"],
    ),
    (
        "fit observations text as HDF5",
        {"box.toml": BOX, "f.toml": FIT.replace("obs.csv", "obs.h5"), "obs.h5": "hi"},
        ["fit", "f.toml"],
        ["obs.h5", "not an HDF5 file"],
    ),
    (
        "fit observations truncated",
        {"box.toml": BOX, "f.toml": FIT.replace("obs.csv", "truncated.h5"), "truncated.h5": None},
        ["fit", "f.toml"],
        ["truncated.h5", "truncated"],
    ),
    (
        "fit unknown parameter",
        {"box.toml": BOX, "f.toml": FIT.replace("chemotaxis]", "chemotaxiss]"), "obs.csv": OBS},
        ["fit", "f.toml"],
        ["chemotaxiss"],
    ),
    (
        "fit in a missing folder",
        {"box.toml": BOX, "f.toml": FIT, "obs.csv": OBS},
        ["fit", "f.toml", "-o", "no/fit.h5"],
        ["no/fit.h5"],
    ),
    # --- synth ---
    ("synth in a missing folder", {"box.toml": BOX}, ["synth", "box.toml", "-o", "no/o.h5"], ["no/o.h5"]),
    ("synth existing output", {"box.toml": BOX, "o.h5": "mine"}, ["synth", "box.toml", "-o", "o.h5"], ["o.h5", "--overwrite"]),
    (
        "synth t_end_h = 2e12 (memory)",
        {"box.toml": BOX.replace("t_end_h = 2.0", "t_end_h = 2e12")},
        ["synth", "box.toml", "-o", "o.h5"],
        ["run.t_end_h", "kept in memory", "this machine has"],
    ),
    ("synth negative noise", {"box.toml": BOX}, ["synth", "box.toml", "-o", "o.h5", "--noise", "-1"], ["noise"]),
    ("synth maps to CSV", {"box.toml": BOX}, ["synth", "box.toml", "-o", "o.csv", "--maps", "1"], ["maps", ".h5"]),
    ("synth time outside the run", {"box.toml": BOX}, ["synth", "box.toml", "-o", "o.h5", "--times", "9"], ["9", "run.t_end_h"]),
]


def _make(folder, files: dict) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            FILE_MAKERS[name](path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


class _Hung(Exception):
    pass


def _alarm(signum, frame):
    raise _Hung


def test_the_corpus_is_large_and_covers_every_command():
    commands = {argv[0] for _, _, argv, _ in CASES}
    assert len(CASES) >= 60 and commands >= {"run", "sweep", "info", "plot", "repair", "fit", "synth"}


@pytest.mark.parametrize("name, files, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_clear_line(name, files, argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _make(tmp_path, files)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    except _Hung:
        pytest.fail(f"{name}: still running after 60 s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err
    assert code == 2, f"{name}: exit {code}\n{err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], f"{name}: {word!r} not in {lines[0]!r}"
    for path, content in before.items():  # nothing the user had is replaced
        assert path.read_bytes() == content, f"{name} changed {path.name}"
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert not leftovers, leftovers
    assert not os.path.exists(tmp_path / "knee2d.h5"), "a refused run left an output file"
