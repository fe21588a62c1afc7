"""Shared test helpers: the one comparison helper, and small problems built directly from the
library API (no config files)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from fields import Grid, State, Tissue
from solver import ModelOptions, StepPlan, default_params, make_domain


def assert_close(actual, expected, *, rtol: float, atol: float = 0.0, what: str = "") -> None:
    """The one comparison helper: tolerance stated at each call."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol, err_msg=what)


#: Parameters that switch off every source and reaction (transport only).
TRANSPORT_ONLY = dict(
    decay_tnf=0.0,
    decay_il1=0.0,
    leukocyte_death=0.0,
    tnf_per_leukocyte=0.0,
    il1_per_leukocyte=0.0,
    recruitment_rate=0.0,
    basal_tnf=0.0,
    basal_il1=0.0,
    fluid_recruitment=0.0,
    fluid_mixing=0.0,
    recruitment_from_fragments=0.0,
    injury_rate=0.0,
    cartilage_repair=0.0,
    cartilage_damage_tnf=0.0,
    cartilage_damage_il1=0.0,
    drug_vascular_exchange=0.0,
    drug_clearance=0.0,
    drug_tnf_binding=0.0,
    drug_tnf_unbinding=0.0,
    drug_dose=0.0,
)


def uniform_labels(shape, tissue=Tissue.SYNOVIAL_FLUID) -> np.ndarray:
    return np.full(shape, int(tissue), dtype=np.uint8)


def layered_labels(shape) -> np.ndarray:
    """Stripes of cartilage, fluid, synovium, capsule and fluid across the last axis, a bone block inside."""
    labels = np.empty(shape, dtype=np.uint8)
    n = shape[-1]
    stripes = [Tissue.CARTILAGE, Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE, Tissue.SYNOVIAL_FLUID]
    for i, t in enumerate(stripes):
        labels[..., i * n // len(stripes) : (i + 1) * n // len(stripes)] = int(t)
    centre = tuple(slice(s // 2 - max(1, s // 8), s // 2 + max(1, s // 8)) for s in shape)
    labels[centre] = int(Tissue.BONE)
    return labels


def setup(
    grid: Grid,
    labels,
    state_arrays: dict,
    *,
    dtype=jnp.float64,
    drug=False,
    scheme="upwind",
    walls=(),
    injury_mask=None,
    **param_overrides,
):
    """(options, params, domain, state) for a hand-made problem; missing species are zero."""
    options = ModelOptions(grid=grid, drug=drug, chemotaxis_scheme=scheme, walls=walls)
    params = default_params(dtype, **param_overrides)
    injury = np.zeros(grid.shape, bool) if injury_mask is None else injury_mask
    domain = make_domain(labels, injury, dtype, grid.spacing)
    zeros = np.zeros(grid.shape)
    region = {
        "tnf": domain.cytokine,
        "il1": domain.cytokine,
        "drug": domain.cytokine,
        "complex": domain.cytokine,
        "leukocytes": domain.leukocyte,
        "cartilage": domain.cartilage,
    }
    state = State(*(jnp.asarray(state_arrays.get(s, zeros), dtype) * region[s] for s in State._fields))
    return options, params, domain, state


def integrate(options, params, domain, state, t_end: float, *, stepper="ssp_rk3", safety=0.9, dt=None, t0=0.0):
    """Advance to ``t0 + t_end`` in one interval of automatic (or given) steps."""
    plan = StepPlan.choose(stepper, t_end, params, state, options, domain, safety, dt)
    return plan.solver(options).advance(state, t0, plan.dt, params, domain), plan.substeps, plan.dt


def small_problem(**overrides):
    """A 2D 8 x 10 layered joint with random fields and an injury: every term of the model on."""
    grid = Grid((8, 10), (0.25, 0.25))
    rng = np.random.default_rng(3)
    init = {
        "tnf": 20 * rng.uniform(size=grid.shape),
        "il1": 5 * rng.uniform(size=grid.shape),
        "leukocytes": 300 * rng.uniform(size=grid.shape),
        "cartilage": np.ones(grid.shape),
    }
    mask = np.zeros(grid.shape, bool)
    mask[2:5, 3:6] = True
    return setup(grid, layered_labels(grid.shape), init, injury_mask=mask, **overrides)


def small_problem_3d(**overrides):
    """The 3D counterpart of :func:`small_problem` (6 x 7 x 8 cells)."""
    grid = Grid((6, 7, 8), (0.3, 0.25, 0.2))
    rng = np.random.default_rng(5)
    init = {
        "tnf": 20 * rng.uniform(size=grid.shape),
        "il1": 5 * rng.uniform(size=grid.shape),
        "leukocytes": 300 * rng.uniform(size=grid.shape),
        "cartilage": rng.uniform(0.5, 1.0, size=grid.shape),
    }
    mask = np.zeros(grid.shape, bool)
    mask[1:4, 2:5, 2:5] = True
    return setup(grid, layered_labels(grid.shape), init, injury_mask=mask, **overrides)


#: The session's small study (the ``study`` fixture): a 2D MCP joint at 0.4 mm for 2 h ...
STUDY_SCENARIO = textwrap.dedent(
    """
    [scenario.run]
    t_end_h = 2.0
    output_interval_h = 0.5
    precision = "float64"

    [scenario.geometry]
    preset = "mcp"
    spacing_mm = 0.4

    [scenario.injury]
    radius_mm = 1.5
    """
)
#: ... at four points: injury rate x recruitment rate ...
STUDY_SWEEP = STUDY_SCENARIO + textwrap.dedent(
    """
    [vary]
    "injury.rate" = [100.0, 800.0]
    "parameters.recruitment_rate" = [50.0, 5000.0]
    """
)
#: ... in this order (the first key slowest).
STUDY_RATES = [(100.0, 50.0), (100.0, 5000.0), (800.0, 50.0), (800.0, 5000.0)]


def sweep_file(folder: Path, text: str = STUDY_SWEEP, name: str = "sweep.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path
