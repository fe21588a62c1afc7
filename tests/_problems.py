"""Small problems built directly from the library API (no config files)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fields import Grid, State, Tissue
from solver import ModelOptions, default_params, get_solver, make_domain
from solver._simulate import choose_substeps, super_step_stages
from solver._steppers import get_stepper

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
    n_sub, dt, limits = choose_substeps(t_end, params, state, options, get_stepper(stepper), safety, dt)
    solver = get_solver(options, stepper, n_sub, super_step_stages(get_stepper(stepper), dt, limits, safety))
    return solver.advance(state, t0, dt, params, domain), n_sub, dt
