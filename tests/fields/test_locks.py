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
    """Each test starts as a new process would: no warning given."""
    monkeypatch.setattr(files, "_warned", False)
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


def _me() -> str:
    """The first line of this process's soft locks (all that older synovia reads)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _first_line(soft: Path) -> str:
    return soft.read_text().splitlines()[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_no_flock_falls_back_to_a_soft_lock_that_names_its_holder(tmp_path, no_flock):
    path = tmp_path / "run.h5"
    with pytest.warns(SoftLockWarning, match=r"does not support flock \(ENOLCK") as record:
        first = WriterLock(path)
    assert len(record) == 1 and len(no_flock) == 2  # asked again once the soft lock is taken
    soft = tmp_path / ".run.h5.lock.soft"
    assert _first_line(soft) == _me()
    who = re.escape(f"process {os.getpid()} on host {socket.gethostname()}")
    with pytest.raises(FileBusy, match=f"another process is writing .*{who}") as busy:
        WriterLock(path)
    assert len(no_flock) == 3  # each lock asks flock first: an ENOLCK may pass
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
    assert _first_line(soft) == _me()
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
        assert (tmp_path / "x.lock.soft").is_file()
        with open(tmp_path / "x.lock") as fh, pytest.raises(BlockingIOError):  # the flock too, where it works
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
        assert _first_line(tmp_path / "x.lock.soft") == _me()
        with pytest.raises(FileBusy, match=f"process {os.getpid()} on host"):
            FileLock(tmp_path / "x.lock")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.lock"]


# Mixed lock kinds: a process whose flock failed (NFS's ENOLCK may pass) or that uses SYNOVIA_LOCKING=soft,
# and one holding the flock, see each other.


def test_a_soft_lock_is_refused_while_another_process_holds_the_flock(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCKING_ENV, "soft")
    (tmp_path / "x.lock").touch()
    with open(tmp_path / "x.lock") as fh:  # another open file: another holder, as far as flock goes
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.warns(SoftLockWarning), pytest.raises(FileBusy):
            FileLock(tmp_path / "x.lock")
        assert not (tmp_path / "x.lock.soft").exists()
    with FileLock(tmp_path / "x.lock"):  # free again
        assert (tmp_path / "x.lock.soft").is_file()


def test_a_passing_enolck_does_not_let_a_second_process_past_an_flock_holder(tmp_path, monkeypatch):
    real = fcntl.flock
    failures = iter([True])  # the first flock fails as NFS's does when its lock manager is slow to answer

    def flock(fd, operation):
        if next(failures, False):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real(fd, operation)

    (tmp_path / "point_003.lock").touch()
    with open(tmp_path / "point_003.lock") as fh:  # worker A holds the flock
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        monkeypatch.setattr(fcntl, "flock", flock)
        with pytest.warns(SoftLockWarning), pytest.raises(FileBusy):  # worker B
            FileLock(tmp_path / "point_003.lock")
        assert not (tmp_path / "point_003.lock.soft").exists()
    with FileLock(tmp_path / "point_003.lock") as lock:  # no flock failure remembered: flock, not a soft lock
        assert lock.soft is None and not (tmp_path / "point_003.lock.soft").exists()


def test_the_flock_is_refused_while_a_live_soft_lock_exists(tmp_path):
    soft = tmp_path / "x.lock.soft"
    soft.write_text("node-17.cluster:4242\n")  # a process whose flock failed, on another node
    with warnings.catch_warnings():
        warnings.simplefilter("error", SoftLockWarning)
        with pytest.raises(FileBusy, match=r"held by process 4242 on host node-17.cluster .*remove '"):
            FileLock(tmp_path / "x.lock")
        (tmp_path / ".run.h5.lock.soft").write_text("node-17.cluster:4242\n")
        with pytest.raises(FileBusy, match=r"another process is writing .*process 4242 on host node-17.cluster"):
            WriterLock(tmp_path / "run.h5")
    assert soft.read_text() == "node-17.cluster:4242\n"
    with open(tmp_path / "x.lock") as fh:  # refused: the flock taken to look was let go
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    dead = _dead_pid()
    soft.write_text(f"{socket.gethostname()}:{dead}\n")  # stale: removed, as a soft lock would
    with pytest.warns(SoftLockWarning, match=f"removed the stale lock '{soft}' of process {dead}"):
        with FileLock(tmp_path / "x.lock") as lock:
            assert lock.soft is None and not soft.exists()


# A release removes its own soft lock only; a stale lock's removal removes only the lock judged stale.


def test_a_release_leaves_another_process_s_lock_alone(tmp_path, no_flock):
    with pytest.warns(SoftLockWarning):
        lock = FileLock(tmp_path / "x.lock")
    soft = tmp_path / "x.lock.soft"
    soft.unlink()  # removed by hand (its process was thought gone) ...
    soft.write_text("node-17.cluster:4242\n")  # ... and taken by another process
    lock.release()
    assert soft.read_text() == "node-17.cluster:4242\n"


def test_a_release_finds_its_lock_set_aside_by_a_stale_lock_removal(tmp_path, no_flock):
    with pytest.warns(SoftLockWarning):
        lock = FileLock(tmp_path / "x.lock")
    soft = tmp_path / "x.lock.soft"
    aside = tmp_path / "x.lock.soft.stale.otherhost.77.0123abcd"
    os.rename(soft, aside)  # another process, removing a stale lock, renamed this one aside to read it again
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.lock"]  # nothing for that process to put back


def test_a_stale_lock_removal_never_removes_a_live_holder_s_lock(tmp_path, no_flock, monkeypatch):
    """Between judging a lock stale and renaming it aside, the stale lock went (another process removed it)
    and a live holder took the lock; before it is put back, a third process takes the lock too."""
    soft = tmp_path / "x.lock.soft"
    soft.write_text(f"{socket.gethostname()}:{_dead_pid()}\n")
    live, third = "node-17.cluster:4242\n", "node-18.cluster:99\n"
    rename, link = os.rename, os.link

    def racing_rename(src, dst):
        if Path(src) == soft and ".stale." in str(dst):
            soft.unlink()
            soft.write_text(live)
        return rename(src, dst)

    def racing_link(src, dst):
        if Path(dst) == soft and ".stale." in str(src) and not soft.exists():
            soft.write_text(third)
        return link(src, dst)

    monkeypatch.setattr(os, "rename", racing_rename)
    monkeypatch.setattr(os, "link", racing_link)
    with pytest.warns(SoftLockWarning), pytest.raises(FileBusy, match="node-18.cluster"):
        FileLock(tmp_path / "x.lock")
    assert soft.read_text() == third  # the third process's lock kept
    kept = [p for p in tmp_path.iterdir() if ".stale." in p.name]
    assert [p.read_text() for p in kept] == [live]  # and the live holder's: set aside, never removed


def test_a_live_holder_s_lock_renamed_aside_is_put_back(tmp_path, no_flock, monkeypatch):
    soft = tmp_path / "x.lock.soft"
    soft.write_text(f"{socket.gethostname()}:{_dead_pid()}\n")
    live = f"{socket.gethostname()}:{os.getppid()}\nnonce:1234\n"  # a live process of this host
    rename = os.rename

    def racing_rename(src, dst):
        if Path(src) == soft and ".stale." in str(dst):
            soft.unlink()
            soft.write_text(live)
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", racing_rename)
    with pytest.warns(SoftLockWarning), pytest.raises(FileBusy, match=f"process {os.getppid()} on host"):
        FileLock(tmp_path / "x.lock")
    assert soft.read_text() == live
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.lock", "x.lock.soft"]


# PID namespaces: containers sharing a host name (--network host) number their processes apart.


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="no /proc/self/ns/pid")
def test_a_soft_lock_of_another_pid_namespace_is_not_judged_by_its_pid(tmp_path, no_flock):
    soft = tmp_path / "x.lock.soft"
    dead = _dead_pid()  # here; in the holder's container, its pid may well run
    soft.write_text(f"{socket.gethostname()}:{dead}\npidns:1\n")
    with pytest.warns(SoftLockWarning), pytest.raises(FileBusy, match=rf"process {dead} on host .* in another PID namespace"):
        FileLock(tmp_path / "x.lock")
    assert lock_holder(tmp_path / "x.lock") is not None
    ns = os.stat("/proc/self/ns/pid").st_ino
    soft.write_text(f"{socket.gethostname()}:{dead}\npidns:{ns}\n")  # this namespace: stale
    assert lock_holder(tmp_path / "x.lock") is None
    with pytest.warns(SoftLockWarning, match="removed the stale lock"), FileLock(tmp_path / "x.lock"):
        assert f"pidns:{ns}\n" in soft.read_text()
