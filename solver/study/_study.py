"""Parameter studies (``synovia sweep``): one scenario run at every combination of chosen values.

The sweep config (TOML)::

    scenario = "knee2d.toml"      # a run config (path relative to this file), an inline [scenario]
                                  # table, or left out (all defaults: the 2D knee)
    combine = "grid"              # "grid": every combination (default); "zip": the i-th values together;
                                  # "latin_hypercube" or "sobol": ``samples`` points over the ranges

    [vary]                        # config keys, spelled as for --set, and their values
    "parameters.recruitment_rate" = [50, 100, 200, 400]
    "injury.rate" = { from = 125, to = 1000, count = 4, spacing = "log" }   # or "linear"

The study folder::

    study.toml           the sweep as run: base scenario, varied keys, every point's values
    runs/point_000.h5    one ordinary run file per point (with its XDMF sidecar); `synovia plot`,
                         `info` and `run --resume` work on each
    summary.csv          one row per point: its values, status, and the outcome measures

Every point's config is validated before anything runs. Points are run in order, or in ``jobs``
worker processes; a point that is already complete is skipped and an interrupted one is resumed, so
running the same sweep again continues it. A point whose solution diverges is recorded
(``runs/point_NNN.diverged`` holds the message) and the others go on.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import itertools
import json
import math
import multiprocessing
import os
import signal
import subprocess
import tomllib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fields import FileBusy, FileLock, atomic_write_text, lock_holder, temporary_path

from ..io import RunFile, axis_names
from ..setup import (
    Config,
    ConfigError,
    Scenario,
    apply_overrides,
    build_scenario,
    check_number,
    config_from_dict,
    config_from_toml,
    enable_precision,
    frame_count,
    read_toml,
    set_key,
    unknown_key,
)
from ._run import Diverged, open_run, run

FORMAT = "synovia-study"
MANIFEST = "study.toml"
SUMMARY_CSV = "summary.csv"
STUDY_H5 = "study.h5"
#: The study's SLURM submissions (solver.study._slurm): forgotten with the runs they were for.
SLURM_JOBS = Path(".slurm") / "jobs.json"
RUNS = "runs"
TOP_KEYS = ("scenario", "set", "combine", "samples", "seed", "vary", "starts")
#: The column that names a point's start when the sweep has ``[starts]``.
START = "start"
#: Designs that sample ``samples`` points over ranges (scipy.stats.qmc) instead of combining listed values.
SAMPLED = ("latin_hypercube", "sobol")
COMBINE = ("grid", "zip", *SAMPLED)
RANGE_KEYS = ("from", "to", "count", "spacing")
#: Points beyond which a sweep is refused before any is made: a study of runs, not a grid of numbers.
MAX_POINTS = 100_000


@dataclasses.dataclass(frozen=True)
class Measure:
    """An outcome of one run, computed from its summary time series."""

    name: str
    summary: str  # the run file's summary series it reads
    kind: str  # "peak", "time_of_peak", "final" or "minimum"
    label: str
    unit: str


#: Outcome measures of every point (summary.csv columns, panels of the study figure).
MEASURES: tuple[Measure, ...] = (
    Measure("peak_fluid_tnf", "synovial_fluid_tnf", "peak", "Peak synovial-fluid TNF", "pg/mL"),
    Measure("peak_fluid_il1", "synovial_fluid_il1", "peak", "Peak synovial-fluid IL-1β", "pg/mL"),
    Measure("peak_fluid_leukocytes", "synovial_fluid_leukocytes", "peak", "Peak synovial-fluid white cells", "cells/µL"),
    Measure("time_of_peak_fluid_tnf", "synovial_fluid_tnf", "time_of_peak", "Time of the TNF peak", "h"),
    Measure("final_fluid_tnf", "synovial_fluid_tnf", "final", "Final synovial-fluid TNF", "pg/mL"),
    Measure("final_fluid_il1", "synovial_fluid_il1", "final", "Final synovial-fluid IL-1β", "pg/mL"),
    Measure("final_fluid_leukocytes", "synovial_fluid_leukocytes", "final", "Final synovial-fluid white cells", "cells/µL"),
    Measure("min_cartilage_integrity", "cartilage_integrity", "minimum", "Lowest cartilage integrity (mean)", "fraction"),
)

#: How still a point ended: the relative change of its fluid white cells over the last :data:`DRIFT_WINDOW_H`
#: (summary.csv's ``final_drift`` column). A point whose drift is below :data:`SETTLED` has reached a steady state.
DRIFT = Measure("final_drift", "synovial_fluid_leukocytes", "drift", "Drift of fluid white cells, last 48 h", "fraction")
DRIFT_WINDOW_H = 48.0
DRIFT_FLOOR = 1.0  # cells/uL
SETTLED = 0.01
#: Two starts of one point whose final fluid white cells differ by more than this factor are on different branches.
BRANCH_FACTOR = 2.0


def measure(m: Measure, time: np.ndarray, series: np.ndarray) -> float:
    """One outcome measure of a complete run (time in h, the summary series per frame)."""
    if m.kind == "peak":
        return float(np.max(series))
    if m.kind == "time_of_peak":
        return float(time[int(np.argmax(series))])
    if m.kind == "final":
        return float(series[-1])
    if m.kind == "minimum":
        return float(np.min(series))
    if m.kind == "drift":
        before = int(np.argmin(np.abs(time - (time[-1] - DRIFT_WINDOW_H))))
        if time[-1] - time[before] < 0.5 * DRIFT_WINDOW_H:
            return math.nan  # too short a run to tell
        # relative, but a count that decays to nothing is still once below DRIFT_FLOOR
        return float(abs(series[-1] - series[before]) / max(abs(series[-1]), DRIFT_FLOOR))
    raise ValueError(f"unknown measure kind {m.kind!r}")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated sweep: the base scenario and one config per point."""

    base: dict[str, Any]  # the base scenario as raw TOML data (after --set)
    base_dir: str  # folder the scenario's relative paths are taken from
    combine: str
    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # per point, in the order of ``keys``
    configs: tuple[Config, ...]
    starts: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # name -> config keys it sets
    design: dict[str, Any] = dataclasses.field(default_factory=dict)  # a sampled design's samples, seed, ranges

    def __len__(self) -> int:
        return len(self.values)

    def manifest(self) -> dict[str, Any]:
        """What ``study.toml`` holds; two sweeps are the same study when these agree (but for config_dir)."""
        return {
            "format": FORMAT,
            "combine": self.combine,
            "keys": list(self.keys),
            "config_dir": self.base_dir,
            "scenario": self.base,
            **({"starts": self.starts} if self.starts else {}),
            **({"design": self.design} if self.design else {}),
            "points": [
                {"index": i, "file": f"{RUNS}/{point_name(i)}.h5", "values": list(v), "t_end_h": c.run.t_end_h}
                for i, (v, c) in enumerate(zip(self.values, self.configs))
            ],
        }


