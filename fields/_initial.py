"""Initial conditions: baselines per tissue, Gaussian blobs, balls of set value, arrays from a file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ._geometry import ball_mask
from ._grid import Grid
from ._state import SPECIES
from ._tissues import TISSUE_NAMES


def squared_distance(grid: Grid, centre_mm: Sequence[float]) -> np.ndarray:
    """|x - centre|^2 at every cell centre, mm^2."""
    if len(centre_mm) != grid.ndim:
        raise ValueError(f"centre {tuple(centre_mm)} needs {grid.ndim} coordinates (slowest axis first)")
    return sum((x - c) ** 2 for x, c in zip(grid.mesh(), centre_mm))


def baseline_fields(labels: np.ndarray, baseline: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Each species set per tissue from ``baseline[tissue][species]`` (missing: 0)."""
    table = np.array([[baseline.get(t, {}).get(s, 0.0) for t in TISSUE_NAMES] for s in SPECIES])
    return {s: table[i][labels] for i, s in enumerate(SPECIES)}


def add_blob(field: np.ndarray, grid: Grid, centre_mm, sigma_mm: float, amplitude: float) -> np.ndarray:
    """``field + amplitude * exp(-|x - centre|^2 / (2 sigma^2))``."""
    return field + amplitude * np.exp(-squared_distance(grid, centre_mm) / (2.0 * sigma_mm**2))


def set_ball(field: np.ndarray, grid: Grid, centre_mm, radius_mm: float, value: float) -> np.ndarray:
    """``field`` with every cell centre within ``radius_mm`` of ``centre_mm`` set to ``value``."""
    return np.where(ball_mask(grid, centre_mm, radius_mm), value, field)


def load_arrays(path: str | Path, shape: tuple[int, ...], species: Iterable[str] = SPECIES) -> dict[str, np.ndarray]:
    """Per-species initial arrays from an HDF5 file (datasets named by species) or an .npz.

    Only the species present in the file are returned; each must have the grid's shape.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"initial-condition file '{path}' does not exist")
    out: dict[str, np.ndarray] = {}
    if path.suffix == ".npz":
        with np.load(path) as data:
            found = {k: np.asarray(data[k]) for k in data.files}
    else:
        import h5py

        with h5py.File(path, "r") as f:
            found = {k: np.asarray(f[k]) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    unknown = sorted(set(found) - set(species))
    if unknown:
        raise ValueError(f"initial-condition file '{path}' has unknown species {unknown}; allowed: {list(species)}")
    for name, arr in found.items():
        if arr.shape != tuple(shape):
            raise ValueError(f"initial-condition file '{path}': '{name}' has shape {arr.shape}, the grid is {tuple(shape)}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"initial-condition file '{path}': '{name}' must be finite and non-negative")
        out[name] = arr.astype(float)
    return out
