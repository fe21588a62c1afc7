"""The model's sources that switch on and off in time, and their exact integrals over a step.

Two scalar profiles drive the joint from outside: the injury's, exp(-(t - onset)/decay) while it
lasts, and the plasma drug level of the doses (solver.physics._drugs). The injury switches on and
off; the plasma level has a kink at each dose (and at each infusion's end). A Runge-Kutta scheme
that samples such a profile at its stage times integrates it to first order across a switch (the
step's quadrature misses or adds part of the jump), and a stage that lands on a switch takes
whichever side the comparison rounds to.

Instead, a stepper takes from :func:`forcing_moments` the profile's exact integral and first moment
over the step, each smooth piece between the switch times (:func:`event_times`) integrated by
Gauss-Legendre quadrature, and gives its stages values that reproduce both as its weights combine
them (solver.time's ``stage_forcing``): a step then delivers exactly what the profile delivers, and
the one step that holds a switch errs by O(dt^3), so a third-order scheme stays third order.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._domain import ModelOptions
from ._drugs import plasma_concentration
from ._params import Params

#: Gauss-Legendre nodes and weights on [0, 1] per smooth piece: exact for polynomials of degree 7;
#: on an exponential piece of rate k the error is about (k dt)^8 / 10^6 of its integral.
_NODES, _WEIGHTS = (np.polynomial.legendre.leggauss(4)[0] + 1.0) / 2.0, np.polynomial.legendre.leggauss(4)[1] / 2.0


class Forcing(NamedTuple):
    """Values of the time profiles: ``injury`` (the injury's, 0-1) and ``plasma`` (ug/mL)."""

    injury: jax.Array
    plasma: jax.Array


def injury_profile(params: Params, t) -> jax.Array:
    """Time profile of the injury source: exp(-(t - onset)/decay) while it lasts, else 0."""
    since = t - params.injury_onset
    on = (since >= 0) & (since < params.injury_duration)
    # times the reciprocal, not divided: XLA compiled the division to other roundings in a batch of
    # parameters (jax.vmap, sweep --ensemble) than in a run alone, whose results a batch must repeat
    return jnp.where(on, jnp.exp(-jnp.maximum(since, 0.0) * (1.0 / params.injury_decay)), 0.0)


def plasma_drug(params: Params, options: ModelOptions, t) -> jax.Array:
    """The plasma drug concentration (ug/mL) at ``t`` (h) of the scenario's doses (solver._drugs)."""
    return plasma_concentration(params, options.drug_route, options.dose_times, t)


def forcing_at(params: Params, options: ModelOptions, t) -> Forcing:
    """The profiles at time ``t`` (h)."""
    plasma = plasma_drug(params, options, t) if options.drug else jnp.zeros_like(injury_profile(params, t))
    return Forcing(injury_profile(params, t), plasma)


def event_times(params: Params, options: ModelOptions) -> jax.Array:
    """Where a profile switches or kinks (h): the injury's onset and end, each dose, each infusion's end."""
    times = [params.injury_onset, params.injury_onset + params.injury_duration]
    if options.drug and options.dose_times:
        doses = jnp.asarray(options.dose_times, jnp.result_type(params.injury_onset))
        times += list(doses)
        if options.drug_route == "iv":
            times += list(doses + params.drug_infusion)
    return jnp.stack([jnp.asarray(t, jnp.result_type(params.injury_onset)) for t in times])


def _ascending(x: jax.Array) -> jax.Array:
    """``x`` (a few values) in ascending order, by ranks and a one-hot sum: no gather or scatter, in
    the program or in its gradient (jnp.sort's gradient scatters, which GPUs serialise)."""
    n = x.shape[0]
    index = jnp.arange(n)
    before = (x[None, :] < x[:, None]) | ((x[None, :] == x[:, None]) & (index[None, :] < index[:, None]))
    rank = jnp.sum(before, axis=1)
    return jnp.sum(jnp.where(rank[:, None] == index[None, :], x[:, None], 0.0), axis=0)


def forcing_moments(t, dt, params: Params, options: ModelOptions) -> tuple[Forcing, Forcing]:
    """(m0, m1): the means over the step [t, t + dt] of each profile g and of theta g, theta = (s - t)/dt
    in [0, 1]; exact for a profile piecewise a polynomial of degree 7 between :func:`event_times`.

    The step is cut at the switch times inside it (those outside give pieces of length zero) and
    each piece integrated by Gauss-Legendre quadrature, whose nodes never fall on a switch.
    """
    dtype = jnp.result_type(params.injury_onset)
    dt = jnp.asarray(dt, dtype)
    # in the step's own coordinate u = s - t, so a large t (a float32 run's late frames) loses nothing
    cuts = _ascending(jnp.clip(event_times(params, options) - t, 0.0, dt))
    bounds = jnp.concatenate([jnp.zeros((1,), dtype), cuts, dt[None]])
    low, width = bounds[:-1, None], (bounds[1:] - bounds[:-1])[:, None]
    nodes, weights = jnp.asarray(_NODES, dtype)[None, :], jnp.asarray(_WEIGHTS, dtype)[None, :]
    u = low + width * nodes  # (pieces, nodes)
    weight = width * weights / dt
    theta = u / dt
    values = jax.vmap(jax.vmap(lambda s: forcing_at(params, options, t + s)))(u)
    m0 = jax.tree.map(lambda g: jnp.sum(weight * g), values)
    m1 = jax.tree.map(lambda g: jnp.sum(weight * theta * g), values)
    return m0, m1
