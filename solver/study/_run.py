"""The run loop: advance frame by frame, write each frame while the next one computes.

JAX dispatches asynchronously: the next interval is queued on the device before the
current frame is copied to the host and written, so output does not stall the solver.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from fields import SPECIES, SPECIES_UNITS, State, __version__

from ..io import RunWriter, resume_writer
from ..physics import SUMMARY_UNITS, summaries, summary_names
from ..setup import Scenario


class Diverged(RuntimeError):
    """The solution became NaN/Inf or negative beyond round-off."""


def file_attrs(scenario: Scenario) -> dict:
    """Root attributes of a run file: the resolved config and what is needed to read it."""
    units = {**{s: SPECIES_UNITS[s] for s in scenario.options.species}, **SUMMARY_UNITS, "time": "h", "length": "mm"}
    rest = {}
    if scenario.rest is not None:  # how the resting joint the run starts from was found (solver.time.relax)
        rest = {"rest_relaxed_h": scenario.rest.time_h, "rest_change_per_window": scenario.rest.change}
    return {
        **rest,
        "config_toml": scenario.config.to_toml(),
        "version": __version__,
        "precision": scenario.config.run.precision,
        "units": json.dumps(units),
        "dt_h": scenario.plan.dt,
        "substeps_per_frame": scenario.plan.substeps,
        "stepper": scenario.config.run.stepper,
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
    }


def new_writer(scenario: Scenario, out: Path, *, config_dir: Path, overwrite: bool = False) -> RunWriter:
    """A run file for ``scenario`` at ``out``; ``config_dir`` resolves its config's relative paths on resume."""
    attrs = file_attrs(scenario)
    attrs["config_dir"] = str(config_dir)
    return RunWriter(
        out,
        grid=scenario.geometry.grid,
        labels=scenario.geometry.labels,
        species=scenario.options.species,
        summary_names=list(summary_names(scenario.options)),
        dtype=scenario.dtype,
        attrs=attrs,
        overwrite=overwrite,
    )


def start_processes() -> int:
    """Join the other processes of a multi-process job step (``srun -n K``, K > 1: ``SLURM_STEP_NUM_TASKS``)
    with ``jax.distributed.initialize()``, which reads the coordinator, process count and id from SLURM's
    environment; ``jax.devices()`` then lists every process's devices, so ``run.devices`` can span hosts.
    Call before JAX makes any array. Returns the number of processes (1 outside such a step)."""
    try:
        tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        tasks = 1
    if tasks > 1 and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    return jax.process_count()


def to_host(tree):
    """``tree``'s arrays as NumPy arrays on this host: gathered from every process when the arrays span
    several (``jax.device_get`` alone reads only this process's shards)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


class FrameCount:
    """The writer of a process other than the first in a multi-process run: it counts frames and writes
    nothing (process 0 writes the file)."""

    def __init__(self, n_frames: int = 0):
        self.n_frames = n_frames

    def append(self, time_h: float, fields, summaries) -> None:
        self.n_frames += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass


def check_frame(state_host: State, checks: dict, t: float) -> None:
    """Raise :class:`Diverged` if a frame's state (on the host) is not finite or went negative."""
    if not bool(checks["finite"]):
        bad = [s for s, u in state_host._asdict().items() if not np.all(np.isfinite(u))]
        raise Diverged(f"the solution diverged at t = {t:g} h: {', '.join(bad)} not finite")
    for s in state_host._fields:
        scale = max(1.0, float(checks[f"max_abs_{s}"]))
        if float(checks[f"min_{s}"]) < -1e-4 * scale:
            raise Diverged(f"the solution diverged at t = {t:g} h: {s} went negative (min {float(checks['min_' + s]):.3g})")


@dataclasses.dataclass
class RunResult:
    """What :func:`run` did: the last state (on the device), its time (h), the frames now in the file, the
    steps taken and their wall time (s); ``stopped``: a callback ended the run before ``run.t_end_h``."""

    state: State
    time_h: float
    frames_in_file: int
    steps: int
    wall_s: float
    stopped: bool = False


