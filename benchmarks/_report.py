"""Targets (ratios measured in one run), the Markdown tables and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from ._problem import bytes_per_cell_update


def _find(records, case, **match):
    for r in records:
        if r.get("case") == case and "skipped" not in r and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def targets(records: list[dict], machine: dict) -> list[dict]:
    """The issue's targets as measured ratios (reported, never asserted)."""
    out = []
    ours = _find(records, "forward", grid="256^2", precision="float64")
    pypde = _find(records, "py-pde", grid="256^2")
    stencil = _find(records, "numba_stencil", grid="256^2")
    if ours and pypde:
        ratio = pypde["s_per_simulated_h"] / ours["s_per_simulated_h"]
        out.append(
            _t(
                "2D 256^2 float64 forward: synovia vs py-pde (same dt, same SSP-RK3)",
                ratio,
                ">= 30x",
                ratio >= 30,
                "x",
                _pypde_note(records, pypde),
            )
        )
    else:
        out.append(_t("2D 256^2 float64 forward: synovia vs py-pde", None, ">= 30x", None, "x", "not measured"))
    if ours and stencil:
        ratio = stencil["s_per_simulated_h"] / ours["s_per_simulated_h"]
        out.append(_t("2D 256^2 float64 forward: synovia vs numba stencil", ratio, ">= 0.5x", ratio >= 0.5, "x"))
    else:
        out.append(_t("2D 256^2 float64 forward: synovia vs numba stencil", None, ">= 0.5x", None, "x", "not measured"))
    knee = _find(records, "knee3d_compile")
    if knee:
        dev = machine.get("device")
        ok = knee["compile_s"] < 20 if dev == "CPU" else None
        out.append(_t(f"knee3d compile on {dev} (first advance minus a run)", knee["compile_s"], "< 20 s on CPU", ok, "s"))
    gpu = machine.get("device") == "GPU"
    big = _find(records, "forward", grid="256^3", precision="float32")
    if gpu and big and big.get("roofline_fraction") is not None:
        frac = big["roofline_fraction"]
        out.append(_t("GPU 3D 256^3 float32: fraction of HBM roofline", frac, ">= 0.5", frac >= 0.5, ""))
    else:
        out.append(_t("GPU 3D 256^3 float32: fraction of HBM roofline", None, ">= 0.5", None, "", "needs a GPU"))
    grad = _find(records, "gradient", precision="float32", main=True)
    if gpu and grad:
        r = grad["grad_over_forward"]
        out.append(_t("GPU gradient / forward time (float32)", r, "<= 4x", r <= 4, "x"))
    else:
        note = "needs a GPU"
        if grad:
            note += f" (measured here: {grad['grad_over_forward']:.2f}x on {machine.get('device')})"
        out.append(_t("GPU gradient / forward time (float32)", None, "<= 4x", None, "x", note))
    return out


def arithmetic_limit(records: list[dict]) -> dict | None:
    """XLA's flops per cell-update and, where measured, the FMA peak and the cell-update rate it allows."""
    count = next((r for r in records if r.get("case") == "arithmetic" and "flops_per_cell_update" in r), None)
    if not count:
        return None
    out = {k: count[k] for k in ("rhs_flops_per_cell", "flops_per_cell_update")}
    peak = next((r for r in records if r.get("case") == "arithmetic" and r.get("gflops")), None)
    if peak:
        out.update(peak_kernel=peak["kernel"], peak_gflops=peak["gflops"], best_gflops=peak["best_gflops"])
        out["max_cell_updates_per_s"] = peak["gflops"] * 1e9 / count["flops_per_cell_update"]
    return out


