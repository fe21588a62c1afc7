"""The ``synovia`` command: ``run`` a scenario, ``sweep`` it over parameter values, ``info`` on a run
file or study, ``plot`` their figures, ``configs`` to list, show and copy the shipped presets; other
packages add commands (inference: ``synth`` synthetic observations and ``fit`` parameters to observations).
A command's ``config`` argument is a file or a preset's name (``synovia run ra`` from any folder).

The command sits at the top of the stack and composes everything below it; ``solver`` never imports
``inference``. Another package adds a command through the entry-point group ``synovia.commands``
(a :class:`Command`) and a plotter for its own files through ``synovia.plotters`` (a function
``(path, out_dir, dpi=) -> list of written paths``, or None for a file that is not its kind);
the pyproject registers inference's.

Exit codes: 0 done; 1 the machine failed the run (a full disk, an I/O error; frames so far are
kept), or a sweep point failed with an unexpected error or is busy in another process (run
again); 2 bad input (config, arguments, files; refusing to overwrite; a file another process is
writing); 3 the solution diverged (frames so far are kept); 130 interrupted by Ctrl-C or SIGTERM
(frames so far are kept, the file closed).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from fields import FileBusy, __version__, temporary_path

from .io import RunFile, check_output_name, describe, repair
from .physics import summaries
from .plot import plot_run, plot_study
from .setup import (
    ConfigError,
    build_scenario,
    config_from_toml,
    copy_preset,
    enable_precision,
    find_config,
    load_config,
    preset,
    presets,
)
from .study import (
    ClusterError,
    Diverged,
    FrameCount,
    SlurmOptions,
    describe_batches,
    is_study,
    load_sweep,
    open_run,
    parse_slurm_time,
    prepare_folder,
    queued,
    read_study,
    run,
    run_study,
    start_processes,
    submit_slurm,
    write_summary,
)

EXIT_FAILED, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130
COMMANDS, PLOTTERS = "synovia.commands", "synovia.plotters"


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand another package adds (entry-point group ``synovia.commands``)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _plugins(group: str) -> dict:
    """The objects registered under an entry-point group, by name."""
    return {ep.name: ep.load() for ep in sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)}


def error(message: str, code: int = EXIT_USAGE) -> int:
    """Print ``synovia: error: message`` and return the exit code."""
    print(f"synovia: error: {message}", file=sys.stderr)
    return code


def info(message: str) -> None:
    """Print ``synovia: message`` (progress and notes go to stderr)."""
    print(f"synovia: {message}", file=sys.stderr)


def output_problem(out: Path) -> str | None:
    """Why ``out`` cannot be written, checked before any work is done (None if it can): its folder
    is missing or refuses a new file (read-only, no permission, full), or ``out`` is a folder."""
    folder = out.parent
    if not folder.is_dir():
        return f"cannot write '{out}': folder '{folder}' does not exist (create it first)"
    if out.is_dir():
        return f"cannot write '{out}': it is a folder; give a file name"
    try:
        temporary_path(out, ".probe").unlink()
    except OSError as err:
        return f"cannot write '{out}': folder '{folder}' refuses new files ({err.strerror or err})"
    return None


def _no_file(path: Path) -> str:
    if path.is_dir():
        return f"'{path}' is a folder but not a study folder (it has no study.toml; make one with synovia sweep)"
    return f"'{path}' does not exist"


def _cmd_run(args) -> int:
    try:
        processes = start_processes()  # under srun -n K: one run over every process's devices
    except Exception as err:  # the coordinator unreachable, a process missing
        return error(f"could not join the other processes of this job step (jax.distributed): {err}", EXIT_FAILED)
    if processes > 1 and args.resume:
        return error("--resume in a multi-process job step: resume it with one process (srun -n 1), then go on")
    try:
        if args.resume:
            if args.config or args.set:
                return error("--resume continues a file with the config stored in it: give no CONFIG and no --set")
            path = Path(args.resume)
            if not path.is_file():
                return error(f"cannot resume: '{path}' does not exist")
            with RunFile.open(path) as f:
                config = config_from_toml(f.attrs["config_toml"], base_dir=f.attrs.get("config_dir", "."))
            enable_precision(config)
            scenario = build_scenario(config)
            writer, start_frame, state = open_run(scenario, path, resume=True)
            out = path
        else:
            refusal, lead = None, True
            try:
                out, scenario = _new_run(args)
            except (ConfigError, FileExistsError, OSError, ValueError) as err:
                refusal = str(err)
            if processes > 1:  # every process checked the input and the output path before process 0 creates it
                refusal, lead = _agreed(refusal)
            if refusal is not None:
                return error(refusal) if refusal else EXIT_USAGE
            if scenario.config.initial["start"] == "rest":
                if lead:
                    _report_rest(scenario)
                else:
                    scenario.rest  # noqa: B018 -- found alongside process 0, so that both reach the first step together
            if not lead:  # the same computation, no file, no messages
                return _run_follower(scenario)
            config_dir = Path(args.config).resolve().parent if args.config else Path.cwd()
            writer, start_frame, state = open_run(scenario, out, config_dir=config_dir, overwrite=args.overwrite)
    except ConfigError as err:
        return error(str(err))
    except (FileExistsError, OSError, ValueError) as err:
        return error(str(err))
    except KeyboardInterrupt:
        return error("interrupted before the run started; nothing was written", EXIT_INTERRUPTED)

    grid = scenario.geometry.grid
    if start_frame >= scenario.n_frames:
        writer.close()
        info(f"'{out}' already holds every frame to t = {scenario.n_frames * scenario.interval:g} h; nothing to do")
        return 0
    info(
        f"{'resuming' if args.resume else 'running'} {grid.ndim}D grid {'x'.join(map(str, grid.shape))} "
        f"({grid.size} cells, {grid.spacing[0]:g} mm), {scenario.config.run.precision}, "
        f"dt = {scenario.plan.dt:.4g} h x {scenario.plan.substeps} steps per {scenario.interval:g} h frame, "
        f"to t = {scenario.n_frames * scenario.interval:g} h -> {out}"
    )
    try:
        with writer:
            result = run(scenario, writer, start_frame=start_frame, state=state, progress=not args.quiet, stop=stop_requested)
    except OSError as err:  # the disk filled, the file system failed
        code = error(
            f"writing '{out}' failed: {err.strerror or err}; make room, then continue its finished frames with: "
            f"synovia run --resume {out}",
            EXIT_FAILED,
        )
        if writer.abandoned:  # HDF5 would crash closing the file it could not write, at exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except Diverged as err:
        hint = (
            " or run.stepper = 'ssp_rk3' (RKL2 super-steps can undershoot at sharp features)" if scenario.plan.rkl2_stages else ""
        )
        return error(f"{err}; frames up to that time are in '{out}'; try a smaller run.safety or run.dt_h{hint}", EXIT_DIVERGED)
    except KeyboardInterrupt:
        return error(f"interrupted; finished frames are in '{out}'; continue with: synovia run --resume {out}", EXIT_INTERRUPTED)
    info(
        f"done: {result.steps} steps in {result.wall_s:.1f} s "
        f"({result.steps / max(result.wall_s, 1e-9):.0f} steps/s); wrote '{out}'"
    )
    return 0


def _new_run(args):
    """``run``'s output path and scenario for a new file, after checking both (raises ConfigError,
    FileExistsError, OSError or ValueError with the message to print)."""
    out = _run_output(args)
    if problem := output_problem(out):
        raise ValueError(problem)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"output file '{out}' exists; pass --overwrite to replace it, or --resume {out} to continue it")
    check_output_name(out, args.overwrite)
    config = load_config(args.config, args.set or [])
    enable_precision(config)
    return out, build_scenario(config)


def _agreed(refusal: str | None) -> tuple[str | None, bool]:
    """In a multi-process run, whether every process found the input and the output path good (they see
    the same files): (None, is process 0) when all did; else the message this process prints ("" for
    none: process 0 speaks for all, a later process only when process 0 found nothing wrong)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    rank = jax.process_index()
    try:
        refused = np.asarray(multihost_utils.process_allgather(np.int32(refusal is not None))).reshape(-1)
    except Exception as err:  # a process died before it checked
        return (f"could not reach the other processes of this job step (jax.distributed): {err}" if rank == 0 else ""), False
    if not refused.any():
        return None, rank == 0
    if refusal is not None and (rank == 0 or not refused[0]):
        return (refusal if rank == 0 else f"process {rank} of this job step: {refusal}"), False
    if rank == 0:
        return f"process(es) {', '.join(map(str, np.flatnonzero(refused)))} of this job step refused the run (above)", False
    return "", False


