"""Figures of study folders (solver.plot): their sizes, pixels, layouts and labels.

The study is the session's small sweep (the ``study`` fixture: a 2D MCP joint at 0.4 mm, four
points); the layouts are drawn from synthetic study tables.
"""

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from solver.cli import main
from solver.plot import _study as _plot_study
from solver.study import _study
from tests.helpers import assert_close

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")


def _pixels(path):
    image = imread(path)
    assert image.std() > 0.01, f"{path.name} is blank"
    return image


def test_plot_study_writes_the_figures_at_their_size(study, tmp_path, capsys):
    dpi = 40
    assert main(["plot", str(study), "-o", str(tmp_path / "figs"), "--dpi", str(dpi)]) == 0
    written = capsys.readouterr().out.split()
    assert [Path(p).name for p in written] == ["study.png", "study_timecourses.png", "summary.csv"]
    table = _study.read_study(study)
    assert _plot_study.study_layout(table) == "heatmap"
    width, height = _plot_study.study_figure_size(table)
    assert _pixels(tmp_path / "figs" / "study.png").shape[:2] == (height * dpi, width * dpi)
    width, height = _plot_study.TIMECOURSE_SIZE_IN
    assert _pixels(tmp_path / "figs" / "study_timecourses.png").shape[:2] == (height * dpi, width * dpi)
    assert (tmp_path / "figs" / "summary.csv").read_text() == (study / "summary.csv").read_text()
    # run-file options are refused, and a folder that is not a study is named as such
    assert main(["plot", str(study), "-o", str(tmp_path / "f2"), "--movie"]) == 2
    assert "--movie applies to a run file" in capsys.readouterr().err
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "f3")]) == 2
    assert "is a folder but not a study folder" in capsys.readouterr().err


def test_heatmap_pixels_follow_the_data(study, tmp_path):
    """The brightest cell of the peak-TNF heat map (magma: bright = high) is the point with the most TNF."""
    table = _study.read_study(study)
    with matplotlib.rc_context(_plot_study.RC):
        fig = _plot_study.study_figure(table)
    fig.set_dpi(60)  # the transforms below map to the saved image's pixels (layout is final after the save)
    fig.savefig(tmp_path / "study.png", dpi=fig.dpi)
    image = imread(tmp_path / "study.png")[..., :3]
    height = image.shape[0]
    for name in ("peak_fluid_tnf", "final_fluid_leukocytes"):
        ax = next(a for a in fig.axes if any(im.get_gid() == f"study:{name}" for im in a.get_images()))
        data = ax.get_images()[0].get_array()
        # x: injury.rate (100, 800), y: recruitment_rate (50, 5000); each cell's centre in pixels
        luminance = np.empty(data.shape)
        for (r, c), _ in np.ndenumerate(data):
            px, py = ax.transData.transform((c + 0.3, r + 0.3))  # off the centre, clear of the written value
            rgb = image[int(round(height - py)), int(round(px))]
            luminance[r, c] = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        values = np.array([[table.measures[name][table.values.index([x, y])] for x in (100.0, 800.0)] for y in (50.0, 5000.0)])
        assert_close(data.filled(np.nan), values, rtol=0)
        # every pair of cells whose values clearly differ is drawn in that order of brightness
        v, lum = values.ravel(), luminance.ravel()
        clear = [(i, j) for i in range(4) for j in range(4) if v[i] - v[j] > 0.1 * (v.max() - v.min())]
        assert clear, name
        assert all(lum[i] > lum[j] for i, j in clear), (name, v, lum)


def _table(keys, values, measures, combine="grid", status=None):
    n = len(values)
    return _study.StudyTable(
        Path("synthetic"), list(keys), combine, [list(v) for v in values], [Path(f"synthetic/p{i}.h5") for i in range(n)],
        status or ["complete"] * n, {m.name: np.asarray(measures(m), float) for m in _study.MEASURES}, [None] * n, {},
    )  # fmt: skip


