"""Run files under faults: killed writers, a second writer, planted symlinks, truncated and foreign
files, a full disk. Each fault is made for real (a killed process, an flock, a file-size limit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fields import FileBusy, Grid, WriterLock, atomic_write_text, check_size, hdf5_problem, temporary_path
from solver.io import NotARunFile, RunFile, repair, resume_writer

from .test_runfile import SPECIES, SUMMARY, make_writer

REPO = Path(__file__).resolve().parents[2]
GRID = Grid((6, 5), (0.5, 0.5))


def _frame(rng) -> tuple[dict, dict]:
    return {s: rng.random(GRID.shape) for s in SPECIES}, {s: float(rng.random()) for s in SUMMARY}


def _killed_writer(path: Path, frames: int) -> None:
    """A process that writes ``frames`` frames and dies without closing the file (``kill -9``)."""
    code = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from tests.io.test_runfile import make_writer, SPECIES, SUMMARY
        from fields import Grid
        rng = np.random.default_rng(0)
        w = make_writer(__import__("pathlib").Path({str(path)!r}), Grid((6, 5), (0.5, 0.5)), rng)
        for k in range({frames}):
            w.append(float(k), {{s: rng.random((6, 5)) for s in SPECIES}}, {{s: float(rng.random()) for s in SUMMARY}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_writers_file_is_repaired_in_place_keeping_every_frame(tmp_path):
    path = tmp_path / "run.h5"
    _killed_writer(path, 4)
    with pytest.raises(OSError):  # HDF5 still marks it as open for writing
        h5py.File(path, "r").close()
    with RunFile.open(path) as run:  # SWMR read works meanwhile
        before = [run.fields(k) for k in range(run.n_frames)]
        times = run.time
    assert repair(path) == 4
    with h5py.File(path, "r") as f:  # a plain open, as h5dump and ParaView do
        assert len(f["time"]) == 4
        np.testing.assert_array_equal(f["time"][()], times)
        for k, fields in enumerate(before):
            for s in SPECIES:
                np.testing.assert_array_equal(f["fields"][s][k], fields[s])
    assert path.with_suffix(".xdmf").is_file()
    assert repair(path) == 4  # a sound file is left as it is
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(not __import__("shutil").which("h5dump"), reason="needs h5dump (hdf5-tools)")
def test_h5dump_reads_a_closed_run_and_a_repaired_one(tmp_path):
    path = tmp_path / "run.h5"
    _killed_writer(path, 2)
    assert subprocess.run(["h5dump", "-H", str(path)], capture_output=True).returncode != 0
    repair(path)
    assert subprocess.run(["h5dump", "-H", str(path)], capture_output=True).returncode == 0


def test_a_second_writer_is_refused_while_the_first_holds_the_file(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "run.h5"
    w = make_writer(path, GRID, rng)
    w.append(0.0, *_frame(rng))
    with pytest.raises(FileBusy, match="another process is writing"):
        resume_writer(path)
    with pytest.raises(FileBusy):
        repair(path)
    with pytest.raises(FileBusy):
        make_writer(path, GRID, rng, overwrite=True)
    w.append(1.0, *_frame(rng))  # the first writer goes on, untouched
    w.close()
    again, t, _ = resume_writer(path)  # and once it is done, the file is free
    assert t == 1.0
    again.close()


def test_the_lock_dies_with_its_process(tmp_path):
    path = tmp_path / "run.h5"
    _killed_writer(path, 2)
    writer, t, _ = resume_writer(path)  # the killed process's lock went with it
    assert t == 1.0 and writer.n_frames == 2
    writer.close()


def test_planted_symlinks_are_never_followed(tmp_path):
    """Old temporary names were predictable; a link planted under any such name must not be written through."""
    rng = np.random.default_rng(2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".run.xdmf.tmp", ".run.h5.tmp", "run.h5.tmp", ".run.h5.resume.tmp", ".run.h5.lock.tmp"):
        (tmp_path / name).symlink_to(victim)
    path = tmp_path / "run.h5"
    w = make_writer(path, GRID, rng)
    w.append(0.0, *_frame(rng))
    w.close()
    writer, _, _ = resume_writer(path)
    writer.append(1.0, *_frame(rng))
    writer.close()
    assert victim.read_text() == "precious"
    tmp = temporary_path(path)
    assert tmp.name.startswith(".run.h5.") and tmp.stat().st_size == 0 and not tmp.is_symlink()
    tmp.unlink()
    (tmp_path / ".run.h5.lock").unlink()
    (tmp_path / ".run.h5.lock").symlink_to(victim)
    with pytest.raises(OSError):  # the lock file itself is opened with O_NOFOLLOW
        WriterLock(path)
    assert victim.read_text() == "precious"


def test_a_run_file_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """Interrupted while its layout is made, a new run leaves no file under its name (a rerun is not blocked)."""
    import solver.io._runfile as runfile

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runfile, "_create_layout", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_writer(tmp_path / "run.h5", GRID, np.random.default_rng(3))
    assert not (tmp_path / "run.h5").exists()
    assert [p.name for p in tmp_path.iterdir()] in ([], [".run.h5.lock"])


def test_truncated_and_foreign_files_are_named_at_once(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "run.h5"
    w = make_writer(path, GRID, rng)
    for k in range(3):
        w.append(float(k), *_frame(rng))
    w.close()
    assert hdf5_problem(path) is None
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated" in hdf5_problem(cut)
    start = time.perf_counter()
    with pytest.raises(NotARunFile, match="truncated"):
        RunFile.open(cut)
    assert time.perf_counter() - start < 5  # SWMR read of this file retried for minutes
    (tmp_path / "text.h5").write_text("not hdf5")
    assert "not an HDF5 file" in hdf5_problem(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(NotARunFile, match="not a synovia run file"):
        RunFile.open(tmp_path / "other.h5")
    with h5py.File(tmp_path / "old.h5", "w", libver="earliest") as f:  # superblock version 0
        f["x"] = np.zeros(10000)
    old = (tmp_path / "old.h5").read_bytes()
    assert hdf5_problem(tmp_path / "old.h5") is None
    (tmp_path / "old.h5").write_bytes(old[:5000])
    assert "truncated" in hdf5_problem(tmp_path / "old.h5")


def test_a_reader_polling_a_live_run_never_sees_it_truncated(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "run.h5"
    w = make_writer(path, Grid((40, 50), (0.1, 0.1)), rng)
    seen = 0
    for k in range(60):
        w.append(float(k), {s: rng.random((40, 50)) for s in SPECIES}, {s: 0.0 for s in SUMMARY})
        assert hdf5_problem(path) is None, f"after frame {k}"
        with RunFile.open(path) as run:
            seen = run.n_frames
    w.close()
    assert seen == 60


def test_size_checks_come_before_reading():
    check_size("a", (1000, 1000), 8, 8 * 10**6)
    with pytest.raises(ValueError, match=r"shape \(1000, 1001\)"):
        check_size("a", (1000, 1001), 8, 8 * 10**6)


def test_atomic_text_leaves_the_old_file_on_a_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
