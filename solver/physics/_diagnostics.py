"""Per-frame diagnostics: the clinical summaries a run writes, and the divergence checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fields import State

from ._domain import Domain, ModelOptions
from ._forcing import plasma_drug
from ._params import Params
from ._rhs import grid_sum, masked_mean

#: Summary scalars written per frame, with units (2D totals are per mm of depth).
SUMMARY_UNITS: dict[str, str] = {
    "synovial_fluid_tnf": "pg/mL",
    "synovial_fluid_il1": "pg/mL",
    "synovial_fluid_leukocytes": "cells/uL",
    "synovial_fluid_drug": "ug/mL",
    "synovial_fluid_complex": "pg/mL",
    "plasma_drug": "ug/mL",
    "cartilage_integrity": "1",
    "total_tnf": "pg",
    "total_il1": "pg",
    "total_leukocytes": "cells",
    "total_drug": "ug",
    "total_complex": "pg",
}

#: The summaries that exist only with the drug on.
DRUG_SUMMARIES = ("synovial_fluid_drug", "synovial_fluid_complex", "plasma_drug", "total_drug", "total_complex")


def summary_names(options: ModelOptions) -> tuple[str, ...]:
    """Names of the per-frame summaries a run with these options writes (drug ones only with the drug)."""
    return tuple(name for name in SUMMARY_UNITS if options.drug or name not in DRUG_SUMMARIES)


def summaries(state: State, domain: Domain, options: ModelOptions, params: Params | None = None, t=0.0) -> dict[str, jax.Array]:
    """Per-frame clinical scalars at time ``t`` (h): synovial-fluid means, mean cartilage integrity,
    the plasma drug level (with the drug on: needs ``params``), totals.

    Totals integrate over the grid: pg/mL * mm^3 * 1e-3 mL/mm^3 = pg; cells/uL * mm^3 = cells.
    """
    vol = options.grid.cell_volume
    exact = options.fixed_order_sums

    def mean(u, mask):
        return masked_mean(u, mask, exact)

    plasma = None
    if options.drug:
        assert params is not None, "summaries with the drug on need params"
        plasma = plasma_drug(params, options, t)

    out = {
        "synovial_fluid_tnf": mean(state.tnf, domain.fluid),
        "synovial_fluid_il1": mean(state.il1, domain.fluid),
        "synovial_fluid_leukocytes": mean(state.leukocytes, domain.fluid),
        "synovial_fluid_drug": mean(state.drug, domain.fluid),
        "synovial_fluid_complex": mean(state.complex, domain.fluid),
        "plasma_drug": plasma,
        "cartilage_integrity": mean(state.cartilage, domain.cartilage),
        "total_tnf": grid_sum(state.tnf, exact) * vol * 1e-3,
        "total_il1": grid_sum(state.il1, exact) * vol * 1e-3,
        "total_leukocytes": grid_sum(state.leukocytes, exact) * vol,
        "total_drug": grid_sum(state.drug, exact) * vol * 1e-3,
        "total_complex": grid_sum(state.complex, exact) * vol * 1e-3,
    }
    return {name: out[name] for name in summary_names(options)}


def health(state: State) -> dict[str, jax.Array]:
    """Divergence checks: whether all values are finite, and each field's minimum and largest magnitude."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(u)) for u in state]))
    fields = state._asdict().items()
    return {
        "finite": finite,
        **{f"min_{name}": jnp.min(u) for name, u in fields},
        **{f"max_abs_{name}": jnp.max(jnp.abs(u)) for name, u in fields},
    }
