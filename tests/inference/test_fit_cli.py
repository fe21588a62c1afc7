"""`synovia synth`, `synovia fit` and `synovia plot fit.h5`: files written, bad input exits 2 with one clear line."""

from __future__ import annotations

import textwrap
import tomllib
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import inference
from solver import load_config
from solver.cli import main
from tests.helpers import assert_close

SCENARIO = textwrap.dedent(
    """
    [run]
    t_end_h = 8.0
    output_interval_h = 2.0
    precision = "float64"

    [geometry]
    kind = "joint"
    preset = "knee"
    spacing_mm = 1.0

    [injury]
    radius_mm = 2.5
    """
)

FIT = textwrap.dedent(
    """
    scenario = "scenario.toml"
    observations = "{obs}"

    [fit]
    optimizer = "adam"
    learning_rate = 0.2
    max_iterations = 3
    starts = 2

    [parameters.tnf_per_leukocyte]
    lower = 1e-4
    upper = 0.1
    initial = 0.02

    [parameters.recruitment_rate]
    lower = 10.0
    upper = 1000.0
    """
)

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A scenario file and noisy synthetic data made by `synovia synth`."""
    d = tmp_path_factory.mktemp("fitcli")
    (d / "scenario.toml").write_text(SCENARIO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["synth", str(d / "scenario.toml"), "--noise", "0.05", "--maps", "6", "-o", str(d / "data.h5")]) == 0
    return d


def test_synth_writes_truth_and_noise_of_the_stated_size(case, tmp_path):
    noisy = inference.load_observations(case / "data.h5")
    assert main(["synth", str(case / "scenario.toml"), "-o", str(tmp_path / "clean.csv")]) == 0
    clean = inference.load_observations(tmp_path / "clean.csv")
    assert len(noisy) == len(clean) == 3 * 4  # tnf, il1, leukocytes at 2, 4, 6, 8 h
    assert noisy.maps[0].time_h == 6.0 and noisy.maps[0].species == "leukocytes"
    truth = inference._fit.truth_values(noisy, ["recruitment_rate", "chemotaxis"])
    assert truth == {"recruitment_rate": 200.0, "chemotaxis": 0.05}
    # noise: (noisy - clean) / sigma should be standard normal over the map's cells
    m = noisy.maps[0]
    seen = np.isfinite(m.value)
    config = load_config(case / "scenario.toml")
    clean_map = inference.synthesize(config, map_times=[6.0]).maps[0].value
    z = (m.value[seen] - clean_map[seen]) / m.sigma[seen]
    assert z.size > 300 and abs(z.mean()) < 0.15 and 0.85 < z.std() < 1.15
    # 5% vs the 1% weighting of noiseless data (the 1e-3 floor differs: the map raises the leukocyte scale)
    assert np.allclose(noisy.sigma / clean.sigma, 5.0, rtol=0.02)


@pytest.mark.slow  # ~70 s: a whole fit through the command
def test_fit_command_writes_report_figure_and_runnable_toml(case, tmp_path, capsys):
    fit_toml = case / "fit.toml"
    fit_toml.write_text(FIT.format(obs="data.h5"))
    out = tmp_path / "fit.h5"
    assert main(["fit", str(fit_toml), "-o", str(out), "-q"]) == 0
    report = inference.read_report(out)
    assert report["names"] == ["tnf_per_leukocyte", "recruitment_rate"]
    assert report["loss_history"].shape == (4, 2) and report["iterations"] == 3
    assert report["loss_history"][-1, 0] < report["loss_history"][0, 0]
    fitted = load_config(tmp_path / "fit_fitted.toml")
    assert fitted.parameters["recruitment_rate"] == pytest.approx(report["fitted"][1])
    assert fitted.geometry.spacing_mm == 1.0 and fitted.run.t_end_h == 8.0
    image = matplotlib.image.imread(tmp_path / "fit.png")
    assert image.shape[0] > 300 and image.std() > 0.05
    assert (tmp_path / "fit_maps.png").is_file()
    assert "recruitment_rate" in capsys.readouterr().out
    # refuses to overwrite; resumes to a larger budget
    assert main(["fit", str(fit_toml), "-o", str(out), "-q"]) == 2
    assert main(["fit", str(fit_toml), "-o", str(out), "-q", "--resume", "--set", "fit.max_iterations=4"]) == 0
    assert inference.read_report(out)["loss_history"].shape == (5, 2)
    assert tomllib.loads(inference.read_report(out)["fit_toml"])["fit"]["max_iterations"] == 4
    # --resume FILE, as synovia run takes it; a different -o beside it is refused
    assert main(["fit", str(fit_toml), "-q", "--resume", str(out), "--set", "fit.max_iterations=5"]) == 0
    assert inference.read_report(out)["loss_history"].shape == (6, 2)
    assert main(["fit", str(fit_toml), "-q", "--resume", str(out), "-o", str(tmp_path / "other.h5")]) == 2
    assert "give the report to continue once" in capsys.readouterr().err
    # `synovia plot` recognises a fit report; the figures go to FILE_figs/ by default
    assert main(["plot", str(out), "--dpi", "50"]) == 0
    assert (tmp_path / "fit_figs" / "fit.png").is_file()


def _csv(tmp_path, rows):
    path = tmp_path / "obs.csv"
    path.write_text("time_h,species,kind,where,value,sigma\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    "rows, change, message",
    [
        (["2,drug,fluid,,1.0,0.1"], None, "species 'drug' is not simulated in this run"),
        (["2,tnfa,fluid,,1.0,0.1"], None, "species 'tnfa' is not one of"),
        (["12,tnf,fluid,,1.0,0.1"], None, "time_h = 12 lies outside the run"),
        (["2,tnf,fluid,,1.0,0"], None, "sigma = 0.0 must be a positive number"),
        (["2,tnf,fluid,,1.0,-0.5"], None, "sigma = -0.5 must be a positive number"),
        (
            ["2,tnf,fluid,,1.0,0.1"],
            ("tnf_per_leukocyte", "tnf_per_leukocite"),
            "unknown parameter 'parameters.tnf_per_leukocite'",
        ),
        (["2,tnf,fluid,,1.0,0.1"], ("max_iterations = 3", "max_iteration = 3"), "unknown config key 'fit.max_iteration'"),
        (["2,tnf,fluid,,1.0,0.1"], ("lower = 10.0", "lower = 2000.0"), "bounds \\[2000, 1000\\]"),
        (["2,tnf,fluid,,abc,0.1"], None, "value = 'abc' is not a number"),
    ],
)
def test_bad_fit_input_exits_2_with_one_line(case, tmp_path, capsys, rows, change, message):
    import re

    (tmp_path / "scenario.toml").write_text(SCENARIO)
    text = FIT.format(obs="obs.csv")
    if change:
        text = text.replace(*change)
    _csv(tmp_path, rows)
    (tmp_path / "fit.toml").write_text(text)
    code = main(["fit", str(tmp_path / "fit.toml"), "-o", str(tmp_path / "fit.h5"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "Traceback" not in err[0] and re.search(message, err[0]), err
    assert not (tmp_path / "fit.h5").exists()


def test_bad_synth_input_exits_2(case, tmp_path, capsys):
    scenario = str(case / "scenario.toml")
    assert main(["synth", scenario, "--times", "20", "-o", str(tmp_path / "a.h5")]) == 2
    assert "outside the run" in capsys.readouterr().err
    assert main(["synth", scenario, "--maps", "4", "-o", str(tmp_path / "a.csv")]) == 2
    assert "maps need an HDF5 file" in capsys.readouterr().err
    assert main(["synth", scenario, "--where", "tissue:meniscus", "-o", str(tmp_path / "a.h5")]) == 2
    assert "is not a tissue" in capsys.readouterr().err
    assert main(["synth", scenario, "--noise", "-1", "-o", str(tmp_path / "a.h5")]) == 2
    assert "noise = -1.0 must be >= 0" in capsys.readouterr().err


def test_fit_and_synth_into_a_missing_folder_exit_2_before_any_work(case, tmp_path, capsys):
    fit_toml = case / "fit.toml"
    fit_toml.write_text(FIT.format(obs="data.h5"))
    missing = tmp_path / "no"
    for argv in (
        ["fit", str(fit_toml), "-o", str(missing / "fit.h5"), "-q"],
        ["synth", str(case / "scenario.toml"), "-o", str(missing / "data.h5")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("synovia: error: ") and f"folder '{missing}' does not exist" in err[-1], err
        assert "Traceback" not in "\n".join(err)
    assert not missing.exists()


def _one_parameter_fit(case) -> Path:
    fit_toml = case / "fit1.toml"
    one = FIT.format(obs="data.h5").split("[parameters.recruitment_rate]")[0].replace("starts = 2", "starts = 1")
    fit_toml.write_text(one.replace("max_iterations = 3", "max_iterations = 2"))
    return fit_toml


@pytest.mark.slow  # ~40 s
def test_fit_profile_goes_into_the_report_and_its_figure(case, tmp_path, capsys):
    """`--profile` after a fit: the report's /profiles group, NAME_profiles.png, a summary line; drawn
    again by `synovia plot`; a name the fit does not free exits 2 before any work."""
    fit_toml, out = _one_parameter_fit(case), tmp_path / "fit.h5"
    assert main(["fit", str(fit_toml), "-o", str(out), "-q", "--profile", "chemotaxis"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "synovia: error: --profile chemotaxis: not a free parameter of this fit (free: tnf_per_leukocyte, or all)" == err[-1]
    assert not out.exists()
    assert main(["fit", str(fit_toml), "-o", str(out), "-q", "--profile", "all", "--profile-points", "2"]) == 0
    report = inference.read_report(out)
    prof = report["profiles"]["tnf_per_leukocyte"]
    assert len(prof["values"]) == 5 and prof["status"] == "complete" and prof["fitted"] == report["fitted"][0]
    assert prof["threshold"] == pytest.approx(3.841458820694124) and np.min(prof["delta_chi2"]) == 0
    assert "tnf_per_leukocyte: " in capsys.readouterr().out
    image = matplotlib.image.imread(tmp_path / "fit_profiles.png")
    assert image.shape[0] > 200 and image.std() > 0.05
    assert main(["plot", str(out), "--dpi", "50"]) == 0
    assert (tmp_path / "fit_figs" / "fit_profiles.png").is_file()


@pytest.mark.slow  # three fits' worth of compiling (~1.5 min on 2 cores); the fast test above profiles after a fit
def test_profile_of_a_finished_fit_does_not_fit_again_and_a_resume_keeps_it(case, tmp_path):
    fit_toml, out = _one_parameter_fit(case), tmp_path / "fit.h5"
    assert main(["fit", str(fit_toml), "-o", str(out), "-q"]) == 0
    fitted = inference.read_report(out)
    assert fitted["profiles"] == {}
    profile = ["--profile", "tnf_per_leukocyte", "--profile-points", "2"]
    assert main(["fit", str(fit_toml), "-q", "--resume", str(out), *profile]) == 0
    report = inference.read_report(out)
    assert report["iterations"] == 2 and np.array_equal(report["fitted"], fitted["fitted"])
    assert len(report["profiles"]["tnf_per_leukocyte"]["values"]) == 5
    assert main(["fit", str(fit_toml), "-q", "--resume", str(out)]) == 0  # the same fitted values: the profile stays
    kept = inference.read_report(out)["profiles"]["tnf_per_leukocyte"]
    assert_close(kept["loss"], report["profiles"]["tnf_per_leukocyte"]["loss"], rtol=0)
    assert main(["fit", str(fit_toml), "-q", "--resume", str(out), "--set", "fit.max_iterations=3"]) == 0  # fitted again: it goes
    assert inference.read_report(out)["profiles"] == {}
