"""Figures of a study folder (``synovia sweep``): outcome measures against the swept values.

:func:`plot_study` writes, into one folder:

``study.png``
    The outcome measures of :data:`solver._study.MEASURES` (peaks, time of the TNF peak, final
    values, lowest cartilage integrity), one panel each, against the varied config values:

    - one varied key, or keys varied together (``combine = "zip"``): a line over the first key's
      values, with the clinical ranges shaded on the final synovial-fluid panels;
    - two keys on a grid: a heat map per measure (first key across, second up), values written in
      the cells when there are at most 36;
    - three or more keys on a grid: one row per key, each point a dot (its measure against that
      key's value), so every key's effect and the spread from the others show.

    Points without a complete run are left out (grey cells in a heat map) and counted in the title.
``study_timecourses.png``
    The clinical summaries of every point against time, coloured by the first key's value (colour
    bar), the clinical ranges shaded; unfinished points dashed.
``summary.csv``
    The table behind the figures (also in the study folder).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import cm
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fields import atomic_write_text

from ..study import MEASURES, START, Measure, StudyTable, read_study
from ._run import (
    _UNIT_TEXT,
    CLINICAL_RANGES,
    CMAP_START,
    LOG_SPAN,
    RC,
    TIMECOURSE_PANELS,
    TIMECOURSE_SIZE_IN,
    _log_limits,
    _quarter,
    new_figure,
    save_figure,
    shade_range,
)

__all__ = ["plot_study", "study_figure", "study_timecourse_figure"]

PANEL_IN = (2.6, 2.2)  # one measure panel, inches
MAX_ANNOTATED_CELLS = 36
#: Colormap of each measure's summary series.
MEASURE_CMAP = {
    "synovial_fluid_tnf": "magma",
    "synovial_fluid_il1": "magma",
    "synovial_fluid_leukocytes": "viridis",
    "cartilage_integrity": "cividis",
}
SERIES_CMAP = "plasma"  # time courses, coloured by the first key
LINE_STYLES = ("-", "--", ":", "-.")  # time courses, one per value of the second key
BRANCH_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple")  # one per start of a study with [starts]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compact(v, tiny_digits: int = 1) -> str:
    """A short label for a value: 3 significant digits, thousands as k (12818.6 -> 12.8k).

    Values below 0.01 get ``tiny_digits`` significant digits (5.33e-6 -> 5e-6): in a heat map's
    cells their order of magnitude is what matters; tick labels of swept values ask for 3.
    """
    if isinstance(v, (list, tuple)):
        return str(list(v))
    if not _is_number(v):
        return str(v)
    a = abs(v)
    if 0 < a < 1e-2:
        mantissa, exponent = f"{v:.{tiny_digits - 1}e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    if a >= 1e6:
        mantissa, exponent = f"{v:.2e}".split("e")
        return f"{float(mantissa):.3g}e{int(exponent)}"
    if a >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def compact_text(text: str) -> str:
    """:func:`compact` of a value written as text (line-style keys are compared as text)."""
    try:
        return compact(float(text), 3)
    except ValueError:
        return text


def _hashable(v):
    """A swept value as a dictionary key (a list, e.g. a centre in mm, as a tuple)."""
    return tuple(v) if isinstance(v, list) else v


def _axis(values: Sequence) -> tuple[np.ndarray, list[str] | None, bool]:
    """Positions of a key's values on an axis: numbers where they are, else categories.

    Returns (positions, category labels or None, log axis).
    """
    if all(_is_number(v) for v in values):
        x = np.asarray(values, dtype=float)
        positive = x[x > 0]
        log = bool(len(positive) == len(x) and len(x) > 1 and x.max() / x.min() >= 10.0)
        return x, None, log
    names = list(dict.fromkeys(str(v) for v in values))
    return np.array([names.index(str(v)) for v in values], dtype=float), names, False


def _label(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith("parameters.") else key


def _use_log(values: np.ndarray, m: Measure, log: bool | None) -> bool:
    if m.kind == "time_of_peak" or m.summary == "cartilage_integrity":
        return False
    finite = values[np.isfinite(values)]
    if log is not None:
        return bool(log and finite.size and (finite > 0).all())
    return bool(finite.size and (finite > 0).all() and finite.max() / finite.min() > LOG_SPAN)


def _cmap(m: Measure) -> mcolors.Colormap:
    name = MEASURE_CMAP.get(m.summary, "Blues") if m.kind != "time_of_peak" else "Blues"
    cmap = matplotlib.colormaps[name]
    if name in CMAP_START:
        cmap = mcolors.ListedColormap(cmap(np.linspace(CMAP_START[name], 1.0, 256)), name=f"{name}_lifted")
    return cmap.with_extremes(bad="0.85")


def _shade_ranges(ax, m: Measure) -> None:
    """The clinical ranges of a final value's summary (they describe established disease, not peaks)."""
    if m.kind == "final":
        for r in CLINICAL_RANGES:
            if r.summary == m.summary:
                shade_range(ax, r, m.name)


