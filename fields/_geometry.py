"""Tissue geometry of a synovial joint: labelled grids built from parameters or read from files.

A :class:`Geometry` is a :class:`~fields._grid.Grid` plus one ``uint8`` tissue code per cell
(:class:`~fields._tissues.Tissue`) and a few named points (landmarks) in mm.

Conventions (shared with the rest of ``fields``): arrays are ``(ny, nx)`` in 2D and ``(nz, ny, nx)`` in
3D; axis 0 is the long axis of the bones (vertical, "up" is increasing coordinate); coordinates are in mm
and refer to cell centres (``Grid.mesh()``). Landmarks use the same axis order as the grid.

The parametric joint (:func:`joint`) is an idealised section of a knee (or a finger MCP joint): two
bones with rounded, cartilage-covered ends facing each other across a thin fluid gap, enclosed in a
joint cavity that is lined by synovium and wrapped in a capsule attached to the bone shafts. In 3D the
same construction is rotated about the vertical axis (bones are solids of revolution), so the 2D
geometry equals the 3D one's section through the joint centre, ``labels3d[:, mid, :]``.

Sources for the default dimensions are in ``docs/model.md`` (table "Geometry"); values with no
source there are stated as modelling assumptions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from ._files import check_size, hdf5_problem, host_memory_bytes
from ._grid import Grid
from ._tissues import N_TISSUES, TISSUE_NAMES, Tissue

__all__ = [
    "Geometry",
    "JointDimensions",
    "PRESETS",
    "preset_dimensions",
    "joint",
    "box",
    "from_file",
    "ball_mask",
]


# --------------------------------------------------------------------------------------------------
# Geometry container
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Geometry:
    """A grid with one tissue code per cell and named points.

    Attributes:
        grid: the uniform grid (mm).
        labels: tissue code per cell (:class:`Tissue` values), ``uint8``, shape ``grid.shape``. Stored as a
            read-only copy so that a geometry shared between runs cannot be edited behind their back.
        landmarks: named points in mm, each a tuple with one coordinate per grid axis (axis order as the
            grid). Always holds ``'joint_centre'`` and ``'injury_site'``.
    """

    grid: Grid
    labels: np.ndarray
    landmarks: Mapping[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        if not isinstance(self.grid, Grid):
            raise TypeError(f"grid must be a fields._grid.Grid, got {type(self.grid).__name__}")
        labels = np.asarray(self.labels)
        if labels.shape != self.grid.shape:
            raise ValueError(f"labels have shape {labels.shape} but the grid has shape {self.grid.shape}")
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
        bad = _unknown_codes(labels)
        if bad:
            raise ValueError(
                f"labels hold values {bad} that are not tissue codes; allowed 0..{N_TISSUES - 1} "
                f"({', '.join(f'{t.value}={t.name.lower()}' for t in Tissue)})"
            )
        labels = np.array(labels, dtype=np.uint8, order="C", copy=True)
        labels.setflags(write=False)

        points: dict[str, tuple[float, ...]] = {}
        for name, point in dict(self.landmarks).items():
            p = tuple(float(c) for c in np.ravel(np.asarray(point, dtype=float)))
            if len(p) != self.grid.ndim:
                raise ValueError(f"landmark {name!r} has {len(p)} coordinates, expected {self.grid.ndim} (one per grid axis)")
            points[str(name)] = p
        missing = [k for k in ("joint_centre", "injury_site") if k not in points]
        if missing:
            raise ValueError(f"landmarks must include {missing}; got {sorted(points)}")

        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "landmarks", types.MappingProxyType(points))

    def counts(self) -> dict[str, int]:
        """Number of cells of each tissue, keyed by tissue name (all names present, zeros included)."""
        n = np.bincount(self.labels.ravel(), minlength=N_TISSUES)
        return {name: int(n[code]) for code, name in enumerate(TISSUE_NAMES)}


def _unknown_codes(labels: np.ndarray) -> list[int]:
    """Distinct values in ``labels`` that are not tissue codes, sorted."""
    values = np.unique(labels)
    return [int(v) for v in values if not (0 <= int(v) < N_TISSUES)]


# --------------------------------------------------------------------------------------------------
# Joint dimensions and presets
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JointDimensions:
    """Dimensions of the parametric joint, all in mm.

    Axis order follows the grid: 2D ``(height, width)``; 3D ``(height, depth, width)`` (the depth axis is
    inserted in the middle so that the last axis is the width in both, and the 2D geometry is the 3D one's
    section ``[:, mid, :]``). Axis 0 (height) is the long axis of the bones.

    Defaults are those of the 2D knee preset (see :data:`PRESETS` for the MCP joint). Sources refer to
    the "Geometry" table in ``docs/model.md``; values without a source there are stated as
    modelling assumptions.

    Attributes:
        domain_mm: extent of the domain along each axis (2 or 3 entries). Knee default ``(50, 44)``:
            an assumption, large enough to hold the cavity, its lining and capsule plus a margin of
            excluded tissue (200 x 176 cells at 0.25 mm).
        bone_radius_upper_mm: radius of the subchondral bone surface of the upper bone's rounded end
            (femoral condyle / metacarpal head). Knee default 20: assumption (sagittal femoral condyle
            radius of curvature is of order 20 mm; not in docs/model.md).
        bone_radius_lower_mm: radius of the lower bone's end (tibial plateau / proximal phalanx base);
            a large radius makes it nearly flat. Knee default 60: assumption (the tibial plateau is
            nearly flat; not in docs/model.md).
        bone_half_width_mm: half width of the bone shafts (the rounded ends are clipped to this width).
            Must not exceed either radius, so that each end is a rounded cap without a step. Knee
            default 18: assumption (not in docs/model.md).
        cartilage_thickness_mm: thickness of each articular cartilage layer. Knee default 2.0: docs/model.md,
            knee cartilage mean 1.57-2.43 mm (PMID 11237657).
        joint_space_mm: radiographic joint space, the bone-to-bone distance at the joint centre
            (= 2 cartilage layers + fluid gap); must exceed ``2 * cartilage_thickness_mm``. Knee default
            5.2: docs/model.md, minimum joint space women 4.8 +- 0.7 mm, men 5.7 +- 0.8 mm (BMC Musculoskelet
            Disord 2008;9:119); 5.2 is between the two means, leaving a 1.2 mm fluid gap.
        cavity_half_extent_mm: half size of the joint cavity (a rounded box centred on the joint centre)
            per axis, same length as ``domain_mm``. The vertical half extent reaches beyond the level where
            the condyles become shafts, and the lateral one beyond the bone half width, so that the cavity
            wraps around the bone ends and the capsule attaches to the shafts. Knee default ``(16, 19.5)``:
            assumption.
        cavity_corner_radius_mm: corner radius of the cavity; at most the smallest half extent. Knee
            default 4: assumption.
        synovium_thickness_mm: thickness of the synovial membrane around the cavity. This is an
            effective membrane thickness that includes the subintima: the lining itself is only 1-2 cell
            layers when healthy and 10-15+ in advanced RA (docs/model.md, Smith 2011, Open Rheumatol J 5:100,
            thickness unconfirmed). Knee default 0.75 (3 cells at 0.25 mm): assumption.
        capsule_thickness_mm: thickness of the capsule / subsynovial tissue outside the synovium. Knee
            default 1.5: assumption.
    """

    domain_mm: tuple[float, ...] = (50.0, 44.0)
    bone_radius_upper_mm: float = 20.0
    bone_radius_lower_mm: float = 60.0
    bone_half_width_mm: float = 18.0
    cartilage_thickness_mm: float = 2.0
    joint_space_mm: float = 5.2
    cavity_half_extent_mm: tuple[float, ...] = (16.0, 19.5)
    cavity_corner_radius_mm: float = 4.0
    synovium_thickness_mm: float = 0.75
    capsule_thickness_mm: float = 1.5

    def __post_init__(self) -> None:
        domain = _float_tuple("domain_mm", self.domain_mm)
        cavity = _float_tuple("cavity_half_extent_mm", self.cavity_half_extent_mm)
        if len(domain) not in (2, 3):
            raise ValueError(f"domain_mm must have 2 (2D) or 3 (3D) entries, got {len(domain)}: {domain}")
        if len(cavity) != len(domain):
            raise ValueError(
                f"cavity_half_extent_mm has {len(cavity)} entries {cavity} but domain_mm has {len(domain)} "
                f"{domain}; they must match (one per axis)"
            )
        for name, values in (("domain_mm", domain), ("cavity_half_extent_mm", cavity)):
            for v in values:
                if not (math.isfinite(v) and v > 0):
                    raise ValueError(f"{name} entries must be positive and finite, got {values}")
        object.__setattr__(self, "domain_mm", domain)
        object.__setattr__(self, "cavity_half_extent_mm", cavity)

        for f in dataclasses.fields(self):
            if f.name in ("domain_mm", "cavity_half_extent_mm"):
                continue
            v = getattr(self, f.name)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{f.name} must be a number in mm, got {v!r}") from None
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{f.name} must be positive and finite (mm), got {v}")
            object.__setattr__(self, f.name, v)

        t, js = self.cartilage_thickness_mm, self.joint_space_mm
        if not js > 2 * t:
            raise ValueError(
                f"joint_space_mm={js} must exceed 2 * cartilage_thickness_mm = {2 * t} "
                "(joint space = two cartilage layers + a fluid gap)"
            )
        hw = self.bone_half_width_mm
        for name in ("bone_radius_upper_mm", "bone_radius_lower_mm"):
            if hw > getattr(self, name):
                raise ValueError(
                    f"bone_half_width_mm={hw} must not exceed {name}={getattr(self, name)} "
                    "(the bone end is a cap of that radius clipped to the shaft width)"
                )
        r = self.cavity_corner_radius_mm
        if r > min(cavity):
            raise ValueError(f"cavity_corner_radius_mm={r} must not exceed the smallest cavity half extent {min(cavity)}")
        # The lined cavity must fit in the domain: a membrane cut by the domain wall would leave fluid
        # touching the wall, i.e. a cavity not enclosed by synovium.
        outer = self.synovium_thickness_mm + self.capsule_thickness_mm
        for axis, (c, d) in enumerate(zip(cavity, domain, strict=True)):
            if c + outer > d / 2:
                raise ValueError(
                    f"cavity_half_extent_mm[{axis}]={c} + synovium + capsule ({outer}) = {c + outer} exceeds "
                    f"half the domain ({d / 2}); the lined cavity must fit inside domain_mm={domain}"
                )
        if js / 2 >= domain[0] / 2:
            raise ValueError(f"joint_space_mm={js} does not fit in the domain height {domain[0]}")

    @property
    def ndim(self) -> int:
        """2 or 3, from the length of ``domain_mm``."""
        return len(self.domain_mm)

    @property
    def fluid_gap_mm(self) -> float:
        """Fluid gap between the cartilage layers at the joint centre, mm."""
        return self.joint_space_mm - 2 * self.cartilage_thickness_mm


def _float_tuple(name: str, value: Any) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers in mm, got {value!r}") from None


#: 2D presets, ``(height, width)`` axes. Use :func:`preset_dimensions` for 3D.
PRESETS: dict[str, JointDimensions] = {
    # Human knee, sagittal-like section. Sources in the JointDimensions docstring (the defaults).
    "knee": JointDimensions(),
    # Human finger metacarpophalangeal (MCP) joint, designed for a 0.05-0.1 mm grid.
    # cartilage 0.7 mm: docs/model.md, MCP cartilage 0.36-1.10 mm (Cipolletta et al. 2021, Clin Exp Rheumatol
    #   39:1394), middle of the range.
    # joint space 1.6 mm = 2 x 0.7 cartilage + 0.2 mm fluid gap: assumption (for comparison, the PIP model
    #   of Macfarlane, Chaplain, Eftimie 2022 in docs/model.md uses 0.4 mm cartilage and a 0.1 mm gap).
    # metacarpal head radius 7 mm, phalanx base radius 10 mm (shallower, concave in reality; modelled
    #   convex and nearly flat), shaft half width 5 mm, synovium 0.2 mm (effective, Smith 2011 as for the
    #   knee), capsule 0.5 mm, cavity and domain: assumptions.
    "mcp": JointDimensions(
        domain_mm=(16.0, 16.0),
        bone_radius_upper_mm=7.0,
        bone_radius_lower_mm=10.0,
        bone_half_width_mm=5.0,
        cartilage_thickness_mm=0.7,
        joint_space_mm=1.6,
        cavity_half_extent_mm=(4.5, 5.8),
        cavity_corner_radius_mm=1.5,
        synovium_thickness_mm=0.2,
        capsule_thickness_mm=0.5,
    ),
}

# Depth (front-to-back) axis added in 3D: (domain extent, cavity half extent), mm. Assumptions: the bones
# are solids of revolution about the vertical axis, so the depth equals the width to keep the lined cavity
# inside the domain (44 mm for the knee, close to the ~40 mm aimed for).
_DEPTH_3D: dict[str, tuple[float, float]] = {
    "knee": (44.0, 19.5),
    "mcp": (16.0, 5.8),
}


def preset_dimensions(name: str, ndim: int) -> JointDimensions:
    """Dimensions of a named preset joint in 2D or 3D.

    Args:
        name: one of the keys of :data:`PRESETS` (``'knee'``, ``'mcp'``).
        ndim: 2 for ``(height, width)``; 3 for ``(height, depth, width)``, the depth axis inserted as axis 1.

    Raises:
        ValueError: unknown name (the message lists the presets) or ``ndim`` not 2 or 3.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown joint preset {name!r}; allowed: {sorted(PRESETS)}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    dims = PRESETS[name]
    if ndim == 2:
        return dims
    depth, cavity_depth = _DEPTH_3D[name]
    (h, w), (ch, cw) = dims.domain_mm, dims.cavity_half_extent_mm
    return dataclasses.replace(dims, domain_mm=(h, depth, w), cavity_half_extent_mm=(ch, cavity_depth, cw))


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------


