"""TOML configuration: parsed into frozen dataclasses, validated, with clear one-line errors.

Every key has a default, so an empty file runs the default 2D knee scenario. Errors name
the key, the value and what is allowed, and suggest the closest key for a typo.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from fields import SPECIES, TISSUE_NAMES

from ..physics import DEFAULT_DRUG, DIFFUSIVITIES, DRUGS, PARAMETERS, ROUTES, SCENARIO_PARAMETERS, drug_parameters
from ._checks import ConfigError, check_number, check_value, did_you_mean, option, parse_section, unknown_key


@dataclasses.dataclass(frozen=True)
class RunSection:
    """``[run]``: time span, output, numerics."""

    t_end_h: float = option(72.0, "simulated time", "h", lower=0, strict_lower=True)
    output_interval_h: float = option(1.0, "time between saved frames", "h", lower=0, strict_lower=True)
    dt_h: float = option(0.0, "time step; 0 chooses it from the stability limits", "h", lower=0)
    safety: float = option(
        0.9,
        "fraction of the stable step used when dt_h = 0 (and, for strang_rkl2, the margin of its super-step's stage count)",
        "",
        lower=0,
        upper=1,
        strict_lower=True,
    )
    precision: str = option("float32", "floating-point precision", choices=("float32", "float64"))
    stepper: str = option(
        "ssp_rk3",
        "time stepper: SSP Runge-Kutta of order 3, 2 or 1; strang_ssp_rk3 (decay and drug binding integrated "
        "exactly, the rest by SSP-RK3; second order, larger steps when drug binding is fast); strang_rkl2 (as "
        "strang_ssp_rk3, with diffusion split off too and advanced by RKL2 super-steps; second order, the step "
        "set by accuracy (0.25/k_T) and chemotaxis instead of diffusion: for long runs and fine grids)",
        choices=("ssp_rk3", "ssp_rk2", "forward_euler", "strang_ssp_rk3", "strang_rkl2"),
    )
    chemotaxis_scheme: str = option(
        "upwind", "chemotaxis flux: first-order upwind or minmod-limited second order", choices=("upwind", "limited")
    )
    devices: int = option(
        1,
        "devices (GPUs, or CPU devices) a run's grid is split over along its slowest axis (z in 3D, y in 2D), each "
        "stepping its slab and exchanging halos; that axis's cell count must be a multiple of it (runs and sweeps; "
        "fits use one device). 1: one device",
        lower=1,
    )
    reproducible: bool = option(
        False,
        "sums over the grid (the fluid's means, totals) added pairwise in an order fixed by the grid's shape, so "
        "that a run gives the same results to the bit alone, in a sweep --ensemble batch or split over devices; "
        "about a third more time per step on a CPU. false: XLA's own order (the same run repeats itself to the bit, "
        "but a batch or a split run agrees with it to round-off)",
    )


@dataclasses.dataclass(frozen=True)
class GeometrySection:
    """``[geometry]``: the joint (parametric), a uniform box, or a label map from a file.

    Joint dimension keys (mm) default to the preset's values (``fields.preset_dimensions``).
    """

    kind: str = option("joint", "geometry source", choices=("joint", "box", "file"))
    ndim: int = option(2, "2 (sagittal section) or 3", choices=(2, 3))
    preset: str = option("knee", "joint preset for default dimensions", choices=("knee", "mcp"))
    spacing_mm: float = option(0.25, "grid cell size (joint and box)", "mm", lower=0, strict_lower=True)
    domain_mm: tuple = option((), "joint: domain extent per axis, slowest first (default: preset)", "mm")
    bone_radius_upper_mm: float = option(0.0, "joint: radius of the upper bone end (0: preset)", "mm", lower=0)
    bone_radius_lower_mm: float = option(0.0, "joint: radius of the lower bone end (0: preset)", "mm", lower=0)
    bone_half_width_mm: float = option(0.0, "joint: half width of the bone shafts (0: preset)", "mm", lower=0)
    cartilage_thickness_mm: float = option(0.0, "joint: thickness of each cartilage layer (0: preset)", "mm", lower=0)
    joint_space_mm: float = option(0.0, "joint: radiographic joint space, bone to bone (0: preset)", "mm", lower=0)
    cavity_half_extent_mm: tuple = option((), "joint: half size of the joint cavity per axis (default: preset)", "mm")
    cavity_corner_radius_mm: float = option(0.0, "joint: corner radius of the cavity (0: preset)", "mm", lower=0)
    synovium_thickness_mm: float = option(0.0, "joint: synovial membrane thickness (0: preset)", "mm", lower=0)
    capsule_thickness_mm: float = option(0.0, "joint: capsule thickness (0: preset)", "mm", lower=0)
    size_mm: tuple = option((10.0, 10.0), "box: extent per axis, slowest first (2 or 3 values)", "mm")
    tissue: str = option("synovial_fluid", "box: its tissue", choices=TISSUE_NAMES)
    path: str = option(
        "", "file: .npy, NIfTI (.nii, .nii.gz: spacing and orientation from its header) or HDF5 file of integer "
        "tissue labels (relative to the config file)",
    )  # fmt: skip
    dataset: str = option("labels", "file: HDF5 dataset name")
    file_spacing_mm: tuple = option((), "file: spacing per axis (default: the file's spacing attribute)", "mm")
    file_tissues: str = option(
        "", 'file: the tissue of each label value, e.g. "0=excluded, 1=bone, 2=cartilage, 5=synovial_fluid" '
        "(a segmentation's own codes; default: the values are synovia's codes 0..5)",
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class InjurySection:
    """``[injury]``: a TNF source in a ball (cytokine-bearing tissues only)."""

    enabled: bool = option(True, "whether there is an injury source")
    centre_mm: tuple = option((), "centre of the injury ball, slowest axis first (default: the geometry's injury site)", "mm")
    radius_mm: float = option(2.5, "radius of the injury ball", "mm", lower=0, strict_lower=True)
    rate: float = option(PARAMETERS["injury_rate"].default, "TNF release rate s_inj", "(pg/mL)/h", lower=0)
    onset_h: float = option(PARAMETERS["injury_onset"].default, "time the injury starts", "h", lower=0)
    duration_h: float = option(PARAMETERS["injury_duration"].default, "time the source lasts", "h", lower=0)
    decay_h: float = option(PARAMETERS["injury_decay"].default, "e-folding time of the source", "h", lower=0, strict_lower=True)


@dataclasses.dataclass(frozen=True)
class DrugSection:
    """``[drug]``: a drug given as the clinic gives it, into the plasma (solver._drugs).

    ``name`` picks the drug: its target, its label schedule (the defaults of the keys below) and
    its pharmacokinetic ``[parameters]`` (``drug_*``); any of them can be set.
    """

    enabled: bool = option(False, "simulate the drug")
    name: str = option(
        DEFAULT_DRUG,
        'the drug: target, label schedule and pharmacokinetics (docs/model.md); "none": no drug (enabled is then false)',
        choices=(*DRUGS, "none"),
    )
    route: str = option("sc", "subcutaneous (sc) or intravenous infusion (iv); default: the drug's label route", choices=ROUTES)
    dose_mg: float = option(50.0, "drug per dose; default: the label dose", "mg", lower=0)
    dose_mg_per_kg: float = option(0.0, "drug per dose per body weight; when > 0 it replaces dose_mg", "mg/kg", lower=0)
    body_weight_kg: float = option(70.0, "body weight, for dose_mg_per_kg", "kg", lower=0, strict_lower=True)
    first_dose_h: float = option(24.0, "time of the first dose", "h", lower=0)
    loading_h: tuple = option(
        (), "dose times after the first dose before the regular schedule (label loading doses); default: the drug's", "h"
    )
    interval_h: float = option(
        168.0, "time between doses after the last loading dose; default: the label's", "h", lower=0, strict_lower=True
    )
    infusion_h: float = option(2.0, "duration of an intravenous infusion", "h", lower=0, strict_lower=True)

    @property
    def dose(self) -> float:
        """The drug per dose, mg."""
        return self.dose_mg_per_kg * self.body_weight_kg if self.dose_mg_per_kg > 0 else self.dose_mg

    @property
    def catalogued(self) -> str:
        """The drug whose values the config takes: its name, or the default drug's for "none"."""
        return self.name if self.name in DRUGS else DEFAULT_DRUG

    @property
    def target(self) -> str:
        return DRUGS[self.catalogued].target


