"""A study on a SLURM cluster, through submitit (the ``cluster`` extra): one job array, several points
per task, requeued at its time limit, tracked from the study folder.

``submit_slurm`` runs on the login node: it submits the study's unfinished points as one job array whose
tasks each run ``points_per_task`` points in one process (one JAX import; one compile per point shape,
kept in a persistent compilation cache in the study folder, ``.jax_cache``). A task that reaches its
time limit or is preempted is requeued by submitit (:class:`PointsTask` is checkpointable) and
continues where it stopped: finished points are skipped and the interrupted one resumes from its run
file. A point that fails is recorded (``runs/point_NNN.failed``) and the task goes on with the others.

Every submission is recorded in ``.slurm/jobs.json`` (job id, each task's points); ``queued`` asks
``squeue`` which of those tasks are still pending or running, so ``synovia sweep --status`` can tell
queued points from ones to resubmit, and submitting again sends only what is neither finished nor queued.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fields import atomic_write_text

from ._ensemble import run_batched
from ._study import RUNS, SLURM_JOBS, PointResult, Sweep, point_name, run_point

SLURM_DIR = SLURM_JOBS.parent.name
JOBS = SLURM_JOBS.name
JAX_CACHE = ".jax_cache"
#: Job states after which a task runs no more (squeue's names).
ENDED = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)


class ClusterError(RuntimeError):
    """submitit is missing, or SLURM refused the submission (the message says which)."""


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60
    points_per_task: int = 1
    max_parallel: int | None = None
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem_gb: float | None = None
    ensemble: bool = False  # a task advances its points in vmapped batches (solver.study._ensemble)
    #: submitit has SLURM signal the task this long before its time limit, to requeue it; None: 90 s, or half
    #: the limit when that is under 3 min (a task signalled before its Python has set submitit's handler dies)
    signal_delay_s: int | None = None
    additional: dict[str, str] = dataclasses.field(default_factory=dict)  # any other sbatch option

    def __post_init__(self) -> None:
        if self.time_min < 1:
            raise ValueError(f"time_min = {self.time_min}: a SLURM time limit is at least one minute")
        limit = self.time_min * 60
        if self.signal_delay_s is not None and not 0 < self.signal_delay_s < limit:
            raise ValueError(f"signal_delay_s = {self.signal_delay_s}: must be above 0 and under the time limit ({limit} s)")

    @property
    def signal_delay(self) -> int:
        """Seconds before the time limit at which the task is signalled to checkpoint and requeue."""
        if self.signal_delay_s is not None:
            return self.signal_delay_s
        return min(90, self.time_min * 60 // 2)


def parse_slurm_time(text: str) -> int:
    """A SLURM time limit in whole minutes (rounded up; ValueError), in sbatch's forms: ``MM``, ``MM:SS``,
    ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"--time {text!r}: expected minutes, MM:SS, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    assert a is not None  # (\d+) is not optional; b matched wherever c did
    if days is None:
        h, mins, s = (0, a, b or 0) if c is None else (a, b or 0, c)
    else:
        h, mins, s = a, b or 0, c or 0
    minutes = (days or 0) * 1440 + h * 60 + mins + (1 if s else 0)
    if minutes < 1:
        raise ValueError(f"--time {text!r}: must be at least one minute")
    return minutes