def _positive_spacing(spacing_mm: float, name: str = "grid_spacing_mm") -> float:
    try:
        h = float(spacing_mm)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in mm, got {spacing_mm!r}") from None
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"{name} must be positive and finite (mm), got {spacing_mm!r}")
    return h


def _rounded_box_sdf(offsets: Sequence[np.ndarray], half: Sequence[float], radius: float) -> np.ndarray:
    """Exact signed distance (mm) to a box with rounded edges/corners, centred at the origin.

    ``offsets`` are the coordinates relative to the box centre per axis, ``half`` the half extents of the
    box including the rounding, ``radius`` the corner radius. Negative inside. Works in any dimension:
    with ``q = |p| - (half - r)``, ``sdf = |max(q, 0)| + min(max_i q_i, 0) - r``.
    """
    q = [np.abs(p) - (b - radius) for p, b in zip(offsets, half, strict=True)]
    outside = np.sqrt(sum(np.maximum(qi, 0.0) ** 2 for qi in q))
    inside = np.minimum(np.maximum.reduce(q), 0.0)
    return outside + inside - radius


def joint(grid_spacing_mm: float, dims: JointDimensions) -> Geometry:
    """Build the parametric joint on a uniform grid (2D or 3D, from ``len(dims.domain_mm)``).

    Construction (axis 0 vertical; "lateral distance" is the distance from the vertical axis through the
    joint centre, over all other axes, so the 3D bones are solids of revolution):

    * grid: ``round(domain / spacing)`` cells per axis, origin 0; the joint centre is the domain centre.
    * upper bone: a ball of radius ``R_u`` (subchondral bone surface) centred on the vertical axis at
      ``joint_space / 2 + R_u`` above the centre, thickened by the cartilage to radius ``R_u + cartilage``,
      clipped to lateral distance <= ``bone_half_width`` and united with a shaft (same width, above the ball
      centre) running to the top wall. The part of that body outside radius ``R_u`` below the ball centre
      (the articular side) is cartilage, the rest bone. The lower bone mirrors it with ``R_l``.
      Hence at the centre the bone-to-bone distance is ``joint_space`` and the fluid gap between the
      cartilage surfaces is ``joint_space - 2 * cartilage``.
    * cavity: a rounded box centred on the joint; signed distance <= 0 is synovial fluid, up to
      ``synovium_thickness`` synovium, up to a further ``capsule_thickness`` capsule, beyond that excluded.
      Bone and cartilage override all of these.

    Cells are classified by their centres. For the synovium to enclose the fluid everywhere (no fluid cell
    touching capsule), it must be at least one cell thick; a coarser grid gives a warning.

    Args:
        grid_spacing_mm: cell size, mm (the same on every axis).
        dims: joint dimensions, e.g. ``preset_dimensions('knee', 2)``.

    Returns:
        The geometry, with landmarks (mm, grid axis order): ``joint_centre``; ``injury_site`` (the default
        injury location: the joint margin, also ``joint_margin``, at the joint line on the low side of the last
        axis, mid-way through the synovium, where recruitment happens); ``upper_cartilage_surface`` (on the
        upper cartilage surface at the centre, facing the fluid gap);
        ``lower_cartilage_surface``; ``upper_bone_centre`` / ``lower_bone_centre`` (on the axis, midway
        between the subchondral bone surface and the top / bottom wall, so inside the bone);
        ``upper_condyle_centre`` / ``lower_condyle_centre`` (centres of the end balls, which may lie outside
        the domain).
    """
    if not isinstance(dims, JointDimensions):
        raise TypeError(f"dims must be a JointDimensions, got {type(dims).__name__}")
    h = _positive_spacing(grid_spacing_mm)
    ndim = dims.ndim
    shape = tuple(max(1, int(round(d / h))) for d in dims.domain_mm)
    grid = Grid(shape=shape, spacing=(h,) * ndim, origin=(0.0,) * ndim)

    t = dims.cartilage_thickness_mm
    for what, size in (
        ("synovium_thickness_mm", dims.synovium_thickness_mm),
        ("fluid gap (joint_space_mm - 2 * cartilage_thickness_mm)", dims.fluid_gap_mm),
        ("cartilage_thickness_mm", t),
    ):
        if h > size:
            warnings.warn(
                f"grid spacing {h} mm exceeds the {what} = {size} mm: that layer is under-resolved (it may have holes or vanish)",
                stacklevel=2,
            )

    centre = tuple(e / 2 for e in grid.extent)  # the actual domain centre after rounding to whole cells
    rel = [m - c for m, c in zip(grid.mesh(), centre, strict=True)]
    v = rel[0]  # vertical offset from the joint centre
    lateral = np.sqrt(sum(r**2 for r in rel[1:]))

    labels = np.full(shape, Tissue.EXCLUDED, dtype=np.uint8)
    sdf = _rounded_box_sdf(rel, dims.cavity_half_extent_mm, dims.cavity_corner_radius_mm)
    labels[sdf <= dims.synovium_thickness_mm + dims.capsule_thickness_mm] = Tissue.CAPSULE
    labels[sdf <= dims.synovium_thickness_mm] = Tissue.SYNOVIUM
    labels[sdf <= 0.0] = Tissue.SYNOVIAL_FLUID

    within_shaft = lateral <= dims.bone_half_width_mm
    for sign, radius in ((1.0, dims.bone_radius_upper_mm), (-1.0, dims.bone_radius_lower_mm)):
        ball_v = sign * (dims.joint_space_mm / 2 + radius)  # ball centre, vertical offset
        away = sign * (v - ball_v)  # > 0 on the shaft side of the ball centre, < 0 on the articular side
        dist = np.sqrt((v - ball_v) ** 2 + lateral**2)
        body = within_shaft & ((dist <= radius + t) | (away >= 0))
        cartilage = body & (away < 0) & (dist > radius)
        labels[body] = Tissue.BONE
        labels[cartilage] = Tissue.CARTILAGE

    def point(dv: float) -> tuple[float, ...]:
        return (centre[0] + dv,) + tuple(centre[1:])

    top, half_js = grid.extent[0] / 2, dims.joint_space_mm / 2
    # the joint margin: at the joint line, on the low side of the last axis, mid-way through the synovium
    margin = centre[:-1] + (centre[-1] - dims.cavity_half_extent_mm[-1] - dims.synovium_thickness_mm / 2,)
    landmarks = {
        "joint_centre": point(0.0),
        "injury_site": margin,
        "joint_margin": margin,
        "upper_cartilage_surface": point(half_js - t),
        "lower_cartilage_surface": point(-(half_js - t)),
        "upper_bone_centre": point((half_js + top) / 2),
        "lower_bone_centre": point(-(half_js + top) / 2),
        "upper_condyle_centre": point(half_js + dims.bone_radius_upper_mm),
        "lower_condyle_centre": point(-(half_js + dims.bone_radius_lower_mm)),
    }
    return Geometry(grid=grid, labels=labels, landmarks=landmarks)


