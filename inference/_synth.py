"""Synthetic observations from a known scenario, to check that a fit recovers the truth."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fields import SPECIES_TISSUES
from solver import Config, build_scenario
from solver.physics import params_as_dict

from ._observations import FieldMap, ObservationError, ObservationOperator, Observations, make_observations
from ._problem import plasma_levels


def _parse_where(spec: str) -> tuple[str, str]:
    kind, _, where = spec.partition(":")
    return kind.strip(), where.strip()


def synthesize(
    config: Config,
    *,
    times: Sequence[float] | None = None,
    species: Sequence[str] = ("tnf", "il1", "leukocytes"),
    where: Sequence[str] = ("fluid",),
    map_times: Sequence[float] = (),
    map_species: str = "leukocytes",
    noise: float = 0.0,
    seed: int = 0,
) -> Observations:
    """Observe a run of ``config`` with relative Gaussian noise.

    Each value is the model's prediction y plus ``noise * s * N(0, 1)`` with
    s = |y| + 1e-3 max|y of that species| (the floor keeps sigma positive where y is 0);
    the recorded sigma is ``noise * s`` (``0.01 * s`` when ``noise`` is 0, for weighting only).
    ``where`` entries are ``fluid``, ``tissue:<name>``, ``point:<z y x>`` or ``box:<z0:z1 y0:y1 x0:x1>``;
    ``times`` default to every output interval of the run; ``map_times`` add whole-field maps.
    The true parameters go into the attributes (``truth_parameters``).
    """
    if noise < 0:
        raise ObservationError(f"noise = {noise} must be >= 0 (a relative standard deviation, e.g. 0.05)")
    scenario = build_scenario(config)
    interval, t_end = scenario.interval, config.run.t_end_h
    given = times is not None and len(times) > 0
    last = max([*map(float, times), *map(float, map_times)]) if times is not None and given else t_end
    if math.isfinite(last) and 0 <= last <= t_end * (1 + 1e-12):
        scenario.check_frames_memory(math.ceil(last / interval - 1e-9))  # before the list of times is made
    times = (
        [float(t) for t in times] if times is not None and len(times) else [interval * (k + 1) for k in range(scenario.n_frames)]
    )
    for t in list(times) + list(map_times):
        if not 0 <= t <= t_end * (1 + 1e-12):
            raise ObservationError(f"time {t:g} h lies outside the run (0 to run.t_end_h = {t_end:g} h)")
    rows: list[dict[str, Any]] = [
        {"time_h": t, "species": s, "kind": _parse_where(w)[0], "where": _parse_where(w)[1], "value": 0.0, "sigma": 1.0}
        for w in where
        for s in species
        for t in times
    ]
    grid_shape = scenario.geometry.grid.shape
    maps = [
        FieldMap(f"{map_species}_{t:g}h", float(t), map_species, np.zeros(grid_shape), np.ones(grid_shape)) for t in map_times
    ]
    template = make_observations(rows, maps)
    if maps:  # observe the map only where the species lives
        lives = np.isin(np.asarray(scenario.geometry.labels), [int(t) for t in SPECIES_TISSUES[map_species]])
        maps = [FieldMap(m.name, m.time_h, m.species, np.where(lives, 0.0, np.nan), m.sigma) for m in maps]
        template = make_observations(rows, maps)
    op = ObservationOperator.build(template, scenario.geometry, interval, species_in_run=scenario.options.species)
    solver = scenario.solver

    @jax.jit
    def predict(params):
        # forward only: what reverse mode would keep does not matter
        _, frames = solver.trajectory(
            scenario.initial, params, scenario.domain, scenario.plan.dt, op.n_frames, checkpoint="steps"
        )
        frames = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), scenario.initial, frames)
        return op.predict(frames, plasma_levels(params, scenario.options))

    y = np.asarray(predict(scenario.params), float)
    rng = np.random.default_rng(seed)
    n = len(rows)
    scale = {}
    for s in set(species) | ({map_species} if maps else set()):
        sel = [i for i in range(n) if rows[i]["species"] == s]
        vals = [np.abs(y[sel])] if sel else []
        offset = n
        for m in maps:
            count = int(np.isfinite(m.value).sum())
            if m.species == s:
                vals.append(np.abs(y[offset : offset + count]))
            offset += count
        scale[s] = max(float(np.max(np.concatenate(vals))) if vals else 0.0, 1e-12)
    rel = noise if noise > 0 else 0.01
    out_rows = []
    for i, r in enumerate(rows):
        s = abs(y[i]) + 1e-3 * scale[r["species"]]
        value = y[i] + (noise * s * rng.standard_normal() if noise > 0 else 0.0)
        out_rows.append({**r, "value": value, "sigma": rel * s})
    out_maps = []
    offset = n
    for m in maps:
        seen = np.isfinite(m.value)
        count = int(seen.sum())
        truth = y[offset : offset + count]
        offset += count
        s = np.abs(truth) + 1e-3 * scale[m.species]
        value = np.full(grid_shape, np.nan)
        sigma = np.full(grid_shape, np.nan)
        value[seen] = truth + (noise * s * rng.standard_normal(count) if noise > 0 else 0.0)
        sigma[seen] = rel * s
        out_maps.append(FieldMap(m.name, m.time_h, m.species, value, sigma))
    attrs = {
        "source": "synovia synth",
        "truth_parameters": json.dumps(params_as_dict(scenario.params)),
        "config_toml": config.to_toml(),
        "noise": float(noise),
        "seed": int(seed),
    }
    return make_observations(out_rows, out_maps, attrs)
