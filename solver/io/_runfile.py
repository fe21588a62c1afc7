"""HDF5 run files: one file per run, appended frame by frame, readable while written.

Layout (``layout_version = 2``)
-------------------------------
All arrays are stored slowest axis first: spatial shape ``(ny, nx)`` in 2D and
``(nz, ny, nx)`` in 3D; lengths in mm, times in hours.

``/time``
    ``(frames,)`` float64, hours, ``maxshape=(None,)``. ``len(/time)`` is the number of
    *committed* frames: it is written last in every frame, so a reader that trusts it
    never sees a half-written frame. The dimension scale ``time`` (unlimited).
``/z``, ``/y``, ``/x``
    1D cell-centre coordinates, mm (2D has only y and x): the dimension scales ``z``, ``y``, ``x``.
``/fields/<species>``
    ``(frames, *spatial)`` in the run's precision (float32 or float64),
    ``maxshape=(None, *spatial)``, one frame per chunk (frames over 4 MiB are split
    along the slowest spatial axis), gzip level 4 with shuffle. Attributes ``units``,
    ``long_name``; dimensions ``(time, [z,] y, x)``.
    May hold one frame more than ``/time`` after a crash: ignore it.
``/summary/<name>``
    ``(frames,)`` float64, ``maxshape=(None,)``, one scalar diagnostic per frame.
    Attributes ``units``, ``long_name``; dimension ``time``. The group's attribute ``names``
    lists the names in run order. May hold one frame more than ``/time`` after a crash.
``/geometry/labels``
    ``(*spatial)`` uint8 tissue code per cell, dimensions ``([z,] y, x)``. Attributes
    ``tissue_names`` (name of code ``i`` at index ``i``), ``tissue_codes`` (``0 .. len-1``),
    and CF's ``flag_values``, ``flag_meanings``, ``long_name``.
``/grid``
    Attributes ``shape``, ``spacing`` (mm), ``origin`` (mm, lower corner of the first
    cell), ``axes`` (``["y", "x"]`` or ``["z", "y", "x"]``); datasets ``/grid/z``,
    ``/grid/y``, ``/grid/x``: the same cell centres as ``/z``, ``/y``, ``/x`` (along those
    dimensions), mm.
Root attributes
    Everything the caller passes as ``attrs`` (for example ``config_toml``,
    ``version``, ``precision``, ``units``: a JSON object mapping species and summary
    names to unit strings), plus ``layout_version = 2``, ``species`` (list, in
    run order), ``Conventions = "CF-1.8"`` and ``title``.

The dimension scales (HDF5's, as netCDF-4 writes them) and the CF attributes make netCDF tools
(``ncdump``, netCDF4, xarray with h5netcdf) see named dimensions and coordinates: ``float
tnf(time, y, x)``. A netCDF reader takes the unlimited ``time`` as long as its longest variable,
so after a crash it pads ``time`` with a fill value: :func:`open_dataset` (xarray) reads the
committed frames only. Layout 1 (files written before the dimension scales) lacks ``/z``, ``/y``,
``/x``, the scales and the CF attributes; :class:`RunFile` and :func:`open_dataset` read both.

Compatibility and crash safety
------------------------------
Files use ``libver=("v110", "v110")``: the oldest format that allows SWMR, and one that
HDF5 1.10 tools (h5ls, h5dump) and VTK/ParaView read. The writer creates every group,
dataset and attribute first (the dimension scales and their attachments too), then
switches to SWMR mode; each frame is written as fields, summary, flush, ``/time``, flush.
Readers open with ``swmr=True``, which works while the run is writing and also after the
writer was killed (``kill -9``), when a normal open fails until the file is repaired.
:func:`resume_writer` does that repair without external tools.

An XDMF sidecar (same stem, ``.xdmf``) next to the file lets ParaView open the run as a
time series (cell data; a 2D run appears as a sheet one cell thick), listing the committed frames only.
The writer writes it (atomically) after the first frame, then at most every :data:`SIDECAR_EVERY_S`
seconds, and when it closes (a run's end, or an interruption); a killed run's sidecar may lag its
frames until ``repair`` or a resume rewrites it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from fields import TISSUE_NAMES, Grid, WriterLock, atomic_write_text, hdf5_problem, hdf5_shortfall, temporary_path

__all__ = [
    "CF_CONVENTIONS",
    "LAYOUT_VERSION",
    "NotARunFile",
    "RunFile",
    "RunWriter",
    "SIDECAR_EVERY_S",
    "check_output_name",
    "describe",
    "repair",
    "resume_writer",
    "write_xdmf",
]

#: 2: dimension scales (``time``, ``z``, ``y``, ``x``) and CF attributes, for netCDF tools; 1: without them
LAYOUT_VERSION = 2

# Oldest format with SWMR; "latest" files were unreadable by HDF5 1.10 tools and VTK.
_LIBVER = ("v110", "v110")
# HDF5 reads a chunk whole; bigger chunks make single-frame reads of large 3D runs slow.
_MAX_CHUNK_BYTES = 4 * 2**20
# Growth step of the 1D per-frame datasets; small because frames arrive one at a time.
_SERIES_CHUNK = 256
_GZIP_LEVEL = 4
# Root attributes written by the layer itself; the caller may not set them.
_RESERVED_ATTRS = ("layout_version", "species", "Conventions", "title")
#: the CF conventions the files follow (netCDF tools and xarray read the dimensions without it; CF readers check it)
CF_CONVENTIONS = "CF-1.8"
#: CF ``axis`` of each dimension
_CF_AXIS = {"time": "T", "z": "Z", "y": "Y", "x": "X"}
#: what each species is, for CF's ``long_name`` (any other name: itself, underscores as spaces)
_SPECIES_LONG_NAMES = {
    "tnf": "TNF-alpha concentration",
    "il1": "IL-1 concentration",
    "leukocytes": "leukocyte density",
    "cartilage": "cartilage matrix integrity (fraction of intact matrix)",
    "drug": "free drug concentration",
    "complex": "drug-TNF complex concentration",
}
#: what ``total_<species>`` adds up
_SPECIES_WORDS = {
    "tnf": "TNF-alpha",
    "il1": "IL-1",
    "leukocytes": "leukocytes",
    "drug": "free drug",
    "complex": "drug-TNF complex",
}

AttrValue = str | int | float
#: what a file needs to be read as a run file
_REQUIRED = ("time", "fields", "summary", "geometry/labels", "grid")


#: files dropped after a failed write (RunWriter._abandon), kept open so they are never closed
_ABANDONED: list = []
#: free disk space a frame leaves untouched, bytes
_ROOM_MARGIN = 2**20
#: Seconds between rewrites of the XDMF sidecar while frames come in (it lists every frame, so rewriting
#: it per frame made output, not computing, the cost of small runs).
SIDECAR_EVERY_S = 30.0


#: the hook :func:`_quiet_failed_writes` passes other reports to (sys.unraisablehook when it was installed)
_previous_hook: Callable[[sys.UnraisableHookArgs], Any] = sys.__unraisablehook__


def _quiet_failed_writes(unraisable: sys.UnraisableHookArgs) -> None:
    """Drop h5py's reports of a write HDF5 failed (each object it frees afterwards retries it);
    pass anything else to the previous hook."""
    if isinstance(unraisable.exc_value, RuntimeError) and "write failed" in str(unraisable.exc_value):
        return
    _previous_hook(unraisable)


def _install_quiet_hook() -> None:
    global _previous_hook
    if sys.unraisablehook is not _quiet_failed_writes:
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _quiet_failed_writes


class NotARunFile(ValueError):
    """The file is not a readable synovia run file: not HDF5, truncated, or another program's HDF5."""


