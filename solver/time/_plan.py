"""The step plan: which stepper, what step, how many steps per output frame, how many RKL2 stages.

:meth:`StepPlan.choose` makes it from the stability limits (solver.physics.stable_dt) and
:meth:`StepPlan.solver` builds the :class:`~solver.time.Solver` that follows it: the one way a
scenario, a fit, the benchmarks and the tests get a solver.
"""

from __future__ import annotations

import dataclasses
import math

from fields import State

from ..physics import Domain, ModelOptions, Params, stable_dt
from ._rkl2 import rkl2_stages
from ._solver import get_solver
from ._steppers import stepper_class


class StepTooLarge(ValueError):
    """A requested time step exceeds the stable limit."""


def binding_limits(limits: dict[str, float], stepper: str) -> dict[str, float]:
    """The limits (of ``stable_dt``) that bound stepper ``stepper``'s step: all but diffusion's for a
    stepper that splits diffusion off (its super-step's stages grow instead)."""
    splits = stepper_class(stepper).splits_diffusion
    return {k: v for k, v in limits.items() if not (k == "diffusion" and splits)}


def limit_reason(key: str, causes: dict[str, str]) -> str:
    """What sets limit ``key`` of ``stable_dt``, in words, from the ``causes`` it filled."""
    if key == "positivity":
        return f"set by positivity in the fastest-draining cell, {causes[key]}"
    return f"set by {key}: {causes[key]}"


def choose_substeps(
    interval: float,
    params: Params,
    state: State,
    options: ModelOptions,
    domain: Domain,
    stepper: str,
    safety: float,
    dt: float | None = None,
) -> tuple[int, float, dict[str, float]]:
    """Sub-steps per output interval and the step (h) from the stability limits.

    With ``dt`` given, it is checked against the limits (:class:`StepTooLarge` if above)
    and rounded down so that a whole number of steps fits the interval.
    """
    cls = stepper_class(stepper)
    limits = stable_dt(params, state, options, domain, cls.ssp_coefficient, cls.splits_losses, cls.splits_diffusion)
    # the "splitting" bound of a stepper that splits diffusion is one of accuracy, for the
    # automatic step only
    binding = binding_limits(limits, stepper)
    stability = {k: v for k, v in binding.items() if k != "splitting"}
    if dt is not None and dt > 0:
        worst = min(stability, key=stability.__getitem__)
        if dt > stability[worst] * (1 + 1e-12):
            causes: dict[str, str] = {}
            stable_dt(params, state, options, domain, cls.ssp_coefficient, cls.splits_losses, cls.splits_diffusion, causes)
            raise StepTooLarge(
                f"run.dt_h = {dt:g} h is above the stable limit {stability[worst]:.4g} h ({limit_reason(worst, causes)}); "
                f"use a value <= {stability[worst]:.4g} or 0 for automatic"
            )
        target = dt
    else:
        target = safety * min(binding.values())
    substeps = max(1, math.ceil(interval / target - 1e-9))
    return substeps, interval / substeps, limits


def super_step_stages(stepper: str, dt: float, limits: dict[str, float], safety: float) -> int:
    """RKL2 stages per diffusion super-step of ``dt`` for a stepper that splits diffusion (else 0).

    Chosen so the super-step is stable with the same margin ``safety`` as the explicit steps.
    """
    if not stepper_class(stepper).splits_diffusion:
        return 0
    return rkl2_stages(dt, safety * limits["diffusion"]) if math.isfinite(limits["diffusion"]) else 2


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How one output interval is stepped.

    ``substeps`` steps of ``dt`` (h) per interval of ``substeps * dt``; ``rkl2_stages`` RKL2 stages per
    diffusion super-step for a stepper that splits diffusion (else 0); ``limits`` are the stability
    limits (h) the step was chosen from.
    """

    stepper: str
    dt: float
    substeps: int
    rkl2_stages: int = 0
    limits: dict = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def choose(
        cls,
        stepper: str,
        interval: float,
        params: Params,
        state: State,
        options: ModelOptions,
        domain: Domain,
        safety: float = 0.9,
        dt: float | None = None,
        min_rkl2_stages: int = 0,
    ) -> StepPlan:
        """The plan for output intervals of ``interval`` (h) from the stability limits at ``state``
        (:func:`choose_substeps`; ``dt`` checked against them if given). ``min_rkl2_stages`` keeps at
        least that many RKL2 stages (a plan that must stay stable for another's diffusivities)."""
        substeps, step, limits = choose_substeps(interval, params, state, options, domain, stepper, safety, dt)
        stages = super_step_stages(stepper, step, limits, safety)
        return cls(stepper, step, substeps, max(stages, int(min_rkl2_stages)) if stages else 0, limits)

    @property
    def interval(self) -> float:
        return self.substeps * self.dt

    def solver(self, options: ModelOptions, **solver_options):
        """The (cached) :class:`~solver.time.Solver` for this plan; ``solver_options`` are its
        ``gradient`` and ``layout``."""
        return get_solver(options, self.stepper, self.substeps, self.rkl2_stages, **solver_options)
