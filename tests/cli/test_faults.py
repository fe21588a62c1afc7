"""The command under real faults: SIGTERM from a job manager, a second writer, a full disk (a small
tmpfs, where mounting is allowed) and a write HDF5 fails (a file-size limit)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from solver.io import RunFile

REPO = Path(__file__).resolve().parents[2]
#: a small run of many frames, slow enough to be caught mid-run
LONG = """
[run]
t_end_h = 400.0
output_interval_h = 0.5
precision = "float64"
dt_h = 0.002
[geometry]
kind = "box"
ndim = 2
size_mm = [6.0, 6.0]
spacing_mm = 0.25
[initial]
start = "baseline"
"""


def _start(*args, cwd, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "solver.cli", *map(str, args)], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True, **kw
    )


def _wait_for_frames(path: Path, proc: subprocess.Popen, frames: int, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            try:
                with RunFile.open(path) as run:
                    if run.n_frames >= frames:
                        return run.n_frames
            except (OSError, ValueError):
                pass
        time.sleep(0.05)
    raise AssertionError(f"no {frames} frames in {path}: {proc.poll()=}")


def test_sigterm_ends_a_run_with_130_and_a_file_every_reader_opens(tmp_path):
    (tmp_path / "c.toml").write_text(LONG)
    proc = _start("run", "c.toml", "-o", "run.h5", "-q", cwd=tmp_path)
    _wait_for_frames(tmp_path / "run.h5", proc, 3)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "--resume run.h5" in err, err
    with h5py.File(tmp_path / "run.h5", "r") as f:  # a plain open: the file was closed cleanly
        assert len(f["time"]) >= 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", [0.25, 0.6])
def test_a_signal_while_the_command_loads_ends_it_with_130_and_one_line(tmp_path, signum, delay):
    """Through the command's own entry point (synovia_command), whose imports (JAX) take 1-2 s here: a
    signal at any moment of them ends the command as one later does (not in the first tens of milliseconds,
    before the interpreter runs any of its code)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "synovia_command", "info", "none.h5"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    time.sleep(delay)
    proc.send_signal(signum)
    err = proc.communicate(timeout=60)[1]
    if proc.returncode == 2 and "none.h5" in err:
        pytest.skip(f"the command had finished before the signal at {delay} s")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and len(err.strip().splitlines()) == 1, err


def test_a_second_writer_is_refused_while_a_run_writes(tmp_path):
    (tmp_path / "c.toml").write_text(LONG)
    proc = _start("run", "c.toml", "-o", "run.h5", "-q", cwd=tmp_path)
    try:
        _wait_for_frames(tmp_path / "run.h5", proc, 2)
        second = subprocess.run(
            [sys.executable, "-m", "solver.cli", "run", "--resume", "run.h5", "-q"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert "another process is writing 'run.h5'" in second.stderr and "Traceback" not in second.stderr
        assert proc.poll() is None  # the first run goes on
        n = _wait_for_frames(tmp_path / "run.h5", proc, 2)
        with RunFile.open(tmp_path / "run.h5") as run:
            assert run.n_frames >= n
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, where this machine lets us mount one (root in a container that allows it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_stops_the_run_cleanly_keeping_its_frames(tmp_path, small_disk):
    (tmp_path / "c.toml").write_text(
        LONG.replace("spacing_mm = 0.25", "spacing_mm = 0.05").replace("dt_h = 0.002", "dt_h = 0.0")
    )  # 120 x 120 cells
    proc = _start("run", str(tmp_path / "c.toml"), "-o", "run.h5", "-q", cwd=small_disk)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "MiB free" in err and "synovia run --resume run.h5" in err, err
    with h5py.File(small_disk / "run.h5", "r") as f:  # closed cleanly: any reader opens it
        assert len(f["time"]) >= 2
    assert not list(small_disk.glob(".*.tmp")), list(small_disk.iterdir())


def test_a_write_hdf5_fails_exits_1_and_the_file_is_repairable(tmp_path):
    (tmp_path / "c.toml").write_text(LONG.replace("spacing_mm = 0.25", "spacing_mm = 0.05").replace("dt_h = 0.002", "dt_h = 0.0"))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    proc = _start("run", "c.toml", "-o", "run.h5", "-q", cwd=tmp_path, preexec_fn=limit_file_size)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 1, err[-2000:]
    assert "synovia: error: writing 'run.h5' failed: File too large" in err, err[-2000:]
    # h5py's own reports of the objects it could not release after the failed write are left out
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2, err[-2000:]
    done = subprocess.run(
        [sys.executable, "-m", "solver.cli", "repair", "run.h5"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frames = int(done.stderr.split("it holds ")[1].split()[0])
    assert frames >= 2
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert len(f["time"]) == frames