def point_name(index: int) -> str:
    return f"point_{index:03d}"


def _values(key: str, raw) -> list[Any]:
    """The values of one varied key: a list, or a range table ``{from, to, count, spacing}``."""
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"sweep key 'vary.{key}' is an empty list: give at least one value")
        return list(raw)
    if _is_range(raw):
        for k in raw:
            if k not in RANGE_KEYS:
                raise unknown_key(k, f"vary.{key}.", RANGE_KEYS)
        for k in ("from", "to", "count"):
            if k not in raw:
                raise ConfigError(f"sweep key 'vary.{key}': the range table has no '{k}' (it needs from, to and count)")
        start = check_number(f"vary.{key}.from", raw["from"], what="sweep key")
        stop = check_number(f"vary.{key}.to", raw["to"], what="sweep key")
        count = raw.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"sweep key 'vary.{key}.count' = {count!r}: must be an integer >= 1")
        spacing = raw.get("spacing", "linear")
        if spacing not in ("linear", "log"):
            raise ConfigError(f"sweep key 'vary.{key}.spacing' = {spacing!r}: allowed: linear, log")
        if count > MAX_POINTS:
            raise ConfigError(
                f"sweep key 'vary.{key}.count' = {count}: at most {MAX_POINTS} points in a sweep (each is a run and a "
                "run file); split a larger study into several sweeps"
            )
        if count == 1 and start != stop:
            raise ConfigError(f"sweep key 'vary.{key}': count = 1 with from != to; give count >= 2, or a list of one value")
        if spacing == "log":
            if start <= 0 or stop <= 0:
                raise ConfigError(f"sweep key 'vary.{key}': a log range needs from and to > 0, got {start:g} and {stop:g}")
            grid = np.geomspace(start, stop, count)
        else:
            grid = np.linspace(start, stop, count)
        return [float(f"{v:.12g}") for v in grid]
    raise ConfigError(
        f"sweep key 'vary.{key}' = {raw!r}: give a list of values or a range table "
        '{from = A, to = B, count = N, spacing = "linear" or "log"}'
    )


def _is_range(raw) -> bool:
    return isinstance(raw, dict) and any(k in raw for k in RANGE_KEYS)


