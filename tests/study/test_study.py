"""Parameter studies: ``synovia sweep`` (solver.study). Their figures: tests/plot/test_plot_study.py.

One small sweep (a 2D MCP joint at 0.4 mm, 2 h, four points: injury rate x recruitment rate) is
run once with the project's own CLI (the ``study`` fixture, shared by the session); tests that
change a study copy it.
"""

import csv
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from solver import ConfigError, RunFile, RunWriter
from solver.cli import main
from solver.study import _study
from tests.helpers import STUDY_RATES, STUDY_SCENARIO, STUDY_SWEEP, assert_close, sweep_file

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")

REPO = Path(__file__).resolve().parents[2]


def _copy(study: Path, tmp_path: Path) -> Path:
    """A copy of the session's study, with its sweep config beside it (for re-running it)."""
    shutil.copytree(study.parent, tmp_path / "copy")
    return tmp_path / "copy" / "study"


def _last_fields(path: Path) -> dict[str, np.ndarray]:
    with RunFile.open(path) as run:
        return {**run.fields(-1), "time": run.time}


# ---------------------------------------------------------------------------------------------
# The sweep config.
# ---------------------------------------------------------------------------------------------


def test_points_grid_zip_ranges_and_nested_keys(tmp_path):
    sweep = _study.sweep_from_dict({"vary": {"injury.rate": [1.0, 2.0], "parameters": {"chemotaxis": [0.1, 0.2, 0.3]}}}, tmp_path)
    assert sweep.keys == ("injury.rate", "parameters.chemotaxis")
    assert sweep.values == ((1.0, 0.1), (1.0, 0.2), (1.0, 0.3), (2.0, 0.1), (2.0, 0.2), (2.0, 0.3))
    assert [c.injury.rate for c in sweep.configs] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    assert [c.parameters["chemotaxis"] for c in sweep.configs] == [0.1, 0.2, 0.3] * 2
    # every point keeps the base's other values
    assert all(c.parameters["decay_tnf"] == sweep.configs[0].parameters["decay_tnf"] for c in sweep.configs)

    zipped = _study.sweep_from_dict(
        {"combine": "zip", "vary": {"injury.rate": [1.0, 2.0], "injury.radius_mm": [0.5, 1.5]}}, tmp_path
    )
    assert zipped.values == ((1.0, 0.5), (2.0, 1.5))

    ranged = _study.sweep_from_dict(
        {"vary": {"parameters.recruitment_rate": {"from": 10, "to": 1000, "count": 3, "spacing": "log"},
                  "injury.rate": {"from": 0, "to": 1, "count": 5}}},
        tmp_path,
    )  # fmt: skip
    assert sorted({v[0] for v in ranged.values}) == [10.0, 100.0, 1000.0]
    assert sorted({v[1] for v in ranged.values}) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(ranged) == 15