def _pypde_note(records: list[dict], pypde: dict) -> str:
    """What 30x py-pde would take of this CPU's arithmetic (same dt: the cell-update rates compare)."""
    arith = arithmetic_limit(records)
    if not arith:
        return ""
    needed = 30 * pypde["cell_updates_per_s"]
    flops = needed * arith["flops_per_cell_update"]
    per_update = arith["flops_per_cell_update"]
    note = f"30x needs {needed:.3g} cell-updates/s = {flops / 1e9:.0f} GFLOP/s at XLA's {per_update:.0f} flops each"
    if arith.get("peak_gflops"):
        note += f": {flops / 1e9 / arith['peak_gflops']:.2f}x this CPU's measured FMA peak ({arith['peak_gflops']:.0f} GFLOP/s)"
    return note


def _gbps(value) -> str:
    return "-" if not value else f"{value:.1f}"


def _t(name, value, target, met, unit, note=""):
    return {"target": name, "value": value, "goal": target, "met": met, "unit": unit, "note": note}


def add_roofline(records: list[dict]) -> None:
    """Fraction of the triad bandwidth that each forward case reaches (minimal-traffic model)."""
    bw = {}
    for r in records:
        if r.get("case") == "roofline" and r.get("bandwidth_GBps"):
            bw[r["precision"]] = max(bw.get(r["precision"], 0.0), r["bandwidth_GBps"])
    for r in records:
        if r.get("case") in ("forward", "numba_stencil") and "skipped" not in r and r.get("precision") in bw:
            bpc = r.get("bytes_per_cell_update")
            if bpc is None:
                bpc = bytes_per_cell_update(8 if r["precision"] == "float64" else 4)["total_bytes"]
                r["bytes_per_cell_update"] = bpc
            r["achieved_GBps"] = r["cell_updates_per_s"] * bpc / 1e9
            r["roofline_fraction"] = r["achieved_GBps"] / bw[r["precision"]]
            # against the leanest layout (one uint8 tissue label per cell instead of coefficient arrays)
            lean = bytes_per_cell_update(8 if r["precision"] == "float64" else 4)["lean_total_bytes"]
            r["lean_roofline_fraction"] = r["cell_updates_per_s"] * lean / 1e9 / bw[r["precision"]]
            r["roofline_cell_updates_per_s"] = bw[r["precision"]] * 1e9 / bpc


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-2:
            return f"{v:.{digits}g}"
        return f"{v:.{digits}g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _mb(v):
    return "-" if v is None else f"{v / 2**20:.0f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    m, recs = result["machine"], result["records"]
    cpu = f"{m['cpu_model']}, {m['usable_cpus']} usable cores"
    mem = f"{m['host_memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("host_memory_bytes") else ""
    lines = [
        f"# synovia benchmarks ({'quick' if result['quick'] else 'full'} run, {result['date']})",
        "",
        f"Device: **{m['device']}** ({m['device_kind']}); host: {cpu}, {mem}; jax {m['jax']}, numba {m.get('numba')}, "
        f"py-pde {m.get('py-pde')}. Suite wall time {result['wall_s']:.0f} s. Times are medians of repeated calls "
        "after a warm-up (compile) call. Memory: host peak RSS per case (VmHWM, reset per case), device peak where reported.",
        "",
        "## Targets (ratios measured in this run; reported, not asserted)",
        "",
    ]
    rows = []
    for t in result["targets"]:
        met = "-" if t["met"] is None else ("met" if t["met"] else "**missed**")
        value = "-" if t["value"] is None else f"{t['value']:.3g}{t['unit']}"
        rows.append([t["target"], value, t["goal"], met, t["note"]])
    lines += [_table(["target", "measured", "goal", "status", "note"], rows), ""]

    fwd = [r for r in recs if r.get("case") == "forward"]
    if fwd:
        lines += [
            "## Forward throughput (uniform synovial-fluid box, h = 0.25 mm, SSP-RK3, all T/I/L terms active)",
            "",
        ]
        rows = []
        for r in fwd:
            if "skipped" in r:
                rows.append([f"{r['ndim']}D", r["grid"], r["precision"], "skipped: " + r["skipped"]] + [""] * 8)
                continue
            rows.append(
                [
                    f"{r['ndim']}D",
                    r["grid"],
                    r["precision"],
                    f"{r['cell_updates_per_s']:.3g}",
                    f"{r['s_per_simulated_h']:.3g}",
                    f"{r['s_per_step'] * 1e3:.3g}",
                    f"{r['compile_s']:.2f}",
                    r["steps_per_call"],
                    _mb(r.get("peak_rss_bytes")),
                    _mb(r.get("device_peak_bytes")),
                    "-" if r.get("roofline_fraction") is None else f"{r['roofline_fraction']:.2f}",
                    "-" if r.get("lean_roofline_fraction") is None else f"{r['lean_roofline_fraction']:.2f}",
                    _mb(r.get("xla_temp_bytes")),
                ]
            )
        lines += [
            _table(
                [
                    "dim",
                    "grid",
                    "precision",
                    "cell-updates/s",
                    "s per sim. h",
                    "ms/step",
                    "compile s",
                    "steps/call",
                    "peak RSS MiB",
                    "device peak MiB",
                    "roofline frac.",
                    "vs lean layout",
                    "XLA temp MiB",
                ],
                rows,
            ),
            "",
        ]
        f32 = [r for r in fwd if r.get("f64_tokens_in_hlo_with_python_float_dt")]
        if f32:
            lines += [
                f"Note: with `jax_enable_x64` on, a float32 run called with a Python-float `dt` (as the run loop does) lowers "
                f"to HLO with {f32[0]['f64_tokens_in_hlo_with_python_float_dt']} f64 tokens (stage coefficients promoted to "
                f"float64) versus {f32[0]['f64_tokens_in_hlo_with_float32_dt']} with a float32 `dt`; the suite passes `dt` "
                "in the state dtype.",
                "",
            ]

    ref = [r for r in recs if r.get("case") in ("numba_stencil", "py-pde")]
    if ref:
        lines += ["## References on the same equations and grid (2D, float64)", ""]
        rows = []
        for r in ref:
            if "skipped" in r:
                rows.append([r["case"], "-", "skipped: " + r["skipped"], "", "", "", ""])
                continue
            if r["case"] == "numba_stencil":
                check = f"max rel. diff {r['validated_max_rel_diff']:.1e} (tol 1e-10): {'ok' if r['validated'] else 'FAILED'}"
            else:
                parts = []
                for grid, row in r["agreement"].items():
                    d = row["rel_diff"]
                    parts.append(f"{grid} h={row['h_mm']:g}: T {d['tnf']:.1e}, I {d['il1']:.1e}, L {d['leukocytes']:.1e}")
                check = (
                    "smooth case vs synovia: "
                    + "; ".join(parts)
                    + f"; L order {r['agreement_order']['leukocytes']:.2f}; tol {r['agreement_tolerance']:g}"
                    + (": ok" if r["agreement_ok"] else ": FAILED")
                )
            ours = _find(recs, "forward", grid=r["grid"], precision="float64")
            speed = f"{r['s_per_simulated_h'] / ours['s_per_simulated_h']:.2f}" if ours else "-"
            rows.append(
                [
                    r["case"],
                    r["grid"],
                    f"{r['cell_updates_per_s']:.3g}",
                    f"{r['s_per_simulated_h']:.3g}",
                    f"{r['compile_s']:.1f}",
                    speed,
                    check,
                ]
            )
        lines += [
            _table(["reference", "grid", "cell-updates/s", "s per sim. h", "compile s", "synovia speed-up", "check"], rows),
            "",
            "py-pde: its numba-compiled right-hand side (central-difference chemotaxis, Neumann walls) in an SSP-RK3 loop at "
            "synovia's dt; cartilage and drug omitted (absent/zero in a synovial-fluid box; recruitment is synovium-only, so "
            "zero as well). Agreement: smooth case (no injury ball, 16 mm box), one simulated hour, py-pde's expressions "
            "(numpy backend, no compile) against synovia at h = 0.25 and 0.125 mm: T and I agree to ~1e-6 (same stencils in "
            "a uniform box), L to the O(h) difference between upwind and central chemotaxis, which shrinks at first order. "
            "numba stencil: synovia's exact scheme, fused stages, `prange` over rows. Both timed in separate processes.",
            "",
        ]

    roof = [r for r in recs if r.get("case") == "roofline"]
    if roof:
        lines += ["## Hardware limit (STREAM-like triad: JAX in-place sweeps by loop differences, numba a = b + s*c)", ""]
        rows = [
            [
                r["kernel"] + (" (unreliable: noisy machine)" if r.get("unreliable") else ""),
                r["precision"],
                r["elements"],
                _gbps(r["bandwidth_GBps"]),
                _gbps(r["best_bandwidth_GBps"]),
            ]
            for r in roof
        ]
        b64, b32 = bytes_per_cell_update(8), bytes_per_cell_update(4)
        lines += [
            _table(["kernel", "precision", "elements", "GB/s (median)", "GB/s (best)"], rows),
            "",
            f"Minimal traffic of one SSP-RK3 step per cell: {b64['total_bytes']} B in float64 "
            f"({b32['total_bytes']} B in float32) = "
            f"state {b64['state_bytes']} B (T, I, L, C: stage 1 reads y0 and writes y1, stages 2-3 read y_s and y0 and write; "
            f"8 arrays per species) + coefficients {b64['coefficient_bytes']} B (3 cell diffusivities + 5 masks read per stage). "
            f"With one uint8 tissue label per cell instead: {b64['lean_total_bytes']} B. Roofline fraction = cell-updates/s x "
            "bytes per cell-update / the larger triad bandwidth (median) of that precision.",
            "",
        ]
    arith = arithmetic_limit(recs)
    if arith:
        line = (
            f"Arithmetic: XLA counts {arith['rhs_flops_per_cell']:.0f} flops per cell in the compiled right-hand side "
            f"(2D 256^2 float64), {arith['flops_per_cell_update']:.0f} per cell-update in an SSP-RK3 step's three "
            "(stage updates not counted)."
        )
        if arith.get("peak_gflops"):
            line += (
                f" {arith['peak_kernel']}: {arith['peak_gflops']:.0f} GFLOP/s (median; best {arith['best_gflops']:.0f}), "
                f"so at most {arith['max_cell_updates_per_s']:.3g} cell-updates/s in float64, even if every two of those flops "
                "were one fused multiply-add at full vector width on every core."
            )
        lines += [line, ""]

    lay = [r for r in recs if r.get("case") == "layout"]
    if lay:
        lines += [
            "## Stage layout (Runge-Kutta stages in a loop, written out behind barriers, written out as conditionals;"
            " float32, alternating calls)",
            "",
        ]
        names = list(lay[0]["median_s"])
        rows = [
            [r["what"], r["grid"], r["steps_per_call"]]
            + [f"{r['median_s'][k] * 1e3:.3g} ({r['speedup_over_loop'][k]:.2f}x)" for k in names]
            + [" / ".join(f"{r['compile_s'][k]:.2f}" for k in names), r["chosen_here"]]
            for r in lay
        ]
        header = ["run", "grid", "steps"] + [f"{k} ms (speed-up over loop)" for k in names]
        header += [f"compile s ({' / '.join(names)})", "chosen here"]
        lines += [_table(header, rows), ""]

    adj = [r for r in recs if r.get("case") == "adjoint"]
    if adj:
        lines += [
            "## Reverse mode through the right-hand side: JAX's against the hand-written adjoint"
            " (value+grad, all parameters, 4 frames x 8 steps, alternating calls)",
            "",
        ]
        rows = [
            [
                r["stepper"],
                r["grid"],
                r["precision"],
                f"{r['forward_s'] * 1e3:.3g}",
                f"{r['grad_s']['autodiff'] * 1e3:.3g} ({r['grad_over_forward']['autodiff']:.2f}x)",
                f"{r['grad_s']['adjoint'] * 1e3:.3g} ({r['grad_over_forward']['adjoint']:.2f}x)",
                f"{r['speedup']:.2f}x",
                f"{r['compile_s']['autodiff']:.2f} / {r['compile_s']['adjoint']:.2f}",
                f"{r['max_rel_grad_diff']:.1e}",
            ]
            for r in adj
        ]
        header = [
            "stepper",
            "grid",
            "precision",
            "forward ms",
            "autodiff ms (grad/forward)",
            "adjoint ms (grad/forward)",
            "speed-up",
            "compile s (autodiff / adjoint)",
            "gradient difference",
        ]
        lines += [_table(header, rows), ""]

    ens = [r for r in recs if r.get("case") == "ensemble"]
    if ens:
        lines += ["## Ensemble (jax.vmap over parameter sets and states)", ""]
        rows = [
            [
                r["grid"],
                r["members"],
                r["precision"],
                f"{r['cell_updates_per_s']:.3g}",
                f"{r['single_cell_updates_per_s']:.3g}",
                f"{r['speedup_vs_sequential']:.2f}",
                f"{r['compile_s']:.2f}",
                _mb(r.get("peak_rss_bytes")),
            ]
            for r in ens
        ]
        lines += [
            _table(
                [
                    "grid",
                    "members",
                    "precision",
                    "cell-updates/s",
                    "one run cell-updates/s",
                    "vs sequential",
                    "compile s",
                    "peak RSS MiB",
                ],
                rows,
            ),
            "",
        ]

    long = [r for r in recs if r.get("case") == "long_scenario"]
    if long:
        lim = long[0]["stability_limits_h"]
        lines += [
            "## Time to solution: long scenario (explicit SSP-RK3 against the split steppers)",
            "",
            _table(
                [
                    "scenario",
                    "grid",
                    "precision",
                    "stepper",
                    "simulated",
                    "dt h",
                    "step set by",
                    "steps",
                    "RKL2 stages",
                    "s per sim. h",
                    "time to solution",
                    "measured",
                ],
                [
                    [
                        r["scenario"],
                        r["grid"],
                        r["precision"],
                        r["stepper"],
                        f"{r['simulated_h'] / 168:.0f} weeks",
                        f"{r['dt_h']:.4f}",
                        r["step_set_by"],
                        r["steps_total"],
                        r.get("rkl2_stages_per_step") or "-",
                        f"{r['s_per_simulated_h']:.3g}",
                        f"{r['time_to_solution_s']:.0f} s",
                        "full run" if r["time_to_solution_measured"] else f"extrapolated from {r['frames_timed']} h",
                    ]
                    for r in long
                ],
            ),
            "",
            f"Stable-step limits of SSP-RK3 (h): positivity {lim['positivity']:.4g} (the fastest-draining cell's "
            f"diffusion, chemotaxis and reactions summed), of which diffusion alone {lim['diffusion']:.4g}, chemotaxis "
            f'{lim["chemotaxis"]:.4g}, reaction {lim["reaction"]:.4g} (drug binding). `run.stepper = "strang_ssp_rk3"` '
            "integrates decay and binding exactly, so diffusion and fluid mixing set its step. "
            '`run.stepper = "strang_rkl2"` also splits diffusion '
            "off and advances it by RKL2 super-steps (explicit, stable for (s^2 + s - 2)/4 forward-Euler steps with "
            "s stages); its step is then bounded by an empirical accuracy cap (0.25 / k_T), chemotaxis and the "
            "remaining reactions.",
            "",
        ]
        for r in long:
            if "speedup_vs_explicit" in r:
                lines += [
                    f"`{r['stepper']}`: {r['speedup_vs_explicit']:.2f}x the speed of explicit SSP-RK3; its synovial-fluid "
                    f"time courses differ from SSP-RK3's by at most {r['max_relative_difference_vs_explicit']:.2g} of "
                    "each course's largest value.",
                    "",
                ]

    grad = [r for r in recs if r.get("case") == "gradient"]
    if grad:
        lines += ["## Gradient (jax.value_and_grad through solver.trajectory, all parameters)", ""]
        rows = [
            [
                r["grid"],
                r["precision"],
                r.get("schedule", "8 steps/frame"),
                r.get("checkpoint", "frames"),
                r["steps"],
                f"{r['forward_s'] * 1e3:.3g}",
                f"{r['grad_s'] * 1e3:.3g}",
                f"{r['grad_over_forward']:.2f}",
                _mb(r.get("forward_xla_temp_bytes")),
                _mb(r.get("grad_xla_temp_bytes")),
                _mb(r.get("grad_peak_rss_bytes")),
                f"{r['grad_compile_s']:.1f}",
            ]
            for r in grad
        ]
        lines += [
            _table(
                [
                    "grid",
                    "precision",
                    "schedule",
                    "states kept",
                    "steps",
                    "forward ms",
                    "value+grad ms",
                    "grad/forward",
                    "fwd XLA temp MiB",
                    "grad XLA temp MiB",
                    "grad peak RSS MiB",
                    "grad compile s",
                ],
                rows,
            ),
            "",
            "Solver.trajectory checkpoints every sub-step (jax.checkpoint): reverse mode recomputes its stages. "
            "States kept `steps`: every step's input state (the default where they fit in a quarter of the device's "
            "memory). `frames`: one state per frame plus one per step of the frame it is working through; the "
            "backward pass reruns each frame, one forward run more.",
            "",
        ]

    output = [r for r in recs if r.get("case") == "output" and "wall_s" in r]
    if output:
        lines += [
            "## Output share of a small sweep (RunWriter appends and the XDMF sidecar)",
            "",
            _table(
                ["sidecar written", "points x frames", "grid", "wall s", "appends s", "of which sidecar s", "output share"],
                [
                    [
                        "after every frame" if r["sidecar"] == "every_frame" else "at its interval and on closing",
                        f"{r['points']} x {r['frames']}",
                        r["grid"],
                        f"{r['wall_s']:.1f}",
                        f"{r['append_s']:.2f}",
                        f"{r['sidecar_s']:.2f}",
                        f"{r['output_share']:.0%}",
                    ]
                    for r in output
                ],
            ),
            "",
        ]

    clus = [r for r in recs if r.get("case") == "cluster"]
    if clus:
        lines += ["## A study on a single-node SLURM cluster against one machine (CPU seconds per point)", ""]
    for r in (r for r in clus if "skipped" in r):
        lines += [f"Skipped: {r['skipped']}.", ""]
    clus = [r for r in clus if "skipped" not in r]
    if clus:
        rows = []
        for r in clus:
            slurm = r["way"] == "slurm"
            rows.append(
                [
                    f"`--slurm --points-per-task {r['points_per_task']}`" if slurm else f"`--jobs {r['jobs']}` here",
                    f"{r['points']} x {r['tasks']}" if slurm else f"{r['points']} x -",
                    f"{r['wall_s']:.1f}",
                    f"{r['cpu_s']:.1f}",
                    f"{r['submit_cpu_s']:.1f} / {r['jobs_cpu_s']:.1f} / {r['daemons_cpu_s']:.2f}" if slurm else "-",
                    f"{r['cpu_s_per_point']:.2f} ({', '.join(f'{x:.2f}' for x in r['cpu_s_per_point_runs'])})",
                    f"{r['cpu_vs_local']:.2f}x ({', '.join(f'{x:.2f}' for x in r['cpu_vs_local_runs'])})",
                    f"{r['wall_vs_local']:.2f}x",
                ]
            )
        header = ["how", "points x tasks", "wall s", "CPU s", "submit / jobs / daemons CPU s", "CPU s per point (rounds)",
                  "CPU vs here (rounds)", "wall vs here"]  # fmt: skip
        r = clus[0]
        lines += [
            _table(header, rows),
            "",
            f"knee2d at 0.5 mm ({r['grid']}), {r['hours']:g} h with 4 h frames, {r['points']} points; medians of "
            f"{r['rounds']} rounds (the order reversed every other round). The cluster is a single-node one the case "
            "starts (benchmarks._slurm). CPU seconds: user + system of the submitting `synovia sweep` and of a local "
            "sweep's workers (this process's rusage of its children), of every process of the job array (the reaper "
            "that started slurmd collects each slurmstepd; wait4's rusage holds the processes it waited for) and of the "
            "daemons (/proc/PID/stat, including their answers to the case's squeue polls every 0.25 s).",
            "",
        ]
        extra = next((x["cpu_s_per_extra_task"] for x in clus if "cpu_s_per_extra_task" in x), None)
        if extra is not None:
            lines += [f"One array task more costs {extra:.2f} CPU s (JAX import, scenario, compile, task start and end).", ""]

    knee = [r for r in recs if r.get("case") == "knee3d_compile"]
    for r in knee:
        lines += [
            "## Compile time: configs/knee3d.toml",
            "",
            _table(
                [
                    "grid",
                    "precision",
                    "build_scenario s",
                    "first advance s",
                    "one interval s",
                    "compile s",
                    "AOT lower s",
                    "AOT compile s",
                ],
                [
                    [
                        r["grid"],
                        r["precision"],
                        f"{r['build_scenario_s']:.2f}",
                        f"{r['first_advance_s']:.2f}",
                        f"{r['interval_run_s']:.2f}",
                        f"{r['compile_s']:.2f}",
                        f"{r['aot_lower_s']:.2f}",
                        f"{r['aot_compile_s']:.2f}",
                    ]
                ],
            ),
            "",
        ]

    prof = [r for r in recs if r.get("case") == "profile"]
    if prof:
        lines += [f"## Profile of one step ({prof[0]['grid']} {prof[0]['precision']}, pieces jitted and timed separately)", ""]
        rows = [
            [
                r["piece"],
                f"{r['ms_per_evaluation']:.3g}",
                _fmt(r["evaluations_per_step"]),
                f"{100 * r['share_of_step']:.0f}%",
                f"{r['ns_per_cell_evaluation']:.3g}",
            ]
            for r in prof
        ]
        lines += [_table(["piece", "ms per evaluation", "per step", "share of step", "ns per cell"], rows), ""]
        last = prof[-1]
        if "hlo_fusions" in last:
            lines += [f"Compiled step: {last['hlo_fusions']} fusions, {last['hlo_while_loops']} while loops in the HLO.", ""]
    for r in (r for r in recs if r.get("case") == "trace" and "skipped" not in r):
        lines += [
            f"## Trace of the forward step ({r['grid']} {r['precision']}, jax.profiler, {r['kernel_source']})",
            "",
            f"{r['kernels_per_step']:.1f} kernels per SSP-RK3 step, {r['kernel_ms_per_step']:.3g} ms per step inside them; "
            f"{r['hlo_fusions']} fusions in the compiled HLO. Raw trace and HLO: `{r['trace_dir']}`.",
            "",
        ]
        rows = [
            [
                k["kernel"],
                f"{k['calls_per_step']:.2g}",
                f"{k['ms_per_step']:.3g}",
                f"{100 * (k['share'] or 0):.1f}%",
                ", ".join(k["scopes"]),
            ]
            for k in r["kernels"][:15]
        ]
        lines += [_table(["kernel", "calls per step", "ms per step", "share", "named scopes"], rows), ""]
    lines += ["Plots: `throughput.png`, `gradient_memory.png`, `profile.png`.", ""]
    return "\n".join(lines)


