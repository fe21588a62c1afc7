"""Tracking and collecting a study: per-point rows, ``sweep --status``, ``sweep --collect`` (summary.csv and
study.h5 read by h5py and xarray), and array tasks that leave the shared files alone."""

import fcntl
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from solver.cli import main
from solver.study import _study

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")


def _copy(study, tmp_path):
    shutil.copytree(study.parent, tmp_path / "copy")
    return tmp_path / "copy" / "study"


def test_rows_stand_in_for_run_files_while_those_are_unchanged(study, tmp_path):
    copy = _copy(study, tmp_path)
    full = _study.read_study(copy)
    fast = _study.read_study(copy, series=False)
    assert fast.status == full.status == ["complete"] * 4
    assert fast.series == [None] * 4
    for name, values in full.measures.items():
        np.testing.assert_array_equal(fast.measures[name], values, err_msg=name)
    # the row is what the fast path reads: a planted value shows, until the run file changes
    row_path = copy / "runs" / ".point_001.json"
    row = json.loads(row_path.read_text())
    row["measures"]["peak_fluid_tnf"] = 12345.0
    row_path.write_text(json.dumps(row))
    assert _study.read_study(copy, series=False).measures["peak_fluid_tnf"][1] == 12345.0
    run_file = copy / "runs" / "point_001.h5"
    st = run_file.stat()
    os.utime(run_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert _study.read_study(copy, series=False).measures["peak_fluid_tnf"][1] == full.measures["peak_fluid_tnf"][1]


def test_collect_writes_a_study_file_that_h5py_and_xarray_read(study, tmp_path, capsys):
    copy = _copy(study, tmp_path)
    (copy / "summary.csv").unlink()
    assert main(["sweep", "--collect", str(copy)]) == 0
    assert "4 of 4 points complete" in capsys.readouterr().err
    table = _study.read_study(copy)
    assert (copy / "summary.csv").read_text() == table.csv()
    with h5py.File(copy / "study.h5", "r") as f:
        assert f["point"].attrs["CLASS"] == b"DIMENSION_SCALE"
        np.testing.assert_array_equal(f["point"][()], np.arange(4))
        for j, key in enumerate(table.keys):
            np.testing.assert_array_equal(f[key][()], [v[j] for v in table.values])
        np.testing.assert_array_equal(f["peak_fluid_tnf"][()], table.measures["peak_fluid_tnf"])
        assert f["peak_fluid_tnf"].attrs["units"] == "pg/mL"
        assert [s.decode() for s in f["status"][()]] == ["complete"] * 4
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_dataset(copy / "study.h5", engine="h5netcdf") as ds:
        assert dict(ds.sizes) == {"point": 4}
        assert "point" in ds.coords
        assert ds["final_fluid_leukocytes"].dims == ("point",)
        np.testing.assert_array_equal(ds["min_cartilage_integrity"].values, table.measures["min_cartilage_integrity"])
        assert list(ds["status"].values) == ["complete"] * 4
        assert ds[table.keys[0]].attrs["long_name"] == f"config key {table.keys[0]}"


def test_the_study_file_reads_every_points_fields_from_its_run_file(study, tmp_path, monkeypatch):
    # /fields/<species>: one virtual dataset over the points' run files, (point, time, y, x), no copy;
    # a point not complete reads NaN, and the study folder may move
    copy = _copy(study, tmp_path)
    (copy / "runs" / "point_002.h5").rename(copy / "runs" / "point_002.h5.away")
    assert main(["sweep", "--collect", str(copy)]) == 0  # collected with one point not run
    moved = tmp_path / "moved"
    copy.rename(moved)
    monkeypatch.chdir(tmp_path)  # relative sources resolve from the study file's folder, not the cwd
    with h5py.File(moved / "study.h5", "r") as f:
        tnf = f["fields"]["tnf"]
        assert tnf.is_virtual
        with h5py.File(moved / "runs" / "point_001.h5", "r") as run:
            assert tnf.shape == (4, *run["fields"]["tnf"].shape)
            np.testing.assert_array_equal(f["fields"]["time"][()], run["time"][()])
            np.testing.assert_array_equal(f["fields"]["x"][()], run["grid"]["x"][()])
            for i in (0, 1, 3):
                with h5py.File(moved / "runs" / f"point_{i:03d}.h5", "r") as point:
                    for species in point["fields"]:
                        np.testing.assert_array_equal(f["fields"][species][i], point["fields"][species][()])
        assert np.isnan(tnf[2]).all()
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_dataset(moved / "study.h5", engine="h5netcdf", group="fields") as ds:
        assert ds["leukocytes"].dims == ("point", "time", "y", "x")
        assert {"time", "y", "x"} <= set(ds.coords)
        assert float(ds["tnf"].isel(point=3, time=-1).max()) > 0


def test_no_virtual_fields_when_the_points_grids_differ(tmp_path):
    from tests.helpers import STUDY_SCENARIO, sweep_file

    cfg = sweep_file(tmp_path, STUDY_SCENARIO + '\n[vary]\n"geometry.spacing_mm" = [1.0, 1.5]\n')
    assert main(["sweep", str(cfg), "-o", str(tmp_path / "s"), "-q"]) == 0
    with h5py.File(tmp_path / "s" / "study.h5", "r") as f:
        assert list(f["fields"]) == []
        assert "geometry.spacing_mm varied" in f["fields"].attrs["note"]
    table = _study.read_study(tmp_path / "s")
    table.keys = ["drug.name"]  # the drug adds a species to some points only
    first, why = _study._shared_layout(table)
    assert first is None and why.endswith("species may differ (drug.name varied)")


def test_status_names_each_points_state_and_what_to_run(study, tmp_path, capsys):
    out = tmp_path / "partial"
    cfg = study.parent / "sweep.toml"
    assert main(["sweep", str(cfg), "-o", str(out), "-q", "--point", "2"]) == 0
    (out / "runs" / "point_003.failed").write_text("OSError: disk full\n")
    (out / "runs" / "point_001.diverged").write_text("the solution diverged\n")
    capsys.readouterr()
    with open(out / "runs" / ".point_000.lock", "a") as lock:  # another process runs point 0
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert main(["sweep", "--status", str(out)]) == 0
        captured = capsys.readouterr()
    assert "status: 1 done, 1 running, 1 failed, 1 diverged" in captured.out
    assert "to run: 3\n" in captured.out
    assert main(["sweep", "--status", str(out)]) == 0
    captured = capsys.readouterr()
    assert "status: 1 done, 1 pending, 1 failed, 1 diverged" in captured.out
    assert "to run: 0 3\n" in captured.out and "--point 0 3" in captured.err


def test_array_tasks_leave_the_summary_to_the_one_that_finishes_the_study(study, tmp_path):
    out = tmp_path / "array"
    cfg = study.parent / "sweep.toml"
    assert main(["sweep", str(cfg), "-o", str(out), "-q", "--point", "2", "0"]) == 0
    assert not (out / "summary.csv").exists() and not (out / "study.h5").exists()
    assert sorted(p.name for p in (out / "runs").glob(".point_*.json")) == [".point_000.json", ".point_002.json"]
    assert main(["sweep", str(cfg), "-o", str(out), "-q", "--point", "1", "3"]) == 0
    assert (out / "summary.csv").read_text() == _study.read_study(out).csv()
    assert (out / "study.h5").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--status", "S", "-o", "x"], "--status and --collect take the study folder alone"),
        (["-o", "x"], "synovia sweep needs a sweep config (or --status DIR, --collect DIR)"),
        (["CFG", "-o", "x", "--slurm", "--points-per-task", "0"], "--points-per-task 0: must be at least 1"),
        (["CFG", "-o", "x", "--slurm", "--time", "soon"], "--time 'soon': expected minutes"),
        (["CFG", "-o", "x", "--slurm", "--slurm-arg", "account"], "--slurm-arg 'account': expected KEY=VALUE"),
        (["CFG", "-o", "x", "--slurm", "--mem-gb", "0"], "--mem-gb 0.0: must be positive"),
        (["--status", "nowhere"], "'nowhere' is not a study folder"),
    ],
)
def test_bad_status_collect_and_slurm_arguments_exit_2(study, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [str(study.parent / "sweep.toml") if a == "CFG" else str(study) if a == "S" else a for a in argv]
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_slurm_without_sbatch_says_so(study, tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["sweep", str(study.parent / "sweep.toml"), "-o", str(tmp_path / "s"), "--slurm"]) == 2
    assert "sbatch is not on PATH (run this on a SLURM login node)" in capsys.readouterr().err


def test_slurm_time_limits_in_sbatch_forms():
    from solver.study import parse_slurm_time

    forms = {"30": 30, "0:30": 1, "90:00": 90, "2:00:00": 120, "1-0": 1440, "1-2:30": 1590, "1-00:00:01": 1441}
    assert {text: parse_slurm_time(text) for text in forms} == forms
    for bad in ("", "1h", "0", "1:2:3:4"):
        with pytest.raises(ValueError):
            parse_slurm_time(bad)


def test_slurm_signal_comes_after_a_task_has_started():
    """submitit's handler is set only once the task's Python has loaded its pickle: a signal 90 s before a one-minute
    limit would kill the task at once, never requeued. Under 3 min the signal comes at half the limit."""
    from solver.study import SlurmOptions

    assert {t: SlurmOptions(time_min=t).signal_delay for t in (1, 2, 3, 60)} == {1: 30, 2: 60, 3: 90, 60: 90}
    assert SlurmOptions(time_min=1, signal_delay_s=45).signal_delay == 45
    for bad in (0, 60, 120):
        with pytest.raises(ValueError, match=f"signal_delay_s = {bad}: must be above 0 and under the time limit"):
            SlurmOptions(time_min=1, signal_delay_s=bad)
    with pytest.raises(ValueError, match="time_min = 0"):
        SlurmOptions(time_min=0)
