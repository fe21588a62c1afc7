"""Tests of the HDF5 output layer: round trips, crash safety, live reading, XDMF, describe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest

from fields import TISSUE_NAMES, Grid
from solver.io import LAYOUT_VERSION, RunFile, RunWriter, describe, resume_writer, write_xdmf

REPO = Path(__file__).resolve().parents[2]
SPECIES = ("tnf", "il1", "leukocytes")
SUMMARY = ("mean_tnf", "cartilage_loss")
UNITS = {"tnf": "pg/mL", "il1": "pg/mL", "leukocytes": "cells/uL", "mean_tnf": "pg/mL"}

GRIDS = {
    "2d": Grid(shape=(6, 5), spacing=(0.5, 0.25), origin=(-1.0, 2.0)),
    "3d": Grid(shape=(4, 3, 5), spacing=(0.2, 0.3, 0.4), origin=(0.0, -0.5, 1.5)),
}


def make_attrs() -> dict[str, str | int | float]:
    return {
        "config_toml": '[grid]\nshape = [6, 5]\n\n[run]\nname = "test"\n',
        "version": "0.1.0",
        "precision": "float32",
        "units": json.dumps(UNITS),
        "seed": 7,
        "t_end_h": 48.0,
    }


def make_writer(path: Path, grid: Grid, rng: np.random.Generator, **kw) -> RunWriter:
    labels = kw.pop("labels", None)
    if labels is None:
        labels = rng.integers(0, len(TISSUE_NAMES), size=grid.shape, dtype=np.uint8)
    return RunWriter(
        path,
        grid=grid,
        labels=labels,
        species=SPECIES,
        summary_names=SUMMARY,
        dtype=kw.pop("dtype", np.float32),
        attrs=kw.pop("attrs", make_attrs()),
        **kw,
    )


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip(tmp_path: Path, dim: str, dtype: type) -> None:
    grid = GRIDS[dim]
    rng = np.random.default_rng(0)
    path = tmp_path / "run.h5"
    times = [0.0, 0.5, 2.25]
    frames = [{s: rng.random(grid.shape).astype(dtype) for s in SPECIES} for _ in times]
    summaries = [{n: float(rng.random()) for n in SUMMARY} for _ in times]
    labels = rng.integers(0, len(TISSUE_NAMES), size=grid.shape).astype(np.int64)  # any int dtype is accepted
    with make_writer(path, grid, rng, dtype=dtype, labels=labels) as w:
        for t, fr, su in zip(times, frames, summaries, strict=True):
            w.append(t, fr, su)
        assert w.n_frames == 3

    with RunFile.open(path) as run:
        assert run.grid == grid
        assert run.species == list(SPECIES)
        assert run.summary_names == list(SUMMARY)
        assert run.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(run.time, times)
        assert run.time.dtype == np.float64
        np.testing.assert_array_equal(run.labels, labels)
        assert run.labels.dtype == np.uint8
        assert run.attrs == make_attrs()
        assert run.config_toml == make_attrs()["config_toml"]
        assert run.tissue_names == list(TISSUE_NAMES)
        for k in range(3):
            for s in SPECIES:
                got = run.field(s, k)
                assert got.dtype == np.dtype(dtype)
                np.testing.assert_array_equal(got, frames[k][s])
        np.testing.assert_array_equal(run.field("tnf", -1), frames[-1]["tnf"])
        for n in SUMMARY:
            np.testing.assert_array_equal(run.summary[n], [s[n] for s in summaries])
        assert run.units["tnf"] == "pg/mL"
        assert run.units["cartilage_loss"] == ""
        with pytest.raises(IndexError):
            run.field("tnf", 3)

    # The raw layout, as other tools see it.
    with h5py.File(path, "r") as f:
        assert f.attrs["layout_version"] == LAYOUT_VERSION == 2
        assert list(f.attrs["species"]) == list(SPECIES)
        assert f["fields/tnf"].shape == (3, *grid.shape)
        assert f["fields/tnf"].maxshape == (None, *grid.shape)
        assert f["fields/tnf"].chunks == (1, *grid.shape)
        assert f["fields/tnf"].compression == "gzip"
        assert f["fields/tnf"].shuffle
        assert f["fields/tnf"].attrs["units"] == "pg/mL"
        assert f["time"].maxshape == (None,)
        assert f["summary/mean_tnf"].maxshape == (None,)
        axes = ("y", "x") if grid.ndim == 2 else ("z", "y", "x")
        for axis, name in enumerate(axes):
            np.testing.assert_allclose(f["grid"][name][:], grid.axis_centres(axis))
        np.testing.assert_array_equal(f["grid"].attrs["spacing"], grid.spacing)
        np.testing.assert_array_equal(f["grid"].attrs["origin"], grid.origin)
        np.testing.assert_array_equal(f["grid"].attrs["shape"], grid.shape)
        assert list(f["geometry/labels"].attrs["tissue_names"]) == list(TISSUE_NAMES)


def test_large_frames_are_split_into_chunks(tmp_path: Path) -> None:
    grid = Grid(shape=(40, 160, 200), spacing=(0.1, 0.1, 0.1))  # 5.1 MB per float32 frame
    with make_writer(tmp_path / "big.h5", grid, np.random.default_rng(0)) as w:
        chunks = w._f["fields/tnf"].chunks
    assert chunks[0] == 1 and chunks[2:] == grid.shape[1:]
    assert 1 <= chunks[1] < grid.shape[0]
    assert np.prod(chunks) * 4 <= 4 * 2**20


def test_append_validates(tmp_path: Path) -> None:
    grid = GRIDS["2d"]
    rng = np.random.default_rng(0)
    ok = {s: np.zeros(grid.shape) for s in SPECIES}
    su = {n: 0.0 for n in SUMMARY}
    with make_writer(tmp_path / "run.h5", grid, rng) as w:
        w.append(1.0, ok, su)
        with pytest.raises(ValueError, match="not after"):
            w.append(1.0, ok, su)
        with pytest.raises(ValueError, match="shape"):
            w.append(2.0, {**ok, "tnf": np.zeros((2, 2))}, su)
        with pytest.raises(ValueError, match="fields"):
            w.append(2.0, {"tnf": ok["tnf"]}, su)
        with pytest.raises(ValueError, match="summary"):
            w.append(2.0, ok, {})
        assert w.n_frames == 1
    with RunFile.open(tmp_path / "run.h5") as run:
        assert run.n_frames == 1
    with pytest.raises(ValueError, match="written by the output layer"):
        make_writer(tmp_path / "other.h5", grid, rng, attrs={"species": "x"})


def test_refuses_overwrite(tmp_path: Path) -> None:
    grid = GRIDS["2d"]
    rng = np.random.default_rng(0)
    path = tmp_path / "run.h5"
    with make_writer(path, grid, rng) as w:
        w.append(0.0, {s: np.ones(grid.shape) for s in SPECIES}, {n: 1.0 for n in SUMMARY})
    assert w.xdmf_path.exists()
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_writer(path, grid, rng)
    assert path.read_bytes() == before
    with make_writer(path, grid, rng, overwrite=True) as w:
        assert w.n_frames == 0
        # The old sidecar described frames the new file does not have.
        assert not w.xdmf_path.exists()
    with RunFile.open(path) as run:
        assert run.n_frames == 0


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from fields import Grid
    from solver.io import RunWriter

    grid = Grid(shape={shape!r}, spacing={spacing!r}, origin={origin!r})
    w = RunWriter(sys.argv[1], grid=grid, labels=np.ones(grid.shape, np.uint8),
                  species=["tnf", "il1"], summary_names=["total"], dtype=np.float32,
                  attrs={{"config_toml": "x = 1\\n", "version": "t"}})
    mode = sys.argv[2]
    k = 0
    while True:
        w.append(float(k), {{"tnf": np.full(grid.shape, k), "il1": np.full(grid.shape, -k)}},
                 {{"total": 10.0 * k}})
        print(w.n_frames, flush=True)
        k += 1
        if mode == "torn" and k == 3:
            # A frame whose fields are written but whose /time is not: what a kill mid-append leaves.
            ds = w._f["fields/tnf"]
            ds.resize(k + 1, axis=0)
            ds[k] = 999.0
            w._f.flush()
            print("torn", flush=True)
            time.sleep(60)
        time.sleep(0.02)
    """
)