def _run_output(args) -> Path:
    """``run``'s output file: ``-o``, else the config's name with ``.h5`` (knee2d.h5 without a config)."""
    return Path(args.output) if args.output else Path((Path(args.config).stem if args.config else "knee2d") + ".h5")


def _run_follower(scenario) -> int:
    """A process other than the first of a multi-process run: the same computation, no file, no messages
    (process 0 reports and writes)."""
    import jax

    try:
        run(scenario, FrameCount(), progress=False, stop=stop_requested)
    except jax.errors.JaxRuntimeError as err:  # process 0 died or failed: it says why, when it can
        return error(f"process {jax.process_index()} of this job step lost the others: {err}", EXIT_FAILED)
    except Diverged:
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _report_rest(scenario) -> None:
    """Find the scenario's resting state (the run's start), saying what it is and how long it took."""
    info("finding the resting joint (no injury, no drug): relaxing to a steady state ...")
    rest = scenario.rest
    fluid = {k: float(v) for k, v in summaries(rest.state, scenario.domain, scenario.options, scenario.params).items()}
    settled = "steady" if rest.converged else f"NOT settled (still changing {rest.change:.1e} per day)"
    info(
        f"resting joint {settled} after {rest.time_h:g} h simulated ({rest.wall_s:.1f} s): synovial fluid TNF "
        f"{fluid['synovial_fluid_tnf']:.3g} pg/mL, IL-1 {fluid['synovial_fluid_il1']:.3g} pg/mL, white cells "
        f"{fluid['synovial_fluid_leukocytes']:.4g} /uL"
    )


