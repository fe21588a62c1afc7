"""inference's ``synovia`` commands (``fit``, ``synth``) and its plotter for fit reports.

The pyproject registers them in the entry-point groups ``synovia.commands`` and
``synovia.plotters``, through which the command (solver.cli) finds them: ``solver`` never imports
``inference``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py

from fields import atomic_write_text
from solver.cli import EXIT_FAILED, EXIT_INTERRUPTED, Command, error, info, output_problem, stop_requested
from solver.setup import ConfigError, enable_precision, load_config

from ._config import load_fit_config
from ._fit import REPORT_FORMAT, fit
from ._observations import ObservationError, save_observations
from ._plot import plot_fit
from ._problem import FitError, Problem
from ._profile import profile
from ._synth import synthesize


def _run_fit(args) -> int:
    if isinstance(args.resume, str):  # --resume FILE, as synovia run takes it
        if args.output and Path(args.output) != Path(args.resume):
            return error(f"--resume {args.resume} and -o {args.output}: give the report to continue once")
        args.output = args.resume
    out = Path(args.output or "fit.h5")
    try:
        if trouble := output_problem(out):
            return error(trouble)
        if out.exists() and not (args.overwrite or args.resume):
            return error(f"output file '{out}' exists; pass --overwrite to replace it, or --resume to continue that fit")
        if clash := _sidecar_clash(out, replace=args.overwrite or args.resume):
            return error(clash)
        if args.resume and not out.is_file():
            return error(f"cannot resume: '{out}' does not exist")
        fc = load_fit_config(args.config, args.set or [])
        kwargs = fc.fit_kwargs()
        enable_precision(fc.scenario)
        problem = Problem(
            fc.scenario, fc.observations, {p.name: p for p in fc.parameters}, log_residuals=kwargs.pop("log_residuals")
        )
        if note := problem.start_note():
            info(f"note: {note}")
        profiled = list(problem.names) if "all" in (args.profile or []) else list(dict.fromkeys(args.profile or []))
        if unknown := [n for n in profiled if n not in problem.names]:
            return error(f"--profile {unknown[0]}: not a free parameter of this fit (free: {', '.join(problem.names)}, or all)")
        if args.profile_points < 1:
            return error(f"--profile-points {args.profile_points} must be at least 1")
        problem_note = f"{problem.n} parameters, {fc.observations.count} observed values from '{fc.observations_path}'"
        info(
            f"{'resuming' if args.resume else 'fitting'} {problem_note}; {fc.fit.optimizer}, {fc.fit.starts} start(s), "
            f"{problem.operator.n_frames} frames x {problem.plan.substeps} steps of {problem.plan.dt:.4g} h -> {out}"
        )
        result = fit(
            problem=problem,
            **kwargs,
            progress=not args.quiet,
            report=out,
            resume=args.resume,
            settings_toml=fc.toml,
            on_iteration=_stop_if_asked,
        )
    except (ConfigError, ObservationError, FitError) as err:
        return error(str(err))
    except OSError as err:  # the report could not be written (the disk filled, the folder went away)
        return error(f"writing the fit report '{out}' failed: {err.strerror or err}", EXIT_FAILED)
    except KeyboardInterrupt:
        return error(
            f"interrupted; the fit so far is in '{out}'; continue with: synovia fit {args.config} -o {out} --resume",
            EXIT_INTERRUPTED,
        )
    toml_path = _sidecars(out)[0]
    try:
        atomic_write_text(
            toml_path,
            f"# Fitted by `synovia fit {args.config}` ({result.status}, {result.iterations} iterations, "
            f"loss {result.loss:.6g}); report: {out.name}\n" + result.fitted_config().to_toml(),
        )
        figures = plot_fit(out, out.parent, stem=out.stem)
    except OSError as err:
        return error(
            f"the fit is in '{out}', but writing its other files failed: {err}; draw them with: synovia plot {out} -o DIR",
            EXIT_FAILED,
        )
    print(result.summary())
    info(
        f"{result.status} after {result.iterations} iterations in {result.wall_s:.1f} s, loss {result.loss:.6g}; "
        f"wrote '{out}', '{toml_path}', " + ", ".join(f"'{f}'" for f in figures)
    )
    return _run_profiles(args, result, profiled, out) if profiled else 0


def _run_profiles(args, result, names, out: Path) -> int:
    """Profile each of ``names`` about the fit into the report, then redraw its figures."""
    for name in names:
        info(f"profile of {name}: up to {args.profile_points} points each side, the others re-optimised by L-BFGS")
        try:
            prof = profile(
                result, name, max_points=args.profile_points, progress=not args.quiet, report=out, on_iteration=_stop_if_asked
            )
        except FitError as err:
            return error(str(err))
        except OSError as err:
            return error(f"writing the profile into '{out}' failed: {err.strerror or err}", EXIT_FAILED)
        except KeyboardInterrupt:
            return error(
                f"interrupted; the fit and the profile points so far are in '{out}' (synovia plot {out} draws them); "
                f"profile again with: synovia fit {args.config} --resume {out} --profile {name}",
                EXIT_INTERRUPTED,
            )
        print(prof.summary())
    try:
        figures = plot_fit(out, out.parent, stem=out.stem)
    except OSError as err:
        return error(
            f"the profiles are in '{out}', but drawing them failed: {err}; draw them: synovia plot {out} -o DIR", EXIT_FAILED
        )
    info("wrote the profiles into '" + str(out) + "' and " + ", ".join(f"'{f}'" for f in figures))
    return 0


def _stop_if_asked(iteration: int, values) -> None:
    if stop_requested():  # SIGTERM, whose KeyboardInterrupt can be lost
        raise KeyboardInterrupt


def _sidecars(out: Path) -> list[Path]:
    """The files a fit writes beside its report: the fitted config and the figures."""
    return [out.with_name(out.stem + s) for s in ("_fitted.toml", ".png", "_maps.png", "_profiles.png")]


def _sidecar_clash(out: Path, replace: bool) -> str | None:
    """Why the fit's files beside ``out`` would destroy a file (None if they would not)."""
    for side in _sidecars(out):
        if side == out:
            return f"-o {out}: the report is HDF5 and {side.name} is one of the files written beside it; name it NAME.h5"
        if side.exists() and not replace:
            names = ", ".join(p.name for p in _sidecars(out))
            return f"'{side}' exists and the fit would replace it (it writes {names}); pass --overwrite, or choose another -o"
    return None