class PointsTask:
    """One array task: run some points of a study folder, one after another, in this process.

    submitit calls :meth:`checkpoint` when the task is about to reach its time limit (or is preempted):
    it asks to be requeued with the same points; on the rerun the finished ones are skipped. With
    ``ensemble`` the points that share a step plan are advanced together in vmapped batches.
    """

    def __init__(self, ensemble: bool = False):
        self.ensemble = ensemble

    def __call__(self, folder: str, tasks: Sequence[tuple[str, str, str]]) -> list[tuple[int, str, str]]:
        _use_compilation_cache(Path(folder) / JAX_CACHE)
        results = []

        def report(result: PointResult) -> None:
            message = f": {result.message}" if result.message else ""
            print(f"synovia: point {result.index} {result.status}{message}", flush=True)
            results.append((result.index, result.status, result.message))

        if self.ensemble:
            run_batched(tasks, on_result=report)
        else:
            for task in tasks:
                report(run_point(*task))
        return results

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _use_compilation_cache(folder: Path) -> None:
    """A persistent JAX compilation cache private to the study (its key holds the device kind)."""
    import jax

    folder.mkdir(exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _executor(folder: Path, options: SlurmOptions, name: str):
    try:
        import submitit
    except ImportError:
        raise ClusterError("--slurm needs submitit: pip install 'synovia[cluster]'") from None
    if shutil.which("sbatch") is None:
        raise ClusterError("--slurm: sbatch is not on PATH (run this on a SLURM login node)")
    executor = submitit.AutoExecutor(folder=folder / SLURM_DIR / "%j", cluster="slurm")
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": options.time_min,
        "cpus_per_task": options.cpus_per_task,
        "slurm_signal_delay_s": options.signal_delay,
    }
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.max_parallel:
        params["slurm_array_parallelism"] = options.max_parallel
    if options.gpus_per_task:
        params["slurm_gpus_per_task"] = options.gpus_per_task
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    if options.additional:
        params["slurm_additional_parameters"] = dict(options.additional)
    executor.update_parameters(**params)
    return executor


def submit_slurm(sweep: Sweep, folder: Path, points: Sequence[int], options: SlurmOptions) -> tuple[str, list[list[int]]]:
    """Submit ``points`` of a prepared study folder as one job array; returns its job id and each task's
    points, and records them in ``.slurm/jobs.json``."""
    folder = Path(folder).resolve()
    chunks = [list(points[k : k + options.points_per_task]) for k in range(0, len(points), options.points_per_task)]
    executor = _executor(folder, options, f"synovia-{folder.name}")
    args = [
        [(sweep.configs[i].to_toml(), sweep.base_dir, str(folder / RUNS / f"{point_name(i)}.h5")) for i in chunk]
        for chunk in chunks
    ]
    try:
        jobs = executor.map_array(PointsTask(options.ensemble), [str(folder)] * len(chunks), args)
    except Exception as err:  # submitit's FailedSubmissionError carries sbatch's message
        raise ClusterError(f"sbatch refused the job array: {str(err).strip().splitlines()[-1]}") from None
    job_id = str(jobs[0].job_id).split("_")[0]
    record = read_jobs(folder)
    record.append({"job": job_id, "tasks": chunks, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
    atomic_write_text(folder / SLURM_DIR / JOBS, json.dumps(record, indent=1) + "\n")
    return job_id, chunks


def read_jobs(folder: Path) -> list[dict[str, Any]]:
    """The study's submissions (``.slurm/jobs.json``), oldest first; [] when none."""
    try:
        return json.loads((Path(folder) / SLURM_DIR / JOBS).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise ValueError(f"'{Path(folder) / SLURM_DIR / JOBS}' cannot be read: {err}") from None


def queued(folder: Path) -> dict[int, str]:
    """Points of the study's submissions whose array task is still in SLURM's queue: point -> its state
    as ``squeue`` names it (PENDING, RUNNING, ...). Empty without submissions or without ``squeue``."""
    record = read_jobs(folder)
    if not record or shutil.which("squeue") is None:
        return {}
    ids = ",".join(r["job"] for r in record)
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-j", ids, "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    # Every state (a task being requeued is briefly REQUEUED, which squeue's default listing leaves out); squeue
    # answers an error for ids it no longer knows (ended long ago): nothing is queued then.
    states = {
        task: state
        for task, state in (line.split() for line in proc.stdout.splitlines() if len(line.split()) == 2)
        if state not in ENDED
    }
    out: dict[int, str] = {}
    for r in record:
        for k, chunk in enumerate(r["tasks"]):
            state = states.get(f"{r['job']}_{k}")
            if state is not None:
                for i in chunk:
                    out[i] = state
    return out


__all__ = ["ClusterError", "PointsTask", "SlurmOptions", "parse_slurm_time", "queued", "read_jobs", "submit_slurm"]