def _list_points(sweep, chosen, ensemble: bool = False) -> int:
    """``sweep --dry-run``: every point (or the chosen ones) and its values, one line each, as CSV on
    stdout; how many on stderr (with ``--ensemble``, the batches too). Nothing is written."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["point", *sweep.keys])
    for k in chosen or range(len(sweep)):
        writer.writerow([k, *sweep.values[k]])
    info(f"sweep of {', '.join(sweep.keys)} ({sweep.combine}): {len(sweep)} points; a dry run: nothing was run or written")
    if ensemble:
        batches, refused, by_step = describe_batches(sweep, chosen or range(len(sweep)))
        for indices, line in batches:
            info(f"batch of point(s) {' '.join(map(str, indices))}: {line}")
        for k, why in refused.items():
            info(f"point {k} would be refused: {why}")
        if by_step:
            info("points batch together when their grids and step plans agree; run.dt_h = the smallest dt above makes them agree")
    return 0


#: A point's state for ``sweep --status``: what to do about it.
STATUS_KINDS = ("done", "running", "queued", "pending", "failed", "refused", "diverged")


def _status_kinds(table, in_queue: dict[int, str]) -> list[str]:
    """Each point's state: done, running (a process holds it, or its SLURM task runs), queued (its SLURM
    task waits), pending (not run or incomplete), or its marker (failed, refused, diverged)."""
    kinds = []
    for i, status in enumerate(table.status):
        kind = status.split(" (")[0]
        if kind == "complete":
            kinds.append("done")
        elif kind == "running" or in_queue.get(i) in ("RUNNING", "COMPLETING", "CONFIGURING"):
            kinds.append("running")
        elif i in in_queue:
            kinds.append("queued")
        elif kind in ("not run", "incomplete"):
            kinds.append("pending")
        else:
            kinds.append(kind)
    return kinds


def _unfinished(kinds: list[str]) -> list[int]:
    """Points to (re)submit: neither done, nor running or queued, nor diverged (not retried)."""
    return [i for i, k in enumerate(kinds) if k in ("pending", "failed", "refused")]


def _cmd_status(folder: Path) -> int:
    """``sweep --status DIR``: each point's state, counts, and the points still to run."""
    try:
        table = read_study(folder, series=False)
        in_queue = queued(folder)
    except (OSError, ValueError) as err:
        return error(str(err))
    kinds = _status_kinds(table, in_queue)
    print(table.text(), end="")
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in STATUS_KINDS if k in kinds)
    print(f"status: {counts}")
    todo = _unfinished(kinds)
    if todo:
        print(f"to run: {' '.join(map(str, todo))}")
        info(
            f"{len(todo)} point(s) to run: the same sweep command runs (or with --slurm submits) only these; "
            f"or --point {' '.join(map(str, todo))}"
        )
    return 0