def _missing_note(table: StudyTable) -> str:
    missing = int((~table.complete).sum())
    return f"; {missing} of {len(table.status)} points not complete, left out" if missing else ""


def _scales(ax, xlog: bool, names: list[str] | None, y: np.ndarray, m: Measure, log: bool | None) -> None:
    """Grid, x scale or category ticks, and y scale of one measure panel."""
    ax.grid(True, lw=0.4, alpha=0.4)
    if xlog:
        ax.set_xscale("log")
    if names is not None:  # long category names are turned so that they do not run into each other
        turned = sum(len(str(n)) for n in names) > 24
        ax.set_xticks(range(len(names)), names, rotation=35 if turned else 0, ha="right" if turned else "center")
    if _use_log(y, m, log):
        ax.set_yscale("log")


def _varied(table: StudyTable) -> list[str]:
    """The varied keys, without the start column."""
    return [k for k in table.keys if k != START]


def _start_groups(table: StudyTable) -> list[tuple[str | None, np.ndarray]]:
    """(start name, indices of its points) per start; one group (None, all) without [starts]."""
    if not table.has_starts or not _varied(table):
        return [(None, np.arange(len(table.values)))]
    col = table.keys.index(START)
    names = list(dict.fromkeys(v[col] for v in table.values))
    return [(name, np.array([i for i, v in enumerate(table.values) if v[col] == name])) for name in names]


def _bistable_spans(table: StudyTable, x: np.ndarray, xlog: bool) -> list[tuple[float, float]]:
    """x ranges of the first varied key where the starts end on different steady states: each bistable
    point's value widened half-way (in the axis' scale) to its neighbours."""
    spans = []
    values = sorted({float(v) for v in x})
    scale = np.log if xlog else (lambda a: a)
    unscale = np.exp if xlog else (lambda a: a)
    for branch in table.branches():
        if not branch["bistable"] or not branch["values"] or not _is_number(branch["values"][0]):
            continue
        v = float(branch["values"][0])
        k = values.index(v)
        lo = unscale(0.5 * (scale(values[k - 1]) + scale(v))) if k > 0 else v
        hi = unscale(0.5 * (scale(values[k + 1]) + scale(v))) if k + 1 < len(values) else v
        spans.append((float(lo), float(hi)))
    return spans


def _line_panels(fig: Figure, table: StudyTable, log: bool | None) -> None:
    varied = _varied(table)
    key = varied[0] if varied else START
    column = table.keys.index(key)
    x, names, xlog = _axis([v[column] for v in table.values])
    together = f" (with {', '.join(_label(k) for k in varied[1:])})" if len(varied) > 1 else ""
    groups = _start_groups(table)
    spans = _bistable_spans(table, x, xlog) if names is None else []
    axes = fig.subplots(2, 4).ravel()
    for ax, m in zip(axes, MEASURES):
        y = table.measures[m.name]
        for g, (start, members) in enumerate(groups):
            order = members[np.argsort(x[members], kind="stable")]
            style = dict(color="black", ls="-") if start is None else dict(color=BRANCH_COLOURS[g % len(BRANCH_COLOURS)])
            ax.plot(x[order], y[order], "o-", ms=3.5, lw=1.2, gid=f"study:{m.name}" + (f":{start}" if start else ""),
                    zorder=3, label=None if start is None else f"from {start}", **style)  # fmt: skip
        for i, (lo, hi) in enumerate(spans):
            ax.axvspan(lo, hi, color="0.6", alpha=0.25, lw=0, zorder=1, gid=f"bistable:{m.name}:{i}")
        ax.set_title(m.label)
        ax.set_ylabel(m.unit)
        _scales(ax, xlog, names, y, m, log)
        if ax.get_yscale() == "log":
            ax.set_ylim(*_log_limits(y[np.isfinite(y)], []))
        elif m.summary == "cartilage_integrity" and m.kind != "time_of_peak":
            ax.set_ylim(0.0, 1.05)
        _shade_ranges(ax, m)
    for ax in axes[4:]:
        ax.set_xlabel(_label(key) + together)
    if len(groups) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        if spans:
            handles.append(Patch(color="0.6", alpha=0.25, label="bistable: the starts end apart"))
        axes[0].legend(handles=handles, loc="best", framealpha=0.8)


