"""Finite-volume operators on a uniform cell-centred grid with tissue labels.

Fluxes live on the interior faces between neighbouring cells along one axis (shape
``n - 1`` on that axis); the flux through a domain wall comes from the boundary
condition (zero: no flux). A positive flux points in the direction of increasing index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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


def face_diffusivities(d: jax.Array) -> tuple[jax.Array, ...]:
    """Harmonic face diffusivities along every axis."""
    return tuple(harmonic_face_mean(d, axis) for axis in range(d.ndim))


def _wall_flux(u_cell: jax.Array, d_cell: jax.Array, h: float, wall: WallCondition) -> jax.Array:
    """Outward flux through a wall, from the wall cells' values and diffusivities."""
    if wall.kind == "dirichlet":
        return 2.0 * d_cell * (u_cell - wall.value) / h
    # robin: drainage coefficient in series with half a cell of diffusion
    half_cell = 2.0 * d_cell / h
    denom = jnp.where(half_cell > 0, wall.coefficient + half_cell, 1.0)
    return jnp.where(half_cell > 0, wall.coefficient * half_cell / denom, 0.0) * (u_cell - wall.value)


def divergence(
    fluxes: Sequence[jax.Array],
    spacing: Sequence[float],
    wall_fluxes: Sequence[tuple[jax.Array | None, jax.Array | None]] | None = None,
) -> jax.Array:
    """``-div F`` per cell from interior-face fluxes (and optional outward wall fluxes)."""
    out = None
    for axis, (flux, h) in enumerate(zip(fluxes, spacing)):
        pad = [(0, 0)] * flux.ndim
        pad[axis] = (1, 1)
        full = jnp.pad(flux, pad)  # walls carry zero flux unless a condition adds some
        term = -(upper(full, axis) - lower(full, axis)) / h
        if wall_fluxes is not None:
            low, high = wall_fluxes[axis]
            if low is not None:
                term = term.at[_slice(term.ndim, axis, slice(0, 1))].add(-low / h)
            if high is not None:
                term = term.at[_slice(term.ndim, axis, slice(-1, None))].add(-high / h)
        out = term if out is None else out + term
    return out


def diffusion(
    u: jax.Array,
    d_faces: Sequence[jax.Array],
    spacing: Sequence[float],
    d_cell: jax.Array | None = None,
    walls: Walls = (),
) -> jax.Array:
    """``div(D grad u)`` with face diffusivities ``d_faces``, units of u per h.

    ``walls`` gives, per axis, the (low, high) wall conditions; ``d_cell`` (the cell
    diffusivity) is needed only when a wall is not no-flux.
    """
    fluxes = [-df * (upper(u, a) - lower(u, a)) / h for a, (df, h) in enumerate(zip(d_faces, spacing))]
    wall_fluxes = None
    if any(w.kind != "no_flux" for pair in walls for w in pair):
        wall_fluxes = []
        for axis, (pair, h) in enumerate(zip(walls, spacing)):
            ends = []
            for side, wall in zip((slice(0, 1), slice(-1, None)), pair):
                if wall.kind == "no_flux":
                    ends.append(None)
                else:
                    sl = _slice(u.ndim, axis, side)
                    ends.append(_wall_flux(u[sl], d_cell[sl], h, wall))
            wall_fluxes.append(tuple(ends))
    return divergence(fluxes, spacing, wall_fluxes)


def _minmod(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(a * b > 0, jnp.sign(a) * jnp.minimum(jnp.abs(a), jnp.abs(b)), 0.0)


def _limited_slopes(u: jax.Array, open_face: jax.Array, axis: int) -> jax.Array:
    """Minmod slope per cell along ``axis``, using differences across open faces only."""
    diff = (upper(u, axis) - lower(u, axis)) * open_face
    pad_low = [(0, 0)] * u.ndim
    pad_low[axis] = (1, 0)
    pad_high = [(0, 0)] * u.ndim
    pad_high[axis] = (0, 1)
    return _minmod(jnp.pad(diff, pad_low), jnp.pad(diff, pad_high))


def advection(
    u: jax.Array,
    velocities: Sequence[jax.Array],
    spacing: Sequence[float],
    open_faces: Sequence[jax.Array],
    scheme: str = "upwind",
) -> jax.Array:
    """``-div(v u)`` with face velocities (mm/h), upwinded so that ``u`` stays non-negative.

    ``scheme``: ``"upwind"`` (first order; positive for ``dt * sum|v|/h <= 1``) or
    ``"limited"`` (MUSCL with a minmod limiter, second order where smooth; positive for
    half that step). Faces where ``open_faces`` is zero carry no flux.
    """
    fluxes = []
    for axis, (v, open_face) in enumerate(zip(velocities, open_faces)):
        left, right = lower(u, axis), upper(u, axis)
        if scheme == "limited":
            slope = _limited_slopes(u, open_face, axis)
            left = left + 0.5 * lower(slope, axis)
            right = right - 0.5 * upper(slope, axis)
        elif scheme != "upwind":
            raise ValueError(f"chemotaxis scheme {scheme!r}: allowed upwind, limited")
        v = v * open_face
        fluxes.append(jnp.maximum(v, 0.0) * left + jnp.minimum(v, 0.0) * right)
    return divergence(fluxes, spacing)


def gradient_on_faces(u: jax.Array, spacing: Sequence[float]) -> tuple[jax.Array, ...]:
    """Normal derivative of a cell field on interior faces along every axis."""
    return tuple((upper(u, a) - lower(u, a)) / h for a, h in enumerate(spacing))
