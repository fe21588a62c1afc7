"""The figures of runs and studies as matplotlib :class:`~matplotlib.figure.Figure` objects, for a
notebook or a script: what ``synovia plot`` draws, returned instead of written.

Each function takes a run file (its path, an open :class:`~solver.RunFile`, or anything path-like such
as a :class:`~solver.Simulation`) or a study folder, and returns a new Figure on an Agg canvas, styled
with :data:`RC`. Nothing is shown and nothing is written: a notebook displays a Figure that ends a
cell (after ``%matplotlib inline``), ``fig.savefig(...)`` saves one, and pyplot's state is not touched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import matplotlib
from matplotlib.figure import Figure

from ..io import RunFile
from ..study import StudyTable, read_study
from ._run import RC, chosen_frames, map_figure, timecourse_figure
from ._study import study_figure, study_timecourse_figure

__all__ = ["RunLike", "figure_maps", "figure_study", "figure_study_timecourses", "figure_timecourses"]

#: A run file as the figure functions take it: a path (``str``, :class:`os.PathLike`) or an open RunFile.
RunLike = str | os.PathLike[str] | RunFile


@contextlib.contextmanager
def _opened(run: RunLike) -> Iterator[RunFile]:
    """``run`` as an open RunFile: one given open stays open (a Simulation's too), a path is opened and
    closed here."""
    if isinstance(run, RunFile):
        yield run
        return
    shared = getattr(run, "run_file", None)  # a Simulation's
    if isinstance(shared, RunFile):
        yield shared
        return
    with RunFile.open(os.fspath(run)) as opened:
        yield opened


def figure_maps(
    run: RunLike,
    species: str = "tnf",
    times: Sequence[float] | None = None,
    *,
    log: bool | None = None,
    slice_point_mm: Sequence[float] | None = None,
) -> Figure:
    """The map figure of one species (``map_<species>.png`` of ``synovia plot``): one column per time,
    after the tissue key; a 2D run is one row, a 3D run three slices through ``slice_point_mm``
    (z, y, x in mm; default the domain centre).

    Args:
        run: a run file (path, RunFile, or a :class:`~solver.Simulation`).
        species: ``tnf``, ``il1``, ``leukocytes``, ``cartilage`` (``drug``, ``complex`` when the run has them).
        times: hours; each is drawn at the nearest frame. Default: the first frame, the synovial-fluid
            TNF peak, the middle and the last.
        log: colour scale: True log, False linear, None log when the values span more than two decades.

    Raises:
        ValueError: a species not in the run, a time outside it, a run without frames, a bad slice point.
    """
    with _opened(run) as f, matplotlib.rc_context(RC):
        if species not in f.species:
            raise ValueError(f"species {species!r} is not in {f.path.name}; it has {', '.join(f.species)}")
        return map_figure(f, species, chosen_frames(f, times), log=log, slice_point_mm=slice_point_mm)


def figure_timecourses(run: RunLike) -> Figure:
    """The clinical time courses (``timecourses.png`` of ``synovia plot``): synovial-fluid TNF, IL-1β,
    white cells and mean cartilage integrity against time, the measured ranges shaded, the injury's end
    and the drug doses marked."""
    with _opened(run) as f, matplotlib.rc_context(RC):
        return timecourse_figure(f)


def _study(folder: str | os.PathLike[str] | StudyTable) -> StudyTable:
    table = folder if isinstance(folder, StudyTable) else read_study(folder)
    if all(s is None or not len(s["time"]) for s in table.series):
        raise ValueError(f"no point of '{table.folder}' has run yet: run `synovia sweep` first")
    return table


def figure_study(folder: str | os.PathLike[str] | StudyTable, *, log: bool | None = None) -> Figure:
    """A study's outcome measures against its varied values (``study.png`` of ``synovia plot``).

    ``folder``: a study folder (``synovia sweep -o FOLDER``, points may still be running) or its
    :func:`~solver.read_study` table. ValueError when no point has a frame yet."""
    table = _study(folder)
    with matplotlib.rc_context(RC):
        return study_figure(table, log)


def figure_study_timecourses(folder: str | os.PathLike[str] | StudyTable) -> Figure:
    """The clinical time courses of every point of a study, coloured by its first key
    (``study_timecourses.png`` of ``synovia plot``)."""
    table = _study(folder)
    with matplotlib.rc_context(RC):
        return study_timecourse_figure(table)
