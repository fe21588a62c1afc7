"""Profile likelihoods: a parameter held at values around its optimum, the others re-optimised.

For parameter k, the profile is PL(theta_k) = min over the others of the loss with theta_k fixed;
Delta chi^2(theta_k) = 2 (PL(theta_k) - min loss), as the loss is 1/2 sum r^2 (a negative
log-likelihood, priors included). The points step outward from the fit's optimum in ln theta_k, first
up, then down, each warm-started from its neighbour (extrapolated linearly; the first step along the
Gauss-Newton covariance's regression of the others on theta_k), with steps that adapt so each raises
Delta chi^2 by about a quarter of the threshold. A side stops once Delta chi^2 exceeds 1.5 x the
threshold (chi^2 quantile, 1 degree of freedom: 3.84 for 95 %), at a bound, after ``max_points``, or
at a point whose re-optimised loss is not finite ("failed": nothing is known beyond it). Each point
records whether its re-optimisation converged within ``max_iterations``.
The confidence interval is where the profile crosses the threshold (linear in ln theta between
points); a side that never crosses is open and the parameter *practically not identifiable*; a side
that reaches a failed point first is open too, but undetermined rather than unbounded.

The held parameter is not removed from the problem: the optimiser's loss sees it through
``jax.lax.stop_gradient`` under a mask passed as data, so its gradient entry is exactly zero and
neither L-BFGS nor Adam ever moves it. One compiled step serves every point of every profiled
parameter of a problem.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fields import temporary_path
from solver import interactive

from ._fit import FitResult, FitSettings, Progress, _OptimiserStep, make_optimizer, optimise
from ._problem import FitError, Problem, gauss_newton

#: How far a side goes: until Delta chi^2 exceeds this multiple of the threshold.
STOP_FACTOR = 1.5
#: Each step aims to raise Delta chi^2 by this fraction of the threshold.
STEP_TARGET = 0.25
#: Closest approach to a bound in ln theta (the transforms map a bound to an infinite u).
BOUND_MARGIN = 1e-6


def chi2_threshold(confidence: float = 0.95) -> float:
    """The chi^2 quantile with one degree of freedom: 3.84 for 0.95 (pointwise confidence intervals)."""
    if not 0 < confidence < 1:
        raise FitError(f"confidence = {confidence} must lie between 0 and 1")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    return z * z


class _Pinned:
    """``problem`` with the parameters of ``mask`` held where they are: its loss has no gradient along them.

    The mask travels with the data (a traced argument), so one compiled optimiser step serves every mask.
    """

    def __init__(self, problem: Problem, mask):
        self.base = problem
        self.mask = np.asarray(mask, bool)
        self.data = (problem.data, jnp.asarray(self.mask))
        self.sigma = problem.sigma
        self.transform, self.scenario, self.names = problem.transform, problem.scenario, problem.names

    @property
    def n(self) -> int:
        return self.base.n

    def loss(self, u, data, sigma, members: int = 1):
        values, mask = data
        return self.base.loss(jnp.where(mask, jax.lax.stop_gradient(u), u), values, sigma, members)


def profile_step(problem: Problem, settings: FitSettings) -> _OptimiserStep:
    """The compiled optimiser step of ``problem``'s profiles (one for every held parameter)."""
    key = ("profile step", settings.optimizer, float(settings.learning_rate), float(settings.learning_rate_half_life))
    opt = make_optimizer(settings.optimizer, settings.learning_rate, settings.learning_rate_half_life)
    pinned = cast(Problem, _Pinned(problem, np.zeros(problem.n, bool)))  # what the step uses of a Problem
    return problem.compiled(key, lambda: _OptimiserStep(pinned, opt, settings.optimizer))


