"""From a validated :class:`Config` to everything a run needs: geometry, parameters, state."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fields import (
    SPECIES,
    Geometry,
    JointDimensions,
    State,
    add_blob,
    ball_mask,
    baseline_fields,
    load_arrays,
    preset_dimensions,
    set_ball,
)
from fields import box as box_geometry
from fields import from_file as file_geometry
from fields import joint as joint_geometry

from ._config import WALLS, Config, ConfigError, frame_count
from ._model import Domain, ModelOptions, make_domain
from ._operators import NO_FLUX, WallCondition
from ._params import DIFFUSIVITIES, Params, default_params
from ._simulate import StepTooLarge, binding_limits, choose_substeps, super_step_stages
from ._steppers import get_stepper

#: Steps per output interval beyond which a scenario is refused (an extreme value, not a run to wait for).
MAX_SUBSTEPS = 10**8
_DIMENSION_KEYS = tuple(f.name for f in dataclasses.fields(JointDimensions))


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """A resolved scenario: static options, traced arrays, and the step plan."""

    config: Config
    geometry: Geometry
    options: ModelOptions
    params: Params
    domain: Domain
    initial: State
    dtype: jnp.dtype
    n_frames: int
    n_substeps: int
    dt: float
    stability_limits: dict
    stages: int = 0  # RKL2 stages per diffusion super-step (steppers that split diffusion), else 0

    @property
    def interval(self) -> float:
        return self.config.run.output_interval_h


def _geometry(config: Config) -> tuple[Geometry, Config]:
    g = config.geometry
    try:
        if g.kind == "joint":
            dims = preset_dimensions(g.preset, g.ndim)
            changes = {}
            for key in _DIMENSION_KEYS:
                value = getattr(g, key)
                if value not in (0.0, ()):
                    changes[key] = tuple(value) if isinstance(value, tuple) else value
            dims = dataclasses.replace(dims, **changes)
            geometry = joint_geometry(g.spacing_mm, dims)
            resolved = {k: getattr(dims, k) for k in _DIMENSION_KEYS}
            return geometry, dataclasses.replace(config, geometry=dataclasses.replace(g, **resolved))
        if g.kind == "box":
            if len(g.size_mm) != g.ndim:
                raise ConfigError(
                    f"config key 'geometry.size_mm' = {list(g.size_mm)}: needs {g.ndim} values for geometry.ndim = {g.ndim}"
                )
            return box_geometry(g.size_mm, g.spacing_mm, g.tissue), config
        path = Path(g.path)
        if not g.path:
            raise ConfigError("config key 'geometry.path' is empty: geometry.kind = 'file' needs a label file")
        if not path.is_absolute():
            path = Path(config.base_dir) / path
        spacing = g.file_spacing_mm or None
        geometry = file_geometry(path, dataset=g.dataset, spacing_mm=spacing)
        if geometry.grid.ndim != g.ndim:
            raise ConfigError(f"config key 'geometry.ndim' = {g.ndim}: the label file '{g.path}' is {geometry.grid.ndim}D")
        return geometry, config
    except ConfigError:
        raise
    except (ValueError, KeyError) as err:
        raise ConfigError(f"geometry: {err}") from None


def _centre(centre, geometry: Geometry, key: str) -> tuple[float, ...]:
    centre = tuple(centre) or tuple(geometry.landmarks["injury_site"])
    if len(centre) != geometry.grid.ndim:
        raise ConfigError(f"config key '{key}' = {list(centre)}: needs {geometry.grid.ndim} coordinates (mm, slowest axis first)")
    return centre


def _params(config: Config, dtype) -> Params:
    inj, drug = config.injury, config.drug
    values = dict(config.parameters)
    values.update(
        injury_rate=inj.rate if inj.enabled else 0.0,
        injury_onset=inj.onset_h,
        injury_duration=inj.duration_h,
        injury_decay=inj.decay_h,
        drug_dose=drug.dose,
        drug_first_dose=drug.first_dose_h,
        drug_dose_interval=drug.interval_h,
        drug_infusion=drug.infusion_h,
    )
    for key in DIFFUSIVITIES:
        values[key] = np.array([config.tissues[t][key] for t in config.tissues])
    return default_params(dtype, **values)


def _walls(config: Config, ndim: int) -> tuple:
    names = WALLS[ndim]
    out = []
    for species, walls in sorted(config.boundary.items()):
        conds = [NO_FLUX] * (2 * ndim)
        for wall, c in walls.items():
            conds[names.index(wall)] = WallCondition(c["type"], c["value"], c["coefficient"])
        out.append((species, tuple((conds[2 * a], conds[2 * a + 1]) for a in range(ndim))))
    return tuple(out)


def initial_state(config: Config, geometry: Geometry, domain: Domain, dtype) -> State:
    """Baselines per tissue, then file arrays, blobs and regions; zero outside each species' region."""
    grid = geometry.grid
    fields = baseline_fields(geometry.labels, config.initial["baseline"])
    if config.initial["file"]:
        path = Path(config.initial["file"])
        if not path.is_absolute():
            path = Path(config.base_dir) / path
        try:
            fields.update(load_arrays(path, grid.shape))
        except ValueError as err:
            raise ConfigError(f"config key 'initial.file': {err}") from None
    for i, blob in enumerate(config.initial["blobs"]):
        centre = _centre(blob.centre_mm, geometry, f"initial.blobs[{i}].centre_mm")
        fields[blob.species] = add_blob(fields[blob.species], grid, centre, blob.sigma_mm, blob.amplitude)
    for i, region in enumerate(config.initial["regions"]):
        centre = _centre(region.centre_mm, geometry, f"initial.regions[{i}].centre_mm")
        fields[region.species] = set_ball(fields[region.species], grid, centre, region.radius_mm, region.value)
    region_of = {
        "tnf": domain.cytokine,
        "il1": domain.cytokine,
        "drug": domain.cytokine,
        "leukocytes": domain.leukocyte,
        "cartilage": domain.cartilage,
    }
    if not config.drug.enabled:
        fields["drug"] = np.zeros(grid.shape)
    return State(*(jnp.asarray(fields[s], dtype=dtype) * region_of[s] for s in SPECIES))


