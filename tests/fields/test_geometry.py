"""The joint geometry (fields): the parametric joint, boxes, file input and ball masks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fields import (
    PRESETS,
    TISSUE_NAMES,
    Geometry,
    Grid,
    Tissue,
    ball_mask,
    box,
    from_file,
    joint,
    preset_dimensions,
)

# Module-level caches: building the 3D knee takes ~0.2 s; reuse it across tests.
_CACHE: dict[tuple[str, int, float], Geometry] = {}


def _joint(name: str, ndim: int, h: float) -> Geometry:
    key = (name, ndim, h)
    if key not in _CACHE:
        _CACHE[key] = joint(h, preset_dimensions(name, ndim))
    return _CACHE[key]


CASES = [("knee", 2, 0.25), ("knee", 3, 0.5), ("mcp", 2, 0.1), ("mcp", 3, 0.1)]


def _neighbours(mask: np.ndarray) -> np.ndarray:
    """Cells with a face neighbour in ``mask`` (no wrap-around at the domain walls)."""
    out = np.zeros_like(mask)
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(hi)] |= mask[tuple(lo)]
        out[tuple(lo)] |= mask[tuple(hi)]
    return out


def _flood_fill(allowed: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    """Cells of ``allowed`` face-connected to ``seed`` (iterated dilation; numpy only)."""
    assert allowed[seed]
    reached = np.zeros_like(allowed)
    reached[seed] = True
    while True:
        grown = (reached | _neighbours(reached)) & allowed
        if np.array_equal(grown, reached):
            return reached
        reached = grown


def _centre_index(geo: Geometry) -> tuple[int, ...]:
    return tuple(int(c // h) for c, h in zip(geo.landmarks["joint_centre"], geo.grid.spacing, strict=True))


def _centre_column(geo: Geometry) -> np.ndarray:
    idx = _centre_index(geo)
    return geo.labels[(slice(None),) + idx[1:]]


# ---------------------------------------------------------------------------------------------------
# The parametric joint
# ---------------------------------------------------------------------------------------------------


def test_default_grid_sizes() -> None:
    assert _joint("knee", 2, 0.25).grid.shape == (200, 176)
    assert _joint("knee", 3, 0.5).grid.shape == (100, 88, 88)
    assert _joint("mcp", 2, 0.1).grid.shape == (160, 160)
    geo = _joint("knee", 2, 0.25)
    assert geo.grid.origin == (0.0, 0.0)
    assert geo.labels.dtype == np.uint8 and geo.labels.shape == geo.grid.shape


@pytest.mark.parametrize("name,ndim,h", CASES)
def test_all_tissues_present(name: str, ndim: int, h: float) -> None:
    counts = _joint(name, ndim, h).counts()
    assert set(counts) == set(TISSUE_NAMES)
    for tissue in ("bone", "cartilage", "synovial_fluid", "synovium", "capsule"):
        assert counts[tissue] > 0, tissue
    assert sum(counts.values()) == math.prod(_joint(name, ndim, h).grid.shape)


@pytest.mark.parametrize("name,ndim,h", CASES)
def test_centre_column_layers(name: str, ndim: int, h: float) -> None:
    """Along the vertical line through the centre: bone, cartilage, fluid gap, cartilage, bone."""
    geo = _joint(name, ndim, h)
    dims = preset_dimensions(name, ndim)
    col = _centre_column(geo)
    # collapse the column into runs of (tissue, length)
    runs: list[list[int]] = []
    for code in col:
        if runs and runs[-1][0] == code:
            runs[-1][1] += 1
        else:
            runs.append([int(code), 1])
    assert [r[0] for r in runs] == [Tissue.BONE, Tissue.CARTILAGE, Tissue.SYNOVIAL_FLUID, Tissue.CARTILAGE, Tissue.BONE]
    gap = runs[2][1] * h
    assert abs(gap - (dims.joint_space_mm - 2 * dims.cartilage_thickness_mm)) <= h + 1e-9
    for cart in (runs[1][1] * h, runs[3][1] * h):
        assert abs(cart - dims.cartilage_thickness_mm) <= h + 1e-9
    # bone-to-bone distance = radiographic joint space
    assert abs((runs[1][1] + runs[2][1] + runs[3][1]) * h - dims.joint_space_mm) <= h + 1e-9


@pytest.mark.parametrize("name,ndim,h", CASES)
def test_fluid_enclosed_by_synovium(name: str, ndim: int, h: float) -> None:
    """No fluid cell touches capsule or excluded tissue, and no fluid lies on a domain wall."""
    labels = _joint(name, ndim, h).labels
    fluid = labels == Tissue.SYNOVIAL_FLUID
    for bad in (Tissue.CAPSULE, Tissue.EXCLUDED):
        assert not (fluid & _neighbours(labels == bad)).any(), Tissue(bad).name
    for axis in range(labels.ndim):
        assert not fluid.take([0, -1], axis=axis).any()


@pytest.mark.parametrize("name,ndim,h", CASES)
def test_leukocyte_region_connected(name: str, ndim: int, h: float) -> None:
    """Fluid, synovium and capsule form one face-connected region reaching from the gap to the synovium."""
    geo = _joint(name, ndim, h)
    accessible = np.isin(geo.labels, [Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE])
    seed = _centre_index(geo)
    assert geo.labels[seed] == Tissue.SYNOVIAL_FLUID  # the joint centre is in the gap
    reached = _flood_fill(accessible, seed)
    assert (reached & (geo.labels == Tissue.SYNOVIUM)).any()
    assert np.array_equal(reached, accessible)  # nothing cut off
    fluid = geo.labels == Tissue.SYNOVIAL_FLUID
    assert np.array_equal(_flood_fill(fluid, seed), fluid)  # a single cavity


def test_capsule_attaches_to_shafts() -> None:
    """Above and below the cavity the membrane meets bone, so the cavity wraps the bone ends."""
    labels = _joint("knee", 2, 0.25).labels
    bone = labels == Tissue.BONE
    touching = _neighbours(bone)
    assert (touching & (labels == Tissue.CAPSULE)).any()
    ny = labels.shape[0]
    capsule_rows = np.nonzero((labels == Tissue.CAPSULE).any(axis=1))[0]
    # capsule reaches above the top of the upper cartilage and below the bottom of the lower one
    cart_rows = np.nonzero((labels == Tissue.CARTILAGE).any(axis=1))[0]
    assert capsule_rows.max() > cart_rows.max() and capsule_rows.min() < cart_rows.min()
    # shafts reach the top and bottom walls
    assert bone[0].any() and bone[ny - 1].any()


def test_landmarks() -> None:
    geo = _joint("knee", 2, 0.25)
    dims = PRESETS["knee"]
    assert geo.landmarks["joint_centre"] == pytest.approx((25.0, 22.0))
    site = geo.landmarks["upper_cartilage_surface"]
    assert site == pytest.approx((25.0 + dims.joint_space_mm / 2 - dims.cartilage_thickness_mm, 22.0))
    # within 1.5 cells of the cartilage surface there is both cartilage and fluid: it is on the articular surface
    near = ball_mask(geo.grid, site, 1.5 * geo.grid.spacing[0])
    assert {Tissue.CARTILAGE, Tissue.SYNOVIAL_FLUID} <= set(np.unique(geo.labels[near]).tolist())
    # the default injury site is the joint margin: in the synovium, with fluid and capsule nearby
    margin = geo.landmarks["injury_site"]
    assert margin == geo.landmarks["joint_margin"]
    idx = tuple(int(c // h) for c, h in zip(margin, geo.grid.spacing, strict=True))
    assert geo.labels[idx] == Tissue.SYNOVIUM
    near = ball_mask(geo.grid, margin, 2.0)
    assert {Tissue.SYNOVIAL_FLUID, Tissue.CAPSULE} <= set(np.unique(geo.labels[near]).tolist())
    for name in ("upper_bone_centre", "lower_bone_centre"):
        idx = tuple(int(c // h) for c, h in zip(geo.landmarks[name], geo.grid.spacing, strict=True))
        assert geo.labels[idx] == Tissue.BONE
    assert geo.landmarks["upper_bone_centre"][0] > site[0] > geo.landmarks["lower_bone_centre"][0]
    geo3 = _joint("knee", 3, 0.5)
    assert len(geo3.landmarks["injury_site"]) == 3
    with pytest.raises(TypeError):
        geo.landmarks["x"] = (0.0, 0.0)  # type: ignore[index]


def test_3d_section_matches_2d() -> None:
    """The 3D joint is a solid of revolution: its central section is the 2D joint."""
    g2 = joint(0.5, preset_dimensions("knee", 2))
    g3 = _joint("knee", 3, 0.5)
    mid = g3.grid.shape[1] // 2
    assert np.array_equal(g3.labels[:, mid, :], g2.labels)


def test_labels_read_only() -> None:
    geo = _joint("knee", 2, 0.25)
    with pytest.raises(ValueError):
        geo.labels[0, 0] = 1


def test_preset_dimensions() -> None:
    d3 = preset_dimensions("knee", 3)
    assert len(d3.domain_mm) == 3 and len(d3.cavity_half_extent_mm) == 3
    assert d3.domain_mm[0] == PRESETS["knee"].domain_mm[0] and d3.domain_mm[2] == PRESETS["knee"].domain_mm[1]
    assert preset_dimensions("mcp", 2) is PRESETS["mcp"]
    with pytest.raises(ValueError, match="knee"):
        preset_dimensions("elbow", 2)
    with pytest.raises(ValueError):
        preset_dimensions("knee", 4)


def test_dimension_validation() -> None:
    knee = PRESETS["knee"]
    with pytest.raises(ValueError, match="joint_space_mm"):
        dataclasses.replace(knee, joint_space_mm=3.9)  # < 2 * 2.0 cartilage
    with pytest.raises(ValueError, match="domain_mm"):
        dataclasses.replace(knee, domain_mm=(50.0,))
    with pytest.raises(ValueError, match="cavity_half_extent_mm"):
        dataclasses.replace(knee, domain_mm=(50.0, 44.0, 44.0))  # cavity still 2D
    with pytest.raises(ValueError, match="synovium_thickness_mm"):
        dataclasses.replace(knee, synovium_thickness_mm=-1.0)
    with pytest.raises(ValueError, match="cavity_corner_radius_mm"):
        dataclasses.replace(knee, cavity_corner_radius_mm=30.0)
    with pytest.raises(ValueError, match="half the domain"):
        dataclasses.replace(knee, domain_mm=(30.0, 44.0))
    with pytest.raises(ValueError, match="grid_spacing_mm"):
        joint(0.0, knee)


def test_coarse_grid_warns() -> None:
    with pytest.warns(UserWarning, match="synovium"):
        joint(1.0, PRESETS["knee"])


# ---------------------------------------------------------------------------------------------------
# Boxes, masks
# ---------------------------------------------------------------------------------------------------


def test_box() -> None:
    geo = box((2.0, 3.0), 0.1)
    assert geo.grid.shape == (20, 30)
    assert geo.counts()["synovial_fluid"] == 600 and sum(geo.counts().values()) == 600
    assert geo.landmarks["joint_centre"] == pytest.approx((1.0, 1.5))
    geo3 = box([1.0, 1.0, 2.0], 0.25, tissue="cartilage")
    assert geo3.grid.shape == (4, 4, 8) and np.all(geo3.labels == Tissue.CARTILAGE)
    with pytest.raises(ValueError, match="synovial_fluid"):
        box((1.0, 1.0), 0.1, tissue="blood")


@pytest.mark.parametrize("ndim", [2, 3])
def test_ball_mask_volume(ndim: int) -> None:
    h, r = 0.1, 1.3
    grid = Grid(shape=(40,) * ndim, spacing=(h,) * ndim)
    mask = ball_mask(grid, (2.0,) * ndim, r)
    exact = math.pi * r**2 if ndim == 2 else 4 / 3 * math.pi * r**3
    assert mask.dtype == np.bool_ and mask.shape == grid.shape
    assert abs(mask.sum() * grid.cell_volume - exact) / exact < 0.05
    with pytest.raises(ValueError):
        ball_mask(grid, (2.0,) * (5 - ndim), r)


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def test_from_file_npy_round_trip(tmp_path) -> None:
    geo = _joint("mcp", 2, 0.1)
    path = tmp_path / "mcp.npy"
    np.save(path, geo.labels.astype(np.int32))
    back = from_file(path, spacing_mm=0.1, dataset="labels")  # dataset is ignored for .npy
    assert back.grid == geo.grid
    assert np.array_equal(back.labels, geo.labels) and back.labels.dtype == np.uint8
    assert back.counts() == geo.counts()
    # derived landmarks: an injury site on the articular surface near the centre
    site = tuple(int(c // 0.1) for c in back.landmarks["injury_site"])
    assert back.labels[site] == Tissue.CARTILAGE
    with pytest.raises(ValueError, match="spacing"):
        from_file(path)
    with pytest.raises(ValueError, match="spacing"):
        from_file(path, spacing_mm=(0.1, 0.1, 0.1))


def test_from_file_hdf5_attrs_and_label_map(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    raw = np.zeros((6, 5, 4), dtype=np.int16)
    raw[:2] = 10  # "bone" in the file's own coding
    raw[2:4] = 20
    raw[4:] = 30
    path = tmp_path / "seg.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("seg", data=raw)
        ds.attrs["spacing_mm"] = [0.2, 0.3, 0.4]
        ds.attrs["origin_mm"] = [1.0, 2.0, 3.0]
    geo = from_file(path, dataset="seg", label_map={10: "bone", 20: "cartilage", 30: "synovial_fluid"})
    assert geo.grid == Grid(shape=(6, 5, 4), spacing=(0.2, 0.3, 0.4), origin=(1.0, 2.0, 3.0))
    assert geo.counts()["bone"] == 40 and geo.counts()["cartilage"] == 40 and geo.counts()["synovial_fluid"] == 40
    # the argument overrides the attribute, with a warning as they differ
    with pytest.warns(UserWarning, match="overrides"):
        over = from_file(path, dataset="seg", spacing_mm=1.0, label_map={10: "bone", 20: "bone", 30: "bone"})
    assert over.grid.spacing == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[30\]"):
        from_file(path, dataset="seg", label_map={10: "bone", 20: "cartilage"})
    with pytest.raises(ValueError, match="marrow"):
        from_file(path, dataset="seg", label_map={10: "marrow", 20: "bone", 30: "bone"})
    with pytest.raises(ValueError, match=r"\[10, 20, 30\]"):
        from_file(path, dataset="seg")  # values are not our codes and no label_map
    with pytest.raises(ValueError, match="'labels'"):
        from_file(path)  # default dataset name is absent; message names it and lists 'seg'


def test_from_file_hdf5_default_dataset_and_spacing_attr(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    geo = _joint("knee", 2, 0.25)
    path = tmp_path / "knee.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("labels", data=geo.labels).attrs["spacing"] = 0.25
        f.create_dataset("nospacing", data=geo.labels)
    back = from_file(path)
    assert back.grid == geo.grid and np.array_equal(back.labels, geo.labels)
    with pytest.raises(ValueError, match="spacing"):
        from_file(path, dataset="nospacing")


def test_from_file_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="not found"):
        from_file(tmp_path / "missing.npy", spacing_mm=1.0)
    np.save(tmp_path / "float.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="integer"):
        from_file(tmp_path / "float.npy", spacing_mm=1.0)
    np.save(tmp_path / "1d.npy", np.zeros(4, dtype=np.int8))
    with pytest.raises(ValueError, match="2D or 3D"):
        from_file(tmp_path / "1d.npy", spacing_mm=1.0)
    bad = np.zeros((4, 4), dtype=np.int8)
    bad[0, 0], bad[1, 1] = 7, -1
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"\[-1, 7\]"):
        from_file(tmp_path / "bad.npy", spacing_mm=1.0)
    (tmp_path / "broken.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="HDF5"):
        from_file(tmp_path / "broken.h5", spacing_mm=1.0)
    (tmp_path / "labels.txt").write_text("0 1\n")
    with pytest.raises(ValueError, match="unsupported"):
        from_file(tmp_path / "labels.txt", spacing_mm=1.0)


def test_geometry_validation() -> None:
    grid = Grid(shape=(3, 4), spacing=(1.0, 1.0))
    centre = {"joint_centre": (1.5, 2.0), "injury_site": (1.5, 2.0)}
    with pytest.raises(ValueError, match="shape"):
        Geometry(grid, np.zeros((4, 3), np.uint8), centre)
    with pytest.raises(ValueError, match="6"):
        Geometry(grid, np.full((3, 4), 6, np.uint8), centre)
    with pytest.raises(ValueError, match="injury_site"):
        Geometry(grid, np.zeros((3, 4), np.uint8), {"joint_centre": (1.5, 2.0)})
    with pytest.raises(ValueError, match="coordinates"):
        Geometry(grid, np.zeros((3, 4), np.uint8), {**centre, "injury_site": (1.0, 2.0, 3.0)})


def test_a_nifti_label_map_is_read_on_synovias_axes(tmp_path):
    """A segmentation stored LPS-oriented (x towards the left, y posterior) with its own codes: turned to
    RAS and synovia's (z, y, x) axes, voxel sizes from the header (in micrometres here), codes mapped."""
    nibabel = pytest.importorskip("nibabel")
    from fields import from_file

    rng = np.random.default_rng(0)
    ras = rng.choice([0, 10, 20], size=(4, 5, 6)).astype(np.int16)  # (x right, y anterior, z superior)
    lps = ras[::-1, ::-1, :]  # the same volume stored with x and y reversed
    sizes_um = (500.0, 400.0, 300.0)
    affine = np.diag([-sizes_um[0], -sizes_um[1], sizes_um[2], 1.0])
    affine[:3, 3] = (1500.0, 1600.0, -900.0)  # the first stored voxel's centre, um
    image = nibabel.Nifti1Image(lps, affine)
    image.header.set_xyzt_units("micron")
    path = tmp_path / "knee_seg.nii.gz"
    nibabel.save(image, path)
    geometry = from_file(path, label_map={0: "excluded", 10: "bone", 20: "synovial_fluid"})
    assert geometry.grid.shape == (6, 5, 4)  # (z, y, x)
    np.testing.assert_allclose(geometry.grid.spacing, (0.3, 0.4, 0.5))
    codes = {0: 0, 10: 1, 20: 3}
    expected = np.vectorize(codes.get)(np.transpose(ras, (2, 1, 0)))
    np.testing.assert_array_equal(geometry.labels, expected)
    # the lower corner of the first voxel: x and y from the far end of the stored axes
    np.testing.assert_allclose(geometry.grid.origin, (-0.9 - 0.15, 1.6 - 4 * 0.4 - 0.2, 1.5 - 3 * 0.5 - 0.25))
    with pytest.raises(ValueError, match=r"hold values \[10, 20\] that are not tissue codes"):
        from_file(path)  # its own codes, unmapped