@dataclasses.dataclass
class Profile:
    """The profile of one parameter: points in ascending order of its value, and its interval."""

    name: str
    names: tuple[str, ...]
    values: np.ndarray  # (points,) the held parameter's value
    loss: np.ndarray  # (points,) the loss with the others re-optimised
    parameters: np.ndarray  # (points, n) every parameter at each point
    grad_norm: np.ndarray  # (points,) largest gradient entry of the re-optimised parameters
    iterations: np.ndarray  # (points,) optimiser iterations at each point
    fitted: float  # the fit's value of the parameter
    fit_parameters: np.ndarray  # (n,) the fit's values of all parameters
    fitted_loss: float
    stderr_log: float  # Gauss-Newton standard error of ln theta (inf: not identifiable)
    confidence: float
    threshold: float
    upper_stop: str = "running"  # why each side stopped: "crossed", "bound", "points", "failed", "interrupted"
    lower_stop: str = "running"
    status: str = "running"  # "complete" or "interrupted"
    wall_s: float = 0.0
    # (points,) whether each point's re-optimisation converged within max_iterations (False where its loss
    # is not finite); empty: not known (all taken as converged)
    converged: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))

    @property
    def reference_loss(self) -> float:
        """The smallest loss seen: the fit's, or a profile point's if the fit had not quite converged."""
        return float(min(self.fitted_loss, np.min(self.loss))) if len(self.loss) else float(self.fitted_loss)

    @property
    def delta_chi2(self) -> np.ndarray:
        return 2.0 * (np.asarray(self.loss, float) - self.reference_loss)

    @property
    def interval(self) -> tuple[float, float]:
        """(lower, upper) where the profile crosses the threshold; NaN on a side it never crosses."""
        return profile_interval(self.values, self.delta_chi2, self.fitted, self.threshold)

    @property
    def identifiable(self) -> bool:
        return bool(np.all(np.isfinite(self.interval)))

    @property
    def laplace_interval(self) -> tuple[float, float]:
        """The Gauss-Newton (Laplace) interval: fitted x exp(-+ sqrt(threshold) se(ln theta))."""
        if not (np.isfinite(self.stderr_log) and self.stderr_log > 0):
            return (math.nan, math.nan)
        w = math.sqrt(self.threshold) * self.stderr_log
        return (self.fitted * math.exp(-w), self.fitted * math.exp(w))

    @property
    def point_converged(self) -> np.ndarray:
        """(points,) ``converged``, or all True where it is not known (a Profile made without it)."""
        flags = np.asarray(self.converged, bool)
        return flags if flags.shape == np.shape(self.values) else np.ones(np.shape(self.values), bool)

    def summary(self) -> str:
        lo, hi = self.interval
        glo, ghi = self.laplace_interval
        pct = f"{100 * self.confidence:g}%"
        d = self.delta_chi2
        (_, lower_points, lower_failed), (_, upper_points, upper_failed) = _sides(self.values, d, self.fitted, self.threshold)

        def side(v, stop, failed):
            return f"{v:.5g}" if np.isfinite(v) else ("open (failed)" if failed else f"open ({stop})")

        text = f"{self.name}: {self.fitted:.5g}, profile {pct} interval "
        text += f"[{side(lo, self.lower_stop, lower_failed)}, {side(hi, self.upper_stop, upper_failed)}]"
        text += f", Gauss-Newton [{glo:.5g}, {ghi:.5g}]" if np.isfinite(glo) else ", Gauss-Newton: not identifiable"
        open_unbounded = (np.isnan(lo) and not lower_failed) or (np.isnan(hi) and not upper_failed)
        if open_unbounded:
            text += "; practically not identifiable"
        if failed := [float(v) for v, x in zip(self.values, d) if not np.isfinite(x)]:
            where = ", ".join(f"{v:.5g}" for v in failed)
            text += (
                f"; the re-optimisation failed (loss not finite) at {self.name} = {where}: "
                "the interval is undetermined beyond it, not shown to be unbounded"
            )
        deciding = np.zeros(len(self.values), bool)
        deciding[lower_points + upper_points] = True
        unconverged = deciding & ~self.point_converged & np.isfinite(d)
        if unconverged.any():
            where = ", ".join(f"{v:.5g}" for v in np.asarray(self.values)[unconverged])
            text += (
                f"; {int(unconverged.sum())} point(s) within the interval's region did not converge "
                f"({self.name} = {where}): their loss may be too high and the interval too narrow; "
                "raise max_iterations"
            )
        if self.fitted_loss - self.reference_loss > 0.005:
            text += f"; a profile point lies {2 * (self.fitted_loss - self.reference_loss):.3g} chi^2 below the fit: refit"
        state = "" if self.status == "complete" else f", {self.status}"
        return text + f" ({len(self.values)} points, {self.wall_s:.0f} s{state})"


