"""PEtab tables as fit input (inference._petab): the same observations, parameters and loss as synovia's
CSV and [parameters] tables; bad tables refused with the file, row, value and what is allowed."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("petab")

import inference  # noqa: E402
from inference._config import load_fit_config  # noqa: E402
from inference._petab import read_petab, summary_of  # noqa: E402
from solver.cli import main  # noqa: E402
from tests.inference.test_fit_cli import SCENARIO as FIT_CLI_SCENARIO  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# the fit command tests' small knee, its observations ending at 6 h
SCENARIO = FIT_CLI_SCENARIO.replace("t_end_h = 8.0", "t_end_h = 6.0")

CSV = textwrap.dedent(
    """\
    time_h,species,kind,where,value,sigma
    2,tnf,fluid,,30.0,{s1}
    4,tnf,fluid,,20.0,{s2}
    4,leukocytes,synovium,,400.0,{s3}
    6,il1,box,18:32 10:34,5.0,{s4}
    """
).replace("leukocytes,synovium,", "leukocytes,tissue,synovium")

MEASUREMENTS = textwrap.dedent(
    """\
    observableId\tsimulationConditionId\ttime\tmeasurement\tnoiseParameters
    fluid_tnf\tc0\t2\t30.0\t{n1}
    fluid_tnf\tc0\t4\t20.0\t{n2}
    leuko_syn\tc0\t4\t400.0\t{n3}
    box1_il1\tc0\t6\t5.0\t{n4}
    """
)

OBSERVABLES = textwrap.dedent(
    """\
    observableId\tobservableFormula\tnoiseFormula\tobservableTransformation\tnoiseDistribution
    fluid_tnf\tfluid_tnf\tnoiseParameter1_fluid_tnf\t{t}\tnormal
    leuko_syn\tsynovium_leukocytes\tnoiseParameter1_leuko_syn\t{t}\tnormal
    box1_il1\tbox1_il1\tnoiseParameter1_box1_il1\t{t}\tnormal
    """
)

PARAMETERS = textwrap.dedent(
    """\
    parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\tobjectivePriorType\tobjectivePriorParameters
    tnf_per_leukocyte\tlog10\t1e-4\t0.1\t0.02\t1\tparameterScaleNormal\t-2;0.5
    recruitment_rate\tlin\t10\t1000\t100\t1\tuniform\t10;1000
    diffusivity_tnf_synovium\tlog\t0.001\t0.1\t0.02\t1\tlogNormal\t-4;1
    leukocyte_death\tlog\t0.001\t1\t0.05\t0\t\t
    """
)

CSV_FIT = textwrap.dedent(
    """\
    scenario = "scenario_fixed.toml"
    observations = "data.csv"
    [fit]
    log_residuals = {log}
    [parameters.tnf_per_leukocyte]
    lower = 1e-4
    upper = 0.1
    initial = 0.02
    prior = [0.01, 3.1622776601683795]
    [parameters.recruitment_rate]
    lower = 10.0
    upper = 1000.0
    initial = 100.0
    [parameters."diffusivity_tnf.synovium"]
    lower = 0.001
    upper = 0.1
    initial = 0.02
    prior = [0.018315638888734179, 2.718281828459045]
    """
)

PETAB_FIT = textwrap.dedent(
    """\
    scenario = "scenario.toml"
    [observations.petab]
    measurements = "m.tsv"
    observables = "o.tsv"
    parameters = "p.tsv"
    observable_kinds.box1_il1 = {species = "il1", kind = "box", where = "18:32 10:34"}
    """
)

SIGMA = (3.0, 2.0, 40.0, 0.5)


def _write(folder: Path, transformation: str) -> None:
    """The same data twice: a synovia CSV fit config and a PEtab one (log: noise on the log scale)."""
    folder.mkdir(exist_ok=True)
    (folder / "scenario.toml").write_text(SCENARIO)
    (folder / "scenario_fixed.toml").write_text(SCENARIO + "\n[parameters]\nleukocyte_death = 0.05\n")
    values = (30.0, 20.0, 400.0, 5.0)
    if transformation == "lin":
        noise, sigma = SIGMA, SIGMA
    else:  # PEtab's noise is the log-scale sd; synovia's sigma is that times the value (plus its small floor)
        noise = (0.1, 0.2, 0.3, 0.4)
        factor = math.log(10) if transformation == "log10" else 1.0
        e = 1e-6 * max(values)
        sigma = tuple(n * factor * (v + e) for n, v in zip(noise, values))
    (folder / "data.csv").write_text(CSV.format(**{f"s{i + 1}": repr(s) for i, s in enumerate(sigma)}))
    (folder / "m.tsv").write_text(MEASUREMENTS.format(**{f"n{i + 1}": repr(n) for i, n in enumerate(noise)}))
    (folder / "o.tsv").write_text(OBSERVABLES.format(t=transformation))
    (folder / "p.tsv").write_text(PARAMETERS)
    (folder / "csv_fit.toml").write_text(CSV_FIT.format(log=str(transformation != "lin").lower()))
    (folder / "petab_fit.toml").write_text(PETAB_FIT)


def _problem(fc) -> inference.Problem:
    return inference.Problem(fc.scenario, fc.observations, {p.name: p for p in fc.parameters}, log_residuals=fc.fit.log_residuals)


@pytest.mark.parametrize("transformation", ["lin", "log10"])
def test_petab_tables_give_the_csv_problem_and_loss(transformation, tmp_path):
    _write(tmp_path, transformation)
    csv, tables = load_fit_config(tmp_path / "csv_fit.toml"), load_fit_config(tmp_path / "petab_fit.toml")
    a, b = csv.observations, tables.observations
    assert (a.species, a.kind, a.where) == (b.species, b.kind, b.where)
    np.testing.assert_array_equal(a.time_h, b.time_h)
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-14)
    assert tables.fit.log_residuals is (transformation != "lin")
    assert tables.scenario.parameters["leukocyte_death"] == 0.05  # estimate = 0: fixed at nominalValue
    assert [p.name for p in tables.parameters] == [p.name for p in csv.parameters]
    for p, q in zip(tables.parameters, csv.parameters):
        assert (p.lower, p.upper, p.initial) == (q.lower, q.upper, q.initial)
        assert (p.prior is None and q.prior is None) or np.allclose(p.prior, q.prior, rtol=1e-14), (p, q)
    pa, pb = _problem(csv), _problem(tables)
    u = pa.u0 + 0.1
    assert float(pb.loss(u)) == pytest.approx(float(pa.loss(u)), rel=1e-12)
    assert float(pb.loss(u)) > 0


def test_the_shipped_petab_preset_is_fit_synthetic_without_its_map():
    petab, synthetic = load_fit_config(CONFIGS / "fit_petab.toml"), load_fit_config(CONFIGS / "fit_synthetic.toml")
    a, b = petab.observations, synthetic.observations
    assert len(a) == len(b) == 36 and b.maps and not a.maps
    assert (a.species, a.kind, a.where) == (b.species, b.kind, b.where)
    for column in ("time_h", "value", "sigma"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    assert petab.scenario.to_toml() == synthetic.scenario.to_toml()
    assert petab.fit.log_residuals is False and petab.fit.max_iterations == synthetic.fit.max_iterations
    literature = inference.LITERATURE_PRIORS["chemotaxis"][:2]
    for p, q in zip(petab.parameters, synthetic.parameters, strict=True):
        assert (p.name, p.lower, p.upper, p.initial) == (q.name, q.lower, q.upper, q.initial)
        assert (p.prior is None) == (q.prior is None)
    assert np.allclose(petab.parameters[-1].prior, literature, rtol=1e-14)


def test_written_tables_read_back(tmp_path):
    rows = [
        {"time_h": 2.0, "species": "tnf", "kind": "fluid", "where": "", "value": 3.5, "sigma": 0.2},
        {"time_h": 5.5, "species": "leukocytes", "kind": "tissue", "where": "synovium", "value": 120.0, "sigma": 10.0},
        {"time_h": 4.0, "species": "il1", "kind": "point", "where": "1.0 2.0", "value": 0.3, "sigma": 0.05},
        {"time_h": 6.0, "species": "tnf", "kind": "box", "where": "0:5 0:8", "value": 1.0, "sigma": 0.1},
        {"time_h": 48.0, "species": "drug", "kind": "plasma", "where": "", "value": 1.4, "sigma": 0.07},
    ]
    obs = inference.make_observations(rows)
    params = [
        inference.FitParameter("chemotaxis", 1e-3, 0.2, 0.1, (0.05, 3.0)),
        inference.FitParameter("diffusivity_il1.capsule", 1e-3, 1.0, 0.03),
    ]
    kinds = inference.write_petab(obs, tmp_path / "m.tsv", tmp_path / "o.tsv", params, tmp_path / "p.tsv")
    assert kinds == {
        "point1_il1": {"species": "il1", "kind": "point", "where": "1.0 2.0"},
        "box1_tnf": {"species": "tnf", "kind": "box", "where": "0:5 0:8"},
    }
    back = read_petab(tmp_path / "m.tsv", tmp_path / "o.tsv", tmp_path / "p.tsv", kinds)
    for column in ("species", "kind", "where"):
        assert getattr(back.observations, column) == getattr(obs, column)
    for column in ("time_h", "value", "sigma"):
        np.testing.assert_array_equal(getattr(back.observations, column), getattr(obs, column))
    assert back.log_residuals is False and back.fixed == {}
    # PEtab v1 has no censoring column: a value below a detection limit is not written as a measurement
    censored = inference.make_observations([dict(r, censored="below" if i == 0 else "") for i, r in enumerate(rows)])
    with pytest.raises(inference.ObservationError, match="no column for values below a detection limit"):
        inference.write_petab(censored, tmp_path / "c.tsv", tmp_path / "co.tsv")
    assert [p.name for p in back.parameters] == ["chemotaxis", "diffusivity_il1.capsule"]
    assert np.allclose(back.parameters[0].prior, (0.05, 3.0), rtol=1e-14) and back.parameters[1].prior is None
    # without an observable table the observableIds name the summaries; points and boxes need observable_kinds
    only = read_petab(tmp_path / "m.tsv", observable_kinds=kinds)
    assert only.log_residuals is None and only.observations.kind == obs.kind


def test_summary_symbols():
    assert summary_of("fluid_tnf") == ("tnf", "fluid", "")
    assert summary_of("synovial_fluid_il1") == ("il1", "tissue", "synovial_fluid")
    assert summary_of("plasma_drug") == ("drug", "plasma", "")
    assert summary_of("plasma_tnf") is None and summary_of("knee_tnf") is None and summary_of("fluid_x") is None


BAD = [
    ("m.tsv", "\tc0\t4\t", "\tc1\t4\t", "row 3: simulationConditionId = 'c1', row 2 has 'c0': synovia fits one scenario"),
    ("m.tsv", "fluid_tnf\tc0\t2\t30.0\t3.0", "fluid_tnf\tc0\t2\t30.0\tsd_tnf", "row 2: noiseParameters = 'sd_tnf'"),
    ("m.tsv", "fluid_tnf\tc0\t2\t30.0\t3.0", "fluid_tnf\tc0\t2\t30.0\t-3", "sigma must be a positive number"),
    ("m.tsv", "fluid_tnf\tc0\t2\t", "fluid_tnf\tc0\tinf\t", "time = inf must be a finite time"),
    ("m.tsv", "leuko_syn\tc0", "leuko_syx\tc0", "m.tsv'"),  # petab's lint: an observable the table lacks
    ("o.tsv", "\tsynovium_leukocytes\t", "\tsynovium_leukocytes * 2\t", "names no synovia summary"),
    ("o.tsv", "leuko_syn\t{t}\tnormal", "leuko_syn\t{t}\tlaplace", "noiseDistribution = 'laplace'"),
    ("o.tsv", "leuko_syn\t{t}\tnormal", "leuko_syn\tlog\tnormal", "observableTransformation mixes ['lin', 'log']"),
    ("p.tsv", "recruitment_rate\t", "recruitmnt_rate\t", "row 3 (recruitmnt_rate): parameterId 'recruitmnt_rate' is no synovia"),
    ("p.tsv", "\tlogNormal\t-4;1", "\tlaplace\t-4;1", "objectivePriorType = 'laplace'"),
    ("p.tsv", "\tuniform\t10;1000", "\tuniform\t20;1000", "differs from the bounds"),
    ("p.tsv", "0.1\t0.02\t1\tparameterScaleNormal", "0.1\t0.02\t2\tparameterScaleNormal", "p.tsv'"),  # lint: estimate 0/1
    ("petab_fit.toml", 'parameters = "p.tsv"', 'parameters = "p.tsv"\nmeasurement = "m.tsv"', "observations.petab.measurement"),
    ("petab_fit.toml", "[observations.petab]", "[fit]\nlog_residuals = true\n[observations.petab]", "contradicts"),
    ("petab_fit.toml", "observable_kinds.box1_il1", "observable_kinds.box2_il1", "names ['box2_il1'], which no observableId"),
]


@pytest.mark.parametrize("name, old, new, message", BAD, ids=[f"{b[0]}:{b[3][:28]}" for b in BAD])
def test_bad_tables_exit_2_with_one_line_naming_them(name, old, new, message, tmp_path, capsys):
    _write(tmp_path, "lin")
    path = tmp_path / name
    text = path.read_text()
    old, new = old.replace("{t}", "lin"), new.replace("{t}", "lin")
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    code = main(["fit", str(tmp_path / "petab_fit.toml"), "-o", str(tmp_path / "fit.h5"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "fit.h5").exists()


def test_a_missing_table_is_named(tmp_path, capsys):
    _write(tmp_path, "lin")
    (tmp_path / "o.tsv").unlink()
    assert main(["fit", str(tmp_path / "petab_fit.toml"), "-o", str(tmp_path / "fit.h5"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "PEtab observable table" in err and "o.tsv' does not exist" in err, err
