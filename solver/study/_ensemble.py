"""Sweep points run together (``synovia sweep --ensemble``): points that share a grid, static options and
step plan are stacked into batches that one compiled ``jax.vmap`` of the interval function advances,
each batch split over this process's devices along its member axis.

A member's arithmetic is that of a run of its own; XLA orders the additions of the grid's sums its own way
in the batched program, so a point's file agrees with the one ``synovia sweep`` (or ``synovia run``)
writes to round-off, and with ``run.reproducible`` (sums in a fixed order) to the bit.

Points whose step plans differ (the automatic step follows each point's stability limits) go to
different batches; setting ``run.dt_h`` in the sweep's scenario gives every point the same step (each
run file records it as ``dt_h``) and so one batch per grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fields import State, host_memory_bytes

from ..io import RunWriter
from ..physics import summaries
from ..setup import ARRAYS_PER_CELL, Scenario, device_memory_bytes
from ..time import Solver
from ._run import Diverged, check_frame, open_run
from ._study import PointResult, finish_point, point_lock, point_scenario, prepare_point, run_point_locked

#: Share of the device's memory (the host's on a CPU) one batch may take.
BATCH_SHARE = 0.5


def batch_key(scenario: Scenario, plan: bool = True) -> tuple:
    """Points with equal keys can be advanced together: the same grid, precision, static options, step
    plan (left out with ``plan=False``) and frames."""
    p = scenario.plan
    step = ((p.stepper, p.dt, p.substeps, p.rkl2_stages),) if plan else ()
    shape, dtype = scenario.geometry.grid.shape, np.dtype(scenario.dtype).name
    return (shape, dtype, scenario.options, *step, scenario.n_frames, scenario.interval)


def batch_limit(scenario: Scenario, devices: Sequence | None = None) -> int:
    """How many members of ``scenario``'s size fit one batch: :data:`BATCH_SHARE` of the devices' memory
    (the host's on a CPU, or where a GPU reports none) at ``ARRAYS_PER_CELL`` arrays a cell."""
    devices = list(devices or jax.local_devices())
    per_member = math.prod(scenario.geometry.grid.shape) * ARRAYS_PER_CELL * np.dtype(scenario.dtype).itemsize
    memory = host_memory_bytes() if devices[0].platform == "cpu" else sum(map(device_memory_bytes, devices))
    return max(1, int(BATCH_SHARE * (memory or host_memory_bytes()) // per_member))


def batches(items: dict, scenario_of: Callable = lambda item: item, key: Callable = lambda item: ()) -> list[list]:
    """``items``' keys grouped by :func:`batch_key` of ``scenario_of(item)`` (and ``key(item)``), each group cut
    into batches of at most :func:`batch_limit` members."""
    groups: dict[tuple, list] = {}
    for name, item in items.items():
        groups.setdefault((*batch_key(scenario_of(item)), *key(item)), []).append(name)
    out = []
    for names in groups.values():
        size = batch_limit(scenario_of(items[names[0]]))
        out += [names[k : k + size] for k in range(0, len(names), size)]
    return out


def describe_batches(sweep, points: Sequence[int]) -> tuple[list[tuple[list[int], str]], dict[int, str], bool]:
    """The batches ``--ensemble`` makes of these points of ``sweep`` (as new files), each with a line on
    its grid and step plan; the points whose configs are refused (with why); and whether some points are
    apart only for their step plans (:func:`split_by_step`)."""
    scenarios, refused = {}, {}
    for k in points:
        scenario = point_scenario(k, sweep.configs[k].to_toml(), sweep.base_dir)
        if isinstance(scenario, PointResult):
            refused[k] = scenario.message
        else:
            scenarios[k] = scenario
    lines = []
    for indices in batches(scenarios):
        s = scenarios[indices[0]]
        shape = "x".join(map(str, s.geometry.grid.shape))
        drug = f", drug on {s.options.drug_target} ({s.options.drug_route})" if s.options.drug else ""
        what = f"{np.dtype(s.dtype).name}, {s.plan.stepper}, dt {s.plan.dt:.4g} h x {s.plan.substeps} per frame{drug}"
        lines.append((indices, f"{len(indices)} point(s) on {shape}, {what}"))
    return lines, refused, split_by_step(scenarios)


def split_by_step(scenarios: dict[int, Scenario]) -> bool:
    """Whether some of these points would batch together but for their step plans."""
    return len({batch_key(s, plan=False) for s in scenarios.values()}) < len({batch_key(s) for s in scenarios.values()})


@functools.cache
def _batched(solver: Solver):
    """The interval function with its summaries and health, over a leading member axis of the state,
    parameters and domain."""
    return jax.jit(jax.vmap(solver._advance_with_summary, in_axes=(0, None, None, 0, 0)))


@dataclasses.dataclass(eq=False)
class _Member:
    index: int
    path: Path
    scenario: Scenario
    writer: RunWriter
    start_frame: int
    state: State | None
    result: PointResult | None = None


def run_batched(
    tasks: Sequence[tuple[str, str, str]],
    *,
    on_result: Callable | None = None,
    stop: Callable[[], bool] | None = None,
) -> list:
    """Run points (``(config_toml, config_dir, run file)``, as :func:`run_point` takes them) in batches.

    What :func:`run_point` does for one point holds for each: a complete point is skipped, an
    interrupted one resumed (with the others stopped at the same frame), a point another process holds
    is left to it, and the markers and rows are written. ``on_result`` is called for each point as its
    batch ends. A KeyboardInterrupt (or ``stop()`` turning true between frames) keeps every frame written.
    """
    results: list[PointResult] = []

    def done(result: PointResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    with contextlib.ExitStack() as stack:
        members: list[_Member] = []
        for config_toml, config_dir, point_path in tasks:
            path = Path(point_path)
            index = int(path.stem.rsplit("_", 1)[-1])
            early = point_lock(path, stack)
            if early is not None:
                done(early)
                continue
            try:
                member = _prepare(index, config_toml, config_dir, path)
            except Exception as err:  # one point's trouble (I/O, memory) must not stop the others
                member = PointResult(index, "failed", f"{type(err).__name__}: {err}")
            if isinstance(member, PointResult):
                done(finish_point(path, member))
                continue
            stack.enter_context(member.writer)
            members.append(member)
        by_index = {m.index: m for m in members}
        for indices in batches(by_index, lambda m: m.scenario, lambda m: (m.start_frame,)):
            batch = [by_index[i] for i in indices]
            _run_batch(batch, stop)
            for m in batch:
                m.writer.close()
                assert m.result is not None  # _run_batch gives every member one
                done(finish_point(m.path, m.result))
    return sorted(results, key=lambda r: r.index)


def _prepare(index: int, config_toml: str, config_dir: str, path: Path):
    """A point's member (its scenario and open writer), or its PointResult if it will not run in a batch."""
    prepared = prepare_point(index, config_toml, config_dir, path)
    if isinstance(prepared, PointResult):
        return prepared
    scenario, n_frames = prepared
    if scenario.mesh is not None:  # run.devices > 1: the grid itself is split over the devices; alone
        return run_point_locked(index, config_toml, config_dir, path)
    writer, start_frame, state = open_run(scenario, path, resume=n_frames > 0, config_dir=Path(config_dir), overwrite=True)
    return _Member(index, path, scenario, writer, start_frame, state)


def _fields(state: State, species) -> dict[str, np.ndarray]:
    return {s: np.asarray(getattr(state, s)) for s in species}


def _stacked(trees: list):
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def _run_batch(batch: list[_Member], stop: Callable[[], bool] | None) -> None:
    """Advance the members of one batch (equal :func:`batch_key` and start frame) to their end."""
    first = batch[0].scenario
    species, interval, dt = first.options.species, first.interval, first.plan.dt
    start, n_frames = batch[0].start_frame, first.n_frames
    states = []
    for m in batch:
        s = m.scenario
        states.append(s.initial if m.state is None else State(*(jnp.asarray(u, s.dtype) for u in m.state)))
        if m.writer.n_frames == 0:  # frame 0 of a new file, as a run of its own writes it
            summ = jax.device_get(summaries(states[-1], s.domain, s.options, s.params, 0.0))
            m.writer.append(0.0, _fields(states[-1], species), {k: float(v) for k, v in summ.items()})
    # pad the batch to a multiple of the devices (the copies' results are dropped) and split it over them
    devices = jax.local_devices()
    n_dev = min(len(devices), len(batch))
    padded = batch + [batch[-1]] * (-len(batch) % n_dev)
    args = [
        _stacked([states[batch.index(m)] for m in padded]),
        _stacked([m.scenario.params for m in padded]),
        _stacked([m.scenario.domain for m in padded]),
    ]
    if n_dev > 1:
        mesh = jax.sharding.Mesh(np.array(devices[:n_dev]), ("members",))
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
        args = [jax.device_put(a, split) for a in args]
    state, params, domain = args
    advance = _batched(first.solver)
    live = list(range(len(batch)))
    k = start
    pending = advance(state, k * interval, dt, params, domain) if k < n_frames else None
    while k < n_frames and live:
        assert pending is not None  # k < n_frames
        new_state, summ, checks = pending
        k += 1
        pending = advance(new_state, k * interval, dt, params, domain) if k < n_frames else None
        host_state, summ, checks = jax.device_get((new_state, summ, checks))
        for j in list(live):
            m = batch[j]
            member_state = State(*(u[j] for u in host_state))
            try:
                check_frame(member_state, {c: v[j] for c, v in checks.items()}, k * interval)
            except Diverged as err:
                m.result = PointResult(m.index, "diverged", str(err))
                live.remove(j)
                continue
            m.writer.append(k * interval, _fields(member_state, species), {c: float(v[j]) for c, v in summ.items()})
        if stop is not None and stop():
            raise KeyboardInterrupt
    for j in live:
        batch[j].result = PointResult(batch[j].index, "done")
