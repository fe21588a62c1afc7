"""The config reference in Markdown, generated from the code so that docs/config.md cannot drift.

``python -m solver.setup.reference`` prints it; a test checks docs/config.md holds exactly this text.
``python -m solver.setup.reference model`` prints the parameter table of docs/model.md and
``python -m solver.setup.reference drugs`` its drug tables (both checked too).
"""

from __future__ import annotations

import dataclasses
import sys

from fields import SPECIES, SPECIES_UNITS, TISSUE_NAMES

from ..physics import DIFFUSIVITIES, DRUGS, PARAMETERS, SCENARIO_PARAMETERS, drug_parameters, drug_sources
from ._config import DEFAULT_BASELINE, WALL_KINDS, WALLS, Blob, DrugSection, GeometrySection, InjurySection, Region, RunSection


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(f"{v:g}" for v in value) + "]`"
    if isinstance(value, float):
        return f"`{value:.4g}`"
    return f"`{value}`"


def _allowed(meta) -> str:
    if meta.get("choices"):
        return ", ".join(map(str, meta["choices"]))
    lo, hi = meta.get("lower"), meta.get("upper")
    parts = []
    if lo is not None:
        parts.append(f"{'>' if meta.get('strict_lower') else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    return ", ".join(parts)


def _section_table(title: str, cls) -> list[str]:
    lines = [f"#### `{title}`", "", "| key | default | unit | allowed | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        m = f.metadata
        lines.append(f"| `{f.name}` | {_fmt(f.default)} | {m.get('unit', '')} | {_allowed(m)} | {m.get('doc', '')} |")
    return lines + [""]


def config_reference() -> str:
    out: list[str] = []
    for title, cls in (
        ("[run]", RunSection),
        ("[geometry]", GeometrySection),
        ("[injury]", InjurySection),
        ("[drug]", DrugSection),
    ):
        out += _section_table(title, cls)
    out += ["#### `[parameters]`", "", "| key | symbol | default | unit | meaning | source |", "|---|---|---|---|---|---|"]
    for name, info in PARAMETERS.items():
        if name not in SCENARIO_PARAMETERS:
            out.append(f"| `{name}` | {info.symbol} | `{info.default:.4g}` | {info.unit} | {info.description} | {info.source} |")
    out += [
        "",
        "#### `[tissues.<tissue>]`: per-tissue diffusivities, mm^2/h",
        "",
        "Tissues: " + ", ".join(f"`{t}`" for t in TISSUE_NAMES) + ".",
        "",
        "| key | " + " | ".join(TISSUE_NAMES) + " | source |",
        "|---|" + "---|" * (len(TISSUE_NAMES) + 1),
    ]
    for name, (values, source) in DIFFUSIVITIES.items():
        out.append(f"| `{name}` | " + " | ".join(f"{v:.3g}" for v in values) + f" | {source} |")
    out += [
        "",
        "#### `[initial]`: the start",
        "",
        '`initial.start`: `"rest"` (default) starts from the resting joint, the steady state of the scenario\'s '
        "parameters with no injury, no drug and intact cartilage, relaxed from the default baselines by the "
        "scenario's stepper; the cartilage and drug baselines, `initial.file`, blobs and regions are then applied "
        'to it, and tnf, il1 and leukocyte baselines other than the defaults are refused. `"baseline"` '
        "starts from the per-tissue values below.",
        "",
        "#### `[initial.<tissue>]`: baseline value of each species per tissue",
        "",
        "Keys: "
        + ", ".join(f"`{s}` ({SPECIES_UNITS[s]})" for s in SPECIES)
        + ". Defaults (all others 0): "
        + "; ".join(f"`{t}`: " + ", ".join(f"{s} = {v:g}" for s, v in vals.items()) for t, vals in DEFAULT_BASELINE.items())
        + ". Species are zero outside their region (cytokines and drug: all tissues but bone and excluded; "
        "leukocytes: synovial fluid, synovium, capsule; cartilage integrity: cartilage).",
        "",
    ]
    out += _section_table("[[initial.blobs]] (any number)", Blob)
    out += _section_table("[[initial.regions]] (any number)", Region)
    out += [
        "`initial.file`: an HDF5 file (datasets named by species) or `.npz` of per-species arrays on the grid; "
        "applied after the baselines, before blobs and regions.",
        "",
        "#### `[boundary.<species>]`: wall conditions (default no flux)",
        "",
        "Species: `tnf`, `il1`, `leukocytes`, `drug`, `complex`. Walls: "
        + ", ".join(f"`{w}`" for w in WALLS[3])
        + " (2D: no z). Each wall is a table `{type, value, coefficient}` with type one of "
        + ", ".join(f"`{k}`" for k in WALL_KINDS)
        + "; `dirichlet` holds the wall at `value`; `robin` drains "
        "`coefficient` (mm/h) x (u - `value`).",
        "",
    ]
    return "\n".join(out)


def model_parameters() -> str:
    """The parameter table of docs/model.md: every [parameters] key with its symbol, default, unit and source."""
    out = ["| symbol | key | default | unit | meaning | source |", "|---|---|---|---|---|---|"]
    for name, info in PARAMETERS.items():
        if name not in SCENARIO_PARAMETERS or name == "injury_rate":
            where = "`injury.rate`" if name == "injury_rate" else f"`{name}`"
            out.append(f"| {info.symbol} | {where} | {info.default:.5g} | {info.unit} | {info.description} | {info.source} |")
    return "\n".join(out)


def drug_reference() -> str:
    """The drugs table of docs/model.md: each drug's schedule, pharmacokinetic values with sources, and levels."""
    out = []
    for name, drug in DRUGS.items():
        values, sources = drug_parameters(name), drug_sources(name)
        schedule = ", ".join(f"`{k}` = {_fmt(tuple(v) if isinstance(v, list) else v)}" for k, v in drug.schedule.items())
        out += [f"**{name}** (target: {drug.target}, {drug.molar_mass_kda:g} kDa): {schedule}.", ""]
        out += ["| key | value | unit | source |", "|---|---|---|---|"]
        binding = ["drug_tnf_binding", "drug_tnf_unbinding"] if drug.target == "tnf" else []
        for key in [*drug.parameters, *binding]:
            out.append(f"| `{key}` | {values[key]:.4g} | {PARAMETERS[key].unit} | {sources[key]} |")
        out += ["", f"Published levels: {drug.levels}.", ""]
    return "\n".join(out).rstrip()


if __name__ == "__main__":
    which = sys.argv[1:]
    print(model_parameters() if which == ["model"] else drug_reference() if which == ["drugs"] else config_reference())
