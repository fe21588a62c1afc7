"""Diffusion split off too: Runge-Kutta-Legendre super-steps (RKL2) inside a Strang splitting."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._base import Terms, no_checkpoint, run_stages
from ._strang import StrangSSPRK3


def rkl2_stages(tau: float, dt_euler: float) -> int:
    """Fewest RKL2 stages s (>= 2) whose step ``tau`` is stable: tau <= dt_euler (s^2 + s - 2) / 4.

    ``dt_euler`` is the forward-Euler limit of the diffusion operator (``stable_dt``'s "diffusion").
    """
    ratio = tau / dt_euler
    s = max(2, math.ceil(math.sqrt(4.0 * ratio + 2.25) - 0.5 - 1e-12))
    while (s * s + s - 2) / 4.0 < ratio:  # round-off at the boundary
        s += 1
    return s


def rkl2(diffuse: Callable[[Any], Any], y, tau, stages: int, layout: str = "platform"):
    """``dy/dt = M(y)`` over ``tau`` by the s-stage Runge-Kutta-Legendre method of order 2.

    Meyer, Balsara & Aslam 2014 (J. Comput. Phys. 257:594, eqs. 16-17): with b_j = (j^2 + j - 2)
    / (2 j (j + 1)) (b_0 = b_1 = 1/3), a_j = 1 - b_j and w_1 = 4 / (s^2 + s - 2),

        Y_1 = Y_0 + b_1 w_1 tau M(Y_0)
        Y_j = mu_j Y_{j-1} + nu_j Y_{j-2} + (1 - mu_j - nu_j) Y_0 + mu_j w_1 tau M(Y_{j-1})
              - a_{j-1} mu_j w_1 tau M(Y_0),     mu_j = (2j - 1)/j b_j/b_{j-1},  nu_j = -(j - 1)/j b_j/b_{j-2}.

    Stable for tau up to (s^2 + s - 2)/4 forward-Euler steps with s evaluations of M, so a step
    that would take k explicit steps costs about 2 sqrt(k). Each stage is a combination of
    conservative updates, so whatever M conserves is conserved.
    """
    dtype = jax.tree.leaves(y)[0].dtype
    s = int(stages)
    j = np.arange(s + 1, dtype=float)
    b = np.where(j < 2, 1.0 / 3.0, (j * j + j - 2.0) / (2.0 * np.maximum(j, 1.0) * (j + 1.0)))
    w1 = 4.0 / (s * s + s - 2.0)
    mu = np.zeros(s + 1)
    nu = np.zeros(s + 1)
    mu[2:] = (2.0 * j[2:] - 1.0) / j[2:] * b[2:] / b[1:-1]
    nu[2:] = -(j[2:] - 1.0) / j[2:] * b[2:] / b[:-2]
    gamma = np.zeros(s + 1)
    gamma[2:] = -(1.0 - b[1:-1]) * mu[2:] * w1
    coef = jnp.asarray(np.stack([mu, nu, 1.0 - mu - nu, mu * w1, gamma]), dtype)
    tau = jnp.asarray(tau, dtype)
    first = jnp.asarray(b[1] * w1, dtype)

    def start(y):
        """(Y_0, Y_0, Y_1, M(Y_0)): the carry of the stages (Y_0, Y_{j-2}, Y_{j-1}, M(Y_0))."""
        m0 = diffuse(y)
        return y, y, jax.tree.map(lambda y0, k0: y0 + first * tau * k0, y, m0), m0

    def stage(jj, carry):
        y, prev2, prev, m0 = carry
        c_mu, c_nu, c_m, c_g = coef[0, jj], coef[1, jj], coef[3, jj], coef[4, jj]
        k = diffuse(prev)
        # Y_0 + mu (Y_{j-1} - Y_0) + nu (Y_{j-2} - Y_0) + ...: the same combination, written so that a
        # field the operator leaves alone (cartilage) stays exactly as it is, also in float32
        new = jax.tree.map(
            lambda y0, y2, y1_, kj, k0: y0 + c_mu * (y1_ - y0) + c_nu * (y2 - y0) + tau * (c_m * kj + c_g * k0),
            y, prev2, prev, k, m0,
        )  # fmt: skip
        return y, prev, new, m0

    def looped(y):
        return lax.fori_loop(2, s + 1, stage, start(y))

    # written out as in ShuOsher.step (solver.time._ssp); with barriers, one on the input too (it may come straight
    # from a pointwise update of the reaction step)
    stage_fns = [start] + [functools.partial(stage, jj) for jj in range(2, s + 1)]
    return run_stages(stage_fns, looped, y, layout, barrier_input=True)[2]


@dataclasses.dataclass(frozen=True)
class StrangRKL2:
    """Diffusion split off too: an RKL2 super-step for it, the losses exactly, SSP-RK3 for the rest.

    Each step is D(dt/2) L(dt/2) R(dt) L(dt/2) D(dt/2): D the diffusion by :func:`rkl2`, L the
    losses (as in :class:`StrangSSPRK3`), R SSP-RK3 on reactions, sources and chemotaxis.
    Second order. Diffusion then no longer sets the step: an accuracy cap does (solver.physics.stable_dt's
    "splitting" limit, 0.1 h at the defaults, against 0.04 h for diffusion on the 0.25 mm knee),
    or chemotaxis, and the super-step takes ``stages`` evaluations of the diffusion operator.
    Consecutive steps' diffusion halves are merged into one super-step.

    RKL2 is not positivity-preserving: a grid-scale feature (a one-cell spike) undershoots by a
    few percent of its height in one super-step, enough for a run to stop as diverged (below
    -1e-4 of the field's scale). Smooth fields (the knee scenarios, Gaussian blobs, balls a few
    cells wide) stayed non-negative in the tests; use SSP-RK3 for sharp data.
    """

    stages: int = 2  # RKL2 stages per diffusion super-step (rkl2_stages of dt; solver.time.StepPlan)
    layout: str = "platform"
    order: ClassVar[int] = 2
    ssp_coefficient: ClassVar[float] = 1.0
    splits_losses: ClassVar[bool] = True
    splits_diffusion: ClassVar[bool] = True

    def __post_init__(self):
        if self.stages < 2:
            raise ValueError(f"strang_rkl2 needs at least 2 RKL2 stages per super-step (rkl2_stages), got {self.stages}")

    def step(self, terms: Terms, y, t, dt):
        return self.steps(terms, y, t, dt, 1)

    def steps(self, terms: Terms, y, t0, dt, n: int, checkpoint=no_checkpoint):
        """``n`` steps from ``t0``, ``stages`` RKL2 stages per super-step."""
        dt = jnp.asarray(dt, jax.tree.leaves(y)[0].dtype)
        half = 0.5 * dt
        inner = StrangSSPRK3(self.layout)
        diffuse = terms.diffuse
        assert diffuse is not None, "strang_rkl2 needs Terms.diffuse"

        def diffusion(y, tau):
            # cartilage does not diffuse: kept out of the super-step's stages (carry, barriers, passes)
            return rkl2(diffuse, y._replace(cartilage=None), tau, self.stages, self.layout)._replace(cartilage=y.cartilage)

        @checkpoint
        def body(i, y):
            y = inner.step(terms, y, t0 + i * dt, dt)
            return diffusion(y, jnp.where(i == n - 1, half, dt))

        # the opening half super-step too: under reverse mode it keeps only its input, like the steps
        opening = checkpoint(lambda y: diffusion(y, half))
        return lax.fori_loop(0, n, body, opening(y))
