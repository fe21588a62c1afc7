"""Files read and written safely: HDF5 files checked before HDF5 reads them, arrays' sizes checked
before they are read, temporary files that nobody can predict or redirect, whole-file replacement,
and one writer per output file.

Why each exists:

- A truncated HDF5 file opened with SWMR read makes HDF5 retry its metadata reads past the end of
  the file for as long as it likes (minutes); a plain open fails at once. :func:`hdf5_problem`
  compares the superblock's end-of-file address with the file's size before anything opens it.
- A tiny file can declare a huge dataset; :func:`check_size` refuses it from its shape alone.
- ``.name.tmp`` in a shared folder can be planted as a symlink to a victim's file; the temporary
  files here are made by :func:`tempfile.mkstemp` (random name, ``O_EXCL``: never follows a link).
- Two processes appending to one run file corrupt it or lose one's frames; :class:`WriterLock` is
  an ``flock`` on a lock file beside the output, released by the kernel when its holder dies.
  Where the file system has no ``flock`` (NFS without a lock manager, Lustre without ``-o flock``)
  :class:`FileLock` falls back to a soft lock: a file created exclusively that names its holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, Self

__all__ = [
    "LOCKING_ENV",
    "FileBusy",
    "FileLock",
    "SoftLockWarning",
    "WriterLock",
    "atomic_write_text",
    "check_size",
    "hdf5_problem",
    "hdf5_shortfall",
    "host_memory_bytes",
    "lock_holder",
    "size_text",
    "temporary_path",
]

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: where HDF5 looks for the superblock: 0, then each power of two from 512 (a user block before it)
_SUPERBLOCK_OFFSETS = (0, *(512 << k for k in range(23)))


class FileBusy(OSError):
    """Another process holds the file's writer lock (``holder``: who, where a soft lock says)."""

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def hdf5_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as an HDF5 file, in words (None if it can be opened).

    Not a file, not readable, not HDF5 (no signature), or truncated: shorter than the end-of-file
    address its superblock records (a copy cut short, a full disk); checked from the first bytes
    only, without HDF5.
    """
    path = Path(path)
    if not path.is_file():
        return "is a folder, not a file" if path.is_dir() else "does not exist"
    try:
        found, offset, end, size = _superblock(path)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not found:
        return "is not an HDF5 file (no HDF5 signature)"
    if end is None:
        return f"is truncated ({size} bytes: its HDF5 superblock is cut off)" if size < offset + 48 else None
    if offset + end > size:
        return f"is truncated: HDF5 says it ends at byte {offset + end}, the file has {size} (cut short, or the disk filled)"
    return None


def hdf5_shortfall(path: str | os.PathLike[str]) -> int:
    """Bytes an HDF5 file lacks: its superblock's end-of-file address less its size (0 if none)."""
    found, offset, end, size = _superblock(path)
    return max(0, offset + end - size) if found and end is not None else 0


def _superblock(path: str | os.PathLike[str]) -> tuple[bool, int, int | None, int]:
    """(signature found, its offset, the superblock's end-of-file address or None where unknown or
    undefined, the file's size), from the first bytes of ``path``."""
    with Path(path).open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        for offset in _SUPERBLOCK_OFFSETS:
            if offset + 8 > size:
                break
            fh.seek(offset)
            if fh.read(8) == _SIGNATURE:
                return True, offset, _end_address(fh, offset), size
    return False, 0, None, size


def _end_address(fh: BinaryIO, offset: int) -> int | None:
    """The end-of-file address in the superblock at ``offset`` (None: unknown or undefined)."""
    head = fh.read(40)
    if len(head) < 8 or head[0] not in (0, 1, 2, 3):
        return None
    o_size = head[5] if head[0] in (0, 1) else head[1]
    if o_size not in (2, 4, 8):
        return None
    at = 16 + (4 if head[0] == 1 else 0) + 2 * o_size if head[0] in (0, 1) else 4 + 2 * o_size
    fh.seek(offset + 8 + at)
    raw = fh.read(o_size)
    if len(raw) < o_size:
        return None
    end = struct.unpack("<" + {2: "H", 4: "I", 8: "Q"}[o_size], raw)[0]
    return None if end == (1 << (8 * o_size)) - 1 else end


