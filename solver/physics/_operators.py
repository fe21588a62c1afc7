"""Finite-volume operators on a uniform cell-centred grid with tissue labels.

Face quantities (diffusivities, velocities) are stored on all faces along an axis (shape
``n + 1`` on that axis), zero on the domain walls; the flux through a wall comes from the
boundary condition (none: no flux). A positive flux points in the direction of increasing index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import cast

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class WallCondition:
    """Condition on one wall for one species (static, hashable).

    ``kind``:
      - ``"no_flux"``: zero flux (the default).
      - ``"dirichlet"``: the value at the wall is ``value``.
      - ``"robin"``: outward flux ``coefficient * (u_wall - value)`` (drainage, mm/h),
        in series with the half-cell diffusive resistance.
    """

    kind: str = "no_flux"
    value: float = 0.0
    coefficient: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("no_flux", "dirichlet", "robin"):
            raise ValueError(f"wall condition kind {self.kind!r}: allowed no_flux, dirichlet, robin")
        if self.kind == "robin" and not self.coefficient >= 0:
            raise ValueError(f"robin coefficient must be >= 0, got {self.coefficient}")


NO_FLUX = WallCondition()

#: Walls per axis: (low side, high side); an empty tuple means all walls are no-flux.
Walls = tuple[tuple[WallCondition, WallCondition], ...]


def _slice(ndim: int, axis: int, sl: slice) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[axis] = sl
    return tuple(index)


def lower(u: jax.Array, axis: int) -> jax.Array:
    """Cells on the low side of each interior face along ``axis``."""
    return u[_slice(u.ndim, axis, slice(None, -1))]


def upper(u: jax.Array, axis: int) -> jax.Array:
    """Cells on the high side of each interior face along ``axis``."""
    return u[_slice(u.ndim, axis, slice(1, None))]


def harmonic_face_mean(d: jax.Array, axis: int) -> jax.Array:
    """Harmonic mean of a cell coefficient on interior faces; zero if either side is zero.

    The harmonic mean is what makes the flux continuous across a jump in diffusivity
    (two half-cells in series).
    """
    a, b = lower(d, axis), upper(d, axis)
    total = a + b
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where((a > 0) & (b > 0), 2.0 * a * b / safe, 0.0)


def pad_faces(face: jax.Array, axis: int) -> jax.Array:
    """Interior-face array (``n - 1`` on ``axis``) -> all faces (``n + 1``), zero on the walls."""
    pad = [(0, 0)] * face.ndim
    pad[axis] = (1, 1)
    return jnp.pad(face, pad)


def face_diffusivities(d: jax.Array) -> tuple[jax.Array, ...]:
    """Harmonic face diffusivities on all faces along every axis (``n + 1`` on that axis, zero on walls)."""
    return tuple(pad_faces(harmonic_face_mean(d, axis), axis) for axis in range(d.ndim))


def _wall_flux(u_cell: jax.Array, d_cell: jax.Array, h: float, wall: WallCondition) -> jax.Array:
    """Outward flux through a wall, from the wall cells' values and diffusivities."""
    if wall.kind == "dirichlet":
        return 2.0 * d_cell * (u_cell - wall.value) / h
    # robin: drainage coefficient in series with half a cell of diffusion
    half_cell = 2.0 * d_cell / h
    denom = jnp.where(half_cell > 0, wall.coefficient + half_cell, 1.0)
    return jnp.where(half_cell > 0, wall.coefficient * half_cell / denom, 0.0) * (u_cell - wall.value)


# The operators below are written per cell: neighbours are shifted slices of one padded copy,
# face coefficients the two slices of an all-faces (n + 1) array. Each operator is then one
# elementwise loop that XLA fuses whole (faster than computing fluxes on the interior faces and
# differencing them, which takes several passes over memory; benchmarks case ``forward``).


