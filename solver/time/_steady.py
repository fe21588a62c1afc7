"""Steady states: relax a scenario's model in time until nothing changes.

A steady state found this way is stable (time stepping settles only into attractors); runs from
two or more starts that settle into different states show that the model is bistable there. The
map iterated is a scenario's own stepper, so the state found is a fixed point of the scheme a run
uses (for a split stepper, at the run's step: its fixed points move with the step).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from fields import State

from ..physics import PARAMETERS, Params
from ._solver import Solver


@dataclasses.dataclass(frozen=True)
class SteadyState:
    """The state a relaxation reached and how still it is.

    ``change`` is the largest relative change of any species over the last ``window_h`` (the
    largest change of a cell's value over the window, divided by the species' largest value);
    ``converged`` whether it fell below the tolerance; ``time_h`` the simulated time it took.
    """

    state: State
    time_h: float
    change: float
    converged: bool
    wall_s: float


#: Values below these (the species' units) count as zero when changes are measured: a state that
#: decays to nothing settles once it is below them.
FLOORS = {"tnf": 1e-3, "il1": 1e-3, "leukocytes": 1e-2, "cartilage": 1e-3, "drug": 1e-6, "complex": 1e-3}


def relative_change(new: State, old: State) -> float:
    """Largest over species of max |new - old| / max(max |new|, floor) (:data:`FLOORS`); NaN if
    ``new`` is not finite. Species left out (None) are skipped."""
    worst = 0.0
    for name, new_u, old_u in zip(State._fields, new, old):
        if new_u is None:
            continue
        a, b = np.asarray(new_u, dtype=float), np.asarray(old_u, dtype=float)
        if not np.all(np.isfinite(a)):
            return math.nan
        scale = max(float(np.max(np.abs(a))), FLOORS[name])
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def relax(
    solver: Solver,
    state: State,
    params: Params,
    domain,
    dt: float,
    *,
    tolerance: float = 1e-5,
    window_h: float = 24.0,
    max_h: float = 3000.0,
    anderson: int = 4,
) -> SteadyState:
    """Advance ``state`` by whole windows of ``window_h`` until it changes by less than ``tolerance``
    over one (relative, :func:`relative_change`) or ``max_h`` has passed.

    Time runs from 0 in every window, so the parameters must make the model autonomous (no
    injury, no dosing).
    """
    interval = dt * solver.substeps
    per_window = max(1, round(window_h / interval))
    start = time.perf_counter()
    t, change = 0.0, math.inf
    history: list[tuple[np.ndarray, np.ndarray]] = []  # (x, G(x) - x) of the last windows
    accelerated, previous, pause = False, math.inf, 0
    fallback: State | None = None  # the plain iterate an extrapolation started from
    while t < max_h:
        old = state
        for _ in range(per_window):
            state = solver.advance(state, 0.0, dt, params, domain)
        t += per_window * interval
        change = relative_change(jax.device_get(state), jax.device_get(old))
        if not math.isfinite(change) and not accelerated:
            break
        if change < tolerance:
            break
        if accelerated and not change < previous:
            # the extrapolated state relaxes no better than the plain one did: go back to the plain
            # iterate and step plainly for a while (near a threshold the slow mode is nonlinear)
            assert fallback is not None  # set whenever accelerated is
            state, history, pause = fallback, [], 4
            accelerated = False
            continue
        previous = change
        if anderson and pause == 0:
            fallback = state
            state, history = _anderson(old, state, history, anderson)
            accelerated = len(history) > 1
        else:
            pause, accelerated = max(pause - 1, 0), False
    return SteadyState(state, t, change, change < tolerance, time.perf_counter() - start)


def _anderson(x: State, gx: State, history: list, depth: int) -> tuple[State, list]:
    """One Anderson-accelerated update of the window map G: the combination of the last iterates
    whose residuals G(x) - x cancel best (least squares), clipped at zero."""
    leaves = [i for i, u in enumerate(x) if u is not None]
    flat_x = np.concatenate([np.ravel(np.asarray(x[i], dtype=float)) for i in leaves])
    flat_g = np.concatenate([np.ravel(np.asarray(gx[i], dtype=float)) for i in leaves])
    history = (history + [(flat_x, flat_g - flat_x)])[-(depth + 1) :]
    if len(history) < 2:
        return gx, history
    xs = np.stack([h[0] for h in history], axis=1)
    fs = np.stack([h[1] for h in history], axis=1)
    d_x, d_f = np.diff(xs, axis=1), np.diff(fs, axis=1)
    gamma, *_ = np.linalg.lstsq(d_f, fs[:, -1], rcond=None)
    new = np.maximum(flat_x + fs[:, -1] - (d_x + d_f) @ gamma, 0.0)
    out, offset = list(gx), 0
    for i in leaves:
        u = gx[i]
        n = int(np.prod(np.shape(u)))
        out[i] = jnp.asarray(new[offset : offset + n].reshape(np.shape(u)), dtype=jnp.result_type(u))
        offset += n
    return State(*out), history


def resting_params(params: Params) -> Params:
    """``params`` with the injury off and the cartilage held still (no repair, no damage)."""
    return params._replace(
        injury_rate=jnp.zeros_like(params.injury_rate),
        cartilage_repair=jnp.zeros_like(params.cartilage_repair),
        cartilage_damage_tnf=jnp.zeros_like(params.cartilage_damage_tnf),
        cartilage_damage_il1=jnp.zeros_like(params.cartilage_damage_il1),
    )


#: Parameters the resting joint (``initial.start = "rest"``) does not depend on: it has no injury,
#: no drug, intact cartilage held still (:func:`resting_params`; so no fragments either).
REST_INDEPENDENT = frozenset(
    {"injury_rate", "injury_decay", "cartilage_repair", "repair_inhibition_half_saturation", "cartilage_damage_tnf",
     "cartilage_damage_il1", "recruitment_from_fragments", *(p for p in PARAMETERS if p.startswith("drug_"))}
)  # fmt: skip
