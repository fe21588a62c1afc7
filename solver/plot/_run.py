"""Figures of a run file: species maps, clinical time courses, a movie.

:func:`plot_run` writes, into one folder:

``map_<species>.png``
    One figure per species (``tnf``, ``il1``, ``leukocytes``, ``cartilage``, ``drug`` and ``complex`` when the run
    has it), one column per chosen time, sharing one colour scale and colour bar, after a first
    column that is the tissue key (each tissue in its own colour). A 2D run is one
    row; a 3D run has three rows, orthogonal slices through one point (default: the domain centre,
    which is the joint centre): the vertical x-z plane (the 2D section), the vertical y-z plane and
    the horizontal x-y plane. Cells where the species does not live are left out (bone is grey,
    other tissues without the species light grey, excluded cells white); thin dark lines are the
    boundaries between tissues. A legend under the maps names them; a joint preset's bones are
    named on the vertical views (upper and lower bone: femur and tibia, metacarpal and proximal
    phalanx); the column at the synovial-fluid TNF peak is marked with the peak value.
``timecourses.png``
    The four clinical summaries (synovial-fluid TNF, IL-1 beta and white-cell count, mean cartilage
    integrity) against time, with the clinical ranges of :data:`CLINICAL_RANGES` shaded, the
    injury's end and every drug dose (from the run's stored config) as vertical lines, and a
    legend that explains the lines, the range colours and the two OA IL-1 beta ranges.
``movie_<species>.mp4`` (or ``.gif``)
    With ``movie=True``: one species over all frames (at most 100), MP4 through ffmpeg when it is
    on the PATH, else an animated GIF.

Matplotlib is used without pyplot: every figure is a :class:`~matplotlib.figure.Figure` on an Agg
canvas, styled inside :func:`matplotlib.rc_context`, so nothing leaks into a caller's pyplot state.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib import animation
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from fields import SPECIES_TISSUES, Tissue

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.typing import RcKeyType

from ..io import RunFile

__all__ = ["CLINICAL_RANGES", "ClinicalRange", "RunEvents", "mark_events", "plot_run", "run_events"]

# --------------------------------------------------------------------------------------------
# Style: the one place for fonts, colours and sizes.
# --------------------------------------------------------------------------------------------

#: Matplotlib rc settings used for every figure (applied with rc_context, never globally).
RC: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 11,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "image.interpolation": "nearest",
}
BONE_RGB = (0.62, 0.62, 0.62)  # bone
OTHER_TISSUE_RGB = (0.88, 0.88, 0.88)  # a tissue the plotted species does not enter
EXCLUDED_RGB = (1.0, 1.0, 1.0)  # outside the body
#: Colours of the tissue key (the first column of a map figure): which ring is which.
TISSUE_KEY_RGB = {
    Tissue.EXCLUDED: EXCLUDED_RGB,
    Tissue.BONE: BONE_RGB,
    Tissue.CARTILAGE: (0.55, 0.75, 0.92),
    Tissue.SYNOVIAL_FLUID: (1.0, 0.93, 0.55),
    Tissue.SYNOVIUM: (0.86, 0.36, 0.45),
    Tissue.CAPSULE: (0.78, 0.64, 0.42),
}
TISSUE_TEXT = {
    Tissue.EXCLUDED: "outside the model (not simulated)",
    Tissue.BONE: "bone",
    Tissue.CARTILAGE: "cartilage",
    Tissue.SYNOVIAL_FLUID: "synovial fluid",
    Tissue.SYNOVIUM: "synovium (lining)",
    Tissue.CAPSULE: "capsule",
}
#: The bones of each joint preset, (upper, lower): fields' joint puts the femoral condyle / metacarpal
#: head above the joint space and the tibial plateau / phalanx base below it (JointDimensions).
PRESET_BONES = {"knee": ("femur", "tibia"), "mcp": ("metacarpal", "proximal phalanx")}
INJURY_END_STYLE: dict[str, Any] = {"color": "#e07b00", "ls": "--", "lw": 1.0}
DOSE_STYLE: dict[str, Any] = {"color": "#7b3fa0", "ls": ":", "lw": 1.1}
#: At most this many doses get their own text label; beyond it only the first one is labelled.
MAX_DOSE_LABELS = 6
IL1_NOTE_WIDTH = 150  # characters per line of the time-course figure's IL-1 note
OUTLINE: dict[str, Any] = {"colors": "#1f1f1f", "linewidths": 0.4, "alpha": 0.6}  # tissue boundaries
PANEL_WIDTH_IN = 2.5  # width of one map panel, inches
COLORBAR_IN = 1.0  # room for the colour bar and the y labels, inches
TIMECOURSE_SIZE_IN = (9.0, 7.75)
LEGEND_IN = 0.55  # room under a map figure for its tissue legend, inches
MOVIE_MAX_FRAMES = 100
MOVIE_FPS = 8
#: Colormaps whose dark low end is cut off (fraction of the map skipped).
CMAP_START = {"magma": 0.12}
#: Smallest colour-bar value of a log scale, as a fraction of its largest (4 decades).
LOG_FLOOR = 1e-4
#: Positive data spanning more than this ratio gets a log scale when ``log=None``.
LOG_SPAN = 100.0

_CYTOKINE_TISSUES = SPECIES_TISSUES["tnf"]


@dataclasses.dataclass(frozen=True)
class SpeciesStyle:
    """How one species is drawn: display name, colormap, tissues it lives in, fixed range."""

    label: str
    cmap: str
    tissues: tuple[Tissue, ...]
    fixed_range: tuple[float, float] | None = None  # always linear over this range


SPECIES_STYLE: dict[str, SpeciesStyle] = {
    "tnf": SpeciesStyle("TNF", "magma", SPECIES_TISSUES["tnf"]),
    "il1": SpeciesStyle("IL-1β", "magma", SPECIES_TISSUES["il1"]),
    "leukocytes": SpeciesStyle("Leukocytes", "viridis", SPECIES_TISSUES["leukocytes"]),
    "cartilage": SpeciesStyle("Cartilage integrity", "cividis", SPECIES_TISSUES["cartilage"], fixed_range=(0.0, 1.0)),
    "drug": SpeciesStyle("Drug", "YlGnBu_r", SPECIES_TISSUES["drug"]),
    "complex": SpeciesStyle("TNF bound by drug", "PuRd", SPECIES_TISSUES["complex"]),
}


def species_style(name: str) -> SpeciesStyle:
    """The style of a species; an unknown one is drawn like a cytokine."""
    return SPECIES_STYLE.get(name, SpeciesStyle(name, "magma", _CYTOKINE_TISSUES))


# --------------------------------------------------------------------------------------------
# Clinical ranges (docs/model.md, "Clinical ranges").
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClinicalRange:
    """A measured range of a synovial-fluid quantity, in the unit of the summary it applies to."""

    summary: str  # summary name in the run file
    group: str  # "healthy", "OA" or "RA"
    low: float
    high: float
    label: str
    source: str
    centre: float | None = None  # mean or median, drawn as a dotted line


_KOKEBIE = "Kokebie et al. 2011, Arthritis Res Ther 13:R50"
_WESTACOTT = "Westacott et al. 1990, Ann Rheum Dis 49:676"
_SOHN = "Sohn et al. 2012, Arthritis Res Ther 14:R7"
_KOLBA = "Kolba 1984, Prim Care 11:211"

#: Synovial-fluid ranges of healthy joints, osteoarthritis (OA) and rheumatoid arthritis (RA), from docs/model.md.
CLINICAL_RANGES: tuple[ClinicalRange, ...] = (
    ClinicalRange("synovial_fluid_leukocytes", "healthy", 0.0, 200.0, "normal < 200 cells/µL", _KOLBA),
    ClinicalRange("synovial_fluid_leukocytes", "OA", 0.0, 2000.0, "OA < 2000 cells/µL", _KOKEBIE),
    ClinicalRange("synovial_fluid_leukocytes", "RA", 7000.0, 25000.0, "RA 7000-25000 cells/µL", _KOKEBIE),
    ClinicalRange("synovial_fluid_il1", "OA", 27.8 - 4.5, 27.8 + 4.5, "OA 27.8 ± 4.5 pg/mL (Westacott)", _WESTACOTT, 27.8),
    ClinicalRange("synovial_fluid_il1", "RA", 130.0 - 22.0, 130.0 + 22.0, "RA 130 ± 22 pg/mL (Westacott)", _WESTACOTT, 130.0),
    ClinicalRange("synovial_fluid_il1", "OA", 1.0, 1.7, "OA median 1.1, IQR 1.0-1.7 pg/mL (Sohn)", _SOHN, 1.1),
    ClinicalRange("synovial_fluid_tnf", "OA", 0.0, 13.0, "OA median 2.9, IQR 0-13 pg/mL (Sohn)", _SOHN, 2.9),
    # docs/model.md: "of order 10-400 pg/mL (Westacott's abstract is self-contradictory)".
    ClinicalRange("synovial_fluid_tnf", "RA", 10.0, 400.0, "RA ~10-400 pg/mL", f"order of magnitude; {_WESTACOTT}"),
)
GROUP_COLOUR = {"healthy": "#3a9a4a", "OA": "#3b7dd8", "RA": "#d8453b"}

#: The four panels of the time-course figure: summary name, title, log y axis.
TIMECOURSE_PANELS = (
    ("synovial_fluid_tnf", "Synovial-fluid TNF", True),
    ("synovial_fluid_il1", "Synovial-fluid IL-1β", True),
    ("synovial_fluid_leukocytes", "Synovial-fluid white cells", True),
    ("cartilage_integrity", "Cartilage integrity (mean)", False),
)

_UNIT_TEXT = {"1": "fraction", "cells/uL": "cells/µL", "": ""}


def _unit(run: RunFile, name: str) -> str:
    unit = run.units.get(name, "")
    return _UNIT_TEXT.get(unit, unit)


@dataclasses.dataclass(frozen=True)
class RunEvents:
    """What a run's config says about its anatomy and its events (from the file's ``config_toml``)."""

    bones: tuple[str, str] | None = None  # (upper, lower) bone names of a joint preset; None otherwise
    injury_end_h: float | None = None  # injury onset + duration, h; None without an injury
    dose_times_h: tuple[float, ...] = ()  # dose (start) times, h
    drug: str = ""  # e.g. "etanercept 50 mg sc"


def run_events(run: RunFile) -> RunEvents:
    """The bones, the injury's end and the dose times of a run, read from its stored config.

    A file without a config (or one this version cannot read) gives no events and no bone names.
    """
    text = run.config_toml
    if not text:
        return RunEvents()
    try:
        from ..physics import dose_times
        from ..setup import config_from_toml

        config = config_from_toml(text)
    except Exception:  # an older or foreign config: plot without the events
        return RunEvents()
    geometry, injury, drug = config.geometry, config.injury, config.drug
    bones = PRESET_BONES.get(geometry.preset) if geometry.kind == "joint" else None
    injury_end = float(injury.onset_h + injury.duration_h) if injury.enabled else None
    doses: tuple[float, ...] = ()
    name = ""
    if drug.enabled:
        doses = dose_times(drug.first_dose_h, drug.loading_h, drug.interval_h, config.run.t_end_h)
        name = f"{drug.name} {drug.dose:g} mg {drug.route}"
    return RunEvents(bones, injury_end, doses, name)


def new_figure(size_in: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size_in, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _quarter(x: float) -> float:
    """Round a size up to a multiple of 0.25 in, so size x integer dpi is an exact pixel count."""
    return math.ceil(x * 4 - 1e-9) / 4


# --------------------------------------------------------------------------------------------
# Choosing frames and slices.
# --------------------------------------------------------------------------------------------


def _frames_for_times(time: np.ndarray, times: Sequence[float], run_name: str) -> list[int]:
    """Nearest frame of each requested time (hours); ValueError for a time outside the run."""
    if len(time) == 0:
        raise ValueError(f"{run_name} has no committed frames to plot")
    t0, t1 = float(time[0]), float(time[-1])
    tol = 1e-9 * max(1.0, abs(t0), abs(t1))
    frames: list[int] = []
    for t in times:
        t = float(t)
        if not (math.isfinite(t) and t0 - tol <= t <= t1 + tol):
            raise ValueError(f"time {t:g} h is outside the run {run_name}, whose frames span t = {t0:g} .. {t1:g} h")
        k = int(np.argmin(np.abs(time - t)))
        if k not in frames:
            frames.append(k)
    return sorted(frames)


def default_frames(time: np.ndarray, peak_series: np.ndarray | None, n: int = 4) -> list[int]:
    """``n`` frames spread over the run: first, peak of ``peak_series`` after the first, middle, last (then quartiles)."""
    count = len(time)
    if count <= n:
        return list(range(count))
    wanted = [0, count - 1]
    later = None if peak_series is None else np.asarray(peak_series, dtype=float)[1:count]
    if later is not None and np.isfinite(later).any():
        # The peak after the first frame: the initial state may hold the series' maximum (a
        # baseline decaying while a local injury barely moves the mean), which shows nothing new.
        wanted.append(1 + int(np.nanargmax(later)))
    t0, t1 = float(time[0]), float(time[-1])
    for fraction in (0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875):
        wanted.append(int(np.argmin(np.abs(time - (t0 + fraction * (t1 - t0))))))
    chosen: list[int] = []
    for k in wanted:
        if k not in chosen:
            chosen.append(k)
        if len(chosen) == n:
            break
    return sorted(chosen)


def chosen_frames(run: RunFile, times: Sequence[float] | None) -> list[int]:
    """The frames nearest ``times`` (h), or by default the first, the fluid TNF peak, the middle and the
    last; ValueError for an empty ``times``, a time outside the run or a run without frames."""
    time = run.time
    if times is None:
        if len(time) == 0:
            raise ValueError(f"{run.path.name} has no committed frames to plot")
        return default_frames(time, run.summary.get("synovial_fluid_tnf"))
    if len(times) == 0:
        raise ValueError("times is empty: give at least one time (h), or None for the default four")
    return _frames_for_times(time, list(times), run.path.name)


def movie_frames(count: int, max_frames: int = MOVIE_MAX_FRAMES) -> list[int]:
    """All frames, or ``max_frames`` of them evenly spread (first and last included)."""
    if count <= max_frames:
        return list(range(count))
    return sorted({int(round(k)) for k in np.linspace(0, count - 1, max_frames)})


@dataclasses.dataclass(frozen=True)
class _View:
    """A 2D picture of the grid: the whole 2D grid, or one slice of a 3D grid."""

    index: tuple  # applied to a spatial array
    extent: tuple[float, float, float, float]  # left, right, bottom, top, mm
    xc: np.ndarray  # cell centres along the horizontal axis, mm
    yc: np.ndarray  # cell centres along the vertical axis, mm
    xlabel: str
    ylabel: str
    name: str  # "" in 2D, e.g. "y = 22.0 mm" in 3D
    long_axis_vertical: bool = False  # the bones' long axis (grid axis 0) runs up the picture


def _views(run: RunFile, slice_point_mm: Sequence[float] | None) -> list[_View]:
    grid = run.grid
    centres = [grid.axis_centres(a) for a in range(grid.ndim)]
    lo = [o for o in grid.origin]
    hi = [o + e for o, e in zip(grid.origin, grid.extent)]

    def view(index, h_axis, v_axis, names, name=""):
        return _View(
            index=index,
            extent=(lo[h_axis], hi[h_axis], lo[v_axis], hi[v_axis]),
            xc=centres[h_axis],
            yc=centres[v_axis],
            xlabel=f"{names[h_axis]} (mm)",
            ylabel=f"{names[v_axis]} (mm)",
            name=name,
            long_axis_vertical=v_axis == 0,
        )

    if grid.ndim == 2:
        if slice_point_mm is not None:
            raise ValueError(f"slice_point_mm applies to 3D runs only; {run.path.name} is 2D")
        return [view((slice(None), slice(None)), 1, 0, ("y", "x"))]
    if slice_point_mm is None:
        point = [(a + b) / 2 for a, b in zip(lo, hi)]
    else:
        point = [float(v) for v in slice_point_mm]
        if len(point) != 3:
            raise ValueError(f"slice_point_mm needs 3 values (z, y, x in mm), got {list(slice_point_mm)}")
        for axis, (p, a, b) in enumerate(zip(point, lo, hi)):
            if not a <= p <= b:
                raise ValueError(
                    f"slice_point_mm {'zyx'[axis]} = {p:g} mm is outside the domain ({'zyx'[axis]} = {a:g} .. {b:g} mm)"
                )
    k, j, i = (int(np.argmin(np.abs(c - p))) for c, p in zip(centres, point))
    names = ("z", "y", "x")
    s = slice(None)
    return [
        view((s, j, s), 2, 0, names, f"y = {centres[1][j]:.4g} mm"),  # vertical x-z plane, as the 2D section
        view((s, s, i), 1, 0, names, f"x = {centres[2][i]:.4g} mm"),  # vertical y-z plane
        view((k, s, s), 2, 1, names, f"z = {centres[0][k]:.4g} mm"),  # horizontal x-y plane
    ]


# --------------------------------------------------------------------------------------------
# Colour scales and drawing.
# --------------------------------------------------------------------------------------------


def _habitat(labels: np.ndarray, style: SpeciesStyle) -> np.ndarray:
    return np.isin(labels, [int(t) for t in style.tissues])


def _norm(values: np.ndarray, style: SpeciesStyle, log: bool | None) -> mcolors.Normalize:
    """One colour scale for all the given values (the species' cells, every chosen frame)."""
    if style.fixed_range is not None:
        return mcolors.Normalize(*style.fixed_range)
    finite = values[np.isfinite(values)]
    vmax = float(finite.max()) if finite.size else 0.0
    if vmax <= 0.0:
        return mcolors.Normalize(0.0, 1.0)
    positive = finite[finite > 0]
    floor = max(vmax * LOG_FLOOR, float(positive.min()))
    if log is None:
        # The 1st percentile, so a few round-off-sized cells do not decide the scale.
        log = vmax / float(np.percentile(positive, 1)) > LOG_SPAN
    if log:
        return mcolors.LogNorm(vmin=min(floor, vmax / 10), vmax=vmax, clip=False)
    return mcolors.Normalize(0.0, vmax)


def _cmap(style: SpeciesStyle) -> mcolors.Colormap:
    cmap = matplotlib.colormaps[style.cmap]
    if style.cmap in CMAP_START:
        # Start above the black end, so the dark tissue outlines stay visible over low values.
        cmap = mcolors.ListedColormap(cmap(np.linspace(CMAP_START[style.cmap], 1.0, 256)), name=f"{style.cmap}_lifted")
    return cmap.with_extremes(bad=(0.0, 0.0, 0.0, 0.0), under=cmap(0.0), over=cmap(1.0))


def _backdrop(labels: np.ndarray, habitat: np.ndarray) -> np.ndarray:
    """RGB picture of the tissues under the data: bone grey, excluded white, other tissues light grey."""
    rgb = np.empty((*labels.shape, 3))
    rgb[...] = OTHER_TISSUE_RGB
    rgb[labels == Tissue.BONE] = BONE_RGB
    rgb[labels == Tissue.EXCLUDED] = EXCLUDED_RGB
    rgb[habitat] = EXCLUDED_RGB
    return rgb


def _outlines(ax, labels: np.ndarray, view: _View) -> None:
    """Boundaries between tissues: the 0.5 contour of each tissue's indicator (cell-centre grid)."""
    for code in np.unique(labels):
        inside = (labels == code).astype(float)
        if inside.all() or min(labels.shape) < 2:
            continue
        ax.contour(view.xc, view.yc, inside, levels=[0.5], **OUTLINE)


def _masked(field2d: np.ndarray, habitat2d: np.ndarray, norm: mcolors.Normalize) -> np.ma.MaskedArray:
    """The field where the species lives; on a log scale zeros get the lowest colour, not a hole."""
    field2d = np.asarray(field2d, dtype=float)
    if isinstance(norm, mcolors.LogNorm):
        assert norm.vmin is not None  # the maps' norms are made with their limits
        field2d = np.where(field2d <= 0, 0.5 * norm.vmin, field2d)
    return np.ma.masked_where(~habitat2d | ~np.isfinite(field2d), field2d)


def _draw_map(ax, field2d, labels2d, habitat2d, view: _View, cmap, norm) -> AxesImage:
    common = {"extent": view.extent, "origin": "lower", "interpolation": "nearest"}
    ax.imshow(_backdrop(labels2d, habitat2d), **common)
    image = ax.imshow(_masked(field2d, habitat2d, norm), cmap=cmap, norm=norm, **common)
    _outlines(ax, labels2d, view)
    ax.set_xlim(view.extent[:2])
    ax.set_ylim(view.extent[2:])
    ax.set_aspect("equal")
    return image


def _draw_tissue_key(ax, labels2d: np.ndarray, view: _View) -> None:
    """The tissues of a view in the key colours (a QuadMesh, so the maps stay the only images)."""
    codes = [int(t) for t in Tissue]
    cmap = mcolors.ListedColormap([TISSUE_KEY_RGB[Tissue(c)] for c in codes])
    norm = mcolors.BoundaryNorm(np.arange(len(codes) + 1) - 0.5, len(codes))
    x = np.linspace(view.extent[0], view.extent[1], len(view.xc) + 1)
    y = np.linspace(view.extent[2], view.extent[3], len(view.yc) + 1)
    ax.pcolormesh(x, y, np.asarray(labels2d), cmap=cmap, norm=norm, gid="tissue-key", rasterized=True)
    _outlines(ax, labels2d, view)
    ax.set_xlim(view.extent[:2])
    ax.set_ylim(view.extent[2:])
    ax.set_aspect("equal")


def _label_bones(ax, labels2d: np.ndarray, view: _View, bones: tuple[str, str] | None) -> None:
    """Write the upper and lower bone's names on them (a joint preset's vertical views only)."""
    if bones is None or not view.long_axis_vertical:
        return
    yy, xx = np.meshgrid(view.yc, view.xc, indexing="ij")
    middle = (view.extent[2] + view.extent[3]) / 2
    bone = np.asarray(labels2d) == Tissue.BONE
    for name, side, where in zip(bones, (yy > middle, yy < middle), ("upper", "lower")):
        cells = bone & side
        if not cells.any():
            continue
        ax.text(
            float(np.median(xx[cells])), float(np.median(yy[cells])), name, ha="center", va="center", fontsize=7,
            fontstyle="italic", color="#1f1f1f", gid=f"bone:{where}", zorder=5,
            bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1.0},
        )  # fmt: skip


