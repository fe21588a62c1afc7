"""Compiled time integration: one jit-compiled function per geometry advances one output interval.

Sub-steps run in a ``lax.fori_loop`` (static trip count, so it is reverse-differentiable);
:func:`Solver.trajectory` scans the same interval function over frames for ``jax.grad``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from fields import State

from ..physics import (
    GRADIENTS,
    Domain,
    ModelOptions,
    Params,
    coefficients,
    diffusion_rhs_with_adjoint,
    forcing_moments,
    health,
    rhs_with_adjoint,
    split_losses,
    summaries,
    without_drug,
)
from ._base import Terms
from ._steppers import make_stepper

#: What ``Solver.trajectory`` keeps for reverse mode (see there).
CHECKPOINTS = ("auto", "steps", "frames")


class Solver:
    """The compiled interval function for one geometry and set of static options.

    ``substeps`` steps per interval; ``rkl2_stages`` (a stepper that splits diffusion) is fixed at
    construction, while dt and the diffusivities are arguments: a super-step is stable only for
    dt * D_max up to what the stage count was chosen for (solver.time.StepPlan); a larger dt or
    diffusivity needs a new Solver. ``gradient`` is how reverse mode goes through the right-hand
    side: ``"adjoint"`` (its hand-written stencil adjoints where they apply) or ``"autodiff"`` (JAX's
    own; forward mode, ``jax.jvp`` and ``jax.jacfwd``, needs it). ``layout`` is how a step's stages
    are laid out for XLA (``"platform"``, or one of solver.time.LAYOUTS).
    """

    def __init__(
        self,
        options: ModelOptions,
        stepper: str = "ssp_rk3",
        substeps: int = 1,
        rkl2_stages: int = 0,
        gradient: str = "adjoint",
        layout: str = "platform",
    ):
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient {gradient!r}: allowed {', '.join(GRADIENTS)}")
        self.options = options
        self.stepper = make_stepper(stepper, rkl2_stages, layout)
        self.substeps = int(substeps)
        self.rkl2_stages = int(rkl2_stages)
        self.gradient = gradient

    @functools.cached_property
    def advance(self):
        """:meth:`_advance`, jitted."""
        return jax.jit(self._advance)

    @functools.cached_property
    def advance_with_summary(self):
        """:meth:`_advance_with_summary` (the new state, its summaries and health), jitted."""
        return jax.jit(self._advance_with_summary)

    def _terms(self, params: Params, domain: Domain) -> Terms:
        coeffs = coefficients(params, domain)
        adjoint = self.gradient == "adjoint"
        losses, diffusion = not self.stepper.splits_losses, not self.stepper.splits_diffusion

        def f(y, t, forcing=None):
            return rhs_with_adjoint(
                y, t, params, coeffs, domain, self.options, losses=losses, diffusion=diffusion, adjoint=adjoint, forcing=forcing
            )

        decay = functools.partial(split_losses, params=params, domain=domain, options=self.options)
        diffuse = functools.partial(diffusion_rhs_with_adjoint, coeffs=coeffs, options=self.options, adjoint=adjoint)
        forcing = functools.partial(forcing_moments, params=params, options=self.options)
        return Terms(
            f, decay if self.stepper.splits_losses else None, diffuse if self.stepper.splits_diffusion else None, forcing
        )

    def _advance(self, state: State, t0, dt, params: Params, domain: Domain) -> State:
        """Advance ``state`` from ``t0`` by ``substeps`` steps of ``dt`` (hours)."""
        terms = self._terms(params, domain)

        # Under reverse mode only each step's input state is kept; its stages are recomputed
        # in the backward pass (forward runs are unaffected).
        def steps(y):
            return self.stepper.steps(terms, y, t0, dt, self.substeps, checkpoint=jax.checkpoint)

        with jax.named_scope("interval"):
            if self.options.drug:
                return steps(state)
            # without the drug its fields stay as they are: keep them out of the loop (arrays fewer
            # to carry, update and copy per stage)
            return steps(without_drug(state))._replace(drug=state.drug, complex=state.complex)

    def _advance_with_summary(self, state, t0, dt, params, domain):
        new = self._advance(state, t0, dt, params, domain)
        return new, summaries(new, domain, self.options, params, t0 + self.substeps * dt), health(new)

    def trajectory(
        self,
        state: State,
        params: Params,
        domain: Domain,
        dt,
        n_frames: int,
        t0=0.0,
        checkpoint: str = "auto",
        members: int = 1,
        memory_budget: int | None = None,
    ) -> tuple[State, State]:
        """Scan the interval function over ``n_frames`` intervals.

        Returns the final state and the stacked states at the end of every interval
        (leading axis ``n_frames``). Differentiable with ``jax.grad``; what reverse mode keeps
        (every sub-step is checkpointed: its Runge-Kutta stages are recomputed from its input state):

        - ``"steps"``: the input state of every sub-step, ``n_frames * substeps`` states (one
          more per frame for a split stepper: its opening half-step's input; compiled, one
          frame's steps more while they are stacked); the backward pass reruns each step once.
        - ``"frames"``: one state per frame, plus, while it works through a frame, one per
          step of that frame (``n_frames + substeps`` states); the backward pass also reruns each
          frame, one forward run more.
        - ``"auto"`` (default): ``"steps"`` when those states fit ``memory_budget`` bytes (required;
          solver.checkpoint_budget_bytes gives a quarter of the device's memory), else ``"frames"``.
          ``members``: how many members ``jax.vmap`` runs this over (parameter sets, fit starts),
          whose states are all counted; the choice is made from one member's traced shapes.

        Forward runs are the same under all three.
        """
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint = {checkpoint!r}: allowed are {', '.join(map(repr, CHECKPOINTS))}")
        if checkpoint == "auto":
            if memory_budget is None:
                raise ValueError('checkpoint="auto" needs memory_budget (bytes; solver.checkpoint_budget_bytes())')
            checkpoint = self.checkpoint_for(state, n_frames, members, memory_budget)
        interval = dt * self.substeps

        def body(y, k):
            # the frame index times the interval: JAX's standard promotion makes the index a weakly
            # typed float, so a float32 run's times stay weak (its arithmetic float32); no public
            # cast gives a weak type
            with jax.numpy_dtype_promotion("standard"):
                t = t0 + k * interval
            y = self._advance(y, t, dt, params, domain)
            return y, y

        if checkpoint == "frames":
            body = jax.checkpoint(body)
        return lax.scan(body, state, jnp.arange(n_frames))

    def checkpoint_for(self, state: State, n_frames: int, members: int, memory_budget: int) -> str:
        """What ``trajectory(..., checkpoint="auto")`` does for this state, number of frames and members."""
        carried = state if self.options.drug else without_drug(state)
        per_state = sum(math.prod(jnp.shape(x)) * jnp.result_type(x).itemsize for x in jax.tree.leaves(carried))
        # a split stepper also keeps the input of each frame's opening half-step; the compiled
        # program holds one frame's steps twice (stored per frame, then copied into the stack)
        kept = max(1, int(members)) * (n_frames + 1) * (self.substeps + int(self.stepper.splits_losses)) * per_state
        return "steps" if kept <= memory_budget else "frames"


@functools.cache
def _cached_solver(options: ModelOptions, stepper: str, substeps: int, rkl2_stages: int, gradient: str, layout: str) -> Solver:
    return Solver(options, stepper, substeps, rkl2_stages, gradient, layout)


def get_solver(
    options: ModelOptions,
    stepper: str = "ssp_rk3",
    substeps: int = 1,
    rkl2_stages: int = 0,
    gradient: str = "adjoint",
    layout: str = "platform",
) -> Solver:
    """A :class:`Solver`, reused for equal static options so its compiled code is too."""
    return _cached_solver(options, stepper, int(substeps), int(rkl2_stages), gradient, layout)
