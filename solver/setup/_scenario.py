"""From a validated :class:`Config` to everything a run needs: geometry, parameters, state."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fields import (
    SPECIES,
    TISSUE_NAMES,
    Geometry,
    JointDimensions,
    State,
    add_blob,
    ball_mask,
    baseline_fields,
    host_memory_bytes,
    load_arrays,
    preset_dimensions,
    set_ball,
    size_text,
)
from fields import box as box_geometry
from fields import from_file as file_geometry
from fields import joint as joint_geometry

from ..physics import (
    DIFFUSIVITIES,
    NO_FLUX,
    Domain,
    ModelOptions,
    Params,
    WallCondition,
    default_params,
    dose_times,
    make_domain,
    species_region,
    stable_dt,
    without_drug,
)
from ..time import Solver, SteadyState, StepPlan, StepTooLarge, binding_limits, limit_reason, relax, resting_params, stepper_class
from ._config import RESTING_SPECIES, WALLS, Config, ConfigError, config_from_dict, frame_count

#: Steps per output interval beyond which a scenario is refused (an extreme value, not a run to wait for).
MAX_SUBSTEPS = 10**8
#: Memory a grid cell takes to be solved, in arrays of the run's precision: the 2D knee's SSP-RK3 step
#: was measured at 415 bytes per cell in float64 (52 arrays: state, stages, coefficients, XLA's
#: buffers); 64 leaves a margin. A grid that needs more than the host has is refused before it is made.
ARRAYS_PER_CELL = 64
_DIMENSION_KEYS = tuple(f.name for f in dataclasses.fields(JointDimensions))


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """A resolved scenario: static options, traced arrays, and the step plan.

    ``baseline`` is the state the [initial] tables, file, blobs and regions give; ``initial``
    (computed when first asked for) is the state a run starts from: with ``initial.start =
    "rest"`` the resting joint (:attr:`rest`) with the cartilage, drug, file, blobs and regions
    of [initial] applied to it, else ``baseline``.
    """

    config: Config
    geometry: Geometry
    options: ModelOptions
    params: Params
    domain: Domain
    baseline: State
    dtype: jnp.dtype
    n_frames: int
    plan: StepPlan

    @property
    def interval(self) -> float:
        return self.config.run.output_interval_h

    @functools.cached_property
    def mesh(self) -> jax.sharding.Mesh | None:
        """The devices the grid is split over (``run.devices`` > 1, one mesh axis ``"slab"`` with Auto
        sharding: XLA's partitioner splits the stencils and adds the halo exchanges), else None."""
        n = self.config.run.devices
        if n == 1:
            return None
        kind = {"axis_types": (jax.sharding.AxisType.Auto,)} if hasattr(jax.sharding, "AxisType") else {}
        return jax.sharding.Mesh(np.array(jax.devices()[:n]), ("slab",), **kind)

    def place(self, tree):
        """``tree``'s arrays on :attr:`mesh`: those of the grid's shape split along its slowest axis, the
        rest (parameters, scalars) copied to every device. Unchanged with one device."""
        mesh = self.mesh
        if mesh is None:
            return tree
        shape = self.geometry.grid.shape
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("slab"))
        copied = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

        def put(x):
            # from the host: every process of a multi-process run holds the same value
            x = np.asarray(x)
            return jax.device_put(x, split if x.shape == shape else copied)

        return jax.tree.map(put, tree)

    @property
    def solver(self) -> Solver:
        """The solver that follows :attr:`plan` (cached: equal scenarios share compiled code)."""
        return self.plan.solver(self.options)

    @functools.cached_property
    def rest(self) -> SteadyState | None:
        """The resting joint (``initial.start = "rest"``), else None: the steady state of this
        scenario's parameters with no injury, no drug and the cartilage intact and held still,
        relaxed from the default baselines by the scenario's stepper (:func:`solver._steady.relax`).

        Raises :class:`ConfigError` if the relaxation diverges.
        """
        if self.config.initial["start"] != "rest":
            return None
        options = dataclasses.replace(self.options, drug=False)
        plan = self.plan
        # concrete values even when first asked for while a function of the caller's is traced
        with jax.ensure_compile_time_eval():
            if not stepper_class(plan.stepper).splits_losses:
                # A Runge-Kutta step's fixed points are the zeros of the right-hand side whatever its
                # size, so the rest is found with the largest stable step of the model without the
                # drug (whose binding, or a small run.dt_h, may hold the run's own step far below it);
                # a split stepper's fixed point moves with its step, so it relaxes with the run's.
                run = self.config.run
                free = StepPlan.choose(
                    plan.stepper, run.output_interval_h, self.params, self.baseline, options, self.domain, run.safety
                )
                plan = dataclasses.replace(plan, dt=free.dt, substeps=free.substeps)
            seed = initial_state(_seed_config(self.config), self.geometry, self.domain, self.dtype)
            result = relax(plan.solver(options), without_drug(seed), resting_params(self.params), self.domain, plan.dt)
        if not math.isfinite(result.change):
            raise ConfigError(
                "the resting state could not be found: the model diverged while relaxing (no injury, no drug); "
                'check [parameters] for an extreme value, or set initial.start = "baseline"'
            )
        return dataclasses.replace(
            result, state=result.state._replace(drug=jnp.zeros_like(seed.drug), complex=jnp.zeros_like(seed.complex))
        )

    def check_frames_memory(self, n_frames: int) -> None:
        """Refuse (:class:`ConfigError`, naming ``run.t_end_h``) to keep ``n_frames`` whole frames in
        memory (a fit's or ``synth``'s trajectory) when this host has not the room for them."""
        per_frame = len(self.options.species) * self.geometry.grid.size * np.dtype(self.dtype).itemsize
        need, have = (n_frames + 1) * per_frame, host_memory_bytes()
        if need > have:
            run = self.config.run
            raise ConfigError(
                f"config key 'run.t_end_h' = {run.t_end_h:g}: {n_frames:.3g} frames of {run.output_interval_h:g} h "
                f"kept in memory need {size_text(need)}, this machine has {size_text(have)} free; use a shorter run.t_end_h "
                "or a longer run.output_interval_h"
            )

    @functools.cached_property
    def initial(self) -> State:
        """The state a run starts from (frame 0)."""
        if self.rest is None:
            return self.baseline
        with jax.ensure_compile_time_eval():
            return initial_state(self.config, self.geometry, self.domain, self.dtype, rest=self.rest.state)


