"""``synovia sweep --ensemble``: points with the same grid and step plan advanced together by one vmapped
interval function (solver.study._ensemble), against the session's study run point by point (the
``study`` fixture: a 2D MCP joint at 0.4 mm, 2 h in 4 frames, float64): the same files to round-off, and
with ``run.reproducible`` (sums in a fixed order) to the bit.
Over devices: tests/time/test_sharding.py.
"""

import textwrap

import h5py
import numpy as np
import pytest

from solver import RunFile
from solver.cli import main
from solver.study import _study, load_sweep, run_batched
from tests.helpers import STUDY_SCENARIO, STUDY_SWEEP, sweep_file

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")


def _datasets(group) -> list[str]:
    names = []
    group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def assert_same_runs(a_dir, b_dir, points=range(4), exact=True):
    """Every dataset of each point's run file (fields, times, summaries): the same to the bit, or (not
    ``exact``, XLA's own order of a sum's additions differing between a batch and a run alone) to 1e-12
    relative, with the times and the start frame the same to the bit."""
    for i in points:
        with h5py.File(a_dir / "runs" / f"point_00{i}.h5") as a, h5py.File(b_dir / "runs" / f"point_00{i}.h5") as b:
            names = _datasets(a)
            assert "fields/tnf" in names and "time" in names
            assert a.attrs["config_toml"] == b.attrs["config_toml"]
            for name in names:
                x, y = a[name][()], b[name][()]
                if exact or name == "time":
                    assert np.array_equal(x, y, equal_nan=True), f"point {i}: {name}"
                    continue
                assert x.shape == y.shape
                if name.startswith("fields/"):
                    assert np.array_equal(x[0], y[0]), f"point {i}: {name} at the start"
                scale = max(float(np.max(np.abs(y))), 1e-300)
                assert float(np.max(np.abs(x - y))) <= 1e-12 * scale, f"point {i}: {name}"


def test_a_batched_sweep_writes_each_points_own_run(study, tmp_path, capsys):
    out = tmp_path / "batched"
    assert main(["sweep", str(study.parent / "sweep.toml"), "-o", str(out), "-q", "--ensemble"]) == 0
    assert "in vmapped batches" in capsys.readouterr().err
    assert_same_runs(out, study, exact=False)
    table = _study.read_study(out)
    assert table.status == ["complete"] * 4
    reference = _study.read_study(study)
    for name, values in reference.measures.items():
        np.testing.assert_allclose(table.measures[name], values, rtol=1e-10, err_msg=name)


def test_with_run_reproducible_a_batch_writes_the_same_files_to_the_bit(tmp_path):
    cfg = sweep_file(tmp_path, STUDY_SWEEP)
    batched, single = tmp_path / "batched", tmp_path / "single"
    exact = ["--set", "run.reproducible=true"]
    assert main(["sweep", str(cfg), "-o", str(batched), "-q", "--ensemble", *exact]) == 0
    assert main(["sweep", str(cfg), "-o", str(single), "-q", *exact]) == 0
    assert_same_runs(batched, single)


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
    assert_same_runs(out, study, exact=False)
    assert [r.status for r in run_batched(tasks)] == ["complete"] * 4


def test_a_refused_or_diverging_point_leaves_the_others_to_finish(tmp_path, capsys):
    # absurd TNF secretion overflows float32 within the run (point 1); an unstable fixed step is refused (point 3)
    scenario = STUDY_SCENARIO.replace('precision = "float64"', 'precision = "float32"\nreproducible = true')
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
    assert_same_runs(out, single, points=(0, 2))


def test_ensemble_and_jobs_are_refused_together(tmp_path, capsys):
    cfg = sweep_file(tmp_path, STUDY_SWEEP)
    assert main(["sweep", str(cfg), "-o", str(tmp_path / "s"), "--ensemble", "--jobs", "2"]) == 2
    assert "--ensemble and --jobs N: choose one" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # ~50 s
def test_a_reproducible_batch_with_the_drug_on_is_bit_identical_too(tmp_path):
    # doses on the way (subcutaneous and intravenous: the plasma profile and its kinks in the step's moments)
    text = STUDY_SCENARIO.replace('precision = "float64"', 'precision = "float64"\nreproducible = true') + textwrap.dedent(
        """
        [scenario.drug]
        enabled = true
        first_dose_h = 0.5
        interval_h = 1.0

        [vary]
        "drug.dose_mg" = [10.0, 50.0]
        "drug.route" = ["sc", "iv"]
        """
    )
    cfg = sweep_file(tmp_path, text)
    batched, single = tmp_path / "batched", tmp_path / "single"
    assert main(["sweep", str(cfg), "-o", str(batched), "-q", "--ensemble"]) == 0
    assert main(["sweep", str(cfg), "-o", str(single), "-q"]) == 0
    assert_same_runs(batched, single)