def run_child_until_killed(path: Path, grid: Grid, mode: str, min_frames: int) -> None:
    """Start a writer in a subprocess, SIGKILL it once it reported ``min_frames`` frames."""
    code = CHILD.format(shape=grid.shape, spacing=grid.spacing, origin=grid.origin)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"writer exited early: {proc.stderr.read()}")
            if (mode == "torn" and line.strip() == "torn") or (mode == "loop" and int(line) >= min_frames):
                break
        else:
            raise AssertionError("writer too slow")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def check_frames(path: Path, n: int) -> None:
    """Frame k holds tnf = k, il1 = -k, total = 10 k at t = k h."""
    with RunFile.open(path) as run:
        np.testing.assert_array_equal(run.time, np.arange(n, dtype=float))
        np.testing.assert_array_equal(run.summary["total"], 10.0 * np.arange(n))
        for k in range(n):
            np.testing.assert_array_equal(run.field("tnf", k), np.full(run.grid.shape, k, np.float32))
            np.testing.assert_array_equal(run.field("il1", k), np.full(run.grid.shape, -k, np.float32))


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_kill_9_then_resume(tmp_path: Path, dim: str) -> None:
    grid = GRIDS[dim]
    path = tmp_path / "run.h5"
    run_child_until_killed(path, grid, "loop", min_frames=3)

    with RunFile.open(path) as run:
        n = run.n_frames
        assert n >= 3
        assert run.attrs == {"config_toml": "x = 1\n", "version": "t"}
    check_frames(path, n)

    w, t_last, last = resume_writer(path)
    with w:
        assert w.n_frames == n
        assert t_last == n - 1
        assert set(last) == {"tnf", "il1"}
        np.testing.assert_array_equal(last["tnf"], np.full(grid.shape, n - 1, np.float32))
        for k in (n, n + 1):
            w.append(float(k), {"tnf": np.full(grid.shape, k), "il1": np.full(grid.shape, -k)}, {"total": 10.0 * k})
    check_frames(path, n + 2)
    with RunFile.open(path) as run:
        assert run.attrs == {"config_toml": "x = 1\n", "version": "t"}
        np.testing.assert_array_equal(run.labels, np.ones(grid.shape, np.uint8))
        assert run.grid == grid
    # The repaired file is an ordinary, cleanly closed HDF5 file again.
    with h5py.File(path, "r") as f:
        assert f["fields/tnf"].shape[0] == n + 2
    assert not list(tmp_path.glob(".*tmp"))


