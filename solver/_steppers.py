"""Explicit strong-stability-preserving Runge-Kutta steppers behind one small contract.

A stepper advances ``y`` (any pytree) by ``dt`` for ``dy/dt = f(y, t)``. Each has an
``order`` and an ``ssp_coefficient`` (the factor on the forward-Euler step limit under
which positivity and stability carry over). A new scheme is a new class here.

The SSP schemes below share the Shu-Osher form

    y_0 = y,   y_{s+1} = a_s y + (1 - a_s) (y_s + dt f(y_s, t + c_s dt)),   result y_S,

so one loop over stages with one right-hand side in its body runs them all. The loop is
what keeps them fast: written out, XLA fused each stage into the next stage's stencils
and recomputed it for every neighbour (2.7x slower on the 3D knee grid on CPU).

A split stepper (``splits_losses = True``) also takes ``rates(y)``, pointwise first-order loss
rates K with ``dy/dt = f(y, t) - K(y) y``, and ``f`` without those losses (solver._model.loss_rates).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
from jax import lax

Rhs = Callable[[Any, Any], Any]


class Stepper(Protocol):
    order: ClassVar[int]
    ssp_coefficient: ClassVar[float]
    splits_losses: ClassVar[bool]

    def step(self, f: Rhs, y, t, dt, rates: Callable[[Any], Any] | None = None): ...


class ShuOsher:
    """An SSP Runge-Kutta scheme given by its Shu-Osher tables ``a`` and ``c``."""

    order: ClassVar[int]
    ssp_coefficient: ClassVar[float] = 1.0
    splits_losses: ClassVar[bool] = False
    a: ClassVar[tuple[float, ...]]
    c: ClassVar[tuple[float, ...]]

    def step(self, f: Rhs, y, t, dt, rates=None):
        # coefficients and dt in the state's precision: a Python-float dt under x64 would
        # otherwise promote a float32 run to float64 arithmetic
        dtype = jax.tree.leaves(y)[0].dtype
        dt = jnp.asarray(dt, dtype)
        if len(self.a) == 1:
            return jax.tree.map(lambda yi, ki: yi + dt * ki, y, f(y, t))
        a = jnp.asarray(self.a, dtype)
        c = jnp.asarray(self.c, dtype)

        # Under reverse mode a stage keeps only its input state and recomputes the right-hand
        # side's intermediates in the backward pass, instead of stacking dozens of them per stage
        # (1.2x faster value+grad at 128^2 and 1.6x at 256^2 on CPU; forward runs are unaffected).
        @jax.checkpoint
        def stage(s, ys):
            k = f(ys, t + c[s] * dt)
            return jax.tree.map(lambda y0, yi, ki: a[s] * y0 + (1 - a[s]) * (yi + dt * ki), y, ys, k)

        return lax.fori_loop(0, len(self.a), stage, y)


class ForwardEuler(ShuOsher):
    """First order; the reference step for the stability limits."""

    order = 1
    a, c = (0.0,), (0.0,)


class SSPRK2(ShuOsher):
    """Heun's method in Shu-Osher form, second order, SSP coefficient 1."""

    order = 2
    a, c = (0.0, 0.5), (0.0, 1.0)


class SSPRK3(ShuOsher):
    """Shu-Osher three-stage third-order SSP Runge-Kutta, SSP coefficient 1."""

    order = 3
    a, c = (0.0, 0.75, 1.0 / 3.0), (0.0, 1.0, 0.5)


def _exponential_losses(rates: Callable[[Any], Any], y, tau):
    """``dy/dt = -K(y) y`` over ``tau``: y exp(-K(y_mid) tau), y_mid from a half step with K(y).

    Each species' loss is proportional to itself, so this is exact for frozen K and the midpoint
    rule makes it second order in general; a factor exp(-K tau) keeps every value's sign.
    """
    half = jax.tree.map(lambda yi, ki: yi * jnp.exp(-0.5 * tau * ki), y, rates(y))
    return jax.tree.map(lambda yi, ki: yi * jnp.exp(-tau * ki), y, rates(half))


class StrangSSPRK3:
    """Strang splitting: the losses exactly over half steps, SSP-RK3 for the rest in between.

    Second order. The decay and drug-binding rates then no longer limit the step: with the
    drug on, the binding k_AT A (about 40 /h) set a 0.024 h limit that diffusion (0.040 h on
    the 0.25 mm knee, 0.16 h at 0.5 mm) replaces. Values stay non-negative under the same
    diffusion and chemotaxis limits as SSP-RK3.
    """

    order: ClassVar[int] = 2
    ssp_coefficient: ClassVar[float] = 1.0
    splits_losses: ClassVar[bool] = True

    def step(self, f: Rhs, y, t, dt, rates=None):
        half = 0.5 * jnp.asarray(dt, jax.tree.leaves(y)[0].dtype)
        y = SSPRK3().step(f, _exponential_losses(rates, y, half), t, dt)
        return _exponential_losses(rates, y, half)

    def steps(self, f: Rhs, rates, y, t0, dt, n: int, checkpoint=lambda g: g):
        """``n`` steps from ``t0``, each step's closing half of the losses merged with the next one's
        opening half (one pass over the fields instead of two; still second order)."""
        dt = jnp.asarray(dt, jax.tree.leaves(y)[0].dtype)

        @checkpoint
        def body(i, y):
            y = SSPRK3().step(f, y, t0 + i * dt, dt)
            return _exponential_losses(rates, y, jnp.where(i == n - 1, 0.5 * dt, dt))

        return lax.fori_loop(0, n, body, _exponential_losses(rates, y, 0.5 * dt))


STEPPERS: dict[str, type] = {
    "forward_euler": ForwardEuler,
    "ssp_rk2": SSPRK2,
    "ssp_rk3": SSPRK3,
    "strang_ssp_rk3": StrangSSPRK3,
}


def get_stepper(name: str) -> Stepper:
    try:
        return STEPPERS[name]()
    except KeyError:
        raise ValueError(f"stepper {name!r}: allowed {', '.join(STEPPERS)}") from None
