"""The compiled solver: parameters as arguments (no recompile, vmap), float32 kept float32, the
species kept in their regions. (Gradients: test_gradients.py; stage layouts: test_layouts.py; step
sizes: test_plan.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fields import Tissue
from solver import Solver, get_solver
from tests.helpers import assert_close, integrate, small_problem


def test_a_new_parameter_value_does_not_recompile(caplog):
    """Counted from JAX's compile log (not the jit's C++ dispatch cache, whose size depends on what
    ran before in the process): one compile of the interval function for both parameter sets."""
    import logging

    options, params, domain, state = small_problem()
    solver = Solver(options, "ssp_rk3", 7)  # its own jitted functions, compiled here
    other = params._replace(
        chemotaxis=params.chemotaxis * 3, decay_tnf=params.decay_tnf * 0.5, diffusivity_tnf=params.diffusivity_tnf * 1.1
    )
    with caplog.at_level(logging.DEBUG), jax.log_compiles(True):
        first = solver.advance(state, 0.0, 0.01, params, domain)
        second = solver.advance(state, 0.0, 0.02, other, domain)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage() and "_advance" in r.getMessage()]
    assert len(compiles) == 1, compiles
    assert float(jnp.max(jnp.abs(first.tnf - second.tnf))) > 1e-3  # and the value was used


def test_vmap_over_parameter_sets_matches_separate_runs():
    options, params, domain, state = small_problem()
    solver = get_solver(options, "ssp_rk3", 5)
    rates = jnp.array([100.0, 200.0, 400.0])
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (3, *x.shape)), params)._replace(recruitment_rate=rates)
    out = jax.vmap(lambda p: solver.advance(state, 0.0, 0.01, p, domain))(batched)
    for i, r in enumerate(rates):
        single = solver.advance(state, 0.0, 0.01, params._replace(recruitment_rate=r), domain)
        assert_close(out.leukocytes[i], single.leukocytes, rtol=1e-12)
    assert float(jnp.max(jnp.abs(out.leukocytes[2] - out.leukocytes[0]))) > 0


@pytest.mark.parametrize("stepper", ["ssp_rk3", "strang_ssp_rk3", "strang_rkl2"])
def test_a_float32_run_computes_in_float32_even_with_x64_on(stepper):
    """x64 is on in the tests; a float32 state must not be promoted to float64 arithmetic."""
    options, params, domain, state = small_problem()
    state32 = jax.tree.map(lambda u: u.astype(jnp.float32), state)
    params32 = jax.tree.map(lambda u: u.astype(jnp.float32), params)
    domain32 = domain._replace(**{k: getattr(domain, k).astype(jnp.float32) for k in domain._fields if k != "labels"})
    solver = get_solver(options, stepper, 3, rkl2_stages=4 if stepper == "strang_rkl2" else 0)
    out = solver.advance(state32, 0.0, 0.01, params32, domain32)
    assert all(u.dtype == jnp.float32 for u in out)
    hlo = solver.advance.lower(state32, 0.0, 0.01, params32, domain32).compile().as_text()
    # only scalars (time, dt) may be float64; no float64 array of the grid's shape
    assert "f64[8,10]" not in hlo
    # and over frames (the frames' times come from an integer frame index)
    final, frames = solver.trajectory(state32, params32, domain32, 0.01, 2, checkpoint="steps")
    assert all(u.dtype == jnp.float32 for u in (*final, *frames))


def test_species_stay_zero_outside_their_regions_with_every_term_on():
    """No mask is applied to the derivatives: zero diffusivity, closed faces and local sources must keep
    cytokines out of bone, leukocytes out of cartilage and bone, and integrity inside cartilage."""
    options, params, domain, state = small_problem(drug=True, chemotaxis=2.0)
    state = state._replace(drug=state.tnf * 0 + 1.0 * domain.cytokine)
    final, _, _ = integrate(options, params, domain, state, 2.0)
    labels = np.asarray(domain.labels)
    bone = labels == int(Tissue.BONE)
    for name in ("tnf", "il1", "drug"):
        assert np.all(np.asarray(getattr(final, name))[bone] == 0), name
    no_leuk = np.isin(labels, [int(Tissue.BONE), int(Tissue.CARTILAGE)])
    assert np.all(np.asarray(final.leukocytes)[no_leuk] == 0)
    assert np.all(np.asarray(final.cartilage)[labels != int(Tissue.CARTILAGE)] == 0)
    # and things did happen inside
    assert float(jnp.max(jnp.abs(final.leukocytes - state.leukocytes))) > 1.0


def test_solver_options_are_checked_and_kept():
    """The options a Solver is built with: its stepper's layout, the steps, RKL2 stages and gradient."""
    options, _, _, _ = small_problem()
    solver = Solver(options, "strang_rkl2", 3, 4, gradient="autodiff", layout="loop")
    assert (solver.substeps, solver.rkl2_stages, solver.gradient) == (3, 4, "autodiff")
    assert solver.stepper.layout == "loop" and solver.stepper.stages == 4
    assert get_solver(options, "ssp_rk3", 3) is get_solver(options, "ssp_rk3", 3)  # cached
    assert get_solver(options, "ssp_rk3", 3, gradient="autodiff") is not get_solver(options, "ssp_rk3", 3)
    with pytest.raises(ValueError, match="gradient 'forward'"):
        Solver(options, gradient="forward")
    with pytest.raises(ValueError, match="layout 'fused'"):
        Solver(options, layout="fused")
    with pytest.raises(ValueError, match="at least 2 RKL2 stages"):
        Solver(options, "strang_rkl2", 3, 0)
