"""Discrete operators on polynomial and cosine fields, 2D and 3D."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fields import Grid
from solver.physics import WallCondition
from solver.physics import advection as _advection
from solver.physics import diffusion as _diffusion
from solver.physics._operators import face_diffusivities, harmonic_face_mean, pad_faces
from tests.helpers import assert_close


# one compile per call shape instead of one per primitive (eager dispatch is slow on CPU)
def diffusion(u, d_faces, spacing, d_cell=None, walls=()):
    return jax.jit(_diffusion, static_argnums=(2, 4))(u, tuple(d_faces), tuple(spacing), d_cell, walls)


def advection(u, velocities, spacing, open_faces, scheme="upwind"):
    return jax.jit(_advection, static_argnums=(2, 4))(u, tuple(velocities), tuple(spacing), tuple(open_faces), scheme)


SHAPES = {2: (12, 16), 3: (8, 10, 12)}


def test_harmonic_face_mean_is_zero_against_impermeable_cells():
    d = jnp.array([1.0, 3.0, 0.0, 2.0])
    assert_close(harmonic_face_mean(d, 0), [1.5, 0.0, 0.0], rtol=1e-14)
    # all faces: the walls get zero
    assert_close(face_diffusivities(d[None, :])[1], [[0.0, 1.5, 0.0, 0.0, 0.0]], rtol=1e-14)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("axis_of_variation", [0, -1])
def test_diffusion_of_neumann_cosine_mode_converges_at_second_order(ndim, axis_of_variation):
    """cos(pi x / L) satisfies no-flux walls; div(D grad u) -> -D (pi/L)^2 u at O(h^2)."""
    length, d = 2.0, 0.3
    errors = []
    for n in (16, 32, 64):
        shape = [6] * ndim
        shape[axis_of_variation] = n
        spacing = [0.1] * ndim
        spacing[axis_of_variation] = length / n
        grid = Grid(tuple(shape), tuple(spacing))
        x = grid.mesh()[axis_of_variation]
        u = jnp.asarray(np.cos(np.pi * x / length))
        dc = jnp.full(grid.shape, d)
        got = diffusion(u, face_diffusivities(dc), grid.spacing)
        exact = -d * (np.pi / length) ** 2 * u
        errors.append(float(jnp.max(jnp.abs(got - exact))))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert_close(orders, [2.0, 2.0], rtol=0.02, what=f"errors {errors}")


@pytest.mark.parametrize("ndim", [2, 3])
def test_diffusion_is_exact_for_quadratics_in_the_interior(ndim, rng):
    grid = Grid(SHAPES[ndim], tuple(rng.uniform(0.05, 0.2, ndim)))
    coords = grid.mesh()
    coeffs = rng.uniform(-1, 1, ndim)
    u = jnp.asarray(sum(c * x**2 for c, x in zip(coeffs, coords)) + coords[0] * coords[-1])
    d = 0.7
    got = diffusion(u, face_diffusivities(jnp.full(grid.shape, d)), grid.spacing)
    interior = tuple(slice(1, -1) for _ in range(ndim))
    assert_close(got[interior], np.full(got[interior].shape, 2 * d * coeffs.sum()), rtol=1e-10)


@pytest.mark.parametrize("scheme", ["upwind", "limited"])
def test_advection_conserves_the_sum_and_matches_a_face_flux_reference(scheme, rng):
    """Against a direct implementation on interior faces (the textbook form), with closed faces."""
    grid = Grid((7, 9), (0.1, 0.2))
    u = jnp.asarray(rng.uniform(0, 1, grid.shape))
    v = [jnp.asarray(rng.uniform(-1, 1, (6, 9))), jnp.asarray(rng.uniform(-1, 1, (7, 8)))]
    is_open = [jnp.asarray(rng.uniform(size=f.shape) > 0.3, dtype=float) for f in v]
    got = advection(
        u, [pad_faces(f, a) for a, f in enumerate(v)], grid.spacing, [pad_faces(f, a) for a, f in enumerate(is_open)], scheme
    )
    un = np.asarray(u)
    expected = np.zeros(grid.shape)
    for a, h in enumerate(grid.spacing):
        um = np.moveaxis(un, a, 0)
        vm, om = np.moveaxis(np.asarray(v[a] * is_open[a]), a, 0), np.moveaxis(np.asarray(is_open[a]), a, 0)
        diff = (um[1:] - um[:-1]) * om
        dl = np.concatenate([np.zeros_like(diff[:1]), diff])
        dr = np.concatenate([diff, np.zeros_like(diff[:1])])
        slope = np.where(dl * dr > 0, np.sign(dl) * np.minimum(abs(dl), abs(dr)), 0.0) if scheme == "limited" else 0 * um
        left, right = um[:-1] + 0.5 * slope[:-1], um[1:] - 0.5 * slope[1:]
        flux = np.maximum(vm, 0) * left + np.minimum(vm, 0) * right
        full = np.concatenate([np.zeros_like(flux[:1]), flux, np.zeros_like(flux[:1])])
        expected += np.moveaxis(-(full[1:] - full[:-1]) / h, 0, a)
    assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert abs(float(jnp.sum(got))) < 1e-12


@pytest.mark.parametrize("ndim", [2, 3])
def test_no_flux_diffusion_conserves_the_sum(ndim, rng):
    grid = Grid(SHAPES[ndim], (0.1,) * ndim)
    u = jnp.asarray(rng.uniform(0, 1, grid.shape))
    d = jnp.asarray(rng.uniform(0, 1, grid.shape) * (rng.uniform(size=grid.shape) > 0.2))
    assert abs(float(jnp.sum(diffusion(u, face_diffusivities(d), grid.spacing)))) < 1e-12


def test_dirichlet_wall_holds_a_linear_profile_steady():
    """u = 1 - x/L between u(0) = 1 and u(L) = 0 is a discrete steady state."""
    n, length = 20, 1.0
    grid = Grid((3, n), (0.1, length / n))
    x = grid.mesh()[1]
    u = jnp.asarray(1.0 - x / length)
    d = jnp.full(grid.shape, 0.4)
    walls = ((WallCondition(), WallCondition()), (WallCondition("dirichlet", 1.0), WallCondition("dirichlet", 0.0)))
    got = diffusion(u, face_diffusivities(d), grid.spacing, d, walls)
    assert float(jnp.max(jnp.abs(got))) < 1e-12


def test_robin_wall_drains_at_the_expected_rate():
    """A single column with a robin wall: outflow = kappa*2D/h/(kappa + 2D/h) * (u - u_ext)."""
    grid = Grid((1, 1), (1.0, 0.2))
    u = jnp.array([[3.0]])
    d = jnp.array([[0.5]])
    kappa, ext = 0.1, 1.0
    walls = ((WallCondition(), WallCondition()), (WallCondition(), WallCondition("robin", ext, kappa)))
    got = diffusion(u, face_diffusivities(d), grid.spacing, d, walls)
    half = 2 * 0.5 / 0.2
    assert_close(got, [[-(kappa * half / (kappa + half)) * (3.0 - ext) / 0.2]], rtol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("scheme", ["upwind", "limited"])
def test_advection_of_a_linear_field_is_exact_in_the_interior(ndim, scheme, rng):
    grid = Grid(SHAPES[ndim], (0.1,) * ndim)
    coords = grid.mesh()
    slopes = rng.uniform(-1, 1, ndim)
    u = jnp.asarray(5.0 + sum(s * x for s, x in zip(slopes, coords)))
    velocities = rng.uniform(-2, 2, ndim)
    faces = []
    for a in range(ndim):
        shape = list(grid.shape)
        shape[a] += 1  # all faces; the walls carry no flux
        faces.append(jnp.full(shape, velocities[a]))
    open_faces = [jnp.ones_like(f) for f in faces]
    got = advection(u, faces, grid.spacing, open_faces, scheme)
    interior = tuple(slice(2, -2) for _ in range(ndim))
    expected = -float(np.dot(velocities, slopes))
    assert_close(got[interior], np.full(got[interior].shape, expected), rtol=1e-9)


@pytest.mark.parametrize("scheme", ["upwind", "limited"])
def test_advection_carries_nothing_through_closed_faces(scheme, rng):
    grid = Grid((6, 8), (0.1, 0.1))
    u = jnp.asarray(rng.uniform(0, 1, grid.shape))
    faces = [jnp.asarray(rng.uniform(-1, 1, (7, 8))), jnp.asarray(rng.uniform(-1, 1, (6, 9)))]
    closed = [jnp.zeros((7, 8)), jnp.zeros((6, 9))]
    assert float(jnp.max(jnp.abs(advection(u, faces, grid.spacing, closed, scheme)))) == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_hand_written_operator_adjoints_match_jax_reverse_mode(ndim, rng):
    """diffusion_vjp and upwind_chemotaxis_vjp against jax.vjp of the operators they invert, on
    fields with impermeable cells, closed faces, unequal spacings and flat patches where the
    chemotactic velocity is exactly zero (where JAX takes the mean of the two upwind sides)."""
    from solver.physics import diffusion_vjp, gradient_on_faces
    from solver.physics._operators import upwind_chemotaxis_vjp

    shape = SHAPES[ndim]
    h = (0.2, 0.25, 0.3)[:ndim]
    u, g = (jnp.asarray(rng.uniform(0.5, 2.0, shape)) for _ in range(2))
    d_cell = jnp.asarray(rng.uniform(0.1, 1.0, shape) * (rng.uniform(size=shape) > 0.2))
    s = jnp.asarray(rng.uniform(size=shape))
    s = s.at[(slice(0, 4),) * ndim].set(0.3)  # a flat patch: zero velocity on its inner faces
    open_cells = jnp.asarray(rng.uniform(size=shape) > 0.15, jnp.float64)
    open_faces = tuple(
        pad_faces(open_cells[(slice(None),) * a + (slice(None, -1),)] * open_cells[(slice(None),) * a + (slice(1, None),)], a)
        for a in range(ndim)
    )
    chi = jnp.asarray(0.7)

    _, pullback = jax.vjp(lambda u, d: _diffusion(u, face_diffusivities(d), h), u, d_cell)
    u_bar, d_bar = jax.jit(diffusion_vjp, static_argnums=4)(u, g, face_diffusivities(d_cell), d_cell, h)
    for ours, theirs, what in zip((u_bar, d_bar), pullback(g), ("u", "D")):
        assert_close(ours, theirs, rtol=1e-12, atol=1e-12, what=f"diffusion {what}")

    def chemotaxis(u, s, chi):
        return _advection(u, tuple(chi * gf for gf in gradient_on_faces(s, h)), h, open_faces, "upwind")

    _, pullback = jax.vjp(chemotaxis, u, s, chi)
    ours = jax.jit(upwind_chemotaxis_vjp, static_argnums=5)(u, s, g, chi, open_faces, h)
    for mine, theirs, what in zip(ours, pullback(g), ("u", "s", "chi")):
        assert_close(mine, theirs, rtol=1e-12, atol=1e-12, what=f"chemotaxis {what}")
    # the flat patch did produce exact zero velocities on open faces
    v = gradient_on_faces(s, h)[0] * open_faces[0]
    assert int(jnp.sum((v == 0) & (open_faces[0] > 0))) > 0
