"""Fitting: optax Adam or L-BFGS over unconstrained parameters, several starts batched with vmap.

Every start runs through one compiled solver (``jax.vmap`` over the starts of the loss, its
gradient and the optimiser update). A start stops when its loss changes by less than
``tolerance * max(1, |loss|)`` on two iterations in a row, or its gradient's largest entry
falls below that; the fit stops when every start has, or at ``max_iterations``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from fields import temporary_path
from solver import Config, __version__, config_from_dict, default_params, interactive

from ._observations import Observations
from ._problem import FitError, Problem, gauss_newton, get_value, plasma_levels

OPTIMIZERS = ("lbfgs", "adam")
REPORT_FORMAT = "synovia-fit"

#: Scenario parameters live in the config's [injury]/[drug] sections under these keys.
_SECTION_KEY = {
    "injury_rate": ("injury", "rate"),
    "injury_onset": ("injury", "onset_h"),
    "injury_duration": ("injury", "duration_h"),
    "injury_decay": ("injury", "decay_h"),
    "drug_dose": ("drug", "dose_mg"),
    "drug_infusion": ("drug", "infusion_h"),
}


def _tree_get(tree, key):
    getter = getattr(getattr(optax, "tree", None), "get", None) or optax.tree_utils.tree_get
    return getter(tree, key)


def make_optimizer(name: str, learning_rate: float, half_life: float = 100.0) -> optax.GradientTransformationExtraArgs:
    """Adam whose step halves every ``half_life`` iterations, or L-BFGS with a zoom line search.

    The schedule does not depend on the iteration budget, so a resumed fit continues exactly.
    """
    if name == "adam":
        return optax.adam(optax.exponential_decay(learning_rate, transition_steps=half_life, decay_rate=0.5))
    if name == "lbfgs":
        return optax.lbfgs(memory_size=10, linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=30))
    raise FitError(f"optimizer '{name}' is not one of {list(OPTIMIZERS)}")


@dataclasses.dataclass
class FitResult:
    """What a fit found. Arrays over starts have a leading axis ``starts``; histories one more, ``iterations + 1``."""

    names: tuple[str, ...]
    parameters: dict[str, float]  # best start's fitted values
    stderr: dict[str, float]
    relative_stderr: dict[str, float]
    identifiable: dict[str, bool]
    correlation: np.ndarray
    loss: float
    loss_history: np.ndarray  # (iterations + 1, starts)
    grad_norm_history: np.ndarray
    theta_history: np.ndarray  # (iterations + 1, starts, n)
    initial: np.ndarray  # (starts, n)
    best_start: int
    status: str  # "converged", "budget" (max_iterations reached) or "interrupted"
    iterations: int
    wall_s: float
    predicted: np.ndarray
    problem: Problem = dataclasses.field(repr=False)
    optimizer: str = "lbfgs"
    truth: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def theta(self) -> np.ndarray:
        return np.array([self.parameters[n] for n in self.names])

    def fitted_config(self) -> Config:
        """The scenario config with the fitted values, ready to run."""
        return fitted_config(self.problem.config, self.parameters)

    def summary(self) -> str:
        lines = [f"{'parameter':<40} {'initial':>11} {'fitted':>11} {'std err':>10} {'truth':>11}"]
        init = self.initial[self.best_start]
        for j, n in enumerate(self.names):
            se = self.stderr[n]
            flag = "" if self.identifiable[n] else "  not identifiable"
            truth = f"{self.truth[n]:11.5g}" if n in self.truth else f"{'':>11}"
            lines.append(f"{n:<40} {init[j]:11.5g} {self.parameters[n]:11.5g} {se:10.3g} {truth}{flag}")
        return "\n".join(lines)


def fitted_config(config: Config, values: dict[str, float]) -> Config:
    raw = config.to_dict()
    for name, value in values.items():
        value = float(value)
        if name in _SECTION_KEY:
            section, key = _SECTION_KEY[name]
            raw[section][key] = value
            if name == "drug_dose":  # the fitted dose in mg, not per kg
                raw["drug"]["dose_mg_per_kg"] = 0.0
        elif "." in name:
            field, tissue = name.split(".")
            raw["tissues"][tissue][field] = value
        else:
            raw["parameters"][name] = value
    return config_from_dict(raw, config.base_dir)


def _initial_guesses(problem: Problem, starts: int, spread: float, seed: int) -> np.ndarray:
    """The parameters' initial values, then log-uniform draws within initial/spread..initial*spread (inside bounds)."""
    theta0 = np.array([p.initial for p in problem.parameters])
    if starts < 1:
        raise FitError(f"fit.starts = {starts} must be at least 1")
    rng = np.random.default_rng(seed)
    out = [theta0]
    lo = np.maximum(theta0 / spread, problem.transform.lower)
    hi = np.minimum(theta0 * spread, problem.transform.upper)
    for _ in range(starts - 1):
        z = rng.uniform(np.log(lo), np.log(hi))
        out.append(np.clip(np.exp(z), lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo)))
    return np.stack(out)