def _cmd_collect(folder: Path) -> int:
    """``sweep --collect DIR``: summary.csv and study.h5 from the points' rows."""
    try:
        table = write_summary(folder)
    except (OSError, ValueError) as err:
        return error(str(err))
    print(table.text(), end="")
    info(f"{int(table.complete.sum())} of {len(table.values)} points complete; wrote '{folder / 'summary.csv'}' and "
         f"'{folder / 'study.h5'}'")  # fmt: skip
    return 0


def _slurm_options(args) -> SlurmOptions:
    """The --slurm options, checked (ValueError names the flag)."""
    for flag, value, least in (
        ("--points-per-task", args.points_per_task, 1),
        ("--max-parallel", args.max_parallel, 1),
        ("--cpus-per-task", args.cpus_per_task, 1),
        ("--gpus-per-task", args.gpus_per_task, 0),
    ):
        if value is not None and value < least:
            raise ValueError(f"{flag} {value}: must be at least {least}")
    if args.mem_gb is not None and not args.mem_gb > 0:
        raise ValueError(f"--mem-gb {args.mem_gb}: must be positive")
    extra = {}
    for item in args.slurm_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm-arg {item!r}: expected KEY=VALUE (an sbatch option without its dashes)")
        extra[key.strip().lstrip("-").replace("-", "_")] = value
    return SlurmOptions(
        partition=args.partition,
        time_min=parse_slurm_time(args.time),
        points_per_task=args.points_per_task,
        ensemble=args.ensemble,
        max_parallel=args.max_parallel,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        mem_gb=args.mem_gb,
        additional=extra,
    )


def _cmd_slurm(args, sweep, out: Path, chosen) -> int:
    """``sweep --slurm``: submit the unfinished points (of the chosen ones) as one job array."""
    try:
        options = _slurm_options(args)
        table = read_study(out, series=False)
        kinds = _status_kinds(table, queued(out))
    except (OSError, ValueError) as err:
        return error(str(err))
    todo = [i for i in _unfinished(kinds) if chosen is None or i in chosen]
    busy = sum(k in ("running", "queued") for k in kinds)
    if not todo:
        info(
            f"nothing to submit: of {len(sweep)} points {kinds.count('done')} done, {busy} running or queued, "
            f"{kinds.count('diverged')} diverged; see synovia sweep --status {out}"
        )
        return 0
    try:
        job, tasks = submit_slurm(sweep, out, todo, options)
    except (ClusterError, OSError, ValueError) as err:
        return error(str(err))
    print(job)
    info(
        f"submitted job array {job}: {len(todo)} point(s) in {len(tasks)} task(s) of up to {options.points_per_task}"
        + (f" ({busy} already running or queued)" if busy else "")
        + f"; track with: synovia sweep --status {out}"
    )
    return 0