def _tissue_legend(fig: Figure, labels: np.ndarray, habitat: np.ndarray, style: SpeciesStyle) -> None:
    """One legend under the maps: the key's colours, the greys of the maps, the outlines."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = set(np.unique(labels).tolist())
    order = (Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE, Tissue.CARTILAGE, Tissue.BONE, Tissue.EXCLUDED)
    handles: list[Artist] = [
        Patch(facecolor=TISSUE_KEY_RGB[t], edgecolor="0.4", lw=0.5, label=TISSUE_TEXT[t]) for t in order if int(t) in present
    ]
    absent = ~habitat & ~np.isin(labels, [int(Tissue.BONE), int(Tissue.EXCLUDED)])
    if absent.any():
        handles.append(
            Patch(facecolor=OTHER_TISSUE_RGB, edgecolor="0.4", lw=0.5, label=f"light grey: tissue without {style.label}")
        )
    handles.append(Line2D([], [], color=OUTLINE["colors"], lw=0.8, label="tissue boundary"))
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 5), frameon=False,
        title="Tissues (key in the first column; on the maps bone is grey, outside the model white)",
        title_fontsize=7, handlelength=1.4, columnspacing=1.2,
    )  # fmt: skip


def _peak_frame(run: RunFile) -> int | None:
    """The frame of the synovial-fluid TNF peak after the first (as :func:`default_frames` picks it)."""
    series = run.summary.get("synovial_fluid_tnf")
    if series is None or len(series) < 2:
        return None
    later = np.asarray(series, dtype=float)[1:]
    return 1 + int(np.nanargmax(later)) if np.isfinite(later).any() else None


def _colorbar(fig: Figure, image: AxesImage, axes, label: str, norm: mcolors.Normalize, rows: int = 1):
    extend = "min" if isinstance(norm, mcolors.LogNorm) else "neither"
    bar = fig.colorbar(image, ax=axes, label=label, extend=extend, shrink=0.9, aspect=20 * rows, pad=0.02, extendfrac=0.03)
    bar.ax.tick_params(labelsize=RC["ytick.labelsize"])
    return bar


def _species_label(run: RunFile, species: str) -> str:
    unit = _unit(run, species)
    return f"{species_style(species).label} ({unit})" if unit else species_style(species).label


def _map_layout(views: Sequence[_View], n_cols: int) -> tuple[tuple[float, float], list[float]]:
    """Figure size (inches, multiples of 0.25) and row height ratios of a map figure."""
    ratios = [(v.extent[3] - v.extent[2]) / (v.extent[1] - v.extent[0]) for v in views]
    width = (n_cols + 1) * PANEL_WIDTH_IN + COLORBAR_IN  # + 1: the tissue key
    # Panels end up narrower than PANEL_WIDTH_IN (labels, colour bar): 0.9 of it, plus title and labels.
    height = sum(0.9 * PANEL_WIDTH_IN * r for r in ratios) + 0.7 * len(views) + 0.4 + LEGEND_IN
    return (_quarter(width), _quarter(height)), ratios


def map_figure_size(run: RunFile, n_times: int, slice_point_mm: Sequence[float] | None = None) -> tuple[float, float]:
    """Size (inches) of the map figure of ``run`` with ``n_times`` columns (and the tissue key)."""
    return _map_layout(_views(run, slice_point_mm), n_times)[0]


def map_figure(
    run: RunFile,
    species: str,
    frames: Sequence[int],
    *,
    log: bool | None = None,
    slice_point_mm: Sequence[float] | None = None,
) -> Figure:
    """The map figure of one species: columns are frames; rows are slices (3D) or the grid (2D)."""
    style = species_style(species)
    views = _views(run, slice_point_mm)
    time = run.time
    labels = run.labels
    habitat = _habitat(labels, style)
    data = {k: run.field(species, k) for k in frames}
    norm = _norm(np.concatenate([data[k][habitat] for k in frames]), style, log)
    cmap = _cmap(style)

    events = run_events(run)
    peak = _peak_frame(run)
    size, ratios = _map_layout(views, len(frames))
    fig = new_figure(size)
    grid = fig.subplots(len(views), len(frames) + 1, squeeze=False, sharex="row", sharey="row", height_ratios=ratios)
    keys, axes = grid[:, 0], grid[:, 1:]
    image = None
    for row, view in enumerate(views):
        key = keys[row]
        _draw_tissue_key(key, labels[view.index], view)
        _label_bones(key, labels[view.index], view, events.bones)
        key.set_title(f"tissues, {view.name}" if view.name else "tissues")
        key.set_ylabel(view.ylabel)
        if row == len(views) - 1 or view.xlabel != views[row + 1].xlabel:
            key.set_xlabel(view.xlabel)
        for col, k in enumerate(frames):
            ax = axes[row, col]
            image = _draw_map(ax, data[k][view.index], labels[view.index], habitat[view.index], view, cmap, norm)
            if col == 0:
                _label_bones(ax, labels[view.index], view, events.bones)
            title = f"t = {time[k]:g} h"
            ax.set_title(f"{title}, {view.name}" if view.name else title)
            if k == peak and row == 0:
                value = float(run.summary["synovial_fluid_tnf"][k])
                unit = _unit(run, "synovial_fluid_tnf")
                ax.text(
                    0.5, 0.98, f"fluid TNF peak: {value:.3g} {unit}".rstrip(), transform=ax.transAxes, ha="center",
                    va="top", fontsize=7, fontweight="bold", gid="tnf-peak", zorder=6,
                    bbox={"facecolor": "white", "alpha": 0.85, "lw": 0.5, "edgecolor": "#d8453b", "pad": 1.5},
                )  # fmt: skip
            if style.fixed_range is not None and habitat[view.index].any():
                low = float(np.nanmin(data[k][view.index][habitat[view.index]]))
                ax.text(0.02, 0.02, f"min {low:.4f}", transform=ax.transAxes, fontsize=7, va="bottom", ha="left")
            if row == len(views) - 1 or view.xlabel != views[row + 1].xlabel:
                ax.set_xlabel(view.xlabel)
            ax.tick_params(labelleft=False)
    assert image is not None  # one map per view at least
    _colorbar(fig, image, axes, _species_label(run, species), norm, rows=len(views))
    _tissue_legend(fig, labels, habitat, style)
    scale = "log scale" if isinstance(norm, mcolors.LogNorm) else "linear scale"
    fig.suptitle(f"{style.label} ({_unit(run, species) or 'no unit'}), {run.path.name}: {scale}")
    return fig


# --------------------------------------------------------------------------------------------
# Clinical time courses.
# --------------------------------------------------------------------------------------------


def _log_limits(series: np.ndarray, ranges: Sequence[ClinicalRange]) -> tuple[float, float]:
    values = [v for v in np.asarray(series, dtype=float) if math.isfinite(v) and v > 0]
    bounds = [b for r in ranges for b in (r.low, r.high) if b > 0]
    top = max(values + bounds, default=1.0) * 2.0
    bottom = min(values + bounds, default=top / 100) / 2.0
    return max(bottom, top * 1e-7), top


def shade_range(ax, r: ClinicalRange, name: str) -> tuple[float, float] | None:
    """Shade a clinical range within the axes' y limits (gid ``range:<name>:<group>:<label>``).

    Returns the (low, high) drawn, or None when the range lies outside the limits.
    """
    bottom, top = ax.get_ylim()
    low, high = max(r.low, bottom), min(r.high, top)
    if low >= high:
        return None
    colour = GROUP_COLOUR.get(r.group, "0.5")
    ax.axhspan(low, high, color=colour, alpha=0.14, lw=0, gid=f"range:{name}:{r.group}:{r.label}", zorder=1)
    ax.set_ylim(bottom, top)
    return low, high


def mark_events(ax, events: RunEvents, t0: float, t1: float, *, text: bool) -> list:
    """Vertical lines at the injury's end and each dose (gids ``event:injury_end``, ``event:dose:<k>``).

    With ``text``, a short rotated label beside each line (only the first dose's when there are more
    than :data:`MAX_DOSE_LABELS`). Events outside ``t0 .. t1`` are left out. Returns the lines drawn.
    """
    lines = []
    blend = ax.get_xaxis_transform()
    span = max(t1 - t0, 1e-12)

    def label(t: float, y: float, words: str, colour: str, gid: str) -> None:
        # Beside the line at the top, on the side with room (left of a line near the right edge).
        right = (t - t0) / span > 0.8
        ax.text(
            t, y, f"{words} " if right else f" {words}", ha="right" if right else "left", va="top", fontsize=6.5,
            color=colour, transform=blend, zorder=4, gid=gid,
            bbox={"facecolor": "white", "alpha": 0.75, "lw": 0, "pad": 0.6},
        )  # fmt: skip

    if events.injury_end_h is not None and t0 <= events.injury_end_h <= t1:
        t = events.injury_end_h
        lines.append(ax.axvline(t, **INJURY_END_STYLE, gid="event:injury_end", zorder=2))
        if text:
            label(t, 0.985, "injury ends", INJURY_END_STYLE["color"], "event-label:injury_end")
    doses = events.dose_times_h
    for k, t in enumerate(doses):
        if not t0 <= t <= t1:
            continue
        lines.append(ax.axvline(t, **DOSE_STYLE, gid=f"event:dose:{k}", zorder=2))
        if text and (k == 0 or len(doses) <= MAX_DOSE_LABELS):
            words = f"dose {k + 1}" if len(doses) <= MAX_DOSE_LABELS else f"dose 1 of {len(doses)}"
            label(t, 0.925, words, DOSE_STYLE["color"], f"event-label:dose:{k}")
    return lines


def _timecourse_legend(fig: Figure, events: RunEvents, t0: float, t1: float) -> None:
    """The figure's legend: the model line, the events, the range colours, the two OA IL-1β ranges."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Artist] = [Line2D([], [], color="black", lw=1.4, label="model (synovial-fluid mean)")]
    if events.injury_end_h is not None and t0 <= events.injury_end_h <= t1:
        handles.append(Line2D([], [], **INJURY_END_STYLE, label=f"injury source ends, t = {events.injury_end_h:g} h"))
    shown = [t for t in events.dose_times_h if t0 <= t <= t1]
    if shown:
        when = ", ".join(f"{t:g}" for t in shown[:4]) + (", ..." if len(shown) > 4 else "")
        handles.append(Line2D([], [], **DOSE_STYLE, label=f"{events.drug} dose ({len(shown)}), t = {when} h"))
    for group, words in (("healthy", "healthy range"), ("OA", "osteoarthritis (OA) range"), ("RA", "rheumatoid (RA) range")):
        handles.append(Patch(facecolor=GROUP_COLOUR[group], alpha=0.25, lw=0, label=words))
    handles.append(Line2D([], [], color="0.4", lw=0.7, ls=":", label="dotted: the range's mean or median"))
    il1 = [r for r in CLINICAL_RANGES if r.summary == "synovial_fluid_il1" and r.group == "OA"]
    note = (
        "IL-1β has two OA ranges (blue): two studies of OA synovial fluid that differ about 25-fold, "
        + "; ".join(f"{r.label.split(' (')[0].removeprefix('OA ')} ({r.source})" for r in il1)
        + ". Both are shown; the model's resting joint takes Sohn's median. Ranges: docs/model.md, \"Clinical ranges\"."
    )
    fig.legend(
        handles=handles, loc="outside lower center", ncol=4, frameon=False, fontsize=7,
        title=textwrap.fill(note, IL1_NOTE_WIDTH), title_fontsize=7,
    )  # fmt: skip


