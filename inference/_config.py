"""The fit config (TOML) of ``synovia fit``: scenario, observations, fit settings, free parameters.

scenario = "knee_small.toml"        # a run config (path relative to this file) or an inline table
observations = "data/knee_small.h5" # .h5 or .csv (inference._observations)
# or PEtab tables (inference._petab; needs the petab package):
# [observations.petab]
# measurements = "data/m.tsv"       # observableId, simulationConditionId, time, measurement, noiseParameters
# observables = "data/o.tsv"        # optional: observableFormula fluid_tnf, synovium_il1, plasma_drug, ...
# parameters = "data/p.tsv"         # optional: instead of (or besides) the [parameters.<name>] tables
# observable_kinds.box1_tnf = {species = "tnf", kind = "box", where = "0:2 3:5"}  # points and boxes

[fit]                               # every key optional; defaults below
optimizer = "lbfgs"

[parameters.recruitment_rate]       # one table per free parameter
lower = 1.0
upper = 1e4
initial = 100.0                     # optional: default the scenario's value
prior = "literature"                # optional: or [median, factor] of a log-normal prior
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from solver.setup import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    did_you_mean,
    load_config,
    option,
    parse_section,
    read_toml,
    unknown_key,
)

from ._fit import fitted_config
from ._observations import Observations, load_observations
from ._problem import FitError, FitParameter, fittable_names


@dataclasses.dataclass(frozen=True)
class FitSection:
    """``[fit]``: optimiser and stopping."""

    optimizer: str = option(
        "lbfgs", "optax optimiser: L-BFGS with a zoom line search, or Adam with a halving step", choices=("lbfgs", "adam")
    )
    max_iterations: int = option(100, "iteration budget (all starts advance together)", lower=0)
    tolerance: float = option(1e-9, "a start stops when its loss changes by less than this x max(1, loss) twice", lower=0)
    learning_rate: float = option(0.05, "Adam's initial step in the unconstrained space", lower=0, strict_lower=True)
    learning_rate_half_life: float = option(100.0, "Adam's step halves every this many iterations", lower=0, strict_lower=True)
    starts: int = option(1, "initial guesses batched with jax.vmap: the given values, then log-uniform draws", lower=1)
    spread: float = option(3.0, "multi-start draws lie within initial/spread .. initial*spread", lower=1, strict_lower=True)
    seed: int = option(0, "seed of the multi-start draws", lower=0)
    log_residuals: bool = option(False, "compare log-concentrations (relative errors) instead of values")


TOP_KEYS = ("scenario", "observations", "fit", "parameters")
PARAMETER_KEYS = ("lower", "upper", "initial", "prior")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    scenario: Config
    observations: Observations
    observations_path: str
    parameters: tuple[FitParameter, ...]
    fit: FitSection
    toml: str  # the fit config as given (after --set), stored in the report

    def fit_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self.fit)


def _parameter(name: str, raw) -> FitParameter:
    where = f"parameters.{name}"
    if name not in fittable_names():
        hint = did_you_mean(name, fittable_names(), otherwise="; see docs/fitting.md for what can be fitted")
        raise ConfigError(f"unknown parameter '{where}'{hint}")
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}' must be a table with keys {list(PARAMETER_KEYS)}")
    for key in raw:
        if key not in PARAMETER_KEYS:
            raise unknown_key(key, where + ".", PARAMETER_KEYS)
    values: dict[str, Any] = {}
    for key in ("lower", "upper", "initial"):
        if key in raw:
            v = raw[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ConfigError(f"config key '{where}.{key}' = {v!r}: must be a number")
            values[key] = float(v)
    if "prior" in raw:
        values["prior"] = tuple(raw["prior"]) if isinstance(raw["prior"], list) else raw["prior"]
    return FitParameter(name, **values)


def fit_config_from_dict(raw: dict, base_dir: Path, text: str = "") -> FitConfig:
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key(key, "", TOP_KEYS)
    scenario = raw.get("scenario")
    if isinstance(scenario, str):
        path = Path(scenario) if Path(scenario).is_absolute() else base_dir / scenario
        config = load_config(path)
    elif isinstance(scenario, dict):
        config = config_from_dict(scenario, base_dir)
    else:
        raise ConfigError("config key 'scenario' is missing: give a run config's path or an inline [scenario] table")
    obs_path = raw.get("observations")
    tables = None
    if isinstance(obs_path, dict):
        tables, path = _petab_tables(obs_path, base_dir)
        observations = tables.observations
        if tables.fixed:  # estimate = 0: the nominal values become the scenario's
            config = fitted_config(config, tables.fixed)
    elif not isinstance(obs_path, str) or not obs_path:
        raise ConfigError(
            "config key 'observations' is missing: give the path of an .h5 or .csv observation file, "
            "or an [observations.petab] table of PEtab tables"
        )
    else:
        path = Path(obs_path) if Path(obs_path).is_absolute() else base_dir / obs_path
        observations = load_observations(path)
    fit = parse_section(FitSection, raw.get("fit", {}), "fit.")
    if tables is not None and tables.log_residuals is not None and tables.log_residuals != fit.log_residuals:
        if "log_residuals" in raw.get("fit", {}):
            raise ConfigError(
                f"config key 'fit.log_residuals' = {str(fit.log_residuals).lower()} contradicts the PEtab observable table "
                f"(observableTransformation {'log' if tables.log_residuals else 'lin'}); drop the key: the table decides"
            )
        fit = dataclasses.replace(fit, log_residuals=tables.log_residuals)
    params = raw.get("parameters", {})
    petab_parameters = tables.parameters if tables is not None else ()
    if not isinstance(params, dict) or not (params or petab_parameters):
        raise ConfigError(
            "config key 'parameters' is missing: add a [parameters.<name>] table per parameter to fit "
            "(or observations.petab.parameters, a PEtab parameter table)"
        )
    parameters = petab_parameters + tuple(_parameter(name, v) for name, v in params.items())
    names = [p.name for p in parameters]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"parameter(s) {twice} are both in the PEtab parameter table and in [parameters]: keep one")
    return FitConfig(config, observations, str(path), parameters, fit, text)


PETAB_KEYS = ("measurements", "observables", "parameters", "observable_kinds")


def _petab_tables(raw: dict, base_dir: Path):
    """``[observations.petab]``: PEtab measurement (observable, parameter) tables (inference._petab)."""
    from ._petab import read_petab

    for key in raw:
        if key != "petab":
            raise unknown_key(key, "observations.", ("petab",))
    petab = raw.get("petab")
    if not isinstance(petab, dict):
        raise ConfigError(
            f"config key 'observations' must be a file's path or an [observations.petab] table with keys {list(PETAB_KEYS)}"
        )
    for key in petab:
        if key not in PETAB_KEYS:
            raise unknown_key(key, "observations.petab.", PETAB_KEYS)
    paths = {}
    for key in ("measurements", "observables", "parameters"):
        value = petab.get(key)
        if value is None and key != "measurements":
            continue
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key 'observations.petab.{key}' = {value!r}: give the path of a PEtab table (.tsv)")
        paths[key] = Path(value) if Path(value).is_absolute() else base_dir / value
    kinds = petab.get("observable_kinds", {})
    if not isinstance(kinds, dict):
        raise ConfigError(
            "config key 'observations.petab.observable_kinds' must be a table: observableId = {species, kind, where}"
        )
    tables = read_petab(paths["measurements"], paths.get("observables"), paths.get("parameters"), kinds)
    return tables, paths["measurements"]


def load_fit_config(path: str | Path, overrides=()) -> FitConfig:
    """Read and validate a fit config; ConfigError/ObservationError/FitError name what is wrong."""
    path = Path(path)
    raw = apply_overrides(read_toml(path, "fit config"), list(overrides))
    import tomli_w

    return fit_config_from_dict(raw, path.parent, tomli_w.dumps(raw))


__all__ = ["FitConfig", "FitSection", "FitError", "load_fit_config", "fit_config_from_dict"]