def _cmd_sweep(args) -> int:
    if args.status or args.collect:
        if args.config or args.output:
            return error("--status and --collect take the study folder alone: synovia sweep --status DIR")
        return _cmd_status(Path(args.status)) if args.status else _cmd_collect(Path(args.collect))
    if not args.config:
        return error("synovia sweep needs a sweep config (or --status DIR, --collect DIR)")
    out = Path(args.output) if args.output else Path(Path(args.config).stem)  # sweep_ra.toml -> sweep_ra/
    try:
        sweep = load_sweep(args.config, args.set or [])
        chosen = sorted(set(args.point)) if args.point else None
        if chosen and (bad := [k for k in chosen if not 0 <= k < len(sweep)]):
            return error(f"--point {bad[0]}: this sweep has points 0..{len(sweep) - 1}")
        if args.jobs < 1:
            return error(f"--jobs {args.jobs}: must be at least 1")
        if args.ensemble and args.jobs > 1:
            return error("--ensemble and --jobs N: choose one (--ensemble runs the points in one process, over its devices)")
        if args.dry_run:
            return _list_points(sweep, chosen, args.ensemble)
        if args.slurm:
            _slurm_options(args)  # bad flags before the folder is made
        prepare_folder(sweep, out, overwrite=args.overwrite)
    except (ValueError, OSError) as err:  # ConfigError is a ValueError
        return error(str(err))
    if args.slurm:
        return _cmd_slurm(args, sweep, out, chosen)
    count = len(chosen) if chosen else len(sweep)
    info(
        f"sweep of {', '.join(sweep.keys)} ({sweep.combine}): {len(sweep)} points"
        + (f", running {count} of them" if chosen else "")
        + (f" in {args.jobs} processes" if args.jobs > 1 and count > 1 else "")
        + (" in vmapped batches" if args.ensemble else "")
        + f" -> {out}/"
    )
    bar = tqdm(total=count, unit="point", disable=args.quiet, desc="synovia sweep", dynamic_ncols=True)
    failed: dict[str, list[int]] = {"refused": [], "failed": [], "diverged": [], "busy": []}

    def on_result(result) -> None:
        values = ", ".join(f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                           for k, v in zip(sweep.keys, sweep.values[result.index]))  # fmt: skip
        if result.status in failed:
            failed[result.status].append(result.index)
            bar.write(f"synovia: point {result.index} ({values}) {result.status}: {result.message}", file=sys.stderr)
        bar.set_postfix_str(f"point {result.index} {result.status} ({values})", refresh=False)
        bar.update()

    try:  # main() turns SIGTERM into KeyboardInterrupt: it stops the workers like Ctrl-C
        with bar:
            run_study(sweep, out, points=chosen, jobs=args.jobs, ensemble=args.ensemble, on_result=on_result)
    except KeyboardInterrupt:
        _summary_or_none(out)
        return error(f"interrupted; finished frames are kept; run the same command again to continue '{out}'", EXIT_INTERRUPTED)
    except (ValueError, OSError) as err:  # ConfigError is a ValueError
        return error(str(err))
    # An array task (--point) leaves the study's shared files to whichever task finishes it, or to --collect.
    table = _summary_or_none(out) if chosen is None or _settled(out) else None
    if table is not None:
        print(table.text(), end="")
        info(
            f"{int(table.complete.sum())} of {len(sweep)} points complete; wrote '{out / 'summary.csv'}'; "
            f"plot with: synovia plot {out} -o FIGS"
        )
    points = {k: ", ".join(map(str, v)) for k, v in failed.items()}
    if failed["refused"]:
        return error(f"the config of point(s) {points['refused']} was refused (messages above)")
    if failed["failed"]:
        return error(f"point(s) {points['failed']} failed (messages above); run the same command again to retry", 1)
    if failed["diverged"]:
        return error(f"point(s) {points['diverged']} diverged (messages in {out / 'runs'}/point_*.diverged)", EXIT_DIVERGED)
    if failed["busy"]:
        return error(f"point(s) {points['busy']} are being run by another process; run this command again when it is done", 1)
    return 0