def plots(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["records"]
    made = []
    fwd = [r for r in recs if r.get("case") == "forward" and "skipped" not in r]
    if fwd:
        fig, ax = plt.subplots(figsize=(8, 5))
        for ndim in (2, 3):
            for precision, style in (("float64", "-o"), ("float32", "--s")):
                rs = sorted((r for r in fwd if r["ndim"] == ndim and r["precision"] == precision), key=lambda r: r["cells"])
                if rs:
                    ax.plot(
                        [r["cells"] for r in rs],
                        [r["cell_updates_per_s"] for r in rs],
                        style,
                        label=f"synovia {ndim}D {precision}",
                    )
        for case, marker in (("numba_stencil", "^"), ("py-pde", "v")):
            rs = sorted((r for r in recs if r.get("case") == case and "skipped" not in r), key=lambda r: r["cells"])
            if rs:
                ax.plot([r["cells"] for r in rs], [r["cell_updates_per_s"] for r in rs], ":" + marker, label=f"{case} 2D float64")
        roof = {}
        for r in fwd:
            if r.get("roofline_cell_updates_per_s"):
                roof[r["precision"]] = r["roofline_cell_updates_per_s"]
        for precision, v in roof.items():
            ax.axhline(v, color="grey", ls="-." if precision == "float64" else ":", lw=1)
            ax.text(min(r["cells"] for r in fwd), v * 1.05, f"bandwidth roofline {precision}", fontsize=8, color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells")
        ax.set_ylabel("cell-updates per second (SSP-RK3 steps x cells / s)")
        ax.set_title(f"Forward throughput on {result['machine']['device']} ({result['machine']['device_kind']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        made.append("throughput.png")
    grad = [r for r in recs if r.get("case") == "gradient"]
    if grad:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for precision, schedule, style in (
            ("float64", "8 steps/frame", "-o"),
            ("float32", "8 steps/frame", "--s"),
            ("float32", "8 steps/frame, frames kept", "--d"),
            ("float64", "sqrt", "-.^"),
        ):
            rs = sorted(
                (r for r in grad if r["precision"] == precision and r.get("schedule", "8 steps/frame") == schedule),
                key=lambda r: r["steps"],
            )
            precision = f"{precision}, {schedule}"
            if not rs:
                continue
            steps = [r["steps"] for r in rs]
            if all("grad_xla_temp_bytes" in r for r in rs):
                ax1.plot(steps, [r["grad_xla_temp_bytes"] / 2**20 for r in rs], style, label=f"value+grad XLA temp {precision}")
                ax1.plot(
                    steps,
                    [r.get("forward_xla_temp_bytes", 0) / 2**20 for r in rs],
                    style,
                    alpha=0.4,
                    label=f"forward XLA temp {precision}",
                )
            ax1.plot(
                steps, [r["grad_peak_rss_bytes"] / 2**20 for r in rs], ":" + style[-1], label=f"value+grad peak RSS {precision}"
            )
            ax2.plot(steps, [r["grad_over_forward"] for r in rs], style, label=precision)
        ax1.set_xlabel("SSP-RK3 steps")
        ax1.set_ylabel("MiB")
        ax1.set_title(f"Gradient memory vs steps ({grad[0]['grid']}, checkpointed)")
        ax1.set_xscale("log")
        ax1.legend(fontsize=7)
        ax1.grid(True, alpha=0.3)
        ax2.set_xlabel("SSP-RK3 steps")
        ax2.set_ylabel("value_and_grad time / forward time")
        ax2.axhline(4, color="grey", ls=":", lw=1)
        ax2.set_title("Gradient cost")
        ax2.legend(fontsize=8)
        ax2.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "gradient_memory.png", dpi=110)
        plt.close(fig)
        made.append("gradient_memory.png")
    prof = [r for r in recs if r.get("case") == "profile"]
    if prof:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = [r["piece"] for r in prof]
        ms = [r["ms_per_evaluation"] * r["evaluations_per_step"] for r in prof]
        ax.barh(names, ms, color=["C0"] * (len(prof) - 1) + ["C3"])
        ax.set_xlabel("ms per step (evaluations per step x ms per evaluation)")
        ax.set_title(f"Where a step goes ({prof[0]['grid']} {prof[0]['precision']}, pieces timed separately)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "profile.png", dpi=110)
        plt.close(fig)
        made.append("profile.png")
    return made


def write(result: dict, out: Path, with_plots: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "results.md").write_text(markdown(result))
    made = plots(result, out) if with_plots else []
    return {"json": str(out / "results.json"), "markdown": str(out / "results.md"), "plots": made}
