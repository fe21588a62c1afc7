"""The contract every stepper honours, and how a scheme's stages are laid out for XLA.

A stepper advances ``y`` (any pytree) for ``dy/dt = f(y, t)`` given as :class:`Terms`: ``rhs`` is
``f`` less what the stepper splits off, ``decay(y, tau)`` advances the split losses exactly over
``tau`` (a stepper with ``splits_losses``; solver.physics.split_losses) and ``diffuse(y)`` is the
linear diffusion operator (a stepper with ``splits_diffusion``; solver.physics.diffusion_rhs) and
``forcing`` the exact step integrals of the sources that switch on and off (solver.physics._forcing).
Each has an ``order`` and an ``ssp_coefficient`` (the factor on the forward-Euler step limit under
which positivity and stability carry over), ``step`` (one step) and ``steps`` (``n`` steps in a
``lax.fori_loop``, each wrapped in ``checkpoint``). A new scheme is a new file in this package,
registered in ``_steppers.STEPPERS``.

The stages of a step are written out, never fused into each other: XLA would otherwise fuse a
stage into the next stage's stencils and recompute it for every neighbour (benchmarks case
``layout``). On a GPU an optimization barrier between stages keeps them apart; XLA:CPU removes
barriers before fusing, so there each stage runs as a conditional whose two branches are both the
stage. A loop over the stages, the other way to keep them apart, copies every field into the loop
carry per stage (:func:`run_stages`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax

Rhs = Callable[..., Any]  # rhs(y, t), or rhs(y, t, values) with Terms.forcing

#: How Runge-Kutta stages are laid out: "platform" (chosen when the program is lowered for its
#: platform: :data:`PLATFORM_LAYOUTS`), or one of these everywhere (the tests and the benchmarks'
#: ``layout`` case compare them on one machine).
LAYOUTS = ("loop", "barrier", "conditional")
#: The layout "platform" picks: on a CPU, and on every other platform.
PLATFORM_LAYOUTS = {"cpu": "conditional", "default": "barrier"}


class Terms(NamedTuple):
    """The parts of the right-hand side a stepper is given.

    ``forcing(t, dt)``, if given, returns the means ``(m0, m1)`` over the step of the model's time
    profiles g and of theta g (theta = (s - t)/dt; solver.physics.forcing_moments); a Runge-Kutta
    stage then calls ``rhs(y, t_stage, values)`` with the values its scheme's ``stage_forcing`` makes
    of them, instead of ``rhs(y, t_stage)`` sampling the profiles.
    """

    rhs: Rhs
    decay: Callable[[Any, Any], Any] | None = None
    diffuse: Callable[[Any], Any] | None = None
    forcing: Callable[[Any, Any], Any] | None = None


def no_checkpoint(fn):
    return fn


class Stepper(Protocol):
    order: ClassVar[int]
    ssp_coefficient: ClassVar[float]
    splits_losses: ClassVar[bool]
    splits_diffusion: ClassVar[bool]

    @property
    def layout(self) -> str: ...  # read-only: the steppers are frozen dataclasses

    def step(self, terms: Terms, y, t, dt): ...

    def steps(self, terms: Terms, y, t0, dt, n: int, checkpoint=no_checkpoint): ...


def run_stages(stages: Sequence[Callable], looped: Callable, y, layout: str = "platform", barrier_input: bool = False):
    """``y`` through the ``stages`` in turn, each kept out of the next one's fusions.

    - "barrier": an optimization barrier after each stage but the last (and on ``y`` with
      ``barrier_input``, for a ``y`` that may come straight from a pointwise update). XLA:GPU
      keeps barriers; XLA:CPU removes them before fusing, and then recomputes every stage inside
      the next one's stencils (several times slower).
    - "conditional": each stage as ``lax.cond(p, stage, stage, y)``, both branches the same stage,
      so the result does not depend on ``p``. XLA:CPU fuses nothing across a conditional: faster than
      the loop on a CPU; on a GPU slower than barriers (benchmarks case ``layout``).
    - "loop": ``looped(y)``, the stages in a ``lax.fori_loop``.

    Chosen by ``lax.platform_dependent`` when the program is lowered ("conditional" on a CPU,
    "barrier" elsewhere), so a CPU computation on a GPU machine still gets the CPU layout; only
    the chosen branch is compiled. ``layout`` (one of :data:`LAYOUTS`) overrides the choice.
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
    if layout != "platform":
        return layouts[layout](y)
    return lax.platform_dependent(y, **{platform: layouts[name] for platform, name in PLATFORM_LAYOUTS.items()})
