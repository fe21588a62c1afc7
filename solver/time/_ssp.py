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

    def step(self, terms: Terms, y, t, dt):
        f = terms.rhs
        # coefficients and dt in the state's precision: a Python-float dt under x64 would
        # otherwise promote a float32 run to float64 arithmetic
        dtype = jax.tree.leaves(y)[0].dtype
        dt = jnp.asarray(dt, dtype)
        if len(self.a) == 1:
            return jax.tree.map(lambda yi, ki: yi + dt * ki, y, f(y, t))

        # Under reverse mode a stage keeps only its input state and recomputes the right-hand
        # side's intermediates in the backward pass, instead of stacking dozens of them per stage
        # (faster value+grad, benchmarks case ``gradient``; forward runs are unaffected).
        a = jnp.asarray(self.a, dtype)
        c = jnp.asarray(self.c, dtype)

        @jax.checkpoint
        def stage(a_s, c_s, ys):
            k = f(ys, t + c_s * dt)
            return jax.tree.map(lambda y0, yi, ki: a_s * y0 + (1 - a_s) * (yi + dt * ki), y, ys, k)

        def looped(y):
            return lax.fori_loop(0, len(self.a), lambda i, ys: stage(a[i], c[i], ys), y)

        # Written out, the stages' results go straight to the next stage, never through a loop
        # carry (a loop copies every field once per stage; with barriers the last stage, which
        # reads the step's input only at its own cell, writes over it): faster than the loop on a
        # GPU and a CPU (benchmarks case ``layout``).
        stages = [functools.partial(stage, a[i], c[i]) for i in range(len(self.a))]
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
