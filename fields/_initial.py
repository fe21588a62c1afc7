"""Initial conditions: baselines per tissue, Gaussian blobs, balls of set value, arrays from a file."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ._files import hdf5_problem
from ._geometry import ball_mask
from ._grid import Grid
from ._state import SPECIES
from ._tissues import TISSUE_NAMES


def squared_distance(grid: Grid, centre_mm: Sequence[float]) -> np.ndarray:
    """|x - centre|^2 at every cell centre, mm^2."""
    if len(centre_mm) != grid.ndim:
        raise ValueError(f"centre {tuple(centre_mm)} needs {grid.ndim} coordinates (slowest axis first)")
    return cast(np.ndarray, sum((x - c) ** 2 for x, c in zip(grid.mesh(), centre_mm)))  # an array: ndim >= 1


def baseline_fields(labels: np.ndarray, baseline: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Each species set per tissue from ``baseline[tissue][species]`` (missing: 0)."""
    table = np.array([[baseline.get(t, {}).get(s, 0.0) for t in TISSUE_NAMES] for s in SPECIES])
    return {s: table[i][labels] for i, s in enumerate(SPECIES)}


def add_blob(field: np.ndarray, grid: Grid, centre_mm: Sequence[float], sigma_mm: float, amplitude: float) -> np.ndarray:
    """``field + amplitude * exp(-|x - centre|^2 / (2 sigma^2))``."""
    return field + amplitude * np.exp(-squared_distance(grid, centre_mm) / (2.0 * sigma_mm**2))


def set_ball(field: np.ndarray, grid: Grid, centre_mm: Sequence[float], radius_mm: float, value: float) -> np.ndarray:
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

    # names and shapes, before any array is read
    def check(names: Iterable[str], shape_of: Callable[[str], Sequence[int]]) -> None:
        unknown = sorted(set(names) - set(species))
        if unknown:
            raise ValueError(f"initial-condition file '{path}' has unknown species {unknown}; allowed: {list(species)}")
        for name in names:
            if tuple(shape_of(name)) != tuple(shape):
                raise ValueError(
                    f"initial-condition file '{path}': '{name}' has shape {tuple(shape_of(name))}, the grid is {tuple(shape)}"
                )

    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                check(data.files, lambda k: _npz_shape(data, k))
                found = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, EOFError) as err:
            raise ValueError(f"initial-condition file '{path}' is not a readable .npz archive: {err}") from None
    else:
        import h5py

        if problem := hdf5_problem(path):
            raise ValueError(f"initial-condition file '{path}' {problem} (expected HDF5 or .npz)")
        with h5py.File(path, "r") as f:
            names = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
            check(names, lambda k: f[k].shape)
            found = {k: np.asarray(f[k]) for k in names}
    for name, arr in found.items():
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"initial-condition file '{path}': '{name}' must be finite and non-negative")
        out[name] = arr.astype(float)
    return out


def _npz_shape(data: Any, key: str) -> tuple[int, ...]:  # data: an open np.lib.npyio.NpzFile
    """The shape of ``key`` in an open .npz archive, from its .npy header (nothing else read)."""
    with data.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return reader(member)[0]
