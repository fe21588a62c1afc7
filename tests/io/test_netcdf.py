"""Run files as netCDF tools and xarray see them: named dimensions (HDF5 dimension scales), coordinates
and CF attributes, read by ncdump, netCDF4 and xarray (h5netcdf); ``solver.open_dataset`` on a real run,
on a killed run's file (its uncommitted frame left out), on a live run and on a layout-1 file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import solver
from fields import TISSUE_NAMES
from solver.io import LAYOUT_VERSION, RunFile, repair, resume_writer

from .test_runfile import GRIDS, SPECIES, SUMMARY, make_writer, run_child_until_killed

REPO = Path(__file__).resolve().parents[2]
#: a run file written before the dimension scales (layout 1, by RunWriter as of commit 0dd2c44): 4 x 3 cells,
#: tnf = k, il1 = -k and total_tnf = 10 k at t = k h for k = 0, 1, 2
LAYOUT_1 = REPO / "tests" / "data" / "run_layout1.h5"
NCDUMP = shutil.which("ncdump")
H5DUMP = shutil.which("h5dump")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    """A real 2D run (knee preset at 1 mm, 2 h, a frame an hour), made by the command."""
    from solver.cli import main

    path = tmp_path_factory.mktemp("netcdf") / "run.h5"
    sets = ["geometry.spacing_mm=1.0", "run.t_end_h=2", "run.output_interval_h=1"]
    args = ["run", str(REPO / "configs" / "knee2d.toml"), *(a for s in sets for a in ("--set", s)), "-o", str(path), "-q"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1 mm under-resolves the synovium: no matter here
        assert main(args) == 0
    return path


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("netcdf3d") / "run3d.h5"
    grid = GRIDS["3d"]
    with make_writer(path, grid, np.random.default_rng(0)) as w:
        for k in range(2):
            w.append(float(k), {s: np.full(grid.shape, k + 0.5) for s in SPECIES}, {n: float(k) for n in SUMMARY})
    return path


def _ncdump(path: Path) -> str:
    done = subprocess.run([NCDUMP, "-h", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _torn_closed_file(path: Path) -> None:
    """Three committed frames and a fourth whose fields and summary are written but not its time,
    then a clean close: what an exception between the two leaves (a netCDF reader pads time there)."""
    grid = GRIDS["2d"]
    w = make_writer(path, grid, np.random.default_rng(0))
    for k in range(3):
        w.append(float(k), {s: np.full(grid.shape, float(k)) for s in SPECIES}, {n: 10.0 * k for n in SUMMARY})
    for group, names in (("fields", SPECIES), ("summary", SUMMARY)):
        for name in names:
            ds = w._f[f"{group}/{name}"]
            ds.resize(4, axis=0)
            ds[3] = 999.0
    w.close()


# --- netCDF tools -------------------------------------------------------------------------------------


@pytest.mark.skipif(NCDUMP is None, reason="ncdump (Debian netcdf-bin) not installed")
def test_ncdump_shows_named_dimensions_and_cf_attributes(run_file, run_3d):
    with RunFile.open(run_file) as run:
        ny, nx = run.grid.shape
    text = _ncdump(run_file)
    assert "phony_dim" not in text, text[:3000]
    for line in [
        "time = UNLIMITED ; // (3 currently)",
        f"y = {ny} ;",
        f"x = {nx} ;",
        "double time(time) ;",
        'time:axis = "T" ;',
        'time:units = "h" ;',
        "double y(y) ;",
        'y:axis = "Y" ;',
        'x:units = "mm" ;',
        ':Conventions = "CF-1.8" ;',
        "float tnf(time, y, x) ;",
        'tnf:units = "pg/mL" ;',
        'tnf:long_name = "TNF-alpha concentration" ;',
        "double synovial_fluid_tnf(time) ;",
        "ubyte labels(y, x) ;",
        f'labels:flag_meanings = "{" ".join(TISSUE_NAMES)}" ;',
        "labels:flag_values = 0UB, 1UB, 2UB, 3UB, 4UB, 5UB ;",
    ]:
        assert line in text, line
    # dimensions in their natural order (the scales' _Netcdf4Dimid), not by name
    assert text.index("time = UNLIMITED") < text.index(f"y = {ny}") < text.index(f"x = {nx}")
    text = _ncdump(run_3d)
    assert "phony_dim" not in text
    assert "float tnf(time, z, y, x) ;" in text and 'z:axis = "Z" ;' in text


@pytest.mark.skipif(NCDUMP is None, reason="ncdump (Debian netcdf-bin) not installed")
def test_ncdump_saw_phony_dimensions_in_a_layout_1_file():
    """The check above can fail: a file without the dimension scales shows phony dimensions."""
    assert "phony_dim" in _ncdump(LAYOUT_1)


def test_netcdf4_reads_dimensions_coordinates_and_values(run_file):
    netCDF4 = pytest.importorskip("netCDF4", reason="netCDF4 (the dev extra) not installed")
    with RunFile.open(run_file) as run:
        times, grid, tnf = run.time, run.grid, run.field("tnf", -1)
    with netCDF4.Dataset(run_file) as nc:
        assert list(nc.dimensions) == ["time", "y", "x"]
        assert nc.dimensions["time"].isunlimited() and len(nc.dimensions["time"]) == 3
        assert nc.Conventions == "CF-1.8"
        var = nc["fields"]["tnf"]
        assert var.dimensions == ("time", "y", "x")
        assert var.units == "pg/mL"
        np.testing.assert_array_equal(var[-1], tnf)
        np.testing.assert_array_equal(nc["time"][:], times)
        assert nc["time"].axis == "T" and nc["x"].axis == "X"
        np.testing.assert_array_equal(nc["y"][:], grid.axis_centres(0))
        assert nc["summary"]["total_tnf"].dimensions == ("time",)
        assert nc["geometry"]["labels"].dimensions == ("y", "x")


@pytest.mark.parametrize("engine", ["h5netcdf", "netcdf4"])
def test_xarray_sees_dimensions_and_coordinates(run_file, engine):
    xr = pytest.importorskip("xarray")
    pytest.importorskip(engine if engine == "h5netcdf" else "netCDF4", reason=f"the {engine} engine is not installed")
    with RunFile.open(run_file) as run:
        times, grid, tnf = run.time, run.grid, run.field("tnf", 1)
    with xr.open_datatree(run_file, engine=engine) as tree:
        for node in tree.subtree:
            assert not [d for d in node.dims if d.startswith("phony")], node.path
        fields = tree["fields"]
        assert fields["tnf"].dims == ("time", "y", "x")
        assert set(fields.coords) == {"time", "y", "x"}  # inherited from the root
        np.testing.assert_array_equal(fields["time"], times)
        np.testing.assert_array_equal(fields["x"], grid.axis_centres(1))
        assert fields["y"].attrs["axis"] == "Y" and fields["y"].attrs["units"] == "mm"
        assert fields["tnf"].attrs["units"] == "pg/mL"
        np.testing.assert_array_equal(fields["tnf"].sel(time=1.0), tnf)
        assert tree["summary"]["synovial_fluid_tnf"].dims == ("time",)
        assert tree["geometry"]["labels"].attrs["flag_meanings"].split() == list(TISSUE_NAMES)
    with xr.open_dataset(run_file, group="fields", engine=engine) as ds:
        assert dict(ds.sizes) == {"time": 3, "y": grid.shape[0], "x": grid.shape[1]}


def test_netcdf_readers_pad_the_time_of_an_uncommitted_frame_with_nan(tmp_path):
    """Why a netCDF reader needs trimming: time is as long as its longest variable."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    path = tmp_path / "torn.h5"
    _torn_closed_file(path)
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        np.testing.assert_array_equal(tree["fields"]["time"], [0.0, 1.0, 2.0, np.nan])
    with solver.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds["time"], [0.0, 1.0, 2.0])
        assert 999.0 not in ds["tnf"].values and 999.0 not in ds["mean_tnf"].values


