"""The simulated state: a named pytree of concentration fields."""

from __future__ import annotations

from typing import NamedTuple

import jax


class State(NamedTuple):
    """Fields on the grid, each of shape ``(ny, nx)`` or ``(nz, ny, nx)``.

    Attributes:
        tnf: TNF concentration, pg/mL.
        il1: IL-1 concentration, pg/mL.
        leukocytes: leukocyte density, cells/uL (= cells/mm^3).
        cartilage: cartilage matrix integrity, fraction in [0, 1] (cartilage cells only).
        drug: free drug concentration, ug/mL (zero when the drug is off).
        complex: TNF held in drug-TNF complexes, pg/mL of TNF (zero without an anti-TNF drug).
    """

    tnf: jax.Array
    il1: jax.Array
    leukocytes: jax.Array
    cartilage: jax.Array
    drug: jax.Array
    complex: jax.Array


#: Species names in state order, as used in configs and output files.
SPECIES: tuple[str, ...] = State._fields

#: Units of each species.
SPECIES_UNITS: dict[str, str] = {
    "tnf": "pg/mL",
    "il1": "pg/mL",
    "leukocytes": "cells/uL",
    "cartilage": "1",
    "drug": "ug/mL",
    "complex": "pg/mL",
}
