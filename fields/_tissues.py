"""Tissue labels: the integer codes stored on the grid and in output files."""

from __future__ import annotations

import enum


class Tissue(enum.IntEnum):
    """Integer tissue code of each grid cell."""

    EXCLUDED = 0
    BONE = 1
    CARTILAGE = 2
    SYNOVIAL_FLUID = 3
    SYNOVIUM = 4
    CAPSULE = 5


#: Tissue names in code order, as used in configs (``[tissues.synovial_fluid]``) and files.
TISSUE_NAMES: tuple[str, ...] = tuple(t.name.lower() for t in Tissue)
N_TISSUES = len(TISSUE_NAMES)

_CYTOKINE_TISSUES = (Tissue.CARTILAGE, Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE)

#: The tissues each species lives in (is nonzero in, is integrated and observed in): cytokines,
#: drug and complex everywhere but bone and excluded cells; leukocytes in the fluid, synovium and
#: capsule; the cartilage integrity in cartilage.
SPECIES_TISSUES: dict[str, tuple[Tissue, ...]] = {
    "tnf": _CYTOKINE_TISSUES,
    "il1": _CYTOKINE_TISSUES,
    "leukocytes": (Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE),
    "cartilage": (Tissue.CARTILAGE,),
    "drug": _CYTOKINE_TISSUES,
    "complex": _CYTOKINE_TISSUES,
}
