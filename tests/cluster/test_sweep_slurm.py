"""``synovia sweep --slurm`` on a real single-node SLURM cluster (the ``slurm_cluster`` fixture): a study
submitted as one job array through submitit, tracked with ``--status``, a cancelled task finished by
submitting again, every point bit-identical to the same sweep run in one process."""

import os
import subprocess
import time

import numpy as np
import pytest

from solver import RunFile
from solver.cli import main
from solver.study import _study
from tests.helpers import STUDY_SWEEP, sweep_file

pytestmark = [pytest.mark.cluster, pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")]


def _fields(path):
    with RunFile.open(path) as run:
        return run.time, [run.fields(k) for k in range(run.n_frames)]


def _assert_same_runs(a, b, points):
    for i in points:
        name = f"runs/point_{i:03d}.h5"
        (ta, fa), (tb, fb) = _fields(a / name), _fields(b / name)
        np.testing.assert_array_equal(ta, tb, err_msg=name)
        for k, (x, y) in enumerate(zip(fa, fb)):
            for species in x:
                np.testing.assert_array_equal(x[species], y[species], err_msg=f"{name} frame {k} {species}")


def _job_id(captured) -> str:
    out = captured.out.strip().splitlines()
    assert out and out[-1].isdigit(), (captured.out, captured.err)
    return out[-1]


def test_a_study_submitted_as_one_job_array_matches_one_process(slurm_cluster, study, tmp_path, capsys):
    cfg = study.parent / "sweep.toml"
    out = tmp_path / "on_slurm"
    argv = ["sweep", str(cfg), "-o", str(out), "--slurm", "--partition", slurm_cluster.partition, "--time", "10"]
    assert main([*argv, "--points-per-task", "2", "--max-parallel", "2"]) == 0
    job = _job_id(capsys.readouterr())
    slurm_cluster.wait(job, timeout=240)
    assert main(["sweep", "--status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "status: 4 done" in text, text
    _assert_same_runs(out, study, range(4))
    # submitting again finds nothing to do
    assert main(argv) == 0
    assert "nothing to submit: of 4 points 4 done" in capsys.readouterr().err
    # one process per task: two tasks' logs, each ran its two points
    logs = sorted(out.glob(".slurm/*/*_log.out"))
    assert len(logs) == 2, logs
    assert all(log.read_text().count("synovia: point") == 2 for log in logs)
    assert main(["sweep", "--collect", str(out)]) == 0
    assert (out / "summary.csv").read_text().count("complete") == 4


def test_a_cancelled_task_is_finished_by_submitting_again(slurm_cluster, tmp_path, capsys):
    """Two points (2000 h at 0.2 mm, some 30 s of stepping, and 8 h) in one task, cancelled once point 0 has two
    frames: scancel's SIGTERM (which submitit ignores), then SIGKILL after KillWait (5 s); 400 h (6 s) could
    finish before it. The second submission runs only what is unfinished, and both points end bit-identical to
    the sweep run in one process."""
    vary = '[vary]\n"run.t_end_h" = [2000.0, 8.0]\n"injury.rate" = [800.0, 100.0]\n'
    base = STUDY_SWEEP.split("[vary]")[0].replace("output_interval_h = 0.5", "output_interval_h = 8.0")
    base = base.replace("spacing_mm = 0.4", "spacing_mm = 0.2")
    sweep = 'combine = "zip"\n' + base + vary
    cfg = sweep_file(tmp_path, sweep)
    out = tmp_path / "on_slurm"
    argv = ["sweep", str(cfg), "-o", str(out), "--slurm", "--partition", slurm_cluster.partition, "--time", "10"]
    argv += ["--points-per-task", "2"]
    assert main(argv) == 0
    job = _job_id(capsys.readouterr())
    first = out / "runs" / "point_000.h5"
    deadline = time.monotonic() + 120
    frames = 0
    while frames < 2:
        assert time.monotonic() < deadline, "point 0 wrote no two frames in 120 s"
        time.sleep(0.2)
        try:
            with RunFile.open(first) as run:
                frames = run.n_frames
        except (OSError, KeyError):
            frames = 0
    subprocess.run(["scancel", job], env={**os.environ, **slurm_cluster.env}, check=True)
    slurm_cluster.wait(job, timeout=60)
    assert main(["sweep", "--status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "status: 2 pending" in text and "to run: 0 1" in text, text
    with RunFile.open(first) as run:
        assert 2 <= run.n_frames < 251 and run.time[-1] < 2000.0
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "2 point(s) in 1 task(s)" in captured.err
    slurm_cluster.wait(_job_id(captured), timeout=240)
    assert _study.read_study(out, series=False).status == ["complete", "complete"]

    local = tmp_path / "local"
    assert main(["sweep", str(cfg), "-o", str(local), "-q", "--jobs", "1"]) == 0
    _assert_same_runs(out, local, range(2))


def test_a_task_at_its_time_limit_is_requeued_and_continues(slurm_cluster, tmp_path):
    """A two-minute task, which submitit has SLURM signal 60 s before its limit, and a point of some 150 s: SLURM
    signals the task (SIGUSR2, 60 to 90 s in: slurmctld checks limits every 30 s) and submitit requeues it. Once it
    is requeued the test raises the job's limit, so that its rerun (about 2 min later: SLURM holds a requeued job
    until its credential expires) finishes the point, resumed from its run file. Some 5 minutes."""
    from solver.study import SlurmOptions, load_sweep, prepare_folder, submit_slurm

    vary = '[vary]\n"injury.rate" = [800.0]\n'
    base = STUDY_SWEEP.split("[vary]")[0].replace("output_interval_h = 0.5", "output_interval_h = 24.0")
    base = base.replace("spacing_mm = 0.4", "spacing_mm = 0.2").replace("t_end_h = 2.0", "t_end_h = 12000.0")
    cfg = sweep_file(tmp_path, base + vary)
    out = tmp_path / "on_slurm"
    sweep = load_sweep(cfg)
    prepare_folder(sweep, out)
    options = SlurmOptions(partition=slurm_cluster.partition, time_min=2)
    assert options.signal_delay == 60  # half the limit: the task's Python must have set submitit's handler by then
    job, tasks = submit_slurm(sweep, out, [0], options)
    assert tasks == [[0]]

    def log() -> str:
        return "".join(p.read_text() for p in sorted(out.glob(".slurm/*/*_log.*")))  # submitit logs INFO to .out

    deadline = time.monotonic() + 300
    while f"Requeued job {job}" not in log():
        assert time.monotonic() < deadline, log()[-3000:]
        time.sleep(1)
    with RunFile.open(out / "runs" / "point_000.h5") as run:
        stopped_at = run.time[-1]
    assert 0.0 < stopped_at < 12000.0
    env = {**os.environ, **slurm_cluster.env}
    update = subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=15"], env=env, capture_output=True, text=True)
    assert update.returncode == 0, update.stderr
    slurm_cluster.wait(job, timeout=600)
    text = log()
    assert "Calling checkpoint method" in text, text[-3000:]
    assert "Job completed successfully" in text, text[-3000:]
    assert _study.read_study(out, series=False).status == ["complete"]
    with RunFile.open(out / "runs" / "point_000.h5") as run:
        np.testing.assert_array_equal(run.time, np.arange(0.0, 12000.0 + 24.0, 24.0))
