"""Make the README's figures of the joint's biology (docs/figures/*.png) from the shipped configs.

    python docs/figures/make_figures.py            # all (about 30 minutes on 2 CPU cores)
    python docs/figures/make_figures.py rest oa    # some: rest, injury, oa, cartilage, study, therapies, dose

Each figure is computed here with the Python API; the slow tests (tests/physics/test_joint.py,
tests/inference/test_calibration.py) check the claims the figures illustrate.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np

from solver import build_scenario, enable_precision, load_config
from solver import time_courses as run
from solver.physics import plasma_concentration, summaries
from solver.plot import CLINICAL_RANGES, GROUP_COLOUR, RC, new_figure, shade_range

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
FLUID = (
    ("synovial_fluid_tnf", "Synovial-fluid TNF (pg/mL)"),
    ("synovial_fluid_il1", "Synovial-fluid IL-1β (pg/mL)"),
    ("synovial_fluid_leukocytes", "Synovial-fluid white cells (/µL)"),
    ("cartilage_integrity", "Cartilage integrity (mean)"),
)


def _scenario(path, overrides=()):
    """The scenario of a config and overrides, JAX's 64-bit mode turned on first where it runs in float64."""
    config = load_config(path, overrides)
    enable_precision(config)
    return build_scenario(config)


def _save(fig, name):
    path = OUT / name
    fig.savefig(path, dpi=120)
    print(path)


def rest():
    sc = _scenario(ROOT / "configs/knee2d.toml", ["injury.enabled=false"])
    t, s, _ = run(sc)
    fig = new_figure((7.5, 3.2))
    ax = fig.subplots()
    for (name, label), colour in zip(FLUID, ("#b2182b", "#ef8a62", "#2166ac", "0.3")):
        ax.plot(t / 24, 100 * (s[name] / s[name][0] - 1), color=colour, lw=1.4, label=f"{label}: {s[name][0]:.4g}")
    ax.axhspan(-1, 1, color="0.85", lw=0, zorder=0, label="±1%")
    ax.set_ylim(-1.5, 1.5)
    ax.set_xlabel("time (days)")
    ax.set_ylabel("change from the start (%)")
    ax.legend(fontsize=7, loc="upper right", title="at the start (resting joint)", title_fontsize=7)
    ax.set_title("The default knee without injury: a week from the resting joint (0.25 mm, float32)")
    _save(fig, "rest_drift.png")


def injury():
    sc = _scenario(ROOT / "configs/knee2d.toml", ["run.t_end_h=240"])
    t, s, _ = run(sc)
    fig = new_figure((10.0, 3.2))
    axes = fig.subplots(1, 3)
    for ax, (name, label) in zip(axes, FLUID[:3]):
        ax.plot(t, s[name], color="black", lw=1.4, label="after the default injury")
        ax.axhline(s[name][0], color="0.4", ls=":", lw=1, label="resting joint")
        ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("time (h)")
        ax.grid(True, lw=0.4, alpha=0.4)
    cells = axes[2]
    cells.set_ylim(50, 5000)
    for r in CLINICAL_RANGES:
        if r.summary == "synovial_fluid_leukocytes" and r.group in ("healthy", "OA"):
            shade_range(cells, r, r.summary)
    cells.text(230, 120, "normal < 200 (Kolba 1984)", ha="right", fontsize=6.5, color=GROUP_COLOUR["healthy"])
    cells.text(230, 1500, "non-inflammatory 200-2000\n(Kokebie et al. 2011)", ha="right", fontsize=6.5, color=GROUP_COLOUR["OA"])
    tnf = axes[0]
    tnf.errorbar([48], [83], yerr=[[34], [34]], fmt="s", color=GROUP_COLOUR["RA"], ms=4, label="knee 2 d after a bleed (mouse)")
    tnf.legend(fontsize=6.5, loc="upper right")
    peak = int(np.argmax(s["synovial_fluid_leukocytes"]))
    top = s["synovial_fluid_leukocytes"][peak]
    cells.annotate(
        f"{top:.0f} /µL at {t[peak]:g} h", (t[peak], top), (60, 3000), fontsize=7, arrowprops={"arrowstyle": "->", "lw": 0.6}
    )
    fig.suptitle(
        "Acute injury at the joint margin (configs/knee2d.toml, 10 days): the fluid responds within a day and returns to rest"
    )
    _save(fig, "injury_timecourses.png")


