"""Locks on a file system without ``flock`` (NFS without a lock manager, Lustre without ``-o flock``): the
fallback to soft lock files, its one warning, a holder named, a stale lock of a dead process removed.

A missing ``flock`` is made by patching ``fcntl.flock`` to fail as such a file system does; the killed
holder is a real process killed with SIGKILL."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import fields._files as files
from fields import LOCKING_ENV, FileBusy, FileLock, SoftLockWarning, WriterLock, lock_holder
from solver.study._study import point_lock, point_running

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """Each test starts as a new process would: no warning given, no file system known to lack flock."""
    monkeypatch.setattr(files, "_warned", False)
    monkeypatch.setattr(files, "_soft_devices", set())
    monkeypatch.delenv(LOCKING_ENV, raising=False)


@pytest.fixture
def no_flock(monkeypatch):
    """``flock`` fails as on NFS without lockd; returns the list of calls it got."""
    calls = []

    def flock(fd, operation):
        calls.append(operation)
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", flock)
    return calls


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_no_flock_falls_back_to_a_soft_lock_that_names_its_holder(tmp_path, no_flock):
    path = tmp_path / "run.h5"
    with pytest.warns(SoftLockWarning, match=r"does not support flock \(ENOLCK") as record:
        first = WriterLock(path)
    assert len(record) == 1 and len(no_flock) == 1
    soft = tmp_path / ".run.h5.lock.soft"
    assert soft.read_text() == f"{socket.gethostname()}:{os.getpid()}\n"
    who = re.escape(f"process {os.getpid()} on host {socket.gethostname()}")
    with pytest.raises(FileBusy, match=f"another process is writing .*{who}") as busy:
        WriterLock(path)
    assert len(no_flock) == 1  # flock is not asked again on a file system known to lack it
    assert "remove" in str(busy.value) and str(soft) in str(busy.value) and busy.value.holder
    assert lock_holder(first.path) is not None
    first.release()
    assert not soft.exists() and lock_holder(first.path) is None
    with WriterLock(path):  # free again
        assert soft.is_file()
    assert not soft.exists()


def test_the_warning_is_given_once_per_process(tmp_path, no_flock):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with FileLock(tmp_path / "a.lock"), FileLock(tmp_path / "b.lock"):
            pass
        with FileLock(tmp_path / "a.lock"):
            pass
        files._soft_devices.clear()  # as if the next lock were on another file system without flock
        with FileLock(tmp_path / "c.lock"):
            pass
    assert [str(w.message).split(":")[0] for w in record if w.category is SoftLockWarning] == [
        f"the file system of '{tmp_path}' does not support flock (ENOLCK"
    ]
    text = str(record[0].message)
    assert "kill -9" in text and "docs/hdf5.md" in text  # what a soft lock means, where to read more


def test_a_stale_soft_lock_of_a_dead_process_on_this_host_is_removed(tmp_path, no_flock):
    soft = tmp_path / "x.lock.soft"
    dead = _dead_pid()
    soft.write_text(f"{socket.gethostname()}:{dead}\n")
    assert lock_holder(tmp_path / "x.lock") is None  # a dead holder holds nothing
    with pytest.warns(SoftLockWarning) as record:
        lock = FileLock(tmp_path / "x.lock")
    assert any(f"removed the stale lock '{soft}' of process {dead}" in str(w.message) for w in record)
    assert soft.read_text() == f"{socket.gethostname()}:{os.getpid()}\n"
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.lock"]  # the (empty) flock file; nothing left aside


def test_a_soft_lock_of_another_host_is_kept_and_its_holder_named(tmp_path, no_flock):
    soft = tmp_path / "x.lock.soft"
    soft.write_text("node-17.cluster:4242\n")
    with pytest.warns(SoftLockWarning), pytest.raises(FileBusy, match=r"process 4242 on host node-17.cluster .*remove '"):
        FileLock(tmp_path / "x.lock")
    assert soft.read_text() == "node-17.cluster:4242\n"
    assert "process 4242 on host node-17.cluster" in lock_holder(tmp_path / "x.lock")
    start = time.monotonic()
    with pytest.raises(FileBusy):  # waits, then gives up
        FileLock(tmp_path / "x.lock", wait=0.3)
    assert time.monotonic() - start >= 0.3


def test_a_soft_lock_of_a_process_killed_with_sigkill(tmp_path, monkeypatch):
    """A real holder, killed: its soft lock stays (no kernel to drop it); the next process on this host removes it."""
    monkeypatch.setenv(LOCKING_ENV, "soft")
    code = "import sys, time; from fields import FileLock; FileLock(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "x.lock")], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.warns(SoftLockWarning), pytest.raises(FileBusy, match=rf"process {proc.pid} on host"):
            FileLock(tmp_path / "x.lock")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert (tmp_path / "x.lock.soft").is_file()  # left behind
    with pytest.warns(SoftLockWarning, match="removed the stale lock"):
        FileLock(tmp_path / "x.lock").release()
    assert not (tmp_path / "x.lock.soft").exists()


def test_points_lock_and_report_running_with_soft_locks(tmp_path, no_flock):
    path = tmp_path / "point_003.h5"
    with contextlib.ExitStack() as stack:
        with pytest.warns(SoftLockWarning):
            assert point_lock(path, stack) is None
        assert point_running(path)
        with contextlib.ExitStack() as other:
            busy = point_lock(path, other)
        assert busy.status == "busy" and f"process {os.getpid()} on host" in busy.message
    assert not point_running(path)
    (tmp_path / ".point_003.lock.soft").write_text(f"{socket.gethostname()}:{_dead_pid()}\n")
    assert not point_running(path)  # killed on this host: not running


def test_locking_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCKING_ENV, "soft")  # flock works here, but soft lock files are asked for
    with pytest.warns(SoftLockWarning, match=f"{LOCKING_ENV}=soft"), FileLock(tmp_path / "x.lock"):
        assert (tmp_path / "x.lock.soft").is_file() and not (tmp_path / "x.lock").exists()
    monkeypatch.setenv(LOCKING_ENV, "sometimes")
    with pytest.raises(ValueError, match=LOCKING_ENV):
        FileLock(tmp_path / "x.lock")


def test_flock_only_and_other_errors_are_not_hidden(tmp_path, monkeypatch, no_flock):
    monkeypatch.setenv(LOCKING_ENV, "flock")
    with pytest.raises(OSError) as err:
        FileLock(tmp_path / "x.lock")
    assert err.value.errno == errno.ENOLCK and not isinstance(err.value, FileBusy)
    monkeypatch.delenv(LOCKING_ENV)

    def flock(fd, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(OSError) as err:  # an I/O error is not a missing flock
        FileLock(tmp_path / "x.lock")
    assert err.value.errno == errno.EIO
    assert not (tmp_path / "x.lock.soft").exists()


def test_flock_is_still_used_where_it_works(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SoftLockWarning)
        with FileLock(tmp_path / "x.lock") as lock:
            assert lock.soft is None and not (tmp_path / "x.lock.soft").exists()
            with open(tmp_path / "x.lock") as fh, pytest.raises(BlockingIOError):
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert lock_holder(tmp_path / "x.lock") == "another process"


def test_a_file_system_without_hard_links_gets_exclusive_creation(tmp_path, no_flock, monkeypatch):
    def link(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", link)
    with pytest.warns(SoftLockWarning), FileLock(tmp_path / "x.lock"):
        assert (tmp_path / "x.lock.soft").read_text() == f"{socket.gethostname()}:{os.getpid()}\n"
        with pytest.raises(FileBusy, match=f"process {os.getpid()} on host"):
            FileLock(tmp_path / "x.lock")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.lock"]