#: set by SIGTERM or SIGINT: the KeyboardInterrupt the handler raises is lost when it lands in a callback
#: Python ignores exceptions from (a weakref's), so the run loop also checks this between frames
_STOP = threading.Event()


def stop_requested() -> bool:
    """True once SIGTERM or SIGINT asked the command to stop: long loops check it between steps, since the
    KeyboardInterrupt the signal raises can be lost."""
    return _STOP.is_set()


def _raise_interrupt(signum, frame) -> None:
    _STOP.set()
    raise KeyboardInterrupt


def _report_unless_failed_write(report, kind, value, tb) -> None:
    """``report`` (sys.excepthook), less h5py's reports of objects it cannot release after HDF5 failed
    to write (it prints them itself, from its deallocators): the command reports that write once."""
    if not (kind is RuntimeError and "file write failed" in str(value)):
        report(kind, value, tb)


def _report_unless_interrupt(unraisable) -> None:
    """Python's report of an exception raised where it cannot propagate, less a signal's
    KeyboardInterrupt lost that way (``_STOP`` holds it)."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def _settled(out: Path) -> bool:
    """Whether every point of a study is done, diverged or refused (none pending, running or failed)."""
    try:
        return all(s in ("complete", "diverged", "refused") for s in read_study(out, series=False).status)
    except (OSError, ValueError):
        return False


def _summary_or_none(out: Path):
    """Write the study's summary.csv; on a file-system error, say so and go on (None)."""
    try:
        return write_summary(out)
    except (OSError, ValueError) as err:
        info(f"could not write '{out / 'summary.csv'}': {err}")
        return None


def _cmd_info(args) -> int:
    path = Path(args.file)
    if is_study(path):
        try:
            print(read_study(path).text(), end="")
        except (OSError, ValueError) as err:
            return error(str(err))
        return 0
    if not path.is_file():
        return error(_no_file(path))
    try:
        text = describe(path, config=args.show_config)
    except (OSError, ValueError) as err:
        return error(f"cannot read '{path}': {err}" if isinstance(err, OSError) else str(err))
    print(text)
    return 0