def sweep_from_dict(raw: dict[str, Any], base_dir: Path, overrides: Sequence[str] = ()) -> Sweep:
    """Validate a sweep config (its raw TOML data); ``overrides`` (``--set``) change the base scenario."""
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key(key, "", TOP_KEYS)
    scenario = raw.get("scenario", {})
    if isinstance(scenario, str):
        path = Path(scenario) if Path(scenario).is_absolute() else base_dir / scenario
        base, scenario_dir = read_toml(path, "sweep key 'scenario': the run config"), path.parent
    elif isinstance(scenario, dict):
        base, scenario_dir = copy.deepcopy(scenario), base_dir
    else:
        raise ConfigError(f"sweep key 'scenario' = {scenario!r}: give a run config's path or an inline [scenario] table")
    sets = raw.get("set", {})
    if not isinstance(sets, dict):
        raise ConfigError(f"sweep key 'set' = {sets!r}: must be a table of config keys (as for --set)")
    for key, value in _dotted(sets, "set.").items():
        set_key(base, key.split("."), value, f"sweep key 'set.{key}'")
    base = apply_overrides(base, list(overrides))
    config_from_dict(base, scenario_dir)  # the base itself must be valid

    combine = raw.get("combine", "grid")
    if combine not in COMBINE:
        raise ConfigError(f"sweep key 'combine' = {combine!r}: allowed: {', '.join(COMBINE)}")
    starts = _starts(raw.get("starts"))
    vary = raw.get("vary", {} if starts else None)
    if not isinstance(vary, dict) or not (vary or starts):
        raise ConfigError(
            "sweep key 'vary' is missing: add a [vary] table, e.g. \"parameters.chemotaxis\" = [0.01, 0.05, 0.1], "
            "or a [starts] table to find a scenario's steady states from several starts"
        )
    for key in ("samples", "seed"):
        if key in raw and combine not in SAMPLED:
            raise ConfigError(f'sweep key \'{key}\' is for a sampled design: set combine = "latin_hypercube" or "sobol"')
    design: dict[str, Any] = {}
    if combine in SAMPLED:
        columns, design = _sampled(combine, raw, _dotted(vary, "vary.", _is_range))
    else:
        columns = {key: _values(key, v) for key, v in _dotted(vary, "vary.", _is_range).items()}
    for key in columns:
        if len(key.split(".")) < 2:
            raise ConfigError(f"sweep key 'vary.{key}': name a section and a key, like \"parameters.chemotaxis\"")
    if START in columns:
        raise ConfigError(f"sweep key 'vary.{START}': '{START}' names the starts; give them in a [starts] table")
    keys = tuple(columns)
    if combine == "zip" or combine in SAMPLED:
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f'sweep: combine = "zip" needs as many values for every key, got {lengths}')
        values = tuple(zip(*columns.values()))
        if len(values) * max(1, len(starts)) > MAX_POINTS:
            raise ConfigError(
                f"sweep: {len(values)} points x {len(starts)} starts = {len(values) * len(starts)} runs, more than "
                f"{MAX_POINTS}; use fewer points or several sweeps"
            )
    else:
        total = math.prod(len(v) for v in columns.values()) * max(1, len(starts))
        if total > MAX_POINTS:
            sizes = " x ".join(f"{len(v)} ({k})" for k, v in columns.items()) + (f" x {len(starts)} starts" if starts else "")
            raise ConfigError(
                f"sweep: {sizes} = {total} points, more than {MAX_POINTS} (each is a run and a run file); "
                'use fewer values, combine = "zip", or several sweeps'
            )
        values = tuple(itertools.product(*columns.values()))
    if starts:  # every point from each start: the start is the last column
        keys += (START,)
        values = tuple((*v, name) for v in values for name in starts)

    configs = []
    for i, point in enumerate(values):
        raw_point = copy.deepcopy(base)
        where = ", ".join(f"{k} = {v!r}" for k, v in zip(keys, point))
        try:
            if starts:
                for key, value in starts[point[-1]].items():
                    set_key(raw_point, key.split("."), value, f"sweep key 'starts.{point[-1]}.{key}'")
            for key, value in zip(keys, point):
                if key == START:
                    continue
                set_key(raw_point, key.split("."), value, f"sweep key 'vary.{key}'")
            config = config_from_dict(raw_point, scenario_dir)
            frame_count(config.run)  # the cheap check build_scenario makes, here before anything runs
            configs.append(config)
        except ConfigError as err:
            raise ConfigError(f"sweep point {i} ({where}): {err}") from None
    return Sweep(base, str(Path(scenario_dir).resolve()), combine, keys, values, tuple(configs), starts, design)


def _sampled(combine: str, raw: dict[str, Any], vary: dict[str, Any]) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The columns of a sampled design: ``samples`` points of a seeded Latin hypercube or scrambled
    Sobol sequence (scipy.stats.qmc) over the unit cube, mapped onto each key's range {from, to,
    spacing} (log: uniform in the logarithm). Returns the columns and the design as recorded."""
    from scipy.stats import qmc

    samples = raw.get("samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_POINTS:
        raise ConfigError(
            f"sweep key 'samples' = {samples!r}: combine = \"{combine}\" needs samples, an integer from 1 to {MAX_POINTS}"
        )
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"sweep key 'seed' = {seed!r}: must be an integer >= 0 (the same seed gives the same points)")
    if not vary:
        raise ConfigError(f'sweep: combine = "{combine}" needs ranges to sample in [vary], e.g. {{ from = 0.01, to = 0.1 }}')
    ranges = {}
    for key, spec in vary.items():
        if not _is_range(spec):
            raise ConfigError(
                f"sweep key 'vary.{key}' = {spec!r}: combine = \"{combine}\" samples ranges; give "
                '{from = A, to = B} (spacing = "log" to sample the logarithm)'
            )
        for k in spec:
            if k not in ("from", "to", "spacing"):
                hint = "; a sampled design takes the top-level 'samples' instead" if k == "count" else ""
                raise ConfigError(f"sweep key 'vary.{key}.{k}': a sampled range has from, to and spacing{hint}")
        for k in ("from", "to"):
            if k not in spec:
                raise ConfigError(f"sweep key 'vary.{key}': the range table has no '{k}' (it needs from and to)")
        low = check_number(f"vary.{key}.from", spec["from"], what="sweep key")
        high = check_number(f"vary.{key}.to", spec["to"], what="sweep key")
        spacing = spec.get("spacing", "linear")
        if spacing not in ("linear", "log"):
            raise ConfigError(f"sweep key 'vary.{key}.spacing' = {spacing!r}: allowed: linear, log")
        if spacing == "log" and (low <= 0 or high <= 0):
            raise ConfigError(f"sweep key 'vary.{key}': a log range needs from and to > 0, got {low:g} and {high:g}")
        ranges[key] = (low, high, spacing)
    if combine == "sobol":
        # scrambled, so the points are not the sequence's first corner; a power of two keeps its balance
        sampler = qmc.Sobol(len(ranges), scramble=True, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "balance properties ... require n = 2^m"
            unit = sampler.random(samples)
    else:
        unit = qmc.LatinHypercube(len(ranges), seed=seed).random(samples)
    columns = {}
    for j, (key, (low, high, spacing)) in enumerate(ranges.items()):
        if spacing == "log":
            column = np.exp(np.log(low) + unit[:, j] * (np.log(high) - np.log(low)))
        else:
            column = low + unit[:, j] * (high - low)
        columns[key] = [float(f"{v:.12g}") for v in column]
    design = {"samples": samples, "seed": seed, "ranges": {k: list(v) for k, v in ranges.items()}}
    return columns, design


def _starts(raw) -> dict[str, dict[str, Any]]:
    """``[starts]``: name -> the config keys (dotted, as for --set) that make that start."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            "sweep key 'starts' must be a table of named starts, e.g. [starts.inflamed] with config keys as for --set"
        )
    out = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"sweep key 'starts.{name}' = {table!r}: must be a table of config keys (it may be empty)")
        out[name] = _dotted(table, f"starts.{name}.")
        for key in out[name]:
            if len(key.split(".")) < 2:
                raise ConfigError(f"sweep key 'starts.{name}.{key}': name a section and a key, like \"initial.start\"")
    return out


