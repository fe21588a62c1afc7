"""``synovia sweep --ensemble``: points with the same grid and step plan advanced together by one vmapped
interval function (solver.study._ensemble), against the session's study run point by point (the
``study`` fixture: a 2D MCP joint at 0.4 mm, 2 h in 4 frames, float64). Over devices: tests/time/test_sharding.py.
"""

import textwrap

import numpy as np
import pytest

from solver import RunFile
from solver.cli import main
from solver.study import _study, load_sweep, run_batched
from tests.helpers import STUDY_SCENARIO, STUDY_SWEEP, sweep_file

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")

#: A batched member's fields against its own run's (float64): XLA compiles the batched step as another
#: program, which may contract a multiply and an add into one FMA where the other does not.
RTOL = 1e-12


def assert_same_runs(a_dir, b_dir, points=range(4), rtol=RTOL):
    for i in points:
        with RunFile.open(a_dir / "runs" / f"point_00{i}.h5") as a, RunFile.open(b_dir / "runs" / f"point_00{i}.h5") as b:
            assert a.n_frames == b.n_frames == 5
            assert np.array_equal(a.time, b.time)
            assert a.config_toml == b.config_toml
            for k in range(a.n_frames):
                fa, fb = a.fields(k), b.fields(k)
                for name in fb:
                    scale = max(float(np.max(np.abs(fb[name]))), 1e-300)
                    diff = float(np.max(np.abs(fa[name] - fb[name]))) / scale
                    assert diff <= rtol, f"point {i} frame {k} {name}: relative difference {diff:.2e}"
                    if k == 0:  # the start is not stepped: the same to the bit
                        assert np.array_equal(fa[name], fb[name])
            for name in b.summary:
                np.testing.assert_allclose(a.summary[name], b.summary[name], rtol=rtol, atol=1e-300, err_msg=name)


def test_a_batched_sweep_writes_each_points_own_run(study, tmp_path, capsys):
    out = tmp_path / "batched"
    assert main(["sweep", str(study.parent / "sweep.toml"), "-o", str(out), "-q", "--ensemble"]) == 0
    assert "in vmapped batches" in capsys.readouterr().err
    assert_same_runs(out, study)
    table = _study.read_study(out)
    assert table.status == ["complete"] * 4
    reference = _study.read_study(study)
    for name, values in reference.measures.items():
        np.testing.assert_allclose(table.measures[name], values, rtol=1e-10, err_msg=name)


def test_points_batch_by_step_plan_and_a_dry_run_says_how(tmp_path, capsys):
    # run.dt_h sets the step: points 0 and 2 share one, point 1 has its own
    cfg = sweep_file(tmp_path, STUDY_SCENARIO + '[vary]\n"run.dt_h" = [0.005, 0.01, 0.005]\n')
    assert main(["sweep", str(cfg), "--dry-run", "--ensemble"]) == 0
    err = capsys.readouterr().err
    assert "batch of point(s) 0 2: 2 point(s) on " in err and "dt 0.005 h x 100 per frame" in err
    assert "batch of point(s) 1: 1 point(s) on " in err and "dt 0.01 h x 50 per frame" in err
    assert "run.dt_h" in err  # how to make the plans agree
    assert not (tmp_path / "study").exists()


def test_an_interrupted_batch_continues_where_it_stopped(study, tmp_path):
    cfg = study.parent / "sweep.toml"
    out = tmp_path / "interrupted"
    sweep = load_sweep(cfg)
    _study.prepare_folder(sweep, out)
    tasks = [(c.to_toml(), sweep.base_dir, str(out / "runs" / f"point_00{i}.h5")) for i, c in enumerate(sweep.configs)]
    frames = iter(range(100))
    with pytest.raises(KeyboardInterrupt):
        run_batched(tasks, stop=lambda: next(frames) >= 1)  # stop after two frames
    for i in range(4):
        with RunFile.open(out / "runs" / f"point_00{i}.h5") as run:
            assert run.n_frames == 3
    # one point lost: it starts again while the other three continue from frame 2 (two batches)
    (out / "runs" / "point_002.h5").unlink()
    results = run_batched(tasks)
    assert [(r.index, r.status) for r in results] == [(i, "done") for i in range(4)]
    assert_same_runs(out, study)
    assert [r.status for r in run_batched(tasks)] == ["complete"] * 4


def test_a_refused_or_diverging_point_leaves_the_others_to_finish(tmp_path, capsys):
    # absurd TNF secretion overflows float32 within the run (point 1); an unstable fixed step is refused (point 3)
    scenario = STUDY_SCENARIO.replace('precision = "float64"', 'precision = "float32"')
    text = (
        'combine = "zip"\n'
        + scenario
        + textwrap.dedent(
            """
        [scenario.initial]
        start = "baseline"

        [vary]
        "parameters.tnf_per_leukocyte" = [0.01, 1e37, 0.02, 0.03]
        "run.dt_h" = [0.005, 0.005, 0.005, 5.0]
        """
        )
    )
    cfg = sweep_file(tmp_path, text)
    out = tmp_path / "mixed"
    assert main(["sweep", str(cfg), "-o", str(out), "-q", "--ensemble"]) == 2  # a refusal outranks a divergence
    err = capsys.readouterr().err
    assert "point 1 (tnf_per_leukocyte=1e+37, dt_h=0.005) diverged: the solution diverged at t = " in err
    assert "point 3 (tnf_per_leukocyte=0.03, dt_h=5) refused: run.dt_h = 5 h is above the stable limit" in err
    assert _study.read_study(out).status == ["complete", "diverged", "complete", "refused"]
    single = tmp_path / "single"
    assert main(["sweep", str(cfg), "-o", str(single), "-q", "--point", "0", "2"]) == 0
    for i in (0, 2):
        with RunFile.open(out / "runs" / f"point_00{i}.h5") as a, RunFile.open(single / "runs" / f"point_00{i}.h5") as b:
            for name in ("tnf", "il1", "leukocytes"):  # float32: a few units in the last place
                np.testing.assert_allclose(a.field(name, -1), b.field(name, -1), rtol=2e-6, atol=1e-30)


def test_ensemble_and_jobs_are_refused_together(tmp_path, capsys):
    cfg = sweep_file(tmp_path, STUDY_SWEEP)
    assert main(["sweep", str(cfg), "-o", str(tmp_path / "s"), "--ensemble", "--jobs", "2"]) == 2
    assert "--ensemble and --jobs N: choose one" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