def _neighbours(u: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """``u`` shifted by -1 and +1 along ``axis`` (zero beyond the walls): slices of a padded copy.

    On a CPU the copy is padded on every axis, the same copy for every axis and operator (XLA
    merges the equal pads): XLA:CPU writes each pad out, so one per field beats one per field and
    axis. XLA:GPU fuses the pads into the stencils, where padding only along ``axis`` is faster
    (benchmarks case ``forward``).
    """
    n = u.shape[axis]

    def along_axis(u):
        padded = jnp.pad(u, [(1, 1) if a == axis else (0, 0) for a in range(u.ndim)])
        return padded[_slice(u.ndim, axis, slice(0, n))], padded[_slice(u.ndim, axis, slice(2, n + 2))]

    def every_axis(u):
        padded = jnp.pad(u, 1)
        inner = [slice(1, m + 1) for m in u.shape]
        low, high = list(inner), list(inner)
        low[axis], high[axis] = slice(0, n), slice(2, n + 2)
        return padded[tuple(low)], padded[tuple(high)]

    return jax.lax.platform_dependent(u, cpu=every_axis, default=along_axis)


def _low_high(face: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Coefficients on each cell's low and high face from an all-faces array."""
    return face[_slice(face.ndim, axis, slice(None, -1))], face[_slice(face.ndim, axis, slice(1, None))]


def _add_wall_fluxes(term, u, d_cell, spacing, walls):
    for axis, (pair, h) in enumerate(zip(walls, spacing)):
        for side, wall in zip((slice(0, 1), slice(-1, None)), pair):
            if wall.kind != "no_flux":
                sl = _slice(u.ndim, axis, side)
                term = term.at[sl].add(-_wall_flux(u[sl], d_cell[sl], h, wall) / h)
    return term


def diffusion(
    u: jax.Array,
    d_faces: Sequence[jax.Array],
    spacing: Sequence[float],
    d_cell: jax.Array | None = None,
    walls: Walls = (),
) -> jax.Array:
    """``div(D grad u)`` with diffusivities on all faces (:func:`face_diffusivities`), units of u per h.

    ``walls`` gives, per axis, the (low, high) wall conditions; ``d_cell`` (the cell
    diffusivity) is needed only when a wall is not no-flux.
    """
    out: jax.Array | float = 0.0  # a weakly typed zero, an Array after the first axis
    for axis, (df, h) in enumerate(zip(d_faces, spacing)):
        prev, nxt = _neighbours(u, axis)
        d_low, d_high = _low_high(df, axis)
        out = out + (d_high * (nxt - u) - d_low * (u - prev)) / (h * h)
    if any(w.kind != "no_flux" for pair in walls for w in pair):
        out = _add_wall_fluxes(cast(jax.Array, out), u, d_cell, spacing, walls)
    return cast(jax.Array, out)


def _minmod(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(a * b > 0, jnp.sign(a) * jnp.minimum(jnp.abs(a), jnp.abs(b)), 0.0)


def advection(
    u: jax.Array,
    velocities: Sequence[jax.Array],
    spacing: Sequence[float],
    open_faces: Sequence[jax.Array] | None = None,
    scheme: str = "upwind",
) -> jax.Array:
    """``-div(v u)`` with velocities on all faces (mm/h, ``n + 1`` per axis), upwinded so ``u`` stays >= 0.

    ``scheme``: ``"upwind"`` (first order; positive for ``dt * sum|v|/h <= 1``) or
    ``"limited"`` (MUSCL with a minmod limiter, second order where smooth; positive for
    half that step). The walls, and faces where ``open_faces`` (same shapes) is zero, carry
    no flux; limiter slopes use differences across open faces only.
    """
    if scheme not in ("upwind", "limited"):
        raise ValueError(f"chemotaxis scheme {scheme!r}: allowed upwind, limited")
    out: jax.Array | float = 0.0  # a weakly typed zero, an Array after the first axis
    for axis, (v, h) in enumerate(zip(velocities, spacing)):
        open_low: jax.Array | float = 1.0
        open_high: jax.Array | float = 1.0
        if open_faces is not None:
            v = v * open_faces[axis]
            open_low, open_high = _low_high(open_faces[axis], axis)
        v_low, v_high = _low_high(v, axis)
        prev, nxt = _neighbours(u, axis)
        if scheme == "upwind":
            high = jnp.maximum(v_high, 0.0) * u + jnp.minimum(v_high, 0.0) * nxt
            low = jnp.maximum(v_low, 0.0) * prev + jnp.minimum(v_low, 0.0) * u
        else:
            slope = _minmod((u - prev) * open_low, (nxt - u) * open_high)
            s_prev, s_next = _neighbours(slope, axis)
            high = jnp.maximum(v_high, 0.0) * (u + 0.5 * slope) + jnp.minimum(v_high, 0.0) * (nxt - 0.5 * s_next)
            low = jnp.maximum(v_low, 0.0) * (prev + 0.5 * s_prev) + jnp.minimum(v_low, 0.0) * (u - 0.5 * slope)
        out = out - (high - low) / h
    return cast(jax.Array, out)


def gradient_on_faces(u: jax.Array, spacing: Sequence[float]) -> tuple[jax.Array, ...]:
    """Normal derivative of a cell field on all faces along every axis (zero on the walls)."""
    return tuple(pad_faces((upper(u, a) - lower(u, a)) / h, a) for a, h in enumerate(spacing))


# Reverse mode. Differentiated by JAX, the operators above transpose every shifted slice into a
# scatter (a padded copy) of its own, and the face coefficients get dense cotangent arrays. Their
# adjoints below are again one stencil per cell, in the same gather form as the operators: each
# cell reads its neighbours' values and cotangents and writes its own cotangents.


def _harmonic_derivative(a: jax.Array, b: jax.Array) -> jax.Array:
    """d/da of the harmonic face mean 2ab/(a + b) (zero where either side is zero, as the mean)."""
    total = a + b
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where((a > 0) & (b > 0), 2.0 * b * b / (safe * safe), 0.0)


def diffusion_vjp(
    u: jax.Array, g: jax.Array, d_faces: Sequence[jax.Array], d_cell: jax.Array, spacing: Sequence[float]
) -> tuple[jax.Array, jax.Array]:
    """Cotangents ``(u_bar, d_cell_bar)`` of :func:`diffusion` with no-flux walls, for output cotangent ``g``.

    ``d_faces`` are ``face_diffusivities(d_cell)``. The operator is symmetric (each face's flux
    enters its two cells with opposite signs), so ``u_bar = diffusion(g)``. A face's diffusivity
    gets ``(u_high - u_low) (g_low - g_high) / h^2``, passed to its two cells through the
    harmonic mean's derivatives.
    """
    d_bar: jax.Array | float = 0.0  # a weakly typed zero, an Array after the first axis
    for axis, h in enumerate(spacing):
        u_prev, u_next = _neighbours(u, axis)
        g_prev, g_next = _neighbours(g, axis)
        d_prev, d_next = _neighbours(d_cell, axis)
        high = (u_next - u) * (g - g_next) / (h * h)
        low = (u - u_prev) * (g_prev - g) / (h * h)
        d_bar = d_bar + high * _harmonic_derivative(d_cell, d_next) + low * _harmonic_derivative(d_cell, d_prev)
    return diffusion(g, d_faces, spacing), cast(jax.Array, d_bar)


def _upwind_derivative(v: jax.Array, low_cell: jax.Array, high_cell: jax.Array) -> jax.Array:
    """d/dv of the upwind flux max(v, 0) u_low + min(v, 0) u_high (the mean of both sides at v = 0, as JAX)."""
    return jnp.where(v > 0, low_cell, jnp.where(v < 0, high_cell, 0.5 * (low_cell + high_cell)))


def upwind_chemotaxis_vjp(
    u: jax.Array,
    s: jax.Array,
    g: jax.Array,
    chi: jax.Array,
    open_faces: Sequence[jax.Array],
    spacing: Sequence[float],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cotangents ``(u_bar, s_bar, chi_bar)`` of ``advection(u, v, open_faces, "upwind")`` with face
    velocities ``v = chi * gradient_on_faces(s)``, for output cotangent ``g``.

    ``chi`` is a scalar; ``chi_bar`` is summed over the grid. ``open_faces`` must be zero on the
    walls (as the model's leukocyte faces are): the adjoint relies on it where the forward
    operator's wall velocities are zero anyway.
    """
    # weakly typed zeros, Arrays after the first axis
    u_bar: jax.Array | float = 0.0
    s_bar: jax.Array | float = 0.0
    chi_cells: jax.Array | float = 0.0
    for axis, h in enumerate(spacing):
        u_prev, u_next = _neighbours(u, axis)
        s_prev, s_next = _neighbours(s, axis)
        g_prev, g_next = _neighbours(g, axis)
        open_low, open_high = _low_high(open_faces[axis], axis)
        grad_high = open_high * (s_next - s) / h
        grad_low = open_low * (s - s_prev) / h
        v_high, v_low = chi * grad_high, chi * grad_low
        # flux cotangents: a face's flux leaves its low cell and enters its high cell
        flux_high = (g_next - g) / h
        flux_low = (g - g_prev) / h
        u_bar = u_bar + flux_high * jnp.maximum(v_high, 0.0) + flux_low * jnp.minimum(v_low, 0.0)
        v_bar_high = flux_high * _upwind_derivative(v_high, u, u_next)
        v_bar_low = flux_low * _upwind_derivative(v_low, u_prev, u)
        s_bar = s_bar + chi * (open_low * v_bar_low - open_high * v_bar_high) / h
        chi_cells = chi_cells + v_bar_high * grad_high  # each face once, as its low cell's high face
    return cast(jax.Array, u_bar), cast(jax.Array, s_bar), jnp.sum(chi_cells)
