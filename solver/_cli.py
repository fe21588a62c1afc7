"""The ``synovia`` command: ``run`` a scenario, ``sweep`` it over parameter values, ``info`` on a run
file or study, ``plot`` their figures, ``synth`` synthetic observations and ``fit`` parameters to
observations.

Exit codes: 0 done; 1 a sweep point failed with an unexpected error or is busy in another
process (run again); 2 bad input (config, arguments, refusing to overwrite); 3 the solution
diverged (frames so far are kept); 130 interrupted (frames so far are kept).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def _error(message: str, code: int = EXIT_USAGE) -> int:
    print(f"synovia: error: {message}", file=sys.stderr)
    return code


def _info(message: str) -> None:
    print(f"synovia: {message}", file=sys.stderr)


def _missing_folder(out: Path) -> str | None:
    """Why ``out`` cannot be created, checked before any work is done (None if it can)."""
    folder = out.parent
    if not folder.is_dir():
        return f"cannot write '{out}': folder '{folder}' does not exist (create it first)"
    return None


def _no_file(path: Path) -> str:
    if path.is_dir():
        return f"'{path}' is a folder but not a study folder (it has no study.toml; make one with synovia sweep)"
    return f"'{path}' does not exist"


def _cmd_run(args) -> int:
    from ._config import ConfigError, config_from_toml, load_config
    from ._output import RunFile
    from ._run import Diverged, new_writer, resume, run
    from ._scenario import build_scenario

    try:
        if args.resume:
            if args.config or args.set:
                return _error("--resume continues a file with the config stored in it: give no CONFIG and no --set")
            path = Path(args.resume)
            if not path.is_file():
                return _error(f"cannot resume: '{path}' does not exist")
            with RunFile.open(path) as f:
                config = config_from_toml(f.attrs["config_toml"], base_dir=f.attrs.get("config_dir", "."))
            scenario = build_scenario(config)
            writer, start_frame, state = resume(scenario, path)
            out = path
        else:
            config = load_config(args.config, args.set or [])
            scenario = build_scenario(config)
            out = Path(args.output) if args.output else Path((Path(args.config).stem if args.config else "knee2d") + ".h5")
            if out.exists() and not args.overwrite:
                return _error(f"output file '{out}' exists; pass --overwrite to replace it, or --resume {out} to continue it")
            if problem := _missing_folder(out):
                return _error(problem)
            if scenario.config.initial["start"] == "rest":
                _report_rest(scenario)
            config_dir = Path(args.config).resolve().parent if args.config else Path.cwd()
            writer = new_writer(scenario, out, config_dir=config_dir, overwrite=args.overwrite)
            start_frame, state = 0, None
    except ConfigError as err:
        return _error(str(err))
    except (FileExistsError, OSError, ValueError) as err:
        return _error(str(err))
    except KeyboardInterrupt:
        return _error("interrupted before the run started; nothing was written", EXIT_INTERRUPTED)

    grid = scenario.geometry.grid
    if start_frame >= scenario.n_frames:
        writer.close()
        _info(f"'{out}' already holds every frame to t = {scenario.n_frames * scenario.interval:g} h; nothing to do")
        return 0
    _info(
        f"{'resuming' if args.resume else 'running'} {grid.ndim}D grid {'x'.join(map(str, grid.shape))} "
        f"({grid.size} cells, {grid.spacing[0]:g} mm), {scenario.config.run.precision}, "
        f"dt = {scenario.dt:.4g} h x {scenario.n_substeps} steps per {scenario.interval:g} h frame, "
        f"to t = {scenario.n_frames * scenario.interval:g} h -> {out}"
    )
    try:
        with writer:
            result = run(scenario, writer, start_frame=start_frame, state=state, progress=not args.quiet)
    except Diverged as err:
        hint = " or run.stepper = 'ssp_rk3' (RKL2 super-steps can undershoot at sharp features)" if scenario.stages else ""
        return _error(f"{err}; frames up to that time are in '{out}'; try a smaller run.safety or run.dt_h{hint}", EXIT_DIVERGED)
    except KeyboardInterrupt:
        return _error(f"interrupted; finished frames are in '{out}'; continue with: synovia run --resume {out}", EXIT_INTERRUPTED)
    _info(
        f"done: {result.steps} steps in {result.wall_s:.1f} s "
        f"({result.steps / max(result.wall_s, 1e-9):.0f} steps/s); wrote '{out}'"
    )
    return 0


def _report_rest(scenario) -> None:
    """Find the scenario's resting state (the run's start), saying what it is and how long it took."""
    from ._model import summaries

    _info("finding the resting joint (no injury, no drug): relaxing to a steady state ...")
    rest = scenario.rest
    fluid = {k: float(v) for k, v in summaries(rest.state, scenario.domain, scenario.options, scenario.params).items()}
    settled = "steady" if rest.converged else f"NOT settled (still changing {rest.change:.1e} per day)"
    _info(
        f"resting joint {settled} after {rest.time_h:g} h simulated ({rest.wall_s:.1f} s): synovial fluid TNF "
        f"{fluid['synovial_fluid_tnf']:.3g} pg/mL, IL-1 {fluid['synovial_fluid_il1']:.3g} pg/mL, white cells "
        f"{fluid['synovial_fluid_leukocytes']:.4g} /uL"
    )


def _cmd_sweep(args) -> int:
    from tqdm import tqdm

    from ._study import load_sweep, prepare_folder, run_study

    out = Path(args.output)
    try:
        sweep = load_sweep(args.config, args.set or [])
        chosen = sorted(set(args.point)) if args.point else None
        if chosen and (bad := [k for k in chosen if not 0 <= k < len(sweep)]):
            return _error(f"--point {bad[0]}: this sweep has points 0..{len(sweep) - 1}")
        if args.jobs < 1:
            return _error(f"--jobs {args.jobs}: must be at least 1")
        prepare_folder(sweep, out, overwrite=args.overwrite)
    except (ValueError, OSError) as err:  # ConfigError is a ValueError
        return _error(str(err))
    count = len(chosen) if chosen else len(sweep)
    _info(
        f"sweep of {', '.join(sweep.keys)} ({sweep.combine}): {len(sweep)} points"
        + (f", running {count} of them" if chosen else "")
        + (f" in {args.jobs} processes" if args.jobs > 1 and count > 1 else "")
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

    # A job manager's SIGTERM (kill, timeout, a cluster's time limit) stops the workers like Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with bar:
            run_study(sweep, out, points=chosen, jobs=args.jobs, on_result=on_result)
    except KeyboardInterrupt:
        _summary_or_none(out)
        return _error(f"interrupted; finished frames are kept; run the same command again to continue '{out}'", EXIT_INTERRUPTED)
    except (ValueError, OSError) as err:  # ConfigError is a ValueError
        return _error(str(err))
    finally:
        signal.signal(signal.SIGTERM, previous)
    table = _summary_or_none(out)
    if table is not None:
        print(table.text(), end="")
        _info(
            f"{int(table.complete.sum())} of {len(sweep)} points complete; wrote '{out / 'summary.csv'}'; "
            f"plot with: synovia plot {out} -o FIGS"
        )
    points = {k: ", ".join(map(str, v)) for k, v in failed.items()}
    if failed["refused"]:
        return _error(f"the config of point(s) {points['refused']} was refused (messages above)")
    if failed["failed"]:
        return _error(f"point(s) {points['failed']} failed (messages above); run the same command again to retry", 1)
    if failed["diverged"]:
        return _error(f"point(s) {points['diverged']} diverged (messages in {out / 'runs'}/point_*.diverged)", EXIT_DIVERGED)
    if failed["busy"]:
        return _error(f"point(s) {points['busy']} are being run by another process; run this command again when it is done", 1)
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _summary_or_none(out: Path):
    """Write the study's summary.csv; on a file-system error, say so and go on (None)."""
    from ._study import write_summary

    try:
        return write_summary(out)
    except (OSError, ValueError) as err:
        _info(f"could not write '{out / 'summary.csv'}': {err}")
        return None