def _heatmap_panels(fig: Figure, table: StudyTable, log: bool | None) -> None:
    kx, ky = table.keys
    xs = list(dict.fromkeys(_hashable(v[0]) for v in table.values))
    ys = list(dict.fromkeys(_hashable(v[1]) for v in table.values))
    if _axis(xs)[1] is None:
        xs = sorted(xs)
    if _axis(ys)[1] is None:
        ys = sorted(ys)
    axes = fig.subplots(2, 4).ravel()
    annotate = len(xs) * len(ys) <= MAX_ANNOTATED_CELLS
    fontsize = 6 if len(xs) <= 5 else 5
    for ax, m in zip(axes, MEASURES):
        grid = np.full((len(ys), len(xs)), np.nan)
        for v, value in zip(table.values, table.measures[m.name]):
            grid[ys.index(_hashable(v[1])), xs.index(_hashable(v[0]))] = value
        finite = grid[np.isfinite(grid)]
        if _use_log(grid, m, log):
            norm: mcolors.Normalize | None = mcolors.LogNorm(finite.min(), finite.max()) if finite.min() < finite.max() else None
        elif finite.size:
            low, high = float(finite.min()), float(finite.max())
            norm = mcolors.Normalize(low, high if high > low else low + 1.0)
        else:
            norm = None
        image = ax.imshow(
            np.ma.masked_invalid(grid), origin="lower", cmap=_cmap(m), norm=norm, aspect="auto", gid=f"study:{m.name}"
        )
        ax.set_xticks(range(len(xs)), [compact(v, 3) for v in xs], rotation=45 if len(xs) > 4 else 0)
        ax.set_yticks(range(len(ys)), [compact(v, 3) for v in ys])
        ax.set_title(m.label)
        ax.set_xlabel(_label(kx))
        ax.set_ylabel(_label(ky))
        if annotate:
            for (r, c), value in np.ndenumerate(grid):
                if math.isfinite(value):
                    rgb = image.cmap(image.norm(value))[:3]
                    dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5
                    ax.text(c, r, compact(value), ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")
        bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
        bar.set_label(m.unit, fontsize=7)
        bar.ax.tick_params(labelsize=6)


def _scatter_panels(fig: Figure, table: StudyTable, log: bool | None) -> None:
    varied = _varied(table)
    axes = fig.subplots(len(varied), len(MEASURES), squeeze=False)
    groups = _start_groups(table)
    for row, key in enumerate(varied):
        x, names, xlog = _axis([v[table.keys.index(key)] for v in table.values])
        for ax, m in zip(axes[row], MEASURES):
            y = table.measures[m.name]
            for g, (start, members) in enumerate(groups):
                colour = "black" if start is None else BRANCH_COLOURS[g % len(BRANCH_COLOURS)]
                ax.plot(x[members], y[members], "o", color=colour, ms=2.5, alpha=0.6,
                        gid=f"study:{m.name}:{key}" + (f":{start}" if start else ""))  # fmt: skip
            _scales(ax, xlog, names, y, m, log)
            if row == 0:
                ax.set_title(m.label, fontsize=7)
            ax.set_xlabel(_label(key), fontsize=7)
            if ax is axes[row][0]:
                ax.set_ylabel("value (unit of the column)", fontsize=7)


def study_layout(table: StudyTable) -> str:
    """``"line"``, ``"heatmap"`` or ``"scatter"``: how :func:`study_figure` draws this study.

    With [starts], each start is a line (one varied key, or none) or a colour (scatter).
    """
    varied = _varied(table)
    if table.combine == "zip" or len(varied) <= 1:
        return "line"
    return "heatmap" if len(varied) == 2 and not table.has_starts else "scatter"


def study_figure_size(table: StudyTable) -> tuple[float, float]:
    layout = study_layout(table)
    if layout == "scatter":
        return _quarter(len(MEASURES) * 1.9), _quarter(len(_varied(table)) * 1.8 + 0.6)
    width = 4 * PANEL_IN[0] + (1.6 if layout == "heatmap" else 0.0)
    return _quarter(width), _quarter(2 * PANEL_IN[1] + 0.5)


def study_figure(table: StudyTable, log: bool | None = None) -> Figure:
    """Outcome measures against the varied values (the layout of :func:`study_layout`)."""
    fig = new_figure(study_figure_size(table))
    layout = study_layout(table)
    {"line": _line_panels, "heatmap": _heatmap_panels, "scatter": _scatter_panels}[layout](fig, table, log)
    varied = ", ".join(_label(k) for k in _varied(table)) or "start"
    starts = f" from {len(_start_groups(table))} starts" if table.has_starts and _varied(table) else ""
    fig.suptitle(
        f"Study {table.folder.name}: outcomes against {varied}{starts} ({len(table.status)} points{_missing_note(table)})"
    )
    return fig


def study_timecourse_figure(table: StudyTable) -> Figure:
    """The clinical summaries of every point against time, coloured by the first key."""
    fig = new_figure(TIMECOURSE_SIZE_IN)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    key = table.keys[0]
    x, names, xlog = _axis([v[0] for v in table.values])
    if names is not None:
        norm = mcolors.Normalize(-0.5, len(names) - 0.5)
    elif xlog:
        norm = mcolors.LogNorm(x.min(), x.max())
    else:
        norm = mcolors.Normalize(x.min(), x.max() if x.max() > x.min() else x.min() + 1.0)
    cmap = matplotlib.colormaps[SERIES_CMAP]
    # A second key with few values gets a line style each (legend); points not complete are thin and faint.
    second = list(dict.fromkeys(str(v[1]) for v in table.values)) if len(table.keys) > 1 else []
    styles = dict(zip(second, LINE_STYLES)) if 1 < len(second) <= len(LINE_STYLES) else {}
    t_max = 0.0
    for ax, (name, title, log) in zip(axes, TIMECOURSE_PANELS):
        ax.set_title(title)
        ax.grid(True, lw=0.4, alpha=0.4)
        values = []
        for i, data in enumerate(table.series):
            if data is None or name not in data or not len(data["time"]):
                continue
            done = table.status[i] == "complete"
            style = styles.get(str(table.values[i][1]), "-") if styles else "-"
            ax.plot(data["time"], data[name], style, color=cmap(norm(x[i])), lw=1.1 if done else 0.6,
                    alpha=1.0 if done else 0.5, gid=f"series:{name}:{i}", zorder=3)  # fmt: skip
            values.append(data[name])
            t_max = max(t_max, float(data["time"][-1]))
        unit = table.units.get(name, "")
        ax.set_ylabel(_UNIT_TEXT.get(unit, unit))
        ranges = [r for r in CLINICAL_RANGES if r.summary == name]
        if log:
            ax.set_yscale("log")
            ax.set_ylim(*_log_limits(np.concatenate(values) if values else np.array([]), ranges))
        else:
            ax.set_ylim(0.0, 1.05)
        for r in ranges:
            shade_range(ax, r, name)
    for ax in axes[2:]:
        ax.set_xlabel("time (h)")
        ax.set_xlim(0.0, t_max or 1.0)
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9, pad=0.02)
    bar.set_label(_label(key))
    if names is not None:
        bar.set_ticks(range(len(names)), labels=names)
    if styles:
        handles = [Line2D([], [], color="0.3", ls=ls, lw=1.1, label=f"{_label(table.keys[1])} = {compact_text(v)}")
                   for v, ls in styles.items()]  # fmt: skip
        axes[0].legend(handles=handles, loc="lower right", framealpha=0.8)
    others = f" (other keys: {', '.join(_label(k) for k in table.keys[1:])})" if len(table.keys) > 1 else ""
    fig.suptitle(f"Study {table.folder.name}: clinical summaries of every point, coloured by {_label(key)}{others}")
    return fig


def plot_study(
    folder: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, log: bool | None = None, dpi: int = 120
) -> list[Path]:
    """Write ``study.png``, ``study_timecourses.png`` and ``summary.csv`` of a study folder into ``out_dir``.

    Args:
        folder: the study folder (``synovia sweep -o FOLDER``); points may still be running.
        out_dir: folder for the figures (created if needed).
        log: value scale of the concentration measures: True log, False linear, None (default) log
            when the values span more than two decades.
        dpi: resolution of the PNGs.

    Raises:
        ValueError: not a study folder, or no point has any frame yet.
    """
    if int(dpi) < 10:
        raise ValueError(f"dpi must be at least 10, got {dpi}")
    table = read_study(folder)
    if all(s is None or not len(s["time"]) for s in table.series):
        raise ValueError(f"no point of '{folder}' has run yet: run `synovia sweep` first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(RC):
        written = [
            save_figure(study_figure(table, log), out_dir / "study.png", dpi),
            save_figure(study_timecourse_figure(table), out_dir / "study_timecourses.png", dpi),
        ]
    csv_path = out_dir / "summary.csv"
    atomic_write_text(csv_path, table.csv())
    return [*written, csv_path]