def oa():
    days = 18.0 * 24
    sc = _scenario(ROOT / "configs/oa.toml")
    t1, s1, state = run(sc)
    healed = state._replace(cartilage=sc.domain.cartilage * 1.0)
    t2, s2, _ = run(sc, healed, days, t0=days)
    fig = new_figure((10.0, 5.6))
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (name, label) in zip(axes, FLUID):
        ax.plot(t1 / 24, s1[name], color=GROUP_COLOUR["OA"], lw=1.5, label="OA: healthy joint, damaged cartilage (0.6)")
        ax.plot(t2 / 24, s2[name], color=GROUP_COLOUR["healthy"], lw=1.5, label="the same joint once its cartilage heals")
        ax.axvline(days / 24, color="0.5", lw=0.6, ls=":")
        ax.set_title(label)
        ax.grid(True, lw=0.4, alpha=0.4)
        if name == "cartilage_integrity":
            ax.set_ylim(0, 1.05)
        else:
            low = min(s1[name].min(), s2[name].min())
            ax.set_ylim(0.5 * low, 2.5 * max(s1[name].max(), s2[name].max()))
            for r in CLINICAL_RANGES:
                if r.summary == name and r.group == "OA":
                    shade_range(ax, r, name)
    axes[0].legend(fontsize=7, loc="upper right")
    for ax in axes[2:]:
        ax.set_xlabel("time (days)")
    fig.suptitle("OA through the matrix (configs/oa.toml): damaged cartilage keeps a low-grade synovitis; healed, it resolves")
    _save(fig, "oa_onset_and_healing.png")


def cartilage():
    fig = new_figure((7.5, 3.2))
    ax = fig.subplots()
    for h, style in ((0.5, "--"), (0.25, "-")):
        sc = _scenario(ROOT / "configs/knee2d.toml", [f"geometry.spacing_mm={h}", "injury.enabled=false",
                                       "parameters.basal_il1=300", "run.t_end_h=168", "run.output_interval_h=12",
                                       "run.precision='float64'"])  # fmt: skip
        state, lost, times = sc.initial, [0.0], [0.0]
        area = float(np.prod(sc.geometry.grid.spacing))
        for k in range(sc.n_frames):
            state = sc.solver.advance(state, k * sc.interval, sc.plan.dt, sc.params, sc.domain)
            lost.append(float(np.sum(np.asarray((sc.initial.cartilage - state.cartilage) * sc.domain.cartilage))) * area * 1e3)
            times.append((k + 1) * sc.interval)
        il1 = float(summaries(state, sc.domain, sc.options)["synovial_fluid_il1"])
        ax.plot(np.array(times) / 24, lost, style, color="black", lw=1.3, label=f"{h} mm grid (fluid IL-1 {il1:.0f} pg/mL)")
    ax.set_xlabel("time (days)")
    ax.set_ylabel("cartilage matrix lost (10⁻³ mm² per mm)")
    ax.legend(fontsize=7)
    ax.grid(True, lw=0.4, alpha=0.4)
    ax.set_title("Cartilage loss in a knee whose fluid holds ~140 pg/mL IL-1, at two grid spacings (float64)")
    _save(fig, "cartilage_grid.png")


def study():
    folder = Path("/tmp/synovia_study_ra")
    subprocess.run([sys.executable, "-m", "solver.cli", "sweep", str(ROOT / "configs/sweep_ra.toml"), "-o", str(folder),
                    "--jobs", "2", "-q", "--overwrite"], check=True)  # fmt: skip
    subprocess.run([sys.executable, "-m", "solver.cli", "plot", str(folder), "-o", str(folder / "figs")], check=True)
    (OUT / "study_ra.png").write_bytes((folder / "figs" / "study.png").read_bytes())
    print(OUT / "study_ra.png")


def _sweep(config: str, folder: Path):
    """Run a shipped sweep (continuing it if the folder holds it) and return its summary.csv rows and runs."""
    import csv

    subprocess.run([sys.executable, "-m", "solver.cli", "sweep", str(ROOT / "configs" / config), "-o", str(folder),
                    "--jobs", "2", "-q"], check=True)  # fmt: skip
    return list(csv.DictReader((folder / "summary.csv").open())), sorted((folder / "runs").glob("point_*.h5"))


