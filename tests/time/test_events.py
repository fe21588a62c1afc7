"""Sources that switch on and off in time (the injury, the doses): each step takes the profiles'
exact integrals (solver.physics.forcing_moments), so SSP-RK3 stays third order across a switch and a
dose or an injury delivers its amount to round-off, at steps that do not fall on the switch times.
Sampling the profiles at the stage times instead (what the steppers did before) loses both: the
tests run that too, to show they can fail."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from fields import Grid, Tissue
from solver import Solver
from solver.physics import forcing_moments, plasma_drug
from tests.helpers import TRANSPORT_ONLY, setup, small_problem, uniform_labels


def advance(options, params, domain, state, t_end, n, *, sampled=False, stepper="ssp_rk3"):
    """``n`` steps to ``t_end``; ``sampled``: the profiles taken at the stage times."""
    solver = Solver(options, stepper, n)
    terms = solver._terms(params, domain)
    if sampled:
        terms = terms._replace(forcing=None)
    y = state if options.drug else state._replace(drug=None, complex=None)
    out = jax.jit(lambda y: solver.stepper.steps(terms, y, 0.0, t_end / n, n))(y)
    return out if options.drug else out._replace(drug=state.drug, complex=state.complex)


def max_error(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_ssp_rk3_stays_third_order_across_the_injury_switches():
    """The injury switches on at 0.0618 h and off at 0.263 h, inside steps at every n below; the model
    is on but for chemotaxis (small_problem), whose upwind flux is itself not smooth where a face
    velocity changes sign, as the injury's onset makes it (SSP-RK3 then measures 2.2-2.7 with or
    without a switch in the source). Errors against 1024 steps at 16, 32, 64 steps over 0.5 h."""
    options, params, domain, state = small_problem(
        injury_rate=800.0, injury_onset=0.0618, injury_duration=0.2013, injury_decay=0.3, chemotaxis=0.0
    )
    t_end = 0.5
    reference = advance(options, params, domain, state, t_end, 1024)

    def orders(sampled):
        errors = [max_error(advance(options, params, domain, state, t_end, n, sampled=sampled), reference) for n in (16, 32, 64)]
        return errors, [np.log2(errors[i] / errors[i + 1]) for i in range(2)]

    errors, observed = orders(False)
    assert min(observed) > 2.8, (errors, observed)
    errors, observed = orders(True)
    assert max(observed) < 1.5, (errors, observed)


@pytest.mark.parametrize("stepper, order", [("ssp_rk2", 2), ("strang_ssp_rk3", 2)])
def test_second_order_steppers_stay_second_order_across_the_switches(stepper, order):
    """SSP-RK2 and Strang splitting (exact losses around SSP-RK3) across the same switches."""
    options, params, domain, state = small_problem(
        injury_rate=800.0, injury_onset=0.0618, injury_duration=0.2013, injury_decay=0.3, chemotaxis=0.0
    )
    t_end = 0.5
    reference = advance(options, params, domain, state, t_end, 1024, stepper="ssp_rk3")
    # steps 4x apart: where a switch falls inside its step shifts the split stepper's error from one n to
    # the next (measured 6.4e-2, 8.3e-3, 2.6e-3, 4.4e-4, 1.5e-5 at 16 to 256 steps)
    errors = [max_error(advance(options, params, domain, state, t_end, n, stepper=stepper), reference) for n in (16, 64, 256)]
    observed = [np.log(errors[i] / errors[i + 1]) / np.log(4) for i in range(2)]
    assert min(observed) > order - 0.2, (errors, observed)


def _closed_box(drug=False):
    """A 6 x 7 box of synovium with no losses: what enters stays, diffusion and mixing move it."""
    grid = Grid((6, 7), (0.25, 0.25))
    quiet = {**TRANSPORT_ONLY, "drug_dose": 50.0}
    return setup(grid, uniform_labels(grid.shape, Tissue.SYNOVIUM), {}, drug=drug, **quiet)


@pytest.mark.parametrize("n", [7, 13, 29])
@pytest.mark.parametrize("stepper", ["forward_euler", "ssp_rk2", "ssp_rk3", "strang_ssp_rk3"])
def test_an_injury_delivers_its_amount_at_any_step(stepper, n):
    """A constant injury source (decay 1e12 h) from 0.1037 h for 0.3311 h into a closed box: the TNF it
    leaves is rate x duration x injured cells, to round-off, whichever steps (none on a switch)."""
    options, params, domain, state = _closed_box()
    mask = np.zeros(options.grid.shape, bool)
    mask[1:4, 2:6] = True
    domain = domain._replace(injury=jnp.asarray(mask, jnp.float64))
    params = params._replace(
        injury_rate=jnp.asarray(500.0), injury_onset=jnp.asarray(0.1037), injury_duration=jnp.asarray(0.3311),
        injury_decay=jnp.asarray(1e12),
    )  # fmt: skip
    expected = 500.0 * 0.3311 * mask.sum()
    delivered = float(jnp.sum(advance(options, params, domain, state, 0.6, n, stepper=stepper).tnf))
    assert abs(delivered - expected) <= 1e-12 * expected, (delivered, expected)
    sampled = float(jnp.sum(advance(options, params, domain, state, 0.6, n, stepper=stepper, sampled=True).tnf))
    assert abs(sampled - expected) > 1e-5 * expected, (sampled, expected)


@pytest.mark.parametrize("route", ["iv", "sc"])
@pytest.mark.parametrize("n", [11, 23])
def test_a_dose_delivers_its_amount_at_any_step(route, n):
    """A dose at 0.137 h (an i.v. infusion ending 0.25 h later, or s.c.) into a closed box of synovium
    (drainage k_v + k_A set to 0, so what crosses from the plasma stays): the drug in the box is k_v x
    the plasma level's integral (scipy's quad, split at the kinks), to round-off."""
    options, params, domain, state = _closed_box(drug=True)
    options = dataclasses.replace(options, drug_target="il1_receptor", drug_route=route, dose_times=(0.137,))
    params = params._replace(
        drug_vascular_exchange=jnp.asarray(0.3), drug_clearance=jnp.asarray(-0.3), drug_infusion=jnp.asarray(0.25),
        drug_elimination=jnp.asarray(0.4), drug_absorption=jnp.asarray(1.3),
    )  # fmt: skip
    t_end = 1.0
    level = quad(lambda t: float(plasma_drug(params, options, t)), 0.0, t_end, points=[0.137, 0.387], epsabs=0, epsrel=1e-13)[0]
    expected = 0.3 * level * float(jnp.sum(domain.synovium))
    delivered = float(jnp.sum(advance(options, params, domain, state, t_end, n).drug))
    assert abs(delivered - expected) <= 1e-11 * expected, (delivered, expected)
    sampled = float(jnp.sum(advance(options, params, domain, state, t_end, n, sampled=True).drug))
    assert abs(sampled - expected) > 1e-7 * expected, (sampled, expected)


def _injury(s, t=None, dt=None):
    """The profile of test_step_moments_are_exact's injury at ``s``, times (s - t)/dt if ``t`` is given."""
    g = np.exp(-(s - 0.2) / 0.7) if 0.2 <= s < 0.25 else 0.0
    return g if t is None else (s - t) / dt * g


def test_step_moments_are_exact():
    """forcing_moments against scipy's quad: the mean of the profile over a step holding a switch and its
    first moment."""
    options, params, domain, state = small_problem(injury_onset=0.2, injury_duration=0.05, injury_decay=0.7)
    for t, dt in [(0.18, 0.1), (0.21, 0.02), (0.0, 0.5), (0.3, 0.1)]:
        m0, m1 = forcing_moments(t, dt, params, options)
        pts = [p for p in (0.2, 0.25) if t < p < t + dt]
        want0 = quad(_injury, t, t + dt, points=pts or None, epsabs=0, epsrel=1e-13)[0] / dt
        want1 = quad(_injury, t, t + dt, args=(t, dt), points=pts or None, epsabs=0, epsrel=1e-13)[0] / dt
        np.testing.assert_allclose([float(m0.injury), float(m1.injury)], [want0, want1], rtol=1e-12, atol=1e-15)