def check_grid_memory(shape: tuple[int, ...], itemsize: int, key: str, value) -> None:
    """Refuse (:class:`ConfigError`, naming ``key`` = ``value``) a grid of ``shape`` that would need
    more memory to solve than this host has (:data:`ARRAYS_PER_CELL` arrays of ``itemsize`` bytes)."""
    cells = math.prod(int(n) for n in shape)
    need, have = cells * ARRAYS_PER_CELL * itemsize, host_memory_bytes()
    if need > have:
        raise ConfigError(
            f"config key '{key}' = {value!r}: a grid of {' x '.join(map(str, shape))} = {cells:.3g} cells needs about "
            f"{size_text(need)} to solve ({ARRAYS_PER_CELL} arrays of {itemsize} bytes per cell), this machine has "
            f"{size_text(have)} free; use a coarser geometry.spacing_mm or a smaller domain"
        )


def _planned_shape(extent_mm, spacing_mm: float) -> tuple[int, ...]:
    """Cells per axis the geometry builders will make (fields.joint, fields.box), without making them."""
    if not (isinstance(spacing_mm, (int, float)) and math.isfinite(spacing_mm) and spacing_mm > 0):
        return ()  # the builder says what is wrong with it
    return tuple(max(1, int(round(d / spacing_mm))) for d in extent_mm if math.isfinite(d) and d > 0)


