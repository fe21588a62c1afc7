"""Figures of run files (solver.plot), and the XDMF sidecar read back through VTK.

The run files are tiny MCP-joint runs made with the project's own CLI (2D at 0.2 mm with the
drug, 3D at 0.4 mm), 3 h with a frame every hour, shared by the whole module.
"""

import shutil
import textwrap

import matplotlib
import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib.image import imread
from PIL import Image

from fields import Tissue
from solver import RunFile
from solver.cli import main
from solver.plot import _run as _plot

# The 3D run's 0.4 mm grid under-resolves the MCP synovium and fluid gap: fine for figures.
pytestmark = pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")

INJURY_2D = (10.0, 2.6)  # mm, (y, x): off the joint line and near the joint margin, in the fluid
CONFIG_2D = textwrap.dedent(
    f"""
    [run]
    t_end_h = 3.0
    output_interval_h = 1.0

    [geometry]
    kind = "joint"
    preset = "mcp"
    spacing_mm = 0.2

    [injury]
    centre_mm = [{INJURY_2D[0]}, {INJURY_2D[1]}]
    radius_mm = 1.0

    [drug]
    enabled = true
    first_dose_h = 0.0
    """
)
CONFIG_3D = textwrap.dedent(
    """
    [run]
    t_end_h = 3.0
    output_interval_h = 1.0

    [geometry]
    kind = "joint"
    ndim = 3
    preset = "mcp"
    spacing_mm = 0.4

    [injury]
    radius_mm = 1.0
    """
)


def _make_run(tmp_path_factory, name, text):
    folder = tmp_path_factory.mktemp(name)
    cfg = folder / f"{name}.toml"
    cfg.write_text(text)
    out = folder / f"{name}.h5"
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    return _make_run(tmp_path_factory, "mcp2d", CONFIG_2D)


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    return _make_run(tmp_path_factory, "mcp3d", CONFIG_3D)


def _pixels(path):
    """(height, width) of a PNG, and the image is not one flat colour."""
    image = imread(path)
    assert path.stat().st_size > 0
    assert image.std() > 0.01, f"{path.name} is blank"
    return image.shape[:2]


# ---------------------------------------------------------------------------------------------
# Every plot kind: files, names, pixel sizes.
# ---------------------------------------------------------------------------------------------


def test_plot_run_2d_writes_every_figure_at_its_size(run2d, tmp_path):
    dpi = 40  # figure sizes are multiples of 0.25 in: exact pixel counts
    written = _plot.plot_run(run2d, tmp_path / "figs", dpi=dpi)
    names = [p.name for p in written]
    assert names == [
        "map_tnf.png",
        "map_il1.png",
        "map_leukocytes.png",
        "map_cartilage.png",
        "map_drug.png",
        "map_complex.png",
        "timecourses.png",
    ]
    with RunFile.open(run2d) as run:
        n_times = len(_plot.default_frames(run.time, run.summary["synovial_fluid_tnf"]))
        assert n_times == 4
        width, height = _plot.map_figure_size(run, n_times)
    for path in written[:-1]:
        assert _pixels(path) == (height * dpi, width * dpi), path.name
    width, height = _plot.TIMECOURSE_SIZE_IN
    assert _pixels(written[-1]) == (height * dpi, width * dpi)