def test_one_key_draws_lines_with_log_axes_and_clinical_ranges():
    x = [10.0, 100.0, 1000.0, 10000.0]
    table = _table(["parameters.recruitment_rate"], [[v] for v in x], lambda m: [1.0, 10.0, 1e3, 1e4], status=None)
    table.measures["final_fluid_leukocytes"][1] = np.nan  # a point without a complete run
    table.status[1] = "not run"
    with matplotlib.rc_context(_plot_study.RC):
        fig = _plot_study.study_figure(table)
    assert _plot_study.study_layout(table) == "line"
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    assert set(lines) == {f"study:{m.name}" for m in _study.MEASURES}
    ax = lines["study:peak_fluid_tnf"].axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"  # both span 3 decades
    assert_close(lines["study:peak_fluid_tnf"].get_xdata(), x, rtol=0)
    assert_close(lines["study:final_fluid_leukocytes"].get_ydata(), [1.0, np.nan, 1e3, 1e4], rtol=0)
    ranges = {p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid()}
    assert any(g.startswith("range:final_fluid_leukocytes:RA") for g in ranges)
    assert not any(g.startswith("range:peak_") for g in ranges)  # clinical ranges describe the steady state
    assert "1 of 4 points not complete, left out" in fig.get_suptitle()


def test_heatmap_of_list_valued_keys():
    """Swept values may be lists (a centre in mm): they are categories of the heat map."""
    values = [[r, c] for r in (1.0, 2.0) for c in ([], [3.0, 3.0])]
    table = _table(["injury.radius_mm", "injury.centre_mm"], values, lambda m: [1.0, 2.0, 3.0, 4.0])
    with matplotlib.rc_context(_plot_study.RC):
        fig = _plot_study.study_figure(table)
    ax = next(a for a in fig.axes if any(im.get_gid() == "study:peak_fluid_tnf" for im in a.get_images()))
    assert_close(ax.get_images()[0].get_array().filled(np.nan), [[1.0, 3.0], [2.0, 4.0]], rtol=0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["[]", "[3.0, 3.0]"]


def test_three_keys_draw_one_row_per_key():
    values = [[a, b, c] for a in (1.0, 2.0) for b in ("ssp_rk3", "strang_ssp_rk3") for c in (0.1, 0.2)]
    table = _table(["injury.rate", "run.stepper", "parameters.chemotaxis"], values, lambda m: np.arange(8.0) + 1)
    with matplotlib.rc_context(_plot_study.RC):
        fig = _plot_study.study_figure(table)
    assert _plot_study.study_layout(table) == "scatter"
    gids = {ln.get_gid() for ax in fig.axes for ln in ax.get_lines()}
    assert gids == {f"study:{m.name}:{k}" for m in _study.MEASURES for k in table.keys}
    stepper_axes = next(ln.axes for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "study:peak_fluid_tnf:run.stepper")
    assert [t.get_text() for t in stepper_axes.get_xticklabels()] == ["ssp_rk3", "strang_ssp_rk3"]


def test_timecourses_draw_every_point_coloured_by_the_first_key(study):
    table = _study.read_study(study)
    with matplotlib.rc_context(_plot_study.RC):
        fig = _plot_study.study_timecourse_figure(table)
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    for i in range(4):
        line = lines[f"series:synovial_fluid_tnf:{i}"]
        assert_close(line.get_ydata(), table.series[i]["synovial_fluid_tnf"], rtol=0)
    # colour by injury rate: the two points of each rate share a colour, the rates differ
    colours = [lines[f"series:synovial_fluid_tnf:{i}"].get_color() for i in range(4)]
    assert colours[0] == colours[1] and colours[2] == colours[3] and colours[0] != colours[2]
    # line style by the second key (two values)
    styles = [lines[f"series:synovial_fluid_tnf:{i}"].get_linestyle() for i in range(4)]
    assert styles[0] == styles[2] != styles[1] == styles[3]


def test_compact_labels():
    assert [_plot_study.compact(v) for v in (5.33e-6, 0.0648, 1255.94, 12818.6, 2.9, 3e7, 0, "ssp_rk3")] == [
        "5e-6", "0.0648", "1.26k", "12.8k", "2.9", "3e7", "0", "ssp_rk3",
    ]  # fmt: skip
    assert [_plot_study.compact(v, 3) for v in (0.0054, 0.0025, 0.001, 1.23456e-5)] == ["5.4e-3", "2.5e-3", "1e-3", "1.23e-5"]