def _dotted(raw: dict, where: str, is_leaf=lambda value: False, prefix: str = "") -> dict[str, Any]:
    """A table of config keys as dotted keys: quoted ("parameters.chemotaxis") or nested
    ([vary.parameters]) alike; a table ``is_leaf`` accepts (a range) is a value."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict) and not is_leaf(v):
            if not v:
                raise ConfigError(f"sweep key '{where}{prefix}{k}' is an empty table: give it keys with values")
            out.update(_dotted(v, where, is_leaf, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read and validate a sweep config; ConfigError names what is wrong."""
    return sweep_from_dict(read_toml(path, "sweep config"), Path(path).parent, overrides)


# --------------------------------------------------------------------------------------------
# The study folder.
# --------------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """``study.toml`` of a study folder (ValueError if it is not one)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"'{folder}' is not a study folder: it has no {MANIFEST} (make one with `synovia sweep`)")
    try:
        manifest = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"'{path}' is not valid TOML: {err}") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a synovia study manifest (format {manifest.get('format')!r})")
    return manifest


PREPARE_WAIT_S = 600.0  # how long prepare_folder waits for another process's lock on the study folder


def prepare_folder(sweep: Sweep, folder: Path, *, overwrite: bool = False) -> None:
    """Create the study folder and its manifest, or check an existing one holds this sweep.

    Raises ValueError when the folder holds something else: another sweep, or run files without a
    manifest (unless ``overwrite``, which removes those run files first), or files that are not a
    study. Concurrent calls (array tasks) take turns on a lock in the folder.
    """
    folder = Path(folder)
    manifest = sweep.manifest()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"'{folder}' exists and is not a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise ValueError(f"cannot create '{folder}': folder '{folder.parent}' does not exist (create it first)")
    if folder.exists() and any(
        not p.name.startswith(".") and p.name not in (RUNS, MANIFEST, SUMMARY_CSV, STUDY_H5) for p in folder.iterdir()
    ):
        raise ValueError(f"'{folder}' is not empty and is not a study folder; choose a new or empty output folder")
    folder.mkdir(exist_ok=True)
    with FileLock(folder / ".lock", wait=PREPARE_WAIT_S):  # held for seconds; a soft lock may be stale
        if (folder / MANIFEST).is_file():
            old = read_manifest(folder)
            if _identity(old) != _identity(manifest):
                if not overwrite:
                    raise ValueError(
                        f"'{folder}' holds a different sweep ({_difference(old, manifest)}); pass --overwrite to "
                        "replace it, or choose another output folder"
                    )
                _remove_runs(folder)
        elif (folder / RUNS).is_dir() and any((folder / RUNS).glob("point_*")):
            if not overwrite:
                raise ValueError(
                    f"'{folder}' holds run files but no {MANIFEST}, so they cannot be checked against this sweep; "
                    "pass --overwrite to replace them, or choose another output folder"
                )
            _remove_runs(folder)
        # The manifest first, atomically: a task that does not wait for the lock sees none or a whole one.
        if not (folder / MANIFEST).is_file() or read_manifest(folder) != manifest:
            atomic_write_text(folder / MANIFEST, tomli_w.dumps(manifest))
        (folder / RUNS).mkdir(exist_ok=True)


def _identity(manifest: dict) -> dict:
    """What makes two studies the same: not where the sweep config was (a study may move with it)."""
    return {k: v for k, v in manifest.items() if k != "config_dir"}


def _difference(old: dict, new: dict) -> str:
    for key in ("keys", "combine", "scenario", "starts"):
        if old.get(key) != new.get(key):
            return f"its {key} differ" if key.endswith("s") else f"its {key} differs"
    if len(old.get("points", [])) != len(new["points"]):
        return f"{len(old.get('points', []))} points, this sweep has {len(new['points'])}"
    for a, b in zip(old["points"], new["points"]):
        if a != b:
            return f"point {b['index']} was {a.get('values')}, now {b['values']}"
    return "its manifest differs"