def _tissue_code(name: Any, what: str) -> int:
    """Code of a tissue given by name (or Tissue member); ValueError listing the allowed names."""
    if isinstance(name, Tissue):
        return int(name)
    if isinstance(name, str) and name in TISSUE_NAMES:
        return TISSUE_NAMES.index(name)
    raise ValueError(f"unknown tissue {name!r} in {what}; allowed: {list(TISSUE_NAMES)}")


def box(size_mm: Sequence[float], spacing_mm: float, tissue: str = "synovial_fluid") -> Geometry:
    """A box of one tissue: for verification problems (diffusion, decay) with no internal interfaces.

    Args:
        size_mm: extent per axis, mm (2 or 3 entries); cells per axis ``round(size / spacing)``, origin 0.
        spacing_mm: cell size, mm.
        tissue: tissue name, one of ``TISSUE_NAMES``.

    Returns:
        The geometry; ``joint_centre`` and ``injury_site`` are both the box centre.
    """
    code = _tissue_code(tissue, "box(tissue=...)")
    size = _float_tuple("size_mm", size_mm)
    if len(size) not in (2, 3) or any(not (math.isfinite(s) and s > 0) for s in size):
        raise ValueError(f"size_mm must have 2 or 3 positive entries (mm), got {size}")
    h = _positive_spacing(spacing_mm, "spacing_mm")
    shape = tuple(max(1, int(round(s / h))) for s in size)
    grid = Grid(shape=shape, spacing=(h,) * len(shape), origin=(0.0,) * len(shape))
    centre = tuple(e / 2 for e in grid.extent)
    labels = np.full(shape, code, dtype=np.uint8)
    return Geometry(grid=grid, labels=labels, landmarks={"joint_centre": centre, "injury_site": centre})


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _per_axis(value: Any, ndim: int, name: str, positive: bool) -> tuple[float, ...]:
    arr = np.ravel(np.asarray(value, dtype=float))
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim:
        raise ValueError(f"{name} must be one number or {ndim} (one per axis), got {value!r}")
    if not np.all(np.isfinite(arr)) or (positive and not np.all(arr > 0)):
        raise ValueError(f"{name} must be {'positive and ' if positive else ''}finite (mm), got {value!r}")
    return tuple(float(a) for a in arr)


