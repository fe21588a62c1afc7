"""Figures of a fit report: loss curves, data against the fitted model, parameter correlations.

:func:`plot_fit` writes ``<stem>.png`` (loss per iteration for every start, one panel per observed
quantity with the data, their error bars (1 sigma) and the fitted model's curve, and the
correlation matrix of the fitted parameters; log-normal intervals when the fit compared
log-concentrations) and, when the fit used field maps,
``<stem>_maps.png`` (observed, fitted and residual/sigma for each map), and with profiles
``<stem>_profiles.png`` (:func:`profiles_figure`). Same style as the run
figures (solver._plot).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from solver.plot import RC, new_figure, save_figure, species_style

from ._fit import read_report

_UNITS = {"tnf": "pg/mL", "il1": "pg/mL", "leukocytes": "cells/µL", "drug": "µg/mL", "complex": "pg/mL", "cartilage": "fraction"}
_WHERE = {"fluid": "synovial fluid"}
START_COLOUR = "#9a9a9a"
BEST_COLOUR = "#d8453b"
DATA_COLOUR = "#1f1f1f"
MODEL_COLOUR = "#3b7dd8"


def _label(species: str, kind: str, where: str) -> str:
    place = _WHERE.get(kind, f"{kind} {where}".strip())
    return f"{species_style(species).label}, {place}"


def error_bars(value, sigma, log_residuals: bool) -> np.ndarray:
    """Distances (2, n) below and above each value of its 1-sigma interval.

    With ``log_residuals`` the fit compares ln values with a log-scale sd of sigma/value, so the
    interval is value x exp(-+sigma/value): asymmetric and always positive.
    """
    value, sigma = np.asarray(value, float), np.asarray(sigma, float)
    if not log_residuals:
        return np.stack([sigma, sigma])
    positive = value > 0
    factor = np.exp(np.where(positive, sigma / np.where(positive, value, 1.0), 0.0))
    below = np.where(positive, value - value / factor, sigma)
    above = np.where(positive, value * factor - value, sigma)
    return np.stack([below, above])


def fit_figure(report: dict):
    """The loss / data-vs-model / correlation figure of a report (from :func:`read_report`)."""
    obs = report["observations"]
    keys = list(dict.fromkeys(zip(obs["species"], obs["kind"], obs["where"])))
    n_panels = len(keys)
    cols = min(3, max(1, n_panels))
    rows = 1 + math.ceil(n_panels / cols)
    fig = new_figure((3.2 * max(cols, 2), 2.6 * rows))
    grid = fig.add_gridspec(rows, max(cols, 2))
    loss = np.asarray(report["loss_history"], float)
    best = int(report.get("best_start", 0))
    ax = fig.add_subplot(grid[0, 0])
    its = np.arange(loss.shape[0])
    offset = 0.0
    if np.nanmin(loss) <= 0:
        offset = 1e-12 - np.nanmin(loss)
    for s in range(loss.shape[1]):
        if s != best:
            ax.plot(its, loss[:, s] + offset, color=START_COLOUR, lw=0.8, alpha=0.7)
    ax.plot(its, loss[:, best] + offset, color=BEST_COLOUR, lw=1.4, label=f"best of {loss.shape[1]} start(s)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (½ Σ r², whitened)")
    ax.set_title(f"Loss ({report['optimizer']}, {report['status']})")
    ax.legend(loc="upper right")
    ax = fig.add_subplot(grid[0, 1:] if max(cols, 2) > 2 else grid[0, 1])
    names = list(report["names"])
    if "correlation" in report:
        corr = np.asarray(report["correlation"], float)
        im = ax.imshow(np.nan_to_num(corr, nan=0.0), cmap="RdBu_r", vmin=-1, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                text = "n/a" if not np.isfinite(corr[i, j]) else f"{corr[i, j]:.2f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if abs(np.nan_to_num(corr[i, j])) < 0.6 else "white",
                )
        short = [n.replace("diffusivity_", "D_") for n in names]
        ax.set_xticks(range(len(names)), short, rotation=40, ha="right")
        ax.set_yticks(range(len(names)), short)
        fig.colorbar(im, ax=ax, shrink=0.8, label="correlation")
        ident = report.get("identifiable")
        if ident is not None and not np.all(ident):
            weak = [short[i] for i in range(len(names)) if not ident[i]]
            ax.set_title("Parameter correlations; not identifiable: " + ", ".join(weak), color=BEST_COLOUR)
        else:
            ax.set_title("Parameter correlations (Gauss-Newton)")
    else:
        ax.set_axis_off()
        ax.set_title("no uncertainty yet (fit running or interrupted)")
    model = report.get("model")
    for p, key in enumerate(keys):
        ax = fig.add_subplot(grid[1 + p // cols, p % cols])
        sel = [i for i, k in enumerate(zip(obs["species"], obs["kind"], obs["where"])) if k == key]
        t = np.asarray(obs["time_h"])[sel]
        y = np.asarray(obs["value"])[sel]
        log = bool(report.get("log_residuals", False))
        e = error_bars(y, np.asarray(obs["sigma"])[sel], log)
        # a censored value is a detection limit the measurement fell below: drawn as the limit, not as data
        below = np.asarray(obs["censored"], bool)[sel] if "censored" in obs else np.zeros(len(sel), bool)
        measured = ~below
        label = "data, 1σ (log-normal)" if log else "data ± 1σ"
        if np.any(measured):
            ax.errorbar(
                t[measured], y[measured], yerr=e[..., measured], fmt="o", ms=3, color=DATA_COLOUR,
                ecolor=DATA_COLOUR, elinewidth=0.7, capsize=1.5, label=label,
            )  # fmt: skip
        if np.any(below):
            ax.plot(t[below], y[below], "v", ms=5, mfc="none", color=DATA_COLOUR, label="below detection limit (the limit)")
        plasma = report.get("model_plasma")
        if key[1] == "plasma" and plasma is not None:
            ax.plot(plasma["time_h"], plasma["drug"], color=MODEL_COLOUR, lw=1.3, label="fitted model")
        if model is not None:
            regions = list(zip(model["species"], model["kind"], model["where"]))
            if key in regions:
                r = regions.index(key)
                ax.plot(model["time_h"], model["region_means"][r], color=MODEL_COLOUR, lw=1.3, label="fitted model")
        ax.set_title(_label(*key))
        ax.set_xlabel("time (h)")
        ax.set_ylabel(_UNITS.get(key[0], ""))
        if np.all(y > 0) and y.max() / max(y.min(), 1e-300) > 100:
            ax.set_yscale("log")
        if p == 0:
            ax.legend(loc="best")
    fig.suptitle("synovia fit: " + ", ".join(f"{n} = {v:.4g}" for n, v in zip(names, report.get("fitted", [])))[:160])
    return fig


def maps_figure(report: dict):
    maps = report["maps"]
    fig = new_figure((8.4, 2.6 * len(maps)))
    axes = fig.subplots(len(maps), 3, squeeze=False)
    for row, (_name, m) in enumerate(sorted(maps.items())):
        value, pred, sigma = (np.asarray(m[k], float) for k in ("value", "predicted", "sigma"))
        if value.ndim == 3:  # 3D: the middle slice along axis 1 (the 2D section)
            mid = value.shape[1] // 2
            value, pred, sigma = value[:, mid], pred[:, mid], sigma[:, mid]
        style = species_style(str(m["species"]))
        finite = np.isfinite(value)
        lo, hi = (float(np.nanmin(value[finite])), float(np.nanmax(value[finite]))) if finite.any() else (0.0, 1.0)
        for col, (data, title) in enumerate(((value, "observed"), (pred, "fitted model"))):
            im = axes[row, col].imshow(np.ma.masked_invalid(data), origin="lower", cmap=style.cmap, vmin=lo, vmax=hi)
            axes[row, col].set_title(f"{style.label} at {float(m['time_h']):g} h: {title}")
        fig.colorbar(im, ax=axes[row, :2], shrink=0.8, label=_UNITS.get(str(m["species"]), ""))
        z = (pred - value) / sigma
        bound = max(3.0, float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 3.0)
        im = axes[row, 2].imshow(np.ma.masked_invalid(z), origin="lower", cmap="RdBu_r", vmin=-bound, vmax=bound)
        axes[row, 2].set_title("(model - data) / σ")
        fig.colorbar(im, ax=axes[row, 2], shrink=0.8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def profiles_figure(report: dict):
    """The profile likelihoods of a report: Delta chi^2 against each profiled parameter, the threshold,
    the profile's interval (shaded) and the Gauss-Newton (Laplace) parabola in ln theta."""
    profiles = report["profiles"]
    names = list(report["names"])
    truth = dict(zip(names, np.asarray(report.get("truth", [math.nan] * len(names)), float)))
    cols = 2 if len(profiles) == 4 else min(3, len(profiles))
    rows = math.ceil(len(profiles) / cols)
    fig = new_figure((max(4.4, 3.6 * cols), 2.9 * rows + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(profiles) :]:
        ax.set_axis_off()
    for ax, (name, p) in zip(axes.flat, profiles.items()):
        x, d = np.asarray(p["values"], float), np.asarray(p["delta_chi2"], float)
        threshold, fitted, se = float(p["threshold"]), float(p["fitted"]), float(p["stderr_log"])
        top = 1.6 * threshold
        lo, hi = float(p["lower"]), float(p["upper"])
        left, right = float(np.min(x, initial=fitted)), float(np.max(x, initial=fitted))
        ax.axvspan(lo if np.isfinite(lo) else left, hi if np.isfinite(hi) else right, color=MODEL_COLOUR, alpha=0.12, lw=0)
        if np.isfinite(se) and se > 0:
            grid = np.exp(np.linspace(math.log(left), math.log(right), 200)) if right > left else np.array([fitted])
            ax.plot(grid, ((np.log(grid) - math.log(fitted)) / se) ** 2, "--", color=START_COLOUR, lw=1.1, label="Gauss-Newton")
        ax.plot(x, d, "o-", ms=3, color=MODEL_COLOUR, lw=1.3, label="profile")
        if "converged" in p:  # (not in reports written before profiles recorded it)
            bad = ~np.asarray(p["converged"], bool) & np.isfinite(d)
            if bad.any():
                ax.plot(x[bad], d[bad], "x", ms=6, color=BEST_COLOUR, label="not converged")
        ax.axhline(threshold, color=BEST_COLOUR, lw=0.9, ls=":", label=f"{100 * float(p['confidence']):g}% ({threshold:.2f})")
        ax.axvline(fitted, color=DATA_COLOUR, lw=0.8, label="fitted")
        if np.isfinite(truth.get(name, math.nan)):
            ax.axvline(truth[name], color=DATA_COLOUR, lw=0.8, ls="--", label="truth")
        if right > 3 * left:
            ax.set_xscale("log")
        ax.set_ylim(-0.05 * top, max(top, float(np.nanmax(np.where(d < 2 * top, d, np.nan), initial=0.0))))
        ax.set_xlabel(name)
        ax.set_ylabel("Δχ² (2 Δ loss)")

        stops = (str(p.get("lower_stop", "")), str(p.get("upper_stop", "")))

        def side(v, stop):
            return f"{v:.4g}" if np.isfinite(v) else ("failed" if stop == "failed" else "open")

        title = f"{name.replace('diffusivity_', 'D_')}: [{side(lo, stops[0])}, {side(hi, stops[1])}]"
        if any(not np.isfinite(v) and stop == "failed" for v, stop in zip((lo, hi), stops)):
            ax.set_title(title + " (profile failed)", color=BEST_COLOUR)
        elif not bool(p["identifiable"]):
            ax.set_title(title + " not identifiable", color=BEST_COLOUR)
        else:
            ax.set_title(title)
        if ax is axes.flat[0]:
            ax.legend(loc="best", fontsize=6)
    fig.suptitle("Profile likelihoods (the others re-optimised; shaded: the interval)")
    return fig


def _report(report: str | os.PathLike[str] | dict) -> dict:
    return report if isinstance(report, dict) else read_report(report)


def figure_fit(report: str | os.PathLike[str] | dict) -> Figure:
    """The figure of a fit report (``<stem>.png`` of ``synovia plot``): loss per iteration for every start,
    the data with their 1-sigma error bars against the fitted model, the fitted parameters' correlations.

    ``report``: the report's path (``synovia fit -o fit.h5``, ``inference.fit(..., out=...)``) or its
    :func:`read_report` dict. A new matplotlib Figure; nothing is shown or written."""
    report = _report(report)
    with matplotlib.rc_context(RC):
        return fit_figure(report)


def figure_fit_maps(report: str | os.PathLike[str] | dict) -> Figure:
    """Observed, fitted and (model - data)/sigma of each field map of a fit report (``<stem>_maps.png``).

    ValueError when the fit used no maps, or the report holds no fitted maps yet."""
    report = _report(report)
    if not report["maps"] or not all("predicted" in m for m in report["maps"].values()):
        raise ValueError("this fit report holds no fitted field maps")
    with matplotlib.rc_context(RC):
        return maps_figure(report)


def plot_fit(path, out_dir, *, stem: str | None = None, dpi: int = 120) -> list[Path]:
    """Write the figures of fit report ``path`` into ``out_dir``; the paths written."""
    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or path.stem
    report = read_report(path)
    written = []
    with matplotlib.rc_context(RC):
        written.append(save_figure(fit_figure(report), out_dir / f"{stem}.png", dpi))
        if report["maps"] and all("predicted" in m for m in report["maps"].values()):
            written.append(save_figure(maps_figure(report), out_dir / f"{stem}_maps.png", dpi))
        if report.get("profiles"):
            written.append(save_figure(profiles_figure(report), out_dir / f"{stem}_profiles.png", dpi))
    return written