def test_plot_run_3d_three_slices_per_time(run3d, tmp_path):
    dpi = 40
    point = (6.0, 8.0, 2.2)
    written = _plot.plot_run(run3d, tmp_path, times=[0.0, 2.9], slice_point_mm=point, dpi=dpi)
    assert [p.name for p in written] == [
        "map_tnf.png",
        "map_il1.png",
        "map_leukocytes.png",
        "map_cartilage.png",
        "timecourses.png",
    ]
    with RunFile.open(run3d) as run:
        width, height = _plot.map_figure_size(run, 2, point)
        with matplotlib.rc_context(_plot.RC):
            fig = _plot.map_figure(run, "tnf", [0, 3], slice_point_mm=point)
        grid = run.grid
    assert _pixels(written[0]) == (height * dpi, width * dpi)
    maps = [ax for ax in fig.axes if ax.get_images()]
    assert len(maps) == 6  # 3 slices x 2 times (the colour bar is the 7th axes)
    titles = [ax.get_title() for ax in maps]
    # Nearest cell centres to the point, slowest axis first (z, y, x).
    centres = [grid.axis_centres(a)[np.argmin(np.abs(grid.axis_centres(a) - p))] for a, p in enumerate(point)]
    assert titles[0] == f"t = 0 h, y = {centres[1]:.4g} mm" and titles[1] == f"t = 3 h, y = {centres[1]:.4g} mm"
    assert titles[2].endswith(f"x = {centres[2]:.4g} mm") and titles[4].endswith(f"z = {centres[0]:.4g} mm")
    # Extents in mm: x-z plane, y-z plane, x-y plane.
    lo, hi = grid.origin, [o + e for o, e in zip(grid.origin, grid.extent)]
    assert maps[0].get_images()[1].get_extent() == pytest.approx([lo[2], hi[2], lo[0], hi[0]])
    assert maps[2].get_images()[1].get_extent() == pytest.approx([lo[1], hi[1], lo[0], hi[0]])
    assert maps[4].get_images()[1].get_extent() == pytest.approx([lo[2], hi[2], lo[1], hi[1]])


# ---------------------------------------------------------------------------------------------
# What the maps show.
# ---------------------------------------------------------------------------------------------


def test_tnf_map_brightest_at_the_injury(run2d):
    """The top colours of the TNF map at 1 h sit at the file's TNF maximum, at the injury centre."""
    with RunFile.open(run2d) as run, matplotlib.rc_context(_plot.RC):
        fig = _plot.map_figure(run, "tnf", [1])
        tnf = run.field("tnf", 1)
        y, x = (run.grid.axis_centres(a) for a in range(2))
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    ax = next(ax for ax in fig.axes if ax.get_images())
    image = ax.get_images()[1]
    cmap, norm = image.get_cmap(), image.norm
    assert isinstance(norm, mcolors.LogNorm)  # the injury makes TNF span many decades

    # Pixels inside the map axes with one of the colours of the top 10 % of the colour scale.
    height = rgba.shape[0]
    (x0, y0), (x1, y1) = ax.get_window_extent().get_points()
    rows, cols = np.mgrid[int(height - y1) + 1 : int(height - y0) - 1, int(x0) + 1 : int(x1) - 1]
    patch = rgba[rows, cols]
    top = cmap(np.linspace(0.9, 1.0, 64))[:, :3]
    distance = np.min(np.linalg.norm(patch[:, :, None, :] - top[None, None], axis=-1), axis=-1)
    hot = distance < 0.02
    assert 10 < hot.sum() < 0.05 * hot.size, "the top colours must cover a small spot"
    assert len(np.unique(patch.reshape(-1, 3).round(2), axis=0)) > 30, "the map has too few colours"

    # Back from pixels to mm through the axes transform: the spot is where the file's top values are.
    display = np.column_stack([cols[hot] + 0.5, height - rows[hot] - 0.5])
    spot_x, spot_y = ax.transData.inverted().transform(display).mean(axis=0)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    top_cells = np.asarray(norm(np.where(tnf > 0, tnf, np.nan))) >= 0.9
    assert np.hypot(spot_x - xx[top_cells].mean(), spot_y - yy[top_cells].mean()) < 0.2
    assert np.hypot(spot_x - INJURY_2D[1], spot_y - INJURY_2D[0]) < 0.5


def test_maps_hide_cells_where_the_species_does_not_live(run2d):
    with RunFile.open(run2d) as run, matplotlib.rc_context(_plot.RC):
        labels = run.labels
        for species, tissues in (
            ("leukocytes", (Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE)),
            ("tnf", (Tissue.CARTILAGE, Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE)),
            ("cartilage", (Tissue.CARTILAGE,)),
        ):
            fig = _plot.map_figure(run, species, [2])
            ax = next(ax for ax in fig.axes if ax.get_images())
            backdrop, data = ax.get_images()
            hidden = np.ma.getmaskarray(data.get_array())
            np.testing.assert_array_equal(hidden, ~np.isin(labels, [int(t) for t in tissues]), err_msg=species)
            # Bone grey and excluded white underneath.
            rgb = backdrop.get_array()
            assert np.allclose(rgb[labels == Tissue.BONE], _plot.BONE_RGB)
            assert np.allclose(rgb[labels == Tissue.EXCLUDED], _plot.EXCLUDED_RGB)
            # Tissue outlines drawn as contours.
            assert ax.collections, f"no tissue outlines on the {species} map"


