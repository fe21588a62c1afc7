"""The benchmark problem: a uniform box of synovial fluid, built with the library API.

Leukocytes everywhere (plus a bump), a TNF blob and an IL-1 blob, and an active injury
source in a ball at the centre, so every term of the TNF, IL-1 and leukocyte equations
(diffusion, chemotaxis up f(T) = T/(K_chi + T), secretion, basal secretion, entry into the
fluid and fluid mixing, both through means over the fluid, decay, injury) does work.
The synovial recruitment and cartilage terms are evaluated by synovia on every cell as in
any geometry, but are zero in a fluid-only box; the drug is off.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from fields import Grid, State, Tissue
from solver import Domain, ModelOptions, Params, StepPlan, default_params, make_domain

#: Cell size (mm) of the throughput problems: the 2D knee's spacing.
SPACING_MM = 0.25

LEUKOCYTE_BASELINE = 100.0  # cells/uL
TNF_PEAK = 200.0  # pg/mL
IL1_PEAK = 80.0  # pg/mL


@dataclasses.dataclass
class Problem:
    options: ModelOptions
    params: Params
    domain: Domain
    state: State
    dt: float  # h, 0.9 of the stable step (SSP-RK3)
    dtype: object
    labels: np.ndarray
    injury_mask: np.ndarray

    @property
    def grid(self) -> Grid:
        return self.options.grid

    @property
    def cells(self) -> int:
        return self.grid.size


def box_problem(
    shape: tuple[int, ...], dtype=jnp.float64, spacing: float | None = None, extent_mm: float | None = None, injury: bool = True
) -> Problem:
    """The benchmark box of ``shape`` cells (``spacing`` mm each, or a cube of ``extent_mm``).

    ``injury=False`` leaves out the injury ball (a discontinuous source): the smooth case.
    """
    shape = tuple(int(n) for n in shape)
    if extent_mm is not None:
        spacing = extent_mm / max(shape)
    h = float(spacing or SPACING_MM)
    grid = Grid(shape, (h,) * len(shape))
    x = grid.mesh()
    ext = np.array(grid.extent)
    centre = ext / 2
    scale = float(min(ext))
    r2 = sum((xi - c) ** 2 for xi, c in zip(x, centre))
    # blobs off the centre so that the fields are not symmetric (all axes and both directions work)
    off = centre + 0.12 * scale * np.array([1.0, -0.7, 0.4][: len(shape)])
    r2_off = sum((xi - c) ** 2 for xi, c in zip(x, off))
    sigma = 0.12 * scale
    tnf = TNF_PEAK * np.exp(-r2_off / (2 * sigma**2))
    il1 = IL1_PEAK * np.exp(-r2 / (2 * (1.3 * sigma) ** 2))
    leuk = LEUKOCYTE_BASELINE * (1.0 + 0.5 * np.exp(-r2 / (2 * (2 * sigma) ** 2)))
    injury = (r2 <= (0.08 * scale) ** 2) & injury
    labels = np.full(shape, int(Tissue.SYNOVIAL_FLUID), dtype=np.uint8)

    options = ModelOptions(grid=grid, drug=False, chemotaxis_scheme="upwind")
    params = default_params(dtype)
    domain = make_domain(labels, injury, dtype, grid.spacing)
    zeros = np.zeros(shape)
    state = State(*(jnp.asarray(a, dtype) for a in (tnf, il1, leuk, zeros, zeros, zeros)))
    dt = StepPlan.choose("ssp_rk3", 1.0, params, state, options, domain, 0.9).dt  # the step of a 1 h interval
    return Problem(options, params, domain, state, dt, dtype, labels, injury)


def shape_for(ndim: int, n: int) -> tuple[int, ...]:
    return (n,) * ndim


def cells_label(shape: tuple[int, ...]) -> str:
    n = shape[0]
    return f"{n}^{len(shape)}" if all(s == n for s in shape) else "x".join(map(str, shape))


def bytes_per_cell_update(itemsize: int, n_species: int = 4, n_coefficient_arrays: int = 8, stages: int = 3) -> dict:
    """Minimal memory traffic of one SSP-RK3 step per cell (bytes), for a bandwidth roofline.

    State: stage 1 reads y0 and writes y1; stages 2 and 3 read y_s and y0 and write y_{s+1}:
    (2 + 3 + 3) = 8 state arrays per species per step (caches cannot hold a field of a
    large grid between stages, so neighbours come from cache but every field streams once
    per stage). Species: T, I, L, C (the drug is off; a zero field needs no traffic).
    Coefficients: the per-cell arrays synovia's formulation reads each stage: cell
    diffusivities of T, I, L (face values follow by harmonic means) and the cytokine,
    leukocyte, cartilage, synovium and injury masks (8 arrays). A leaner layout (one uint8
    tissue label per cell and per-tissue tables) would need 1 byte per stage instead.
    """
    state_arrays = 2 + 3 * (stages - 1)
    state = state_arrays * n_species * itemsize
    coeff = stages * n_coefficient_arrays * itemsize
    lean = state + stages * 1
    return {"state_bytes": state, "coefficient_bytes": coeff, "total_bytes": state + coeff, "lean_total_bytes": lean}


def steps_per_call(cells: int, target_cell_updates: float) -> int:
    """Sub-steps per timed call, so that one call does about ``target_cell_updates``."""
    return int(min(400, max(2, math.ceil(target_cell_updates / cells))))
