"""The uniform Cartesian grid: static, hashable geometry (units: mm)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Grid:
    """A uniform cell-centred grid in 2D or 3D.

    Axes are ordered slowest first, as arrays are stored: ``(ny, nx)`` in 2D and
    ``(nz, ny, nx)`` in 3D. Axis 0 is the long axis of the bones.

    Attributes:
        shape: number of cells per axis.
        spacing: cell size per axis, mm.
        origin: coordinate of the lower corner of the first cell per axis, mm.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        spacing = tuple(float(h) for h in self.spacing)
        origin = tuple(float(o) for o in self.origin) or (0.0,) * len(shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"grid must be 2D or 3D, got shape {shape}")
        if len(spacing) != len(shape) or len(origin) != len(shape):
            raise ValueError("shape, spacing and origin must have the same length")
        if any(n < 1 for n in shape):
            raise ValueError(f"every axis needs at least one cell, got shape {shape}")
        if any(not (h > 0 and math.isfinite(h)) for h in spacing):
            raise ValueError(f"spacing must be positive, got {spacing}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def cell_volume(self) -> float:
        """mm^3 in 3D; mm^2 (per mm of depth) in 2D."""
        return float(np.prod(self.spacing))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def extent(self) -> tuple[float, ...]:
        """Length of the domain along each axis, mm."""
        return tuple(n * h for n, h in zip(self.shape, self.spacing))

    def axis_centres(self, axis: int) -> np.ndarray:
        """Cell-centre coordinates along one axis, mm, shape ``(shape[axis],)``."""
        return self.origin[axis] + (np.arange(self.shape[axis]) + 0.5) * self.spacing[axis]

    def mesh(self) -> tuple[np.ndarray, ...]:
        """Cell-centre coordinates, one array of ``shape`` per axis (``indexing='ij'``)."""
        return tuple(np.meshgrid(*(self.axis_centres(a) for a in range(self.ndim)), indexing="ij"))