def test_kill_9_mid_frame_drops_torn_frame(tmp_path: Path) -> None:
    grid = GRIDS["2d"]
    path = tmp_path / "run.h5"
    run_child_until_killed(path, grid, "torn", min_frames=3)
    with RunFile.open(path) as run:
        assert run.n_frames == 3
        with pytest.raises(IndexError):
            run.field("tnf", 3)
    w, t_last, last = resume_writer(path)
    with w:
        assert t_last == 2.0
        np.testing.assert_array_equal(last["tnf"], np.full(grid.shape, 2, np.float32))
        w.append(3.0, {"tnf": np.full(grid.shape, 3), "il1": np.full(grid.shape, -3)}, {"total": 30.0})
    check_frames(path, 4)


def test_resume_clean_file(tmp_path: Path) -> None:
    grid = GRIDS["3d"]
    rng = np.random.default_rng(1)
    path = tmp_path / "run.h5"
    data = [{s: rng.random(grid.shape) for s in SPECIES} for _ in range(4)]
    with make_writer(path, grid, rng, dtype=np.float64) as w:
        for k in range(2):
            w.append(k, data[k], {n: k for n in SUMMARY})
    w, t_last, last = resume_writer(path)
    with w:
        assert t_last == 1.0
        np.testing.assert_array_equal(last["il1"], data[1]["il1"])
        for k in range(2, 4):
            w.append(k, data[k], {n: k for n in SUMMARY})
    with RunFile.open(path) as run:
        np.testing.assert_array_equal(run.time, [0, 1, 2, 3])
        assert run.attrs == make_attrs()
        for k in range(4):
            np.testing.assert_array_equal(run.field("leukocytes", k), data[k]["leukocytes"])
    root = ET.parse(path.with_suffix(".xdmf")).getroot()
    assert len(root.findall("./Domain/Grid/Grid")) == 4


