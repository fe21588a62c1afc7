"""Compiled time integration: one jit-compiled function per geometry advances one output interval.

Sub-steps run in a ``lax.fori_loop`` (static trip count, so it is reverse-differentiable);
:func:`Solver.trajectory` scans the same interval function over frames for ``jax.grad``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

from fields import State

from . import _model
from ._model import (
    Domain,
    ModelOptions,
    coefficients,
    diffusion_rhs_with_adjoint,
    health,
    rhs_with_adjoint,
    split_losses,
    stable_dt,
    summaries,
    without_drug,
)
from ._params import Params
from ._steppers import Stepper, get_stepper, rkl2_stages


class StepTooLarge(ValueError):
    """A requested time step exceeds the stable limit."""


def binding_limits(limits: dict[str, float], stepper: Stepper) -> dict[str, float]:
    """The limits (of :func:`stable_dt`) that bound this stepper's step: all but diffusion's for a
    stepper that splits diffusion off (its super-step's stages grow instead)."""
    return {k: v for k, v in limits.items() if not (k == "diffusion" and stepper.splits_diffusion)}


def choose_substeps(
    interval: float, params: Params, state: State, options: ModelOptions, stepper: Stepper, safety: float, dt: float | None = None
) -> tuple[int, float, dict[str, float]]:
    """Sub-steps per output interval and the step (h) from the stability limits.

    With ``dt`` given, it is checked against the limits (:class:`StepTooLarge` if above)
    and rounded down so that a whole number of steps fits the interval.
    """
    limits = stable_dt(params, state, options, stepper.ssp_coefficient, stepper.splits_losses, stepper.splits_diffusion)
    # the "splitting" bound of a stepper that splits diffusion is one of accuracy, for the
    # automatic step only
    binding = binding_limits(limits, stepper)
    stability = {k: v for k, v in binding.items() if k != "splitting"}
    if dt is not None and dt > 0:
        worst = min(stability, key=stability.get)
        if dt > stability[worst] * (1 + 1e-12):
            raise StepTooLarge(
                f"run.dt_h = {dt:g} h is above the stable limit {stability[worst]:.4g} h (set by {worst}); "
                f"use a value <= {stability[worst]:.4g} or 0 for automatic"
            )
        target = dt
    else:
        target = safety * min(binding.values())
    n_sub = max(1, math.ceil(interval / target - 1e-9))
    return n_sub, interval / n_sub, limits


def super_step_stages(stepper: Stepper, dt: float, limits: dict[str, float], safety: float) -> int:
    """RKL2 stages per diffusion super-step of ``dt`` for a stepper that splits diffusion (else 0).

    Chosen so the super-step is stable with the same margin ``safety`` as the explicit steps.
    """
    if not stepper.splits_diffusion:
        return 0
    return rkl2_stages(dt, safety * limits["diffusion"]) if math.isfinite(limits["diffusion"]) else 2


class Solver:
    """The compiled interval function for one geometry and set of static options.

    ``stages`` (a stepper that splits diffusion) is fixed at construction, while dt and the
    diffusivities are arguments: a super-step is stable only for dt * D_max up to what the
    stage count was chosen for (:func:`super_step_stages`); a larger dt or diffusivity needs a
    new Solver.
    """

    def __init__(self, options: ModelOptions, stepper: str = "ssp_rk3", n_sub: int = 1, stages: int = 0):
        self.options = options
        self.stepper = get_stepper(stepper)
        self.n_sub = int(n_sub)
        if self.stepper.splits_diffusion and stages < 2:
            raise ValueError(f"stepper {stepper!r} needs the RKL2 stage count (super_step_stages), got {stages}")
        self.stages = int(stages)
        self._jitted = {}

    def _jit(self, fn):
        # One jitted function per reverse-mode choice (solver._model.GRADIENT), so that one traced
        # inside autodiff_rhs() is not one traced before it, and the other way round. Each is a
        # function of its own (JAX caches traces by function, not by jit object) that traces in its
        # own mode, whenever it is first called.
        mode = _model.GRADIENT
        if (fn.__name__, mode) not in self._jitted:

            @functools.wraps(fn)
            def in_mode(*args, **kwargs):
                with _model.gradient_mode(mode):
                    return fn(*args, **kwargs)

            self._jitted[fn.__name__, mode] = jax.jit(in_mode)
        return self._jitted[fn.__name__, mode]

    @property
    def advance(self):
        """:meth:`_advance`, jitted."""
        return self._jit(self._advance)

    @property
    def advance_with_summary(self):
        """:meth:`_advance_with_summary` (the new state, its summaries and health), jitted."""
        return self._jit(self._advance_with_summary)

    def _advance(self, state: State, t0, dt, params: Params, domain: Domain) -> State:
        """Advance ``state`` from ``t0`` by ``n_sub`` steps of ``dt`` (hours)."""
        coeffs = coefficients(params, domain)
        split = self.stepper.splits_losses
        split_diffusion = self.stepper.splits_diffusion

        def f(y, t):
            return rhs_with_adjoint(y, t, params, coeffs, domain, self.options, losses=not split, diffusion=not split_diffusion)

        # Under reverse mode only each step's input state is kept; its stages are recomputed
        # in the backward pass (forward runs are unaffected).
        def steps(y):
            decay = functools.partial(split_losses, params=params, domain=domain, options=self.options)
            if split_diffusion:
                diffuse = functools.partial(diffusion_rhs_with_adjoint, coeffs=coeffs, options=self.options)
                return self.stepper.steps(f, decay, diffuse, y, t0, dt, self.n_sub, self.stages, checkpoint=jax.checkpoint)
            if split:
                return self.stepper.steps(f, decay, y, t0, dt, self.n_sub, checkpoint=jax.checkpoint)
            body = jax.checkpoint(lambda i, y: self.stepper.step(f, y, t0 + i * dt, dt))
            return lax.fori_loop(0, self.n_sub, body, y)

        with jax.named_scope("interval"):
            if self.options.drug:
                return steps(state)
            # without the drug its fields stay as they are: keep them out of the loop (arrays fewer
            # to carry, update and copy per stage)
            return steps(without_drug(state))._replace(drug=state.drug, complex=state.complex)

    def _advance_with_summary(self, state, t0, dt, params, domain):
        new = self._advance(state, t0, dt, params, domain)
        return new, summaries(new, domain, self.options, params, t0 + self.n_sub * dt), health(new)

    def trajectory(
        self, state: State, params: Params, domain: Domain, dt, n_frames: int, t0=0.0, checkpoint: str = "auto"
    ) -> tuple[State, State]:
        """Scan the interval function over ``n_frames`` intervals.

        Returns the final state and the stacked states at the end of every interval
        (leading axis ``n_frames``). Differentiable with ``jax.grad``; what reverse mode keeps
        (every sub-step is checkpointed: its Runge-Kutta stages are recomputed from its input state):

        - ``"steps"``: the input state of every sub-step, ``n_frames * n_sub`` states (one
          more per frame for a split stepper: its opening half-step's input; compiled, one
          frame's steps more while they are stacked); the backward pass reruns each step once.
        - ``"frames"``: one state per frame, plus, while it works through a frame, one per
          step of that frame (``n_frames + n_sub`` states); the backward pass also reruns each
          frame, one forward run more.
        - ``"auto"`` (default): ``"steps"`` when those states fit :func:`checkpoint_budget_bytes`
          (a quarter of the device's memory), else ``"frames"``. The choice is made from the
          traced shapes: under ``jax.vmap``, trace inside :func:`vmapped_members` so that every
          member's states are counted.

        Forward runs are the same under all three.
        """
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint = {checkpoint!r}: allowed are {', '.join(map(repr, CHECKPOINTS))}")
        if checkpoint == "auto":
            checkpoint = self.checkpoint_for(state, n_frames)
        interval = dt * self.n_sub

        def body(y, k):
            y = self._advance(y, t0 + k * interval, dt, params, domain)
            return y, y

        if checkpoint == "frames":
            body = jax.checkpoint(body)
        return lax.scan(body, state, jnp.arange(n_frames))

    def checkpoint_for(self, state: State, n_frames: int) -> str:
        """What ``trajectory(..., checkpoint="auto")`` does for this state and number of frames."""
        carried = state if self.options.drug else without_drug(state)
        per_state = sum(math.prod(jnp.shape(x)) * jnp.result_type(x).itemsize for x in jax.tree.leaves(carried))
        # a split stepper also keeps the input of each frame's opening half-step; the compiled
        # program holds one frame's steps twice (stored per frame, then copied into the stack)
        kept = _MEMBERS.get() * (n_frames + 1) * (self.n_sub + int(self.stepper.splits_losses)) * per_state
        return "steps" if kept <= checkpoint_budget_bytes() else "frames"


_MEMBERS = contextvars.ContextVar("vmapped_members", default=1)


@contextlib.contextmanager
def vmapped_members(n: int):
    """Trace under this block what ``jax.vmap`` runs over ``n`` members (parameter sets, fit
    starts): ``trajectory(checkpoint="auto")`` sees one member's shapes, and counts ``n`` of them.

    The count is read while tracing and is not part of ``jax.jit``'s cache key: a function jitted
    and already traced outside the block keeps the choice it made then.
    """
    token = _MEMBERS.set(_MEMBERS.get() * max(1, int(n)))
    try:
        yield
    finally:
        _MEMBERS.reset(token)


CHECKPOINTS = ("auto", "steps", "frames")
#: share of the device's memory that ``trajectory(checkpoint="auto")`` lets the stored step
#: states take (:func:`checkpoint_budget_bytes`)
CHECKPOINT_SHARE = 0.25


def checkpoint_budget_bytes(device=None) -> int:
    """Bytes ``Solver.trajectory(checkpoint="auto")`` may spend on stored step states:
    :data:`CHECKPOINT_SHARE` of the memory of ``device`` (default: JAX's default device).

    A GPU's memory is its allocator's ``bytes_limit`` (0, so one state per frame, where it reports
    none); a CPU's the smallest of the host's RAM, the cgroup's limit and what is available now.
    """
    if device is None:
        default = jax.config.jax_default_device
        device = jax.devices(default)[0] if isinstance(default, str) else default or jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # a backend without memory_stats
            stats = {}
        return int(CHECKPOINT_SHARE * stats.get("bytes_limit", 0))
    return int(CHECKPOINT_SHARE * _host_memory_bytes())


def _host_memory_bytes() -> int:
    sizes = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            sizes.append(int(Path(path).read_text().split()[0]))
        except (OSError, ValueError, IndexError):  # absent, or "max"
            pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                sizes.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(sizes)


@functools.cache
def _cached_solver(options: ModelOptions, stepper: str, n_sub: int, stages: int) -> Solver:
    return Solver(options, stepper, n_sub, stages)


def get_solver(options: ModelOptions, stepper: str = "ssp_rk3", n_sub: int = 1, stages: int = 0) -> Solver:
    """A :class:`Solver`, reused for equal static options so its compiled code is too.

    ``stages``: RKL2 stages of a stepper that splits diffusion (:func:`super_step_stages`).
    """
    return _cached_solver(options, stepper, int(n_sub), int(stages))
