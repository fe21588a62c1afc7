"""The solver against exact solutions, convergence orders and conservation laws (2D and 3D)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fields import Grid, State, Tissue
from solver import WallCondition, get_solver
from solver.physics import DIFFUSIVITIES, coefficients, diffusion_rhs, rhs, split_losses, stable_dt
from solver.time import StrangSSPRK3, Terms, exponential_losses, rkl2, rkl2_stages, super_step_stages
from tests.helpers import TRANSPORT_ONLY, assert_close, integrate, layered_labels, setup, uniform_labels

D_FLUID = DIFFUSIVITIES["diffusivity_tnf"][0][int(Tissue.SYNOVIAL_FLUID)]


def gaussian(grid: Grid, t: float, d: float, k: float, centre) -> np.ndarray:
    """Unit-mass Gaussian diffusing with D and decaying at k, at time t (its own clock)."""
    r2 = sum((x - c) ** 2 for x, c in zip(grid.mesh(), centre))
    return (4 * np.pi * d * t) ** (-grid.ndim / 2) * np.exp(-r2 / (4 * d * t) - k * t)


@pytest.mark.parametrize("ndim,sizes", [(2, (24, 48)), (3, (16, 32))])
def test_diffusion_with_decay_matches_the_exact_gaussian_at_second_order(ndim, sizes):
    length, k, t0, t1 = 6.0, 2.25, 0.25, 0.75
    errors = []
    for n in sizes:
        grid = Grid((n,) * ndim, (length / n,) * ndim)
        centre = (length / 2,) * ndim
        options, params, domain, state = setup(
            grid,
            uniform_labels(grid.shape),
            {"tnf": gaussian(grid, t0, D_FLUID, k, centre)},
            **{**TRANSPORT_ONLY, "decay_tnf": k},
        )
        final, _, _ = integrate(options, params, domain, state, t1 - t0, safety=0.5)
        exact = gaussian(grid, t1, D_FLUID, k, centre)
        errors.append(float(jnp.max(jnp.abs(final.tnf - exact)) / exact.max()))
    order = np.log2(errors[0] / errors[1])
    assert errors[1] < 0.03, errors
    assert 1.8 < order < 2.3, (errors, order)


@pytest.mark.parametrize(
    "stepper,order,shape",
    [
        ("ssp_rk3", 3, (8, 10)),
        ("ssp_rk2", 2, (8, 10)),
        ("forward_euler", 1, (8, 10)),
        ("ssp_rk3", 3, (4, 5, 10)),
        ("strang_ssp_rk3", 2, (8, 10)),
        ("strang_ssp_rk3", 2, (4, 5, 10)),
        ("strang_rkl2", 2, (8, 10)),
        ("strang_rkl2", 2, (4, 5, 10)),
    ],
)
def test_temporal_order_of_the_steppers_on_the_full_model(stepper, order, shape):
    """Every term on (injury and dosing off: they switch on in time); error vs a fine-step reference.

    TNF rises across the last axis under its random part, so the chemotactic face velocities keep
    their sign: where one changes sign the upwind flux is only Lipschitz in time, and on purely random
    data (sign changes everywhere) SSP-RK3's observed order in 3D wandered between 2.3 and 3.0 as the
    step was halved (with chemotaxis off it was 3.0-3.1)."""
    grid = Grid(shape, (0.5,) * len(shape))
    labels = layered_labels(grid.shape)
    rng = np.random.default_rng(0)
    init = {
        "tnf": 50 * rng.uniform(size=grid.shape) + 400 * grid.mesh()[-1],
        "il1": 20 * rng.uniform(size=grid.shape),
        "leukocytes": 1000 * rng.uniform(size=grid.shape),
        "cartilage": rng.uniform(0.5, 1.0, grid.shape),
        "drug": rng.uniform(size=grid.shape),
        "complex": 10 * rng.uniform(size=grid.shape),
    }
    options, params, domain, state = setup(grid, labels, init, drug=True, injury_rate=0.0, drug_dose=0.0, chemotaxis=0.5)
    t_end, n_sub = 1.0, 10
    # RKL2 stages for the coarsest step below, if the stepper splits diffusion (stable for the finer ones too)
    limits = stable_dt(params, state, options, domain, 1.0, True, True)
    solver = get_solver(options, stepper, n_sub, super_step_stages(stepper, t_end / (8 * n_sub), limits, 0.9))

    def solve(m):
        dt, y = t_end / (n_sub * m), state
        for i in range(m):
            y = solver.advance(y, i * n_sub * dt, dt, params, domain)
        return y

    reference = solve(512)
    errors = []
    for m in (8, 16, 32):
        y = solve(m)
        errors.append(max(float(jnp.max(jnp.abs(a - b)) / (1 + float(jnp.max(jnp.abs(b))))) for a, b in zip(y, reference)))
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert abs(slopes[-1] - order) < 0.25 and abs(slopes[0] - order) < 0.5, (errors, slopes)


@pytest.mark.parametrize(
    "ndim,scheme,stepper",
    [
        (2, "upwind", "ssp_rk3"),
        (2, "limited", "ssp_rk3"),
        (3, "upwind", "ssp_rk3"),
        (3, "limited", "ssp_rk3"),
        (2, "upwind", "strang_ssp_rk3"),
        (3, "limited", "strang_ssp_rk3"),
        (2, "upwind", "strang_rkl2"),
        (3, "limited", "strang_rkl2"),
    ],
)
def test_mass_is_conserved_to_round_off_across_tissues_with_chemotaxis(ndim, scheme, stepper):
    shape = (12, 20) if ndim == 2 else (6, 8, 20)
    grid = Grid(shape, (0.2,) * ndim)
    labels = layered_labels(shape)
    rng = np.random.default_rng(1)
    centre = tuple(0.2 * n / 3 for n in shape)
    r2 = sum((x - c) ** 2 for x, c in zip(grid.mesh(), centre))
    init = {
        "tnf": 200 * np.exp(-r2 / 0.5),
        "il1": 30 * rng.uniform(size=shape),
        "leukocytes": 500 * rng.uniform(size=shape),
        "drug": rng.uniform(size=shape),
    }
    options, params, domain, state = setup(grid, labels, init, drug=True, scheme=scheme, chemotaxis=0.3, **TRANSPORT_ONLY)
    final, n_sub, _ = integrate(options, params, domain, state, 3.0, stepper=stepper)
    assert n_sub > 50
    for name in ("tnf", "il1", "leukocytes", "drug"):
        before, after = float(jnp.sum(getattr(state, name))), float(jnp.sum(getattr(final, name)))
        assert_close(after, before, rtol=1e-12, what=name)
    # something actually moved, across interfaces too
    assert float(jnp.max(jnp.abs(final.leukocytes - state.leukocytes))) > 1.0
    assert float(jnp.min(final.leukocytes)) >= 0.0
    assert float(jnp.max(jnp.abs(final.tnf * (labels == int(Tissue.BONE)).astype(final.tnf.dtype)))) == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_two_layer_steady_state_with_a_jump_in_diffusivity(ndim):
    """Fluid (D1) | capsule (D2) between Dirichlet walls: piecewise linear, flux continuous."""
    n, length = 20, 1.0
    h = length / n
    grid = Grid((1,) * (ndim - 1) + (n,), (1.0,) * (ndim - 1) + (h,))
    labels = np.full(grid.shape, int(Tissue.SYNOVIAL_FLUID), np.uint8)
    labels[..., n // 2 :] = int(Tissue.CAPSULE)
    d1, d2 = 1.0, 0.1
    table = np.zeros(6)
    table[int(Tissue.SYNOVIAL_FLUID)], table[int(Tissue.CAPSULE)] = d1, d2
    walls = (
        (
            "tnf",
            ((WallCondition(), WallCondition()),) * (ndim - 1)
            + ((WallCondition("dirichlet", 1.0), WallCondition("dirichlet", 0.0)),),
        ),
    )
    options, params, domain, state = setup(
        grid,
        labels,
        {},
        walls=walls,
        diffusivity_tnf=table,
        diffusivity_il1=table,
        diffusivity_drug=table,
        **TRANSPORT_ONLY,
    )
    final, _, _ = integrate(options, params, domain, state, 40.0)
    half = length / 2
    flux = 1.0 / (half / d1 + half / d2)
    x = grid.axis_centres(ndim - 1)
    exact = np.where(x < half, 1.0 - flux * x / d1, flux * (length - x) / d2)
    assert_close(final.tnf.reshape(n), exact, rtol=0, atol=1e-9)
    assert_close(1.0 - flux * half / d1, flux * half / d2, rtol=1e-12, what="interface value from both sides")


@pytest.mark.parametrize(
    "ndim,scheme,stepper",
    [
        (2, "upwind", "ssp_rk3"),
        (2, "limited", "ssp_rk3"),
        (3, "upwind", "ssp_rk3"),
        (2, "upwind", "strang_ssp_rk3"),
        (2, "upwind", "strang_rkl2"),
    ],
)
def test_leukocytes_stay_non_negative_under_strong_chemotaxis(ndim, scheme, stepper):
    shape = (16, 16) if ndim == 2 else (10, 10, 10)
    grid = Grid(shape, (0.1,) * ndim)
    centre = tuple(0.1 * n / 2 for n in shape)
    r2 = sum((x - c) ** 2 for x, c in zip(grid.mesh(), centre))
    leuk = np.where(grid.mesh()[-1] < 0.1 * shape[-1] / 3, 1000.0, 0.0)  # a sharp front with empty cells
    init = {"tnf": 1000 * np.exp(-r2 / 0.02), "leukocytes": leuk}
    options, params, domain, state = setup(
        grid,
        uniform_labels(shape),
        init,
        scheme=scheme,
        chemotaxis=20.0,
        chemotaxis_half_saturation=50.0,
        injury_rate=0.0,
    )
    final, n_sub, _ = integrate(options, params, domain, state, 0.5, safety=1.0, stepper=stepper)
    assert float(jnp.min(final.leukocytes)) >= -1e-10 * 1000
    # the cells did climb the gradient: more leukocytes near the TNF peak than at the start
    near = (r2 < 0.05).astype(np.float64)
    assert float(jnp.sum(final.leukocytes * near)) > 1.5 * float(jnp.sum(state.leukocytes * near))


def test_split_loss_update_is_second_order_for_state_dependent_rates():
    """The loss sub-step of the split stepper on dT/dt = -k A T, dA/dt = -k T A with T = A:
    T(t) = T0 / (1 + k T0 t) exactly; the midpoint rate makes the update second order."""
    k, y0, t_end = 2.0, 3.0, 1.0

    def rates(y):
        return {"tnf": k * y["drug"], "drug": k * y["tnf"]}

    exact = y0 / (1 + k * y0 * t_end)
    errors = []
    for n in (16, 32, 64):
        y = {"tnf": jnp.asarray(y0), "drug": jnp.asarray(y0)}
        for _ in range(n):
            y = exponential_losses(rates, y, t_end / n)
        errors.append(abs(float(y["tnf"]) - exact) / exact)
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(slopes - 2) < 0.15), (errors, slopes)


def test_merged_split_steps_are_the_split_step_for_one_step():
    """StrangSSPRK3.steps (what the solver runs) merges each closing loss half-step with the next
    opening one; for one step it is exactly StrangSSPRK3.step. (Its order over many steps is the
    temporal-order test above, which runs through the solver.)"""
    grid = Grid((8, 10), (0.5, 0.5))
    rng = np.random.default_rng(2)
    init = {
        s: c * rng.uniform(size=grid.shape)
        for s, c in (("tnf", 50), ("il1", 20), ("leukocytes", 1000), ("drug", 2), ("complex", 9))
    }
    options, params, domain, state = setup(grid, layered_labels(grid.shape), init, drug=True, injury_rate=0.0, drug_dose=0.0)
    coeffs = coefficients(params, domain)

    def f(y, t):
        return rhs(y, t, params, coeffs, domain, options, losses=False)

    def decay(y, tau):
        return split_losses(y, tau, params, domain, options)

    stepper = StrangSSPRK3()
    merged = jax.jit(lambda y: stepper.steps(Terms(f, decay), y, 0.0, 0.05, 1))(state)
    single = jax.jit(lambda y: stepper.step(Terms(f, decay), y, 0.0, 0.05))(state)
    for a, b in zip(merged, single):
        assert_close(a, b, rtol=0, atol=0)
    assert float(jnp.max(jnp.abs(merged.tnf - state.tnf))) > 1.0  # the step did something


def _neumann_mode(grid: Grid, m: int) -> tuple[np.ndarray, float]:
    """cos(pi m x / L) at the cell centres of the last axis (no-flux walls): an eigenvector of the
    discrete diffusion operator; returns it and its eigenvalue (1/h, for unit diffusivity)."""
    n, h = grid.shape[-1], grid.spacing[-1]
    x = grid.axis_centres(grid.ndim - 1)
    mode = np.cos(np.pi * m * (x - grid.origin[-1]) / (n * h)) * np.ones(grid.shape)
    return mode, 4.0 / h**2 * np.sin(np.pi * m / (2 * n)) ** 2


def _diffusion_only(grid, dtype=jnp.float64):
    table = np.zeros(6)
    table[int(Tissue.SYNOVIAL_FLUID)] = 1.0
    options, params, domain, _ = setup(
        grid, uniform_labels(grid.shape), {}, dtype=dtype, diffusivity_tnf=table, diffusivity_il1=table, **TRANSPORT_ONLY
    )
    coeffs = coefficients(params, domain)
    return lambda y: diffusion_rhs(y, coeffs, options)


def test_rkl2_super_step_is_second_order_against_the_exact_discrete_decay():
    """The RKL2 super-step alone on one eigenmode of the discrete diffusion operator (exact:
    exp(-lambda t)), at steps of 16, 8 and 4 forward-Euler limits (8, 6 and 4 stages): order 2."""
    grid = Grid((1, 32), (1.0, 1.0 / 32))
    diffuse = _diffusion_only(grid)
    mode, lam = _neumann_mode(grid, 3)
    dt_euler = 1.0 / (2.0 / grid.spacing[-1] ** 2)  # forward-Euler limit of the operator (D = 1)
    zeros = jnp.zeros(grid.shape)
    y0 = State(jnp.asarray(mode), zeros, zeros, zeros, None, None)
    t_end = 64 * dt_euler
    errors, stages = [], []
    for n_steps in (4, 8, 16):
        tau = t_end / n_steps
        s = rkl2_stages(tau, dt_euler)
        stages.append(s)
        y = y0
        for _ in range(n_steps):
            y = rkl2(diffuse, y, tau, s)
        errors.append(float(jnp.max(jnp.abs(y.tnf - mode * np.exp(-lam * t_end)))))
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert stages == [8, 6, 4], stages
    assert np.all(np.abs(slopes - 2) < 0.35), (errors, slopes)


def test_rkl2_stage_count_is_the_stability_boundary():
    """The stiffest mode (a checkerboard) over 20 super-steps: bounded with rkl2_stages' count,
    growing with one stage fewer; and the super-step conserves the total to round-off."""
    grid = Grid((16, 16), (0.1, 0.1))
    diffuse = _diffusion_only(grid)
    rng = np.random.default_rng(3)
    checker = (np.indices(grid.shape).sum(axis=0) % 2) * 2.0 - 1.0
    zeros = jnp.zeros(grid.shape)
    y0 = State(jnp.asarray(checker + 2.0 + 0.1 * rng.uniform(size=grid.shape)), zeros, zeros, zeros, None, None)
    dt_euler = 1.0 / (2.0 / 0.01 + 2.0 / 0.01)
    tau = 30.0 * dt_euler
    s = rkl2_stages(tau, dt_euler)
    assert (s * s + s - 2) / 4 >= 30.0 > ((s - 1) ** 2 + (s - 1) - 2) / 4

    def run(stages):
        y = y0
        for _ in range(20):
            y = rkl2(diffuse, y, tau, stages)
        return y.tnf

    stable, unstable = run(s), run(s - 1)
    assert float(jnp.max(jnp.abs(stable - jnp.mean(stable)))) < float(jnp.max(jnp.abs(y0.tnf - jnp.mean(y0.tnf))))
    assert float(jnp.max(jnp.abs(unstable))) > 1e3
    assert_close(float(jnp.sum(stable)), float(jnp.sum(y0.tnf)), rtol=1e-13)


# the 3D case (~15 s) runs with the slow validation
@pytest.mark.parametrize("shape", [(8, 10), pytest.param((4, 5, 10), marks=pytest.mark.slow)])
def test_strang_rkl2_is_second_order_with_many_stage_super_steps(shape):
    """The full model at 0.1 mm, where a step of 1/16 h is 7-8 forward-Euler diffusion limits
    (6 RKL2 stages): error against a fine SSP-RK3 reference falls at order 2, and smooth
    fields stay non-negative."""
    grid = Grid(shape, (0.1,) * len(shape))
    rng = np.random.default_rng(0)
    r2 = sum((x - 0.1 * n / 2) ** 2 for x, n in zip(grid.mesh(), shape))
    init = {
        "tnf": 50 * np.exp(-r2 / 0.1),
        "il1": 20 * np.exp(-r2 / 0.2),
        "leukocytes": 1000 * rng.uniform(size=shape),
        "cartilage": rng.uniform(0.5, 1.0, shape),
        "drug": np.exp(-r2 / 0.3),
    }
    options, params, domain, state = setup(
        grid, layered_labels(shape), init, drug=True, injury_rate=0.0, drug_dose=0.0, chemotaxis=0.01
    )
    t_end = 0.5
    limits = stable_dt(params, state, options, domain, 1.0, True, True)
    stages = super_step_stages("strang_rkl2", t_end / 8, limits, 0.9)
    assert t_end / 8 > 7 * limits["diffusion"] and stages >= 6

    def solve(stepper, m, stages=0):
        return get_solver(options, stepper, m, stages).advance(state, 0.0, t_end / m, params, domain)

    reference = solve("ssp_rk3", 1024)
    errors = []
    for m in (8, 16, 32):
        y = solve("strang_rkl2", m, stages)
        assert all(float(jnp.min(u)) >= 0.0 for u in y if u is not None)
        errors.append(max(float(jnp.max(jnp.abs(a - b)) / (1 + float(jnp.max(jnp.abs(b))))) for a, b in zip(y, reference)))
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((slopes > 1.7) & (slopes < 2.7)), (errors, slopes)


def test_rkl2_leaves_a_field_without_diffusion_exactly_as_it_is_in_float32():
    """Cartilage integrity goes through the super-step with a zero operator: the stage update is
    written as Y_0 + mu (Y_{j-1} - Y_0) + ..., so it is not rounded away from its value."""
    grid = Grid((16, 16), (0.1, 0.1))
    diffuse = _diffusion_only(grid, jnp.float32)
    rng = np.random.default_rng(5)
    f32 = {s: jnp.asarray(rng.uniform(0.5, 1.0, grid.shape), jnp.float32) for s in ("tnf", "il1", "leukocytes", "cartilage")}
    y = State(f32["tnf"], f32["il1"], f32["leukocytes"], f32["cartilage"], None, None)
    for _ in range(50):
        y = rkl2(diffuse, y, 0.02, 6)
    assert y.cartilage.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(y.cartilage), np.asarray(f32["cartilage"]))