@dataclasses.dataclass(frozen=True)
class Blob:
    """``[[initial.blobs]]``: add a Gaussian ``amplitude * exp(-|x - centre|^2 / (2 sigma^2))``."""

    species: str = option("tnf", "species", choices=SPECIES)
    centre_mm: tuple = option((), "centre, slowest axis first (default: the geometry's injury site)", "mm")
    sigma_mm: float = option(1.0, "standard deviation", "mm", lower=0, strict_lower=True)
    amplitude: float = option(100.0, "peak value", "species unit")


@dataclasses.dataclass(frozen=True)
class Region:
    """``[[initial.regions]]``: set a species to ``value`` inside a ball (e.g. damaged cartilage)."""

    species: str = option("cartilage", "species", choices=SPECIES)
    centre_mm: tuple = option((), "centre, slowest axis first (default: the geometry's injury site)", "mm")
    radius_mm: float = option(1.0, "radius", "mm", lower=0, strict_lower=True)
    value: float = option(0.5, "value inside the ball", "species unit", lower=0)


#: Default baselines per tissue and species (docs/model.md: healthy synovial fluid; cartilage intact).
#: With ``initial.start = "rest"`` the resting state replaces tnf, il1 and leukocytes; these are
#: where its relaxation starts.
DEFAULT_BASELINE: dict[str, dict[str, float]] = {
    "cartilage": {"cartilage": 1.0},
    "synovial_fluid": {"tnf": 2.9, "il1": 1.1, "leukocytes": 150.0},
    "synovium": {"tnf": 2.9, "il1": 1.1, "leukocytes": 150.0},
}