def profile_interval(values, delta_chi2, fitted: float, threshold: float) -> tuple[float, float]:
    """Where a profile first crosses ``threshold`` going outward from ``fitted`` on each side, interpolated
    linearly in ln theta between the points either side of it; NaN where it never does, or where it reaches
    a point whose Delta chi^2 is not finite (a failed re-optimisation) first."""
    (lo, _, _), (hi, _, _) = _sides(values, delta_chi2, fitted, threshold)
    return lo, hi


def _sides(values, delta_chi2, fitted: float, threshold: float) -> list[tuple[float, list[int], bool]]:
    """For the lower, then the upper side: the crossing (NaN where none), the indices of the points that
    decide it (the centre, the point nearest ``fitted``, then outward to the first point past the threshold,
    or to the end) and whether the search stopped at a point whose Delta chi^2 is not finite.

    The centre belongs to both sides: its value comes back through the transforms a few ulps off
    ``fitted``, so a test against ``fitted`` alone would drop it from one side."""
    z = np.log(np.asarray(values, float))
    d = np.asarray(delta_chi2, float)
    z0 = math.log(fitted)
    if not np.isfinite(z).any():
        return [(math.nan, [], False), (math.nan, [], False)]
    centre = int(np.argmin(np.where(np.isfinite(z), np.abs(z - z0), np.inf)))
    out = []
    for side in (-1, 1):
        outward = np.flatnonzero(side * (z - z[centre]) > 0)
        sel = [centre, *outward[np.argsort(side * (z[outward] - z[centre]))].tolist()]
        crossing, used, failed = math.nan, [centre], not np.isfinite(d[centre])
        for a, b in zip(sel[:-1], sel[1:]):
            if failed:
                break
            used.append(b)
            if not np.isfinite(d[b]):  # a failed point: nothing is known beyond it, nor between it and a
                failed = True
                break
            if d[a] <= threshold < d[b]:
                crossing = math.exp(z[a] + (threshold - d[a]) / (d[b] - d[a]) * (z[b] - z[a]))
                break
        out.append((crossing, used, failed))
    return out


