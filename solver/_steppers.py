"""Explicit strong-stability-preserving Runge-Kutta steppers behind one small contract.

A stepper advances ``y`` (any pytree) by ``dt`` for ``dy/dt = f(y, t)``. Each has an
``order`` and an ``ssp_coefficient`` (the factor on the forward-Euler step limit under
which positivity and stability carry over). A new scheme is a new class here.

The SSP schemes below share the Shu-Osher form

    y_0 = y,   y_{s+1} = a_s y + (1 - a_s) (y_s + dt f(y_s, t + c_s dt)),   result y_S,

so one stage function runs them all. The stages are written out, never fused into each other:
XLA would otherwise fuse a stage into the next stage's stencils and recompute it for every
neighbour (2.7x slower on the 3D knee grid). On a GPU an optimization barrier between stages
keeps them apart; XLA:CPU removes barriers before fusing, so there each stage runs as a
conditional whose two branches are both the stage. A loop over the stages, the other way to
keep them apart, copies every field into the loop carry per stage (:func:`run_stages`).

A split stepper (``splits_losses = True``) also takes ``decay(y, tau)``, which advances the split
losses (first-order losses ``dy/dt = -K(y) y``, and transfers between species that conserve what
they move) over ``tau`` exactly for rates frozen at a midpoint, and ``f`` without them
(solver._model.split_losses; :func:`exponential_losses` for plain losses).
One that also ``splits_diffusion`` takes ``diffuse(y)``, the linear diffusion operator
(solver._model.diffusion_rhs), and ``f`` without it either.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Rhs = Callable[[Any, Any], Any]


class Stepper(Protocol):
    order: ClassVar[int]
    ssp_coefficient: ClassVar[float]
    splits_losses: ClassVar[bool]
    splits_diffusion: ClassVar[bool]

    def step(self, f: Rhs, y, t, dt, decay: Callable[[Any, Any], Any] | None = None): ...


class ShuOsher:
    """An SSP Runge-Kutta scheme given by its Shu-Osher tables ``a`` and ``c``."""

    order: ClassVar[int]
    ssp_coefficient: ClassVar[float] = 1.0
    splits_losses: ClassVar[bool] = False
    splits_diffusion: ClassVar[bool] = False
    a: ClassVar[tuple[float, ...]]
    c: ClassVar[tuple[float, ...]]

    def step(self, f: Rhs, y, t, dt, decay=None):
        # coefficients and dt in the state's precision: a Python-float dt under x64 would
        # otherwise promote a float32 run to float64 arithmetic
        dtype = jax.tree.leaves(y)[0].dtype
        dt = jnp.asarray(dt, dtype)
        if len(self.a) == 1:
            return jax.tree.map(lambda yi, ki: yi + dt * ki, y, f(y, t))

        # Under reverse mode a stage keeps only its input state and recomputes the right-hand
        # side's intermediates in the backward pass, instead of stacking dozens of them per stage
        # (1.2x faster value+grad at 128^2 and 1.6x at 256^2 on CPU; forward runs are unaffected).
        a = jnp.asarray(self.a, dtype)
        c = jnp.asarray(self.c, dtype)

        @jax.checkpoint
        def stage(a_s, c_s, ys):
            k = f(ys, t + c_s * dt)
            return jax.tree.map(lambda y0, yi, ki: a_s * y0 + (1 - a_s) * (yi + dt * ki), y, ys, k)

        def looped(y):
            return lax.fori_loop(0, len(self.a), lambda i, ys: stage(a[i], c[i], ys), y)

        # Written out, the stages' results go straight to the next stage, never through a loop
        # carry (the loop copied every field once per stage: a quarter of the step's time on an
        # H200; with barriers there the last stage, which reads the step's input only at its own
        # cell, writes over it): 1.15-1.6x the loop's throughput on an H200 and an H100, 1.06-1.6x
        # on a 2-core CPU (benchmarks/README.md).
        stages = [functools.partial(stage, a[i], c[i]) for i in range(len(self.a))]
        return run_stages(stages, looped, y)


#: How Runge-Kutta stages are laid out: "platform" (chosen when the program is lowered for its
#: platform: "conditional" on a CPU, "barrier" elsewhere), or one of "loop", "barrier" and
#: "conditional" everywhere (the tests and the benchmarks' layout case compare them on one machine).
STAGE_LAYOUT = "platform"
LAYOUTS = ("loop", "barrier", "conditional")
#: The layout "platform" picks: on a CPU, and on every other platform.
PLATFORM_LAYOUTS = {"cpu": "conditional", "default": "barrier"}


def run_stages(stages: Sequence[Callable], looped: Callable, y, barrier_input: bool = False):
    """``y`` through the ``stages`` in turn, each kept out of the next one's fusions.

    - "barrier": an optimization barrier after each stage but the last (and on ``y`` with
      ``barrier_input``, for a ``y`` that may come straight from a pointwise update). XLA:GPU
      keeps barriers; XLA:CPU removes them before fusing, and then recomputes every stage inside
      the next one's stencils (2.6-5x slower).
    - "conditional": each stage as ``lax.cond(p, stage, stage, y)``, both branches the same stage,
      so the result does not depend on ``p``. XLA:CPU fuses nothing across a conditional: 1.06-1.6x
      the throughput of the loop on a 2-core CPU (1.27x at 256^2 float64, 1.6x for strang_rkl2;
      benchmarks/README.md); on an H100 4-6% slower than barriers.
    - "loop": ``looped(y)``, the stages in a ``lax.fori_loop``.

    Chosen by ``lax.platform_dependent`` when the program is lowered ("conditional" on a CPU,
    "barrier" elsewhere), so a CPU computation on a GPU machine still gets the CPU layout; only
    the chosen branch is compiled. ``STAGE_LAYOUT`` overrides the choice.
    """

    def barriers(y):
        if barrier_input:
            y = lax.optimization_barrier(y)
        for i, stage in enumerate(stages):
            y = stage(y)
            if i < len(stages) - 1:
                y = lax.optimization_barrier(y)
        return y

    def conditionals(y):
        # Both branches are the stage, so any predicate will do, as long as it is traced (XLA folds
        # a conditional on a constant, and then fuses across it) and not batched (under vmap a
        # batched predicate turns the conditional into a select of both branches, each computed):
        # a constant behind an optimization barrier, which XLA:CPU does not fold.
        pred = lax.optimization_barrier(jnp.asarray(False))
        for stage in stages:
            y = lax.cond(pred, stage, stage, y)
        return y

    layouts = {"loop": looped, "barrier": barriers, "conditional": conditionals}
    if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(y)):
        # run op by op (not under jit): nothing is fused, and a conditional would be compiled per
        # call. (Judged by the state alone: a concrete state closed over by a jitted function takes
        # this path too and fuses its stages; the solver always passes the state as an argument.)
        return functools.reduce(lambda y, stage: stage(y), stages, y)
    if STAGE_LAYOUT != "platform":
        return layouts[STAGE_LAYOUT](y)
    return lax.platform_dependent(y, **{platform: layouts[name] for platform, name in PLATFORM_LAYOUTS.items()})


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


def exponential_losses(rates: Callable[[Any], Any], y, tau):
    """``dy/dt = -K(y) y`` over ``tau``: y exp(-K(y_mid) tau), y_mid from a half step with K(y).

    Each species' loss is proportional to itself, so this is exact for frozen K and the midpoint
    rule makes it second order in general; a factor exp(-K tau) keeps every value's sign.
    """
    half = jax.tree.map(lambda yi, ki: yi * jnp.exp(-0.5 * tau * ki), y, rates(y))
    return jax.tree.map(lambda yi, ki: yi * jnp.exp(-tau * ki), y, rates(half))


class StrangSSPRK3:
    """Strang splitting: the losses exactly over half steps, SSP-RK3 for the rest in between.

    Second order. The decay and drug-binding rates then no longer limit the step: with an
    anti-TNF on, the binding k_on A (about 50 /h at etanercept's peak plasma level) sets a
    0.018 h limit that diffusion (0.040 h on the 0.25 mm knee, 0.16 h at 0.5 mm) replaces.
    Values stay non-negative under the same diffusion and chemotaxis limits as SSP-RK3
    (``decay`` must keep them so: solver._model.split_losses does).
    """

    order: ClassVar[int] = 2
    ssp_coefficient: ClassVar[float] = 1.0
    splits_losses: ClassVar[bool] = True
    splits_diffusion: ClassVar[bool] = False

    def step(self, f: Rhs, y, t, dt, decay=None):
        half = 0.5 * jnp.asarray(dt, jax.tree.leaves(y)[0].dtype)
        y = SSPRK3().step(f, decay(y, half), t, dt)
        return decay(y, half)

    def steps(self, f: Rhs, decay, y, t0, dt, n: int, checkpoint=lambda g: g):
        """``n`` steps from ``t0``, each step's closing half of the losses merged with the next one's
        opening half (one pass over the fields instead of two; still second order)."""
        dt = jnp.asarray(dt, jax.tree.leaves(y)[0].dtype)

        @checkpoint
        def body(i, y):
            y = SSPRK3().step(f, y, t0 + i * dt, dt)
            return decay(y, jnp.where(i == n - 1, 0.5 * dt, dt))

        # the opening half too: under reverse mode it keeps only its input, like the steps
        opening = checkpoint(lambda y: decay(y, 0.5 * dt))
        return lax.fori_loop(0, n, body, opening(y))


def rkl2_stages(tau: float, dt_euler: float) -> int:
    """Fewest RKL2 stages s (>= 2) whose step ``tau`` is stable: tau <= dt_euler (s^2 + s - 2) / 4.

    ``dt_euler`` is the forward-Euler limit of the diffusion operator (``stable_dt``'s "diffusion").
    """
    ratio = tau / dt_euler
    s = max(2, math.ceil(math.sqrt(4.0 * ratio + 2.25) - 0.5 - 1e-12))
    while (s * s + s - 2) / 4.0 < ratio:  # round-off at the boundary
        s += 1
    return s


def rkl2(diffuse: Callable[[Any], Any], y, tau, stages: int):
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

    # written out as in ShuOsher.step; with barriers, one on the input too (it may come straight
    # from a pointwise update of the reaction step)
    stages = [start] + [functools.partial(stage, jj) for jj in range(2, s + 1)]
    return run_stages(stages, looped, y, barrier_input=True)[2]


class StrangRKL2:
    """Diffusion split off too: an RKL2 super-step for it, the losses exactly, SSP-RK3 for the rest.

    Each step is D(dt/2) L(dt/2) R(dt) L(dt/2) D(dt/2): D the diffusion by :func:`rkl2`, L the
    losses (as in :class:`StrangSSPRK3`), R SSP-RK3 on reactions, sources and chemotaxis.
    Second order. Diffusion then no longer sets the step: an accuracy cap does (solver._model's
    "splitting" limit, 0.1 h at the defaults, against 0.04 h for diffusion on the 0.25 mm knee),
    or chemotaxis, and the super-step takes ``stages`` evaluations of the diffusion operator.
    Consecutive steps' diffusion halves are merged into one super-step.

    RKL2 is not positivity-preserving: a grid-scale feature (a one-cell spike) undershoots by a
    few percent of its height in one super-step, enough for a run to stop as diverged (below
    -1e-4 of the field's scale). Smooth fields (the knee scenarios, Gaussian blobs, balls a few
    cells wide) stayed non-negative in the tests; use SSP-RK3 for sharp data.
    """

    order: ClassVar[int] = 2
    ssp_coefficient: ClassVar[float] = 1.0
    splits_losses: ClassVar[bool] = True
    splits_diffusion: ClassVar[bool] = True

    def steps(self, f: Rhs, decay, diffuse, y, t0, dt, n: int, stages: int, checkpoint=lambda g: g):
        """``n`` steps from ``t0``; ``stages`` RKL2 stages per super-step (:func:`rkl2_stages` of dt)."""
        dt = jnp.asarray(dt, jax.tree.leaves(y)[0].dtype)
        half = 0.5 * dt

        def diffusion(y, tau):
            # cartilage does not diffuse: kept out of the super-step's stages (carry, barriers, passes)
            return rkl2(diffuse, y._replace(cartilage=None), tau, stages)._replace(cartilage=y.cartilage)

        @checkpoint
        def body(i, y):
            y = StrangSSPRK3().step(f, y, t0 + i * dt, dt, decay)
            return diffusion(y, jnp.where(i == n - 1, half, dt))

        # the opening half super-step too: under reverse mode it keeps only its input, like the steps
        opening = checkpoint(lambda y: diffusion(y, half))
        return lax.fori_loop(0, n, body, opening(y))


STEPPERS: dict[str, type] = {
    "forward_euler": ForwardEuler,
    "ssp_rk2": SSPRK2,
    "ssp_rk3": SSPRK3,
    "strang_ssp_rk3": StrangSSPRK3,
    "strang_rkl2": StrangRKL2,
}


def get_stepper(name: str) -> Stepper:
    try:
        return STEPPERS[name]()
    except KeyError:
        raise ValueError(f"stepper {name!r}: allowed {', '.join(STEPPERS)}") from None