#: How the initial state is made (``initial.start``).
STARTS = ("rest", "baseline")
#: Species the resting state sets (their per-tissue baselines only seed its relaxation).
RESTING_SPECIES = ("tnf", "il1", "leukocytes")

WALLS = {2: ("y_min", "y_max", "x_min", "x_max"), 3: ("z_min", "z_max", "y_min", "y_max", "x_min", "x_max")}
WALL_KINDS = ("no_flux", "dirichlet", "robin")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole scenario. ``parameters``, ``tissues``, ``initial`` and ``boundary`` are fully resolved mappings."""

    run: RunSection = RunSection()
    geometry: GeometrySection = GeometrySection()
    injury: InjurySection = InjurySection()
    drug: DrugSection = DrugSection()
    parameters: Mapping[str, float] = dataclasses.field(default_factory=dict)
    tissues: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    initial: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    boundary: Mapping[str, Mapping[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    base_dir: str = "."

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain TOML-able data (every key, defaults filled in)."""
        out: dict[str, Any] = {}
        for name in ("run", "geometry", "injury", "drug"):
            out[name] = _plain(dataclasses.asdict(getattr(self, name)))
        out["parameters"] = dict(self.parameters)
        out["tissues"] = {t: dict(v) for t, v in self.tissues.items()}
        initial: dict[str, Any] = {"start": self.initial["start"]}
        initial.update({t: dict(v) for t, v in self.initial["baseline"].items()})
        if self.initial["blobs"]:
            initial["blobs"] = [_plain(dataclasses.asdict(b)) for b in self.initial["blobs"]]
        if self.initial["regions"]:
            initial["regions"] = [_plain(dataclasses.asdict(r)) for r in self.initial["regions"]]
        if self.initial["file"]:
            initial["file"] = self.initial["file"]
        out["initial"] = initial
        if self.boundary:
            out["boundary"] = {s: {w: dict(c) for w, c in walls.items()} for s, walls in self.boundary.items()}
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _plain(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _parameters(raw, drug: str = DEFAULT_DRUG) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ConfigError("config key 'parameters' must be a table")
    scenario = SCENARIO_PARAMETERS
    allowed = {k: v for k, v in PARAMETERS.items() if k not in scenario}
    out = {k: v.default for k, v in allowed.items()}
    out.update(drug_parameters(drug))
    for key, value in raw.items():
        if key not in allowed:
            hint = " (set it in [injury] or [drug])" if key in scenario else did_you_mean(key, allowed)
            raise ConfigError(f"unknown config key 'parameters.{key}'{hint}")
        info = allowed[key]
        lower = info.lower if info.lower > 0 else 0.0
        out[key] = check_number(f"parameters.{key}", value, lower, info.upper)
        if info.lower > 0 and out[key] <= 0:
            raise ConfigError(f"config key 'parameters.{key}' = {value}: must be > 0")
    return out


def _tissues(raw, drug: str = DEFAULT_DRUG) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise ConfigError("config key 'tissues' must be a table")
    out = {t: {k: default[i] for k, (default, _) in DIFFUSIVITIES.items()} for i, t in enumerate(TISSUE_NAMES)}
    if DRUGS[drug].target == "il1_receptor":  # an IL-1 receptor antagonist is IL-1's size (17 kDa)
        for values in out.values():
            values["diffusivity_drug"] = values["diffusivity_il1"]
    for tissue, values in raw.items():
        if tissue not in out:
            raise unknown_key(tissue, "tissues.", out)
        if not isinstance(values, dict):
            raise ConfigError(f"config key 'tissues.{tissue}' must be a table")
        for key, value in values.items():
            if key not in DIFFUSIVITIES:
                raise unknown_key(key, f"tissues.{tissue}.", DIFFUSIVITIES)
            out[tissue][key] = check_number(f"tissues.{tissue}.{key}", value, 0.0)
    return out


def _initial(raw) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError("config key 'initial' must be a table")
    baseline = {t: {s: DEFAULT_BASELINE.get(t, {}).get(s, 0.0) for s in SPECIES} for t in TISSUE_NAMES}
    blobs, regions, file, start = [], [], "", "rest"
    for key, value in raw.items():
        if key == "start":
            if value not in STARTS:
                raise ConfigError(f"config key 'initial.start' = {value!r}: allowed values are {', '.join(STARTS)}")
            start = value
        elif key == "blobs":
            if not isinstance(value, list):
                raise ConfigError("config key 'initial.blobs' must be an array of tables ([[initial.blobs]])")
            blobs = [parse_section(Blob, b, f"initial.blobs[{i}].") for i, b in enumerate(value)]
        elif key == "regions":
            if not isinstance(value, list):
                raise ConfigError("config key 'initial.regions' must be an array of tables ([[initial.regions]])")
            regions = [parse_section(Region, r, f"initial.regions[{i}].") for i, r in enumerate(value)]
        elif key == "file":
            if not isinstance(value, str):
                raise ConfigError(f"config key 'initial.file' = {value!r}: must be a string (path)")
            file = value
        elif key in baseline:
            if not isinstance(value, dict):
                raise ConfigError(f"config key 'initial.{key}' must be a table of species values")
            for species, v in value.items():
                if species not in SPECIES:
                    raise unknown_key(species, f"initial.{key}.", SPECIES)
                upper = 1.0 if species == "cartilage" else math.inf
                baseline[key][species] = check_number(f"initial.{key}.{species}", v, 0.0, upper)
        else:
            raise unknown_key(key, "initial.", [*baseline, "start", "blobs", "regions", "file"])
    if start == "rest":
        for tissue, values in baseline.items():
            for species in RESTING_SPECIES:
                default = DEFAULT_BASELINE.get(tissue, {}).get(species, 0.0)
                if values[species] != default:
                    raise ConfigError(
                        f"config key 'initial.{tissue}.{species}' = {values[species]:g}: with initial.start = \"rest\" "
                        f"(the default) the resting state sets {', '.join(RESTING_SPECIES)}; set initial.start = "
                        '"baseline" to start from per-tissue values instead'
                    )
    return {"start": start, "baseline": baseline, "blobs": tuple(blobs), "regions": tuple(regions), "file": file}


def _boundary(raw, ndim: int) -> dict[str, dict[str, dict[str, Any]]]:
    if not isinstance(raw, dict):
        raise ConfigError("config key 'boundary' must be a table")
    transported = ("tnf", "il1", "leukocytes", "drug", "complex")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for species, walls in raw.items():
        if species not in transported:
            raise unknown_key(species, "boundary.", transported)
        if not isinstance(walls, dict):
            raise ConfigError(f"config key 'boundary.{species}' must be a table of walls")
        out[species] = {}
        for wall, cond in walls.items():
            if wall not in WALLS[ndim]:
                raise unknown_key(wall, f"boundary.{species}.", WALLS[ndim])
            where = f"boundary.{species}.{wall}"
            if not isinstance(cond, dict):
                raise ConfigError(f"config key '{where}' must be a table like {{type = \"dirichlet\", value = 0.0}}")
            for k in cond:
                if k not in ("type", "value", "coefficient"):
                    raise unknown_key(k, where + ".", ("type", "value", "coefficient"))
            kind = cond.get("type", "no_flux")
            if kind not in WALL_KINDS:
                raise ConfigError(f"config key '{where}.type' = {kind!r}: allowed values are {', '.join(WALL_KINDS)}")
            out[species][wall] = {
                "type": kind,
                "value": check_number(where + ".value", cond.get("value", 0.0), 0.0),
                "coefficient": check_number(where + ".coefficient", cond.get("coefficient", 0.0), 0.0),
            }
    return out


SECTIONS = ("run", "geometry", "injury", "drug", "parameters", "tissues", "initial", "boundary")


def config_from_dict(raw: Mapping[str, Any], base_dir: str | Path = ".") -> Config:
    """Validate raw TOML data into a :class:`Config` (ConfigError on the first problem)."""
    for key in raw:
        if key not in SECTIONS:
            raise unknown_key(key, "", SECTIONS)
    geometry = parse_section(GeometrySection, raw.get("geometry", {}), "geometry.")
    drug = _drug(raw.get("drug", {}))
    return Config(
        run=parse_section(RunSection, raw.get("run", {}), "run."),
        geometry=geometry,
        injury=parse_section(InjurySection, raw.get("injury", {}), "injury."),
        drug=drug,
        parameters=_parameters(raw.get("parameters", {}), drug.catalogued),
        tissues=_tissues(raw.get("tissues", {}), drug.catalogued),
        initial=_initial(raw.get("initial", {})),
        boundary=_boundary(raw.get("boundary", {}), geometry.ndim),
        base_dir=str(base_dir),
    )


def _drug(raw) -> DrugSection:
    """``[drug]`` with the named drug's label schedule for the keys not given."""
    if not isinstance(raw, dict):
        raise ConfigError("config key 'drug' must be a table")
    fields = {f.name: f for f in dataclasses.fields(DrugSection)}
    name = check_value("drug.name", raw.get("name", DEFAULT_DRUG), fields["name"])
    if name == "none":  # untreated (a therapy comparison's control)
        return parse_section(DrugSection, {**DRUGS[DEFAULT_DRUG].schedule, **raw, "enabled": False}, "drug.")
    return parse_section(DrugSection, {**DRUGS[name].schedule, **raw}, "drug.")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (path, value); the value is read as TOML, else as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {text!r}: the key must name a section and a key, like run.t_end_h")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path, parsed


def set_key(raw: dict[str, Any], path: list[str], value: Any, what: str) -> None:
    """Set ``raw[path[0]]...[path[-1]] = value``, making tables on the way (``what`` names the setting in errors)."""
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: '{part}' is not a table")
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        set_key(raw, path, value, f"--set {text!r}")
    return raw


def frame_count(run: RunSection) -> int:
    """Output frames after the first: t_end_h / output_interval_h, which must be a whole number >= 1."""
    n_frames = round(run.t_end_h / run.output_interval_h)
    if abs(n_frames * run.output_interval_h - run.t_end_h) > 1e-9 * run.t_end_h or n_frames < 1:
        raise ConfigError(
            f"config key 'run.t_end_h' = {run.t_end_h}: must be a whole multiple of "
            f"run.output_interval_h = {run.output_interval_h}"
        )
    return n_frames


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The data of a TOML file; ConfigError (naming it as ``what``) if it is missing or not valid TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} '{path}' is not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what} '{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "TOML files are UTF-8: save it as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} '{path}': {err.strerror or err}") from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a TOML file (None: all defaults), apply ``--set`` overrides and validate."""
    raw: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        raw = read_toml(path)
        base = Path(path).parent
    return config_from_dict(apply_overrides(raw, list(overrides)), base)


def config_from_toml(text: str, base_dir: str | Path = ".") -> Config:
    return config_from_dict(tomllib.loads(text), base_dir)
