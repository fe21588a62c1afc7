"""``python -m benchmarks [--quick] [--only CASES] [--out DIR]``: run the suite, write JSON, Markdown and PNGs.

Cases (``--only`` takes a comma-separated list): forward, ensemble, long, output, gradient, compile,
profile, trace, layout, adjoint, roofline, numba, pypde, cluster; ``smallest`` runs only the smallest forward case (a
smoke test). References (numba, pypde) are skipped with a note when their packages are not installed; ``cluster``
(a study on a SLURM cluster it starts) when not root or without the slurm packages or submitit.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

ORDER = (
    "roofline",
    "forward",
    "numba",
    "pypde",
    "profile",
    "trace",
    "layout",
    "ensemble",
    "gradient",
    "adjoint",
    "compile",
    "long",
    "output",
    "cluster",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (a few minutes on 2 CPU cores)")
    ap.add_argument("--only", default="", help=f"comma-separated cases: {', '.join(ORDER)}, or 'smallest'")
    ap.add_argument("--out", default="bench_results", help="output directory (default: bench_results/)")
    ap.add_argument("--repeats", type=int, default=0, help="timed repeats per case (default 3 quick, 5 full)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = ap.parse_args(argv)

    import jax

    # float64 cases need x64; float32 cases pass every scalar in float32, so they stay float32
    jax.config.update("jax_enable_x64", True)

    from . import _cases, _harness, _report

    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(only) - set(ORDER) - {"smallest"}
    if unknown:
        ap.error(f"unknown case(s) {sorted(unknown)}; known: {', '.join(ORDER)}, smallest")
    smallest = "smallest" in only
    selected = [c for c in ORDER if (c in only) or not only]
    if smallest:
        selected = ["forward"] + [c for c in selected if c in only and c != "forward"]

    def log(msg: str) -> None:
        print(msg, flush=True)

    st = _cases.Settings(
        quick=args.quick,
        repeats=args.repeats or (3 if args.quick else 5),
        target_cell_updates=(4e6 if args.quick else 1.5e7) * (100 if _harness.on_gpu() else 1),
        time_budget_s=40 if args.quick else 240,
        log=log,
        out=args.out,
    )
    machine = _harness.machine()
    log(f"device: {machine['device']} ({machine['device_kind']}), host {machine['cpu_model']} x {machine['usable_cpus']}")
    t_start = time.perf_counter()
    records: list[dict] = []
    runners = {
        "roofline": _cases.roofline,
        "forward": lambda s: _cases.forward(s, smallest=smallest),
        "numba": _cases.numba_reference,
        "pypde": _cases.pypde_reference,
        "profile": _cases.profile,
        "trace": _cases.trace,
        "layout": _cases.layout,
        "adjoint": _cases.adjoint,
        "ensemble": _cases.ensemble,
        "gradient": _cases.gradient,
        "compile": _cases.knee3d_compile,
        "long": _cases.long_scenario,
        "output": _cases.output,
        "cluster": _cases.cluster,
    }
    for name in selected:
        t = time.perf_counter()
        try:
            records += runners[name](st)
        except Exception as err:  # noqa: BLE001 - one failing case must not lose the others
            log(f"case {name} FAILED: {type(err).__name__}: {err}")
            records.append({"case": name, "skipped": f"error: {type(err).__name__}: {err}"})
        log(f"[{name}: {time.perf_counter() - t:.0f} s]")

    _report.add_roofline(records)
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "cases": selected,
        "command": " ".join(sys.argv),
        "machine": machine,
        "wall_s": time.perf_counter() - t_start,
        "records": records,
    }
    result["targets"] = _report.targets(records, machine)
    paths = _report.write(result, Path(args.out), with_plots=not args.no_plots)
    log("")
    log(Path(paths["markdown"]).read_text())
    log(f"wrote {paths['json']}, {paths['markdown']}" + "".join(f", {Path(args.out) / p}" for p in paths["plots"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