# --- HDF5 tools and h5py ------------------------------------------------------------------------------


def test_h5py_sees_the_dimension_scales(run_file):
    with h5py.File(run_file, "r") as f:
        assert f.attrs["layout_version"] == LAYOUT_VERSION == 2
        tnf = f["fields/tnf"]
        assert [dim[0].name for dim in tnf.dims] == ["/time", "/y", "/x"]
        assert f["summary/total_tnf"].dims[0][0].name == "/time"
        assert [dim[0].name for dim in f["geometry/labels"].dims] == ["/y", "/x"]
        assert f["grid/x"].dims[0][0].name == "/x"
        np.testing.assert_array_equal(f["x"][()], f["grid/x"][()])
        assert f["time"].is_scale and f["time"].maxshape == (None,)
        assert tnf.shape[0] == len(f["time"]) == 3


@pytest.mark.skipif(H5DUMP is None, reason="h5dump (Debian hdf5-tools) not installed")
def test_h5dump_reads_it(run_file):
    done = subprocess.run([H5DUMP, "-A", "-d", "/fields/tnf", str(run_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "DIMENSION_LIST" in done.stdout and "TNF-alpha concentration" in done.stdout
    done = subprocess.run([H5DUMP, "-d", "/time", str(run_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "DIMENSION_SCALE" in done.stdout, done.stderr


# --- solver.open_dataset ------------------------------------------------------------------------------


def test_open_dataset_of_a_real_run(run_file):
    pytest.importorskip("xarray")
    with RunFile.open(run_file) as run:
        times, grid, summary, labels = run.time, run.grid, run.summary, run.labels
        fields = [run.fields(k) for k in range(run.n_frames)]
        config, species = run.config_toml, run.species
    with solver.open_dataset(run_file) as ds:
        assert dict(ds.sizes) == {"time": 3, "y": grid.shape[0], "x": grid.shape[1]}
        assert list(ds.coords) == ["time", "y", "x"]
        np.testing.assert_array_equal(ds["time"], times)
        np.testing.assert_array_equal(ds["y"], grid.axis_centres(0))
        np.testing.assert_array_equal(ds["x"], grid.axis_centres(1))
        assert ds["time"].attrs == {"units": "h", "long_name": "time since the start of the run", "axis": "T"}
        assert ds["x"].attrs["units"] == "mm" and ds["x"].attrs["axis"] == "X"
        for name in species:
            assert ds[name].dims == ("time", "y", "x")
            for k in range(3):
                np.testing.assert_array_equal(ds[name].isel(time=k), fields[k][name])
        assert ds["tnf"].attrs == {"units": "pg/mL", "long_name": "TNF-alpha concentration"}
        np.testing.assert_array_equal(ds["tnf"][-1, 5:9:2, ::-3], fields[-1]["tnf"][5:9:2, ::-3])
        for name, values in summary.items():
            assert ds[name].dims == ("time",)
            np.testing.assert_array_equal(ds[name], values)
        assert ds["synovial_fluid_tnf"].attrs["units"] == "pg/mL"
        np.testing.assert_array_equal(ds["labels"], labels)
        assert ds["labels"].attrs["flag_meanings"].split() == list(TISSUE_NAMES)
        np.testing.assert_array_equal(ds["labels"].attrs["flag_values"], np.arange(len(TISSUE_NAMES)))
        assert ds.attrs["config_toml"] == config
        assert ds.attrs["layout_version"] == 2 and ds.attrs["Conventions"] == "CF-1.8"
        assert ds.attrs["species"] == species
        assert '"tnf": "pg/mL"' in ds.attrs["units"]
    h5py.File(run_file, "r").close()  # closing the dataset closed its file (a plain open of it would fail else)


def test_open_dataset_leaves_out_a_killed_runs_uncommitted_frame(tmp_path):
    pytest.importorskip("xarray")
    path = tmp_path / "run.h5"
    run_child_until_killed(path, GRIDS["2d"], "torn", min_frames=3)
    with h5py.File(path, "r", swmr=True) as f:
        assert f["fields/tnf"].shape[0] == 4 and len(f["time"]) == 3  # the fault is there
    with solver.open_dataset(path) as ds:
        assert ds.sizes["time"] == 3
        np.testing.assert_array_equal(ds["time"], [0.0, 1.0, 2.0])
        np.testing.assert_array_equal(ds["tnf"].max(("y", "x")), [0.0, 1.0, 2.0])
        np.testing.assert_array_equal(ds["tnf"][-1], np.full(GRIDS["2d"].shape, 2.0))
        assert ds["tnf"].values.shape[0] == 3 and 999.0 not in ds["tnf"].values
        np.testing.assert_array_equal(ds["total"], [0.0, 10.0, 20.0])
    # repaired, the netCDF tools read it with its dimensions
    assert repair(path) == 3
    xr = pytest.importorskip("xarray")
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        np.testing.assert_array_equal(tree["fields"]["time"], [0.0, 1.0, 2.0])
        assert tree["fields"]["tnf"].dims == ("time", "y", "x")


def test_open_dataset_of_a_live_run_holds_the_frames_committed_when_it_opened(tmp_path):
    pytest.importorskip("xarray")
    grid = GRIDS["3d"]
    path = tmp_path / "run.h5"
    frame = {s: np.full(grid.shape, 1.5) for s in SPECIES}
    with make_writer(path, grid, np.random.default_rng(0)) as w:
        w.append(0.0, frame, {n: 0.0 for n in SUMMARY})
        with solver.open_dataset(path) as ds:
            w.append(1.0, {**frame, "tnf": np.full(grid.shape, 7.0)}, {n: 1.0 for n in SUMMARY})
            assert ds.sizes["time"] == 1 and ds["tnf"].dims == ("time", "z", "y", "x")
            np.testing.assert_array_equal(ds["tnf"].values, np.full((1, *grid.shape), 1.5))
        with solver.open_dataset(path) as ds:
            np.testing.assert_array_equal(ds["tnf"].isel(time=-1), np.full(grid.shape, 7.0))
            assert list(ds.coords) == ["time", "z", "y", "x"] and ds["z"].attrs["axis"] == "Z"


def test_open_dataset_and_run_file_read_a_layout_1_file(tmp_path):
    pytest.importorskip("xarray")
    with h5py.File(LAYOUT_1, "r") as f:
        assert f.attrs["layout_version"] == 1 and "x" not in f and "DIMENSION_LIST" not in f["fields/tnf"].attrs
    with RunFile.open(LAYOUT_1) as run:
        assert run.layout_version == 1
        np.testing.assert_array_equal(run.time, [0.0, 1.0, 2.0])
        np.testing.assert_array_equal(run.field("il1", 2), np.full((4, 3), -2.0, np.float32))
        assert set(run.attrs) == {"config_toml", "version", "units"}
    with solver.open_dataset(LAYOUT_1) as ds:
        assert dict(ds.sizes) == {"time": 3, "y": 4, "x": 3}
        np.testing.assert_array_equal(ds["x"], [2.125, 2.375, 2.625])
        np.testing.assert_array_equal(ds["tnf"].max(("y", "x")), [0.0, 1.0, 2.0])
        assert ds["tnf"].attrs == {"units": "pg/mL", "long_name": "TNF-alpha concentration"}
        assert ds.attrs["layout_version"] == 1
    # resumed, it stays layout 1 (appended in place) and reads as before
    copy = tmp_path / "old.h5"
    shutil.copy(LAYOUT_1, copy)
    w, t_last, _ = resume_writer(copy)
    with w:
        assert t_last == 2.0
        w.append(3.0, {"tnf": np.full((4, 3), 3.0), "il1": np.full((4, 3), -3.0)}, {"total_tnf": 30.0})
    with RunFile.open(copy) as run:
        assert run.layout_version == 1
        np.testing.assert_array_equal(run.summary["total_tnf"], [0.0, 10.0, 20.0, 30.0])


def test_open_dataset_without_xarray_names_the_extra(run_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'synovia\[xarray\]'"):
        solver.open_dataset(run_file)


def test_open_dataset_renames_a_summary_named_like_a_species(tmp_path):
    pytest.importorskip("xarray")
    from solver.io import RunWriter

    grid = GRIDS["2d"]
    path = tmp_path / "run.h5"
    labels = np.zeros(grid.shape, np.uint8)
    with RunWriter(path, grid=grid, labels=labels, species=["tnf"], summary_names=["tnf", "x"], dtype=np.float32, attrs={}) as w:
        w.append(0.0, {"tnf": np.ones(grid.shape)}, {"tnf": 5.0, "x": 6.0})
    with solver.open_dataset(path) as ds:
        assert ds["tnf"].dims == ("time", "y", "x")
        assert float(ds["summary_tnf"][0]) == 5.0 and float(ds["summary_x"][0]) == 6.0