def _geometry(config: Config, itemsize: int) -> tuple[Geometry, Config]:
    g = config.geometry
    try:
        if g.kind == "joint":
            dims = preset_dimensions(g.preset, g.ndim)
            changes: dict[str, Any] = {}
            for key in _DIMENSION_KEYS:
                value = getattr(g, key)
                if value not in (0.0, ()):
                    changes[key] = tuple(value) if isinstance(value, tuple) else value
            dims = dataclasses.replace(dims, **changes)
            check_grid_memory(_planned_shape(dims.domain_mm, g.spacing_mm), itemsize, "geometry.spacing_mm", g.spacing_mm)
            geometry = joint_geometry(g.spacing_mm, dims)
            resolved = {k: getattr(dims, k) for k in _DIMENSION_KEYS}
            return geometry, dataclasses.replace(config, geometry=dataclasses.replace(g, **resolved))
        if g.kind == "box":
            if len(g.size_mm) != g.ndim:
                raise ConfigError(
                    f"config key 'geometry.size_mm' = {list(g.size_mm)}: needs {g.ndim} values for geometry.ndim = {g.ndim}"
                )
            check_grid_memory(_planned_shape(g.size_mm, g.spacing_mm), itemsize, "geometry.spacing_mm", g.spacing_mm)
            return box_geometry(g.size_mm, g.spacing_mm, g.tissue), config
        path = Path(g.path)
        if not g.path:
            raise ConfigError("config key 'geometry.path' is empty: geometry.kind = 'file' needs a label file")
        if not path.is_absolute():
            path = Path(config.base_dir) / path
        spacing = g.file_spacing_mm or None
        geometry = file_geometry(path, dataset=g.dataset, spacing_mm=spacing, label_map=_file_tissues(g.file_tissues))
        check_grid_memory(geometry.grid.shape, itemsize, "geometry.path", g.path)
        if geometry.grid.ndim != g.ndim:
            raise ConfigError(f"config key 'geometry.ndim' = {g.ndim}: the label file '{g.path}' is {geometry.grid.ndim}D")
        return geometry, config
    except ConfigError:
        raise
    except (ValueError, KeyError, OSError) as err:
        key = "geometry.path" if g.kind == "file" else "geometry"
        raise ConfigError(f"config key '{key}': {err}") from None


def _centre(centre, geometry: Geometry, key: str) -> tuple[float, ...]:
    centre = tuple(centre) or tuple(geometry.landmarks["injury_site"])
    if len(centre) != geometry.grid.ndim:
        raise ConfigError(f"config key '{key}' = {list(centre)}: needs {geometry.grid.ndim} coordinates (mm, slowest axis first)")
    return centre