def test_colour_scales():
    tnf, cartilage = _plot.species_style("tnf"), _plot.species_style("cartilage")
    wide = np.array([0.0, 1e-3, 1e-2, 1.0, 10.0, 100.0])
    narrow = np.array([0.0, 1.0, 5.0, 20.0])
    norm = _plot._norm(wide, tnf, None)
    assert isinstance(norm, mcolors.LogNorm) and norm.vmax == 100.0 and norm.vmin == pytest.approx(100.0 * _plot.LOG_FLOOR)
    assert not isinstance(_plot._norm(narrow, tnf, None), mcolors.LogNorm)
    assert isinstance(_plot._norm(narrow, tnf, True), mcolors.LogNorm)
    assert not isinstance(_plot._norm(wide, tnf, False), mcolors.LogNorm)
    for log in (None, True, False):
        norm = _plot._norm(np.array([0.999, 1.0]), cartilage, log)
        assert not isinstance(norm, mcolors.LogNorm) and (norm.vmin, norm.vmax) == (0.0, 1.0)
    # Zeros on a log scale take the lowest colour instead of leaving a hole.
    log_norm = _plot._norm(wide, tnf, True)
    shown = _plot._masked(np.array([[0.0, 5.0]]), np.array([[True, True]]), log_norm)
    assert not np.ma.getmaskarray(shown).any() and shown[0, 0] < log_norm.vmin


def test_species_tissues_match_the_model():
    """A map shows each species in the tissues the model's masks keep it in."""
    from fields import SPECIES
    from solver.physics import CYTOKINE_TISSUES, LEUKOCYTE_TISSUES, make_domain, species_region

    assert set(_plot.species_style("tnf").tissues) == set(CYTOKINE_TISSUES)
    assert set(_plot.species_style("drug").tissues) == set(CYTOKINE_TISSUES)
    assert set(_plot.species_style("leukocytes").tissues) == set(LEUKOCYTE_TISSUES)
    labels = np.array([[int(t) for t in Tissue]], np.uint8)  # one cell of each tissue
    domain = make_domain(labels, np.zeros(labels.shape, bool), np.float64, (1.0, 1.0))
    for species in SPECIES:
        lives = {Tissue(int(k)) for k, m in zip(labels[0], np.asarray(species_region(domain, species))[0]) if m > 0}
        assert set(_plot.species_style(species).tissues) == lives, species


# ---------------------------------------------------------------------------------------------
# Time courses.
# ---------------------------------------------------------------------------------------------


def test_timecourses_show_the_summaries_and_the_clinical_ranges(run2d):
    with RunFile.open(run2d) as run, matplotlib.rc_context(_plot.RC):
        fig = _plot.timecourse_figure(run)
        time, summary = run.time, run.summary
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 4
    for ax, (name, _title, _log) in zip(axes, _plot.TIMECOURSE_PANELS):
        (line,) = [ln for ln in ax.lines if ln.get_gid() == f"summary:{name}"]
        np.testing.assert_array_equal(line.get_xdata(), time)
        np.testing.assert_array_equal(line.get_ydata(), summary[name])
        ranges = [r for r in _plot.CLINICAL_RANGES if r.summary == name]
        shaded = [p for p in ax.patches if str(p.get_gid()).startswith(f"range:{name}:")]
        assert len(shaded) == len(ranges), name
        labels = {t.get_text() for t in ax.texts}
        bottom, top = ax.get_ylim()
        for r, patch in zip(ranges, shaded):
            assert r.label in labels
            y = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 1]
            assert (y.min(), y.max()) == pytest.approx((max(r.low, bottom), min(r.high, top)))
    # The ranges of the brief, where they apply.
    spans = {(r.summary, r.group, r.low, r.high) for r in _plot.CLINICAL_RANGES}
    assert ("synovial_fluid_leukocytes", "RA", 7000.0, 25000.0) in spans
    assert ("synovial_fluid_il1", "RA", 108.0, 152.0) in spans
    assert ("synovial_fluid_tnf", "OA", 0.0, 13.0) in spans
    assert all(r.source for r in _plot.CLINICAL_RANGES)
    assert not [p for p in axes[3].patches if str(p.get_gid()).startswith("range:")]  # no range for cartilage


