"""Smoke test of the benchmark suite: the smallest forward case end to end, in a subprocess.

It runs without py-pde or numba (the references are not part of ``--only smallest``).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_smallest(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "smallest", "--out", str(out), "--no-plots"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "results.json").read_text())
    forward = [r for r in result["records"] if r["case"] == "forward" and "skipped" not in r]
    assert forward, result["records"]
    assert all(r["cell_updates_per_s"] > 0 and r["finite"] for r in forward)
    assert result["machine"]["device"] in ("CPU", "GPU") or result["machine"]["device"]
    markdown = (out / "results.md").read_text()
    assert "cell-updates/s" in markdown
    assert forward[0]["grid"] in markdown


def test_hlo_scopes_attribute_a_fusion_to_the_named_scopes_inside_it():
    from benchmarks._cases import _hlo_scopes

    hlo = """HloModule jit_advance
%fused_computation.3 (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  %pad.1 = f32[6]{0} pad(%param_0), metadata={op_name="jit(_advance)/interval/diffusion_tnf/pad"}
  ROOT %mul.2 = f32[4]{0} multiply(%param_0, %param_0), metadata={op_name="jit(_advance)/interval/chemotaxis/mul"}
}
ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %loop_add_fusion.3 = f32[4]{0} fusion(%p), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(_advance)/add"}
}
"""
    scopes = _hlo_scopes(hlo)
    assert scopes["loop_add_fusion_3"] == ["chemotaxis", "diffusion_tnf"]
    assert scopes["p"] == []


def test_trace_case_times_the_kernels_of_a_step(tmp_path):
    """The trace case on a CPU (32^3): XLA's thunks summed by name and attributed to the model's scopes."""
    from benchmarks import _cases

    st = _cases.Settings(quick=True, repeats=1, target_cell_updates=1e5, time_budget_s=10, log=lambda m: None, out=str(tmp_path))
    (rec,) = _cases.trace(st)
    assert rec["grid"] == "32^3" and rec["steps_traced"] == 12
    kernels = rec["kernels"]
    assert kernels and rec["kernel_ms_per_step"] > 0
    assert sum(k["share"] for k in kernels) <= 1.0 + 1e-9
    assert all(k["ms_per_step"] >= 0 and k["calls_per_step"] > 0 for k in kernels)
    # loop bodies are not kernels: counting them would count their kernels twice
    assert not any(k["kernel"].startswith("while") for k in kernels)
    hlo = next((tmp_path / "trace").glob("advance_32cubed_float32.hlo.txt")).read_text()
    control = _cases._control_flow(hlo)
    assert any(name.startswith("cond") for name in control)  # the CPU's stages run as conditionals
    assert not any(_cases._kernel_key(k["kernel"]) in control for k in kernels)
    scoped = {s for k in kernels for s in k["scopes"]}
    assert {"diffusion_tnf", "chemotaxis", "reactions"} <= scoped, scoped
    assert list((tmp_path / "trace").glob("advance_32cubed_float32.hlo.txt"))
    assert list((tmp_path / "trace").rglob("perfetto_trace.json.gz"))


# ~12 s (timed loops): runs with the slow validation
@pytest.mark.slow
def test_roofline_triad_takes_the_difference_of_two_loops():
    """The bandwidth is the extra bytes of the longer loop over the median paired time difference."""
    from benchmarks import _cases

    st = _cases.Settings(quick=True, repeats=3, target_cell_updates=1e5, time_budget_s=10, log=lambda m: None)
    records = [r for r in _cases.roofline(st) if r["kernel"].startswith("jax triad")]
    assert {r["precision"] for r in records} == {"float32", "float64"}
    for r in records:
        short, long = r["loop_medians_s"]
        assert long > short > 0
        extra = 3 * r["elements"] * (4 if r["precision"] == "float32" else 8) * 50
        assert r["bytes_moved"] == extra
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        assert abs(r["bandwidth_GBps"] - extra / r["median_s"] / 1e9) < 1e-6 * r["bandwidth_GBps"]
        assert r["best_bandwidth_GBps"] is None


@pytest.mark.slow  # ~19 s compiling three layouts (their equal results: tests/time/test_layouts.py, also slow)
def test_layout_case_compares_the_stage_layouts():
    import jax

    from benchmarks import _cases

    st = _cases.Settings(quick=True, repeats=1, target_cell_updates=1e5, time_budget_s=10, log=lambda m: None)
    records = _cases.layout(st)
    assert [r["what"] for r in records] == ["ssp_rk3 forward", "strang_rkl2 forward", "ssp_rk3 value+grad"]
    for r in records:
        assert set(r["median_s"]) == {"loop", "barrier", "conditional"} and r["chosen_here"] == "conditional"
        assert all(t > 0 for t in r["median_s"].values())
        for name, t in r["median_s"].items():
            assert abs(r["speedup_over_loop"][name] - r["median_s"]["loop"] / t) < 1e-12
    from benchmarks import _report

    machine = {"cpu_model": "test", "usable_cpus": 2, "device": "cpu", "device_kind": "cpu", "jax": jax.__version__}
    result = {"machine": machine, "records": records, "quick": True, "date": "today", "wall_s": 1.0}
    result["targets"] = _report.targets(records, machine)
    text = _report.markdown(result)
    assert "| conditional ms (speed-up over loop) |" in text and "1.00x" in text


def test_fma_kernel_computes_every_chain():
    """The FMA peak counts 2 flops per chain step: the kernel must really take every step."""
    pytest.importorskip("numba")
    import numpy as np

    from benchmarks._numba_stencil import FMA_CHAINS, fma_chains, fma_chains_exact, fma_peak

    x = np.random.default_rng(1).random((5, FMA_CHAINS))
    for n_iter in (0, 1, 7, 1000):
        np.testing.assert_allclose(fma_chains(x, n_iter), fma_chains_exact(x, n_iter), rtol=1e-12)
    peak = fma_peak(repeats=3, flops=1e7)
    assert peak["flops"] == 2 * 32 * peak["threads"] * FMA_CHAINS * int(1e7 / (2 * 32 * peak["threads"] * FMA_CHAINS))
    assert peak["best_gflops"] >= peak["gflops"] > 0


def test_numba_stencil_matches_synovia_with_cartilage():
    """The stencil's scheme is synovia's, cartilage exposure and fragment signal included (the
    benchmark's own check runs on the fluid-only box, which has no cartilage)."""
    pytest.importorskip("numba")
    import jax.numpy as jnp
    import numpy as np

    from benchmarks._numba_stencil import NumbaStencil
    from benchmarks._problem import Problem
    from fields import Grid, State, Tissue
    from solver import ModelOptions, Solver, default_params, make_domain
    from solver.time import choose_substeps

    shape = (24, 20)
    labels = np.full(shape, int(Tissue.SYNOVIAL_FLUID), np.uint8)
    labels[:2], labels[2:6], labels[18:] = int(Tissue.BONE), int(Tissue.CARTILAGE), int(Tissue.SYNOVIUM)
    labels[10:13, 14:17] = int(Tissue.CARTILAGE)  # an island: exposed on every side
    grid = Grid(shape, (0.25, 0.25))
    y, x = grid.mesh()
    injury = (y - 2.0) ** 2 + (x - 1.5) ** 2 < 1.0
    options = ModelOptions(grid=grid)
    params = default_params(jnp.float64, cartilage_damage_tnf=1e-3, cartilage_damage_il1=1e-2, cartilage_repair=0.05)
    domain = make_domain(labels, injury, jnp.float64, grid.spacing)
    cyt, leu, cart = (np.asarray(m) for m in (domain.cytokine, domain.leukocyte, domain.cartilage))
    rng = np.random.default_rng(0)
    tnf = (20 + 150 * np.exp(-((y - 1.5) ** 2 + (x - 2) ** 2) / 2)) * cyt
    il1 = (5 + 60 * rng.random(shape)) * cyt
    fields = (tnf, il1, (100 + 80 * rng.random(shape)) * leu, (0.6 + 0.3 * rng.random(shape)) * cart)
    fields += (np.zeros(shape), np.zeros(shape))  # no drug, no drug-TNF complex
    state = State(*(jnp.asarray(a) for a in fields))
    _, dt, _ = choose_substeps(1.0, params, state, options, domain, "ssp_rk3", 0.9)
    pb = Problem(options, params, domain, state, dt, jnp.float64, labels, injury)
    n = 12
    ref = Solver(options, "ssp_rk3", n).advance(state, jnp.asarray(0.0), jnp.asarray(dt), params, domain)
    stencil = NumbaStencil(pb)
    out = NumbaStencil.interior(stencil.advance(stencil.initial(state), n))
    for k, name in enumerate(("tnf", "il1", "leukocytes", "cartilage")):
        np.testing.assert_allclose(out[k], ref[k], rtol=0, atol=1e-12 * float(np.max(np.abs(ref[k]))), err_msg=name)
    change = np.asarray(ref[3]) - fields[3]
    assert np.max(np.abs(change)) > 1e-3  # the cartilage terms did work
    np.testing.assert_allclose(out[3] - fields[3], change, rtol=0, atol=1e-10 * np.max(np.abs(change)))


def test_rhs_flop_count_is_per_cell():
    from benchmarks._cases import rhs_flops_per_cell

    small, large = rhs_flops_per_cell((64, 64)), rhs_flops_per_cell((128, 128))
    assert 50 < large < 1000
    assert abs(small - large) < 0.05 * large  # the count grows with the cells, not with anything else


def test_pypde_target_says_what_30x_would_take_of_the_arithmetic_peak():
    from benchmarks._report import arithmetic_limit, targets

    records = [
        {"case": "forward", "grid": "256^2", "precision": "float64", "s_per_simulated_h": 0.02, "cell_updates_per_s": 1e8},
        {"case": "py-pde", "grid": "256^2", "s_per_simulated_h": 0.06, "cell_updates_per_s": 1e7 / 3},
        {"case": "arithmetic", "precision": "float64", "rhs_flops_per_cell": 100.0, "flops_per_cell_update": 300.0},
    ]
    note = targets(records, {"device": "CPU"})[0]["note"]
    assert "1e+08 cell-updates/s = 30 GFLOP/s at XLA's 300 flops each" in note
    assert "peak" not in note  # no FMA figure measured
    records.insert(  # found whatever the order of the records
        0,
        {
            "case": "arithmetic",
            "kernel": "numba FMA chains (2 threads)",
            "precision": "float64",
            "gflops": 60.0,
            "best_gflops": 61.0,
        },
    )
    assert targets(records, {"device": "CPU"})[0]["note"].endswith(": 0.50x this CPU's measured FMA peak (60 GFLOP/s)")
    assert arithmetic_limit(records)["max_cell_updates_per_s"] == 60e9 / 300


def test_output_case_times_appends_and_the_sidecar_of_each_policy(tmp_path):
    """The output case (quick, 2 points): both sidecar policies timed through the writer's public counters."""
    from benchmarks import _cases

    st = _cases.Settings(quick=True, repeats=1, target_cell_updates=1e5, time_budget_s=10, log=lambda m: None, out=str(tmp_path))
    recs = {r["sidecar"]: r for r in _cases.output(st, points=2)}
    assert set(recs) == {"every_frame", "interval"}
    for r in recs.values():
        assert r["frames"] == 49 and r["points"] == 2
        assert r["sidecar_s"] > 0
        assert 0 < r["output_share"] < 1