def axis_names(ndim: int) -> tuple[str, ...]:
    """The names of a grid's axes, slowest first: ``("y", "x")`` or ``("z", "y", "x")``."""
    return ("z", "y", "x")[3 - ndim :]


def long_name(name: str) -> str:
    """CF ``long_name`` of a species or summary of a run file: what it is, in words."""
    if name in _SPECIES_LONG_NAMES:
        return _SPECIES_LONG_NAMES[name]
    for prefix, words, table in (
        ("synovial_fluid_", "mean {} in the synovial fluid", _SPECIES_LONG_NAMES),
        ("total_", "total {} on the grid", _SPECIES_WORDS),
    ):
        if name.startswith(prefix) and name[len(prefix) :] in table:
            return words.format(table[name[len(prefix) :]])
    return {"plasma_drug": "drug concentration in plasma", "cartilage_integrity": "mean cartilage integrity"}.get(
        name, name.replace("_", " ")
    )


def axis_long_name(name: str) -> str:
    """CF ``long_name`` of a dimension's coordinate (``time``, ``z``, ``y``, ``x``)."""
    return "time since the start of the run" if name == "time" else f"{name} of the cell centre"


def _sidecar_path(h5_path: Path) -> Path:
    return h5_path.with_suffix(".xdmf")


def check_output_name(path: Path, overwrite: bool) -> None:
    """Refuse (FileExistsError, ValueError) a run file name that would destroy a file: the run file
    and its XDMF sidecar must be two files, and neither may replace a file without ``overwrite``."""
    if _sidecar_path(path) == path:
        raise ValueError(f"cannot write a run file named '{path}': its ParaView sidecar is NAME.xdmf; name the run NAME.h5")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it (or resume the run)")
    if _sidecar_path(path).exists() and not overwrite:
        raise FileExistsError(
            f"{_sidecar_path(path)} already exists and would be replaced by the run's ParaView sidecar; "
            "pass --overwrite to replace it, or choose another output name"
        )


def _frame_chunks(spatial: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape for a ``(frames, *spatial)`` dataset: one frame, split if large."""
    frame_bytes = itemsize * math.prod(spatial)
    if frame_bytes <= _MAX_CHUNK_BYTES:
        return (1, *spatial)
    slice_bytes = itemsize * math.prod(spatial[1:])
    rows = max(1, _MAX_CHUNK_BYTES // slice_bytes)
    return (1, min(rows, spatial[0]), *spatial[1:])


def _plain(value: Any) -> Any:
    """An HDF5 attribute value as plain Python (str, int, float, bool or list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def _parse_units(attrs: Mapping[str, Any]) -> dict[str, str]:
    """The ``units`` root attribute (JSON object name -> unit), or {} when absent."""
    raw = attrs.get("units")
    if raw is None:
        return {}
    try:
        units = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"attrs['units'] must be a JSON object string, got {raw!r}") from err
    if not isinstance(units, dict):
        raise ValueError(f"attrs['units'] must be a JSON object, got {raw!r}")
    return {str(k): str(v) for k, v in units.items()}


def _check_names(kind: str, names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(n) for n in names)
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} names must be unique, got {names}")
    for name in names:
        # '/' would create nested groups and '.' breaks nothing in HDF5 but does in XDMF paths.
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid {kind} name {name!r}")
    return names