def place_starts(u: jax.Array) -> jax.Array:
    """The starts (``u``'s leading axis) split over this process's devices: as many devices as divide the
    number of starts. Each start's arithmetic is unchanged and needs nothing from the others."""
    devices = jax.local_devices()
    n = math.gcd(len(devices), u.shape[0])
    if n == 1:
        return u
    mesh = jax.sharding.Mesh(np.array(devices[:n]), ("starts",))
    return jax.device_put(u, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("starts")))


def _over_starts(make, in_axes):
    """``jax.vmap(make(n))`` over the n starts (the first argument's leading axis): ``make(n)`` is the
    function of one start that tells the trajectory's checkpointing n run at once."""

    def over_starts(u, *args):
        return jax.vmap(make(u.shape[0]), in_axes=in_axes)(u, *args)

    return over_starts


class _OptimiserStep:
    """The compiled, start-batched optimiser step: (u, state, value, grad, done) -> same, next iterate."""

    def __init__(self, problem: Problem, opt, name: str):
        def value_and_grad(members):
            return jax.value_and_grad(functools.partial(problem.loss, members=members))

        self._value_and_grad = jax.jit(_over_starts(value_and_grad, in_axes=(0, None, None)))
        # strong dtypes from the start: optax's L-BFGS state holds weakly typed scalars that its update
        # returns strongly typed, which made the step compile a second time in the second iteration
        self.init = jax.jit(lambda u: jax.tree.map(lambda x: jnp.asarray(x, x.dtype), jax.vmap(opt.init)(u)))

        def one(u, state, value, grad, done, data, sigma, members):
            vg = value_and_grad(members)

            def loss(v):
                return problem.loss(v, data, sigma, members)

            if name == "lbfgs":
                updates, new_state = opt.update(grad, state, u, value=value, grad=grad, value_fn=loss)
                new_u = optax.apply_updates(u, updates)
                new_value, new_grad = _tree_get(new_state, "value"), _tree_get(new_state, "grad")
            else:
                updates, new_state = opt.update(grad, state, u)
                new_u = optax.apply_updates(u, updates)
                new_value, new_grad = vg(new_u, data, sigma)

            def keep(old, new):
                return jnp.where(done, old, new)

            return (
                keep(u, new_u),
                jax.tree.map(keep, state, new_state),
                keep(value, new_value),
                keep(grad, new_grad),
            )

        def step_of(members):
            return functools.partial(one, members=members)

        self._step = jax.jit(_over_starts(step_of, in_axes=(0, 0, 0, 0, 0, None, None)))
        self.problem = problem

    def value_and_grad(self, u, problem: Problem):
        return self._value_and_grad(u, problem.data, problem.sigma)

    def step(self, u, state, value, grad, done, problem: Problem):
        return self._step(u, state, value, grad, done, problem.data, problem.sigma)


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """How :func:`fit` optimises (the ``[fit]`` table; see :func:`fit` for each)."""

    optimizer: str = "lbfgs"
    max_iterations: int = 100
    tolerance: float = 1e-9
    learning_rate: float = 0.05
    learning_rate_half_life: float = 100.0
    starts: int = 1
    spread: float = 3.0
    seed: int = 0

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise FitError(f"optimizer '{self.optimizer}' is not one of {list(OPTIMIZERS)}")
        if self.max_iterations < 0:
            raise FitError(f"max_iterations = {self.max_iterations} must be >= 0")
        if not self.spread > 1:
            raise FitError(f"spread = {self.spread} must be > 1")

    def compiled_step(self, problem: Problem) -> _OptimiserStep:
        """The optimiser step for ``problem`` (compiled once per problem and optimiser settings)."""
        key = ("optimiser step", self.optimizer, float(self.learning_rate), float(self.learning_rate_half_life))
        opt = make_optimizer(self.optimizer, self.learning_rate, self.learning_rate_half_life)
        return problem.compiled(key, lambda: _OptimiserStep(problem, opt, self.optimizer))