def _remove_runs(folder: Path) -> None:
    """Every point's run file, sidecar, marker and row, the summary and the manifest (to be replaced)."""
    for pattern in ("point_*", ".point_*.json"):
        for path in (folder / RUNS).glob(pattern):
            path.unlink()
    (folder / SUMMARY_CSV).unlink(missing_ok=True)
    (folder / STUDY_H5).unlink(missing_ok=True)
    (folder / SLURM_JOBS).unlink(missing_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Running points.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PointResult:
    index: int
    status: str  # "done", "complete" (already was), "busy" (another process runs it), or one of MARKERS
    message: str = ""


def stored_run(path: Path) -> tuple[int, str]:
    """Committed frames of a run file and the config it holds ((0, "") if missing or unreadable)."""
    try:
        with RunFile.open(path) as run:
            return run.n_frames, run.config_toml
    except (OSError, KeyError):
        return 0, ""


MARKERS = ("diverged", "refused", "failed")  # runs/point_NNN.<status>: why a point has no complete run


def point_lock(path: Path, stack: contextlib.ExitStack) -> PointResult | None:
    """Take the lock of the point whose run file is ``path`` (held until ``stack`` closes) and clear its
    earlier refused/failed markers; or the point's result if it is not to run: it diverged before (not
    retried), or another process holds it ("busy")."""
    index = int(path.stem.rsplit("_", 1)[-1])
    if path.with_suffix(".diverged").is_file():
        return PointResult(index, "diverged", path.with_suffix(".diverged").read_text().strip())
    try:
        stack.enter_context(FileLock(path.with_name(f".{path.stem}.lock")))
    except FileBusy as err:
        return PointResult(index, "busy", "another process is running this point" + (f": {err}" if err.holder else ""))
    for status in ("refused", "failed"):
        path.with_suffix(f".{status}").unlink(missing_ok=True)
    return None


def finish_point(path: Path, result: PointResult) -> PointResult:
    """Record a point's result: its marker file (MARKERS) and its row (``_write_row``)."""
    if result.status in MARKERS:
        path.with_suffix(f".{result.status}").write_text(result.message + "\n")
    try:
        _write_row(path)
    except OSError:  # a cache only: the collector reads the run file instead
        pass
    return result


def run_point(config_toml: str, config_dir: str, path: str | Path) -> PointResult:
    """Run (or finish) one point's run file; safe to call in a fresh worker process.

    A point another process is running (its lock is held) is left to it ("busy"). A point that
    diverged before is not retried. A config that cannot be built ("refused") or an unexpected
    error ("failed") is recorded in a marker file beside the run file and retried next time.
    """
    path = Path(path)
    with contextlib.ExitStack() as stack:
        early = point_lock(path, stack)
        if early is not None:
            return early
        return finish_point(path, run_point_locked(int(path.stem.rsplit("_", 1)[-1]), config_toml, config_dir, path))


def run_point_locked(index: int, config_toml: str, config_dir: str, path: Path) -> PointResult:
    """:func:`run_point`'s run, its lock held; an unexpected error is returned as "failed"."""
    try:
        return _run_point(index, config_toml, config_dir, path)
    except Exception as err:  # one point's trouble (I/O, memory) must not stop the others
        return PointResult(index, "failed", f"{type(err).__name__}: {err}")


def point_scenario(index: int, config_toml: str, config_dir: str) -> Scenario | PointResult:
    """A point's scenario, or its "refused" result."""
    try:
        config = config_from_toml(config_toml, config_dir)
        enable_precision(config)  # a worker process is an entry point
        return build_scenario(config)
    except ConfigError as err:  # found only when the scenario is built (an unstable step, a bad geometry file)
        return PointResult(index, "refused", str(err))


def prepare_point(index: int, config_toml: str, config_dir: str, path: Path) -> tuple[Scenario, int] | PointResult:
    """A point's scenario and the frames its run file holds, or its result if it is not to run: its config
    is refused, the file holds another config's run, or the run is complete."""
    scenario = point_scenario(index, config_toml, config_dir)
    if isinstance(scenario, PointResult):
        return scenario
    n_frames, stored_config = stored_run(path)
    if n_frames > 0 and stored_config != scenario.config.to_toml():
        return PointResult(
            index, "refused", f"'{path}' holds a run of another config (not this sweep's point {index}); "
            "move it away or delete it"
        )  # fmt: skip
    if n_frames == scenario.n_frames + 1:
        return PointResult(index, "complete")
    return scenario, n_frames


def _run_point(index: int, config_toml: str, config_dir: str, path: Path) -> PointResult:
    prepared = prepare_point(index, config_toml, config_dir, path)
    if isinstance(prepared, PointResult):
        return prepared
    scenario, n_frames = prepared
    writer, start_frame, state = open_run(scenario, path, resume=n_frames > 0, config_dir=Path(config_dir), overwrite=True)
    try:
        with writer:
            run(scenario, writer, start_frame=start_frame, state=state, progress=False)
    except Diverged as err:
        return PointResult(index, "diverged", str(err))
    return PointResult(index, "done")


def _ignore_interrupt() -> None:
    """Workers leave Ctrl-C to the parent, which stops them all."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def local_gpus() -> list[str]:
    """This node's GPUs as ``CUDA_VISIBLE_DEVICES`` names them for a child process: the entries of this
    process's own ``CUDA_VISIBLE_DEVICES`` (SLURM sets it for a job's GPUs), else those ``nvidia-smi -L``
    lists; empty without GPUs or with ``JAX_PLATFORMS`` naming no GPU platform. JAX is not asked: it would
    open every GPU in this process, which only hands out work (and on GPUs in exclusive-process mode would
    keep the workers off them)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return []
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [v.strip() for v in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if v.strip() and v.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no NVIDIA driver here
        return []
    lines = listed.stdout.splitlines() if listed.returncode == 0 else []
    return [str(i) for i, line in enumerate(line for line in lines if line.startswith("GPU "))]


def deal_gpus(workers: int, gpus: Sequence[str], per: int = 1) -> list[str | None]:
    """Per ``--jobs`` worker, the GPUs it alone sees (``CUDA_VISIBLE_DEVICES``): the node's GPUs in groups
    of ``per`` (the points' largest ``run.devices``), dealt round-robin; workers share a group only when
    there are more workers than groups. None (every GPU visible) without GPUs or with fewer than ``per``."""
    groups = [",".join(gpus[j * per : (j + 1) * per]) for j in range(len(gpus) // max(per, 1))]
    return [groups[i % len(groups)] if groups else None for i in range(workers)]


def _start_worker(counter, workers: int, gpus: Sequence[str], per: int) -> None:
    """A ``--jobs`` worker's start: Ctrl-C left to the parent (which stops the pool with SIGTERM: the
    workers end at once, their files as after ``kill -9``, readable and resumable); its GPUs, by the order
    in which the workers start (read when JAX first uses a device, which no worker did before this); and
    no GPU memory taken up front where workers share GPUs."""
    _ignore_interrupt()
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    dealt = deal_gpus(workers, gpus, per)
    if dealt[index] is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = dealt[index]
    if len(set(dealt)) < workers:
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


def _run_task(task: tuple[str, str, str]) -> PointResult:
    return run_point(*task)


def run_study(
    sweep: Sweep,
    folder: Path,
    *,
    points: Sequence[int] | None = None,
    jobs: int = 1,
    ensemble: bool = False,
    on_result: Callable[[PointResult], None] | None = None,
) -> list[PointResult]:
    """Run the chosen points (default all) of a prepared study folder, in order, in ``jobs`` processes, or
    (``ensemble``) in batches of points with the same step plan advanced together by one vmapped function
    over this process's devices (solver.study._ensemble).

    ``on_result`` is called as each point finishes. A KeyboardInterrupt stops the work; every
    finished frame is kept, and running the sweep again resumes it.
    """
    folder = Path(folder)
    chosen = list(range(len(sweep))) if points is None else list(points)
    tasks = [(sweep.configs[i].to_toml(), sweep.base_dir, str(folder / RUNS / f"{point_name(i)}.h5")) for i in chosen]
    results: list[PointResult] = []

    def done(result: PointResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    if ensemble:
        from ._ensemble import run_batched  # it builds on this module

        run_batched(tasks, on_result=done)
        return sorted(results, key=lambda r: r.index)
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            done(run_point(*task))
        return results

    # Fresh processes (JAX must not be forked), each on its own GPUs of the node's while there are enough
    workers, gpus = min(jobs, len(tasks)), local_gpus()
    per = max(sweep.configs[i].run.devices for i in chosen)
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_start_worker, initargs=(context.Value("i", 0), workers, gpus, per))
    try:
        for result in pool.imap_unordered(_run_task, tasks):
            done(result)
        pool.close()
    except BaseException:
        # Ctrl-C or an error: stop the workers, so none goes on writing after this returns
        # (their files stay readable and resumable, as after kill -9).
        pool.terminate()
        raise
    finally:
        pool.join()
    return sorted(results, key=lambda r: r.index)


# --------------------------------------------------------------------------------------------
# Reading a study back.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StudyTable:
    """What a study folder holds: per point its values, status, outcome measures and series."""

    folder: Path
    keys: list[str]
    combine: str
    values: list[list[Any]]
    files: list[Path]
    status: list[str]  # "complete", "incomplete (to t of T h)", "not run", or a marker: diverged, refused, failed
    measures: dict[str, np.ndarray]  # name -> (n_points,), NaN unless complete
    series: list[dict[str, np.ndarray] | None]  # per point: "time" and the summary series (any frames)
    units: dict[str, str]

    @property
    def complete(self) -> np.ndarray:
        return np.array([s == "complete" for s in self.status])

    @property
    def has_starts(self) -> bool:
        return START in self.keys

    def branches(self) -> list[dict[str, Any]]:
        """With [starts]: per combination of the varied values, the final fluid white cells reached from
        each start, and whether the starts ended on different steady states (a bistable point).

        Each item: ``values`` (the varied values), ``final`` ({start: final white cells /uL}), ``settled``
        (every start's drift below :data:`SETTLED`), ``bistable`` (complete, settled, and the largest
        final value more than :data:`BRANCH_FACTOR` times the smallest). Empty without [starts].
        """
        if not self.has_starts:
            return []
        col = self.keys.index(START)
        groups: dict[tuple, dict[str, int]] = {}
        for i, values in enumerate(self.values):
            rest = tuple(_key(v) for j, v in enumerate(values) if j != col)
            groups.setdefault(rest, {})[values[col]] = i
        out = []
        for members in groups.values():
            final = {name: float(self.measures["final_fluid_leukocytes"][i]) for name, i in members.items()}
            drift = [float(self.measures[DRIFT.name][i]) for i in members.values()]
            done = all(self.status[i] == "complete" for i in members.values())
            settled = done and all(math.isfinite(d) and d < SETTLED for d in drift)
            finite = [v for v in final.values() if math.isfinite(v) and v > 0]
            split = len(finite) > 1 and max(finite) > BRANCH_FACTOR * min(finite)
            values = [v for j, v in enumerate(self.values[next(iter(members.values()))]) if j != col]
            out.append({"values": values, "final": final, "settled": settled, "bistable": bool(done and settled and split)})
        return out

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        columns = (*MEASURES, DRIFT)
        writer.writerow(["point", *self.keys, "status", *(f"{m.name} [{m.unit}]" for m in columns), "file"])
        for i, (values, status, path) in enumerate(zip(self.values, self.status, self.files)):
            numbers = ["" if math.isnan(self.measures[m.name][i]) else f"{self.measures[m.name][i]:.8g}" for m in columns]
            writer.writerow([i, *values, status, *numbers, path.relative_to(self.folder).as_posix()])
        return out.getvalue()

    def text(self) -> str:
        """A short table for the terminal (``synovia info STUDY``)."""
        kinds = [s.split(" (")[0] for s in self.status]
        counts = {s: kinds.count(s) for s in dict.fromkeys(kinds)}
        head = [
            f"study: {self.folder}",
            f"varied ({self.combine}): {', '.join(self.keys)}",
            f"points: {len(self.values)} ({', '.join(f'{n} {s}' for s, n in counts.items())})",
        ]
        shown = ("peak_fluid_tnf", "peak_fluid_leukocytes", "final_fluid_leukocytes", "min_cartilage_integrity")
        rows = [["point", *self.keys, "status", *shown]]
        for i, (values, status) in enumerate(zip(self.values, self.status)):
            rows.append([str(i), *(f"{v:g}" if isinstance(v, float) else str(v) for v in values), status.split(" (")[0]])
            rows[-1] += ["-" if math.isnan(self.measures[m][i]) else f"{self.measures[m][i]:.4g}" for m in shown]
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = head + ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
        branches = self.branches()
        if branches:
            keys = [k for k in self.keys if k != START]
            bistable = [b for b in branches if b["bistable"]]

            def where(b):
                return ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in zip(keys, b["values"]))

            unsettled = sum(not b["settled"] for b in branches)
            found = f"bistable (starts end on different states) at {len(bistable)} of {len(branches)}: " if bistable else ""
            drifting = f"still drifting > {SETTLED:.0%} in {DRIFT_WINDOW_H:g} h"
            lines.append(
                f"steady states from {len(branches[0]['final'])} starts: "
                + (found or "no bistable point")
                + "; ".join(where(b) or "the scenario" for b in bistable)
                + (f"; {unsettled} not settled (fluid white cells {drifting})" if unsettled else "")
            )
        return "\n".join(lines) + "\n"


def _row_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.json")


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _point_data(path: Path) -> tuple[dict[str, np.ndarray] | None, dict[str, str]]:
    """A run file's times and summary series, and their units (None if missing or unreadable)."""
    if not path.is_file():
        return None, {}
    try:
        with RunFile.open(path) as run:
            return {"time": run.time, **run.summary}, {k: v for k, v in run.units.items() if v}
    except (OSError, KeyError):
        return None, {}


def _write_row(path: Path) -> None:
    """Cache what the study table needs of a point's run file (its last time and outcome measures) in
    ``runs/.point_NNN.json``, stamped with the run file's size and mtime: collecting 1000 points then
    reads 1000 small files instead of opening 1000 HDF5 files."""
    if not path.is_file():
        return
    stamp = _file_stamp(path)
    data, units = _point_data(path)
    if data is None:
        return
    row = {
        "stamp": stamp,
        "times": len(data["time"]),
        "last_h": float(data["time"][-1]) if len(data["time"]) else None,
        "measures": {m.name: measure(m, data["time"], data[m.summary]) for m in (*MEASURES, DRIFT) if m.summary in data}
        if len(data["time"])
        else {},
        "units": units,
    }
    atomic_write_text(_row_path(path), json.dumps(row, allow_nan=True))


def _read_row(path: Path) -> dict | None:
    """The cached row of a point if it matches its run file as it is now, else None."""
    try:
        row = json.loads(_row_path(path).read_text())
        return row if row.get("stamp") == _file_stamp(path) else None
    except (OSError, ValueError):
        return None


def point_running(path: Path) -> bool:
    """Whether a process holds the lock of the point whose run file is ``path`` (it is running it)."""
    return lock_holder(path.with_name(f".{path.stem}.lock")) is not None


def read_study(folder: str | os.PathLike[str], *, series: bool = True) -> StudyTable:
    """Read a study folder: the manifest and every point's run file, complete or not.

    With ``series=False`` each point's summary time series are not read (``table.series`` holds None)
    and a point's cached row (written when the point last ran, valid while its run file is unchanged)
    stands in for its run file: the fast path for status and summaries of large studies.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    points = manifest["points"]
    n = len(points)
    measures = {m.name: np.full(n, np.nan) for m in (*MEASURES, DRIFT)}
    status, series_out, files, units = [], [], [], {}
    for i, point in enumerate(points):
        path = folder / point["file"]
        files.append(path)
        expected = point["t_end_h"]
        row = None if series or not path.is_file() else _read_row(path)
        data = None
        if row is None:
            data, point_units = _point_data(path)
            if data is not None:
                row = {
                    "times": len(data["time"]),
                    "last_h": float(data["time"][-1]) if len(data["time"]) else None,
                    "units": point_units,
                }
        series_out.append(data if series else None)
        complete = row is not None and row["times"] > 0 and math.isclose(row["last_h"], expected, rel_tol=1e-9, abs_tol=1e-9)
        marked = [m for m in MARKERS if path.with_suffix(f".{m}").is_file()]
        if row is not None:
            units.update(row["units"])
        if complete:
            status.append("complete")
            for m in (*MEASURES, DRIFT):
                if data is not None:
                    if m.summary in data:
                        measures[m.name][i] = measure(m, data["time"], data[m.summary])
                elif row is not None and m.name in row["measures"]:  # complete: row is not None
                    measures[m.name][i] = row["measures"][m.name]
        elif point_running(path):
            status.append("running")
        elif marked:
            status.append(marked[0])
        elif row is None:
            status.append("not run")
        else:
            status.append(f"incomplete (to {row['last_h'] or 0.0:g} of {expected:g} h)")
    return StudyTable(
        folder, list(manifest["keys"]), manifest["combine"], [list(p["values"]) for p in points], files, status, measures,
        series_out, units,
    )  # fmt: skip


def _key(v):
    return tuple(v) if isinstance(v, list) else v


def write_summary(folder: Path) -> StudyTable:
    """Collect a study: write ``summary.csv`` and ``study.h5`` of a study folder from its points' rows
    (their run files where a row is missing or stale); returns the table."""
    table = read_study(folder, series=False)
    atomic_write_text(Path(folder) / SUMMARY_CSV, table.csv())
    write_study_h5(table, Path(folder) / STUDY_H5)
    return table


def _column(values: list[Any]) -> np.ndarray:
    """One varied key's values as an HDF5-friendly array: numbers as float64, anything else as text."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.array([v if isinstance(v, str) else json.dumps(v) for v in values], dtype=object)


def write_study_h5(table: StudyTable, path: Path) -> None:
    """The study table as one HDF5 file that h5py, netCDF tools and xarray read: a ``point`` dimension
    (an HDF5 dimension scale) and, along it, each varied key (named as in the config), ``status``,
    ``file`` and each outcome measure (with ``units`` and ``long_name``)."""
    import h5py

    tmp = temporary_path(path, ".h5.tmp")
    strings = h5py.string_dtype()
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["Conventions"] = "CF-1.8"
            f.attrs["title"] = f"synovia study: {', '.join(table.keys)} ({table.combine})"
            f.attrs["varied_keys"] = json.dumps(table.keys)
            point = f.create_dataset("point", data=np.arange(len(table.values), dtype=np.int64))
            point.make_scale("point")
            point.attrs["long_name"] = "sweep point (runs/point_NNN.h5)"
            columns: dict[str, tuple[np.ndarray, dict[str, str]]] = {}
            for j, key in enumerate(table.keys):
                columns[key] = (_column([v[j] for v in table.values]), {"long_name": f"config key {key}"})
            columns["status"] = (np.array([s.split(" (")[0] for s in table.status], dtype=object), {"long_name": "point status"})
            folder = table.folder
            columns["file"] = (
                np.array([p.relative_to(folder).as_posix() for p in table.files], dtype=object),
                {"long_name": "run file, relative to the study folder"},
            )
            for m in (*MEASURES, DRIFT):
                columns[m.name] = (table.measures[m.name], {"units": m.unit, "long_name": m.label})
            for name, (data, attrs) in columns.items():
                dset = f.create_dataset(name, data=data, dtype=strings if data.dtype == object else data.dtype)
                dset.dims[0].attach_scale(point)
                for k, v in attrs.items():
                    dset.attrs[k] = v
            _write_virtual_fields(f, table, point)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shared_layout(table: StudyTable) -> tuple[Path, str] | tuple[None, str]:
    """The run file whose grid, frames and species every point shares, or None and why there is none:
    points share them unless the sweep varies a ``geometry.``, ``run.`` or ``drug.`` key (a drug adds a
    species; read from the keys alone, so that collecting 1000 points opens one run file, not 1000)."""
    varied = [k for k in table.keys if k.startswith(("geometry.", "run.", "drug."))]
    if varied:
        return None, f"not written: the points' grids, frames or species may differ ({', '.join(varied)} varied)"
    done = [p for p, s in zip(table.files, table.status) if s == "complete"]
    return (done[0], "") if done else (None, "not written: no point is complete")


def _write_virtual_fields(f, table: StudyTable, point) -> None:
    """Every complete point's fields as one virtual dataset per species under ``/fields``, shaped
    ``(point, time, [z,] y, x)`` and read from the points' run files (paths relative to the study
    folder; no copy), NaN for the points not complete; skipped, with the reason in the group's
    ``note``, when the points' grids or frames differ."""
    import h5py

    group = f.create_group("fields")
    first, why = _shared_layout(table)
    if first is None:
        group.attrs["note"] = why
        return
    with RunFile.open(first) as run:
        time, species, dtype, units = run.time, run.species, run.dtype, run.units
        names = axis_names(run.grid.ndim)
        centres = [run.grid.axis_centres(axis) for axis in range(run.grid.ndim)]
    group.attrs["note"] = "each complete point's fields, read from its run file (HDF5 virtual datasets)"
    axes = []
    for name, values, attrs in [("time", time, {"units": "h", "long_name": "time", "axis": "T"})] + [
        (name, c, {"units": "mm", "axis": name.upper()}) for name, c in zip(names, centres)
    ]:
        coord = group.create_dataset(name, data=values)
        coord.make_scale(name)
        coord.attrs.update(attrs)
        axes.append(coord)
    shape = (len(time), *(len(c) for c in centres))
    done = [i for i, s in enumerate(table.status) if s == "complete"]
    for name in species:
        layout = h5py.VirtualLayout(shape=(len(table.files), *shape), dtype=dtype)
        for i in done:
            rel = table.files[i].relative_to(table.folder).as_posix()
            layout[i] = h5py.VirtualSource(rel, f"fields/{name}", shape=shape)
        dset = group.create_virtual_dataset(name, layout, fillvalue=np.nan)
        dset.dims[0].attach_scale(point)
        for d, axis in enumerate(axes, start=1):
            dset.dims[d].attach_scale(axis)
        if units.get(name):
            dset.attrs["units"] = units[name]


def is_study(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


__all__ = ["MEASURES", "Measure", "StudyTable", "Sweep", "load_sweep", "read_study", "run_study", "sweep_from_dict"]