# ---------------------------------------------------------------------------------------------
# Movie.
# ---------------------------------------------------------------------------------------------


def test_movie_gif_has_every_frame(run2d, tmp_path, monkeypatch):
    monkeypatch.setattr(_plot.shutil, "which", lambda name: None)  # no ffmpeg: the Pillow GIF path
    written = _plot.plot_run(run2d, tmp_path, times=[3.0], movie=True, movie_species="leukocytes", dpi=40)
    movie = written[-1]
    assert movie.name == "movie_leukocytes.gif"
    with Image.open(movie) as gif, RunFile.open(run2d) as run:
        assert gif.n_frames == run.n_frames == 4
        assert gif.size[0] > 100 and gif.size[1] > 100


def test_movie_frames_are_downsampled():
    assert _plot.movie_frames(7) == list(range(7))
    frames = _plot.movie_frames(250)
    assert len(frames) == 100 and frames[0] == 0 and frames[-1] == 249
    assert np.all(np.diff(frames) > 0)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not on the PATH")
def test_movie_mp4_with_ffmpeg(run2d, tmp_path):
    import subprocess

    written = _plot.plot_run(run2d, tmp_path, times=[0.0], movie=True, dpi=40)
    assert written[-1].name == "movie_tnf.mp4" and written[-1].stat().st_size > 1000
    # a real H.264/MPEG-4 stream that ffprobe decodes: one video frame per run frame
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0"]
        + ["-show_entries", "stream=nb_read_frames,width,height", "-of", "csv=p=0", str(written[-1])],
        capture_output=True,
        text=True,
        check=True,
    )
    width, height, frames = map(int, probe.stdout.strip().split(","))
    with RunFile.open(run2d) as run:
        assert frames == run.n_frames == 4
    assert width > 100 and height > 100


# ---------------------------------------------------------------------------------------------
# Choosing times; bad input.
# ---------------------------------------------------------------------------------------------


def test_default_and_requested_times():
    time = np.arange(0.0, 73.0)
    series = np.exp(-((time - 6.0) ** 2))
    assert _plot.default_frames(time, series) == [0, 6, 36, 72]
    # A series largest at the start: the peak after the first frame.
    assert _plot.default_frames(time, np.exp(-time)) == [0, 1, 36, 72]
    assert _plot.default_frames(time[:3], None) == [0, 1, 2]
    assert _plot.default_frames(time, None) == [0, 18, 36, 72]
    assert _plot._frames_for_times(time, [5.4, 5.6, 72.0, 0.0], "r.h5") == [0, 5, 6, 72]


def test_bad_input_is_refused_with_a_clear_message(run2d, run3d, tmp_path):
    with pytest.raises(ValueError, match=r"time 3\.5 h is outside the run mcp2d\.h5, whose frames span t = 0 \.\. 3 h"):
        _plot.plot_run(run2d, tmp_path, times=[1.0, 3.5])
    with pytest.raises(ValueError, match=r"time -1 h is outside"):
        _plot.plot_run(run2d, tmp_path, times=[-1.0])
    with pytest.raises(ValueError, match="times is empty"):
        _plot.plot_run(run2d, tmp_path, times=[])
    with pytest.raises(ValueError, match="3D runs only"):
        _plot.plot_run(run2d, tmp_path, slice_point_mm=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="movie species 'il6'"):
        _plot.plot_run(run2d, tmp_path, movie=True, movie_species="il6")
    with pytest.raises(ValueError, match=r"x = 99 mm is outside the domain"):
        _plot.plot_run(run3d, tmp_path, slice_point_mm=(1.0, 2.0, 99.0))
    assert not list(tmp_path.iterdir()), "nothing is written when the input is refused"


def test_no_global_matplotlib_state_changes(run2d, tmp_path):
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    _plot.plot_run(run2d, tmp_path, times=[1.0], dpi=30)
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == before
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