def build_scenario(config: Config) -> Scenario:
    """Geometry, parameters, masks, initial state and step plan for a config.

    Raises :class:`ConfigError` for anything the user must change.
    """
    run = config.run
    if run.precision == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if run.precision == "float64" else jnp.float32
    n_frames = frame_count(run)
    geometry, config = _geometry(config)
    grid = geometry.grid
    centre = _centre(config.injury.centre_mm, geometry, "injury.centre_mm")
    injury_mask = ball_mask(grid, centre, config.injury.radius_mm)
    domain = make_domain(geometry.labels, injury_mask, dtype)
    options = ModelOptions(
        grid=grid, drug=config.drug.enabled, chemotaxis_scheme=run.chemotaxis_scheme, walls=_walls(config, grid.ndim)
    )
    params = _params(config, dtype)
    state = initial_state(config, geometry, domain, dtype)
    stepper = get_stepper(run.stepper)
    try:
        n_sub, dt, limits = choose_substeps(run.output_interval_h, params, state, options, stepper, run.safety, run.dt_h)
    except StepTooLarge as err:
        raise ConfigError(str(err)) from None
    if n_sub > MAX_SUBSTEPS:
        binding = binding_limits(limits, stepper)
        worst = min(binding, key=binding.get)
        raise ConfigError(
            f"the stable time step is {limits[worst]:.3g} h (set by {worst}): {n_sub:.3g} steps per output interval of "
            f"{run.output_interval_h:g} h, more than {MAX_SUBSTEPS:.0e}; check the initial values and [parameters] for an "
            "extreme value"
        )
    stages = super_step_stages(stepper, dt, limits, run.safety)
    return Scenario(config, geometry, options, params, domain, state, dtype, n_frames, n_sub, dt, limits, stages)
