""":func:`simulate` and its result, :class:`Simulation`: one run file, read as a notebook reads it."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from ..io import RunFile, check_output_name, open_dataset
from ..plot import figure_maps, figure_timecourses
from ..setup import Config, apply_overrides, build_scenario, config_from_dict, config_from_toml, enable_precision, find_config
from ..setup import load_config as _load_config
from ..study import Callback, RunResult, open_run, run

if TYPE_CHECKING:
    import xarray

__all__ = ["Simulation", "simulate"]


class Simulation:
    """A run file and what a notebook reads from it: the :func:`simulate` of a scenario, or an existing
    file (``Simulation("ra.h5")``).

    It is path-like (``os.fspath(sim)`` is the file), and the ``solver.figure_*`` functions take it
    (reading through its :attr:`run_file`). ``dataset``,
    ``summaries`` and ``fields`` need xarray (``pip install 'synovia[xarray]'``). A run that
    :func:`simulate` wrote to a temporary file (no ``out``) lives as long as this object: :meth:`close`
    (or the end of a ``with`` block, or garbage collection) deletes it.
    """

    def __init__(self, path: str | os.PathLike[str], *, result: RunResult | None = None, config: Config | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no run file '{self.path}'")
        #: what the run loop did (steps, wall time, ``stopped``); None for a file opened, not run, here
        self.result = result
        self._config = config
        self._temporary: tempfile.TemporaryDirectory | None = None

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        state = "" if self.result is None else f", {self.result.frames_in_file} frames" + (", stopped" if self.stopped else "")
        return f"Simulation('{self.path}'{state})"

    @property
    def stopped(self) -> bool:
        """A callback ended the run before its end (``run.t_end_h``); the file holds the frames until then."""
        return self.result is not None and self.result.stopped

    @property
    def config(self) -> Config:
        """The scenario's config as it ran (a preset's dimensions filled in), as the file stores it."""
        if self._config is None:
            attrs = self.run_file.attrs
            self._config = config_from_toml(attrs["config_toml"], base_dir=attrs.get("config_dir", "."))
        return self._config

    @functools.cached_property
    def run_file(self) -> RunFile:
        """The run file, open for reading: the one HDF5 handle :attr:`dataset` and the figures read through."""
        return RunFile.open(self.path)

    @functools.cached_property
    def dataset(self) -> xarray.Dataset:
        """The run file as an :class:`xarray.Dataset` (``solver.open_dataset``): each species over
        ``(time, [z,] y, x)``, read lazily, and each summary over ``time``, with coordinates in h and mm
        and every variable's ``units``. It holds the frames written when first read."""
        return open_dataset(self.run_file)

    @property
    def summaries(self) -> xarray.Dataset:
        """The summaries (synovial-fluid TNF, IL-1, white cells, cartilage integrity, ...) over ``time``;
        ``sim.summaries.to_dataframe()`` is a table of them."""
        ds = self.dataset
        return ds[[name for name, v in ds.data_vars.items() if v.dims == ("time",)]]

    @property
    def fields(self) -> xarray.Dataset:
        """The species' fields over ``(time, [z,] y, x)`` and the tissue ``labels``."""
        ds = self.dataset
        return ds[[*ds.attrs["species"], "labels"]]

    def figure_maps(
        self,
        species: str = "tnf",
        times: Sequence[float] | None = None,
        *,
        log: bool | None = None,
        slice_point_mm: Sequence[float] | None = None,
    ) -> Figure:
        """The map figure of one species at ``times`` (h): ``solver.figure_maps`` of this run."""
        return figure_maps(self.run_file, species, times, log=log, slice_point_mm=slice_point_mm)

    def figure_timecourses(self) -> Figure:
        """The clinical time courses: ``solver.figure_timecourses`` of this run."""
        return figure_timecourses(self.run_file)

    def close(self) -> None:
        """Close the dataset and the file, and delete the file if it is a temporary one. Safe to call twice."""
        for name in ("dataset", "run_file"):
            opened = self.__dict__.pop(name, None)
            if opened is not None:
                opened.close()
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def simulate(
    config: Config | str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Callback] = (),
    progress: bool | None = None,
    overwrite: bool = False,
) -> Simulation:
    """Run a scenario to a run file, as ``synovia run`` does, and return it as a :class:`Simulation`.

    Args:
        config: a :class:`Config` (``solver.load_config``), a TOML file, or a preset's name (``"ra"``).
        out: the run file (``.h5``); None: a temporary file that the Simulation keeps while it lives.
        overrides: ``"key=value"`` settings, as ``--set`` takes them (``"run.t_end_h=24"``).
        callbacks: callables given each frame (a ``solver.Frame``: index, time_h, fields, summaries) after
            it is written; one returning True stops the run there and the file stays valid.
        progress: a progress bar; None (default) when a person is likely watching (a notebook, a terminal).
        overwrite: replace an existing ``out``.

    Turns on JAX's 64-bit mode for a float64 config (``solver.enable_precision``). Raises
    ``ConfigError`` for a bad config, FileExistsError for an existing ``out`` without ``overwrite``,
    ``solver.Diverged`` after writing every good frame (to a temporary file only with the Simulation
    lost: give ``out`` to keep them).
    """
    if isinstance(config, Config):
        config_dir = Path(config.base_dir).resolve()
        if overrides:
            config = config_from_dict(apply_overrides(config.to_dict(), list(overrides)), config.base_dir)
    else:
        path = find_config(os.fspath(config))
        config = _load_config(path, list(overrides))
        config_dir = Path(path).resolve().parent
    temporary = None
    if out is None:
        temporary = tempfile.TemporaryDirectory(prefix="synovia-")
        out = Path(temporary.name) / "run.h5"
    out = Path(out)
    try:
        check_output_name(out, overwrite)
        enable_precision(config)
        scenario = build_scenario(config)
        writer, _, _ = open_run(scenario, out, config_dir=config_dir, overwrite=overwrite)
        with writer:
            result = run(scenario, writer, progress=progress, callbacks=callbacks)
    except BaseException:
        if temporary is not None:
            temporary.cleanup()
        raise
    simulation = Simulation(out, result=result, config=scenario.config)  # as run: a preset's geometry filled in
    simulation._temporary = temporary
    return simulation