@dataclasses.dataclass(frozen=True)
class Frame:
    """One output frame as :func:`run` hands it to its callbacks, on the host: ``index`` (frame ``k`` is at
    ``k * run.output_interval_h``), ``time_h`` (h), ``fields`` ({species: NumPy array over the grid}, the
    values written to the file) and ``summaries`` ({summary name: value}, units in ``solver.SUMMARY_UNITS``)."""

    index: int
    time_h: float
    fields: dict[str, np.ndarray]
    summaries: dict[str, float]


#: A run-loop callback: called with each frame after it is written; returning True stops the run there.
Callback = Callable[[Frame], bool | None]


def interactive() -> bool:
    """Whether a person is likely watching: an IPython kernel or shell, or stderr on a terminal.

    What ``progress=None`` means in :func:`run` and in ``inference.fit``: a progress bar only then."""
    shell = sys.modules.get("IPython")
    if shell is not None and getattr(shell, "get_ipython", lambda: None)() is not None:
        return True
    return sys.stderr is not None and sys.stderr.isatty()


def _call_back(callbacks: Sequence[Callback], frame: Frame) -> bool:
    """Every callback with ``frame`` (each one, even after one asked to stop); True if any asked to stop."""
    stop = False
    for callback in callbacks:
        stop = bool(callback(frame)) or stop
    return stop