def timecourse_figure(run: RunFile) -> Figure:
    """The clinical summaries against time (2 x 2 panels) with the clinical ranges shaded and the
    injury's end and the drug doses marked."""
    time = run.time
    summary = run.summary
    events = run_events(run)
    t0 = float(time[0]) if len(time) else 0.0
    t1 = float(time[-1]) if len(time) else 0.0
    fig = new_figure(TIMECOURSE_SIZE_IN)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (name, title, log) in zip(axes, TIMECOURSE_PANELS):
        unit = _unit(run, name)
        ax.set_title(title)
        ax.set_ylabel(unit or name)
        ax.grid(True, which="major", lw=0.4, alpha=0.4)
        if name not in summary:
            ax.text(0.5, 0.5, f"no '{name}' in this run", transform=ax.transAxes, ha="center", va="center")
            continue
        series = summary[name]
        ranges = [r for r in CLINICAL_RANGES if r.summary == name]
        ax.plot(time, series, color="black", lw=1.4, gid=f"summary:{name}", label="model", zorder=3)
        if log:
            ax.set_yscale("log")
            bottom, top = _log_limits(series, ranges)
            ax.set_ylim(bottom, top)
        else:
            ax.set_ylim(0.0, 1.05)
            if len(series) and np.isfinite(series).any():
                low = float(np.nanmin(series))
                ax.text(0.98, 0.05, f"minimum {low:.5f}", transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
        for r in ranges:
            if (span := shade_range(ax, r, name)) is None:
                continue
            low, high = span
            colour = GROUP_COLOUR.get(r.group, "0.5")
            if r.centre is not None:
                ax.axhline(r.centre, color=colour, lw=0.7, ls=":", zorder=2)
            middle = math.sqrt(low * high) if log else (low + high) / 2
            ax.text(
                0.99, middle, r.label, transform=ax.get_yaxis_transform(), ha="right", va="center",
                fontsize=6.5, color=colour, zorder=4, bbox={"facecolor": "white", "alpha": 0.6, "lw": 0, "pad": 0.8},
            )  # fmt: skip
        if len(time):
            ax.set_xlim(float(time[0]), float(time[-1]) if time[-1] > time[0] else float(time[0]) + 1.0)
    for row, ax in enumerate(axes):
        mark_events(ax, events, t0, t1, text=row < 2)
    for ax in axes[2:]:
        ax.set_xlabel("time (h)")
    _timecourse_legend(fig, events, t0, t1)
    fig.suptitle(f"Clinical summaries, {run.path.name} (shaded: measured synovial-fluid ranges, healthy green, OA blue, RA red)")
    return fig


# --------------------------------------------------------------------------------------------
# Movie.
# --------------------------------------------------------------------------------------------


def _write_movie(run: RunFile, species: str, out_dir: Path, dpi: int, slice_point_mm) -> Path:
    style = species_style(species)
    views = _views(run, slice_point_mm)
    frames = movie_frames(run.n_frames)
    time = run.time
    labels = run.labels
    habitat = _habitat(labels, style)
    # Keep only the slices in memory: a 3D run's frames can be large.
    slices = {k: [run.field(species, k)[v.index] for v in views] for k in frames}
    values = np.concatenate([s[habitat[v.index]] for k in frames for s, v in zip(slices[k], views)])
    norm = _norm(values, style, None)
    cmap = _cmap(style)

    ratios = [(v.extent[3] - v.extent[2]) / (v.extent[1] - v.extent[0]) for v in views]
    panel = 3.0
    size = (_quarter(len(views) * panel + COLORBAR_IN), _quarter(panel * max(ratios) + 0.6))
    # H.264 wants even pixel counts: sizes are multiples of 0.25 in, so a dpi multiple of 8 gives them.
    movie_dpi = 8 * max(1, round(min(dpi, 100) / 8))
    fig = new_figure(size)
    axes = fig.subplots(1, len(views), squeeze=False)[0]
    images = []
    for ax, view, first in zip(axes, views, slices[frames[0]]):
        images.append(_draw_map(ax, first, labels[view.index], habitat[view.index], view, cmap, norm))
        ax.set_xlabel(view.xlabel)
        ax.set_ylabel(view.ylabel)
        if view.name:
            ax.set_title(view.name)
    _colorbar(fig, images[0], list(axes), _species_label(run, species), norm)
    title = fig.suptitle("")

    if shutil.which("ffmpeg"):
        path = out_dir / f"movie_{species}.mp4"
        writer: animation.AbstractMovieWriter
        writer = animation.FFMpegWriter(fps=MOVIE_FPS, codec="h264", extra_args=["-pix_fmt", "yuv420p"])
    else:
        path = out_dir / f"movie_{species}.gif"
        writer = animation.PillowWriter(fps=MOVIE_FPS)
    with writer.saving(fig, str(path), movie_dpi):
        for k in frames:
            for image, view, data in zip(images, views, slices[k]):
                image.set_data(_masked(data, habitat[view.index], norm))
            title.set_text(f"{style.label}, t = {time[k]:g} h, {run.path.name}")
            writer.grab_frame()
    return path


# --------------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------------


def plot_run(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    times: Sequence[float] | None = None,
    log: bool | None = None,
    slice_point_mm: Sequence[float] | None = None,
    movie: bool = False,
    movie_species: str = "tnf",
    dpi: int = 120,
) -> list[Path]:
    """Write the figures of a run file into ``out_dir`` (created if needed).

    Args:
        path: the run's ``.h5`` file.
        out_dir: folder for the figures; existing files of the same names are replaced.
        times: times to map, hours; each is drawn at the nearest frame. Default: four times spread
            over the run (the first frame, the peak of synovial-fluid TNF, the middle, the last).
        log: colour scale of the concentration maps: True log, False linear, None (default) log when
            the positive values span more than two decades. Cartilage integrity is always linear 0..1.
        slice_point_mm: 3D runs: the point (z, y, x, mm) the three slices pass through; default the
            domain centre (the joint centre). Not allowed for a 2D run.
        movie: also write an animation of ``movie_species`` over all frames (at most 100):
            ``movie_<species>.mp4`` when ffmpeg is on the PATH, else ``movie_<species>.gif``.
        movie_species: the species of the movie.
        dpi: resolution of the PNGs (a figure of w x h inches is w*dpi x h*dpi pixels).

    Returns:
        The files written: ``map_<species>.png`` for each species (run order), ``timecourses.png``,
        and the movie if asked for.

    Raises:
        ValueError: a time outside the run, a bad slice point, an unknown movie species, a run
            without frames.
    """
    path = Path(path)
    out_dir = Path(out_dir)
    if int(dpi) < 10:
        raise ValueError(f"dpi must be at least 10, got {dpi}")
    written: list[Path] = []
    with RunFile.open(path) as run, matplotlib.rc_context(RC):
        frames = chosen_frames(run, times)
        if movie and movie_species not in run.species:
            raise ValueError(f"movie species {movie_species!r} is not in {path.name}; it has {run.species}")
        _views(run, slice_point_mm)  # validate the slice point before drawing anything
        out_dir.mkdir(parents=True, exist_ok=True)
        for species in run.species:
            fig = map_figure(run, species, frames, log=log, slice_point_mm=slice_point_mm)
            written.append(save_figure(fig, out_dir / f"map_{species}.png", dpi))
        written.append(save_figure(timecourse_figure(run), out_dir / "timecourses.png", dpi))
        if movie:
            written.append(_write_movie(run, movie_species, out_dir, int(dpi), slice_point_mm))
    return written


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi, metadata={"Software": f"synovia (matplotlib {matplotlib.__version__})"})
    return path
