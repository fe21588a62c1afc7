"""The calibrated RA and OA presets land in docs/model.md's clinical synovial-fluid ranges (slow), and
the fit configs that calibrated them load and validate."""

from pathlib import Path

import numpy as np
import pytest

from inference._config import load_fit_config
from solver import RunFile, load_config
from solver.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CALIBRATION = CONFIGS / "calibration"


@pytest.mark.parametrize("disease", ["ra", "oa", "rest"])
def test_calibration_fit_config_loads_and_validates(disease):
    from inference._problem import normalize_parameters
    from solver import build_scenario

    fc = load_fit_config(CALIBRATION / f"calibrate_{disease}.toml")
    assert fc.fit.log_residuals  # the targets are log-normal: sigma/value is the sd on the log scale
    # steady state: every observed quantity at two late times, days apart, within the run
    times = {}
    for t, species, kind in zip(fc.observations.time_h, fc.observations.species, fc.observations.kind):
        times.setdefault((species, kind), set()).add(float(t))
    assert {"tnf", "il1", "leukocytes"} <= {s for s, k in times if k == "fluid"}
    for ts in times.values():
        assert len(ts) == 2 and max(ts) - min(ts) >= 72 and max(ts) == fc.scenario.run.t_end_h and min(ts) >= 240
    # bounds and initial values valid for the scenario (what the fit checks before it starts)
    params = normalize_parameters(fc.parameters, build_scenario(fc.scenario).params)
    assert all(np.isfinite(p.upper) for p in params)  # the fit's time step comes from the upper bounds


@pytest.mark.parametrize("disease", ["ra", "oa"])
def test_preset_is_the_fitted_scenario_at_production_resolution(disease):
    """configs/<disease>.toml is the scenario of the fit report shipped beside the fit config, with the
    fitted values (to the 5 digits written), on a finer grid in float32: nothing else differs."""
    import tomllib

    from inference import fitted_config, read_report
    from solver import config_from_dict

    report = read_report(CALIBRATION / f"{disease}_fit.h5")
    assert report["status"] == "converged"
    raw = tomllib.loads(report["config_toml"])
    # the fits ran with the drug off, before the drug took its pharmacokinetic keys: leave those out
    assert raw["drug"]["enabled"] is False
    raw["drug"] = {"enabled": False}
    raw["parameters"] = {k: v for k, v in raw["parameters"].items() if not k.startswith("drug_")}
    calibrated = config_from_dict(raw, CALIBRATION)
    fitted = fitted_config(calibrated, dict(zip(report["names"], report["fitted"]))).to_dict()
    preset = load_config(CONFIGS / f"{disease}.toml").to_dict()
    for name, value in fitted["parameters"].items():
        assert preset["parameters"][name] == pytest.approx(value, rel=1e-4), name
    for section in ("injury", "drug", "tissues", "initial"):
        assert preset[section] == fitted[section], section
    geometry = {k: v for k, v in preset["geometry"].items() if k != "spacing_mm"}
    assert geometry == {k: v for k, v in fitted["geometry"].items() if k != "spacing_mm"}
    assert preset["geometry"]["spacing_mm"] < fitted["geometry"]["spacing_mm"]
    assert preset["run"]["t_end_h"] == fitted["run"]["t_end_h"]


@pytest.mark.parametrize(
    ("name", "defaults"),
    [("rest", ["basal_tnf", "basal_il1", "fluid_recruitment"]), ("oa", ["recruitment_from_fragments"]),
     ("ra", ["il1_per_leukocyte"])],
)  # fmt: skip
def test_the_model_defaults_are_the_calibrated_values(name, defaults):
    """The resting joint's secretion and fluid entry (rest fit), the fragments' recruitment drive (OA fit)
    and the IL-1 secretion per leukocyte (RA fit: the fluid where many leukocytes set IL-1) are the
    defaults of [parameters], to the 5 digits written."""
    from inference import read_report
    from solver import PARAMETERS

    report = read_report(CALIBRATION / f"{name}_fit.h5")
    assert report["status"] == "converged"
    fitted = dict(zip(report["names"], report["fitted"]))
    for parameter in defaults:
        assert PARAMETERS[parameter].default == pytest.approx(float(fitted[parameter]), rel=1e-4), parameter