@dataclasses.dataclass
class Progress:
    """Where a fit stands: every start's iterate, optimiser state, loss and gradient, which starts are
    done, and the histories. What the report saves and ``resume`` restores."""

    theta_init: np.ndarray
    u: jax.Array
    state: Any
    value: jax.Array
    grad: jax.Array
    done: np.ndarray
    stall: np.ndarray
    history: dict[str, list]
    elapsed0: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, problem: Problem, step: _OptimiserStep, theta_init: np.ndarray, started: float | None = None) -> Progress:
        """The starts at ``theta_init`` (starts x parameters); ``started``: ``time.perf_counter()`` when the fit began."""
        if theta_init.ndim != 2 or theta_init.shape[1] != problem.n:
            raise FitError(f"initial must have shape (starts, {problem.n}), got {theta_init.shape}")
        u = place_starts(jnp.asarray(problem.transform.u(theta_init), problem.scenario.dtype))
        value, grad = step.value_and_grad(u, problem)
        history: dict[str, list] = {"loss_history": [], "grad_norm_history": [], "theta_history": [], "time_history": []}
        n = len(theta_init)
        progress = cls(theta_init, u, step.init(u), value, grad, np.zeros(n, bool), np.zeros(n, int), history)
        progress.started = time.perf_counter() if started is None else started
        progress.record(problem)
        return progress

    @classmethod
    def resume(cls, problem: Problem, step: _OptimiserStep, report, optimizer: str, started: float | None = None) -> Progress:
        """The progress saved in ``report`` (from :func:`write_report`), for the same parameters and optimiser."""
        saved = read_report(report)
        if tuple(saved["names"]) != problem.names:
            raise FitError(f"cannot resume '{report}': it fits {list(saved['names'])}, this fit {list(problem.names)}")
        if saved["optimizer"] != optimizer:
            raise FitError(f"cannot resume '{report}': it used fit.optimizer = '{saved['optimizer']}', not '{optimizer}'")
        u = place_starts(jnp.asarray(saved["u"], problem.scenario.dtype))
        leaves, treedef = jax.tree.flatten(step.init(u))
        state = jax.tree.unflatten(treedef, [jnp.asarray(v, dtype=t.dtype) for v, t in zip(saved["state"], leaves)])
        value, grad = step.value_and_grad(u, problem)
        history = {k: list(saved[k]) for k in ("loss_history", "grad_norm_history", "theta_history", "time_history")}
        done, stall = np.asarray(saved["done"], bool), np.asarray(saved["stall"], int)
        out = cls(saved["initial"], u, state, value, grad, done, stall, history, float(saved["wall_s"]))
        out.started = time.perf_counter() if started is None else started
        return out

    @property
    def iteration(self) -> int:
        return len(self.history["loss_history"]) - 1

    @property
    def wall_s(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.started

    def record(self, problem: Problem) -> None:
        self.history["loss_history"].append(np.asarray(self.value, float))
        self.history["grad_norm_history"].append(np.max(np.abs(np.asarray(self.grad, float)), axis=-1))
        self.history["theta_history"].append(np.asarray(problem.transform.theta(self.u), float))
        self.history["time_history"].append(self.wall_s)


def optimise(
    problem: Problem,
    step: _OptimiserStep,
    progress: Progress,
    settings: FitSettings,
    on_iteration: Callable[[int, np.ndarray], None] | None = None,
    checkpoint: Callable[[str], None] | None = None,
    bar=None,
) -> str:
    """Iterate every start until it converges or ``settings.max_iterations`` is reached: "converged"
    or "budget". A start is done when its loss changed by at most ``tolerance`` (relative) twice in a
    row or its gradient is that small. ``checkpoint(status)`` is called every 2 s and on Ctrl-C
    (then re-raised); ``bar`` is a tqdm bar to update."""
    tolerance, last_save = settings.tolerance, time.perf_counter()
    p = progress
    try:
        while p.iteration < settings.max_iterations and not p.done.all():
            prev = np.asarray(p.value, float)
            p.u, p.state, p.value, p.grad = step.step(p.u, p.state, p.value, p.grad, jnp.asarray(p.done), problem)
            v = np.asarray(p.value, float)
            if not np.all(np.isfinite(v) | p.done):
                # a failed line search leaves no finite value in the state: evaluate afresh
                p.value, p.grad = step.value_and_grad(p.u, problem)
                v = np.asarray(p.value, float)
            p.record(problem)
            scale = np.maximum(1.0, np.abs(v))
            p.stall = np.where(np.abs(prev - v) <= tolerance * scale, p.stall + 1, 0)
            gnorm = p.history["grad_norm_history"][-1]
            p.done = p.done | (p.stall >= 2) | (gnorm <= tolerance * scale)
            if on_iteration is not None:
                on_iteration(p.iteration, v)
            if bar is not None:
                best = int(np.nanargmin(np.where(np.isfinite(v), v, np.inf)))
                bar.set_postfix(loss=f"{v[best]:.6g}", grad=f"{gnorm[best]:.2g}", running=int((~p.done).sum()))
                bar.update(1)
            if checkpoint is not None and time.perf_counter() - last_save > 2.0:
                checkpoint("running")
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        if checkpoint is not None:
            checkpoint("interrupted")
        raise
    return "converged" if p.done.all() else "budget"


def fit_result(problem: Problem, progress: Progress, status: str, optimizer: str) -> tuple[FitResult, dict]:
    """The best start's result with its uncertainty (:func:`~inference.gauss_newton`), and that
    uncertainty's full output."""
    p = progress
    final_values = np.asarray(p.value, float)
    best = int(np.argmin(np.where(np.isfinite(final_values), final_values, np.inf)))
    theta_best = np.asarray(problem.transform.theta(p.u), float)[best]
    uq = gauss_newton(problem, theta_best)
    predict = problem.compiled("predict", lambda: jax.jit(problem.predict_params))
    predicted = np.asarray(predict(problem.params_of(jnp.asarray(p.u[best]))), float)
    names = problem.names
    result = FitResult(
        names=names,
        parameters=dict(zip(names, map(float, theta_best))),
        stderr=dict(zip(names, map(float, uq["stderr"]))),
        relative_stderr=dict(zip(names, map(float, uq["relative_stderr"]))),
        identifiable=dict(zip(names, map(bool, uq["identifiable"]))),
        correlation=uq["correlation"],
        loss=float(final_values[best]),
        loss_history=np.stack(p.history["loss_history"]),
        grad_norm_history=np.stack(p.history["grad_norm_history"]),
        theta_history=np.stack(p.history["theta_history"]),
        initial=np.asarray(p.theta_init, float),
        best_start=best,
        status=status,
        iterations=p.iteration,
        wall_s=p.wall_s,
        predicted=predicted,
        problem=problem,
        optimizer=optimizer,
        truth=truth_values(problem.observations, names),
    )
    return result, uq


def fit(
    config: Config | None = None,
    observations: Observations | None = None,
    parameters=None,
    *,
    problem: Problem | None = None,
    optimizer: str = "lbfgs",
    max_iterations: int = 100,
    tolerance: float = 1e-9,
    learning_rate: float = 0.05,
    learning_rate_half_life: float = 100.0,
    starts: int = 1,
    spread: float = 3.0,
    seed: int = 0,
    log_residuals: bool = False,
    initial: np.ndarray | None = None,
    progress: bool | None = None,
    report: str | os.PathLike[str] | None = None,
    resume: bool = False,
    settings_toml: str = "",
    on_iteration: Callable[[int, np.ndarray], None] | None = None,
) -> FitResult:
    """Fit ``parameters`` of the scenario ``config`` to ``observations``; the best start's result.

    Args:
        parameters: names, ``{name: (lower, upper)}``, ``{name: {"lower", "upper", "initial", "prior"}}``
            or :class:`~inference.FitParameter` objects (see :func:`inference.fittable_names`).
        problem: instead of ``config, observations, parameters``, a :class:`~inference.Problem`; fits of
            one problem (or of its :meth:`~inference.Problem.with_observations` copies) share compiled code.
        optimizer: ``"lbfgs"`` (optax.lbfgs with a zoom line search) or ``"adam"`` (step halving every
            ``learning_rate_half_life`` iterations).
        starts: initial guesses batched with vmap: the given initial values, then ``starts - 1``
            log-uniform draws within a factor ``spread`` of them (seeded by ``seed``); or ``initial``
            (starts x n parameter values).
        report: HDF5 report path, rewritten (atomically) as the fit goes, so an interrupted fit loses
            nothing and ``resume=True`` continues it (optimiser state included) to ``max_iterations``.
        progress: a progress bar (tqdm; a widget in a notebook); None (default): on in a notebook, an
            IPython shell or a terminal, off when stderr goes to a file or a pipe.

    The pieces, for a loop of your own: :class:`FitSettings`, :class:`Progress` (start or resume),
    :func:`optimise`, :func:`fit_result` and :func:`write_report`.
    """
    started = time.perf_counter()
    settings = FitSettings(optimizer, max_iterations, tolerance, learning_rate, learning_rate_half_life, starts, spread, seed)
    settings.check()
    if problem is None:
        if config is None or observations is None or parameters is None:
            raise FitError("fit needs config, observations and parameters, or problem=")
        problem = Problem(config, observations, parameters, log_residuals=log_residuals)
    step = settings.compiled_step(problem)
    if resume:
        state = Progress.resume(problem, step, report, optimizer, started)
    else:
        theta_init = np.asarray(initial, float) if initial is not None else _initial_guesses(problem, starts, spread, seed)
        state = Progress.start(problem, step, theta_init, started)

    def save(status: str, final=None) -> None:
        if report is not None:
            write_report(report, problem, state, optimizer=optimizer, status=status, settings_toml=settings_toml, final=final)

    bar = None
    if progress if progress is not None else interactive():
        bar = tqdm(total=max_iterations, initial=min(state.iteration, max_iterations), unit="it", desc="fit", dynamic_ncols=True)
    try:
        status = optimise(problem, step, state, settings, on_iteration, checkpoint=save, bar=bar)
    finally:
        if bar is not None:
            bar.close()
    result, uq = fit_result(problem, state, status, optimizer)
    save(status, final={"result": result, "uq": uq})
    return result


def truth_values(observations: Observations, names) -> dict[str, float]:
    """True parameter values when the observations were synthesised (``synovia synth``), else {}."""
    raw = observations.attrs.get("truth_parameters")
    if not raw:
        return {}
    values = json.loads(raw)
    known = set(default_params(np.float64)._fields)  # a file from an older model may name others
    params = default_params(np.float64, **{k: np.asarray(v) for k, v in values.items() if k in known})
    return {n: float(get_value(params, n)) for n in names}


# ----------------------------------------------------------------------------------------------
# The report file
# ----------------------------------------------------------------------------------------------


def _strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def write_report(path, problem: Problem, progress: Progress, *, optimizer: str, status: str, settings_toml: str = "", final=None):
    """Write the fit report atomically (a temporary file renamed over the old one): ``progress`` (what
    ``resume`` restores) and, with ``final`` (``{"result", "uq"}``), the result and its uncertainty."""
    path = Path(path)
    history, wall_s = progress.history, progress.wall_s
    tmp = temporary_path(path, ".h5.tmp")  # an unpredictable name, made exclusively
    try:
        _write_report(tmp, problem, progress, history, wall_s, optimizer, status, settings_toml, final)
        if final is not None and path.is_file():
            _keep_profiles(path, tmp, final["result"].theta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _keep_profiles(old, new, theta) -> None:
    """Copy the profiles of report ``old`` into ``new`` that were made about the same fitted values."""
    try:
        with h5py.File(old, "r") as src, h5py.File(new, "a") as dst:
            for name, g in src.get("profiles", {}).items():
                if np.array_equal(np.asarray(g.attrs.get("fit_parameters", []), float), np.asarray(theta, float)):
                    src.copy(g, dst.require_group("profiles"), name=name)
    except OSError:  # an unreadable old report has nothing to keep
        pass


def _write_report(tmp, problem, progress, history, wall_s, optimizer, status, settings_toml, final) -> None:
    obs = problem.observations
    with h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
        f.attrs.update(
            {
                "format": REPORT_FORMAT,
                "synovia_version": __version__,
                "status": status,
                "optimizer": optimizer,
                "iterations": len(history["loss_history"]) - 1,
                "wall_s": wall_s,
                "log_residuals": problem.log_residuals,
                "config_toml": problem.config.to_toml(),
                "config_dir": str(problem.config.base_dir),
                "fit_toml": settings_toml,
                "n_observations": obs.count,
                "nll_constant": problem.nll_constant(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        g = f.create_group("parameters")
        g.create_dataset("names", data=_strings(problem.names), dtype=h5py.string_dtype())
        g.create_dataset("transform", data=_strings(problem.transform.kind), dtype=h5py.string_dtype())
        g["lower"] = problem.transform.lower
        g["upper"] = problem.transform.upper
        g["initial"] = np.asarray(progress.theta_init, float)
        truth = truth_values(obs, problem.names)
        g["truth"] = np.array([truth.get(n, np.nan) for n in problem.names])
        h = f.create_group("history")
        h["loss"] = np.stack(history["loss_history"])
        h["grad_norm"] = np.stack(history["grad_norm_history"])
        h["theta"] = np.stack(history["theta_history"])
        h["time_s"] = np.asarray(history["time_history"], float)
        o = f.create_group("optimizer")
        o["u"] = np.asarray(progress.u)
        o["done"] = np.asarray(progress.done, bool)
        o["stall"] = np.asarray(progress.stall, int)
        s = o.create_group("state")
        for i, leaf in enumerate(jax.tree.leaves(progress.state)):
            s[f"{i:03d}"] = np.asarray(leaf)
        d = f.create_group("observations")
        d["time_h"] = np.asarray(obs.time_h, float)
        d["value"] = np.asarray(obs.value, float)
        d["sigma"] = np.asarray(obs.sigma, float)
        for c in ("species", "kind", "where"):
            d.create_dataset(c, data=_strings(getattr(obs, c)), dtype=h5py.string_dtype())
        if np.any(obs.censored):  # as in an observations file: 1 where the value is a detection limit
            d["censored"] = np.asarray(obs.censored, np.uint8)
        if obs.attrs.get("source"):
            d.attrs["source"] = str(obs.attrs["source"])
        if final is not None:
            result, uq = final["result"], final["uq"]
            f.attrs["best_start"] = result.best_start
            f.attrs["loss"] = result.loss
            g["fitted"] = result.theta
            g["stderr"] = uq["stderr"]
            g["relative_stderr"] = uq["relative_stderr"]
            g["identifiable"] = uq["identifiable"]
            g["correlation"] = uq["correlation"]
            g["fisher_eigenvalues"] = uq["fisher_eigenvalues"]
            n_scalar = len(obs)
            d["predicted"] = result.predicted[:n_scalar]
            for m, (species, _, _, _seen) in zip(obs.maps, problem.operator.maps):
                mg = f.create_group(f"maps/{m.name}")
                mg.attrs.update({"time_h": m.time_h, "species": species})
                mg.create_dataset("value", data=m.value, compression="gzip")
                mg.create_dataset("sigma", data=m.sigma, compression="gzip")
            offset = n_scalar
            for m, (_, _, _, seen) in zip(obs.maps, problem.operator.maps):
                pred = np.full(m.value.shape, np.nan)
                count = int(seen.sum())
                pred[seen] = result.predicted[offset : offset + count]
                offset += count
                f[f"maps/{m.name}"].create_dataset("predicted", data=pred, compression="gzip")
            # model curves at the fitted parameters, every frame, for each observed region
            op = problem.operator
            if len(op.plasma_rows):  # the plasma level, finely in time
                best = problem.params_of(jnp.asarray(np.asarray(progress.u)[result.best_start]))
                t = np.linspace(0.0, op.n_frames * problem.scenario.interval, 1000)
                p = f.create_group("model_plasma")
                p["time_h"] = t
                p["drug"] = np.asarray(plasma_levels(best, problem.scenario.options)(jnp.asarray(t)), float)
            if op.regions:
                frames = problem.compiled("frames", lambda: jax.jit(problem.frames))(
                    problem.params_of(jnp.asarray(np.asarray(progress.u)[result.best_start]))
                )
                means = np.asarray(op.region_means(frames), float)
                m = f.create_group("model")
                m["time_h"] = np.arange(op.n_frames + 1) * problem.scenario.interval
                m["region_means"] = means[[op.species.index(sp) for sp, _, _ in op.regions], :, np.arange(len(op.regions))]
                for i, c in enumerate(("species", "kind", "where")):
                    m.create_dataset(c, data=_strings(r[i] for r in op.regions), dtype=h5py.string_dtype())


def read_report(path) -> dict:
    """The fit report as a dict (arrays and attributes), e.g. to resume or plot."""
    path = Path(path)
    if not path.is_file():
        raise FitError(f"fit report '{path}' does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise FitError(f"cannot read fit report '{path}': {err}") from None
    with f:
        if f.attrs.get("format") != REPORT_FORMAT:
            raise FitError(f"'{path}' is not a synovia fit report (format attribute {f.attrs.get('format')!r})")
        out = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}

        def strings(ds):
            return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]

        g = f["parameters"]
        out["names"] = strings(g["names"])
        out["transform"] = strings(g["transform"])
        for k in (
            "lower",
            "upper",
            "initial",
            "truth",
            "fitted",
            "stderr",
            "relative_stderr",
            "identifiable",
            "correlation",
            "fisher_eigenvalues",
        ):
            if k in g:
                out[k] = g[k][()]
        h = f["history"]
        out["loss_history"] = h["loss"][()]
        out["grad_norm_history"] = h["grad_norm"][()]
        out["theta_history"] = h["theta"][()]
        out["time_history"] = h["time_s"][()]
        o = f["optimizer"]
        out["u"] = o["u"][()]
        out["done"] = o["done"][()]
        out["stall"] = o["stall"][()]
        out["state"] = [o["state"][k][()] for k in sorted(o["state"])]
        d = f["observations"]
        out["observations"] = {k: (strings(d[k]) if k in ("species", "kind", "where") else d[k][()]) for k in d}
        out["maps"] = {name: {**{k: mg[k][()] for k in mg}, **dict(mg.attrs)} for name, mg in f.get("maps", {}).items()}
        if "model" in f:
            m = f["model"]
            out["model"] = {k: (strings(m[k]) if k in ("species", "kind", "where") else m[k][()]) for k in m}
        if "model_plasma" in f:
            out["model_plasma"] = {k: f["model_plasma"][k][()] for k in f["model_plasma"]}
        from ._profile import read_profiles  # (it imports this module)

        out["profiles"] = read_profiles(f)
    return out