def test_resume_without_frames_refuses(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    make_writer(path, GRIDS["2d"], np.random.default_rng(0)).close()
    with pytest.raises(ValueError, match="no committed frame"):
        resume_writer(path)


def test_read_while_writing(tmp_path: Path) -> None:
    grid = GRIDS["3d"]
    rng = np.random.default_rng(2)
    path = tmp_path / "run.h5"
    frame = {s: np.full(grid.shape, 1.5) for s in SPECIES}
    with make_writer(path, grid, rng) as w:
        w.append(0.0, frame, {n: 0.0 for n in SUMMARY})
        w.append(1.0, frame, {n: 1.0 for n in SUMMARY})
        with RunFile.open(path) as run:
            np.testing.assert_array_equal(run.time, [0.0, 1.0])
            w.append(2.0, {**frame, "tnf": np.full(grid.shape, 7.0)}, {n: 2.0 for n in SUMMARY})
            # The same reader follows the live run.
            np.testing.assert_array_equal(run.time, [0.0, 1.0, 2.0])
            np.testing.assert_array_equal(run.summary["mean_tnf"], [0.0, 1.0, 2.0])
            np.testing.assert_array_equal(run.field("tnf", 2), np.full(grid.shape, 7.0))
            # A reader in another process too (what `synovia info` does during a run).
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from solver.io import RunFile; print(RunFile.open(sys.argv[1]).n_frames)",
                    str(path),
                ],
                env={**os.environ, "PYTHONPATH": str(REPO)},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "3"


def test_the_sidecar_is_written_first_then_at_its_interval_and_on_closing(tmp_path: Path, monkeypatch) -> None:
    """Not rewritten per frame (it lists every frame: per-frame rewrites made output the cost of small
    runs): after the first frame, then once its interval has passed (a clock moved by hand), and when
    the writer closes, also on an interruption."""
    import solver.io._runfile as runfile

    clock = [1000.0]
    monkeypatch.setattr(runfile.time, "monotonic", lambda: clock[0])
    grid, rng = GRIDS["2d"], np.random.default_rng(0)
    path = tmp_path / "run.h5"

    def listed():
        return len(ET.parse(path.with_suffix(".xdmf")).getroot().findall("./Domain/Grid/Grid"))

    def frame(w, t):
        w.append(t, {s: rng.random(grid.shape) for s in SPECIES}, {n: t for n in SUMMARY})

    with pytest.raises(KeyboardInterrupt):
        with make_writer(path, grid, rng, sidecar_every_s=10.0) as w:
            frame(w, 0.0)
            assert listed() == 1
            for t in (1.0, 2.0, 3.0):
                clock[0] += 3.0
                frame(w, t)
            assert listed() == 1  # 9 s since the first write
            clock[0] += 3.0
            frame(w, 4.0)
            assert listed() == 5  # 12 s
            frame(w, 5.0)
            assert listed() == 5
            raise KeyboardInterrupt
    assert listed() == 6


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_xdmf_sidecar(tmp_path: Path, dim: str) -> None:
    grid = GRIDS[dim]
    rng = np.random.default_rng(3)
    path = tmp_path / "run.h5"
    times = [0.0, 0.1, 12.5]
    with make_writer(path, grid, rng, sidecar_every_s=0.0) as w:
        for t in times:
            w.append(t, {s: rng.random(grid.shape) for s in SPECIES}, {n: t for n in SUMMARY})
            # Rewritten after each append (sidecar_every_s = 0), listing only committed frames.
            frames = ET.parse(path.with_suffix(".xdmf")).getroot().findall("./Domain/Grid/Grid")
            assert len(frames) == w.n_frames
    xdmf = path.with_suffix(".xdmf")
    assert w.xdmf_path == xdmf
    assert not list(tmp_path.glob(".*.tmp"))

    spatial = " ".join(map(str, grid.shape))
    # ParaView needs a 3D mesh: a 2D grid is a sheet one cell thick (see solver.io).
    cells = grid.shape if grid.ndim == 3 else (1, *grid.shape)
    mesh_origin = list(grid.origin) if grid.ndim == 3 else [0.0, *grid.origin]
    root = ET.parse(xdmf).getroot()
    series = root.find("./Domain/Grid")
    assert series.get("CollectionType") == "Temporal"
    frames = series.findall("Grid")
    assert [float(g.find("Time").get("Value")) for g in frames] == times
    for k, g in enumerate(frames):
        topology = g.find("Topology")
        assert topology.get("TopologyType") == "3DCoRectMesh"
        assert topology.get("Dimensions") == " ".join(str(n + 1) for n in cells)
        origin, spacing = (list(map(float, d.text.split())) for d in g.findall("Geometry/DataItem"))
        assert origin == mesh_origin
        assert spacing[-grid.ndim :] == list(grid.spacing)
        attributes = {a.get("Name"): a for a in g.findall("Attribute")}
        assert set(attributes) == {*SPECIES, "labels"}
        assert all(a.get("Center") == "Cell" for a in attributes.values())
        label_item = attributes["labels"].find(".//DataItem[@Format='HDF']")
        assert label_item.get("Dimensions") == spatial
        assert label_item.text.strip() == "run.h5:/geometry/labels"
        for s in SPECIES:
            slab = attributes[s].find("DataItem")
            assert slab.get("ItemType") == "HyperSlab"
            assert slab.get("Dimensions") == " ".join(map(str, cells))
            selection, source = slab.findall("DataItem")
            assert selection.get("Dimensions") == f"3 {grid.ndim + 1}"
            start, stride, count = np.array(selection.text.split(), int).reshape(3, grid.ndim + 1)
            assert list(start) == [k] + [0] * grid.ndim
            assert list(stride) == [1] * (grid.ndim + 1)
            assert list(count) == [1, *grid.shape]
            assert source.get("Dimensions") == f"{len(times)} {spatial}"
            assert source.text.strip() == f"run.h5:/fields/{s}"
            assert source.get("Precision") == "4"

    # Standalone: everything read from the file gives the same document.
    text = xdmf.read_text()
    xdmf.unlink()
    assert write_xdmf(path) == xdmf
    assert xdmf.read_text() == text


