"""PEtab tables as synovia observations and fit parameters (the optional ``petab`` package reads them).

PEtab (https://petab.readthedocs.io, format v1) is the field's standard for parameter estimation
problems. synovia reads three of its tables with the maintained ``petab`` library, which also lints them:

- the **measurement table** (``observableId``, ``simulationConditionId``, ``time``, ``measurement``,
  ``noiseParameters``): one row per measured value. synovia fits one scenario, so every row names the
  same ``simulationConditionId``; pre-equilibration, observable parameters and estimated noise are not
  supported (each is refused with the file, row and value);
- the **observable table** (optional): ``observableFormula`` names what synovia predicts (below),
  ``noiseFormula`` is sigma (a number) or ``noiseParameter1_<observableId>`` (the row's
  ``noiseParameters``), ``observableTransformation`` ``lin`` (default), ``log`` or ``log10`` (all
  observables alike: synovia then compares log-concentrations, ``fit.log_residuals``), and
  ``noiseDistribution`` ``normal``;
- the **parameter table** (optional): one row per model parameter with ``lowerBound``/``upperBound`` (linear
  scale), ``nominalValue`` (the initial value if estimated, the value if fixed), ``estimate`` (0: fixed
  at ``nominalValue`` in the scenario) and an optional ``objectivePriorType``: ``logNormal`` (mu; sigma of
  ln theta) or ``parameterScaleNormal`` on a ``log``/``log10`` scale (synovia's priors are log-normal),
  or a ``uniform``/``parameterScaleUniform`` prior over the bounds (no prior term). ``parameterScale`` may
  be ``lin``, ``log`` or ``log10``: synovia optimises every parameter in its own logarithmic
  unconstrained space (inference._problem). A ``diffusivity_<species>.<tissue>`` is written with ``_``
  for ``.`` (PEtab ids are identifiers): ``diffusivity_tnf_synovium``.

What an observable predicts is one synovia summary, named by a symbol (the ``observableFormula``; without
an observable table, the ``observableId``): ``fluid_<species>`` (synovial-fluid mean), ``plasma_drug``
(plasma drug level) or ``<tissue>_<species>`` (tissue mean, e.g. ``synovium_il1``). Points and boxes
have coordinates, which a symbol cannot hold: the fit config's ``[observations.petab.observable_kinds]``
gives those (``observableId = {species, kind, where}``, as the CSV's columns).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fields import SPECIES, TISSUE_NAMES

from ._observations import KINDS, ObservationError, Observations, make_observations
from ._problem import FitError, FitParameter, fittable_names

TRANSFORMATIONS = ("lin", "log", "log10")
#: objectivePriorType values synovia maps onto its priors (log-normal, or none within the bounds)
PRIORS = ("logNormal", "parameterScaleNormal", "uniform", "parameterScaleUniform")
OBSERVABLE_KIND_KEYS = ("species", "kind", "where")


@dataclasses.dataclass(frozen=True)
class PetabTables:
    """What PEtab tables say, in synovia's terms.

    ``log_residuals``: True when the observable table log-transforms every observable, False when it
    transforms none, None without an observable table (the fit's own setting holds). ``parameters``: the
    estimated parameters; ``fixed``: the others, ``{name: nominalValue}``, to set in the scenario.
    """

    observations: Observations
    log_residuals: bool | None = None
    parameters: tuple[FitParameter, ...] = ()
    fixed: dict[str, float] = dataclasses.field(default_factory=dict)


def _petab(what: str):
    try:
        import petab.v1 as petab
        import petab.v1.lint as lint
    except ImportError:
        raise ObservationError(
            f"{what} needs the PEtab library: pip install 'synovia[petab]' (or pip install petab); "
            "or give the observations as a synovia CSV"
        ) from None
    return petab, lint


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _read(reader, path: Path, what: str, error=ObservationError):
    if not path.is_file():
        raise error(f"{what} '{path}' does not exist")
    try:
        return reader(path)
    except (OSError, ValueError, KeyError, AssertionError, UnicodeDecodeError) as err:
        raise error(f"{what} '{path}' is not a readable PEtab table (tab-separated, with a header): {_one_line(err)}") from None


def summary_of(symbol: str) -> tuple[str, str, str] | None:
    """(species, kind, where) of a summary symbol (``fluid_<species>``, ``plasma_drug``, ``<tissue>_<species>``), else None."""
    head, _, species = symbol.rpartition("_")
    if species not in SPECIES:
        return None
    if head == "fluid":
        return species, "fluid", ""
    if head == "plasma" and species == "drug":
        return species, "plasma", ""
    if head in TISSUE_NAMES[1:]:
        return species, "tissue", head
    return None


def summary_symbol(species: str, kind: str, where: str) -> str | None:
    """The inverse of :func:`summary_of` (None for points and boxes)."""
    if kind in ("fluid", "plasma"):
        return f"{kind}_{species}"
    if kind == "tissue":
        return f"{where}_{species}"
    return None


def _observable_kinds(raw: Mapping | None) -> dict[str, tuple[str, str, str]]:
    out = {}
    for obs_id, spec in (raw or {}).items():
        where = f"observations.petab.observable_kinds.{obs_id}"
        if not isinstance(spec, Mapping) or set(spec) - set(OBSERVABLE_KIND_KEYS) or not {"species", "kind"} <= set(spec):
            raise ObservationError(
                f"config key '{where}' = {spec!r}: must be a table {{species = ..., kind = ..., where = ...}} (where optional)"
            )
        if spec["kind"] not in KINDS:
            raise ObservationError(f"config key '{where}.kind' = {spec['kind']!r}: must be one of {list(KINDS)}")
        if spec["species"] not in SPECIES:
            raise ObservationError(f"config key '{where}.species' = {spec['species']!r}: must be one of {list(SPECIES)}")
        out[str(obs_id)] = (str(spec["species"]), str(spec["kind"]), str(spec.get("where", "")))
    return out


def _noise_number(value, what: str) -> float:
    try:
        sigma = float(value)
    except (TypeError, ValueError):
        raise ObservationError(
            f"{what} = {value!r}: synovia needs sigma as a number (estimated noise parameters are not supported)"
        ) from None
    if not (math.isfinite(sigma) and sigma > 0):
        raise ObservationError(f"{what} = {value!r}: sigma must be a positive number (the standard deviation)")
    return sigma


def read_petab_observations(
    measurements: str | os.PathLike[str],
    observables: str | os.PathLike[str] | None = None,
    observable_kinds: Mapping | None = None,
) -> tuple[Observations, bool | None]:
    """Observations from a PEtab measurement table (and observable table); also whether they are on the
    log scale (None without an observable table). ``observable_kinds``: ``{observableId: {species, kind,
    where}}`` for observables no summary symbol names (points, boxes). See the module doc."""
    petab, lint = _petab("a PEtab measurement table")
    m_path = Path(measurements)
    m_df = _read(petab.get_measurement_df, m_path, "PEtab measurement table")
    o_df, o_path = None, None
    if observables is not None:
        o_path = Path(observables)
        o_df = _read(petab.get_observable_df, o_path, "PEtab observable table")
        try:
            lint.check_observable_df(o_df)
        except (AssertionError, ValueError) as err:
            raise ObservationError(f"PEtab observable table '{o_path}': {_one_line(err)}") from None
    try:
        lint.check_measurement_df(m_df, o_df)
    except (AssertionError, ValueError, KeyError) as err:
        raise ObservationError(f"PEtab measurement table '{m_path}': {_one_line(err)}") from None
    kinds = _observable_kinds(observable_kinds)

    # each observable: (species, kind, where), transformation, sigma formula (a number or None: per row)
    observable: dict[str, tuple[tuple[str, str, str], str, float | None]] = {}
    ids = o_df.index if o_df is not None else dict.fromkeys(m_df[petab.OBSERVABLE_ID])
    if unused := sorted(set(kinds) - {str(i) for i in ids}):
        raise ObservationError(
            f"observations.petab.observable_kinds names {unused}, which no observableId of the PEtab tables is "
            f"(they have {sorted(str(i) for i in ids)})"
        )
    for k, obs_id in enumerate(ids):
        obs_id = str(obs_id)
        row = o_df.loc[obs_id] if o_df is not None else {}
        what = f"PEtab observable table '{o_path}', row {k + 2} ({obs_id})" if o_df is not None else f"'{m_path}'"
        symbol = str(row[petab.OBSERVABLE_FORMULA]).strip() if o_df is not None else obs_id
        found = kinds.get(obs_id) or summary_of(symbol)
        if found is None:
            source = f"observableFormula = {symbol!r}" if o_df is not None else f"observableId {obs_id!r} (no observable table)"
            raise ObservationError(
                f"{what}: {source} names no synovia summary; use fluid_<species>, plasma_drug or <tissue>_<species> "
                f"(species {list(SPECIES)}, tissues {list(TISSUE_NAMES[1:])}), or give points and boxes in "
                f"[observations.petab.observable_kinds.{obs_id}]"
            )
        target = found
        transformation, noise = "lin", None
        if o_df is not None:
            value = row.get(petab.OBSERVABLE_TRANSFORMATION)
            transformation = "lin" if _blank(value) else str(value)
            if transformation not in TRANSFORMATIONS:
                raise ObservationError(f"{what}: observableTransformation = {value!r} must be one of {list(TRANSFORMATIONS)}")
            value = row.get(petab.NOISE_DISTRIBUTION)
            if not _blank(value) and str(value) != "normal":
                raise ObservationError(
                    f"{what}: noiseDistribution = {value!r}: synovia's loss is Gaussian; use normal "
                    "(with observableTransformation log for log-normal noise)"
                )
            formula = str(row[petab.NOISE_FORMULA]).strip()
            if formula != f"noiseParameter1_{obs_id}":
                noise = _noise_number(
                    formula, f"{what}: noiseFormula (a number, or noiseParameter1_{obs_id} for the measurement's noiseParameters)"
                )
        observable[obs_id] = (target, transformation, noise)

    scales = {t for _, t, _ in observable.values()}
    if len(scales) > 1:
        raise ObservationError(
            f"PEtab observable table '{o_path}': observableTransformation mixes {sorted(scales)}; synovia compares every "
            "value on one scale (fit.log_residuals): make them all lin, or all log/log10"
        )
    conditions = m_df[petab.SIMULATION_CONDITION_ID].astype(str)
    if conditions.nunique() > 1:
        first = conditions.iloc[0]
        other = int(np.flatnonzero(conditions.to_numpy() != first)[0])
        raise ObservationError(
            f"PEtab measurement table '{m_path}', row {other + 2}: simulationConditionId = {conditions.iloc[other]!r}, "
            f"row 2 has {first!r}: synovia fits one scenario (the fit config's); split the table, one fit per condition"
        )
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(m_df.to_dict("records")):
        what = f"PEtab measurement table '{m_path}', row {i + 2}"
        for column, why in (
            (petab.PREEQUILIBRATION_CONDITION_ID, 'pre-equilibration (the scenario\'s initial.start = "rest" starts at rest)'),
            (petab.OBSERVABLE_PARAMETERS, "observable parameters"),
        ):
            if not _blank(r.get(column)):
                raise ObservationError(f"{what}: {column} = {r[column]!r}: synovia does not support {why}; leave it empty")
        obs_id = str(r[petab.OBSERVABLE_ID])
        (species, kind, where), transformation, noise = observable[obs_id]
        t = float(r[petab.TIME])
        if not (math.isfinite(t) and t >= 0):
            raise ObservationError(
                f"{what}: time = {r[petab.TIME]!r} must be a finite time >= 0 in hours (a steady state, inf, is not supported: "
                "give a late time)"
            )
        value = float(r[petab.MEASUREMENT])
        given = r.get(petab.NOISE_PARAMETERS)
        if noise is None:
            if _blank(given):
                raise ObservationError(f"{what}: noiseParameters is empty; give sigma, the value's standard deviation")
            sigma = _noise_number(given, f"{what}: noiseParameters")
        else:
            sigma = noise
        rows.append({"time_h": t, "species": species, "kind": kind, "where": where, "value": value, "sigma": sigma})
    if not rows:
        raise ObservationError(f"PEtab measurement table '{m_path}' has no rows: nothing to fit")
    log = scales.pop() if scales else "lin"
    if log != "lin":  # PEtab: ln y ~ N(ln d, s) (log10: s in decades); synovia: residual (ln(y+e) - ln(d+e)) (d+e)/sigma
        values = np.array([r["value"] for r in rows])
        e = max(1e-6 * float(np.max(np.abs(values))), 1e-12)  # inference._problem's log floor
        factor = math.log(10.0) if log == "log10" else 1.0
        for r in rows:
            r["sigma"] = r["sigma"] * factor * (r["value"] + e)
    attrs = {"source": "PEtab", "petab_measurements": str(m_path), "petab_transformation": log}
    obs = make_observations(rows, attrs=attrs)
    return obs, (None if o_df is None else log != "lin")


def _petab_name(parameter_id: str) -> str | None:
    names = {n.replace(".", "_"): n for n in fittable_names()}
    return parameter_id if parameter_id in fittable_names() else names.get(parameter_id)


def read_petab_parameters(path: str | os.PathLike[str]) -> tuple[tuple[FitParameter, ...], dict[str, float]]:
    """The estimated parameters of a PEtab parameter table and the fixed ones (``{name: nominalValue}``)."""
    petab, lint = _petab("a PEtab parameter table")
    path = Path(path)
    df = _read(petab.get_parameter_df, path, "PEtab parameter table", FitError)
    try:
        lint.check_parameter_df(df)
    except (AssertionError, ValueError, KeyError) as err:
        raise FitError(f"PEtab parameter table '{path}': {_one_line(err)}") from None
    free, fixed = [], {}
    for k, (pid, r) in enumerate(df.iterrows()):
        what = f"PEtab parameter table '{path}', row {k + 2} ({pid})"
        name = _petab_name(str(pid))
        if name is None:
            from solver.setup import did_you_mean

            hint = did_you_mean(str(pid), [n.replace(".", "_") for n in fittable_names()], otherwise="")
            raise FitError(
                f"{what}: parameterId {pid!r} is no synovia parameter{hint}; see inference.fittable_names() "
                "(diffusivity_<species>.<tissue> written diffusivity_<species>_<tissue>)"
            )
        nominal = r.get(petab.NOMINAL_VALUE)
        nominal = None if _blank(nominal) else float(nominal)
        if int(r[petab.ESTIMATE]) == 0:
            if nominal is None:  # petab's lint asks for it
                raise FitError(f"{what}: estimate = 0 needs a nominalValue, the value to fix it at")
            fixed[name] = nominal
            continue
        lower, upper = float(r[petab.LOWER_BOUND]), float(r[petab.UPPER_BOUND])
        prior = _prior(r, str(r[petab.PARAMETER_SCALE]), lower, upper, what, petab)
        free.append(FitParameter(name, lower, upper, nominal, prior))
    return tuple(free), fixed


def _prior(r, scale: str, lower: float, upper: float, what: str, petab):
    kind = r.get(petab.OBJECTIVE_PRIOR_TYPE)
    if _blank(kind):
        return None
    kind = str(kind)
    given = r.get(petab.OBJECTIVE_PRIOR_PARAMETERS)
    if kind not in PRIORS or (kind == "parameterScaleNormal" and scale == "lin"):
        raise FitError(
            f"{what}: objectivePriorType = {kind!r} (parameterScale {scale}): synovia's priors are log-normal; use logNormal "
            "(mu;sigma of ln theta), parameterScaleNormal with parameterScale log or log10, or a uniform prior over the bounds"
        )
    try:
        a, b = (float(v) for v in str(given).split(";"))
    except ValueError:
        raise FitError(f"{what}: objectivePriorParameters = {given!r} must be two numbers 'a;b'") from None
    unscale = {"lin": lambda v: v, "log": math.exp, "log10": lambda v: 10.0**v}[scale]
    if kind in ("uniform", "parameterScaleUniform"):
        lo, hi = (a, b) if kind == "uniform" else (unscale(a), unscale(b))
        if not (math.isclose(lo, lower, rel_tol=1e-9, abs_tol=1e-300) and math.isclose(hi, upper, rel_tol=1e-9)):
            raise FitError(
                f"{what}: a {kind} prior on [{lo:g}, {hi:g}] differs from the bounds [{lower:g}, {upper:g}]: synovia's "
                "uniform prior is the bounds; make the bounds the prior's range"
            )
        return None
    if not b > 0:
        raise FitError(f"{what}: objectivePriorParameters = {given!r}: the standard deviation must be > 0")
    if kind == "logNormal" or scale == "log":
        return (math.exp(a), math.exp(b))
    return (10.0**a, 10.0**b)  # parameterScaleNormal on log10


def read_petab(
    measurements: str | os.PathLike[str],
    observables: str | os.PathLike[str] | None = None,
    parameters: str | os.PathLike[str] | None = None,
    observable_kinds: Mapping | None = None,
) -> PetabTables:
    """Read a PEtab measurement table, and optionally its observable and parameter tables (module doc)."""
    obs, log = read_petab_observations(measurements, observables, observable_kinds)
    free, fixed = read_petab_parameters(parameters) if parameters is not None else ((), {})
    return PetabTables(obs, log, free, fixed)


def write_petab(
    obs: Observations,
    measurements: str | os.PathLike[str],
    observables: str | os.PathLike[str],
    parameters: Sequence[FitParameter] = (),
    parameters_path: str | os.PathLike[str] | None = None,
    condition: str = "scenario",
) -> dict[str, dict[str, str]]:
    """Write scalar observations as PEtab measurement and observable tables (lin, normal, sigma in
    ``noiseParameters``) and, with ``parameters_path``, the parameters as a parameter table (log scale, a
    log-normal prior as logNormal). Returns the ``observable_kinds`` that points and boxes need in a fit
    config (their observableIds are ``<kind><n>_<species>``)."""
    petab, _ = _petab("writing PEtab tables")
    import pandas as pd

    if obs.maps:
        raise ObservationError("PEtab tables hold scalar observations only; write maps to an .h5 file")
    if obs.censored.any():
        raise ObservationError(
            "PEtab measurement tables have no column for values below a detection limit; write censored "
            "observations to a .csv or .h5 file (column 'censored')"
        )
    ids: dict[tuple[str, str, str], str] = {}
    kinds: dict[str, dict[str, str]] = {}
    for species, kind, where in zip(obs.species, obs.kind, obs.where):
        key = (species, kind, where.strip())
        if key in ids:
            continue
        symbol = summary_symbol(*key)
        if symbol is None:
            symbol = f"{kind}{sum(k == kind for _, k, _ in ids) + 1}_{species}"
            kinds[symbol] = {"species": species, "kind": kind, "where": key[2]}
        ids[key] = symbol
    m_df = pd.DataFrame(
        {
            petab.OBSERVABLE_ID: [ids[(s, k, w.strip())] for s, k, w in zip(obs.species, obs.kind, obs.where)],
            petab.SIMULATION_CONDITION_ID: condition,
            petab.TIME: np.asarray(obs.time_h, float),
            petab.MEASUREMENT: np.asarray(obs.value, float),
            petab.NOISE_PARAMETERS: np.asarray(obs.sigma, float),
        }
    )
    symbols = list(ids.values())
    o_df = pd.DataFrame(
        {
            petab.OBSERVABLE_ID: symbols,
            petab.OBSERVABLE_FORMULA: symbols,
            petab.NOISE_FORMULA: [f"noiseParameter1_{s}" for s in symbols],
            petab.OBSERVABLE_TRANSFORMATION: "lin",
            petab.NOISE_DISTRIBUTION: "normal",
        }
    ).set_index(petab.OBSERVABLE_ID)
    petab.write_measurement_df(m_df, measurements)
    petab.write_observable_df(o_df, observables)
    if parameters_path is not None:
        rows = []
        for p in parameters:
            if p.prior is not None and not (isinstance(p.prior, tuple) and len(p.prior) == 2):
                raise FitError(f"parameter '{p.name}': prior {p.prior!r}: give (median, factor) to write it as logNormal")
            rows.append(
                {
                    petab.PARAMETER_ID: p.name.replace(".", "_"),
                    petab.PARAMETER_SCALE: "log",
                    petab.LOWER_BOUND: p.lower,
                    petab.UPPER_BOUND: p.upper,
                    petab.NOMINAL_VALUE: p.initial,
                    petab.ESTIMATE: 1,
                    petab.OBJECTIVE_PRIOR_TYPE: "logNormal" if p.prior else "",
                    petab.OBJECTIVE_PRIOR_PARAMETERS: f"{math.log(p.prior[0])!r};{math.log(p.prior[1])!r}" if p.prior else "",
                }
            )
        petab.write_parameter_df(pd.DataFrame(rows).set_index(petab.PARAMETER_ID), parameters_path)
    return kinds


__all__ = ["PetabTables", "read_petab", "read_petab_observations", "read_petab_parameters", "write_petab"]
