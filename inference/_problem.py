"""A fitting problem: which parameters, in what unconstrained space, and the loss through the solver.

Parameters are optimised as unconstrained ``u`` (shape ``(n,)``) with per-parameter transforms,
so positivity and bounds hold for any ``u``:

- ``log`` (no upper bound, lower bound 0): theta = exp(u);
- ``log-bounded`` (0 < lower < upper < inf): log theta = log lo + (log hi - log lo) sigmoid(u);
- ``bounded`` (lower = 0 < upper < inf): theta = hi sigmoid(u);
- ``shifted-log`` (0 < lower, no upper bound): theta = lo + exp(u).

The loss is the Gaussian negative log-likelihood of the observations, constant terms dropped,

    loss(theta) = 1/2 sum_i r_i^2 + 1/2 sum_j ((ln theta_j - ln m_j) / ln f_j)^2,

with whitened residuals r_i = (y_i(theta) - d_i) / sigma_i, or on log-concentrations
r_i = (ln(y_i + e) - ln(d_i + e)) / (sigma_i / (d_i + e)) (delta method, e a small floor), and
optional log-normal priors with median m_j and geometric standard deviation f_j. A value below a
detection limit d_i (``Observations.censored``) contributes -ln Phi(-r_i), Phi(-r_i) being the probability that a
measurement of y_i falls below d_i (a Tobit or M3 term), as the residual sqrt(-2 ln Phi(-r_i)).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from fields import TISSUE_NAMES
from solver import (
    DIFFUSIVITIES,
    PARAMETERS,
    REST_INDEPENDENT,
    Config,
    Params,
    StepPlan,
    build_scenario,
    checkpoint_budget_bytes,
    plasma_drug,
)
from solver.setup import did_you_mean
from solver.time import super_step_stages

from ._observations import ObservationError, ObservationOperator, Observations, observed

#: Literature log-normal priors (median, geometric sd factor, source) for parameters that have a
#: measured or estimated value in docs/model.md; rates the data must set have none.
LITERATURE_PRIORS: dict[str, tuple[float, float, str]] = {
    "decay_tnf": (2.25, 1.5, "docs/model.md: TNF t1/2 18.5 min, Ferraiolo et al. 1988"),
    "decay_il1": (2.2, 1.5, "docs/model.md: IL-1 t1/2 19 min, Cancer Res 1990;50:5751"),
    "chemotaxis": (0.05, 3.0, "docs/model.md: chi ~0.05 mm^2/h, not confirmed in literature"),
    "leukocyte_death": (0.03, 2.0, "docs/model.md: tissue neutrophil lifetime about a day"),
    "diffusivity_tnf.synovial_fluid": (0.27, 2.0, "docs/model.md: Hao & Friedman 2016"),
    "diffusivity_il1.synovial_fluid": (0.39, 2.0, "docs/model.md: Stokes-Einstein estimate"),
    "diffusivity_leukocytes.synovial_fluid": (0.01, 3.0, "docs/model.md: neutrophil speed 17 um/min, Butler 2010"),
}


def plasma_levels(params: Params, options):
    """The plasma drug level (ug/mL) at an array of times (h) for these parameters: what rows of kind
    "plasma" observe."""
    return lambda times: jax.vmap(lambda t: plasma_drug(params, options, t))(times)


class FitError(ValueError):
    """Bad fit input: the message names the parameter or key, its value and what is allowed."""


#: Event times and windows: the stepper sees a source switch on or off at a step, so the loss is
#: piecewise constant in these (their gradient is zero almost everywhere): they cannot be fitted.
EVENT_TIMES = ("injury_onset", "injury_duration", "drug_infusion")


def fittable_names() -> list[str]:
    """Every name a fit may free: scalar parameters but event times, and ``diffusivity_<species>.<tissue>``."""
    tissues = [t for t in TISSUE_NAMES if t not in ("excluded", "bone")]
    return [p for p in PARAMETERS if p not in EVENT_TIMES] + [f"{d}.{t}" for d in DIFFUSIVITIES for t in tissues]


@dataclasses.dataclass(frozen=True)
class FitParameter:
    """One parameter to fit: bounds in its own unit, an initial value (None: the scenario's) and a prior.

    ``prior`` is None (no prior), ``"literature"`` (the :data:`LITERATURE_PRIORS` entry) or
    ``(median, factor)`` of a log-normal prior.
    """

    name: str
    lower: float = 0.0
    upper: float = math.inf
    initial: float | None = None
    prior: object = None

    @property
    def transform(self) -> str:
        if self.lower > 0:
            return "log-bounded" if math.isfinite(self.upper) else "shifted-log"
        return "bounded" if math.isfinite(self.upper) else "log"


def _locate(name: str) -> tuple[str, int | None]:
    """(Params field, tissue index or None) for a fittable name."""
    if name in EVENT_TIMES:
        raise FitError(
            f"parameter '{name}' is an event time: the solver switches sources at whole steps, so the loss does not vary "
            "smoothly with it and it cannot be fitted; fix it in the scenario"
        )
    if name in PARAMETERS:
        return name, None
    field, _, tissue = name.partition(".")
    if field in DIFFUSIVITIES and tissue in TISSUE_NAMES and tissue not in ("excluded", "bone"):
        return field, TISSUE_NAMES.index(tissue)
    hint = did_you_mean(name, fittable_names(), otherwise="")
    raise FitError(f"unknown parameter '{name}'{hint}; fittable: scalar [parameters] keys and diffusivity_<species>.<tissue>")


def get_value(params: Params, name: str):
    field, index = _locate(name)
    value = getattr(params, field)
    return value if index is None else value[index]


def set_values(params: Params, names: Sequence[str], theta) -> Params:
    """``params`` with each named parameter replaced by the matching entry of ``theta``."""
    changes: dict[str, jax.Array] = {}
    for j, name in enumerate(names):
        field, index = _locate(name)
        current = changes.get(field, getattr(params, field))
        value = theta[j].astype(current.dtype)
        changes[field] = value if index is None else current.at[index].set(value)
    return params._replace(**changes)


def normalize_parameters(spec, params: Params) -> tuple[FitParameter, ...]:
    """Accept names, ``{name: (lower, upper)}``, ``{name: {lower, upper, initial, prior}}`` or FitParameters."""
    if isinstance(spec, Mapping):
        items = []
        for name, v in spec.items():
            if isinstance(v, FitParameter):
                items.append(v)
            elif isinstance(v, Mapping):
                items.append(FitParameter(name, **v))
            elif v is None:
                items.append(FitParameter(name))
            else:
                lo, hi = v
                items.append(FitParameter(name, float(lo), float(hi)))
    else:
        items = [p if isinstance(p, FitParameter) else FitParameter(str(p)) for p in spec]
    if not items:
        raise FitError("no parameters to fit: name at least one")
    out = []
    seen = set()
    for p in items:
        field, _ = _locate(p.name)
        if p.name in seen:
            raise FitError(f"parameter '{p.name}' is listed twice")
        seen.add(p.name)
        info_lower = PARAMETERS[field].lower if field in PARAMETERS else 0.0
        info_upper = PARAMETERS[field].upper if field in PARAMETERS else math.inf
        lower, upper = float(p.lower), float(p.upper)
        if not (lower >= max(info_lower, 0.0)) or not upper > lower or upper > info_upper:
            raise FitError(
                f"parameter '{p.name}': bounds [{lower:g}, {upper:g}] must satisfy "
                f"{max(info_lower, 0.0):g} <= lower < upper <= {info_upper:g}"
            )
        initial = float(get_value(params, p.name)) if p.initial is None else float(p.initial)
        if not (lower < initial < upper) or initial <= 0:
            raise FitError(
                f"parameter '{p.name}': initial value {initial:g} must be > 0 and strictly inside "
                f"its bounds [{lower:g}, {upper:g}]"
            )
        prior: Any = p.prior  # as given: None, False, True, "literature" or [median, factor]
        if prior in (None, False):
            prior = None
        elif prior is True or prior == "literature":
            if p.name not in LITERATURE_PRIORS:
                raise FitError(
                    f"parameter '{p.name}': no literature prior (docs/model.md gives one for {sorted(LITERATURE_PRIORS)}); "
                    "give prior = [median, factor]"
                )
            prior = LITERATURE_PRIORS[p.name][:2]
        else:
            try:
                median, factor = (float(v) for v in prior)
            except (TypeError, ValueError):
                raise FitError(f"parameter '{p.name}': prior = {prior!r} must be 'literature' or [median, factor]") from None
            if not (median > 0 and factor > 1):
                raise FitError(
                    f"parameter '{p.name}': prior [median, factor] = [{median:g}, {factor:g}] needs median > 0 and factor > 1"
                )
            prior = (median, factor)
        out.append(FitParameter(p.name, lower, upper, initial, prior))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Transform:
    """Vectorised per-parameter maps between unconstrained ``u`` and ``theta``."""

    lower: np.ndarray
    upper: np.ndarray
    kind: tuple[str, ...]

    def theta(self, u):
        out = []
        for j, kind in enumerate(self.kind):
            lo, hi, x = self.lower[j], self.upper[j], u[..., j]
            if kind == "log":
                out.append(jnp.exp(x))
            elif kind == "shifted-log":
                out.append(lo + jnp.exp(x))
            elif kind == "bounded":
                out.append(hi * jax.nn.sigmoid(x))
            else:
                out.append(jnp.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * jax.nn.sigmoid(x)))
        return jnp.stack(out, axis=-1)

    def u(self, theta) -> np.ndarray:
        theta = np.asarray(theta, float)
        out = np.empty_like(theta)
        for j, kind in enumerate(self.kind):
            lo, hi, t = self.lower[j], self.upper[j], theta[..., j]
            if kind == "log":
                out[..., j] = np.log(t)
            elif kind == "shifted-log":
                out[..., j] = np.log(t - lo)
            elif kind == "bounded":
                p = t / hi
                out[..., j] = np.log(p) - np.log1p(-p)
            else:
                p = (np.log(t) - math.log(lo)) / (math.log(hi) - math.log(lo))
                out[..., j] = np.log(p) - np.log1p(-p)
        return out


class Problem:
    """A scenario, observations and free parameters, with a differentiable loss of ``u``.

    ``loss``, ``residuals`` and ``predict`` are pure JAX functions of ``u`` (shape ``(n,)``);
    they run :meth:`solver.Solver.trajectory` (checkpointed: reverse mode stores one state per
    sub-step, or, where those do not fit, one per frame and per sub-step of a frame) from the
    scenario's initial state to the last observation.
    """

    def __init__(
        self,
        config: Config,
        observations: Observations,
        parameters,
        *,
        log_residuals: bool = False,
        memory_budget: int | None = None,
    ):
        self.config = config
        self.observations = observations
        scenario = build_scenario(config)
        self.scenario = scenario
        t_end = config.run.t_end_h
        late = [float(t) for t in observations.time_h if t > t_end * (1 + 1e-12)] + [
            m.time_h for m in observations.maps if m.time_h > t_end * (1 + 1e-12)
        ]
        if late:
            raise ObservationError(
                f"an observation at time_h = {max(late):g} lies outside the run (0 to run.t_end_h = {t_end:g} h)"
            )
        self.parameters = normalize_parameters(parameters, scenario.params)
        self.names = tuple(p.name for p in self.parameters)
        self.transform = Transform(
            np.array([p.lower for p in self.parameters]),
            np.array([p.upper for p in self.parameters]),
            tuple(p.transform for p in self.parameters),
        )
        self.operator = ObservationOperator.build(
            observations, scenario.geometry, scenario.interval, species_in_run=scenario.options.species
        )
        scenario.check_frames_memory(self.operator.n_frames)
        self._set_data(observations)
        self.log_residuals = bool(log_residuals)
        self._compiled: dict = {}
        # normalized (normalize_parameters): each prior None or (median, factor)
        priors = [(j, cast(tuple[float, float], p.prior)) for j, p in enumerate(self.parameters) if p.prior is not None]
        self.prior_index = np.array([j for j, _ in priors], int)
        self.prior_median = np.array([math.log(pr[0]) for _, pr in priors])
        self.prior_width = np.array([math.log(pr[1]) for _, pr in priors])
        # One step plan for every parameter set the fit may visit: the stability limits at the
        # upper bounds (or 4x the initial value where unbounded) are the tightest it can meet.
        # (normalized: every initial value set)
        extreme = [p.upper if math.isfinite(p.upper) else 4.0 * cast(float, p.initial) for p in self.parameters]
        params_hi = set_values(scenario.params, self.names, jnp.asarray(extreme, scenario.dtype))
        run = config.run
        hi = StepPlan.choose(
            run.stepper, scenario.interval, params_hi, scenario.initial, scenario.options, scenario.domain, run.safety, run.dt_h
        )
        substeps = max(hi.substeps, scenario.plan.substeps)
        dt = scenario.interval / substeps
        stages = max(super_step_stages(run.stepper, dt, hi.limits, run.safety), scenario.plan.rkl2_stages)
        self.plan = StepPlan(run.stepper, dt, substeps, stages, hi.limits)
        self.memory_budget = checkpoint_budget_bytes() if memory_budget is None else int(memory_budget)
        self.u0 = self.transform.u(np.array([p.initial for p in self.parameters]))

    def start_note(self) -> str | None:
        """What a user should know about the fit's initial state, or None.

        The resting joint a scenario starts from (``initial.start = "rest"``) is found once, for the
        scenario's parameter values; the fit keeps that state as the start whatever values it tries.
        """
        if self.config.initial["start"] != "rest":
            return None
        moving = [n for n in self.names if n not in REST_INDEPENDENT and not n.startswith("diffusivity_drug")]
        if not moving:
            return None
        return (
            f"the run starts from the resting joint of the scenario's values; {', '.join(moving)} also change(s) the "
            "resting state, which the fit keeps fixed: observations soon after the start then see a start that does not "
            'match the fitted values (refit from them, or set initial.start = "baseline"); steady-state '
            "observations days later are not affected"
        )

    def _set_data(self, observations: Observations) -> None:
        values, sigmas = observed(observations)
        self.observations = observations
        self.data = jnp.asarray(values, self.scenario.dtype)
        self.sigma = jnp.asarray(sigmas, self.scenario.dtype)
        # values below a detection limit (left-censored), in the order of ``data``: scalar rows, then map cells
        self.censored = np.concatenate([observations.censored, np.zeros(len(values) - len(observations), bool)])

    def with_observations(self, observations: Observations) -> Problem:
        """The same problem with other values and sigmas at the same times and places.

        It shares this problem's compiled functions (data are arguments, not constants), so a
        second fit, e.g. to another noise draw, does not compile again.
        """
        op = ObservationOperator.build(
            observations, self.scenario.geometry, self.scenario.interval, species_in_run=self.scenario.options.species
        )
        same = (
            op.n_frames == self.operator.n_frames
            and op.regions == self.operator.regions
            and all(
                np.array_equal(getattr(op, k), getattr(self.operator, k))
                for k in ("species_index", "region_index", "frame", "fraction")
            )
            and len(op.maps) == len(self.operator.maps)
            and np.array_equal(observations.censored, self.observations.censored)
            and all(a[:3] == b[:3] and np.array_equal(a[3], b[3]) for a, b in zip(op.maps, self.operator.maps))
        )
        if not same:
            raise ObservationError("with_observations needs observations at the same times, places and map cells")
        new = copy.copy(self)
        new._set_data(observations)
        return new

    def compiled(self, key, build):
        """A compiled function cached on this problem (and shared by :meth:`with_observations` copies)."""
        if key not in self._compiled:
            self._compiled[key] = build()
        return self._compiled[key]

    @property
    def n(self) -> int:
        return len(self.names)

    def params_of(self, u) -> Params:
        return set_values(self.scenario.params, self.names, self.transform.theta(u))

    def frames(self, params: Params, initial=None, members: int = 1, gradient: str = "adjoint"):
        """Initial state and one state per interval up to the last observation, stacked.

        ``members``: how many parameter sets ``jax.vmap`` runs this over (the trajectory's
        checkpointing counts them all); ``gradient``: ``"autodiff"`` where forward mode must go
        through it (solver.Solver).
        """
        sc = self.scenario
        initial = sc.initial if initial is None else initial
        solver = self.plan.solver(sc.options, gradient=gradient)
        _, frames = solver.trajectory(
            initial, params, sc.domain, self.plan.dt, self.operator.n_frames, members=members, memory_budget=self.memory_budget
        )
        return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), initial, frames)

    def predict_params(self, params: Params, initial=None, members: int = 1, gradient: str = "adjoint"):
        frames = self.frames(params, initial, members, gradient)
        return self.operator.predict(frames, plasma_levels(params, self.scenario.options))

    @property
    def log_floor(self) -> float:
        """e in the log residuals: 1e-6 of the largest observed magnitude."""
        return _log_floor(np.asarray(self.data))

    def whiten(self, predicted, data=None, sigma=None):
        data = self.data if data is None else data
        sigma = self.sigma if sigma is None else sigma
        if self.log_residuals:
            e = _log_floor(data)
            r = (jnp.log(jnp.maximum(predicted, 0) + e) - jnp.log(data + e)) * (data + e) / sigma
        else:
            r = (predicted - data) / sigma
        if self.censored.any():
            # below the limit d: the likelihood is P(measurement < d) = Phi(-r), and -ln Phi(-r) = 1/2 r_c^2
            tiny = jnp.finfo(r.dtype).tiny
            r = jnp.where(jnp.asarray(self.censored), jnp.sqrt(-2.0 * log_ndtr(-r) + tiny), r)
        return r

    def prior_residuals(self, theta):
        if not len(self.prior_index):
            return jnp.zeros(0, theta.dtype)
        return (jnp.log(theta[self.prior_index]) - self.prior_median) / self.prior_width

    def residuals(self, u, data=None, sigma=None, members: int = 1):
        """Whitened data residuals followed by prior residuals (1/2 their squared sum is the loss)."""
        theta = self.transform.theta(u)
        params = set_values(self.scenario.params, self.names, theta)
        return jnp.concatenate(
            [self.whiten(self.predict_params(params, members=members), data, sigma), self.prior_residuals(theta)]
        )

    def loss(self, u, data=None, sigma=None, members: int = 1):
        """The loss at ``u``; ``data``/``sigma`` default to this problem's (pass them to share compiled code);
        ``members`` as for :meth:`frames`."""
        r = self.residuals(u, data, sigma, members)
        return 0.5 * jnp.sum(r * r)

    def loss_of(self, params: Params, initial=None):
        """The data part of the loss for a whole parameter set and initial state (for gradient checks)."""
        r = self.whiten(self.predict_params(params, initial))
        return 0.5 * jnp.sum(r * r)

    def nll_constant(self) -> float:
        """What the dropped terms add: sum ln sigma + n/2 ln(2 pi) (on the log scale, sigma/(d+e))."""
        s = np.asarray(self.sigma, float)
        if self.log_residuals:
            s = s / (np.asarray(self.data, float) + float(self.log_floor))
        s = s[~self.censored]  # a censored value's term, -ln Phi, is whole
        return float(np.sum(np.log(s)) + 0.5 * s.size * math.log(2 * math.pi))


def _log_floor(data):
    m = jnp.max(jnp.abs(data)) if data.size else 1.0
    return jnp.maximum(1e-6 * m, 1e-12)


def gauss_newton(problem: Problem, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Standard errors, correlations and identifiability at ``theta`` from the Gauss-Newton matrix.

    Works in z = ln theta: F = J^T J with J = d r / d z (forward mode, one pass per parameter),
    covariance C = F^+ (pseudo-inverse); se(theta_j) = theta_j sqrt(C_jj) (delta method).
    A parameter is flagged unidentifiable when it loads on a direction the data do not constrain
    (eigenvalue below 1e-8 of the largest) or its relative standard error exceeds 1.
    """
    dtype = problem.scenario.dtype
    theta = np.asarray(theta, float)

    def r_of_z(z, data, sigma):
        th = jnp.exp(z)
        params = set_values(problem.scenario.params, problem.names, th)
        # forward mode: through JAX's derivatives of the right-hand side, not its hand-written adjoint
        predicted = problem.predict_params(params, gradient="autodiff")
        return jnp.concatenate([problem.whiten(predicted, data, sigma), problem.prior_residuals(th)])

    jacobian = problem.compiled("jacobian", lambda: jax.jit(jax.jacfwd(r_of_z)))
    jac = np.asarray(jacobian(jnp.asarray(np.log(theta), dtype), problem.data, problem.sigma), float)
    fisher = jac.T @ jac
    evals, evecs = np.linalg.eigh(fisher)
    top = max(float(evals[-1]), 1e-300)
    good = evals > 1e-8 * top
    cov = (evecs[:, good] / evals[good]) @ evecs[:, good].T
    weak = np.zeros(problem.n, bool)
    for k in np.flatnonzero(~good):
        weak |= np.abs(evecs[:, k]) > 0.3
    rel = np.sqrt(np.maximum(np.diag(cov), 0))
    rel[weak] = np.inf
    se = theta * rel
    d = np.sqrt(np.maximum(np.diag(cov), 1e-300))
    corr = cov / np.outer(d, d)
    corr[weak, :] = np.nan
    corr[:, weak] = np.nan
    np.fill_diagonal(corr, 1.0)
    return {
        "stderr": se,
        "relative_stderr": rel,
        "correlation": corr,
        "identifiable": ~weak & (rel <= 1.0),
        "fisher_eigenvalues": evals,
        "jacobian": jac,
    }
