"""The benchmark cases. Each returns a list of plain-dict records (JSON-ready)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from solver import Solver, build_scenario, checkpoint_budget_bytes, load_config
from solver.physics import advection, coefficients, diffusion, gradient_on_faces, rhs
from solver.setup import host_memory_bytes
from solver.time import LAYOUTS, PLATFORM_LAYOUTS, binding_limits

from ._harness import Memory, blocking, compiled_memory, now, on_gpu, time_calls
from ._problem import Problem, box_problem, bytes_per_cell_update, cells_label, steps_per_call

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
#: py-pde vs synovia on the smooth case (relative to each field's maximum, after 1 h).
AGREEMENT_TOL = 1e-3


@dataclasses.dataclass
class Settings:
    quick: bool
    repeats: int
    target_cell_updates: float  # per timed call
    time_budget_s: float  # per forward case: skip sizes projected to take longer
    out: str = "bench_results"  # output directory (the trace case writes its files there)
    log: object = print


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _scalars(pb: Problem):
    dt = jnp.asarray(pb.dt, pb.dtype)
    return jnp.asarray(0.0, pb.dtype), dt


def _free_host_bytes() -> int:
    return host_memory_bytes()  # what the solver's checkpointing budgets from too


def _free_device_bytes() -> int:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return _free_host_bytes()
    try:
        s = dev.memory_stats() or {}
        return int(s.get("bytes_limit", 16 << 30)) - int(s.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001
        return 16 << 30


# ----------------------------------------------------------------------------- forward


def forward_one(shape, precision: str, st: Settings, n_steps: int | None = None) -> dict:
    """Throughput of ``solver.advance`` on the benchmark box of ``shape`` cells."""
    dtype = DTYPES[precision]
    pb = box_problem(shape, dtype)
    n_steps = n_steps or steps_per_call(pb.cells, st.target_cell_updates)
    solver = Solver(pb.options, "ssp_rk3", n_steps)
    t0, dt = _scalars(pb)
    args = (pb.state, t0, dt, pb.params, pb.domain)
    with Memory() as mem:
        t = now()
        lowered = solver.advance.lower(*args)
        lower_s = now() - t
        t = now()
        compiled = lowered.compile()
        compile_s = now() - t
        timing = time_calls(blocking(compiled, *args), st.repeats)
    out = compiled(*args)
    finite = bool(all(bool(jnp.all(jnp.isfinite(u))) for u in out))
    per_call = timing["median_s"]
    itemsize = jnp.dtype(dtype).itemsize
    rec = {
        "case": "forward",
        "ndim": len(shape),
        "grid": cells_label(shape),
        "shape": list(shape),
        "cells": pb.cells,
        "precision": precision,
        "steps_per_call": n_steps,
        "dt_h": pb.dt,
        "lower_s": lower_s,
        "compile_s": compile_s,
        **timing,
        "cell_updates_per_s": pb.cells * n_steps / per_call,
        "s_per_step": per_call / n_steps,
        "s_per_simulated_h": per_call / (n_steps * pb.dt),
        "bytes_per_cell_update": bytes_per_cell_update(itemsize)["total_bytes"],
        "finite": finite,
        **mem.as_dict(),
        **{f"xla_{k}": v for k, v in compiled_memory(compiled).items()},
    }
    if precision == "float32":
        # with jax_enable_x64 on, a Python-float dt/t0 (as the run loop passes) makes the
        # stage coefficients float64 (jnp.result_type(dt, float)): count f64 ops in that HLO
        text = solver.advance.lower(pb.state, 0.0, float(pb.dt), pb.params, pb.domain).as_text()
        rec["f64_tokens_in_hlo_with_python_float_dt"] = text.count("f64")
        rec["f64_tokens_in_hlo_with_float32_dt"] = lowered.as_text().count("f64")
    return rec


def forward(st: Settings, smallest: bool = False) -> list[dict]:
    gpu = on_gpu()
    if smallest:
        plan = [(2, [64], ["float32"])]
    elif st.quick:
        plan = [(2, [64, 128, 256, 512], ["float64", "float32"]), (3, [32, 64], ["float64", "float32"])]
        if gpu:
            plan = [(2, [64, 256, 1024], ["float64", "float32"]), (3, [32, 64, 128, 256], ["float32", "float64"])]
    else:
        plan = [(2, [64, 128, 256, 512, 1024], ["float64", "float32"]), (3, [32, 64, 128, 256], ["float64", "float32"])]
        if gpu:
            plan[0] = (2, [64, 128, 256, 512, 1024, 2048], ["float64", "float32"])
    out = []
    for ndim, sizes, precisions in plan:
        for precision in precisions:
            last_rate = None
            for n in sizes:
                shape = (n,) * ndim
                cells = n**ndim
                itemsize = jnp.dtype(DTYPES[precision]).itemsize
                need = cells * itemsize * 60  # state, stage buffers, coefficients, XLA temporaries
                if need > 0.6 * _free_device_bytes():
                    out.append(_skipped("forward", shape, precision, f"needs ~{need / 2**30:.1f} GiB"))
                    continue
                n_steps = steps_per_call(cells, st.target_cell_updates)
                if last_rate is not None:
                    projected = cells * n_steps * (st.repeats + 2) / last_rate
                    if projected > st.time_budget_s:
                        out.append(_skipped("forward", shape, precision, f"projected {projected:.0f} s > budget"))
                        continue
                st.log(f"forward {cells_label(shape)} {precision} ({n_steps} steps per call)")
                rec = forward_one(shape, precision, st, n_steps)
                last_rate = rec["cell_updates_per_s"]
                st.log(f"  {rec['cell_updates_per_s']:.3g} cell-updates/s, compile {rec['compile_s']:.2f} s")
                out.append(rec)
    return out


def _skipped(case, shape, precision, why) -> dict:
    return {
        "case": case,
        "ndim": len(shape),
        "grid": cells_label(shape),
        "shape": list(shape),
        "precision": precision,
        "skipped": why,
    }


# ----------------------------------------------------------------------------- layout


def layout(st: Settings) -> list[dict]:
    """The three layouts of the Runge-Kutta stages side by side on this device: a loop over the
    stages, stages written out behind optimization barriers (chosen on a GPU) and stages written
    out as conditionals (chosen on a CPU).

    Forward steps of ssp_rk3 and strang_rkl2 and value+grad of ssp_rk3 through ``Solver.trajectory``,
    each layout compiled apart and the timed calls alternating (medians), so the choice in
    ``solver.time.run_stages`` can be checked on any machine.
    """
    gpu = on_gpu()
    shape = (256,) * 3 if gpu else ((32,) * 3 if st.quick else (64,) * 3)
    grad_shape = (2048, 2048) if gpu else ((64, 64) if st.quick else (128, 128))
    pb = box_problem(shape, jnp.float32)
    t0, dt = _scalars(pb)
    args = (pb.state, t0, dt, pb.params, pb.domain)
    gp = box_problem(grad_shape, jnp.float32)
    _, gdt = _scalars(gp)
    n_steps = 8
    names = LAYOUTS
    chosen = PLATFORM_LAYOUTS["default" if gpu else "cpu"]
    budget = checkpoint_budget_bytes()
    out = []

    def forward_program(solver):
        return solver.advance.lower(*args).compile()

    plans = [
        ("ssp_rk3 forward", pb, forward_program, args, "ssp_rk3", 0),
        ("strang_rkl2 forward", pb, forward_program, args, "strang_rkl2", 4),
    ]

    def grad_program(solver):
        def loss(p):
            final, frames = solver.trajectory(gp.state, p, gp.domain, gdt, 4, memory_budget=budget)
            return jnp.mean(frames.tnf) + 1e-3 * jnp.mean(final.leukocytes)

        return jax.jit(jax.value_and_grad(loss)).lower(gp.params).compile()

    plans.append(("ssp_rk3 value+grad", gp, grad_program, (gp.params,), "ssp_rk3", 0))
    for what, problem, build, call_args, stepper, stages in plans:
        compiled, compile_s = {}, {}
        for name in names:
            t = now()
            solver = Solver(problem.options, stepper, n_steps, stages, layout=name)
            compiled[name] = build(solver)
            compile_s[name] = now() - t
        medians = _alternating_medians(compiled, call_args, st.repeats)
        rec = {
            "case": "layout",
            "what": what,
            "grid": cells_label(problem.grid.shape),
            "precision": "float32",
            "steps_per_call": n_steps * (4 if "grad" in what else 1),
            "median_s": medians,
            "speedup_over_loop": {name: medians["loop"] / medians[name] for name in names},
            "compile_s": compile_s,
            "chosen_here": chosen,
        }
        if "grad" in what:  # the trajectory's default checkpointing: what it kept
            rec["checkpoint"] = solver.checkpoint_for(problem.state, 4, 1, budget)
        ms = ", ".join(f"{name} {medians[name] * 1e3:.2f} ms" for name in names)
        st.log(f"layout {what} {rec['grid']}: {ms} ({chosen} chosen here)")
        out.append(rec)
    return out


def _alternating_medians(compiled: dict, args: tuple, repeats: int) -> dict[str, float]:
    """Median seconds per call of each compiled program, the timed calls alternating between them
    (after one untimed call each), so that a busy machine slows them alike."""
    for fn in compiled.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, fn in compiled.items():
            t = now()
            jax.block_until_ready(fn(*args))
            times[name].append(now() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ----------------------------------------------------------------------------- adjoint


def adjoint(st: Settings) -> list[dict]:
    """Reverse mode through the right-hand side: JAX's own against the hand-written stencil adjoints
    (``solver.physics.rhs_with_adjoint``), side by side on this device.

    value+grad over all parameters through ``Solver.trajectory`` (4 frames x 8 steps) of ssp_rk3 and
    strang_rkl2, and the forward pass for the ratio; each program compiled apart and the timed calls
    alternating. The two gradients are compared (largest difference relative to each leaf's largest
    magnitude).
    """
    gpu = on_gpu()
    budget = checkpoint_budget_bytes()
    n = 2048 if gpu else (64 if st.quick else 128)
    precisions = ("float32", "float64") if gpu else ("float64",)
    modes = ("autodiff", "adjoint")
    out = []
    for precision in precisions:
        pb = box_problem((n, n), DTYPES[precision])
        _, dt = _scalars(pb)
        for stepper, stages in (("ssp_rk3", 0), ("strang_rkl2", 4)):
            compiled, compile_s, grads = {}, {}, {}
            for mode in ("forward",) + modes:
                solver = Solver(pb.options, stepper, 8, stages, gradient="autodiff" if mode == "forward" else mode)

                def loss(p, solver=solver, pb=pb, dt=dt):
                    final, frames = solver.trajectory(pb.state, p, pb.domain, dt, 4, memory_budget=budget)
                    return jnp.mean(frames.tnf) + 1e-3 * jnp.mean(final.leukocytes)

                t = now()
                compiled[mode] = jax.jit(loss if mode == "forward" else jax.value_and_grad(loss)).lower(pb.params).compile()
                compile_s[mode] = now() - t
                if mode != "forward":
                    grads[mode] = compiled[mode](pb.params)[1]
            medians = _alternating_medians(compiled, (pb.params,), st.repeats)
            diff = max(
                float(jnp.max(jnp.abs(a - b))) / (float(jnp.max(jnp.abs(b))) or 1.0)
                for a, b in zip(jax.tree.leaves(grads["adjoint"]), jax.tree.leaves(grads["autodiff"]))
            )
            rec = {
                "case": "adjoint",
                "stepper": stepper,
                "grid": f"{n}^2",
                "precision": precision,
                "steps": 32,
                "forward_s": medians["forward"],
                "grad_s": {m: medians[m] for m in modes},
                "grad_over_forward": {m: medians[m] / medians["forward"] for m in modes},
                "speedup": medians["autodiff"] / medians["adjoint"],
                "compile_s": compile_s,
                "max_rel_grad_diff": diff,
                "checkpoint": solver.checkpoint_for(pb.state, 4, 1, budget),  # trajectory's default: what it kept
            }
            st.log(
                f"adjoint {stepper} {n}^2 {precision}: grad/forward autodiff "
                f"{rec['grad_over_forward']['autodiff']:.2f}, adjoint {rec['grad_over_forward']['adjoint']:.2f} "
                f"({rec['speedup']:.2f}x), gradients differ by {diff:.1e}"
            )
            out.append(rec)
    return out


# ----------------------------------------------------------------------------- ensemble


def ensemble(st: Settings, n_members: int = 8, n: int = 128) -> list[dict]:
    """``jax.vmap`` over ``n_members`` parameter sets (and states) on an n^2 box, against one run."""
    out = []
    rng = np.random.default_rng(0)
    factors = rng.uniform(0.8, 1.2, size=(n_members, 3))
    for precision in ("float64", "float32"):
        dtype = DTYPES[precision]
        pb = box_problem((n, n), dtype)
        n_steps = steps_per_call(pb.cells * n_members, st.target_cell_updates)
        solver = Solver(pb.options, "ssp_rk3", n_steps)
        t0, dt = _scalars(pb)
        names = ("chemotaxis", "decay_tnf", "tnf_per_leukocyte")
        batched = pb.params._replace(
            **{nm: jnp.asarray(float(getattr(pb.params, nm)) * factors[:, k], dtype) for k, nm in enumerate(names)}
        )
        batched = jax.tree.map(
            lambda x: x if x.shape[:1] == (n_members,) else jnp.broadcast_to(x, (n_members, *x.shape)), batched
        )
        states = jax.tree.map(lambda u: jnp.broadcast_to(u, (n_members, *u.shape)), pb.state)
        vmapped = jax.jit(jax.vmap(solver._advance, in_axes=(0, None, None, 0, None)))
        args = (states, t0, dt, batched, pb.domain)
        single_args = (pb.state, t0, dt, pb.params, pb.domain)
        st.log(f"ensemble {n_members} x {n}^2 {precision}")
        with Memory() as mem:
            t = now()
            compiled = vmapped.lower(*args).compile()
            compile_s = now() - t
            timing = time_calls(blocking(compiled, *args), st.repeats)
        single = solver.advance.lower(*single_args).compile()
        single_timing = time_calls(blocking(single, *single_args), st.repeats)
        ens_rate = pb.cells * n_members * n_steps / timing["median_s"]
        one_rate = pb.cells * n_steps / single_timing["median_s"]
        out.append(
            {
                "case": "ensemble",
                "grid": f"{n}^2",
                "members": n_members,
                "precision": precision,
                "steps_per_call": n_steps,
                "compile_s": compile_s,
                **timing,
                "cell_updates_per_s": ens_rate,
                "single_cell_updates_per_s": one_rate,
                "speedup_vs_sequential": ens_rate / one_rate,
                "s_per_simulated_h_all_members": timing["median_s"] / (n_steps * pb.dt),
                **mem.as_dict(),
            }
        )
        st.log(f"  {ens_rate:.3g} cell-updates/s ({ens_rate / one_rate:.2f}x sequential)")
    return out


# ----------------------------------------------------------------------------- long scenario


def long_scenario(st: Settings, weeks: float = 4.0) -> list[dict]:
    """Time to solution of a weeks-long 2D knee run with weekly anti-TNF dosing: explicit SSP-RK3
    against the split steppers: strang_ssp_rk3 (decay and drug binding integrated exactly, the rest
    by SSP-RK3) and strang_rkl2 (diffusion split off too, by RKL2 super-steps)."""
    t_end = weeks * 168.0
    out, finals = [], {}
    for stepper in ("ssp_rk3", "strang_ssp_rk3", "strang_rkl2"):
        sets = [f"run.t_end_h={t_end:g}", "drug.enabled=true", f"run.stepper={stepper}"]
        sc = build_scenario(load_config(ROOT / "configs" / "knee2d.toml", sets))
        solver = sc.solver
        dt = jnp.asarray(sc.plan.dt, sc.dtype)
        interval = sc.interval
        frames = 8 if st.quick else sc.n_frames - 1
        st.log(
            f"long scenario ({stepper}): knee2d {sc.options.grid.shape}, {t_end:g} h, "
            f"{f'first {frames + 1} h timed' if st.quick else 'full run'}"
        )
        state = sc.initial
        series = []  # the fluid summaries at every frame, to compare the two steppers
        with Memory() as mem:
            times = []
            for k in range(frames + 1):
                t = now()
                state, summary, _ = jax.block_until_ready(
                    solver.advance_with_summary(state, jnp.asarray(k * interval, sc.dtype), dt, sc.params, sc.domain)
                )
                times.append(now() - t)
                series.append({n: float(v) for n, v in summary.items() if n.startswith("synovial_fluid")})
        first_s, times = times[0], times[1:]
        finals[stepper] = {n: np.array([row[n] for row in series]) for n in series[0]}
        per_frame = statistics.median(times)
        limits = sc.plan.limits
        binding = binding_limits(limits, stepper)
        reaction_steps = math.ceil(t_end / (sc.config.run.safety * limits["reaction"]))
        transport_free_steps = math.ceil(t_end / (sc.config.run.safety * min(limits["reaction"], limits["chemotaxis"])))
        rec = {
            "case": "long_scenario",
            "scenario": "configs/knee2d.toml + drug.enabled, weekly dosing",
            "grid": "x".join(map(str, sc.options.grid.shape)),
            "cells": sc.options.grid.size,
            "precision": sc.config.run.precision,
            "stepper": stepper,
            "simulated_h": t_end,
            "dt_h": sc.plan.dt,
            "stability_limits_h": limits,
            "steps_total": sc.n_frames * sc.plan.substeps,
            "rkl2_stages_per_step": sc.plan.rkl2_stages,
            "frames_timed": frames + 1,
            "first_interval_s_incl_compile": first_s,
            "s_per_simulated_h": per_frame / interval,
            "time_to_solution_s": first_s + sum(times) if not st.quick else per_frame / interval * t_end + (first_s - per_frame),
            "time_to_solution_measured": not st.quick,
            "cell_updates_per_s": sc.options.grid.size * sc.plan.substeps / per_frame,
            "steps_if_step_set_by_reactions_and_chemotaxis": transport_free_steps,
            "steps_if_step_set_by_reactions_only": reaction_steps,
            # a stepper that super-steps diffusion is not bound by its limit
            "step_set_by": min(binding, key=binding.get),
            "fluid_summaries_at_end": {n: float(v[-1]) for n, v in finals[stepper].items()},
            **mem.as_dict(),
        }
        st.log(f"  {rec['s_per_simulated_h']:.3g} s per simulated h; {rec['time_to_solution_s']:.0f} s for {t_end:g} h")
        out.append(rec)
    explicit = out[0]
    for split in out[1:]:
        split["speedup_vs_explicit"] = explicit["time_to_solution_s"] / split["time_to_solution_s"]
        # each fluid time course's largest difference, relative to its largest value over the run
        split["max_relative_difference_vs_explicit"] = max(
            float(np.max(np.abs(finals[split["stepper"]][n] - v)) / max(float(np.max(np.abs(v))), 1e-30))
            for n, v in finals["ssp_rk3"].items()
        )
        st.log(
            f"  {split['stepper']}: {split['speedup_vs_explicit']:.2f}x the explicit one, summaries within "
            f"{split['max_relative_difference_vs_explicit']:.2g} of it"
        )
    return out


# ----------------------------------------------------------------------------- output


class _TimedWriter:
    """A RunWriter whose appends (the HDF5 frame and, when due, the XDMF sidecar) are timed."""

    def __init__(self, writer):
        self.writer, self.append_s = writer, 0.0

    def append(self, *args, **kw):
        t = now()
        self.writer.append(*args, **kw)
        self.append_s += now() - t

    def __getattr__(self, name):
        return getattr(self.writer, name)


def output(st: Settings, points: int = 4) -> list[dict]:
    """The share of a small sweep's wall time spent writing its run files, the XDMF sidecar rewritten
    after every frame (``sidecar_every_s = 0``) against at its interval (the default), the two
    alternating over the points: the points of configs/sweep_knee2d.toml's scenario (knee2d, 1 h frames)
    at 0.5 mm, 168 frames (quick: 48)."""
    import tempfile

    from solver.io import SIDECAR_EVERY_S
    from solver.study import new_writer, run

    frames = 48 if st.quick else 168
    sc = build_scenario(load_config(ROOT / "configs" / "knee2d.toml", ["geometry.spacing_mm=0.5", f"run.t_end_h={frames}"]))
    totals = {label: {"wall_s": 0.0, "append_s": 0.0, "sidecar_s": 0.0} for label in ("every_frame", "interval")}
    with tempfile.TemporaryDirectory() as folder:
        run(sc, _TimedWriter(new_writer(sc, Path(folder) / "warm.h5", config_dir=ROOT)), progress=False)  # compile
        for k in range(points):
            for label, every in (("every_frame", 0.0), ("interval", SIDECAR_EVERY_S))[:: 1 if k % 2 else -1]:
                t = now()
                writer = new_writer(sc, Path(folder) / f"{label}_{k}.h5", config_dir=ROOT)
                writer.sidecar_every_s = every
                timed = _TimedWriter(writer)
                with writer:
                    run(sc, timed, progress=False)
                totals[label]["wall_s"] += now() - t
                totals[label]["append_s"] += timed.append_s
                totals[label]["sidecar_s"] += writer.sidecar_s
    out = []
    for label, tot in totals.items():
        rec = {"case": "output", "sidecar": label, "points": points, "frames": frames + 1,
               "grid": "x".join(map(str, sc.options.grid.shape)), **tot,
               "output_share": tot["append_s"] / tot["wall_s"], "sidecar_share": tot["sidecar_s"] / tot["wall_s"]}  # fmt: skip
        st.log(
            f"output ({label}): {points} points x {frames + 1} frames: {tot['wall_s']:.1f} s, appends "
            f"{tot['append_s']:.1f} s ({rec['output_share']:.0%}), sidecar {tot['sidecar_s']:.2f} s ({rec['sidecar_share']:.0%})"
        )
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- cluster

#: The ``cluster`` case's study: knee2d at 0.5 mm (100x88), ``hours`` of the injury with 4 h frames, injury rate
#: x recruitment rate (quick: 2 x 4 points, full: 3 x 4).
CLUSTER_SWEEP = """\
scenario = {scenario}
combine = "grid"

