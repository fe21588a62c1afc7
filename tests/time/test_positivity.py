"""Positivity at the automatic step: one-cell spikes in the interior, at the middle of every wall and
in every corner, under each wall condition, in 2D and 3D, stay non-negative under forward Euler and
SSP-RK3 at the full forward-Euler limit (``run.safety = 1``): the step comes from each cell's own
outflow rate (solver.physics.outflow_rates), walls and losses summed."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from fields import Grid
from solver import StepPlan, WallCondition, get_solver
from solver.physics import outflow_rates, stable_dt
from tests.helpers import setup, uniform_labels

WALLS = {
    "no_flux": WallCondition(),
    "dirichlet": WallCondition("dirichlet", 0.0),
    "robin": WallCondition("robin", 0.0, 50.0),
}
SPECIES = ("tnf", "il1", "leukocytes")
# no sources: an undershoot is not hidden by secretion
QUIET = dict(basal_tnf=0.0, basal_il1=0.0, injury_rate=0.0, recruitment_rate=0.0, fluid_recruitment=0.0)


def spike_cells(shape):
    """The interior centre, the middle of every wall and every corner (and, in 3D, edge): every
    combination of low / middle / high per axis, at least 4 cells apart."""
    return list(itertools.product(*[(0, n // 2, n - 1) for n in shape]))


def spiked(shape, wall):
    grid = Grid(shape, (0.1, 0.15, 0.12)[: len(shape)])
    walls = ((WALLS[wall], WALLS[wall]),) * len(shape)
    field = np.zeros(shape)
    for cell in spike_cells(shape):
        field[cell] = 1.0
    init = {"tnf": 100.0 * field, "il1": 100.0 * field, "leukocytes": 1000.0 * field}
    return setup(grid, uniform_labels(shape), init, walls=tuple((s, walls) for s in SPECIES), **QUIET)


def one_step(options, params, domain, state, stepper, dt):
    return get_solver(options, stepper, 1).advance(state, 0.0, dt, params, domain)


def lowest(state):
    """The lowest value of each spiked species relative to its spike's height."""
    return {s: float(jnp.min(getattr(state, s))) / h for s, h in zip(SPECIES, (100.0, 100.0, 1000.0))}


@pytest.mark.parametrize("shape", [(9, 13), (9, 9, 13)], ids=["2d", "3d"])
@pytest.mark.parametrize("wall", WALLS)
def test_spikes_stay_non_negative_at_the_automatic_step(shape, wall):
    options, params, domain, state = spiked(shape, wall)
    for stepper in ("forward_euler", "ssp_rk3"):
        plan = StepPlan.choose(stepper, 1.0, params, state, options, domain, safety=1.0)
        # one step at the limit itself (not the rounded-down step that fits the interval)
        dt = plan.limits["positivity"]
        low = lowest(one_step(options, params, domain, state, stepper, dt))
        assert min(low.values()) >= -1e-12, (stepper, low)
    # the limit is tight: a forward-Euler step 2% above it drives the fastest cell negative
    low = lowest(one_step(options, params, domain, state, "forward_euler", 1.02 * dt))
    assert min(low.values()) < -1e-3, low


@pytest.mark.parametrize("shape", [(9, 13), (9, 9, 13)], ids=["2d", "3d"])
def test_walls_and_losses_shorten_the_step_where_they_drain(shape):
    """A Dirichlet wall drains its cells at 2 D / h^2 through the wall (the half-cell closure) where an
    interior face would drain D / h^2: 2 D sum(1/h^2) inside, 3 D sum(1/h^2) in a corner; losses and mixing
    add to it (the rule the step followed before, the smallest of the diffusion and reaction limits
    alone, let a Dirichlet corner's spike undershoot under SSP-RK3)."""
    options, params, domain, state = spiked(shape, "dirichlet")
    h = np.asarray(options.grid.spacing)
    d = float(np.max(params.diffusivity_il1))
    loss = float(params.decay_il1) + float(params.fluid_mixing)
    rates = outflow_rates(params, state, options, domain)["il1"]
    interior = tuple(n // 2 for n in shape)
    corner = (0,) * len(shape)
    np.testing.assert_allclose(rates.diffusion[interior], 2 * d * np.sum(1 / h**2), rtol=1e-12)
    np.testing.assert_allclose(rates.diffusion[corner], 3 * d * np.sum(1 / h**2), rtol=1e-12)
    np.testing.assert_allclose(rates.reaction[interior], loss, rtol=1e-12)
    limits = stable_dt(params, state, options, domain)
    np.testing.assert_allclose(limits["positivity"], 1 / (3 * d * np.sum(1 / h**2) + loss), rtol=1e-12)
    # the former rule: interior diffusion and the losses, each alone
    former = min(1 / (2 * d * np.sum(1 / h**2)), 1 / loss)
    low = lowest(one_step(options, params, domain, state, "ssp_rk3", former))
    assert low["il1"] < -1e-4, low