def check_size(what: str, shape: tuple[int, ...], itemsize: int, limit_bytes: int) -> None:
    """Refuse (ValueError) an array of ``shape`` x ``itemsize`` bytes larger than ``limit_bytes``,
    before it is read or allocated; ``what`` names it in the message."""
    need = itemsize
    for n in shape:
        need *= int(n)
    if need > limit_bytes:
        raise ValueError(
            f"{what} has shape {tuple(int(n) for n in shape)}: {size_text(need)} to read, more than the "
            f"{size_text(limit_bytes)} this machine has free"
        )


def host_memory_bytes() -> int:
    """The host memory this process may use: the least of the RAM, the cgroup's limit and what is available now."""
    sizes = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            sizes.append(int(Path(path).read_text().split()[0]))
        except (OSError, ValueError, IndexError):  # absent, or "max"
            pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                sizes.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(sizes)


def size_text(n: float) -> str:
    """A byte count for people: KiB, MiB, GiB or TiB, three significant figures."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 2**10:.3g} KiB"


def temporary_path(target: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A new, empty file beside ``target`` with an unpredictable name, created exclusively
    (``mkstemp``: it never follows a planted symlink); the caller replaces or removes it."""
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def _replacing(target: Path, suffix: str) -> Iterator[Path]:
    tmp = temporary_path(target, suffix)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename: readers see the old
    file or the new one, never part of one; on a failure (a full disk) nothing is left behind."""
    path = Path(path)
    with _replacing(path, ".tmp") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


#: ``SYNOVIA_LOCKING``: ``auto`` (the default: ``flock``, or a soft lock where the file system has no
#: ``flock``), ``flock`` (never a soft lock: an error where ``flock`` fails) or ``soft`` (always a soft lock,
#: for a file system whose ``flock`` is node-local while processes on several nodes share the files)
LOCKING_ENV = "SYNOVIA_LOCKING"
#: what ``flock`` answers on a file system without it: NFS without a lock manager (ENOLCK), Lustre
#: mounted without ``flock``/``localflock`` (ENOSYS), some FUSE and SMB mounts (EOPNOTSUPP), the kernel's
#: internal ENOTSUPP (524) that some network file systems leak
_NO_FLOCK = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, 524})
_BUSY = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})
#: what os.link answers where the file system has no hard links
_NO_LINK = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS})
_DOCS = "docs/hdf5.md, 'Shared file systems'"
_warned = False  # the soft-lock warning is given once per process


class SoftLockWarning(UserWarning):
    """Locks fell back to soft lock files (no ``flock`` on the file system), or a stale one was removed."""


def _locking_mode() -> str:
    mode = os.environ.get(LOCKING_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "flock", "soft"):
        raise ValueError(f"{LOCKING_ENV}={mode!r}: expected auto, flock or soft")
    return mode


def soft_lock_path(lock_path: str | os.PathLike[str]) -> Path:
    """The soft lock file that stands for the ``flock`` on ``lock_path``: ``NAME.soft`` beside it."""
    lock_path = Path(lock_path)
    return lock_path.with_name(lock_path.name + ".soft")


def stale_hint(soft: Path) -> str:
    """What to do about a soft lock that may be stale."""
    return f"if that process no longer runs (killed, or its node went down), remove '{soft}' (see {_DOCS})"


def _pid_namespace() -> str | None:
    """This process's PID namespace (the inode of ``/proc/self/ns/pid``), None where there is no telling:
    containers sharing a host name (``--network host``) number their processes apart, so a pid is
    looked up only in the namespace it was written in."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


def _lock_text() -> str:
    """A new soft lock's text: ``host:pid`` (all that older synovia reads), this process's PID namespace,
    and a nonce that tells this lock from any other (a release removes only its own)."""
    ns = _pid_namespace()
    return f"{socket.gethostname()}:{os.getpid()}\n" + (f"pidns:{ns}\n" if ns else "") + f"nonce:{os.urandom(8).hex()}\n"


