"""The notebook API: the run loop's callbacks and progress default, ``solver.simulate`` and its
:class:`solver.Simulation` (path, config, xarray dataset, summaries, figures), and the public
``figure_*`` functions, which return Figures and neither show nor write anything.

The runs are the 2D knee on a 1 mm grid, 4 h with a frame every hour: seconds each.
"""

from __future__ import annotations

import io
import os
import sys
import types

import numpy as np
import pytest
from matplotlib.figure import Figure

import inference
import solver
from solver import RunFile

xr = pytest.importorskip("xarray", reason="the Simulation's dataset needs xarray (synovia[xarray])")

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing 1.0 mm exceeds")  # the coarse grid is for speed

FAST = ["geometry.spacing_mm=1.0", "run.t_end_h=4", "run.output_interval_h=1"]
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    """A finished run of the fast knee, kept in a file."""
    out = tmp_path_factory.mktemp("knee") / "knee.h5"
    return solver.simulate("knee2d", out, overrides=FAST, progress=False)


def test_simulate_writes_the_run_file_and_reads_it_as_a_dataset(knee):
    assert knee.path.is_file() and os.fspath(knee) == str(knee.path)
    assert not knee.stopped and knee.result.frames_in_file == 5 and knee.result.steps > 0
    assert knee.config.run.t_end_h == 4 and knee.config.geometry.spacing_mm == 1.0
    ds = knee.dataset
    assert list(ds["time"].values) == [0.0, 1.0, 2.0, 3.0, 4.0] and ds["time"].attrs["units"] == "h"
    assert ds["tnf"].dims == ("time", "y", "x") and ds["x"].attrs["units"] == "mm"
    assert set(knee.summaries.data_vars) >= {"synovial_fluid_tnf", "synovial_fluid_leukocytes", "cartilage_integrity"}
    assert all(v.dims == ("time",) for v in knee.summaries.data_vars.values())
    assert set(knee.fields.data_vars) == {*ds.attrs["species"], "labels"}
    with RunFile.open(knee) as f:  # path-like: what it shows is the file's
        assert np.allclose(ds["synovial_fluid_tnf"].values, f.summary["synovial_fluid_tnf"])
        assert np.array_equal(ds["tnf"].isel(time=-1).values, f.field("tnf", -1), equal_nan=True)
    # xarray copies lazy arrays to align them: the file's arrays allow it
    tnf = ds["tnf"].sel(time=2.0)
    assert float(tnf.where(tnf == tnf.max(), drop=True).max()) == pytest.approx(float(tnf.max()))


def test_two_readers_of_one_file_read_the_same_frames(knee):
    """A dataset and a RunFile open on one finished file at once (HDF5 2.0 misread every frame as the
    first through the second handle once both had refreshed their datasets)."""
    with solver.open_dataset(knee.path) as ds, RunFile.open(knee.path) as f:
        first = ds["tnf"].values
        assert all(np.array_equal(first[k], f.field("tnf", k), equal_nan=True) for k in range(f.n_frames))
        assert not np.array_equal(first[0], first[-1], equal_nan=True)


def test_a_file_opened_as_a_simulation_reads_its_config_from_the_file(knee):
    again = solver.Simulation(knee.path)
    assert again.result is None and not again.stopped
    assert again.config.to_dict() == knee.config.to_dict()
    assert np.array_equal(again.summaries["synovial_fluid_il1"].values, knee.summaries["synovial_fluid_il1"].values)
    again.close()
    with pytest.raises(FileNotFoundError, match="no run file"):
        solver.Simulation(knee.path.with_name("absent.h5"))