def _check_labels_shape(path: str, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse labels of the wrong rank or too big for this machine, before they are read."""
    if len(shape) not in (2, 3):
        raise ValueError(f"labels in {path!r} must be 2D or 3D, got {len(shape)}D with shape {tuple(shape)}")
    check_size(f"labels in {path!r}", tuple(shape), itemsize, host_memory_bytes())


def _read_hdf5(path: str, dataset: str | None) -> tuple[np.ndarray, Any, Any]:
    """Labels, spacing attribute (or None) and origin attribute (or None) from an HDF5 file."""
    try:
        import h5py
    except ImportError as exc:  # h5py is optional for everything but HDF5 input
        raise ValueError(f"reading HDF5 file {path!r} needs h5py, which is not installed") from exc
    name = dataset if dataset is not None else "labels"
    if problem := hdf5_problem(path):
        raise ValueError(f"{path!r} {problem}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"could not open {path!r} as HDF5: {exc}") from exc
    with f:
        if name not in f or not isinstance(f[name], h5py.Dataset):
            found: list[str] = []
            f.visititems(lambda k, obj: found.append(k) if isinstance(obj, h5py.Dataset) else None)
            raise ValueError(
                f"HDF5 file {path!r} has no dataset {name!r}"
                + ("" if dataset is not None else " (the default; pass dataset=...)")
                + f"; datasets found: {found}"
            )
        ds = f[name]
        _check_labels_shape(path, ds.shape, ds.dtype.itemsize)
        data = ds[()]
        spacing = next((ds.attrs[k] for k in ("spacing_mm", "spacing") if k in ds.attrs), None)
        origin = next((ds.attrs[k] for k in ("origin_mm", "origin") if k in ds.attrs), None)
    return np.asarray(data), spacing, origin


def from_file(
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    spacing_mm: float | Sequence[float] | None = None,
    origin_mm: float | Sequence[float] | None = None,
    label_map: Mapping[int, str] | None = None,
) -> Geometry:
    """Read a labelled geometry (e.g. segmented from imaging) from ``.npy``, NIfTI or HDF5.

    Args:
        path: a ``.npy`` file holding a 2D/3D integer array, a NIfTI label map (``.nii``, ``.nii.gz``: its
            header's voxel sizes and orientation are used, see :func:`_read_nifti`; needs nibabel), or an
            HDF5 file (``.h5``, ``.hdf5``, ``.hdf``, ``.he5``, or any file HDF5 recognises) holding one.
        dataset: HDF5 dataset name; default ``'labels'``. Ignored for ``.npy``.
        spacing_mm: cell size in mm, one number or one per axis. Required for ``.npy``; for HDF5 it defaults
            to the dataset attribute ``'spacing_mm'`` or ``'spacing'``. When both exist the argument wins, with
            a warning if they differ.
        origin_mm: coordinate of the lower corner of the first cell per axis, mm; default the HDF5 attribute
            ``'origin_mm'`` / ``'origin'`` if present, else 0.
        label_map: maps the file's integer values to tissue names (``TISSUE_NAMES``); every value in the file
            must be mapped. Without it the values must already be our codes 0..5 (:class:`Tissue`).

    Returns:
        The geometry. Landmarks: ``joint_centre`` is the centroid of the synovial fluid cells (the domain
        centre if there are none); ``injury_site`` is the centre of the cartilage cell touching fluid that is
        nearest to ``joint_centre`` (``joint_centre`` itself if no cartilage touches fluid).

    Raises:
        ValueError: missing file, unsupported format, missing dataset, wrong number of dimensions, non-integer
            dtype, label values outside the codes or the ``label_map`` (listed), missing or bad spacing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"geometry file not found: {path!r}")
    suffix = os.path.splitext(path)[1].lower()
    file_spacing = file_origin = None
    if suffix == ".npy":
        # `dataset` is ignored here: a .npy file holds one array, and callers (configs) pass a default name
        # whatever the format.
        try:
            header = np.load(path, mmap_mode="r", allow_pickle=False)  # the shape, before reading the data
            _check_labels_shape(path, header.shape, header.dtype.itemsize)
            data = np.array(header)
            del header
        except ValueError as exc:
            if "labels in" in str(exc):
                raise
            raise ValueError(f"could not read {path!r} as a .npy array: {exc}") from exc
    elif path.lower().endswith(_NIFTI_SUFFIXES):
        data, file_spacing, file_origin = _read_nifti(path)
    elif suffix in _HDF5_SUFFIXES or _is_hdf5(path):
        data, file_spacing, file_origin = _read_hdf5(path, dataset)
    else:
        raise ValueError(
            f"unsupported geometry file {path!r}: expected .npy, NIfTI (.nii, .nii.gz) or HDF5 ({', '.join(_HDF5_SUFFIXES)})"
        )

    if data.ndim not in (2, 3):
        raise ValueError(f"labels in {path!r} must be 2D or 3D, got {data.ndim}D with shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"labels in {path!r} must have an integer dtype, got {data.dtype} (tissue codes, not fractions)")

    if spacing_mm is None:
        spacing_mm = file_spacing
    elif file_spacing is not None:
        given = _per_axis(spacing_mm, data.ndim, "spacing_mm", positive=True)
        stored = _per_axis(file_spacing, data.ndim, "the file's spacing attribute", positive=True)
        if not np.allclose(given, stored):
            warnings.warn(
                f"spacing_mm={given} overrides the spacing {stored} stored in {path!r}",
                stacklevel=2,
            )
    if spacing_mm is None:
        where = "pass spacing_mm=..." if suffix == ".npy" else "pass spacing_mm=... or set a 'spacing_mm' attribute"
        raise ValueError(f"no grid spacing for {path!r}: {where}")
    spacing = _per_axis(spacing_mm, data.ndim, "spacing_mm", positive=True)
    if origin_mm is None:
        origin_mm = file_origin if file_origin is not None else 0.0
    origin = _per_axis(origin_mm, data.ndim, "origin_mm", positive=False)

    if label_map is None:
        bad = _unknown_codes(data)
        if bad:
            raise ValueError(
                f"labels in {path!r} hold values {bad} that are not tissue codes 0..{N_TISSUES - 1} "
                f"({', '.join(f'{t.value}={t.name.lower()}' for t in Tissue)}); pass label_map to translate them"
            )
        labels = data.astype(np.uint8)
    else:
        table = {int(k): _tissue_code(v, f"label_map[{k!r}]") for k, v in label_map.items()}
        values = np.unique(data)
        unexpected = [int(x) for x in values if int(x) not in table]
        if unexpected:
            raise ValueError(f"labels in {path!r} hold values {unexpected} that are not in label_map (keys {sorted(table)})")
        labels = np.empty(data.shape, dtype=np.uint8)
        for value in values:
            labels[data == value] = table[int(value)]

    grid = Grid(shape=labels.shape, spacing=spacing, origin=origin)
    return Geometry(grid=grid, labels=labels, landmarks=_file_landmarks(grid, labels))


#: NIfTI's spatial units (the header's xyzt_units) in mm
_NIFTI_UNITS_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}


def _read_nifti(path: str) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Labels, spacing (mm) and origin (mm) of a NIfTI label map (segmented MRI or CT), on synovia's axes.

    The image is turned to the closest canonical (RAS+) orientation, so whatever the scanner's axes its
    voxel axes run right, anterior, superior; synovia's axes are slowest first, so 3D labels are
    (superior, anterior, right) = (z, y, x) and one slice (a third axis of length 1) gives 2D (y, x).
    The spacing comes from the header's voxel sizes in its spatial unit; the origin is the lower corner
    of the first voxel in scanner coordinates.
    """
    try:
        import nibabel
    except ImportError as exc:
        raise ValueError(f"reading NIfTI file {path!r} needs nibabel: pip install 'synovia[imaging]'") from exc
    try:
        # a label map is a spatial image (nibabel.load is typed for any file-based image)
        image = cast("nibabel.spatialimages.SpatialImage", nibabel.load(path))
    except Exception as exc:  # nibabel's errors for a bad header or a truncated file vary
        raise ValueError(f"could not read {path!r} as NIfTI: {exc}") from exc
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"labels in {path!r} must be a 3D volume (or one slice of one), got shape {tuple(image.shape)}")
    _check_labels_shape(path, shape if shape[2] > 1 else shape[:2], image.get_data_dtype().itemsize)
    image = nibabel.as_closest_canonical(nibabel.squeeze_image(image) if len(image.shape) == 4 else image)
    data = np.asarray(image.dataobj)
    if not np.issubdtype(data.dtype, np.integer):  # label maps stored as floats (common in NIfTI)
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise ValueError(f"labels in {path!r} must be whole numbers (tissue codes), got {data.dtype} with fractions")
        data = data.astype(np.int64)
    unit = image.header.get_xyzt_units()[0] or "unknown"
    if unit not in _NIFTI_UNITS_MM:
        raise ValueError(f"labels in {path!r}: unknown spatial unit {unit!r} in the NIfTI header")
    scale = _NIFTI_UNITS_MM[unit]
    zooms = [float(z) * scale for z in image.header.get_zooms()[:3]]
    corner = (image.affine @ np.array([-0.5, -0.5, -0.5, 1.0]))[:3] * scale  # RAS: x right, y anterior, z superior
    labels = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    spacing, origin = (zooms[2], zooms[1], zooms[0]), (float(corner[2]), float(corner[1]), float(corner[0]))
    if labels.shape[0] == 1:  # one slice: 2D (y, x)
        return labels[0], spacing[1:], origin[1:]
    return labels, spacing, origin


def _is_hdf5(path: str) -> bool:
    try:
        import h5py
    except ImportError:
        return False
    return bool(h5py.is_hdf5(path))


def _file_landmarks(grid: Grid, labels: np.ndarray) -> dict[str, tuple[float, ...]]:
    """Landmarks for a geometry without stored ones: fluid centroid and nearest fluid-facing cartilage."""
    mesh = grid.mesh()
    fluid = labels == Tissue.SYNOVIAL_FLUID
    if fluid.any():
        centre = tuple(float(m[fluid].mean()) for m in mesh)
    else:
        centre = tuple(o + e / 2 for o, e in zip(grid.origin, grid.extent, strict=True))
    # cartilage cells with a fluid face neighbour (the articular surface)
    surface = np.zeros_like(fluid)
    cart = labels == Tissue.CARTILAGE
    for axis in range(labels.ndim):
        for shift in (1, -1):
            neighbour = np.zeros_like(fluid)
            src = [slice(None)] * labels.ndim
            dst = [slice(None)] * labels.ndim
            src[axis] = slice(None, -1) if shift == 1 else slice(1, None)
            dst[axis] = slice(1, None) if shift == 1 else slice(None, -1)
            neighbour[tuple(dst)] = fluid[tuple(src)]
            surface |= cart & neighbour
    if surface.any():
        d2 = sum((m - c) ** 2 for m, c in zip(mesh, centre, strict=True))
        idx = np.unravel_index(np.argmin(np.where(surface, d2, np.inf)), labels.shape)
        injury = tuple(float(m[idx]) for m in mesh)
    else:
        injury = centre
    return {"joint_centre": centre, "injury_site": injury}


# --------------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------------


def ball_mask(grid: Grid, centre_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """Cells whose centres lie within ``radius_mm`` of ``centre_mm`` (a disc in 2D, a ball in 3D).

    Args:
        grid: the grid.
        centre_mm: centre, mm, one coordinate per grid axis (grid axis order).
        radius_mm: radius, mm (>= 0).

    Returns:
        Boolean array of ``grid.shape``.
    """
    centre = _float_tuple("centre_mm", centre_mm)
    if len(centre) != grid.ndim:
        raise ValueError(f"centre_mm has {len(centre)} coordinates, the grid has {grid.ndim} axes")
    r = float(radius_mm)
    if not (math.isfinite(r) and r >= 0):
        raise ValueError(f"radius_mm must be finite and >= 0, got {radius_mm!r}")
    d2 = cast(np.ndarray, sum((m - c) ** 2 for m, c in zip(grid.mesh(), centre, strict=True)))  # ndim >= 1
    return d2 <= r * r