def _final_summary(tmp_path, disease):
    out = tmp_path / f"{disease}.h5"
    assert main(["run", str(CONFIGS / f"{disease}.toml"), "-o", str(out), "-q"]) == 0
    with RunFile.open(out) as f:
        summary = {k: np.asarray(v) for k, v in f.summary.items()}
        time = np.asarray(f.time)
    # stationary: the last value within 1% of the value four days before
    before = int(np.argmin(np.abs(time - (time[-1] - 96.0))))
    for name in ("synovial_fluid_tnf", "synovial_fluid_il1", "synovial_fluid_leukocytes"):
        assert summary[name][-1] == pytest.approx(summary[name][before], rel=0.01), name
    return {k: float(v[-1]) for k, v in summary.items()}


@pytest.mark.slow
def test_ra_preset_lands_in_the_clinical_ranges(tmp_path):
    s = _final_summary(tmp_path, "ra")
    assert 7000 <= s["synovial_fluid_leukocytes"] <= 25000  # Kokebie et al. 2011
    assert 130 - 22 <= s["synovial_fluid_il1"] <= 130 + 22  # Westacott et al. 1990, 130 +- 22 pg/mL
    assert 10 <= s["synovial_fluid_tnf"] <= 400  # docs/model.md: of order 10-400 pg/mL


@pytest.mark.slow
def test_oa_preset_lands_in_the_clinical_ranges(tmp_path):
    s = _final_summary(tmp_path, "oa")
    assert s["synovial_fluid_leukocytes"] < 2000  # Kokebie et al. 2011
    assert 0 < s["synovial_fluid_tnf"] <= 13  # Sohn et al. 2012: median 2.9, IQR 0-13 pg/mL
    assert 1.0 <= s["synovial_fluid_il1"] <= 1.7  # Sohn et al. 2012: median 1.1, IQR 1.0-1.7 pg/mL
    # a low-grade state that persists (not an acute response resolving towards zero), with the
    # damaged matrix neither healing nor eroding over the run
    assert s["synovial_fluid_leukocytes"] > 200
    assert s["cartilage_integrity"] == pytest.approx(0.6, abs=0.05)


def test_calibration_figure_draws_log_normal_intervals(tmp_path):
    """The calibration fits compare log-concentrations: their data intervals are value x exp(-+sigma/value),
    positive even where sigma exceeds the value (OA TNF: 3.5 +- 7.8 pg/mL)."""
    from matplotlib.collections import LineCollection

    from inference import read_report
    from inference._plot import error_bars, fit_figure, plot_fit

    assert np.allclose(error_bars([100.0], [10.0], True), [[100 - 100 * np.exp(-0.1)], [100 * np.exp(0.1) - 100]])
    assert np.allclose(error_bars([100.0], [10.0], False), [[10.0], [10.0]])
    report = read_report(CALIBRATION / "oa_fit.h5")
    fig = fit_figure(report)
    bars = [c for ax in fig.axes for c in ax.collections if isinstance(c, LineCollection) and c.get_segments()]
    lows = [min(seg[:, 1].min() for seg in c.get_segments()) for c in bars]
    assert len(lows) == 3 and min(lows) > 0, lows  # white cells, TNF, IL-1
    tnf = np.asarray(report["observations"]["species"]) == "tnf"
    assert np.any(np.asarray(report["observations"]["sigma"])[tnf] > np.asarray(report["observations"]["value"])[tnf])
    assert [p.name for p in plot_fit(CALIBRATION / "oa_fit.h5", tmp_path)] == ["oa_fit.png"]
