"""A run file as an :class:`xarray.Dataset` (xarray is optional: ``pip install 'synovia[xarray]'``).

The file is read through :class:`RunFile` (SWMR read: a live run and a killed run's file open too), so
the dataset holds the committed frames only, and the fields stay on disk until they are indexed.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ._runfile import _CF_AXIS, CF_CONVENTIONS, RunFile, _plain, axis_long_name, axis_names, long_name

if TYPE_CHECKING:
    import xarray

__all__ = ["XARRAY_EXTRA", "open_dataset"]

#: the optional dependencies :func:`open_dataset` needs, as pip installs them
XARRAY_EXTRA = "synovia[xarray]"


def _xarray():
    try:
        import xarray
    except ImportError as err:
        raise ImportError(
            f"solver.open_dataset needs xarray, an optional dependency of synovia: pip install '{XARRAY_EXTRA}'"
        ) from err
    return xarray


def _within(key: Any, size: int) -> Any:
    """One axis's basic index made explicit against ``size``: an open slice of the frames axis would
    read the uncommitted frame a crash can leave behind."""
    if isinstance(key, slice):
        return slice(*key.indices(size))
    index = int(key)
    index = index + size if index < 0 else index
    if not 0 <= index < size:
        raise IndexError(f"index {key} out of range for an axis of {size}")
    return index


@functools.cache
def _frames_array_types() -> tuple[type, type]:
    """(FramesArray, LazilyIndexedArray): built on first use, so that importing solver needs no xarray."""
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class FramesArray(BackendArray):
        """The committed frames of one ``/fields/<species>`` dataset, read from the file when indexed."""

        def __init__(self, ds: h5py.Dataset, n_frames: int, lock: threading.Lock) -> None:
            self._ds = ds
            self._lock = lock
            self.shape = (n_frames, *ds.shape[1:])
            self.dtype = ds.dtype

        def __deepcopy__(self, memo: dict) -> FramesArray:
            # a read-only view of the file: copies share it (xarray deep-copies lazy arrays, e.g. to
            # align them in ``where``; an h5py dataset cannot be copied)
            return self

        def __getitem__(self, key):
            return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

        def _read(self, key: tuple) -> np.ndarray:
            key = tuple(_within(k, n) for k, n in zip(key, self.shape, strict=True))
            with self._lock:
                if self._ds.shape[0] < self.shape[0]:  # a live run's dataset has grown since it was opened
                    self._ds.refresh()  # (only then: HDF5 2.0 can misread chunks after a needless refresh)
                return self._ds[key]

    return FramesArray, indexing.LazilyIndexedArray


def _free_name(name: str, taken: set[str], prefix: str) -> str:
    """``name``, or ``prefix_name`` where a coordinate or another variable has that name already."""
    while name in taken:
        name = f"{prefix}_{name}"
    taken.add(name)
    return name


def open_dataset(path: str | os.PathLike[str] | RunFile) -> xarray.Dataset:
    """A run file as an :class:`xarray.Dataset`, trimmed to its committed frames.

    Coordinates ``time`` (h) and ``z``, ``y``, ``x`` (cell centres, mm; 2D runs have ``y``, ``x``),
    each with ``units``, ``long_name`` and CF's ``axis``. Data variables: each species over
    ``(time, [z,] y, x)``, read lazily from the file (``.load()`` reads it all); each summary over
    ``time``; ``labels``, the tissue code of each cell, with CF's ``flag_values`` and ``flag_meanings``.
    Every variable has ``units`` and ``long_name``. A summary named like a species or a coordinate
    is renamed ``summary_<name>``. The dataset's attributes are the file's root attributes
    (``config_toml``, ``version``, ``precision``, ``units``, ...), ``layout_version``, ``species`` and
    ``grid_spacing_mm``, ``grid_origin_mm``.

    Works on files of every layout version, on a run that is still writing (the frames committed when
    it opens) and on a killed run's file, whose uncommitted frame it leaves out. The file stays open
    until the dataset is closed (``ds.close()``, or ``with solver.open_dataset(path) as ds:``). Given an
    open :class:`RunFile` instead of a path, the dataset reads through it and leaves it open.

    Raises:
        ImportError: xarray is not installed (``pip install 'synovia[xarray]'``).
        FileNotFoundError, NotARunFile: as :meth:`RunFile.open`.
    """
    xr = _xarray()
    if isinstance(path, RunFile):
        ds = _dataset(xr, path)
        ds.encoding["source"] = str(path.path)
        return ds
    run = RunFile.open(path)
    try:
        ds = _dataset(xr, run)
    except BaseException:
        run.close()
        raise
    ds.set_close(run.close)
    ds.encoding["source"] = str(run.path)
    return ds


def _dataset(xr, run: RunFile) -> xarray.Dataset:
    f = run._file()
    times = run.time  # the committed frames: /time is written last in each frame
    n = len(times)
    grid = run.grid
    axes = axis_names(grid.ndim)

    def coordinate(name: str, values: np.ndarray, units: str):
        attrs = {"units": units, "long_name": axis_long_name(name), "axis": _CF_AXIS[name]}
        return xr.Variable(name, values, attrs)

    coords = {"time": coordinate("time", times, "h")}
    for axis, name in enumerate(axes):
        coords[name] = coordinate(name, grid.axis_centres(axis).astype(np.float64), "mm")
    taken = set(coords) | {"labels"}

    def attrs_of(ds: h5py.Dataset, name: str) -> dict[str, str]:
        return {"units": run.units.get(name, ""), "long_name": str(_plain(ds.attrs.get("long_name", long_name(name))))}

    frames_array, lazy = _frames_array_types()
    lock = threading.Lock()
    data_vars = {}
    for species in run.species:
        ds = f["fields"][species]
        if ds.shape[0] < n:
            ds.refresh()
        data = lazy(frames_array(ds, n, lock))
        data_vars[_free_name(species, taken, "field")] = xr.Variable(("time", *axes), data, attrs_of(ds, species))
    for name in run.summary_names:
        ds = f["summary"][name]
        ds.refresh()
        data_vars[_free_name(name, taken, "summary")] = xr.Variable("time", ds[:n], attrs_of(ds, name))
    codes = np.arange(len(run.tissue_names), dtype=np.uint8)
    data_vars["labels"] = xr.Variable(
        axes,
        run.labels,
        {"long_name": "tissue code", "flag_values": codes, "flag_meanings": " ".join(run.tissue_names)},
    )

    attrs: dict[str, Any] = {
        "Conventions": CF_CONVENTIONS,
        "title": "synovia run",
        **run.attrs,
        "layout_version": run.layout_version,
        "species": list(run.species),
        "grid_spacing_mm": list(grid.spacing),
        "grid_origin_mm": list(grid.origin),
    }
    return xr.Dataset(data_vars, coords, attrs)