def _cmd_info(args) -> int:
    from ._output import describe
    from ._study import is_study, read_study

    path = Path(args.file)
    if is_study(path):
        try:
            print(read_study(path).text(), end="")
        except (OSError, ValueError) as err:
            return _error(str(err))
        return 0
    if not path.is_file():
        return _error(_no_file(path))
    try:
        print(describe(path))
    except OSError as err:
        return _error(f"cannot read '{path}': {err}")
    return 0


def _cmd_fit(args) -> int:
    import inference
    from inference._config import load_fit_config

    from ._config import ConfigError

    out = Path(args.output)
    try:
        fc = load_fit_config(args.config, args.set or [])
        if out.exists() and not (args.overwrite or args.resume):
            return _error(f"output file '{out}' exists; pass --overwrite to replace it, or --resume to continue that fit")
        if args.resume and not out.is_file():
            return _error(f"cannot resume: '{out}' does not exist")
        if problem := _missing_folder(out):
            return _error(problem)
        kwargs = fc.fit_kwargs()
        problem = inference.Problem(
            fc.scenario, fc.observations, {p.name: p for p in fc.parameters}, log_residuals=kwargs.pop("log_residuals")
        )
        if note := problem.start_note():
            _info(f"note: {note}")
        problem_note = f"{problem.n} parameters, {fc.observations.count} observed values from '{fc.observations_path}'"
        _info(
            f"{'resuming' if args.resume else 'fitting'} {problem_note}; {fc.fit.optimizer}, {fc.fit.starts} start(s), "
            f"{problem.operator.n_frames} frames x {problem.n_substeps} steps of {problem.dt:.4g} h -> {out}"
        )
        result = inference.fit(
            problem=problem,
            **kwargs,
            progress=not args.quiet,
            report=out,
            resume=args.resume,
            settings_toml=fc.toml,
        )
    except (ConfigError, inference.ObservationError, inference.FitError) as err:
        return _error(str(err))
    except KeyboardInterrupt:
        return _error(
            f"interrupted; the fit so far is in '{out}'; continue with: synovia fit {args.config} -o {out} --resume",
            EXIT_INTERRUPTED,
        )
    toml_path = out.with_name(out.stem + "_fitted.toml")
    toml_path.write_text(
        f"# Fitted by `synovia fit {args.config}` ({result.status}, {result.iterations} iterations, loss {result.loss:.6g}); "
        f"report: {out.name}\n" + result.fitted_config().to_toml()
    )
    from inference._plot import plot_fit

    figures = plot_fit(out, out.parent, stem=out.stem)
    print(result.summary())
    _info(
        f"{result.status} after {result.iterations} iterations in {result.wall_s:.1f} s, loss {result.loss:.6g}; "
        f"wrote '{out}', '{toml_path}', " + ", ".join(f"'{f}'" for f in figures)
    )
    return 0