def _run_synth(args) -> int:
    out = Path(args.output) if args.output else Path(f"{Path(args.config).stem}_observations.h5")
    if problem := output_problem(out):
        return error(problem)
    if out.exists() and not args.overwrite:
        return error(f"output file '{out}' exists; pass --overwrite to replace it")
    try:
        config = load_config(args.config, args.set or [])
        enable_precision(config)
        obs = synthesize(
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
            return error("maps need an HDF5 file: use -o NAME.h5, or leave out --maps")
        save_observations(obs, out)
    except (ConfigError, ObservationError) as err:
        return error(str(err))
    except OSError as err:
        return error(f"writing '{out}' failed: {err.strerror or err}", EXIT_FAILED)
    info(f"wrote {len(obs)} observations and {len(obs.maps)} map(s) ({obs.count} values, noise {args.noise:g}) to '{out}'")
    return 0


def _fit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="fit config TOML (e.g. configs/fit_synthetic.toml) or a preset's name (fit_synthetic)")
    p.add_argument("-o", "--output", help="fit report (default fit.h5); also writes NAME.png and NAME_fitted.toml")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a fit config value, e.g. fit.starts=4")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="FILE",
        help="continue the fit stored in FILE (or the -o report) to fit.max_iterations",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument(
        "--profile",
        action="append",
        metavar="NAME",
        help="after the fit, the profile likelihood of this free parameter (repeat, or 'all'), into the report and "
        "NAME_profiles.png; with --resume on a finished fit, profiles it without fitting again",
    )
    p.add_argument("--profile-points", type=int, default=12, metavar="N", help="profile points per side at most (default 12)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config TOML whose parameters are the truth, or a preset's name (fit_truth)")
    p.add_argument(
        "-o", "--output", help="observation file (.h5, or .csv without maps; default: CONFIG's name with _observations.h5)"
    )
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


FIT = Command("fit", "fit model parameters to observations (optax through the solver)", _fit_arguments, _run_fit)
SYNTH = Command(
    "synth", "synthetic observations of a scenario, with noise (to check a fit recovers the truth)", _synth_arguments, _run_synth
)


def plot_fit_report(path: Path, out_dir, dpi: int = 120) -> list[Path] | None:
    """The figures of a fit report (None if ``path`` is not one)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != REPORT_FORMAT:
                return None
    except OSError:
        return None
    return plot_fit(path, out_dir, dpi=dpi)