# ---------------------------------------------------------------------------------------------
# ParaView: the XDMF sidecar through VTK's own reader.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["run2d", "run3d"])
def test_xdmf_sidecar_reads_back_in_vtk(which, request):
    pytest.importorskip("vtk")
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline
    from vtkmodules.vtkIOXdmf2 import vtkXdmfReader

    path = request.getfixturevalue(which)
    reader = vtkXdmfReader()
    reader.SetFileName(str(path.with_suffix(".xdmf")))
    reader.UpdateInformation()
    steps = reader.GetOutputInformation(0).Get(vtkStreamingDemandDrivenPipeline.TIME_STEPS())
    with RunFile.open(path) as run:
        np.testing.assert_allclose(steps, run.time)
        cells = run.grid.shape if run.grid.ndim == 3 else (1, *run.grid.shape)
        for k, t in enumerate(steps):
            reader.UpdateTimeStep(t)
            data = reader.GetOutputDataObject(0)
            # Points are cell corners; VTK lists dimensions x first.
            assert tuple(data.GetDimensions()) == tuple(n + 1 for n in reversed(cells))
            arrays = data.GetCellData()
            names = {arrays.GetArrayName(i) for i in range(arrays.GetNumberOfArrays())}
            assert names == {"labels", *run.species}
            # Cell data: x fastest, the C order of the (nz, ny, nx) arrays.
            np.testing.assert_array_equal(vtk_to_numpy(arrays.GetArray("labels")), run.labels.ravel())
            for species in run.species:
                np.testing.assert_array_equal(
                    vtk_to_numpy(arrays.GetArray(species)), run.field(species, k).ravel(), err_msg=species
                )


# ---------------------------------------------------------------------------------------------
# Read by a clinician: tissue legend, bones, the TNF peak, events, the two OA IL-1 ranges.
# ---------------------------------------------------------------------------------------------


def _legend_texts(fig):
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()], legend.get_title().get_text()


def test_maps_have_a_tissue_key_legend_and_bone_names(run2d):
    with RunFile.open(run2d) as run, matplotlib.rc_context(_plot.RC):
        labels = run.labels
        tnf = _plot.map_figure(run, "tnf", [0, 2])
        cartilage = _plot.map_figure(run, "cartilage", [2])
    key = tnf.axes[0]
    (mesh,) = [c for c in key.collections if c.get_gid() == "tissue-key"]
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(labels.shape), labels)
    assert key.get_title() == "tissues" and not key.get_images()
    texts, title = _legend_texts(tnf)
    for words in ("synovial fluid", "synovium (lining)", "capsule", "cartilage", "bone", "tissue boundary"):
        assert words in texts
    assert "outside the model" in title and "bone is grey" in title
    assert not [t for t in texts if t.startswith("light grey")]  # TNF lives in every soft tissue
    texts, _ = _legend_texts(cartilage)
    assert "light grey: tissue without Cartilage integrity" in texts
    # The MCP preset: metacarpal above the joint space, proximal phalanx below, on the key and the first map.
    for ax in (key, tnf.axes[1]):
        bones = {t.get_gid(): t for t in ax.texts if str(t.get_gid()).startswith("bone:")}
        assert bones["bone:upper"].get_text() == "metacarpal"
        assert bones["bone:lower"].get_text() == "proximal phalanx"
        (x_up, y_up), (_, y_low) = bones["bone:upper"].get_position(), bones["bone:lower"].get_position()
        assert y_up > 8.0 > y_low  # the joint centre is the domain centre (16 mm high)
        row, col = int(y_up / run_grid_spacing(run2d)), int(x_up / run_grid_spacing(run2d))
        assert labels[row, col] == Tissue.BONE
    assert not [t for t in tnf.axes[2].texts if str(t.get_gid()).startswith("bone:")]


def run_grid_spacing(path):
    with RunFile.open(path) as run:
        return run.grid.spacing[0]


def test_3d_horizontal_slice_has_no_bone_names(run3d):
    with RunFile.open(run3d) as run, matplotlib.rc_context(_plot.RC):
        fig = _plot.map_figure(run, "tnf", [1])
    keys = [ax for ax in fig.axes if ax.get_title().startswith("tissues")]
    assert len(keys) == 3
    named = [{t.get_text() for t in ax.texts} for ax in keys]
    assert named[0] == named[1] == {"metacarpal", "proximal phalanx"} and named[2] == set()


