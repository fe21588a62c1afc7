"""Explicit strong-stability-preserving Runge-Kutta schemes in Shu-Osher form

    y_0 = y,   y_{s+1} = a_s y + (1 - a_s) (y_s + dt f(y_s, t + c_s dt)),   result y_S,

so one stage function runs them all: forward Euler, SSP-RK2 (Heun) and SSP-RK3 (Shu-Osher).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from ._base import Terms, no_checkpoint, run_stages


@dataclasses.dataclass(frozen=True)
class ShuOsher:
    """An SSP Runge-Kutta scheme given by its Shu-Osher tables ``a`` and ``c``."""

    layout: str = "platform"  # _base.LAYOUTS, or "platform"
    order: ClassVar[int]
    ssp_coefficient: ClassVar[float] = 1.0
    splits_losses: ClassVar[bool] = False
    splits_diffusion: ClassVar[bool] = False
    a: ClassVar[tuple[float, ...]]
    c: ClassVar[tuple[float, ...]]

    def stage_forcing(self, m0, m1) -> list:
        """Stage values of a time profile from its step means ``m0`` of g and ``m1`` of theta g
        (:class:`Terms`): non-negative for a non-negative profile, and combined by the scheme's
        weights b and b A they give the step's exact integral m0 and first moment m0 - m1 =
        mean (1 - theta) g. Then the step delivers exactly the profile's amount, and a switch inside
        it costs O(dt^3) (third order kept). Samples of a linear profile are reproduced."""
        if len(self.a) == 1:
            return [m0]
        first = m0 - m1  # mean of (1 - theta) g
        if len(self.a) == 2:  # c = (0, 1), b = (1/2, 1/2), b A = (1/2, 0)
            return [2.0 * first, 2.0 * m1]
        # c = (0, 1, 1/2), b = (1/6, 1/6, 2/3), b A = (1/3, 1/6, 0): a one-parameter family; its value at
        # theta = 0 is the linear fit's (4 m0 - 6 m1), clipped to keep every stage non-negative
        s1 = jnp.clip(4.0 * m0 - 6.0 * m1, 0.0, 3.0 * first)
        return [s1, 6.0 * first - 2.0 * s1, 1.5 * m1 + 0.25 * s1]

    def step(self, terms: Terms, y, t, dt):
        # coefficients and dt in the state's precision: a Python-float dt under x64 would
        # otherwise promote a float32 run to float64 arithmetic
        dtype = jax.tree.leaves(y)[0].dtype
        dt = jnp.asarray(dt, dtype)
        n = len(self.a)
        # each profile's stage values, stacked (stage i: forcing(i)); None: the profiles are sampled
        stacked = None
        if terms.forcing is not None:
            m0, m1 = terms.forcing(t, dt)
            stacked = jax.tree.map(lambda a, b: jnp.stack(self.stage_forcing(a, b)), m0, m1)

        def forcing(i):
            return None if stacked is None else jax.tree.map(lambda v: v[i], stacked)

        def rhs(ys, t, values):
            return terms.rhs(ys, t) if values is None else terms.rhs(ys, t, values)

        if n == 1:
            return jax.tree.map(lambda yi, ki: yi + dt * ki, y, rhs(y, t, forcing(0)))

        # Under reverse mode a stage keeps only its input state and recomputes the right-hand
        # side's intermediates in the backward pass, instead of stacking dozens of them per stage
        # (faster value+grad, benchmarks case ``gradient``; forward runs are unaffected).
        a = jnp.asarray(self.a, dtype)
        c = jnp.asarray(self.c, dtype)

        @jax.checkpoint
        def stage(a_s, c_s, ys, values=None):
            k = rhs(ys, t + c_s * dt, values)
            return jax.tree.map(lambda y0, yi, ki: a_s * y0 + (1 - a_s) * (yi + dt * ki), y, ys, k)

        def looped(y):
            return lax.fori_loop(0, n, lambda i, ys: stage(a[i], c[i], ys, forcing(i)), y)

        # Written out, the stages' results go straight to the next stage, never through a loop
        # carry (a loop copies every field once per stage; with barriers the last stage, which
        # reads the step's input only at its own cell, writes over it): faster than the loop on a
        # GPU and a CPU (benchmarks case ``layout``).
        stages = [functools.partial(stage, a[i], c[i], values=forcing(i)) for i in range(n)]
        return run_stages(stages, looped, y, self.layout)

    def steps(self, terms: Terms, y, t0, dt, n: int, checkpoint=no_checkpoint):
        """``n`` steps from ``t0``."""
        body = checkpoint(lambda i, y: self.step(terms, y, t0 + i * dt, dt))
        return lax.fori_loop(0, n, body, y)


@dataclasses.dataclass(frozen=True)
class ForwardEuler(ShuOsher):
    """First order; the reference step for the stability limits."""

    order = 1
    a, c = (0.0,), (0.0,)


@dataclasses.dataclass(frozen=True)
class SSPRK2(ShuOsher):
    """Heun's method in Shu-Osher form, second order, SSP coefficient 1."""

    order = 2
    a, c = (0.0, 0.5), (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class SSPRK3(ShuOsher):
    """Shu-Osher three-stage third-order SSP Runge-Kutta, SSP coefficient 1."""

    order = 3
    a, c = (0.0, 0.75, 1.0 / 3.0), (0.0, 1.0, 0.5)