class _Holder(NamedTuple):
    """A soft lock as read: its holder's host, pid (None: unreadable), PID namespace (None: not written,
    an older synovia's lock), the holder in words, and the file's whole text."""

    host: str
    pid: int | None
    ns: str | None
    words: str
    text: str

    def stale(self) -> bool:
        """Its holder ran on this host, in this PID namespace (or the lock does not say), and has ended."""
        if self.host != socket.gethostname() or self.pid is None or self.pid == os.getpid():
            return False
        if self.ns is not None and self.ns != _pid_namespace():
            return False  # another container's process: its pid means nothing here
        return not _alive(self.pid)


def _holder(soft: Path) -> _Holder:
    """The holder of the soft lock ``soft``, from its ``host:pid`` line (FileNotFoundError if there is none)."""
    try:
        fd = os.open(soft, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            text = os.read(fd, 4096).decode("utf-8", "replace")
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.fstat(fd).st_mtime))
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise
    except OSError:
        return _Holder("", None, None, "an unknown process", "")
    first, *rest = text.strip().splitlines() or [""]
    host, _, pid = first.rpartition(":")
    if not host or not pid.isdigit():
        return _Holder("", None, None, f"an unknown process (since {since}; the file holds no host:pid)", text)
    ns = next((line[6:].strip() for line in rest if line.startswith("pidns:")), None) or None
    where = f"on host {host}" if ns is None or ns == _pid_namespace() else f"on host {host} in another PID namespace ({ns})"
    return _Holder(host, int(pid), ns, f"process {pid} {where} (since {since})", text)