[set]
"geometry.spacing_mm" = 0.5
"run.t_end_h" = {hours}
"run.output_interval_h" = 4.0

[vary]
"injury.rate" = {rates}
"parameters.recruitment_rate" = {{ from = 50, to = 400, count = 4, spacing = "log" }}
"""


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _sweep(argv: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``synovia ARGV`` in a fresh process (as the command runs it); its CPU seconds, and those of the processes
    it waited for (a local sweep's workers), from this process's rusage of its children."""
    before = _children_cpu_s()
    proc = subprocess.run([sys.executable, "-m", "synovia_command", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    cpu = _children_cpu_s() - before
    if proc.returncode != 0:
        raise RuntimeError(f"synovia {' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc, cpu


def _check_study(folder: Path, points: int) -> None:
    runs = folder / "runs"
    missing = [k for k in range(points) if not (runs / f"point_{k:03d}.h5").is_file()]
    marked = sorted(p.name for p in runs.glob("point_*.*") if p.suffix in (".diverged", ".refused", ".failed"))
    if missing or marked:
        raise RuntimeError(f"study {folder}: points without a run file {missing}, marked {marked}")


def _on_slurm(cluster, cfg: Path, folder: Path, points: int, per_task: int) -> dict:
    """``synovia sweep --slurm`` of ``cfg``, from its submission until the reaper has collected every process of
    its job array: wall seconds and CPU seconds (the submitting command, the job processes, the daemons)."""
    env = {**os.environ, **cluster.env}
    mark, daemons_before = len(cluster.reaped()), sum(cluster.daemon_cpu_s().values())
    t = now()
    argv = ["sweep", str(cfg), "-o", str(folder), "--slurm", "--partition", cluster.partition, "--time", "30"]
    proc, submit_cpu = _sweep([*argv, "--points-per-task", str(per_task)], env)
    submit_s = now() - t
    job = proc.stdout.strip().splitlines()[-1]
    cluster.wait(job, timeout=900)
    cluster.settle()
    wall = now() - t
    reaped = cluster.reaped()[mark:]
    daemons = sum(cluster.daemon_cpu_s().values()) - daemons_before
    jobs_cpu = sum(r["user_s"] + r["system_s"] for r in reaped)
    _check_study(folder, points)
    logged = sum(log.read_text().count("synovia: point") for log in folder.glob(".slurm/*/*_log.out"))
    if logged != points:
        raise RuntimeError(f"{folder}: the tasks' logs report {logged} points, not {points}")
    tasks = math.ceil(points / per_task)
    return {"way": "slurm", "points_per_task": per_task, "tasks": tasks, "wall_s": wall, "submit_wall_s": submit_s,
            "submit_cpu_s": submit_cpu, "jobs_cpu_s": jobs_cpu, "daemons_cpu_s": daemons,
            "cpu_s": submit_cpu + jobs_cpu + daemons, "processes_collected": len(reaped),
            "slurmstepd": sum(r["comm"] == "slurmstepd" for r in reaped)}  # fmt: skip


def _local(cfg: Path, folder: Path, points: int, jobs: int) -> dict:
    """``synovia sweep --jobs JOBS`` of ``cfg`` on this machine: wall and CPU seconds (the command and its workers)."""
    t = now()
    _, cpu = _sweep(["sweep", str(cfg), "-o", str(folder), "-q", "--jobs", str(jobs)])
    wall = now() - t
    _check_study(folder, points)
    return {"way": "local", "jobs": jobs, "wall_s": wall, "cpu_s": cpu}


def cluster(st: Settings, per_task: int | None = None, jobs: int = 2) -> list[dict]:
    """CPU seconds per point of a small study (``CLUSTER_SWEEP``) run three ways: ``synovia sweep --slurm`` with
    one point per array task, the same with ``per_task`` points per task (quick 4 of 8 points, full 3 of 12),
    and ``synovia sweep --jobs 2`` on this machine; in rounds (quick 2, full 3), the order reversed every other
    round, so that a busy machine weighs on the three alike; medians over the rounds. The SLURM cluster is a
    real single-node one that the case starts and stops (benchmarks._slurm); its slurmd runs under a reaper
    process, so the CPU time of every job process comes back through ``wait4`` (no accounting needed).
    Skipped without root, the slurm packages or submitit, or when the cluster does not start."""
    import tempfile

    from . import _slurm

    reason = _slurm.unavailable() or (None if has("submitit") else "needs submitit: pip install 'synovia[cluster]'")
    if reason:
        st.log(f"cluster: skipped ({reason})")
        return [{"case": "cluster", "skipped": reason}]
    rates, hours = ("[5000.0, 15000.0]", 24.0) if st.quick else ("[5000.0, 15000.0, 45000.0]", 48.0)
    points = 4 * (rates.count(",") + 1)
    per_task = per_task or (4 if st.quick else 3)
    rounds = 2 if st.quick else 3
    ways = ["slurm_1", f"slurm_{per_task}", "local"]
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="synovia-cluster-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        cfg = folder / "sweep.toml"
        text = CLUSTER_SWEEP.format(scenario=json.dumps(str(ROOT / "configs" / "knee2d.toml")), hours=hours, rates=rates)
        cfg.write_text(text)
        try:
            running = stack.enter_context(_slurm.running_cluster(folder / "slurm"))
        except _slurm.ClusterStartError as err:
            reason = f"could not start a SLURM cluster: {str(err).splitlines()[0]}"
            st.log(f"cluster: skipped ({reason})")
            return [{"case": "cluster", "skipped": reason}]
        for r in range(rounds):
            for way in ways[:: -1 if r % 2 else 1]:
                study = folder / f"{way}_{r}"
                if way == "local":
                    res = _local(cfg, study, points, jobs)
                else:
                    res = _on_slurm(running, cfg, study, points, int(way.split("_")[1]))
                runs[way].append(res)
                st.log(f"cluster round {r + 1}/{rounds}: {way}: {res['wall_s']:.1f} s, {res['cpu_s']:.1f} CPU-s")
    out = []
    for way in ways:
        rec = {"case": "cluster", "points": points, "grid": "100x88", "hours": hours, "rounds": rounds}
        rec.update({k: v for k, v in runs[way][0].items() if not isinstance(v, float)})
        for key in runs[way][0]:
            if isinstance(runs[way][0][key], float):  # medians over the rounds
                rec[key] = statistics.median(res[key] for res in runs[way])
        rec["cpu_s_per_point"] = rec["cpu_s"] / points
        rec["cpu_s_per_point_runs"] = [res["cpu_s"] / points for res in runs[way]]
        rec["wall_s_runs"] = [res["wall_s"] for res in runs[way]]
        out.append(rec)
    local = out[-1]
    for way, rec in zip(ways, out):
        rec["cpu_vs_local"] = rec["cpu_s"] / local["cpu_s"]
        rec["wall_vs_local"] = rec["wall_s"] / local["wall_s"]
        # the same ratio in each round (the rounds' conditions differ)
        rec["cpu_vs_local_runs"] = [a["cpu_s"] / b["cpu_s"] for a, b in zip(runs[way], runs["local"])]
        how = f"SLURM, {rec['points_per_task']} per task" if rec["way"] == "slurm" else f"here, --jobs {jobs}"
        st.log(
            f"cluster ({how}): {points} points, {rec['wall_s']:.1f} s, {rec['cpu_s']:.1f} CPU-s = "
            f"{rec['cpu_s_per_point']:.2f} per point ({rec['cpu_vs_local']:.2f}x here; rounds "
            + ", ".join(f"{x:.2f}x" for x in rec["cpu_vs_local_runs"])
            + ")"
        )
    a, b = out[0], out[1]
    if a["tasks"] > b["tasks"]:  # the CPU time of one more task: import, scenario, compile, start and end
        b["cpu_s_per_extra_task"] = (a["cpu_s"] - b["cpu_s"]) / (a["tasks"] - b["tasks"])
    return out


# ----------------------------------------------------------------------------- gradient


def gradient(st: Settings) -> list[dict]:
    """value_and_grad over all parameters through ``solver.trajectory`` vs the forward pass.

    8 sub-steps per frame and more frames, with the trajectory's default checkpointing
    (``checkpoint="auto"``: every step's state kept where they fit in a quarter of the device's
    memory, memory ~ N states) and, in float32, with only the frames kept (``"frames"``: memory
    ~ frames + 8 states, and the backward pass reruns each frame); and sqrt(N) frames of sqrt(N)
    sub-steps with frames kept (memory ~ 2 sqrt(N) states, the leanest).
    """
    # on a GPU a small grid only measures kernel-launch latency: use one that fills the device
    n = 2048 if on_gpu() else (64 if st.quick else 128)
    fixed = [(f, 8) for f in (([1, 4, 8] if on_gpu() else [1, 2, 4, 8]) if st.quick else [1, 2, 4, 8, 16, 32])]
    balanced = [(k, k) for k in ([4, 8, 16] if st.quick else [4, 8, 16, 32])]
    out = []
    budget = checkpoint_budget_bytes()
    for precision, schedule, checkpoint, plan in (
        ("float64", "8 steps/frame", "auto", fixed),
        ("float32", "8 steps/frame", "auto", fixed),
        ("float32", "8 steps/frame, frames kept", "frames", fixed),
        ("float64", "sqrt", "frames", balanced),
    ):
        dtype = DTYPES[precision]
        pb = box_problem((n, n), dtype)
        _, dt = _scalars(pb)
        main_frames = plan[-2][0] if len(plan) > 1 else plan[0][0]
        rows = []
        for n_frames, n_sub in plan:
            solver = Solver(pb.options, "ssp_rk3", n_sub)

            def loss(params, pb=pb, solver=solver, dt=dt, n_frames=n_frames, checkpoint=checkpoint):
                _, frames = solver.trajectory(
                    pb.state, params, pb.domain, dt, n_frames, checkpoint=checkpoint, memory_budget=budget
                )
                fluid = pb.domain.fluid
                series = jnp.sum(frames.tnf * fluid, axis=(1, 2)) / jnp.sum(fluid)
                return jnp.mean(series) + 1e-3 * jnp.mean(frames.leukocytes[-1])

            st.log(f"gradient {n}^2 {precision} ({schedule}, checkpoint={checkpoint}): {n_frames} frames x {n_sub} steps")
            t = now()
            fwd = jax.jit(loss).lower(pb.params).compile()
            fwd_compile = now() - t
            t = now()
            vg = jax.jit(jax.value_and_grad(loss)).lower(pb.params).compile()
            grad_compile = now() - t
            with Memory() as mem_f:
                tf = time_calls(blocking(fwd, pb.params), st.repeats)
            with Memory() as mem_g:
                tg = time_calls(blocking(vg, pb.params), st.repeats)
            value, grads = vg(pb.params)
            finite = bool(np.isfinite(float(value))) and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
            rows.append(
                {
                    "case": "gradient",
                    "grid": f"{n}^2",
                    "precision": precision,
                    "schedule": schedule,
                    "steps": n_frames * n_sub,
                    "frames": n_frames,
                    "substeps": n_sub,
                    "forward_compile_s": fwd_compile,
                    "grad_compile_s": grad_compile,
                    "forward_s": tf["median_s"],
                    "grad_s": tg["median_s"],
                    "grad_over_forward": tg["median_s"] / tf["median_s"],
                    "forward_peak_rss_bytes": mem_f.peak_rss,
                    "grad_peak_rss_bytes": mem_g.peak_rss,
                    "grad_device_peak_bytes": mem_g.device_peak,
                    **{f"forward_xla_{k}": v for k, v in compiled_memory(fwd).items()},
                    **{f"grad_xla_{k}": v for k, v in compiled_memory(vg).items()},
                    "finite": finite,
                    "checkpoint": solver.checkpoint_for(pb.state, n_frames, 1, budget) if checkpoint == "auto" else checkpoint,
                    "main": n_frames == main_frames and schedule == "8 steps/frame",
                    "note": f"Solver.trajectory(checkpoint={checkpoint!r})",
                }
            )
            st.log(
                f"  grad/forward {rows[-1]['grad_over_forward']:.2f}, "
                f"grad temp {rows[-1].get('grad_xla_temp_bytes', 0) / 2**20:.1f} MiB"
            )
        out += rows
    return out


# ----------------------------------------------------------------------------- knee3d compile


def knee3d_compile(st: Settings) -> list[dict]:
    """Compile time of configs/knee3d.toml: build_scenario + its solver + first advance."""
    st.log("knee3d compile")
    t = now()
    sc = build_scenario(load_config(ROOT / "configs" / "knee3d.toml"))
    build_s = now() - t
    dt = jnp.asarray(sc.plan.dt, sc.dtype)
    t0 = jnp.asarray(0.0, sc.dtype)
    args = (sc.initial, t0, dt, sc.params, sc.domain)
    with Memory() as mem:
        t = now()
        solver = sc.solver
        first = jax.block_until_ready(solver.advance(*args))
        first_s = now() - t
        run = time_calls(blocking(solver.advance, *args), max(2, st.repeats - 1), warmup=0)
    # the same split with ahead-of-time lowering on a fresh (uncached) solver
    fresh = Solver(sc.options, sc.plan.stepper, sc.plan.substeps, sc.plan.rkl2_stages)
    t = now()
    lowered = fresh.advance.lower(*args)
    lower_s = now() - t
    t = now()
    lowered.compile()
    aot_compile_s = now() - t
    del first
    rec = {
        "case": "knee3d_compile",
        "grid": "x".join(map(str, sc.options.grid.shape)),
        "cells": sc.options.grid.size,
        "precision": sc.config.run.precision,
        "substeps_per_interval": sc.plan.substeps,
        "build_scenario_s": build_s,
        "first_advance_s": first_s,
        "interval_run_s": run["median_s"],
        "compile_s": max(first_s - run["median_s"], 0.0),
        "build_plus_first_advance_s": build_s + first_s,
        "aot_lower_s": lower_s,
        "aot_compile_s": aot_compile_s,
        **mem.as_dict(),
    }
    st.log(f"  compile {rec['compile_s']:.2f} s (AOT lower {lower_s:.2f} + compile {aot_compile_s:.2f} s)")
    return [rec]


# ----------------------------------------------------------------------------- profile


def profile(st: Settings, n: int = 256, precision: str = "float64") -> list[dict]:
    """Time the pieces of one step separately: rhs, per-species diffusion, chemotaxis, stage update."""
    dtype = DTYPES[precision]
    pb = box_problem((n, n), dtype)
    opts, params, domain, state = pb.options, pb.params, pb.domain, pb.state
    h = opts.grid.spacing
    coeffs = jax.jit(coefficients)(params, domain)
    t0, dt = _scalars(pb)
    reps = 20  # evaluations per timed call (amortises dispatch)

    def repeat(fn):
        def many(*args):
            def body(i, acc):
                r = fn(*args, acc)
                # every output element feeds the carry, so XLA can neither hoist nor slice the work away
                return acc + 1e-30 * jax.tree.reduce(lambda a, b: a + b, jax.tree.map(jnp.sum, r))

            return jax.lax.fori_loop(0, reps, body, jnp.zeros((), dtype))

        return jax.jit(many)

    pieces = {
        "rhs (all terms)": (
            lambda s, c, eps: rhs(jax.tree.map(lambda u: u + eps, s), t0, params, c, domain, opts),
            (state, coeffs),
        ),
        "diffusion, one species": (
            lambda u, c, eps: diffusion(u + eps, c.d_faces["tnf"], h, c.d_cell["tnf"], opts.walls_for("tnf")),
            (state.tnf, coeffs),
        ),
        "chemotaxis (gradient of f(T) + upwind flux)": (
            lambda s, c, eps: advection(
                s.leukocytes + eps,
                tuple(
                    params.chemotaxis * g
                    for g in gradient_on_faces((s.tnf + eps) / (params.chemotaxis_half_saturation + s.tnf + eps), h)
                ),
                h,
                c.leukocyte_faces,
                opts.chemotaxis_scheme,
            ),
            (state, coeffs),
        ),
        "stage update a*y0 + (1-a)(y + dt k), 5 fields": (
            lambda s, k, eps: jax.tree.map(lambda y0, y, kk: 0.75 * y0 + 0.25 * (y + eps + dt * kk), s, s, k),
            (state, state),
        ),
        "coefficients (once per call)": (
            lambda p, d, eps: coefficients(p._replace(diffusivity_tnf=p.diffusivity_tnf + eps), d),
            (params, domain),
        ),
    }
    step = forward_one((n, n), precision, dataclasses.replace(st, repeats=st.repeats), n_steps=20)
    step_s = step["s_per_step"]
    out = []
    st.log(f"profile {n}^2 {precision}: step {step_s * 1e3:.2f} ms")
    for name, (fn, args) in pieces.items():
        f = repeat(fn)
        timing = time_calls(blocking(f, *args), st.repeats)
        per_eval = timing["median_s"] / reps
        per_step = {"coefficients (once per call)": 1 / 20, "diffusion, one species": 3}.get(name, 3)
        out.append(
            {
                "case": "profile",
                "grid": f"{n}^2",
                "precision": precision,
                "piece": name,
                "ms_per_evaluation": per_eval * 1e3,
                "evaluations_per_step": per_step,
                "share_of_step": per_eval * per_step / step_s,
                "ns_per_cell_evaluation": per_eval / pb.cells * 1e9,
            }
        )
        st.log(f"  {name}: {per_eval * 1e3:.3f} ms")
    compiled = Solver(opts, "ssp_rk3", 20).advance.lower(state, t0, dt, params, domain).compile()
    text = compiled.as_text()
    out.append(
        {
            "case": "profile",
            "grid": f"{n}^2",
            "precision": precision,
            "piece": "measured step (3 stages)",
            "ms_per_evaluation": step_s * 1e3,
            "evaluations_per_step": 1,
            "share_of_step": 1.0,
            "ns_per_cell_evaluation": step_s / pb.cells * 1e9,
            "hlo_fusions": text.count("fusion("),
            "hlo_while_loops": text.count(" while("),
        }
    )
    return out


# ----------------------------------------------------------------------------- roofline


def roofline(st: Settings) -> list[dict]:
    """STREAM-like triad in JAX (and numba when present): the memory-bandwidth limit.

    The JAX triad is ``b = 0.999 b + s c`` swept in place inside one compiled loop (2 reads and
    1 write per element and sweep). Calls of a short and a long loop alternate, and the
    bandwidth is the extra bytes of the long loop over the median of the paired time
    differences: launches, the input copy, the hoisted ``s c`` and the page faults of fresh
    buffers cancel, and so does slow drift of a shared machine. One call per triad measured
    those too: 1344 GB/s median for 1.6 GB in float32 on an H200 (4044 GB/s in a 20-sweep
    loop); 8.8 GB/s on the 2-vCPU development machine (60-75 GB/s by differences).
    """
    gpu = on_gpu()
    out = []
    short, long = 10, 60
    pairs = max(7, st.repeats)
    for precision in ("float64", "float32"):
        dtype = DTYPES[precision]
        itemsize = jnp.dtype(dtype).itemsize
        n = (1 << 28 if gpu else 1 << 25) if not st.quick else (1 << 27 if gpu else 1 << 24)
        n = min(n, int(0.15 * _free_device_bytes() / itemsize))
        b = jnp.ones(n, dtype)
        c = jnp.full(n, 0.5, dtype)
        s = jnp.asarray(1e-3, dtype)
        decay = jnp.asarray(0.999, dtype)
        loops = [
            blocking(jax.jit(lambda b, c, s, k=k, a=decay: jax.lax.fori_loop(0, k, lambda i, x: a * x + s * c, b)), b, c, s)
            for k in (short, long)
        ]
        for call in loops:
            call()  # compile and warm up
        times = {short: [], long: []}
        for _ in range(pairs):
            for k, call in zip((short, long), loops):
                t = now()
                call()
                times[k].append(now() - t)
        diffs = sorted(tl - ts for ts, tl in zip(times[short], times[long]))
        median = statistics.median(diffs)
        moved = 3 * n * itemsize * (long - short)
        expected = (long + 1) / (short + 1)  # the time ratio if one fixed pass cost as much as a sweep
        ratio = statistics.median(times[long]) / statistics.median(times[short])
        rec = {
            "case": "roofline",
            "kernel": f"jax triad ({long} minus {short} in-place sweeps in a loop)",
            "precision": precision,
            "elements": n,
            "bytes_moved": moved,
            "median_s": median,
            "min_s": diffs[0],
            "max_s": diffs[-1],
            "repeats": pairs,
            "loop_medians_s": [statistics.median(times[short]), statistics.median(times[long])],
            "bandwidth_GBps": moved / median / 1e9 if median > 0 else None,
            "best_bandwidth_GBps": None,  # a difference of minima is no best case
            # the paired differences spread over more than half their median, or the long loop took
            # less than twice the short one: the machine was too noisy for this figure
            "unreliable": bool(median <= 0 or (diffs[-1] - diffs[0]) > 0.5 * median or ratio < 2.0),
            "long_over_short": ratio,
            "long_over_short_if_one_pass_per_sweep": expected,
        }
        out.append(rec)
        bw = rec["bandwidth_GBps"]
        st.log(
            f"roofline jax triad {precision}: "
            + (f"{bw:.1f} GB/s" if bw else "n/a")
            + (" (unreliable)" if rec["unreliable"] else "")
        )
        del b, c
        if not gpu and has("numba"):
            out.append(_numba_triad(n, np.dtype(precision), st))
    if not gpu:
        out += arithmetic(st)
    return out


def rhs_flops_per_cell(shape=(256, 256), precision: str = "float64") -> float:
    """XLA's flop count (``cost_analysis``) of the compiled right-hand side on the box problem, per cell."""
    pb = box_problem(shape, DTYPES[precision])
    coeffs = coefficients(pb.params, pb.domain)
    compiled = jax.jit(lambda y: rhs(y, 0.0, pb.params, coeffs, pb.domain, pb.options)).lower(pb.state).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / pb.cells


def arithmetic(st: Settings) -> list[dict]:
    """The CPU's arithmetic limit beside the bandwidth one: XLA's flop count of an SSP-RK3 step
    (three right-hand sides, the stage updates left out) and, with numba, the float64 multiply-add
    rate of all cores (independent chains in registers, timed in a fresh process)."""
    per_cell = rhs_flops_per_cell()
    out = [
        {
            "case": "arithmetic",
            "kernel": "XLA flop count of the right-hand side (cost_analysis), 2D 256^2",
            "precision": "float64",
            "rhs_flops_per_cell": per_cell,
            "flops_per_cell_update": 3 * per_cell,
        }
    ]
    st.log(f"arithmetic: {per_cell:.0f} flops per cell per right-hand side, {3 * per_cell:.0f} per SSP-RK3 step")
    if has("numba"):
        try:
            peak = _in_worker("fma", st.repeats)
        except RuntimeError as err:
            st.log(f"arithmetic: the FMA kernel failed: {str(err)[-300:]}")
        else:
            out.append(
                {"case": "arithmetic", "kernel": f"numba FMA chains ({peak['threads']} threads)", "precision": "float64", **peak}
            )
            st.log(f"arithmetic: numba FMA peak {peak['gflops']:.0f} GFLOP/s (float64)")
    return out


def _numba_triad(n: int, dtype, st: Settings) -> dict:
    import numba

    @numba.njit(parallel=True)
    def triad(a, b, c, s):
        for i in numba.prange(a.shape[0]):
            a[i] = b[i] + s * c[i]

    a = np.empty(n, dtype)
    b = np.ones(n, dtype)
    c = np.full(n, 0.5, dtype)
    s = dtype.type(1.5)
    triad(a, b, c, s)
    timing = time_calls(lambda: triad(a, b, c, s), max(5, st.repeats))
    moved = 3 * n * dtype.itemsize
    rec = {
        "case": "roofline",
        "kernel": f"numba triad ({numba.get_num_threads()} threads)",
        "precision": dtype.name,
        "elements": n,
        "bytes_moved": moved,
        **timing,
        "bandwidth_GBps": moved / timing["median_s"] / 1e9,
        "best_bandwidth_GBps": moved / timing["min_s"] / 1e9,
    }
    st.log(f"roofline numba triad {dtype.name}: {rec['bandwidth_GBps']:.1f} GB/s")
    return rec


# ----------------------------------------------------------------------------- trace


def _perfetto_files(trace_dir: Path) -> set[Path]:
    return set(trace_dir.rglob("perfetto_trace.json.gz"))


def _trace_events(path: Path) -> list[dict]:
    """The complete events of one perfetto trace, each with its process name as ``process``."""
    import gzip

    with gzip.open(path) as fh:
        data = json.loads(fh.read())
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs = {
        e["pid"]: e.get("args", {}).get("name", "") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    for e in events:
        e["process"] = procs.get(e.get("pid"), "")
    return events


def _kernel_key(name: str) -> str:
    """An HLO instruction or kernel name with dots and dashes as underscores (kernels are named so)."""
    return name.replace(".", "_").replace("-", "_")


def _hlo_scopes(hlo_text: str) -> dict[str, list[str]]:
    """Compiled instruction name (dots as underscores) -> the model's named scopes in its op_name metadata.

    A fusion's scopes are those of the instructions inside its fused computation.
    """
    import re

    # the named scopes of solver.physics: diffusion_<species>, reactions, chemotaxis
    scope = re.compile(r"/(diffusion_\w+?|reactions|chemotaxis)/")
    per_computation: dict[str, set] = {}
    calls: dict[str, str] = {}
    own: dict[str, set] = {}
    computation = None
    for line in hlo_text.splitlines():
        head = re.match(r"\s*(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and " = " not in line:
            computation = head.group(1)
            continue
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if not m:
            continue
        found = set(scope.findall(line))
        if computation:
            per_computation.setdefault(computation, set()).update(found)
        name = _kernel_key(m.group(1))
        own[name] = found
        called = re.search(r"calls=%?([\w.\-]+)", line)
        if called:
            calls[name] = called.group(1)
    return {name: sorted(found | per_computation.get(calls.get(name, ""), set())) for name, found in own.items()}


def _control_flow(hlo_text: str) -> set[str]:
    """Compiled instructions (dots as underscores) that run other computations: loops, conditionals,
    calls. Their thunks' time is that of the kernels inside them."""
    import re

    names = set()
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?\s(?:while|conditional|call)\(", line)
        if m:
            names.add(_kernel_key(m.group(1)))
    return names


def trace(st: Settings) -> list[dict]:
    """A jax.profiler trace of the largest 3D float32 forward case: time per compiled kernel.

    Kernel (GPU) or thunk (CPU) events are summed by name and attributed to the model's named
    scopes through the compiled HLO's metadata; the raw trace and the HLO are kept in
    ``<out>/trace/`` (open the perfetto file at ui.perfetto.dev).
    """
    gpu = on_gpu()
    n = (256 if not st.quick or _free_device_bytes() > 16e9 else 128) if gpu else (32 if st.quick else 64)
    shape, precision, n_steps = (n, n, n), "float32", 4
    pb = box_problem(shape, DTYPES[precision])
    solver = Solver(pb.options, "ssp_rk3", n_steps)
    t0, dt = _scalars(pb)
    args = (pb.state, t0, dt, pb.params, pb.domain)
    compiled = solver.advance.lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    out_dir = Path(st.out) / "trace"
    out_dir.mkdir(parents=True, exist_ok=True)
    hlo = compiled.as_text()
    (out_dir / f"advance_{n}cubed_{precision}.hlo.txt").write_text(hlo)
    calls = 3
    st.log(f"trace {cells_label(shape)} {precision}: {calls} calls of {n_steps} steps")
    before = _perfetto_files(out_dir)
    t = now()
    with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
        for _ in range(calls):
            jax.block_until_ready(compiled(*args))
    wall = now() - t
    new = sorted(_perfetto_files(out_dir) - before)  # this run's trace, not an earlier run's
    if not new:
        return [_skipped("trace", shape, precision, "the profiler wrote no perfetto trace")]
    events = _trace_events(new[0])
    scopes = _hlo_scopes(hlo)
    control = _control_flow(hlo)
    kernels: dict[str, list[float]] = {}
    device = [e for e in events if e.get("ph") == "X" and ("GPU" in e["process"] or "gpu" in e["process"])]
    pool = device if device else [e for e in events if e.get("ph") == "X"]
    for e in pool:
        key = _kernel_key(e["name"])
        if device or (key in scopes and key not in control):
            kernels.setdefault(e["name"], []).append(float(e.get("dur", 0.0)) * 1e-6)
    steps = calls * n_steps
    total = sum(sum(v) for v in kernels.values())
    if not kernels:
        return [_skipped("trace", shape, precision, "no kernel events in the trace")]
    rows = []
    for name, durs in sorted(kernels.items(), key=lambda kv: -sum(kv[1])):
        rows.append(
            {
                "kernel": name,
                "calls_per_step": len(durs) / steps,
                "ms_per_step": sum(durs) / steps * 1e3,
                "share": sum(durs) / total if total else None,
                "scopes": scopes.get(_kernel_key(name), []),
            }
        )
    rec = {
        "case": "trace",
        "grid": cells_label(shape),
        "cells": pb.cells,
        "precision": precision,
        "steps_traced": steps,
        "wall_s": wall,
        "kernel_source": "device" if device else "host thunks",
        "kernels_per_step": sum(len(v) for v in kernels.values()) / steps,
        "kernel_ms_per_step": total / steps * 1e3,
        "hlo_fusions": hlo.count("fusion("),
        "kernels": rows[:25],
        "trace_dir": str(out_dir),
    }
    st.log(
        f"  {rec['kernels_per_step']:.1f} kernels per step, {rec['kernel_ms_per_step']:.3f} ms per step in kernels; top: "
        + ", ".join(f"{r['kernel']} {r['ms_per_step']:.3f} ms {r['scopes']}" for r in rows[:6])
    )
    return [rec]


# ----------------------------------------------------------------------------- references


def _in_worker(*args) -> dict:
    """``python -m benchmarks._worker *args`` in a fresh process (no XLA thread pool beside numba's):
    the JSON record it prints last; a RuntimeError with its stderr where it fails."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks._worker", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks._worker {args[0]} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rel_diff(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def numba_reference(st: Settings) -> list[dict]:
    """The hand-written numba stencil: check it against synovia to 1e-10, then time it."""
    if not has("numba"):
        return [{"case": "numba_stencil", "skipped": "numba not installed"}]
    from ._numba_stencil import NumbaStencil

    out = []
    # validation: 40 steps on a non-square grid, every field
    pb = box_problem((96, 80), jnp.float64)
    n_val = 40
    ref = jax.block_until_ready(Solver(pb.options, "ssp_rk3", n_val).advance(pb.state, *_scalars(pb), pb.params, pb.domain))
    stencil = NumbaStencil(pb)
    t = now()
    y = NumbaStencil.interior(stencil.advance(stencil.initial(pb.state), n_val))
    compile_s = now() - t
    diffs = {name: _rel_diff(y[k], ref[k]) for k, name in enumerate(("tnf", "il1", "leukocytes")) if np.max(np.abs(ref[k])) > 0}
    worst = max(diffs.values())
    ok = worst < 1e-10
    st.log(f"numba stencil vs synovia ({n_val} steps, float64): max relative difference {worst:.2e} ({'ok' if ok else 'FAILED'})")
    sizes = [64, 128, 256, 512] if st.quick else [64, 128, 256, 512, 1024]
    for n in sizes:
        w = _in_worker("stencil", n, st.repeats, st.target_cell_updates)
        cells = n * n
        rate = cells * w["steps_per_call"] / w["median_s"]
        out.append(
            {
                "case": "numba_stencil",
                "ndim": 2,
                "grid": f"{n}^2",
                "cells": cells,
                "precision": "float64",
                "timed_in": "separate process (no XLA thread pool)",
                **w,
                "compile_s": w["compile_s"] if n == sizes[0] else 0.0,
                "validation_compile_and_run_s": compile_s,
                "cell_updates_per_s": rate,
                "s_per_simulated_h": w["median_s"] / (w["steps_per_call"] * w["dt"]),
                "validated_max_rel_diff": worst,
                "validated": ok,
                "validation_tolerance": 1e-10,
            }
        )
        st.log(f"numba stencil {n}^2 ({w['threads']} threads): {rate:.3g} cell-updates/s")
    return out


def _fields_diff(theirs, pb, n_steps, scheme="upwind") -> dict:
    options = dataclasses.replace(pb.options, chemotaxis_scheme=scheme)
    ours = jax.block_until_ready(Solver(options, "ssp_rk3", n_steps).advance(pb.state, *_scalars(pb), pb.params, pb.domain))
    return {nm: _rel_diff(theirs[k], ours[k]) for k, nm in enumerate(("tnf", "il1", "leukocytes"))}


def pypde_agreement(st: Settings) -> dict:
    """py-pde's equations (numpy backend: same expressions, no compile) against synovia on the smooth case.

    Smooth case: the benchmark box without the injury ball, 16 mm wide, at h = 0.25 and 0.125 mm,
    one simulated hour in SSP-RK3 at synovia's dt. Tolerance: 3 x synovia's own chemotaxis
    discretisation error (first-order upwind vs limited second-order scheme).
    """
    from . import _pypde

    rows = {}
    for n in (64, 128):
        pb = box_problem((n, n), jnp.float64, extent_mm=16.0, injury=False)
        eq, state = _pypde.equation(pb)
        f = eq.make_pde_rhs(state, backend="numpy")
        y = state.data.copy()
        dt = pb.dt
        n_steps = max(1, round(1.0 / dt))
        for k in range(n_steps):
            t = k * dt
            y1 = y + dt * f(y, t)
            y2 = 0.75 * y + 0.25 * (y1 + dt * f(y1, t + dt))
            y = y / 3.0 + 2.0 / 3.0 * (y2 + dt * f(y2, t + 0.5 * dt))
        ours = jax.block_until_ready(
            Solver(pb.options, "ssp_rk3", n_steps).advance(pb.state, *_scalars(pb), pb.params, pb.domain)
        )
        limited = _fields_diff(np.asarray(jnp.stack(ours[:3])), pb, n_steps, "limited")
        diff = {nm: _rel_diff(y[k], ours[k]) for k, nm in enumerate(("tnf", "il1", "leukocytes"))}
        rows[f"{n}^2"] = {"h_mm": pb.grid.spacing[0], "rel_diff": diff, "synovia_upwind_vs_limited": limited}
        st.log(f"py-pde agreement, smooth case {n}^2: {diff} (synovia upwind vs limited: {limited})")
    coarse, fine = rows["64^2"]["rel_diff"], rows["128^2"]["rel_diff"]
    order = {nm: math.log2(coarse[nm] / fine[nm]) if fine[nm] > 0 else math.inf for nm in coarse}
    ok = all(fine[nm] <= AGREEMENT_TOL for nm in fine) and order["leukocytes"] >= 0.7
    st.log(f"  convergence order of the difference: {order}; {'ok' if ok else 'FAILED'}")
    return {
        "agreement": rows,
        "agreement_order": order,
        "agreement_tolerance": AGREEMENT_TOL,
        "agreement_rule": (
            f"smooth case, 1 h: max|py-pde - synovia| / max|synovia| <= {AGREEMENT_TOL:g} at h = 0.125 mm and the "
            "leukocyte difference shrinks at least at order 0.7 when h halves (upwind vs central: first order)"
        ),
        "agreement_ok": ok,
    }


def pypde_reference(st: Settings) -> list[dict]:
    """py-pde on the same equations and grid: agreement check first, then timing."""
    if not (has("pde") and has("numba")):
        return [{"case": "py-pde", "skipped": "py-pde/numba not installed"}]
    import tempfile

    agreement = pypde_agreement(st)
    out = []
    sizes = [256] if st.quick else [128, 256, 512]
    for n in sizes:
        pb = box_problem((n, n), jnp.float64)
        st.log(f"py-pde {n}^2: compiling in a separate process (py-pde's numba compile takes a minute or two)")
        with tempfile.TemporaryDirectory() as tmp:
            npy = str(Path(tmp) / "pypde.npy")
            w = _in_worker("pypde", n, st.repeats, st.target_cell_updates, npy)
            theirs = np.load(npy)
        rate = pb.cells * w["steps_per_call"] / w["median_s"]
        rec = {
            "case": "py-pde",
            "ndim": 2,
            "grid": f"{n}^2",
            "cells": pb.cells,
            "precision": "float64",
            "timed_in": "separate process (no XLA thread pool)",
            **w,
            "cell_updates_per_s": rate,
            "s_per_simulated_h": w["median_s"] / (w["steps_per_call"] * pb.dt),
            **agreement,
            "timed_problem_vs_synovia_rel_diff": _fields_diff(theirs, pb, w["agreement_steps"]),
        }
        st.log(f"  {rate:.3g} cell-updates/s; rhs {w['rhs_ms']:.2f} ms; compile {w['compile_s']:.0f} s")
        out.append(rec)
    return out