def profile(
    fit: FitResult | Problem,
    name: str,
    *,
    theta=None,
    loss: float | None = None,
    confidence: float = 0.95,
    max_points: int = 12,
    max_step: float = 1.0,
    optimizer: str = "lbfgs",
    max_iterations: int = 50,
    tolerance: float = 1e-8,
    progress: bool | None = None,
    report: str | os.PathLike[str] | None = None,
    on_iteration: Callable[[int, np.ndarray], None] | None = None,
) -> Profile:
    """The profile likelihood of parameter ``name`` about a fit's optimum.

    Args:
        fit: a :class:`~inference.FitResult` (its problem, values, loss and standard errors), or a
            :class:`~inference.Problem` with ``theta`` (the optimum's values; ``loss`` there, else computed).
        confidence: of the interval; the threshold is the chi^2 quantile with one degree of freedom.
        max_points: points per side at most; ``max_step``: the largest step in ln theta.
        optimizer, max_iterations, tolerance: how the others are re-optimised at each point (as :func:`~inference.fit`).
        report: a fit report (:func:`~inference.write_report`) that receives the profile as
            ``/profiles/<name>``, rewritten atomically every few seconds, so Ctrl-C keeps the points done.
        progress: a progress bar; None: as :func:`~inference.fit`.
    """
    started = time.perf_counter()
    if isinstance(fit, FitResult):
        problem = fit.problem
        theta = fit.theta if theta is None else theta
        loss = fit.loss if loss is None else loss
        rel = np.array([fit.relative_stderr[n] for n in fit.names])
        corr = np.asarray(fit.correlation, float)
    else:
        problem = fit
        if theta is None:
            raise FitError("profile of a Problem needs theta=, the fitted values")
        uq = gauss_newton(problem, np.asarray(theta, float))
        rel, corr = uq["relative_stderr"], uq["correlation"]
    theta = np.asarray(theta, float)
    if name not in problem.names:
        raise FitError(f"cannot profile '{name}': it is not a free parameter of this fit ({', '.join(problem.names)})")
    if max_points < 1:
        raise FitError(f"max_points = {max_points} must be at least 1")
    k = problem.names.index(name)
    settings = FitSettings(optimizer=optimizer, max_iterations=max_iterations, tolerance=tolerance)
    settings.check()
    step = profile_step(problem, settings)
    pinned = cast(Problem, _Pinned(problem, np.arange(problem.n) == k))
    threshold = chi2_threshold(confidence)
    cov = np.outer(rel, rel) * corr  # in ln theta; NaN/inf along directions the data do not see
    regress = cov[:, k] / cov[k, k] if np.isfinite(cov[k, k]) and cov[k, k] > 0 else np.zeros(problem.n)
    regress = np.where(np.isfinite(regress), regress, 0.0)
    regress[k] = 1.0
    with np.errstate(divide="ignore"):
        z_lo = np.log(problem.transform.lower) + BOUND_MARGIN  # -inf where the lower bound is 0
    z_hi = np.log(problem.transform.upper) - BOUND_MARGIN
    stderr_log = float(rel[k])
    first_step = 0.5 * stderr_log if np.isfinite(stderr_log) and stderr_log > 0 else 0.1
    first_step = min(max(first_step, 1e-4), max_step)

    points: list[dict] = []
    result = Profile(
        name, problem.names, np.zeros(0), np.zeros(0), np.zeros((0, problem.n)), np.zeros(0), np.zeros(0, int),
        float(theta[k]), theta, math.inf if loss is None else float(loss), stderr_log, confidence, threshold,
    )  # fmt: skip

    def update(status: str | None = None) -> Profile:
        order = sorted(range(len(points)), key=lambda i: points[i]["theta"][k])
        result.values = np.array([points[i]["theta"][k] for i in order])
        result.loss = np.array([points[i]["loss"] for i in order])
        result.parameters = np.array([points[i]["theta"] for i in order]).reshape(len(points), problem.n)
        result.grad_norm = np.array([points[i]["grad"] for i in order])
        result.iterations = np.array([points[i]["iterations"] for i in order], int)
        result.converged = np.array([points[i]["converged"] for i in order], bool)
        result.wall_s = time.perf_counter() - started
        if status is not None:
            result.status = status
        return result

    last_save = [time.perf_counter()]

    def save(force: bool = False) -> None:
        if report is not None and (force or time.perf_counter() - last_save[0] > 2.0):
            write_profile(report, update())
            last_save[0] = time.perf_counter()

    def solve(z_start: np.ndarray, fallback: np.ndarray | None) -> dict:
        """Re-optimise the others from ln theta ``z_start`` (``fallback`` where that start's loss is not finite)."""
        z_start = np.clip(z_start, z_lo, z_hi)
        state = Progress.start(pinned, step, np.exp(z_start)[None])
        if not np.isfinite(np.asarray(state.value, float)).all() and fallback is not None:
            fallback = fallback.copy()
            fallback[k] = z_start[k]
            state = Progress.start(pinned, step, np.exp(fallback)[None])
        value = float(np.asarray(state.value, float)[0])
        gnorm = float(np.max(np.abs(np.asarray(state.grad, float)[0]), initial=0.0))
        converged = True  # where there is nothing to re-optimise (e.g. a one-parameter fit)
        if not gnorm <= tolerance * max(1.0, abs(value)):
            converged = optimise(pinned, step, state, settings, on_iteration) == "converged"
        value = float(np.asarray(state.value, float)[0])
        theta_k = np.array(problem.transform.theta(state.u), float)[0]
        if not (np.isfinite(value) and np.isfinite(theta_k).all()):  # failed: the held value is still known
            value, converged = math.inf, False
            theta_k[k] = math.exp(z_start[k])
        gnorm = float(np.max(np.abs(np.asarray(state.grad, float)[0]), initial=0.0))
        return {
            "theta": theta_k, "z": np.log(theta_k), "loss": value, "grad": gnorm, "iterations": state.iteration,
            "converged": converged,
        }  # fmt: skip

    bar = None
    if progress if progress is not None else interactive():
        bar = tqdm(total=2 * max_points + 1, unit="pt", desc=f"profile {name}", dynamic_ncols=True)
    try:
        centre = solve(np.log(theta), None)
        points.append(centre)
        if not math.isfinite(result.fitted_loss):
            result.fitted_loss = centre["loss"]
        reference = min(result.fitted_loss, centre["loss"])
        if bar is not None:
            bar.update(1)
        save()
        for side in (1, -1):
            prev, h = centre, first_step
            before = None  # the point before prev on this side
            stop = "points"
            for _ in range(max_points):
                z_k = prev["z"][k] + side * h
                at_bound = not (z_lo[k] < z_k < z_hi[k])
                z_k = min(max(z_k, z_lo[k]), z_hi[k])
                dz = z_k - prev["z"][k]
                if abs(dz) < 1e-12:
                    stop = "bound"
                    break
                if before is None:
                    start = prev["z"] + regress * dz
                else:
                    start = prev["z"] + (prev["z"] - before["z"]) * (dz / (prev["z"][k] - before["z"][k]))
                start[k] = z_k
                point = solve(start, prev["z"])
                points.append(point)
                reference = min(reference, point["loss"])
                d_prev, d_new = 2 * (prev["loss"] - reference), 2 * (point["loss"] - reference)
                if bar is not None:
                    bar.set_postfix({name: f"{point['theta'][k]:.4g}", "dchi2": f"{d_new:.3g}"})
                    bar.update(1)
                save()
                if not math.isfinite(point["loss"]):  # the re-optimisation failed: nothing is known beyond it
                    stop = "failed"
                    break
                if d_new >= STOP_FACTOR * threshold:
                    stop = "crossed"
                    break
                if at_bound:
                    stop = "bound"
                    break
                rise = d_new - d_prev
                factor = 2.0 if rise <= 0 else min(2.0, max(0.5, STEP_TARGET * threshold / rise))
                h = min(max_step, h * factor)
                before, prev = prev, point
            if side == 1:
                result.upper_stop = stop
            else:
                result.lower_stop = stop
            if bar is not None:
                bar.total = bar.n + (max_points if side == 1 else 0)
                bar.refresh()
    except KeyboardInterrupt:
        for attr in ("upper_stop", "lower_stop"):
            if getattr(result, attr) == "running":
                setattr(result, attr, "interrupted")
        update("interrupted")
        if report is not None and points:
            write_profile(report, result)
        raise
    finally:
        if bar is not None:
            bar.close()
    update("complete")
    if report is not None:
        write_profile(report, result)
    return result


