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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "FileBusy",
    "WriterLock",
    "atomic_write_text",
    "check_size",
    "hdf5_problem",
    "hdf5_shortfall",
    "host_memory_bytes",
    "size_text",
    "temporary_path",
]

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: where HDF5 looks for the superblock: 0, then each power of two from 512 (a user block before it)
_SUPERBLOCK_OFFSETS = (0, *(512 << k for k in range(23)))


class FileBusy(OSError):
    """Another process holds the file's writer lock."""


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


def _superblock(path: Path) -> tuple[bool, int, int | None, int]:
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


def _end_address(fh, offset: int) -> int | None:
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


class WriterLock:
    """An exclusive lock on writing ``path``: an ``flock`` on ``.NAME.lock`` beside it.

    Taken without waiting: a second writer gets :class:`FileBusy` at once. The kernel drops the lock
    when the holder's process ends however it ends (``kill -9`` included), so it is never stale.
    The lock file (empty) is left in place: removing it would let two processes lock two files.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        self.path = path.with_name(f".{path.name}.lock")
        self._fd: int | None = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FileBusy(f"another process is writing '{path}' (it holds '{self.path.name}'); wait for it to end") from None
            raise
        self._fd = fd

    def release(self) -> None:
        """Let another writer in. Safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
