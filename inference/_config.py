"""The fit config (TOML) of ``synovia fit``: scenario, observations, fit settings, free parameters.

scenario = "knee_small.toml"        # a run config (path relative to this file) or an inline table
observations = "data/knee_small.h5" # .h5 or .csv (inference._observations)

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
    values = {}
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
    if not isinstance(obs_path, str) or not obs_path:
        raise ConfigError("config key 'observations' is missing: give the path of an .h5 or .csv observation file")
    path = Path(obs_path) if Path(obs_path).is_absolute() else base_dir / obs_path
    observations = load_observations(path)
    fit = parse_section(FitSection, raw.get("fit", {}), "fit.")
    params = raw.get("parameters", {})
    if not isinstance(params, dict) or not params:
        raise ConfigError("config key 'parameters' is missing: add a [parameters.<name>] table per parameter to fit")
    parameters = tuple(_parameter(name, v) for name, v in params.items())
    return FitConfig(config, observations, str(path), parameters, fit, text)


def load_fit_config(path: str | Path, overrides=()) -> FitConfig:
    """Read and validate a fit config; ConfigError/ObservationError/FitError name what is wrong."""
    path = Path(path)
    raw = apply_overrides(read_toml(path, "fit config"), list(overrides))
    import tomli_w

    return fit_config_from_dict(raw, path.parent, tomli_w.dumps(raw))


__all__ = ["FitConfig", "FitSection", "FitError", "load_fit_config", "fit_config_from_dict"]