# ----------------------------------------------------------------------------------------------
# In the fit report: /profiles/<name>
# ----------------------------------------------------------------------------------------------

_DATASETS = ("values", "loss", "delta_chi2", "parameters", "grad_norm", "iterations", "converged")


def write_profile(path, result: Profile) -> None:
    """Add (or replace) ``/profiles/<name>`` in the fit report ``path``, atomically."""
    path = Path(path)
    tmp = temporary_path(path, ".h5.tmp")
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            group = f.require_group("profiles")
            if result.name in group:
                del group[result.name]
            g = group.create_group(result.name)
            for key in _DATASETS:
                g[key] = np.asarray(getattr(result, key))
            lo, hi = result.interval
            glo, ghi = result.laplace_interval
            g.attrs.update(
                {
                    "fitted": result.fitted,
                    "fit_parameters": np.asarray(result.fit_parameters, float),
                    "fitted_loss": result.fitted_loss,
                    "reference_loss": result.reference_loss,
                    "stderr_log": result.stderr_log,
                    "confidence": result.confidence,
                    "threshold": result.threshold,
                    "lower": lo,
                    "upper": hi,
                    "laplace_lower": glo,
                    "laplace_upper": ghi,
                    "identifiable": result.identifiable,
                    "lower_stop": result.lower_stop,
                    "upper_stop": result.upper_stop,
                    "status": result.status,
                    "wall_s": result.wall_s,
                }
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_profiles(f: h5py.File) -> dict[str, dict]:
    """The profiles of an open fit report: ``{name: {dataset or attribute: value}}`` (no ``converged`` in
    a report written before profiles recorded it)."""
    out = {}
    for name, g in f.get("profiles", {}).items():
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
        out[name] = {**attrs, **{k: g[k][()] for k in g}}
    return out