def _cmd_synth(args) -> int:
    import inference

    from ._config import ConfigError, load_config

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        return _error(f"output file '{out}' exists; pass --overwrite to replace it")
    if problem := _missing_folder(out):
        return _error(problem)
    try:
        config = load_config(args.config, args.set or [])
        obs = inference.synthesize(
            config,
            times=args.times,
            species=args.species,
            where=args.where,
            map_times=args.maps or (),
            map_species=args.map_species,
            noise=args.noise,
            seed=args.seed,
        )
        if out.suffix.lower() == ".csv" and obs.maps:
            return _error("maps need an HDF5 file: use -o NAME.h5, or leave out --maps")
        inference.save_observations(obs, out)
    except (ConfigError, inference.ObservationError) as err:
        return _error(str(err))
    _info(f"wrote {len(obs)} observations and {len(obs.maps)} map(s) ({obs.count} values, noise {args.noise:g}) to '{out}'")
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


def _is_fit_report(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == "synovia-fit"
    except OSError:
        return False


def _cmd_plot(args) -> int:
    from ._plot import plot_run
    from ._study import is_study

    path = Path(args.file)
    if is_study(path):
        from ._plot_study import plot_study

        if given := [o for o, v in (("--times", args.times), ("--slice", args.slice), ("--movie", args.movie)) if v]:
            return _error(f"{given[0]} applies to a run file; plot one point with: synovia plot {path}/runs/point_000.h5 -o DIR")
        try:
            written = plot_study(path, args.output, dpi=args.dpi, log=args.log)
        except (OSError, ValueError) as err:
            return _error(str(err))
        for out in written:
            print(out)
        return 0
    if not path.is_file():
        return _error(_no_file(path))
    if _is_fit_report(path):
        from inference._plot import plot_fit

        try:
            written = plot_fit(path, args.output, dpi=args.dpi)
        except (OSError, ValueError) as err:
            return _error(str(err))
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
        return _error(str(err))
    for out in written:
        print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synovia", description="Simulate inflammation in a synovial joint (JAX PDE solver).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a scenario and write an HDF5 file")
    p.add_argument("config", nargs="?", help="TOML scenario (e.g. configs/knee2d.toml); omitted: all defaults (2D knee)")
    p.add_argument("-o", "--output", help="output HDF5 file (default: CONFIG's name with .h5)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--resume", metavar="FILE", help="continue an interrupted run file to its end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("sweep", help="run a scenario at every combination of chosen config values (a study folder)")
    p.add_argument("config", help="sweep config TOML (e.g. configs/sweep_knee2d.toml)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="study folder (created; run again to continue it)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key of the base scenario (repeatable)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="run points in N worker processes (default 1)")
    p.add_argument(
        "--point", type=int, nargs="+", metavar="K", help="run only these points (0-based), e.g. one per cluster array task"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a different sweep's runs in the output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("info", help="print what a run file or a study folder holds")
    p.add_argument("file", help="run file (.h5) or study folder")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("plot", help="draw the figures of a run file, a fit report or a study folder")
    p.add_argument("file", help="run file (.h5), fit report (.h5) or study folder (from synovia sweep)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the figures (created if needed)")
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
    p = sub.add_parser("fit", help="fit model parameters to observations (optax through the solver)")
    p.add_argument("config", help="fit config TOML (e.g. configs/fit_synthetic.toml)")
    p.add_argument(
        "-o", "--output", default="fit.h5", help="fit report (default fit.h5); also writes NAME.png and NAME_fitted.toml"
    )
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a fit config value, e.g. fit.starts=4")
    p.add_argument("--resume", action="store_true", help="continue the fit stored in the output file to fit.max_iterations")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser("synth", help="synthetic observations of a scenario, with noise (to check a fit recovers the truth)")
    p.add_argument("config", help="run config TOML whose parameters are the truth")
    p.add_argument("-o", "--output", required=True, help="observation file (.h5, or .csv without maps)")
    p.add_argument("--noise", type=float, default=0.0, help="relative standard deviation of the Gaussian noise (default 0)")
    p.add_argument("--times", type=float, nargs="+", metavar="H", help="observation times, h (default: every output interval)")
    p.add_argument(
        "--species", nargs="+", default=["tnf", "il1", "leukocytes"], help="observed species (default: tnf il1 leukocytes)"
    )
    p.add_argument(
        "--where",
        nargs="+",
        default=["fluid"],
        metavar="KIND[:WHERE]",
        help="fluid, tissue:NAME, point:'Z Y X', box:'Z0:Z1 Y0:Y1 X0:X1' in mm (default: fluid)",
    )
    p.add_argument("--maps", type=float, nargs="+", metavar="H", help="also whole-field maps at these times (HDF5 only)")
    p.add_argument("--map-species", default="leukocytes", help="species of the maps (default: leukocytes)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a run config value")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