def _cmd_repair(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        return error(_no_file(path))
    try:
        frames = repair(path)
    except FileBusy as err:
        return error(str(err))
    except (OSError, ValueError) as err:
        return error(f"cannot repair '{path}': {err}" if isinstance(err, OSError) else str(err))
    info(f"'{path}' opens in any HDF5 reader; it holds {frames} frames")
    return 0


def _slice_point(text: str) -> tuple[float, float, float]:
    """``Z,Y,X`` in mm, for ``plot --slice``."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X in mm (three numbers), got {text!r}")
    return values


def _cmd_plot(args) -> int:
    path = Path(args.file)
    if not args.output:
        args.output = str(path.with_name(f"{path.name.removesuffix('.h5')}_figs"))
    if is_study(path):
        if given := [o for o, v in (("--times", args.times), ("--slice", args.slice), ("--movie", args.movie)) if v]:
            return error(f"{given[0]} applies to a run file; plot one point with: synovia plot {path}/runs/point_000.h5 -o DIR")
        try:
            written = plot_study(path, args.output, dpi=args.dpi, log=args.log)
        except (OSError, ValueError) as err:
            return error(str(err))
        for out in written:
            print(out)
        return 0
    if not path.is_file():
        return error(_no_file(path))
    for plotter in _plugins(PLOTTERS).values():  # other packages' files (inference: fit reports)
        try:
            written = plotter(path, args.output, dpi=args.dpi)
        except (OSError, ValueError) as err:
            return error(str(err))
        if written is not None:
            for out in written:
                print(out)
            return 0
    try:
        written = plot_run(
            path,
            args.output,
            times=args.times,
            log=args.log,
            slice_point_mm=args.slice,
            movie=args.movie,
            movie_species=args.species,
            dpi=args.dpi,
        )
    except (OSError, ValueError) as err:
        return error(str(err))
    for out in written:
        print(out)
    return 0


def _cmd_configs(args) -> int:
    """``configs list | show NAME | copy NAME [DIR]``: the shipped presets."""
    try:
        if args.action == "list":
            table = presets()
            width = max(map(len, table))
            for p in table.values():
                print(f"{p.name:<{width}}  {p.kind:<5}  {p.description}")
            info("run one from any folder: synovia run NAME (sweep NAME, fit NAME); read it: synovia configs show NAME; "
                 "copy it here to edit: synovia configs copy NAME")  # fmt: skip
        elif args.action == "show":
            print(preset(args.name).path.read_text(encoding="utf-8"), end="")
        else:
            copied = copy_preset(args.name, args.dest, overwrite=args.overwrite)
            for c in copied:
                print(c.path)
            notes = "".join(f"; '{c.path}' {c.status}" for c in copied if c.status != "copied")
            kind = preset(args.name).kind
            info(f"copied preset '{args.name}' ({len(copied)} file(s)){notes}; run it with: synovia {kind} {copied[0].path}")
    except ConfigError as err:
        return error(str(err))
    except BrokenPipeError:  # synovia configs list | head: main() ends quietly
        raise
    except OSError as err:  # no room, no right to write
        what = f"cannot copy preset '{args.name}'" if args.action == "copy" else "cannot read the presets"
        return error(f"{what}: {err.strerror or err} ({err.filename})" if err.filename else f"{what}: {err}")
    return 0


def _config_argument(args) -> None:
    """A command's CONFIG is a file or a preset's name (synovia configs list): ``args.config`` becomes the
    file's path; :class:`ConfigError` (listing the presets) if it names neither. Left as given where the
    command takes no CONFIG in that mode (``run --resume``, ``sweep --status``/``--collect``): it says so."""
    if not getattr(args, "config", None):
        return
    if (args.command == "run" and args.resume) or (args.command == "sweep" and (args.status or args.collect)):
        return
    args.config = find_config(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synovia", description="Simulate inflammation in a synovial joint (JAX PDE solver).")
    parser.add_argument("--version", action="version", version=f"synovia {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a scenario and write an HDF5 file")
    p.add_argument(
        "config",
        nargs="?",
        help="TOML scenario (e.g. configs/knee2d.toml) or a preset's name (e.g. knee2d, ra: synovia configs list); "
        "omitted: all defaults (2D knee)",
    )
    p.add_argument("-o", "--output", help="output HDF5 file (default: CONFIG's name with .h5)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--resume", metavar="FILE", help="continue an interrupted run file to its end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("sweep", help="run a scenario at every combination of chosen config values (a study folder)")
    p.add_argument("config", nargs="?", help="sweep config TOML (e.g. configs/sweep_knee2d.toml) or a preset's name")
    p.add_argument(
        "-o", "--output", metavar="DIR", help="study folder (default: CONFIG's name; created; run again to continue it)"
    )
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key of the base scenario (repeatable)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="run points in N worker processes (default 1)")
    p.add_argument(
        "--point", type=int, nargs="+", metavar="K", help="run only these points (0-based), e.g. one per cluster array task"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a different sweep's runs in the output folder")
    p.add_argument("--dry-run", action="store_true", help="list the points and their values (CSV); run and write nothing")
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="advance points with the same grid and step plan together (jax.vmap), split over the process's "
        "devices (with --slurm: in each task)",
    )
    p.add_argument("--status", metavar="DIR", help="each point's state in study DIR (done, running, queued, pending, ...)")
    p.add_argument("--collect", metavar="DIR", help="write study DIR's summary.csv and study.h5 from its points")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("SLURM (pip install 'synovia[cluster]')")
    g.add_argument("--slurm", action="store_true", help="submit the unfinished points as one SLURM job array and return")
    g.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    g.add_argument("--time", default="1:00:00", help="time limit of a task, as for sbatch (default 1:00:00); requeued at it")
    g.add_argument("--points-per-task", type=int, default=1, metavar="M", help="points each task runs in one process (default 1)")
    g.add_argument("--max-parallel", type=int, metavar="N", help="tasks running at once (default: no limit)")
    g.add_argument("--cpus-per-task", type=int, default=1, metavar="N", help="CPU cores of a task (default 1)")
    g.add_argument("--gpus-per-task", type=int, default=0, metavar="N", help="GPUs of a task (default 0)")
    g.add_argument("--mem-gb", type=float, metavar="G", help="memory of a task, GB (default: the partition's)")
    g.add_argument("--slurm-arg", action="append", metavar="KEY=VALUE", help="any other sbatch option, e.g. account=abc")
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("info", help="print what a run file or a study folder holds")
    p.add_argument("file", help="run file (.h5) or study folder")
    p.add_argument("--config", dest="show_config", action="store_true", help="also print the run's full config (TOML)")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("repair", help="make a killed run's file open in any HDF5 reader (in place, every frame kept)")
    p.add_argument("file", help="run file (.h5)")
    p.set_defaults(func=_cmd_repair)
    p = sub.add_parser("plot", help="draw the figures of a run file, a fit report or a study folder")
    p.add_argument("file", help="run file (.h5), fit report (.h5) or study folder (from synovia sweep)")
    p.add_argument("-o", "--output", metavar="DIR", help="folder for the figures (default: FILE's name with _figs; created)")
    p.add_argument(
        "--times", type=float, nargs="+", metavar="H", help="times to map, h (nearest frame; default: 4 spread over the run)"
    )
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--log", dest="log", action="store_const", const=True, help="log colour scale (default: automatic)")
    scale.add_argument("--linear", dest="log", action="store_const", const=False, help="linear colour scale")
    p.add_argument("--slice", type=_slice_point, metavar="Z,Y,X", help="3D: point (mm) the slices pass through (default: centre)")
    p.add_argument("--movie", action="store_true", help="also animate one species over all frames (MP4 with ffmpeg, else GIF)")
    p.add_argument("--species", default="tnf", help="species of the movie (default: tnf)")
    p.add_argument("--dpi", type=int, default=120, help="PNG resolution (default: 120)")
    p.set_defaults(func=_cmd_plot, log=None)
    p = sub.add_parser("configs", help="list, show or copy the shipped presets (run, sweep and fit configs)")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="each preset's name, kind (the command that takes it) and description")
    q = actions.add_parser("show", help="print a preset's TOML")
    q.add_argument("name", help="preset name (synovia configs list)")
    q = actions.add_parser("copy", help="copy a preset and the files it reads into a folder, to edit")
    q.add_argument("name", help="preset name (synovia configs list)")
    q.add_argument("dest", nargs="?", default=".", metavar="DIR", help="folder (default: the current one; made if missing)")
    q.add_argument("--overwrite", action="store_true", help="replace files that are there and differ")
    p.set_defaults(func=_cmd_configs)
    for command in _plugins(COMMANDS).values():  # other packages' commands (inference: fit, synth)
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A job manager's SIGTERM (kill, timeout, a cluster's time limit) stops a command like Ctrl-C:
    # frames so far kept, files closed, exit 130.
    _STOP.clear()
    handlers = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    hook, sys.unraisablehook = sys.unraisablehook, _report_unless_interrupt
    excepthook, sys.excepthook = sys.excepthook, functools.partial(_report_unless_failed_write, sys.excepthook)
    try:
        args = build_parser().parse_args(argv)
        try:
            _config_argument(args)
        except ConfigError as err:
            return error(str(err))
        code = args.func(args)
        # a signal whose KeyboardInterrupt was lost in a callback, after the last check
        return error("interrupted", EXIT_INTERRUPTED) if _STOP.is_set() else code
    except KeyboardInterrupt:
        return error("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # output piped to a reader that stopped (synovia info FILE | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        sys.unraisablehook, sys.excepthook = hook, excepthook
        for s, handler in handlers.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