def test_the_tnf_peak_column_is_labelled(run2d):
    with RunFile.open(run2d) as run, matplotlib.rc_context(_plot.RC):
        series = run.summary["synovial_fluid_tnf"]
        peak = 1 + int(np.argmax(series[1:]))
        frames = _plot.default_frames(run.time, series)
        fig = _plot.map_figure(run, "il1", frames)
        elsewhere = _plot.map_figure(run, "il1", [k for k in range(run.n_frames) if k != peak])
        time = run.time
    maps = [ax for ax in fig.axes if ax.get_images()]
    marked = [ax for ax in maps if any(t.get_gid() == "tnf-peak" for t in ax.texts)]
    assert len(marked) == 1 and marked[0].get_title() == f"t = {time[peak]:g} h"
    (text,) = [t for t in marked[0].texts if t.get_gid() == "tnf-peak"]
    assert text.get_text() == f"fluid TNF peak: {series[peak]:.3g} pg/mL"
    assert not [t for ax in elsewhere.axes for t in ax.texts if t.get_gid() == "tnf-peak"]


def test_run_events_come_from_the_stored_config(run2d, run3d):
    from solver.physics import dose_times

    with RunFile.open(run2d) as run:
        events = _plot.run_events(run)
    assert events.bones == ("metacarpal", "proximal phalanx")
    assert events.dose_times_h == dose_times(0.0, (), 168.0, 3.0) == (0.0,)
    assert events.drug.startswith("etanercept 50 mg")
    assert events.injury_end_h is not None and events.injury_end_h > 0
    with RunFile.open(run3d) as run:
        assert _plot.run_events(run).dose_times_h == ()


def test_timecourses_mark_the_doses_and_explain_the_oa_il1_ranges(run2d):
    with RunFile.open(run2d) as run, matplotlib.rc_context(_plot.RC):
        fig = _plot.timecourse_figure(run)
    axes = [ax for ax in fig.axes if ax.get_title()]
    for row, ax in enumerate(axes):
        (dose,) = [ln for ln in ax.lines if ln.get_gid() == "event:dose:0"]
        assert list(dose.get_xdata()) == [0.0, 0.0]
        labels = [t.get_text().strip() for t in ax.texts if str(t.get_gid()).startswith("event-label:")]
        assert labels == (["dose 1"] if row < 2 else [])
        # the injury (onset 0, 24 h by default) outlasts this 3 h run: no line
        assert not [ln for ln in ax.lines if ln.get_gid() == "event:injury_end"]
    texts, title = _legend_texts(fig)
    assert any(t.startswith("etanercept 50 mg sc dose (1), t = 0 h") for t in texts)
    assert "model (synovial-fluid mean)" in texts
    flat = " ".join(title.split())
    assert "two OA ranges" in flat and "Westacott et al. 1990" in flat and "Sohn et al. 2012" in flat
    for r in _plot.CLINICAL_RANGES:
        if r.summary == "synovial_fluid_il1" and r.group == "OA":
            assert r.label.split(" (")[0].removeprefix("OA ") in flat


def test_event_lines_at_every_dose_and_the_injury_end():
    from matplotlib.figure import Figure

    doses = tuple(float(t) for t in range(0, 240, 24))  # 10 daily doses
    events = _plot.RunEvents(injury_end_h=30.0, dose_times_h=doses, drug="anakinra 100 mg sc")
    ax = Figure().subplots()
    lines = _plot.mark_events(ax, events, 0.0, 200.0, text=True)
    shown = [t for t in doses if t <= 200.0]
    assert [ln.get_gid() for ln in lines] == ["event:injury_end"] + [f"event:dose:{k}" for k in range(len(shown))]
    assert [ln.get_xdata()[0] for ln in lines] == [30.0, *shown]
    words = sorted(t.get_text().strip() for t in ax.texts)
    assert words == ["dose 1 of 10", "injury ends"]  # more than MAX_DOSE_LABELS doses: only the first labelled
    few = _plot.RunEvents(dose_times_h=(10.0, 50.0, 190.0))
    ax = Figure().subplots()
    _plot.mark_events(ax, few, 0.0, 200.0, text=True)
    texts = {t.get_text().strip(): t for t in ax.texts}
    assert sorted(texts) == ["dose 1", "dose 2", "dose 3"]
    assert texts["dose 3"].get_horizontalalignment() == "right"  # near the right edge: left of its line
    assert texts["dose 1"].get_horizontalalignment() == "left"
    assert not _plot.mark_events(Figure().subplots(), _plot.RunEvents(), 0.0, 10.0, text=True)