def test_scenario_from_a_file_and_set_overrides_reach_every_point(tmp_path):
    (tmp_path / "base.toml").write_text('[run]\nt_end_h = 6.0\n[geometry]\npreset = "mcp"\n')
    sweep = _study.sweep_from_dict(
        {"scenario": "base.toml", "vary": {"injury.rate": [1.0, 2.0]}}, tmp_path, ["run.output_interval_h=3"]
    )
    assert [(c.run.t_end_h, c.run.output_interval_h, c.geometry.preset) for c in sweep.configs] == [(6.0, 3.0, "mcp")] * 2
    assert sweep.base_dir == str(tmp_path.resolve())
    # a [set] table changes the base of every point; --set wins over it
    raw = {"scenario": "base.toml", "set": {"run.t_end_h": 12.0, "drug": {"enabled": True}}, "vary": {"injury.rate": [1.0]}}
    sweep = _study.sweep_from_dict(raw, tmp_path, ["run.t_end_h=9"])
    assert [(c.run.t_end_h, c.drug.enabled, c.geometry.preset) for c in sweep.configs] == [(9.0, True, "mcp")]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"vary": {"injury.rate": [1.0]}, "combin": "zip"}, "unknown config key 'combin' (did you mean 'combine'?)"),
        ({"vary": {"injury.rate": [1.0]}, "combine": "all"}, "sweep key 'combine' = 'all': allowed: grid, zip"),
        ({}, "sweep key 'vary' is missing"),
        ({"vary": {"injury.rate": []}}, "'vary.injury.rate' is an empty list"),
        ({"vary": {"injury.rate": 5}}, "'vary.injury.rate' = 5: give a list of values or a range table"),
        ({"vary": {"rate": [1.0]}}, "'vary.rate': name a section and a key"),
        ({"combine": "zip", "vary": {"injury.rate": [1.0, 2.0], "injury.radius_mm": [1.0]}}, "needs as many values"),
        ({"vary": {"injury.rate": [1.0, -5.0]}}, "sweep point 1 (injury.rate = -5.0): config key 'injury.rate' = -5.0"),
        ({"vary": {"parameters.chemotaxi": [1.0]}}, "unknown config key 'parameters.chemotaxi' (did you mean 'chemotaxis'?)"),
        ({"vary": {"injury.rate": {"from": 1, "to": 2, "count": 0}}}, "'vary.injury.rate.count' = 0: must be an integer >= 1"),
        ({"vary": {"injury.rate": {"from": 0, "to": 2, "count": 3, "spacing": "log"}}}, "a log range needs from and to > 0"),
        ({"vary": {"injury.rate": {"from": 1, "to": 2, "count": 3, "step": 1}}}, "unknown config key 'vary.injury.rate.step'"),
        ({"scenario": "missing.toml", "vary": {"injury.rate": [1.0]}}, "the run config"),
        ({"scenario": {"run": {"t_end_h": -1.0}}, "vary": {"injury.rate": [1.0]}}, "config key 'run.t_end_h' = -1.0"),
        ({"vary": {"parameters": {}}}, "sweep key 'vary.parameters' is an empty table"),
        ({"set": {"run.t_end": 5.0}, "vary": {"injury.rate": [1.0]}}, "unknown config key 'run.t_end' (did you mean 't_end_h'?)"),
        ({"set": 5, "vary": {"injury.rate": [1.0]}}, "sweep key 'set' = 5: must be a table"),
        ({"vary": {"injury.rate": {"from": 1, "count": 3}}}, "'vary.injury.rate': the range table has no 'to'"),
        ({"vary": {"injury.rate": {"to": 1, "count": 3}}}, "'vary.injury.rate': the range table has no 'from'"),
        ({"vary": {"injury.rate": {"from": 1, "to": 2, "count": 1}}}, "count = 1 with from != to"),
        (
            {"scenario": {"run": {"output_interval_h": 0.5}}, "vary": {"run.t_end_h": [1.0, 1.2]}},
            "sweep point 1 (run.t_end_h = 1.2): config key 'run.t_end_h' = 1.2: must be a whole multiple",
        ),
    ],
)
def test_bad_sweep_configs_name_the_key_and_point(raw, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        _study.sweep_from_dict(raw, tmp_path)
    assert message in str(err.value)


def test_cli_refuses_bad_input_in_one_line_before_any_work(tmp_path, capsys):
    env_cmd = [sys.executable, "-m", "solver.cli", "sweep"]
    cfg = sweep_file(tmp_path, STUDY_SWEEP.replace('"injury.rate" = [100.0, 800.0]', '"injury.rate" = [100.0, -1.0]'))
    out = tmp_path / "study"
    result = subprocess.run([*env_cmd, str(cfg), "-o", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("synovia: error: sweep point 2 (injury.rate = -1.0")
    assert "Traceback" not in result.stderr and not out.exists()
    for args, message in [
        (["--point", "7"], "--point 7: this sweep has points 0..3"),
        (["--jobs", "0"], "--jobs 0: must be at least 1"),
    ]:
        assert main(["sweep", str(sweep_file(tmp_path)), "-o", str(out), *args]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["sweep", str(sweep_file(tmp_path)), "-o", str(tmp_path / "other")]) == 2
    assert main(["sweep", str(sweep_file(tmp_path)), "-o", str(tmp_path / "no" / "such")]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# Running a study.
# ---------------------------------------------------------------------------------------------


def test_every_point_is_the_run_synovia_run_gives(study, tmp_path):
    manifest = _study.read_manifest(study)
    assert manifest["keys"] == ["injury.rate", "parameters.recruitment_rate"]
    assert [tuple(p["values"]) for p in manifest["points"]] == STUDY_RATES
    base = tmp_path / "base.toml"
    base.write_text(STUDY_SCENARIO.replace("[scenario.", "["))
    for index in (1, 2):
        rate, recruitment = STUDY_RATES[index]
        out = tmp_path / f"direct_{index}.h5"
        sets = ["--set", f"injury.rate={rate}", "--set", f"parameters.recruitment_rate={recruitment}"]
        assert main(["run", str(base), "-o", str(out), "-q", *sets]) == 0
        direct, swept = _last_fields(out), _last_fields(study / "runs" / f"point_00{index}.h5")
        assert direct.keys() == swept.keys()
        for name in direct:
            assert_close(swept[name], direct[name], rtol=0, what=name)  # the same compiled run, bit for bit
        with RunFile.open(study / "runs" / f"point_00{index}.h5") as run:
            assert f"rate = {rate}" in run.config_toml and f"recruitment_rate = {recruitment}" in run.config_toml


def test_summary_csv_holds_the_measures_of_each_run(study):
    rows = list(csv.DictReader((study / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["complete"] * 4
    assert [(float(r["injury.rate"]), float(r["parameters.recruitment_rate"])) for r in rows] == STUDY_RATES
    for row in rows:
        with RunFile.open(study / row["file"]) as run:
            time, summary = run.time, run.summary
        tnf, cells = summary["synovial_fluid_tnf"], summary["synovial_fluid_leukocytes"]
        assert_close(float(row["peak_fluid_tnf [pg/mL]"]), tnf.max(), rtol=1e-7)
        assert_close(float(row["time_of_peak_fluid_tnf [h]"]), time[np.argmax(tnf)], rtol=1e-12)
        assert_close(float(row["final_fluid_leukocytes [cells/µL]"]), cells[-1], rtol=1e-7)
        assert_close(float(row["min_cartilage_integrity [fraction]"]), summary["cartilage_integrity"].min(), rtol=1e-7)
    start = []
    for row in rows:
        with RunFile.open(study / row["file"]) as run:
            start.append(float(run.summary["synovial_fluid_tnf"][0]))
    rise = [float(r["peak_fluid_tnf [pg/mL]"]) - t0 for r, t0 in zip(rows, start)]
    cells = [float(r["final_fluid_leukocytes [cells/µL]"]) for r in rows]
    # more injury, more TNF above the resting joint's; more recruitment, more white cells (the physics,
    # not just the bookkeeping)
    assert rise[2] > 2 * rise[0] > 0 and rise[3] > 2 * rise[1] > 0
    assert cells[1] > cells[0] and cells[3] > cells[2]


def test_running_again_continues_an_interrupted_study(study, tmp_path):
    copy = _copy(study, tmp_path)
    runs = copy / "runs"
    originals = {i: _last_fields(study / "runs" / f"point_00{i}.h5") for i in range(4)}
    # point 3 never started; point 1 was killed after two frames (rebuilt as a writer leaves it)
    (runs / "point_003.h5").unlink()
    (runs / "point_003.xdmf").unlink()
    with RunFile.open(runs / "point_001.h5") as run:
        frames = [(float(t), run.fields(k), {n: v[k] for n, v in run.summary.items()}) for k, t in enumerate(run.time[:2])]
        layout = dict(grid=run.grid, labels=run.labels, species=run.species, summary_names=run.summary_names,
                      dtype=run.dtype, attrs=run.attrs)  # fmt: skip
    with RunWriter(runs / "point_001.h5", overwrite=True, **layout) as writer:
        for frame in frames:
            writer.append(*frame)
    assert _study.read_study(copy).status[1] == "incomplete (to 0.5 of 2 h)"
    untouched = {i: (runs / f"point_00{i}.h5").stat().st_mtime_ns for i in (0, 2)}

    assert main(["sweep", str(copy.parent / "sweep.toml"), "-o", str(copy), "-q"]) == 0
    assert {i: (runs / f"point_00{i}.h5").stat().st_mtime_ns for i in (0, 2)} == untouched
    for i in range(4):
        again = _last_fields(runs / f"point_00{i}.h5")
        for name in again:
            assert_close(again[name], originals[i][name], rtol=0, what=f"point {i} {name}")
    assert _study.read_study(copy).status == ["complete"] * 4


def test_a_different_sweep_is_refused_unless_overwrite(study, tmp_path, capsys):
    copy = _copy(study, tmp_path)
    other = sweep_file(tmp_path, STUDY_SWEEP.replace("[100.0, 800.0]", "[100.0, 400.0]"), "other.toml")
    assert main(["sweep", str(other), "-o", str(copy), "-q"]) == 2
    assert "holds a different sweep (point 2 was [800.0, 50.0], now [400.0, 50.0])" in capsys.readouterr().err
    assert _study.read_manifest(copy)["points"][2]["values"] == [800.0, 50.0]
    # the same sweep with a changed base scenario is a different study too
    assert main(["sweep", str(copy.parent / "sweep.toml"), "-o", str(copy), "-q", "--set", "run.t_end_h=1"]) == 2
    assert "its scenario differs" in capsys.readouterr().err
    assert main(["sweep", str(other), "-o", str(copy), "-q", "--overwrite", "--point", "0"]) == 0
    assert _study.read_manifest(copy)["points"][2]["values"] == [400.0, 50.0]
    assert sorted(p.name for p in (copy / "runs").iterdir() if not p.name.startswith(".")) == ["point_000.h5", "point_000.xdmf"]


def test_point_option_runs_only_those_points(study, tmp_path, capsys):
    out = tmp_path / "array"
    assert main(["sweep", str(study.parent / "sweep.toml"), "-o", str(out), "-q", "--point", "2"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith(".")) == ["point_002.h5", "point_002.xdmf"]
    table = _study.read_study(out)
    assert table.status == ["not run", "not run", "complete", "not run"]
    assert np.isnan(table.measures["peak_fluid_tnf"][[0, 1, 3]]).all()
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "points: 4 (3 not run, 1 complete)" in text and "injury.rate, parameters.recruitment_rate" in text


def test_array_tasks_started_together_fill_one_study(study, tmp_path):
    """Like a cluster array job: separate processes, one point each, the same new output folder at once."""
    out = tmp_path / "array"
    cmd = [sys.executable, "-m", "solver.cli", "sweep", str(study.parent / "sweep.toml"), "-o", str(out), "-q", "--point"]
    tasks = [subprocess.Popen([*cmd, str(k)], cwd=REPO, stderr=subprocess.PIPE, text=True) for k in (0, 3)]
    for task in tasks:
        _, err = task.communicate(timeout=300)
        assert task.returncode == 0, err
    assert _study.read_study(out).status == ["complete", "not run", "not run", "complete"]
    for i in (0, 3):
        a, b = _last_fields(out / "runs" / f"point_00{i}.h5"), _last_fields(study / "runs" / f"point_00{i}.h5")
        for name in a:
            assert_close(a[name], b[name], rtol=0, what=f"point {i} {name}")


def test_jobs_run_points_in_worker_processes_with_the_same_results(study, tmp_path):
    out = tmp_path / "parallel"
    assert main(["sweep", str(study.parent / "sweep.toml"), "-o", str(out), "-q", "--jobs", "2"]) == 0
    for i in range(4):
        a, b = _last_fields(out / "runs" / f"point_00{i}.h5"), _last_fields(study / "runs" / f"point_00{i}.h5")
        for name in a:
            assert_close(a[name], b[name], rtol=0, what=f"point {i} {name}")
    assert (out / "summary.csv").read_text() == (study / "summary.csv").read_text()


# SIGTERM (a cluster's time limit) in the fast suite, Ctrl-C's SIGINT (~11 s) with the slow validation
@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_ctrl_c_stops_every_worker_and_the_study_continues_later(tmp_path, signum):
    """SIGINT (Ctrl-C) or SIGTERM (kill, a job manager) to the parent of --jobs 2: exit 130 at once,
    no worker left writing, and a rerun finishes."""
    cfg = sweep_file(tmp_path, STUDY_SWEEP.replace("t_end_h = 2.0", "t_end_h = 40.0"))
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "solver.cli", "sweep", str(cfg), "-o", str(out), "-q", "--jobs", "2"]
    parent = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs = out / "runs"
    deadline = time.monotonic() + 120
    while not (runs.is_dir() and len(list(runs.glob("*.h5"))) >= 2):  # both workers are writing
        assert parent.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be interrupted"
        time.sleep(0.1)
    time.sleep(0.5)
    parent.send_signal(signum)
    _, err = parent.communicate(timeout=30)
    assert parent.returncode == 130, err
    assert "interrupted; finished frames are kept" in err
    sizes = {p.name: p.stat().st_size for p in runs.glob("*.h5")}
    time.sleep(2.0)
    assert {p.name: p.stat().st_size for p in runs.glob("*.h5")} == sizes, "a worker went on writing"
    assert not all(s == "complete" for s in _study.read_study(out).status)
    assert main(["sweep", str(cfg), "-o", str(out), "-q"]) == 0
    assert _study.read_study(out).status == ["complete"] * 4


def test_a_diverging_point_is_recorded_and_the_others_run(tmp_path, capsys):
    # absurd TNF secretion overflows float32 within the run (the start is stable, so it is not refused)
    text = STUDY_SCENARIO.replace('precision = "float64"', 'precision = "float32"') + textwrap.dedent(
        """
        [scenario.initial]
        start = "baseline"

        [vary]
        "parameters.tnf_per_leukocyte" = [0.01, 1e37, 0.02]
        """
    )
    cfg = sweep_file(tmp_path, text)
    out = tmp_path / "diverging"
    assert main(["sweep", str(cfg), "-o", str(out), "-q"]) == 3
    err = capsys.readouterr().err
    assert "point 1 (tnf_per_leukocyte=1e+37) diverged: the solution diverged at t = " in err
    assert (out / "runs" / "point_001.diverged").read_text().startswith("the solution diverged")
    table = _study.read_study(out)
    assert table.status == ["complete", "diverged", "complete"]
    assert np.isnan(table.measures["peak_fluid_tnf"][1]) and np.isfinite(table.measures["peak_fluid_tnf"][[0, 2]]).all()
    with RunFile.open(out / "runs" / "point_001.h5") as run:  # the good frames before it diverged are kept
        assert 1 <= run.n_frames < 5 and np.isfinite(run.field("tnf", -1)).all()
    # running again does not retry it (the same config diverges again) and still says so
    assert main(["sweep", str(cfg), "-o", str(out), "-q"]) == 3
    assert "point 1 (tnf_per_leukocyte=1e+37) diverged" in capsys.readouterr().err


def test_a_point_refused_when_built_is_recorded_and_the_others_run(tmp_path, capsys):
    # an absurd initial TNF needs ~1e36 steps per frame: refused when its scenario is built
    text = STUDY_SCENARIO + '[scenario.initial]\nstart = "baseline"\n[vary]\n"initial.synovial_fluid.tnf" = [1.0, 3e38]\n'
    cfg = sweep_file(tmp_path, text)
    out = tmp_path / "refused"
    assert main(["sweep", str(cfg), "-o", str(out), "-q"]) == 2
    assert "point 1 (tnf=3e+38) refused: the stable time step is" in capsys.readouterr().err
    assert _study.read_study(out).status == ["complete", "refused"]
    assert "more than 1e+08" in (out / "runs" / "point_001.refused").read_text()


def test_an_unexpected_error_in_one_point_does_not_stop_the_others(study, tmp_path, capsys):
    out = tmp_path / "failing"
    cfg = study.parent / "sweep.toml"
    assert main(["sweep", str(cfg), "-o", str(out), "-q", "--point", "3"]) == 0
    (out / "runs" / "point_001.h5").mkdir()  # the run file cannot be created
    assert main(["sweep", str(cfg), "-o", str(out), "-q", "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert "point 1 (rate=100, recruitment_rate=5000) failed: " in err and "run the same command again to retry" in err
    assert _study.read_study(out).status == ["complete", "failed", "complete", "complete"]
    (out / "runs" / "point_001.h5").rmdir()
    assert main(["sweep", str(cfg), "-o", str(out), "-q"]) == 0  # retried
    assert _study.read_study(out).status == ["complete"] * 4
    assert not (out / "runs" / "point_001.failed").exists()


def test_a_point_being_run_elsewhere_is_left_alone(study, tmp_path, capsys):
    import fcntl

    out = tmp_path / "busy"
    cfg = study.parent / "sweep.toml"
    assert main(["sweep", str(cfg), "-o", str(out), "-q", "--point", "3"]) == 0
    with open(out / "runs" / ".point_000.lock", "a") as lock:  # another process holds point 0
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert main(["sweep", str(cfg), "-o", str(out), "-q", "--point", "0", "1"]) == 1
    assert "point 0 (rate=100, recruitment_rate=50) busy: another process is running this point" in capsys.readouterr().err
    assert _study.read_study(out).status == ["not run", "complete", "not run", "complete"]


def test_run_files_that_are_not_this_sweeps_are_never_taken_for_its_points(study, tmp_path, capsys):
    copy = _copy(study, tmp_path)
    cfg = copy.parent / "sweep.toml"
    # a folder with run files but no manifest (another sweep's, whose study.toml was deleted)
    (copy / "study.toml").unlink()
    assert main(["sweep", str(cfg), "-o", str(copy), "-q"]) == 2
    assert "holds run files but no study.toml" in capsys.readouterr().err
    # a run file of another config in this sweep's place
    assert main(["sweep", str(cfg), "-o", str(tmp_path / "fresh"), "-q", "--point", "0"]) == 0
    shutil.copy(study / "runs" / "point_003.h5", tmp_path / "fresh" / "runs" / "point_002.h5")
    assert main(["sweep", str(cfg), "-o", str(tmp_path / "fresh"), "-q", "--point", "2"]) == 2
    assert "holds a run of another config (not this sweep's point 2)" in capsys.readouterr().err
    assert main(["sweep", str(cfg), "-o", str(copy), "-q", "--overwrite"]) == 0
    assert _study.read_study(copy).status == ["complete"] * 4