def test_a_nifti_label_map_from_a_config(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    from solver import ConfigError, build_scenario, load_config

    labels = np.full((40, 32, 1), 3, np.uint8)  # one slice: a 2D geometry
    labels[:8] = 7
    labels[8:12] = 9
    nibabel.save(nibabel.Nifti1Image(labels, np.diag([0.5, 0.5, 0.5, 1.0])), tmp_path / "slice.nii")
    geometry = '[geometry]\nkind = "file"\npath = "slice.nii"\nfile_tissues = "3=synovial_fluid, 7=bone, 9=cartilage"\n'
    (tmp_path / "run.toml").write_text("[run]\nt_end_h = 1.0\n[injury]\nenabled = false\n" + geometry)
    scenario = build_scenario(load_config(tmp_path / "run.toml"))
    assert scenario.geometry.grid.shape == (32, 40) and scenario.geometry.grid.spacing == (0.5, 0.5)
    assert set(np.unique(scenario.geometry.labels)) == {1, 2, 3}
    (tmp_path / "bad.toml").write_text(geometry.replace("9=cartilage", "9=meniscus"))
    with pytest.raises(ConfigError, match=r"geometry.file_tissues.*'9=meniscus' is not VALUE=TISSUE"):
        build_scenario(load_config(tmp_path / "bad.toml"))
