"""Explicit strong-stability-preserving Runge-Kutta steppers behind one small contract.

A stepper advances ``y`` (any pytree) by ``dt`` for ``dy/dt = f(y, t)``. Each has an
``order`` and an ``ssp_coefficient`` (the factor on the forward-Euler step limit under
which positivity and stability carry over). A new scheme is a new class here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import jax

Rhs = Callable[[Any, Any], Any]


def _axpy(a, x, y):
    """y + a * x over a pytree."""
    return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def _combine(a, x, b, y):
    return jax.tree.map(lambda xi, yi: a * xi + b * yi, x, y)


class Stepper(Protocol):
    order: ClassVar[int]
    ssp_coefficient: ClassVar[float]

    def step(self, f: Rhs, y, t, dt): ...


class ForwardEuler:
    """First order; the reference step for the stability limits."""

    order = 1
    ssp_coefficient = 1.0

    def step(self, f: Rhs, y, t, dt):
        return _axpy(dt, f(y, t), y)


class SSPRK2:
    """Heun's method in Shu-Osher form, second order, SSP coefficient 1."""

    order = 2
    ssp_coefficient = 1.0

    def step(self, f: Rhs, y, t, dt):
        y1 = _axpy(dt, f(y, t), y)
        return _combine(0.5, y, 0.5, _axpy(dt, f(y1, t + dt), y1))


class SSPRK3:
    """Shu-Osher three-stage third-order SSP Runge-Kutta, SSP coefficient 1."""

    order = 3
    ssp_coefficient = 1.0

    def step(self, f: Rhs, y, t, dt):
        y1 = _axpy(dt, f(y, t), y)
        y2 = _combine(0.75, y, 0.25, _axpy(dt, f(y1, t + dt), y1))
        return _combine(1.0 / 3.0, y, 2.0 / 3.0, _axpy(dt, f(y2, t + 0.5 * dt), y2))


STEPPERS: dict[str, type] = {"forward_euler": ForwardEuler, "ssp_rk2": SSPRK2, "ssp_rk3": SSPRK3}


def get_stepper(name: str) -> Stepper:
    try:
        return STEPPERS[name]()
    except KeyError:
        raise ValueError(f"stepper {name!r}: allowed {', '.join(STEPPERS)}") from None