def _series(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r", swmr=True) as f:
        out = {name: f["summary"][name][: len(f["time"])] for name in f["summary"].attrs["names"]}
        out["time"] = f["time"][:]
    return out


#: Published plasma levels (ug/mL) each drug's panel is drawn against (docs/model.md, "Drugs").
PUBLISHED = {
    "etanercept": [("steady-state Cmax 2.4 ± 1.5 (Table 3, Expert Rev Clin Pharmacol 2017)", 0.9, 3.9)],
    "adalimumab": [("steady-state trough 4-8 (Humira label)", 4.0, 8.0)],
    "infliximab": [("Cmax, median 77 (Remicade label)", 70.0, 84.0),
                   ("trough at week 14, medians 0.5-3.6 (Wolbink 2005)", 0.5, 3.6)],
    "anakinra": [("average 0.4-0.65 (Yang 2003 CL/F; Urien 2013)", 0.4, 0.65)],
}  # fmt: skip
#: configs/sweep_therapies.toml's [set], for the plasma levels drawn from the closed form
THERAPY_SETS = ["run.t_end_h=2448", "drug.enabled=true", "drug.first_dose_h=432"]
THERAPY_COLOUR = {"none": "0.3", "etanercept": "#1b9e77", "adalimumab": "#d95f02", "infliximab": "#7570b3", "anakinra": "#e7298a"}


def therapies():
    rows, runs = _sweep("sweep_therapies.toml", Path("/tmp/synovia_study_therapies"))
    data = {row["drug.name"]: _series(path) for row, path in zip(rows, runs)}
    start = 432.0
    # plasma and synovial-fluid drug of each drug against its published plasma levels
    fig = new_figure((11.0, 5.6))
    axes = fig.subplots(2, 2).ravel()
    for ax, name in zip(axes, ("etanercept", "adalimumab", "infliximab", "anakinra")):
        d = data[name]
        weeks = (d["time"] - start) / 168.0
        # the plasma level is a closed form: drawn every half hour, the fluid at the run's daily frames
        sc = _scenario(ROOT / "configs/ra.toml", [*THERAPY_SETS, f"drug.name={name}"])
        fine = np.arange(start, d["time"][-1], 0.5)
        plasma = [float(plasma_concentration(sc.params, sc.options.drug_route, sc.options.dose_times, t)) for t in fine]
        ax.plot((fine - start) / 168.0, plasma, color=THERAPY_COLOUR[name], lw=1.2, label="plasma")
        ax.plot(weeks, d["synovial_fluid_drug"], color=THERAPY_COLOUR[name], lw=1.4, ls="--", label="synovial fluid (daily)")
        for i, (label, lo, hi) in enumerate(PUBLISHED[name]):
            ax.axhspan(lo, hi, color=("0.6", "#fdae61")[i], alpha=0.25, lw=0, label=label)
        ax.set_yscale("log")
        ax.set_xlim(0, 12)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("drug (µg/mL)")
        ax.legend(fontsize=6.5, loc="lower right")
        ax.grid(True, lw=0.4, alpha=0.4)
    for ax in axes[2:]:
        ax.set_xlabel("weeks of treatment")
    fig.suptitle("Drug levels at the label schedules, from the RA joint (2D knee, 0.25 mm)", fontsize=10)
    _save(fig, "therapy_levels.png")

    # the joint after 12 weeks of each
    fig = new_figure((11.0, 3.4))
    axes = fig.subplots(1, 4)
    names = list(data)
    panels = (
        ("synovial_fluid_tnf", "fluid TNF (pg/mL)"),
        ("synovial_fluid_il1", "fluid IL-1β (pg/mL)"),
        ("synovial_fluid_leukocytes", "fluid white cells (/µL)"),
        ("cartilage_integrity", "cartilage lost in 12 weeks (%)"),
    )
    for ax, (key, label) in zip(axes, panels):
        d0 = {n: data[n][key][np.searchsorted(data[n]["time"], start)] for n in names}
        values = [100 * (d0[n] - data[n][key][-1]) if key == "cartilage_integrity" else data[n][key][-1] for n in names]
        ax.bar(range(len(names)), values, color=[THERAPY_COLOUR[n] for n in names])
        ax.set_xticks(range(len(names)), ["untreated" if n == "none" else n for n in names], rotation=40, fontsize=7)
        ax.set_title(label, fontsize=9)
        if key != "cartilage_integrity":
            ax.set_yscale("log")
        ax.grid(True, axis="y", lw=0.4, alpha=0.4)
    fig.suptitle("Rheumatoid arthritis after 12 weeks untreated or on each drug at its label schedule", fontsize=10)
    _save(fig, "therapy_outcomes.png")


def dose():
    rows, _ = _sweep("sweep_etanercept_dose.toml", Path("/tmp/synovia_study_dose"))
    doses = np.array([float(r["drug.dose_mg"]) for r in rows])
    fig = new_figure((7.5, 3.2))
    ax = fig.subplots()
    lines = (("final_fluid_il1", "fluid IL-1β (pg/mL)", "#ef8a62"), ("final_fluid_tnf", "fluid TNF (pg/mL)", "#b2182b"))
    for key, label, colour in lines:
        column = next(c for c in rows[0] if c.startswith(key))
        ax.plot(np.maximum(doses, 1.0), [float(r[column]) for r in rows], "o-", color=colour, lw=1.4, label=label)
    ax.axvline(50.0, color="0.5", lw=0.8, ls=":", label="label dose, 50 mg")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("etanercept, mg s.c. weekly (untreated drawn at 1)")
    ax.set_ylabel("after 12 weeks")
    ax.legend(fontsize=7)
    ax.grid(True, lw=0.4, alpha=0.4)
    ax.set_title("Dose-response in rheumatoid arthritis (2D knee, 0.25 mm)")
    _save(fig, "etanercept_dose_response.png")


FIGURES = {
    "rest": rest,
    "injury": injury,
    "oa": oa,
    "cartilage": cartilage,
    "study": study,
    "therapies": therapies,
    "dose": dose,
}

if __name__ == "__main__":
    with matplotlib.rc_context(RC):
        for name in sys.argv[1:] or FIGURES:
            FIGURES[name]()