@pytest.mark.skipif(shutil.which("h5ls") is None, reason="h5ls (Debian hdf5-tools) not installed")
@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_readable_by_hdf5_tools(tmp_path: Path, dim: str) -> None:
    grid = GRIDS[dim]
    rng = np.random.default_rng(4)
    path = tmp_path / "run.h5"
    with make_writer(path, grid, rng) as w:
        for t in range(2):
            w.append(t, {s: np.full(grid.shape, t + 0.5) for s in SPECIES}, {n: t for n in SUMMARY})
    out = subprocess.run(["h5ls", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "/fields/tnf" in out.stdout
    if shutil.which("h5dump"):
        out = subprocess.run(["h5dump", "-d", "/fields/tnf", str(path)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "1.5" in out.stdout


def test_describe(tmp_path: Path) -> None:
    grid = GRIDS["2d"]
    path = tmp_path / "run.h5"
    labels = np.zeros(grid.shape, np.uint8)
    labels[:2] = 1  # 10 bone cells
    labels[2:] = 3  # 20 synovial fluid cells
    with RunWriter(
        path,
        grid=grid,
        labels=labels,
        species=SPECIES,
        summary_names=SUMMARY,
        dtype=np.float32,
        attrs=make_attrs(),
    ) as w:
        for t, v in [(0.0, 1.0), (6.0, 2.0), (24.0, 3.25)]:
            w.append(t, {s: np.full(grid.shape, v) for s in SPECIES}, {"mean_tnf": 10 * v, "cartilage_loss": 0.0123})
    text = describe(path)
    assert "0.1.0" in text and "float32" in text
    assert "6 x 5" in text
    for s in SPECIES:
        assert s in text
    assert "frames: 3" in text
    assert "t = 0 .. 24 h" in text
    assert "mean_tnf = 32.5 pg/mL" in text
    assert "cartilage_loss = 0.0123" in text
    assert "bone" in text and "10 cells" in text
    assert "synovial_fluid" in text and "20 cells" in text
    assert "cartilage " not in text.split("species:")[0].replace("cartilage_loss", "")
    # what the run found comes first; the config only when asked for
    assert text.index("summary at t = 24 h") < text.index("version:") < text.index("tissues:")
    assert make_attrs()["config_toml"].strip() not in text and "synovia info FILE --config prints it" in text
    assert describe(path, config=True).rstrip().endswith(make_attrs()["config_toml"].rstrip())