def run(
    scenario: Scenario,
    writer,
    *,
    start_frame: int = 0,
    state: State | None = None,
    progress: bool | None = None,
    stop: Callable[[], bool] | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Advance from frame ``start_frame`` (state ``state``, default the initial one) to the end.

    Frame ``k`` is at ``k * output_interval_h``. An empty file gets frame 0 first. Each frame
    is appended to ``writer`` (a ``RunWriter``) as soon as it is on the host, then handed to every
    callable of ``callbacks`` as a :class:`Frame` (frame 0 too when this call writes it); one that
    returns True ends the run after that frame, cleanly: the file holds every frame so far, and the
    result says ``stopped`` (resuming the file continues it). ``progress``: a tqdm bar on stderr; None
    (the default) shows one when a person is likely watching (:func:`interactive`).
    Raises :class:`Diverged` after writing every good frame, and KeyboardInterrupt after a frame
    when ``stop()`` turns true (a signal the caller caught).
    """
    progress = interactive() if progress is None else progress
    callbacks = tuple(callbacks)
    solver = scenario.solver
    species = scenario.options.species
    interval, dt = scenario.interval, scenario.plan.dt
    dtype = scenario.dtype
    state = scenario.initial if state is None else State(*(jax.numpy.asarray(u, dtype) for u in state))
    # run.devices > 1: the grid's arrays split over the devices; the compiled step follows their placement
    state, params, domain = scenario.place((state, scenario.params, scenario.domain))

    def frame_out(st: State, summ: dict):
        fields = {s: np.asarray(getattr(st, s)) for s in species}
        return fields, {k: float(v) for k, v in summ.items()}

    if writer.n_frames == 0:  # a new file (a resumed one holding only frame 0 has it already)
        fields, summ = frame_out(*to_host((state, summaries(state, domain, scenario.options, params, 0.0))))
        writer.append(0.0, fields, summ)
        if _call_back(callbacks, Frame(0, 0.0, fields, summ)):
            return RunResult(state, 0.0, writer.n_frames, 0, 0.0, stopped=True)

    t_end = scenario.n_frames * interval
    bar = tqdm(
        total=round(t_end, 6),
        initial=round(start_frame * interval, 6),
        unit="h",
        disable=not progress,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.4g}/{total:.4g} h simulated [{elapsed}<{remaining}{postfix}]",
        desc="synovia",
        mininterval=0.5,
        dynamic_ncols=True,
    )
    steps, start = 0, time.perf_counter()
    pending = None
    stopped = False
    try:
        k = start_frame
        if k < scenario.n_frames:
            pending = solver.advance_with_summary(state, k * interval, dt, params, domain)
        while k < scenario.n_frames:
            assert pending is not None  # queued while k < n_frames
            new_state, summ, checks = pending
            k += 1
            # queue the next interval before waiting on this one's data
            pending = solver.advance_with_summary(new_state, k * interval, dt, params, domain) if k < scenario.n_frames else None
            host_state, summ, checks = to_host((new_state, summ, checks))
            check_frame(host_state, checks, k * interval)
            fields, summ = frame_out(host_state, summ)
            writer.append(k * interval, fields, summ)
            state = new_state
            steps += scenario.plan.substeps
            elapsed = time.perf_counter() - start
            bar.set_postfix_str(f"{steps / max(elapsed, 1e-9):.0f} steps/s", refresh=False)
            bar.update(round(interval, 6))
            if stop is not None and stop():
                raise KeyboardInterrupt
            if _call_back(callbacks, Frame(k, k * interval, fields, summ)):
                stopped = k < scenario.n_frames
                break
    finally:
        bar.close()
    return RunResult(state, k * interval, writer.n_frames, steps, time.perf_counter() - start, stopped)


def state_from_fields(fields: dict[str, np.ndarray], like: State) -> State:
    """A state from a file's frame; species not in the file (drug when off) are zero."""
    # a host state: NumPy arrays where State's annotations say jax.Array (_make takes any values)
    return State._make(np.asarray(fields[s]) if s in fields else np.zeros_like(np.asarray(getattr(like, s))) for s in SPECIES)


def resume_run(scenario: Scenario, path: Path) -> tuple[RunWriter, int, State]:
    """A run file's writer (repaired if a crash left it open), the frame to continue from and its state."""
    writer, last_time, fields = resume_writer(path)
    return writer, frame_index(last_time, scenario.interval), state_from_fields(fields, scenario.baseline)


def open_run(
    scenario: Scenario, path: Path, *, resume: bool = False, config_dir: Path = Path("."), overwrite: bool = False
) -> tuple[RunWriter, int, State | None]:
    """The writer that runs ``scenario`` into ``path``, the frame to start from and its state (None: the
    initial one): the file continued where it stopped (``resume``), or a new file (``config_dir``
    resolves the config's relative paths on a later resume; ``overwrite`` replaces an existing file)."""
    if resume:
        return resume_run(scenario, path)
    return new_writer(scenario, path, config_dir=config_dir, overwrite=overwrite), 0, None


def frame_index(time_h: float, interval: float) -> int:
    k = round(time_h / interval)
    if not math.isclose(k * interval, time_h, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"time {time_h} h is not a whole number of output intervals ({interval} h)")
    return k


def time_courses(
    scenario: Scenario, state: State | None = None, hours: float | None = None, t0: float = 0.0
) -> tuple[np.ndarray, dict[str, np.ndarray], State]:
    """(times, {summary name: series}, final state) of ``scenario`` from ``state`` (default its start)
    at ``t0`` for ``hours`` (default ``run.t_end_h``), one value per output interval; no file."""
    solver = scenario.solver
    state = scenario.initial if state is None else state
    hours = scenario.config.run.t_end_h if hours is None else hours
    interval, dt = scenario.interval, scenario.plan.dt

    def at(st: State, t: float) -> dict[str, float]:
        return {k: float(v) for k, v in summaries(st, scenario.domain, scenario.options, scenario.params, t).items()}

    times, rows = [t0], [at(state, t0)]
    for k in range(round(hours / interval)):
        state = solver.advance(state, t0 + k * interval, dt, scenario.params, scenario.domain)
        times.append(t0 + (k + 1) * interval)
        rows.append(at(state, times[-1]))
    return np.array(times), {k: np.array([row[k] for row in rows]) for k in rows[0]}, state