def _create_exclusive(soft: Path, text: str) -> bool:
    """Create ``soft`` holding ``text`` if it does not exist (False if it does), atomically and whole: a
    unique file is written, then hard-linked to ``soft`` (``O_EXCL`` alone is not atomic on old NFS, and
    a file created empty could be read before its text is in). Where the file system has no hard links,
    ``O_EXCL``."""
    fd, tmp = tempfile.mkstemp(prefix=f"{soft.name}.", suffix=".tmp", dir=soft.parent)
    try:
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, soft)
        except OSError as err:
            if os.stat(tmp).st_nlink == 2:  # linked, and the reply lost (NFS): the lock is ours
                return True
            if isinstance(err, FileExistsError):
                return False
            if err.errno not in _NO_LINK:
                raise
            try:
                fd = os.open(soft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _aside_name(soft: Path) -> Path:
    return soft.with_name(f"{soft.name}.stale.{socket.gethostname()}.{os.getpid()}.{os.urandom(4).hex()}")


def _remove_stale(soft: Path, judged: _Holder) -> None:
    """Remove ``soft`` if it is still the lock ``judged`` stale (its whole text: the nonce tells it apart).

    It is renamed aside first, so that two processes finding it stale at once do not both remove it: the
    second might remove a new lock taken in between. What was renamed aside is read again and removed only
    if it is the lock judged stale; another (a live holder's, taken after the stale one went) is put back
    where no lock has been taken since, and else left aside (never removed: its holder still runs)."""
    aside = _aside_name(soft)
    try:
        os.rename(soft, aside)
    except FileNotFoundError:
        return  # someone else removed it: try again
    try:
        now = _holder(aside)
    except FileNotFoundError:
        return  # its holder released it (a release looks for its lock set aside)
    if now.text == judged.text:
        aside.unlink(missing_ok=True)
        warnings.warn(
            f"removed the stale lock '{soft}' of process {judged.pid} on this host ({judged.host}), which no longer runs",
            SoftLockWarning,
            stacklevel=4,
        )
        return
    try:  # not the lock judged stale: put it back, unless a lock was taken meanwhile
        os.link(aside, soft)
    except FileNotFoundError:
        return  # its holder released it meanwhile
    except OSError as err:
        if isinstance(err, FileExistsError) or err.errno not in _NO_LINK or not _create_exclusive(soft, now.text):
            warnings.warn(
                f"the lock '{soft}' of {now.words} was replaced by another process's while a stale lock was being "
                f"removed: it is left as '{aside}', and both processes may be writing",
                SoftLockWarning,
                stacklevel=4,
            )
            return
    aside.unlink(missing_ok=True)


def _soft_holder(soft: Path) -> str | None:
    """Who holds the soft lock ``soft`` (None: nobody), a stale one removed on the way."""
    for _ in range(10):
        try:
            holder = _holder(soft)
        except FileNotFoundError:
            return None
        if not holder.stale():
            return holder.words
        _remove_stale(soft, holder)
    return f"processes that keep taking and releasing '{soft.name}'"


def _warn_soft(lock_path: Path, err: OSError | None) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    why = (
        f"the file system of '{lock_path.parent}' does not support flock ({errno.errorcode.get(err.errno or -1, err.errno)}: "
        f"{err.strerror})"
        if err is not None
        else f"{LOCKING_ENV}=soft"
    )
    warnings.warn(
        f"{why}: synovia's locks there are soft lock files ('NAME.lock.soft', holding the holder's host:pid). A process "
        "killed with kill -9, or on a node that crashed, leaves its soft lock behind; one of a process on this host "
        "that no longer runs is removed by the next process, any other stays until you remove it (after checking "
        f"that its process no longer runs: the file says which). See {_DOCS}.",
        SoftLockWarning,
        stacklevel=4,
    )


class FileLock:
    """An exclusive lock on the lock file ``path``: an ``flock`` on it, or, where the file system has no
    ``flock`` (or ``SYNOVIA_LOCKING=soft``), a soft lock: ``path.soft`` created exclusively (``O_EXCL``),
    holding ``host:pid``, removed on release.

    The two kinds see each other: a process that takes the ``flock`` is refused while a live soft lock
    exists (taken by a process whose ``flock`` failed, perhaps only for a moment, or by one with
    ``SYNOVIA_LOCKING=soft``), and one that takes a soft lock also takes the ``flock`` where it works (and is
    refused while another process holds it). Each lock tries ``flock`` first: a failure is not remembered.

    The kernel drops an ``flock`` when its holder's process ends, however it ends; a soft lock outlives a
    killed process. A soft lock whose process ran on this host (in this PID namespace) and no longer runs
    is removed (with a :class:`SoftLockWarning`); any other makes :class:`FileBusy` name its holder.
    ``wait`` seconds (0: not at all; None: for ever) are waited for a lock held by another process before
    :class:`FileBusy`. The ``flock`` file (empty) is left in place: removing it would let two processes
    lock two files.
    """

    def __init__(self, path: str | os.PathLike[str], *, wait: float | None = 0.0) -> None:
        self.path = Path(path)
        self.soft: Path | None = None  # the soft lock file, while one is held
        self._text = ""  # the soft lock's text, while one is held: a release removes only this
        self._fd: int | None = None
        mode = _locking_mode()
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            taken, who = self._try(mode)
            if taken:
                return
            if deadline is not None and time.monotonic() >= deadline:
                text = f"'{self.path}' is held by {who or 'another process'}"
                raise FileBusy(text + (f"; {stale_hint(self.soft_path)}" if who else ""), holder=who)
            time.sleep(0.1)

    @property
    def soft_path(self) -> Path:
        return soft_lock_path(self.path)

    def _flock(self) -> tuple[int | None, OSError | None]:
        """An ``flock`` on ``path``: (its fd, None); (None, None) held by another process; (None, the error)
        where the file system has none. Any other error is raised."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in _BUSY:
                return None, None
            if err.errno not in _NO_FLOCK:
                raise
            return None, err
        return fd, None

    def _try(self, mode: str) -> tuple[bool, str | None]:
        """Take the lock: (True, None); or (False, who holds it: None where an ``flock`` does not say)."""
        if mode == "soft":
            _warn_soft(self.path, None)
        fd, err = self._flock()
        if fd is None and err is None:
            return False, self._named()
        if err is not None:
            if mode == "flock":
                raise err
            if mode == "auto":
                _warn_soft(self.path, err)
        try:
            if fd is not None and mode != "soft":
                # a soft lock of a process whose flock failed (NFS's ENOLCK may pass) or that was told to use them
                who = _soft_holder(self.soft_path)
                if who is not None:
                    return False, who
            else:
                taken, who = self._try_soft()
                if not taken:
                    return False, who
                if fd is None:  # flock failed, perhaps for a moment only: a holder of it is not seen; ask again
                    fd, err = self._flock()
                    if fd is None and err is None:
                        self._release_soft()
                        return False, None
            self._fd, fd = fd, None
            return True, None
        except BaseException:
            self._release_soft()
            raise
        finally:
            if fd is not None:
                os.close(fd)

    def _named(self) -> str | None:
        """The holder of the ``flock``, where it holds a soft lock too (``SYNOVIA_LOCKING=soft``), else None."""
        with contextlib.suppress(FileNotFoundError):
            holder = _holder(self.soft_path)
            if holder.pid is not None and not holder.stale():
                return holder.words
        return None

    def _try_soft(self) -> tuple[bool, str | None]:
        soft = self.soft_path
        text = _lock_text()
        for _ in range(10):
            if _create_exclusive(soft, text):
                self.soft, self._text = soft, text
                return True, None
            who = _soft_holder(soft)
            if who is not None:
                return False, who
        return False, f"processes that keep taking and releasing '{soft.name}'"

    def _release_soft(self) -> None:
        """Remove this lock's soft lock file, and no other: it is checked to hold this lock's text. A process
        removing a stale lock may have renamed it aside for a moment (and may put it back): it is looked for
        there, and here once more."""
        soft, self.soft = self.soft, None
        if soft is None:
            return
        if not self._unlink_own(soft):
            with contextlib.suppress(OSError):
                for name in os.listdir(soft.parent):
                    if name.startswith(f"{soft.name}.stale."):
                        self._unlink_own(soft.with_name(name))
            self._unlink_own(soft)

    def _unlink_own(self, path: Path) -> bool:
        try:
            if _holder(path).text != self._text:
                return False  # not this lock's: another process's, taken after this one's was removed
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def release(self) -> None:
        """Let another process in. Safe to call twice."""
        self._release_soft()  # first: a process that takes the flock next finds no soft lock
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(path: str | os.PathLike[str]) -> str | None:
    """Who holds the lock file ``path`` (a :class:`FileLock`), in words, or None if nobody does: a test that
    takes nothing (a soft lock of a process of this host that no longer runs counts as not held)."""
    path = Path(path)
    soft = soft_lock_path(path)
    try:
        holder = _holder(soft)
    except FileNotFoundError:
        pass
    else:
        if not holder.stale():
            return holder.words
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return "another process" if err.errno in _BUSY else None
    finally:
        os.close(fd)  # closing releases a lock taken here
    return None


class WriterLock(FileLock):
    """An exclusive lock on writing ``path``: a :class:`FileLock` on ``.NAME.lock`` beside it.

    Taken without waiting: a second writer gets :class:`FileBusy` at once. The kernel drops an ``flock``
    when the holder's process ends however it ends (``kill -9`` included), so it is never stale; a soft
    lock (a file system without ``flock``) may be: see :class:`FileLock`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        try:
            super().__init__(path.with_name(f".{path.name}.lock"))
        except FileBusy as err:
            lock = path.with_name(f".{path.name}.lock")
            if err.holder is None:
                text = f"another process is writing '{path}' (it holds '{lock.name}'); wait for it to end"
            else:
                soft = soft_lock_path(lock)
                text = f"another process is writing '{path}': {err.holder} holds '{soft.name}'; wait for it to end"
                text += f", or {stale_hint(soft)}"
            raise FileBusy(text, holder=err.holder) from None