def _params(config: Config, dtype) -> Params:
    inj, drug = config.injury, config.drug
    values: dict[str, Any] = dict(config.parameters)  # floats, and arrays per tissue
    values.update(
        injury_rate=inj.rate if inj.enabled else 0.0,
        injury_onset=inj.onset_h,
        injury_duration=inj.duration_h,
        injury_decay=inj.decay_h,
        drug_dose=drug.dose,
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


def _seed_config(config: Config) -> Config:
    """``config`` with the default [initial] tables and nothing else: where the resting state's relaxation starts."""
    return dataclasses.replace(config, initial=config_from_dict({}).initial)


def initial_state(config: Config, geometry: Geometry, domain: Domain, dtype, rest: State | None = None) -> State:
    """Baselines per tissue (tnf, il1 and leukocytes from ``rest`` when given), then file arrays,
    blobs and regions; zero outside each species' region."""
    grid = geometry.grid
    fields = baseline_fields(geometry.labels, config.initial["baseline"])
    if rest is not None:
        fields.update({s: np.asarray(getattr(rest, s)) for s in RESTING_SPECIES})
    if config.initial["file"]:
        path = Path(config.initial["file"])
        if not path.is_absolute():
            path = Path(config.base_dir) / path
        try:
            fields.update(load_arrays(path, grid.shape))
        except (ValueError, OSError) as err:
            raise ConfigError(f"config key 'initial.file': {err}") from None
    for i, blob in enumerate(config.initial["blobs"]):
        centre = _centre(blob.centre_mm, geometry, f"initial.blobs[{i}].centre_mm")
        fields[blob.species] = add_blob(fields[blob.species], grid, centre, blob.sigma_mm, blob.amplitude)
    for i, region in enumerate(config.initial["regions"]):
        centre = _centre(region.centre_mm, geometry, f"initial.regions[{i}].centre_mm")
        fields[region.species] = set_ball(fields[region.species], grid, centre, region.radius_mm, region.value)
    if not config.drug.enabled:
        fields["drug"] = fields["complex"] = np.zeros(grid.shape)
    return State(*(jnp.asarray(fields[s], dtype=dtype) * species_region(domain, s) for s in SPECIES))


def build_scenario(config: Config) -> Scenario:
    """Geometry, parameters, masks, initial state and step plan for a config.

    Raises :class:`ConfigError` for anything the user must change.
    """
    run = config.run
    if run.precision == "float64" and not jax.config.jax_enable_x64:  # type: ignore[attr-defined]  # jax's options are untyped
        raise ConfigError(
            'run.precision = "float64" needs JAX\'s 64-bit mode, which is off: call '
            'jax.config.update("jax_enable_x64", True) (or solver.enable_precision(config)) at the start of the program'
        )
    dtype = jnp.float64 if run.precision == "float64" else jnp.float32
    n_frames = frame_count(run)
    geometry, config = _geometry(config, np.dtype(dtype).itemsize)
    grid = geometry.grid
    centre = _centre(config.injury.centre_mm, geometry, "injury.centre_mm")
    injury_mask = ball_mask(grid, centre, config.injury.radius_mm)
    domain = make_domain(geometry.labels, injury_mask, dtype, grid.spacing)
    drug = config.drug
    options = ModelOptions(
        grid=grid,
        drug=drug.enabled,
        drug_target=drug.target,
        drug_route=drug.route,
        dose_times=dose_times(drug.first_dose_h, drug.loading_h, drug.interval_h, run.t_end_h) if drug.enabled else (),
        chemotaxis_scheme=run.chemotaxis_scheme,
        walls=_walls(config, grid.ndim),
        fixed_order_sums=run.reproducible,
    )
    params = _params(config, dtype)
    state = initial_state(config, geometry, domain, dtype)  # the baseline: the step plan is made for it
    try:
        plan = StepPlan.choose(run.stepper, run.output_interval_h, params, state, options, domain, run.safety, run.dt_h)
    except StepTooLarge as err:
        raise ConfigError(str(err)) from None
    if plan.substeps > MAX_SUBSTEPS:
        binding = binding_limits(plan.limits, run.stepper)
        worst = min(binding, key=binding.__getitem__)
        cls = stepper_class(run.stepper)
        causes: dict[str, str] = {}
        stable_dt(params, state, options, domain, cls.ssp_coefficient, cls.splits_losses, cls.splits_diffusion, causes)
        raise ConfigError(
            f"the stable time step is {plan.limits[worst]:.3g} h ({limit_reason(worst, causes)}): "
            f"{plan.substeps:.3g} steps per output "
            f"interval of {run.output_interval_h:g} h, more than {MAX_SUBSTEPS:.0e}; check the initial values and "
            "[parameters] for an extreme value"
        )
    _check_devices(run.devices, grid.shape)
    return Scenario(config, geometry, options, params, domain, state, dtype, n_frames, plan)


def _file_tissues(text: str) -> dict[int, str] | None:
    """``geometry.file_tissues`` ("VALUE=TISSUE, ...") as a label map (None when empty)."""
    if not text.strip():
        return None
    table = {}
    for item in text.split(","):
        value, sep, tissue = item.partition("=")
        try:
            code = int(value)
        except ValueError:
            code = None
        if not sep or code is None or tissue.strip() not in TISSUE_NAMES:
            raise ConfigError(
                f"config key 'geometry.file_tissues': {item.strip()!r} is not VALUE=TISSUE with an integer value and "
                f"a tissue of {', '.join(TISSUE_NAMES)}"
            )
        table[code] = tissue.strip()
    return table


def _check_devices(n: int, shape: tuple[int, ...]) -> None:
    """``run.devices`` must be at hand and split the slowest axis evenly (ConfigError naming both)."""
    if n == 1:
        return
    have = jax.devices()
    if n > len(have):
        raise ConfigError(
            f"config key 'run.devices' = {n}: this process has {len(have)} {have[0].platform.upper()} device(s); "
            "on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N"
        )
    if shape[0] % n:
        fits = [k for k in range(2, min(len(have), shape[0]) + 1) if shape[0] % k == 0]
        raise ConfigError(
            f"config key 'run.devices' = {n}: the grid's slowest axis has {shape[0]} cells, not a multiple of {n}"
            + (f"; {', '.join(map(str, fits))} would split it" if fits else "")
            + " (or change geometry.spacing_mm)"
        )


def enable_precision(config: Config) -> None:
    """Turn JAX's 64-bit mode on if ``config`` runs in float64 (``run.precision``).

    JAX's mode is process-wide and must be set before arrays are made: a program's entry point
    calls this once (the ``synovia`` command does); it never turns the mode off.
    """
    if config.run.precision == "float64":
        jax.config.update("jax_enable_x64", True)