def _check_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in _RESERVED_ATTRS:
            raise ValueError(f"attribute {key!r} is written by the output layer itself")
        value = _plain(value)
        if not isinstance(value, (str, int, float)):
            raise TypeError(f"attribute {key!r} must be str, int or float, got {type(value).__name__}")
        checked[str(key)] = value
    return checked


class RunWriter:
    """Appends frames to an HDF5 run file, SWMR, flushed per frame.

    Args:
        path: the ``.h5`` file to create. The XDMF sidecar goes next to it.
        grid: the simulation grid (shape slowest axis first, mm).
        labels: tissue code per cell, shape ``grid.shape``, values in
            ``0 .. len(TISSUE_NAMES) - 1``.
        species: names of the fields stored per frame, in run order.
        summary_names: names of the scalar diagnostics stored per frame.
        dtype: storage precision of the fields (float32 or float64).
        attrs: root attributes (str, int or float). ``units``, if present, is a JSON
            object mapping species/summary names to unit strings.
        overwrite: replace an existing file (and its sidecar) instead of refusing.
        sidecar_every_s: seconds between rewrites of the XDMF sidecar while frames come in (it is
            written after the first frame and on closing too); 0 rewrites it after every frame.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.

    Use as a context manager, or call :meth:`close`. Only one writer may have a file
    open; any number of :class:`RunFile` readers may read it meanwhile.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        grid: Grid,
        labels: np.ndarray,
        species: Sequence[str],
        summary_names: Sequence[str],
        dtype: npt.DTypeLike,
        attrs: Mapping[str, AttrValue],
        overwrite: bool = False,
        sidecar_every_s: float = SIDECAR_EVERY_S,
    ) -> None:
        path = Path(path)
        species = _check_names("species", species)
        summary_names = _check_names("summary", summary_names)
        if not species:
            raise ValueError("a run needs at least one species")
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"field dtype must be floating point, got {dtype}")
        labels = np.asarray(labels)
        if labels.shape != grid.shape:
            raise ValueError(f"labels have shape {labels.shape}, grid has {grid.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(TISSUE_NAMES)):
            raise ValueError(f"labels must be tissue codes 0..{len(TISSUE_NAMES) - 1}")
        attrs = _check_attrs(attrs)
        units = _parse_units(attrs)

        check_output_name(path, overwrite)
        lock = WriterLock(path)
        try:
            # The layout is made under a temporary name and then put in place: a kill while it is made
            # leaves no half-made file under the user's name.
            tmp = temporary_path(path, ".h5.tmp")
            try:
                f = h5py.File(tmp, "w", libver=_LIBVER)
                try:
                    _create_layout(f, grid, labels.astype(np.uint8), species, summary_names, dtype, attrs, units)
                    f.flush()
                    _put_in_place(tmp, path, overwrite)
                    # After this no object or attribute may be added: SWMR forbids it.
                    f.swmr_mode = True
                except BaseException:
                    f.close()
                    raise
            finally:
                tmp.unlink(missing_ok=True)
        except BaseException:
            lock.release()
            raise
        # An old sidecar would describe frames this file does not have.
        _sidecar_path(path).unlink(missing_ok=True)
        self._init_open(f, path, grid, species, summary_names, dtype, times=[], lock=lock)
        self._sidecar_every_s = float(sidecar_every_s)

    def _init_open(
        self,
        f: h5py.File,
        path: Path,
        grid: Grid,
        species: tuple[str, ...],
        summary_names: tuple[str, ...],
        dtype: np.dtype,
        times: list[float],
        lock: WriterLock,
    ) -> None:
        self._f: h5py.File | None = f
        self._lock = lock
        self._path = path
        self._grid = grid
        self._species = species
        self._summary_names = summary_names
        self._dtype = dtype
        self._times = times
        self._write_sidecar = True
        self._sidecar_every_s = SIDECAR_EVERY_S
        self._sidecar_at = -math.inf  # time.monotonic() of its last write
        self._sidecar_frames = -1  # frames it lists
        self.sidecar_s = 0.0  # seconds spent writing the sidecar

    @classmethod
    def _reopen(cls, path: Path, lock: WriterLock) -> RunWriter:
        """Append to a cleanly closed, consistent run file (committed frames only), holding ``lock``."""
        f = h5py.File(path, "r+", libver=_LIBVER)
        try:
            grid = _read_grid(f)
            species = tuple(_plain(f.attrs["species"]))
            summary_names = tuple(_plain(f["summary"].attrs["names"]))
            dtype = f["fields"][species[0]].dtype
            times = [float(t) for t in f["time"][:]]
            # A writer that failed mid-frame and then closed leaves the extra frame behind.
            n = len(times)
            for name in species:
                f["fields"][name].resize(n, axis=0)
            for name in summary_names:
                f["summary"][name].resize(n, axis=0)
            f.flush()
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        writer = cls.__new__(cls)
        writer._init_open(f, path, grid, species, summary_names, dtype, times, lock)
        writer._update_sidecar()
        return writer

    @property
    def path(self) -> Path:
        """The ``.h5`` file being written."""
        return self._path

    @property
    def xdmf_path(self) -> Path:
        """The XDMF sidecar (same stem, ``.xdmf``)."""
        return _sidecar_path(self._path)

    @property
    def n_frames(self) -> int:
        """Number of committed frames."""
        return len(self._times)

    def append(
        self,
        time_h: float,
        fields: Mapping[str, npt.ArrayLike],
        summary: Mapping[str, float],
    ) -> None:
        """Write one frame and commit it.

        Args:
            time_h: simulated time of the frame, hours; must exceed the previous frame's.
            fields: one array of shape ``grid.shape`` per species (converted to the
                file's dtype; JAX arrays are fine).
            summary: one scalar per summary name.

        The frame is committed (visible to readers, kept after a crash) when this returns.
        """
        if self._f is None:
            raise ValueError(f"{self._path} is closed")
        time_h = float(time_h)
        if not math.isfinite(time_h):
            raise ValueError(f"frame time must be finite, got {time_h}")
        if self._times and time_h <= self._times[-1]:
            raise ValueError(f"frame time {time_h} h is not after the last frame's {self._times[-1]} h")
        if set(fields) != set(self._species):
            raise ValueError(f"fields must be exactly {list(self._species)}, got {sorted(fields)}")
        if set(summary) != set(self._summary_names):
            raise ValueError(f"summary must be exactly {list(self._summary_names)}, got {sorted(summary)}")
        # Convert everything before touching the file so a bad input cannot leave a partial frame.
        arrays = {}
        for name in self._species:
            arr = np.asarray(fields[name]).astype(self._dtype, copy=False)
            if arr.shape != self._grid.shape:
                raise ValueError(f"field {name!r} has shape {arr.shape}, grid has {self._grid.shape}")
            arrays[name] = arr
        scalars = {name: float(summary[name]) for name in self._summary_names}

        n = len(self._times)
        f = self._f
        self._check_room(sum(a.nbytes for a in arrays.values()))
        _install_quiet_hook()  # h5py reports a failed write once more from each object it frees
        try:
            for name, arr in arrays.items():
                ds = f["fields"][name]
                ds.resize(n + 1, axis=0)
                ds[n] = arr
            for name, value in scalars.items():
                ds = f["summary"][name]
                ds.resize(n + 1, axis=0)
                ds[n] = value
            f.flush()
            # /time last: its length is what readers take as the committed frame count.
            ds = f["time"]
            ds.resize(n + 1, axis=0)
            ds[n] = time_h
            f.flush()
        except (RuntimeError, OSError) as err:  # h5py reports a failed write (a full disk) as RuntimeError
            self._abandon()
            found = re.search(r"error message = '([^']+)'", str(err))
            why = found[1] if found else str(err)
            where = f"writing the frame at t = {time_h:g} h; the {n} frames before it are kept"
            raise OSError(errno.EIO, f"{why} ({where})") from None
        self._times.append(time_h)
        self._update_sidecar()

    def _check_room(self, frame_bytes: int) -> None:
        """Refuse a frame the disk may not hold (before HDF5 fails on it: a file HDF5 could not
        write cannot be closed cleanly): the frame uncompressed, its sidecar and a margin."""
        need = frame_bytes + 64 * len(self._times) + _ROOM_MARGIN
        free = shutil.disk_usage(self._path.parent).free
        if free < need:
            raise OSError(
                errno.ENOSPC,
                f"the disk holding '{self._path}' has {free / 2**20:.3g} MiB free, a frame may need {need / 2**20:.3g} MiB "
                f"(the {len(self._times)} frames written are kept)",
            )

    @property
    def abandoned(self) -> bool:
        """True after HDF5 failed a write: the file is left open (see :meth:`_abandon`)."""
        return getattr(self, "_abandoned", False)

    def _abandon(self) -> None:
        """Stop using a file HDF5 could not write. It is not closed: closing retries the failed writes,
        which crashed HDF5 (a segmentation fault) in this state, and HDF5 closes what is open when
        the process ends, so a program that met this ends with ``os._exit`` (the command does).
        The committed frames are on disk already."""
        _ABANDONED.append(self._f)
        self._f = None
        self._abandoned = True
        self._lock.release()

    def _update_sidecar(self, now: bool = False) -> None:
        """Rewrite the XDMF sidecar if it lags the frames and ``now`` or its interval has passed."""
        if not (self._write_sidecar and self._times) or self._sidecar_frames == len(self._times):
            return
        if not now and time.monotonic() - self._sidecar_at < self._sidecar_every_s:
            return
        start = time.monotonic()
        write_xdmf(self._path, grid=self._grid, species=self._species, times=self._times, dtype=self._dtype)
        self._sidecar_at, self._sidecar_frames = time.monotonic(), len(self._times)
        self.sidecar_s += self._sidecar_at - start

    @property
    def sidecar_every_s(self) -> float:
        """Seconds between sidecar rewrites while frames are appended (0: after every frame)."""
        return self._sidecar_every_s

    @sidecar_every_s.setter
    def sidecar_every_s(self, seconds: float) -> None:
        self._sidecar_every_s = float(seconds)

    def close(self) -> None:
        """Bring the sidecar up to date and close the file (it then opens in any HDF5 reader) and let
        another writer in; further appends raise. Safe to call twice."""
        if self._f is not None:
            try:
                self._update_sidecar(now=True)
            finally:
                try:
                    self._f.close()
                finally:
                    self._f = None
                    self._lock.release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _put_in_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give the finished file ``tmp`` the name ``path``: replacing a file there only with ``overwrite``."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if a file appeared at ``path`` meanwhile
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it (or resume the run)") from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it (or resume the run)") from None
        os.replace(tmp, path)


def _create_layout(
    f: h5py.File,
    grid: Grid,
    labels: np.ndarray,
    species: tuple[str, ...],
    summary_names: tuple[str, ...],
    dtype: np.dtype,
    attrs: dict[str, Any],
    units: dict[str, str],
) -> None:
    """Create every group, dataset and attribute of an empty run file (see module doc), the dimension
    scales and their attachments included: after the switch to SWMR none can be added."""
    for key, value in attrs.items():
        f.attrs[key] = value
    f.attrs["layout_version"] = LAYOUT_VERSION
    f.attrs["species"] = list(species)
    f.attrs["Conventions"] = CF_CONVENTIONS
    f.attrs["title"] = "synovia run"

    def coordinate(ds: h5py.Dataset, name: str, units: str) -> h5py.Dataset:
        ds.make_scale(name)  # a netCDF dimension with its coordinate variable
        ds.attrs["_Netcdf4Dimid"] = np.int32(len(scales))  # netCDF lists dimensions in this order
        scales.append(ds)
        ds.attrs["units"] = units
        ds.attrs["long_name"] = axis_long_name(name)
        ds.attrs["axis"] = _CF_AXIS[name]
        return ds

    scales: list[h5py.Dataset] = []  # time, then z, y, x
    # NaN fill: a netCDF reader pads time to its longest variable (a crash's uncommitted frame) with it
    t = f.create_dataset("time", shape=(0,), maxshape=(None,), chunks=(_SERIES_CHUNK,), dtype="f8", fillvalue=np.nan)
    coordinate(t, "time", "h")
    axes = axis_names(grid.ndim)
    centres = [grid.axis_centres(axis).astype(np.float64) for axis in range(grid.ndim)]
    for name, c in zip(axes, centres, strict=True):
        coordinate(f.create_dataset(name, data=c), name, "mm")
    spatial_scales = scales[1:]

    def attach(ds: h5py.Dataset, *dims: h5py.Dataset) -> None:
        for k, scale in enumerate(dims):
            ds.dims[k].attach_scale(scale)

    spatial = grid.shape
    chunks = _frame_chunks(spatial, dtype.itemsize)
    g = f.create_group("fields")
    for name in species:
        ds = g.create_dataset(
            name,
            shape=(0, *spatial),
            maxshape=(None, *spatial),
            chunks=chunks,
            dtype=dtype,
            compression="gzip",
            compression_opts=_GZIP_LEVEL,
            shuffle=True,
        )
        ds.attrs["units"] = units.get(name, "")
        ds.attrs["long_name"] = long_name(name)
        attach(ds, t, *spatial_scales)

    g = f.create_group("summary")
    g.attrs["names"] = list(summary_names)
    for name in summary_names:
        ds = g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_SERIES_CHUNK,), dtype="f8")
        ds.attrs["units"] = units.get(name, "")
        ds.attrs["long_name"] = long_name(name)
        attach(ds, t)

    g = f.create_group("geometry")
    ds = g.create_dataset(
        "labels",
        data=labels,
        chunks=_frame_chunks(spatial, 1)[1:],
        compression="gzip",
        compression_opts=_GZIP_LEVEL,
        shuffle=True,
    )
    ds.attrs["tissue_names"] = list(TISSUE_NAMES)
    ds.attrs["tissue_codes"] = np.arange(len(TISSUE_NAMES), dtype=np.uint8)
    ds.attrs["long_name"] = "tissue code"
    ds.attrs["flag_values"] = np.arange(len(TISSUE_NAMES), dtype=np.uint8)
    ds.attrs["flag_meanings"] = " ".join(TISSUE_NAMES)
    attach(ds, *spatial_scales)

    g = f.create_group("grid")
    g.attrs["shape"] = np.asarray(grid.shape, dtype=np.int64)
    g.attrs["spacing"] = np.asarray(grid.spacing, dtype=np.float64)
    g.attrs["origin"] = np.asarray(grid.origin, dtype=np.float64)
    g.attrs["axes"] = list(axis_names(grid.ndim))
    g.attrs["units"] = "mm"
    for axis_name, c, scale in zip(axes, centres, spatial_scales, strict=True):
        ds = g.create_dataset(axis_name, data=c)
        ds.attrs["units"] = "mm"
        ds.attrs["long_name"] = axis_long_name(axis_name)
        attach(ds, scale)


def _read_grid(f: h5py.File) -> Grid:
    g = f["grid"]
    return Grid(
        shape=tuple(int(n) for n in g.attrs["shape"]),
        spacing=tuple(float(h) for h in g.attrs["spacing"]),
        origin=tuple(float(o) for o in g.attrs["origin"]),
    )


class RunFile:
    """Read side of a run file; works while the run is writing and after a crash.

    Open with :meth:`RunFile.open`. Static content (grid, labels, species, attrs) is read
    once; :attr:`time`, :attr:`summary` and :meth:`field` re-read the file on every
    call, so a reader kept open follows a live run. Only committed frames
    (``len(/time)``) are ever returned.
    """

    def __init__(self, f: h5py.File, path: Path) -> None:
        self._f: h5py.File | None = f
        self.path = path
        self.grid: Grid = _read_grid(f)
        self.species: list[str] = list(_plain(f.attrs["species"]))
        self.summary_names: list[str] = list(_plain(f["summary"].attrs["names"]))
        self.layout_version: int = int(f.attrs["layout_version"])
        #: Root attributes as given to the writer (without ``layout_version``/``species``).
        self.attrs: dict[str, Any] = {k: _plain(v) for k, v in f.attrs.items() if k not in _RESERVED_ATTRS}
        self.labels: np.ndarray = f["geometry"]["labels"][()]
        self.tissue_names: list[str] = list(_plain(f["geometry"]["labels"].attrs["tissue_names"]))
        self.dtype: np.dtype = f["fields"][self.species[0]].dtype
        #: Unit of each species and summary name ("" where unknown), plus "time": "h".
        self.units: dict[str, str] = {"time": "h"}
        for group in ("fields", "summary"):
            for name, ds in f[group].items():
                self.units[name] = str(_plain(ds.attrs.get("units", "")))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunFile:
        """Open a run file read-only (SWMR read: safe during a run and after ``kill -9``)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(path)
        if problem := hdf5_problem(path):  # before SWMR read, which retries a truncated file's reads for minutes
            raise NotARunFile(f"'{path}' {problem}")
        f = h5py.File(path, "r", swmr=True)
        try:
            if missing := [k for k in _REQUIRED if k not in f] + [a for a in ("species", "layout_version") if a not in f.attrs]:
                raise NotARunFile(
                    f"'{path}' is an HDF5 file but not a synovia run file (it lacks {', '.join(missing)}); "
                    "synovia run writes run files"
                )
            return cls(f, path)
        except (KeyError, IndexError, TypeError) as err:
            f.close()
            raise NotARunFile(f"'{path}' is not a readable synovia run file: {err}") from None
        except BaseException:
            f.close()
            raise

    def _file(self) -> h5py.File:
        if self._f is None:
            raise ValueError(f"{self.path} is closed")
        return self._f

    @property
    def config_toml(self) -> str:
        """The run's configuration as TOML text ("" if the writer gave none)."""
        return str(self.attrs.get("config_toml", ""))

    @property
    def time(self) -> np.ndarray:
        """Times of the committed frames, hours, shape ``(n_frames,)``."""
        ds = self._file()["time"]
        ds.refresh()
        return ds[()]

    @property
    def n_frames(self) -> int:
        """Number of committed frames."""
        ds = self._file()["time"]
        ds.refresh()
        return int(ds.shape[0])

    @property
    def summary(self) -> dict[str, np.ndarray]:
        """Each summary series over the committed frames, shape ``(n_frames,)``."""
        n = self.n_frames
        out = {}
        for name in self.summary_names:
            ds = self._file()["summary"][name]
            ds.refresh()
            out[name] = ds[:n]
        return out

    def field(self, species: str, frame: int) -> np.ndarray:
        """One species at one committed frame (negative counts from the end), shape ``grid.shape``."""
        if species not in self.species:
            raise KeyError(f"no species {species!r} in {self.path}; it has {self.species}")
        n = self.n_frames
        index = frame + n if frame < 0 else frame
        if not 0 <= index < n:
            raise IndexError(f"frame {frame} out of range: {self.path} has {n} committed frames")
        ds = self._file()["fields"][species]
        if index >= ds.shape[0]:  # grown since last seen; HDF5 2.0 can misread after refreshing a handle needlessly
            ds.refresh()
        return ds[index]

    def fields(self, frame: int) -> dict[str, np.ndarray]:
        """Every species at one committed frame, ``{species: array of grid.shape}``."""
        return {name: self.field(name, frame) for name in self.species}

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> RunFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def resume_writer(path: str | os.PathLike[str]) -> tuple[RunWriter, float, dict[str, np.ndarray]]:
    """Reopen a run file, possibly left by ``kill -9``, to append more frames.

    A cleanly closed file is reopened in place. A file whose writer died cannot be
    opened for writing (HDF5 marks it as still open), so its committed frames are read
    with SWMR read, copied into a fresh file next to it, and that file replaces the
    original (attrs, grid and labels are kept; a half-written frame is dropped).

    Do not call this on a run that is still being written.

    Returns:
        The writer (appending after the last committed frame), the time of that frame
        in hours, and its fields ``{species: array of grid.shape}``.

    Raises:
        ValueError: the file has no committed frame to resume from.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    with RunFile.open(path):  # a run file, whole
        pass
    lock = WriterLock(path)  # FileBusy while another process writes it (a job started twice)
    try:
        try:
            writer = RunWriter._reopen(path, lock)
        except OSError:
            # HDF5 refuses a file whose writer never closed it; rebuild it from what is committed.
            writer = RunWriter._reopen(_rebuild(path), lock)
    except BaseException:
        lock.release()
        raise
    if writer.n_frames == 0:
        writer.close()
        raise ValueError(f"{path} has no committed frame to resume from")
    with RunFile.open(path) as run:
        last = run.fields(-1)
    return writer, writer._times[-1], last


def _rebuild(path: Path) -> Path:
    """Copy the committed frames of ``path`` into a fresh file and put it in place of ``path``
    (the caller holds ``path``'s writer lock)."""
    tmp = temporary_path(path, ".h5.tmp")
    try:
        with RunFile.open(path) as old:
            times = old.time
            summary = old.summary
            fresh = RunWriter(
                tmp,
                grid=old.grid,
                labels=old.labels,
                species=old.species,
                summary_names=old.summary_names,
                dtype=old.dtype,
                attrs=old.attrs,
                overwrite=True,
            )
            fresh._write_sidecar = False
            try:
                for k, t in enumerate(times):
                    fresh.append(float(t), old.fields(k), {name: values[k] for name, values in summary.items()})
            finally:
                fresh.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(f".{tmp.name}.lock").unlink(missing_ok=True)
    return path


def repair(path: str | os.PathLike[str]) -> int:
    """Make a run file whose writer was killed open in any HDF5 reader (h5py, h5dump, ParaView),
    in place, keeping every committed frame (a half-written one is dropped); returns the frames.

    A cleanly closed file is left as it is. A file whose last write failed (a full disk, a
    size limit) can lack the end of that write: up to :data:`REPAIR_SHORTFALL` bytes are put back
    as zeros first (only the uncommitted frame lived there). Raises :class:`fields.FileBusy`
    while a writer has it.
    """
    path = Path(path)
    with WriterLock(path):
        if missing := hdf5_shortfall(path) if path.is_file() else 0:
            if missing > REPAIR_SHORTFALL:
                raise NotARunFile(f"'{path}' is cut short by {missing / 2**20:.3g} MiB: more than a failed write; not repairable")
            os.truncate(path, path.stat().st_size + missing)
        with RunFile.open(path) as run:
            n = run.n_frames
        try:
            h5py.File(path, "r").close()  # HDF5 opens it: nothing to repair
        except OSError:
            _rebuild(path)
            write_xdmf(path)
    return n


#: the most bytes :func:`repair` puts back at the end of a file whose last write failed
REPAIR_SHORTFALL = 64 * 2**20


def _number_type(dtype: np.dtype) -> tuple[str, str]:
    """XDMF ``NumberType`` and ``Precision`` (bytes) of a numpy dtype."""
    kinds = {"f": "Float", "i": "Int", "u": "UInt"}
    if dtype == np.uint8:
        return "UChar", "1"
    return kinds[dtype.kind], str(dtype.itemsize)


def write_xdmf(
    h5_path: str | os.PathLike[str],
    *,
    grid: Grid | None = None,
    species: Sequence[str] | None = None,
    times: Sequence[float] | None = None,
    dtype: npt.DTypeLike | None = None,
) -> Path:
    """Write the XDMF sidecar of a run file (same stem, ``.xdmf``) so ParaView can open it.

    A temporal collection with one uniform grid per frame: a 3DCoRectMesh whose cells
    are the simulation cells (origin and spacing in mm, slowest axis first; a 2D grid is
    shown as a sheet one cell thick in z), each species as a cell attribute read through
    a HyperSlab of ``/fields/<species>``, and the tissue labels as a cell attribute. Any
    argument left out is read from the file (``times``: its committed frames).

    The file is written under a temporary name and then renamed, so readers never see
    a partial sidecar.

    Returns:
        The path of the sidecar.
    """
    h5_path = Path(h5_path)
    if grid is None or species is None or times is None or dtype is None:
        with RunFile.open(h5_path) as run:
            grid = run.grid if grid is None else grid
            species = run.species if species is None else species
            times = run.time.tolist() if times is None else times
            dtype = run.dtype if dtype is None else dtype
    dtype = np.dtype(dtype)
    text = _xdmf_text(h5_path.name, grid, list(species), [float(t) for t in times], dtype)

    return atomic_write_text(_sidecar_path(h5_path), text)


def _xdmf_mesh(grid: Grid) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    """Cells per axis, origin and spacing (mm) of the XDMF mesh, always 3D, slowest first.

    vtkXdmfReader puts a 2DCoRectMesh in VTK's y-z plane (seen edge-on in ParaView's 2D
    view) and fails to read attributes on a mesh one point thick, so a 2D grid becomes a
    sheet one cell thick in z, its cells cubes of the smallest spacing.
    """
    if grid.ndim == 3:
        return grid.shape, grid.origin, grid.spacing
    return (1, *grid.shape), (0.0, *grid.origin), (min(grid.spacing), *grid.spacing)


def _xdmf_text(h5_name: str, grid: Grid, species: list[str], times: list[float], dtype: np.dtype) -> str:
    nd = grid.ndim
    cells, origin, spacing = _xdmf_mesh(grid)
    cell_dims = " ".join(str(n) for n in cells)
    spatial = " ".join(str(n) for n in grid.shape)
    field_type, field_precision = _number_type(dtype)
    label_type, label_precision = _number_type(np.dtype(np.uint8))

    def vector(values: Sequence[float]) -> ET.Element:
        item = ET.Element("DataItem", Format="XML", Dimensions="3", NumberType="Float", Precision="8")
        item.text = " ".join(repr(float(v)) for v in values)
        return item

    def hyperslab(parent: ET.Element, start: list[int], count: list[int]) -> ET.Element:
        """A HyperSlab DataItem of shape ``cells``; its source DataItem is for the caller to add."""
        slab = ET.SubElement(parent, "DataItem", ItemType="HyperSlab", Type="HyperSlab", Dimensions=cell_dims)
        # Rows: start, stride, count, over the source dataset's axes.
        selection = ET.SubElement(slab, "DataItem", Format="XML", NumberType="Int", Dimensions=f"3 {len(start)}")
        selection.text = " ".join(str(v) for v in [*start, *[1] * len(start), *count])
        return slab

    root = ET.Element("Xdmf", Version="2.0")
    domain = ET.SubElement(root, "Domain")
    series = ET.SubElement(domain, "Grid", Name="run", GridType="Collection", CollectionType="Temporal")
    for k, t in enumerate(times):
        frame = ET.SubElement(series, "Grid", Name=f"frame_{k:06d}", GridType="Uniform")
        ET.SubElement(frame, "Time", Value=repr(t))
        # Mesh points are cell corners: one more than cells per axis.
        ET.SubElement(
            frame,
            "Topology",
            TopologyType="3DCoRectMesh",
            Dimensions=" ".join(str(n + 1) for n in cells),
        )
        geometry = ET.SubElement(frame, "Geometry", GeometryType="ORIGIN_DXDYDZ")
        geometry.append(vector(origin))
        geometry.append(vector(spacing))

        labels = ET.SubElement(frame, "Attribute", Name="labels", AttributeType="Scalar", Center="Cell")
        if nd == 3:
            parent = labels
        else:
            # The 2D labels need a (1, ny, nx) view to fit the sheet's cells.
            parent = hyperslab(labels, [0] * nd, list(grid.shape))
        item = ET.SubElement(
            parent,
            "DataItem",
            Format="HDF",
            Dimensions=spatial,
            NumberType=label_type,
            Precision=label_precision,
        )
        item.text = f"{h5_name}:/geometry/labels"

        for name in species:
            attribute = ET.SubElement(frame, "Attribute", Name=name, AttributeType="Scalar", Center="Cell")
            slab = hyperslab(attribute, [k, *[0] * nd], [1, *grid.shape])
            source = ET.SubElement(
                slab,
                "DataItem",
                Format="HDF",
                Dimensions=f"{len(times)} {spatial}",
                NumberType=field_type,
                Precision=field_precision,
            )
            source.text = f"{h5_name}:/fields/{name}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def describe(path: str | os.PathLike[str], config: bool = False) -> str:
    """A human-readable summary of a run file, for ``synovia info FILE``.

    First what the run found: the frames and time range (hours) and every summary value at the last
    committed frame (with units); then the file: version, precision, grid, tissues present with cell
    counts, species (with units); and with ``config`` the run's config TOML (``info --config``).
    """
    with RunFile.open(path) as run:
        grid = run.grid
        times = run.time
        summary = run.summary
        attrs = run.attrs
        axes = axis_names(grid.ndim)

        def joined(values: Sequence[Any]) -> str:
            return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

        head = [f"file: {Path(path)}"]
        if len(times):
            head.append(f"frames: {len(times)}, t = {times[0]:g} .. {times[-1]:g} h")
            head.append(f"summary at t = {times[-1]:g} h:")
            for name, values in summary.items():
                unit = run.units.get(name, "")  # "1": a fraction (CF's dimensionless unit), printed bare
                head.append(f"  {name} = {values[-1]:.6g}{' ' + unit if unit not in ('', '1') else ''}")
        else:
            head.append("frames: 0")
        lines = [
            *head,
            f"version: {attrs.get('version', 'unknown')}",
            f"precision: {attrs.get('precision', run.dtype.name)}",
            f"layout: {run.layout_version}",
            f"grid: {joined(grid.shape)} cells ({', '.join(axes)}), "
            f"spacing {joined(grid.spacing)} mm, origin {joined(grid.origin)} mm",
            "tissues:",
        ]
        counts = np.bincount(run.labels.ravel(), minlength=len(run.tissue_names))
        width = max(len(n) for n in run.tissue_names)
        for code, count in enumerate(counts):
            if count:
                name = run.tissue_names[code] if code < len(run.tissue_names) else f"code {code}"
                lines.append(f"  {name:<{width}}  {count} cells")

        def with_unit(name: str) -> str:
            unit = run.units.get(name, "")
            return f"{name} [{unit}]" if unit else name

        lines.append(f"species: {', '.join(with_unit(s) for s in run.species)}")
        text = run.config_toml
        if not config:
            lines.append("config: synovia info FILE --config prints it" if text else "config: (none)")
        else:
            lines.append("config:" if text else "config: (none)")
            if text:
                lines.append(text.rstrip("\n"))
    return "\n".join(lines) + "\n"