def test_callbacks_see_every_frame_and_one_returning_true_stops_the_run_cleanly(tmp_path):
    seen: list[solver.Frame] = []

    def watch(frame: solver.Frame) -> None:
        seen.append(frame)

    out = tmp_path / "stopped.h5"
    config = solver.load_config(os.path.join(CONFIGS, "knee2d.toml"), FAST)
    sim = solver.simulate(config, out, callbacks=[watch, lambda frame: frame.time_h >= 2], progress=False)
    assert sim.stopped and sim.result.time_h == 2.0 and sim.result.frames_in_file == 3
    assert [(f.index, f.time_h) for f in seen] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert set(seen[0].fields) == set(sim.dataset.attrs["species"])
    assert seen[0].fields["tnf"].shape == sim.dataset["tnf"].shape[1:]
    assert np.allclose([f.summaries["synovial_fluid_tnf"] for f in seen], sim.summaries["synovial_fluid_tnf"].values)
    assert np.array_equal(seen[-1].fields["leukocytes"], sim.dataset["leukocytes"].isel(time=-1).values, equal_nan=True)
    sim.close()
    # the stopped file is a valid run file that resumes to the end
    scenario = solver.build_scenario(config)
    writer, start, state = solver.open_run(scenario, out, resume=True)
    assert start == 2
    with writer:
        result = solver.run(scenario, writer, start_frame=start, state=state, progress=False)
    assert not result.stopped and result.frames_in_file == 5
    assert list(solver.RunFile.open(out).time) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_callback_may_stop_the_run_at_its_first_frame(tmp_path):
    sim = solver.simulate("knee2d", tmp_path / "first.h5", overrides=FAST, callbacks=[lambda frame: True], progress=False)
    assert sim.stopped and list(sim.dataset["time"].values) == [0.0]


def test_progress_shows_by_default_only_to_a_person(tmp_path, monkeypatch, capsys):
    from solver.study import _run

    config = solver.load_config(os.path.join(CONFIGS, "knee2d.toml"), FAST)
    monkeypatch.setattr(_run, "interactive", lambda: False)
    solver.simulate(config, tmp_path / "quiet.h5").close()
    assert "h simulated" not in capsys.readouterr().err
    monkeypatch.setattr(_run, "interactive", lambda: True)
    solver.simulate(config, tmp_path / "shown.h5").close()
    assert "h simulated" in capsys.readouterr().err
    # what decides it: a terminal or an IPython shell, not a file or a pipe
    monkeypatch.undo()
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not solver.interactive()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: object()))  # a notebook
    assert solver.interactive()


def test_a_temporary_run_lives_as_long_as_its_simulation(tmp_path):
    with solver.simulate("knee2d", overrides=FAST, progress=False) as sim:
        path = sim.path
        assert path.is_file() and len(sim.dataset["time"]) == 5
    assert not path.exists() and not path.parent.exists()
    sim.close()  # twice is fine


def test_simulate_refuses_to_replace_a_file_unless_told(knee):
    with pytest.raises(FileExistsError):
        solver.simulate("knee2d", knee.path, overrides=FAST, progress=False)


def test_figure_functions_return_figures_and_neither_show_nor_write(knee, study, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    before = plt.get_fignums()
    with RunFile.open(knee.path) as f:
        figures = [
            solver.figure_maps(knee.path, "leukocytes", [0, 4]),
            solver.figure_maps(str(knee.path)),
            solver.figure_maps(f, "cartilage", [2]),
            solver.figure_timecourses(knee),
            solver.figure_timecourses(f),
            knee.figure_maps("il1", times=[1]),
            knee.figure_timecourses(),
            solver.figure_study(study),
            solver.figure_study_timecourses(solver.read_study(study)),
            inference.figure_fit(os.path.join(CONFIGS, "calibration", "oa_fit.h5")),
        ]
        assert f.n_frames == 5  # a RunFile given open stays open
    assert all(isinstance(fig, Figure) for fig in figures)
    assert plt.get_fignums() == before and os.listdir(tmp_path) == []
    maps = figures[0]
    assert [ax.get_title() for ax in maps.axes if ax.get_title().startswith("t =")] == ["t = 0 h", "t = 4 h"]
    assert len([ax for ax in figures[1].axes if ax.get_title().startswith("t =")]) == 4  # the default four times
    assert "Leukocytes" in maps.get_suptitle() and "knee.h5" in figures[3].get_suptitle()
    with pytest.raises(ValueError, match="species 'drug' is not in knee.h5"):
        solver.figure_maps(knee, "drug")
    with pytest.raises(ValueError, match="outside the run"):
        solver.figure_maps(knee, "tnf", [10.0])
    with pytest.raises(ValueError, match="no fitted field maps"):
        inference.figure_fit_maps(os.path.join(CONFIGS, "calibration", "oa_fit.h5"))
