"""The joint as the model sees it: each species' region, the tissue masks, the static options.

Which tissues each species lives in is ``fields.SPECIES_TISSUES``; :func:`make_domain` turns tissue
labels into those masks once per geometry.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fields import SPECIES_TISSUES, Grid, Tissue

from ._operators import NO_FLUX, WallCondition

CYTOKINE_TISSUES = SPECIES_TISSUES["tnf"]
LEUKOCYTE_TISSUES = SPECIES_TISSUES["leukocytes"]
TRANSPORTED = ("tnf", "il1", "leukocytes", "drug", "complex")
#: The fields that exist only with the drug on (None in a stepper's state without it).
DRUG_FIELDS = ("drug", "complex")


class Domain(NamedTuple):
    """Arrays derived from the geometry (traced, one compile per grid shape).

    Masks are 0/1 in the state dtype; ``injury`` is the injury region's 0/1 mask;
    ``cartilage_depth`` is, in cartilage, the depth (mm) of the top of each cell's layer below the
    articular surface (0 for cells facing the fluid) and :data:`FAR` elsewhere.
    """

    labels: jax.Array
    cytokine: jax.Array
    leukocyte: jax.Array
    cartilage: jax.Array
    synovium: jax.Array
    fluid: jax.Array
    injury: jax.Array
    cartilage_depth: jax.Array


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Static choices: changing one recompiles; everything numeric lives in :class:`Params`."""

    grid: Grid
    drug: bool = False
    drug_target: str = "tnf"  # solver._drugs.TARGETS
    drug_route: str = "sc"  # solver._drugs.ROUTES
    dose_times: tuple[float, ...] = ()  # h
    chemotaxis_scheme: str = "upwind"
    walls: tuple[tuple[str, tuple[tuple[WallCondition, WallCondition], ...]], ...] = ()
    fixed_order_sums: bool = False  # grid sums in an order fixed by the shape (solver.physics.grid_sum)

    def walls_for(self, species: str) -> tuple[tuple[WallCondition, WallCondition], ...]:
        for name, walls in self.walls:
            if name == species:
                return walls
        return ((NO_FLUX, NO_FLUX),) * self.grid.ndim

    @property
    def species(self) -> tuple[str, ...]:
        """Species that are integrated and written out."""
        base = ("tnf", "il1", "leukocytes", "cartilage")
        return base + DRUG_FIELDS if self.drug else base

    @property
    def binds_tnf(self) -> bool:
        """Whether a drug is on that binds TNF (an anti-TNF)."""
        return self.drug and self.drug_target == "tnf"

    @property
    def blocks_il1(self) -> bool:
        """Whether a drug is on that blocks the IL-1 receptor."""
        return self.drug and self.drug_target == "il1_receptor"


#: Depth (mm) given to cells that are not cartilage or face no fluid: far below any penetration.
FAR = 1e3


def make_domain(labels: np.ndarray, injury_mask: np.ndarray, dtype, spacing: tuple[float, ...]) -> Domain:
    """Masks for each species' region from integer tissue labels on a grid of this ``spacing`` (mm)."""
    labels = np.asarray(labels)

    def mask(tissues):
        return jnp.asarray(np.isin(labels, [int(t) for t in tissues]), dtype=dtype)

    return Domain(
        labels=jnp.asarray(labels, dtype=jnp.int32),
        cytokine=mask(CYTOKINE_TISSUES),
        leukocyte=mask(LEUKOCYTE_TISSUES),
        cartilage=mask((Tissue.CARTILAGE,)),
        synovium=mask((Tissue.SYNOVIUM,)),
        fluid=mask((Tissue.SYNOVIAL_FLUID,)),
        injury=jnp.asarray(np.asarray(injury_mask) & np.isin(labels, [int(t) for t in CYTOKINE_TISSUES]), dtype=dtype),
        cartilage_depth=jnp.asarray(cartilage_depth(labels, spacing), dtype=dtype),
    )


def cartilage_depth(labels: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Depth (mm) below the articular surface of the top of each cartilage cell's layer.

    The distance from the cell centre to the nearest synovial-fluid cell centre, less one cell
    (half a cell on each side): 0 for a cell sharing a face with the fluid, one cell for the next
    row. :data:`FAR` outside cartilage and where no fluid is present.
    """
    from scipy.ndimage import distance_transform_edt

    labels = np.asarray(labels)
    fluid = labels == int(Tissue.SYNOVIAL_FLUID)
    out = np.full(labels.shape, FAR)
    cartilage = labels == int(Tissue.CARTILAGE)
    if fluid.any() and cartilage.any():
        distance = distance_transform_edt(~fluid, sampling=spacing)
        out[cartilage] = np.maximum(distance[cartilage] - layer_thickness(spacing), 0.0)
    return out


def layer_thickness(spacing) -> float:
    """Thickness (mm) of one cell's layer below the articular surface: the geometric-mean spacing."""
    spacing = np.asarray(spacing, dtype=float)
    return float(np.prod(spacing) ** (1.0 / spacing.size))


def species_region(domain: Domain, species: str) -> jax.Array:
    """The 0/1 mask of the tissues ``species`` lives in (``fields.SPECIES_TISSUES``)."""
    tissues = SPECIES_TISSUES[species]
    if tissues == LEUKOCYTE_TISSUES:
        return domain.leukocyte
    if tissues == (Tissue.CARTILAGE,):
        return domain.cartilage
    if tissues == CYTOKINE_TISSUES:
        return domain.cytokine
    raise ValueError(f"no mask for the tissues of {species!r}: {tissues}")
