"""Therapies as a clinic gives them: plasma pharmacokinetics, joint delivery, reversible binding,
IL-1 receptor blockade, the drug catalogue's schedules and its published levels."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp
from scipy.linalg import expm

from fields import Grid, Tissue
from solver import ConfigError, build_scenario, get_solver, load_config
from solver.physics import DRUGS, dose_times, plasma_concentration, reactions
from solver.physics._rhs import binding_pair, il1_signal
from tests.helpers import TRANSPORT_ONLY, setup, uniform_labels


def _params(**values):
    """Default parameters with these drug values, float64."""
    from solver import default_params

    return default_params(jnp.float64, **values)


def _plasma(params, route, times, t):
    """The plasma level at the (float64) times ``t``, computed in float64."""
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    return np.asarray(jax.vmap(lambda s: plasma_concentration(params, route, times, s))(jnp.asarray(t, jnp.float64)))


# --- the plasma compartment -------------------------------------------------------------------


@pytest.mark.parametrize(
    "route, values",
    [
        ("sc", dict(drug_absorption=0.03, drug_elimination=0.007, drug_bioavailability=0.6, drug_volume=12.0)),
        ("sc", dict(drug_absorption=0.05, drug_elimination=0.05, drug_bioavailability=0.9, drug_volume=8.0)),  # k_a = k_e
        ("sc", dict(drug_absorption=0.14, drug_elimination=0.64, drug_bioavailability=0.95, drug_volume=9.5)),  # flip-flop
        ("iv", dict(drug_elimination=0.0034, drug_volume=3.0, drug_infusion=2.0)),
    ],
)
def test_plasma_closed_form_is_the_depot_and_plasma_equations(route, values):
    """Against the ODEs (depot -> plasma, or a zero-order infusion) integrated by scipy with every dose
    start and infusion end as a breakpoint: agreement to 1e-8 relative, and each dose's whole amount
    (F x D) reaches the plasma: the integral of CL C_p over all time is F D per dose."""
    p = _params(drug_dose=100.0, **values)
    times = (0.0, 30.0, 31.0, 200.0)
    k_a, k_e, f, v = (
        float(getattr(p, n)) for n in ("drug_absorption", "drug_elimination", "drug_bioavailability", "drug_volume")
    )
    t_inf = float(p.drug_infusion)

    def rates(t, y):
        depot, plasma = y
        if route == "sc":
            return [-k_a * depot, k_a * depot - k_e * plasma]
        infusing = sum(1 for tau in times if tau <= t < tau + t_inf)
        return [0.0, infusing * 100.0 / t_inf - k_e * plasma]

    edges = sorted({0.0, 400.0, *times, *(tau + t_inf for tau in times)})
    y, t_grid, c_ode = [0.0, 0.0], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if route == "sc" and a in times:
            y[0] += f * 100.0 * times.count(a)
        sol = solve_ivp(rates, (a, b), y, rtol=1e-12, atol=1e-14, dense_output=True)
        ts = np.linspace(a, b, 20)[1:]
        t_grid += list(ts)
        c_ode += list(sol.sol(ts)[1] / v)
        y = list(sol.y[:, -1])
    c = _plasma(p, route, times, np.array(t_grid))
    assert np.max(np.abs(c - c_ode)) < 1e-8 * np.max(c_ode)

    amount = f if route == "sc" else 1.0
    breaks = [tau + d for tau in times for d in (0.0, t_inf)]
    horizon = times[-1] + 40.0 / min(k_e, k_a if route == "sc" else k_e)
    cleared = quad(lambda t: float(_plasma(p, route, times, np.array([t]))[0]), 0.0, horizon, points=breaks, limit=500)[0]
    assert cleared * k_e * v == pytest.approx(amount * 100.0 * len(times), rel=1e-8)


def test_dose_times_follow_the_label_schedules():
    assert dose_times(24.0, (), 168.0, 24.0 + 3 * 168.0) == (24.0, 192.0, 360.0, 528.0)
    # infliximab: weeks 0, 2 and 6, then every 8 weeks
    assert dose_times(0.0, (0.0, 336.0, 1008.0), 1344.0, 3000.0) == (0.0, 336.0, 1008.0, 2352.0)
    assert dose_times(100.0, (), 24.0, 50.0) == ()


def _steady_levels(name: str):
    config = load_config(None, ["drug.enabled=true", f"drug.name={name}", "drug.first_dose_h=0", "run.t_end_h=4032"])
    sc = build_scenario(config)
    times = sc.options.dose_times
    t = np.arange(0.0, 4032.0, 0.25)
    return config, times, t, _plasma(sc.params, sc.options.drug_route, times, t)


def test_each_drug_reaches_its_published_plasma_levels():
    """Against the values its label or population pharmacokinetics report (docs/model.md, "Drugs")."""
    # etanercept 50 mg weekly: steady-state Cmax 2.4 +- 1.5 ug/mL
    _, times, t, c = _steady_levels("etanercept")
    last = (t >= times[-2]) & (t < times[-1])
    assert 0.9 <= c[last].max() <= 3.9
    # adalimumab 40 mg every other week: steady-state trough 4-8 ug/mL (Humira label)
    _, times, t, c = _steady_levels("adalimumab")
    assert 4.0 <= c[np.searchsorted(t, times[-1]) - 1] <= 8.0
    # infliximab 3 mg/kg: median Cmax 77 ug/mL after a dose (label; within 20%); trough 8 weeks after the
    # week-6 dose within the range of responders' and non-responders' medians (0.5-3.6 ug/mL, Wolbink 2005)
    _, times, t, c = _steady_levels("infliximab")
    first = t < times[1]
    assert 0.8 * 77 <= c[first].max() <= 1.2 * 77
    assert 0.5 <= c[np.searchsorted(t, times[2] + 1344.0) - 1] <= 3.6
    # anakinra 100 mg daily: Tmax 3-7 h (Kineret label); the average level is F D / (CL tau) (closed form)
    config, times, t, c = _steady_levels("anakinra")
    assert 3.0 <= t[np.argmax(c[t < 24.0])] <= 7.0
    sc = build_scenario(config)
    p = sc.params
    clearance = float(p.drug_elimination * p.drug_volume)
    last = (t >= times[-2]) & (t < times[-1])
    assert c[last].mean() == pytest.approx(float(p.drug_bioavailability) * 100.0 / (clearance * 24.0), rel=1e-3)


# --- the drug catalogue in configs --------------------------------------------------------------


def test_a_drug_name_sets_its_schedule_and_parameters_and_any_key_can_be_changed():
    ada = load_config(None, ["drug.enabled=true", "drug.name=adalimumab"])
    assert (ada.drug.route, ada.drug.dose, ada.drug.interval_h) == ("sc", 40.0, 336.0)
    assert ada.parameters["drug_volume"] == pytest.approx(DRUGS["adalimumab"].parameters["drug_volume"])
    ifx = load_config(None, ["drug.enabled=true", "drug.name=infliximab", "drug.body_weight_kg=80"])
    assert (ifx.drug.route, ifx.drug.dose, ifx.drug.loading_h) == ("iv", 240.0, (0.0, 336.0, 1008.0))
    changed = load_config(None, ["drug.name=etanercept", "drug.dose_mg=25", "parameters.drug_elimination=0.01"])
    assert (changed.drug.dose, changed.parameters["drug_elimination"]) == (25.0, 0.01)
    assert not load_config(None, ["drug.enabled=true", "drug.name=none"]).drug.enabled
    anakinra = load_config(None, ["drug.name=anakinra"])
    assert anakinra.parameters["drug_tnf_binding"] == 0.0  # an IL-1 receptor antagonist binds no TNF
    assert anakinra.tissues["synovial_fluid"]["diffusivity_drug"] == anakinra.tissues["synovial_fluid"]["diffusivity_il1"]
    with pytest.raises(ConfigError, match="drug.name.*allowed values are etanercept, adalimumab, infliximab, anakinra, none"):
        load_config(None, ["drug.name=aspirin"])
    with pytest.raises(ConfigError, match="unknown config key 'drug.dose'.*dose_mg"):
        load_config(None, ["drug.dose=2.0"])


# --- delivery into the joint --------------------------------------------------------------------


@pytest.mark.parametrize(
    "stepper, route",
    [("ssp_rk3", "sc"), ("ssp_rk3", "iv"), ("strang_ssp_rk3", "iv"), ("strang_rkl2", "sc"), ("ssp_rk2", "iv")],
)
def test_the_synovium_takes_up_the_plasma_drug_at_the_stepper_order(stepper, route):
    """A box of synovium with no other process: dA/dt = k_v C_p(t) - (k_v + k_A) A, whose solution is
    the convolution of the plasma level (quadrature). No dose event is a discontinuity of the joint's
    equations (the plasma level is continuous for both routes), so every stepper reaches it at its
    order: within 2e-5 at 0.05 h steps, and 4x-9x closer at 0.025 h."""
    grid = Grid((4, 4), (0.5, 0.5))
    values = dict(TRANSPORT_ONLY, drug_vascular_exchange=0.12, drug_clearance=0.08, drug_dose=50.0, drug_infusion=2.0)
    values.update(drug_absorption=0.3, drug_elimination=0.05, drug_bioavailability=0.8, drug_volume=5.0)
    options, params, domain, state = setup(grid, uniform_labels(grid.shape, Tissue.SYNOVIUM), {}, drug=True, **values)
    options = options.__class__(grid=grid, drug=True, drug_route=route, dose_times=(0.7, 5.3))
    k = 0.12 + 0.08
    t_end = 12.0

    def exact(t):
        breaks = [0.7, 2.7, 5.3, 7.3]
        f = lambda s: 0.12 * math.exp(-k * (t - s)) * float(_plasma(params, route, (0.7, 5.3), np.array([s]))[0])  # noqa: E731
        return quad(f, 0.0, t, points=[b for b in breaks if b < t], limit=200)[0]

    reference = exact(t_end)
    errors = []
    for n in (240, 480):
        limits_stages = 2 if stepper == "strang_rkl2" else 0
        solver = get_solver(options, stepper, n, limits_stages)
        y = solver.advance(state, 0.0, t_end / n, params, domain)
        errors.append(abs(float(jnp.mean(y.drug)) - reference) / reference)
    assert errors[0] < 2e-5 and errors[1] < errors[0] / 3.5, errors


# --- reversible binding and IL-1 receptor blockade ------------------------------------------------


def test_the_binding_pair_is_the_matrix_exponential_and_stays_positive():
    for a, b, c, d, tau in [
        (30.0, 28.0, 0.03, 0.2, 0.1),
        (2.25, 0.0, 0.0, 0.2, 0.5),
        (1.0, 0.5, 0.5, 1.0, 0.3),
        (5, 4, 1e-9, 1, 2),
    ]:
        m = np.array([[-a, c], [b, -d]])
        for y0 in ([1.0, 0.0], [0.0, 1.0], [3.0, 7.0]):
            got = np.array(binding_pair(y0[0], y0[1], a, b, c, d, tau), float)
            assert np.allclose(got, expm(m * tau) @ np.array(y0), rtol=1e-12, atol=1e-14)
            assert np.all(got >= 0)


@pytest.mark.parametrize("stepper", ["ssp_rk3", "strang_ssp_rk3"])
def test_reversible_binding_conserves_tnf_and_reaches_its_equilibrium(stepper):
    """Fluid with drug held constant, no decay: TNF + complex is conserved, and the free share tends to
    k_off / (k_off + k_on A)."""
    grid = Grid((4, 4), (0.5, 0.5))
    values = dict(TRANSPORT_ONLY, drug_tnf_binding=20.0, drug_tnf_unbinding=5.0, drug_per_tnf_bound=0.0)
    init = {"tnf": np.full(grid.shape, 60.0), "drug": np.full(grid.shape, 0.5)}
    options, params, domain, state = setup(grid, uniform_labels(grid.shape), init, drug=True, **values)
    solver = get_solver(options, stepper, 200, 0)
    y = solver.advance(state, 0.0, 0.005 if stepper == "ssp_rk3" else 0.02, params, domain)
    total = float(jnp.mean(y.tnf + y.complex))
    assert total == pytest.approx(60.0, rel=1e-12)
    assert float(jnp.mean(y.tnf)) / total == pytest.approx(5.0 / (5.0 + 20.0 * 0.5), rel=1e-6)


def test_an_il1_receptor_antagonist_leaves_the_share_1_over_1_plus_a_over_kb_of_il1_signalling():
    """In every term where IL-1 acts, A = K_B halves IL-1: the same derivatives as half the IL-1 without it."""
    grid = Grid((4, 6), (0.5, 0.5))
    labels = uniform_labels(grid.shape, Tissue.SYNOVIUM)
    labels[:, :2] = int(Tissue.SYNOVIAL_FLUID)
    labels[:, -1] = int(Tissue.CARTILAGE)
    k_b = DRUGS["anakinra"].parameters["drug_il1_block"]
    base = {"tnf": np.full(grid.shape, 30.0), "leukocytes": np.full(grid.shape, 5000.0), "cartilage": np.full(grid.shape, 0.8)}
    opts, params, domain, blocked = setup(
        grid, labels, {**base, "il1": np.full(grid.shape, 100.0), "drug": np.full(grid.shape, k_b)}
    )
    _, _, _, halved = setup(grid, labels, {**base, "il1": np.full(grid.shape, 50.0)})
    on = opts.__class__(grid=grid, drug=True, drug_target="il1_receptor")
    params = params._replace(
        drug_il1_block=jnp.asarray(k_b), drug_vascular_exchange=jnp.asarray(0.0), drug_clearance=jnp.asarray(0.0)
    )
    assert float(il1_signal(jnp.asarray(k_b), params, on)) == pytest.approx(0.5)
    with_drug = reactions(blocked, 1.0, params, domain, on)
    without = reactions(halved, 1.0, params, domain, opts)
    for name in ("tnf", "leukocytes", "cartilage"):
        assert np.allclose(getattr(with_drug, name), getattr(without, name), rtol=1e-12, atol=0), name
    assert float(jnp.max(jnp.abs(with_drug.leukocytes))) > 0 and float(jnp.max(jnp.abs(with_drug.cartilage))) > 0


# --- fitting a patient's drug levels ----------------------------------------------------------------


# ~20 s (a fit): runs with the slow validation
@pytest.mark.slow
def test_a_fit_recovers_pharmacokinetics_from_plasma_levels():
    """Plasma adalimumab levels over two doses (kind "plasma", 3% noise; a 2x2 box of synovium for the
    joint): a fit frees k_e and V and lands within 3 standard errors of the label values."""
    import inference

    config = load_config(
        None,
        ["drug.enabled=true", "drug.name=adalimumab", "drug.first_dose_h=0", "run.t_end_h=672", "run.output_interval_h=168",
         "geometry.kind='box'", "geometry.size_mm=[1.0, 1.0]", "geometry.spacing_mm=0.5", "geometry.tissue='synovium'",
         "injury.enabled=false", "initial.start='baseline'", "run.precision='float64'", "run.stepper='strang_ssp_rk3'"],
    )  # fmt: skip
    sc = build_scenario(config)
    truth = {"drug_elimination": float(sc.params.drug_elimination), "drug_volume": float(sc.params.drug_volume)}
    times = np.array([24.0, 96.0, 168.0, 240.0, 336.0, 400.0, 504.0, 600.0, 672.0])
    level = _plasma(sc.params, "sc", sc.options.dose_times, times)
    rng = np.random.default_rng(3)
    rows = [
        {"time_h": t, "species": "drug", "kind": "plasma", "where": "", "value": v * (1 + 0.03 * rng.normal()), "sigma": 0.03 * v}
        for t, v in zip(times, level)
    ]
    obs = inference.make_observations(rows)
    result = inference.fit(
        config,
        obs,
        {
            "drug_elimination": {"lower": 1e-4, "upper": 0.05, "initial": 0.004},
            "drug_volume": {"lower": 1.0, "upper": 30.0, "initial": 10.0},
        },
        max_iterations=60,
    )
    for name, value in truth.items():
        assert abs(result.parameters[name] - value) < 3 * result.stderr[name], (name, result.parameters[name], value)


# --- therapies compared in rheumatoid arthritis ------------------------------------------------------


@pytest.mark.slow  # 5 runs of 102 days at 0.5 mm: ~1 minute on 2 cores
def test_blocking_tnf_lowers_il1_white_cells_and_cartilage_loss_more_than_blocking_il1(tmp_path):
    """configs/sweep_therapies.toml at 0.5 mm: after 12 weeks from the RA joint, each anti-TNF at its
    label schedule lowers fluid TNF, IL-1 and white cells by > 85% and slows cartilage loss; anakinra
    lowers IL-1 and white cells too, but less than every anti-TNF; TNF-drug complexes accumulate."""
    import subprocess
    import sys
    import tomllib

    import h5py

    out = tmp_path / "study"
    subprocess.run(
        [sys.executable, "-m", "solver.cli", "sweep", "configs/sweep_therapies.toml", "-o", str(out), "--set",
         "geometry.spacing_mm=0.5", "--jobs", "2", "-q"],
        check=True,
    )  # fmt: skip
    final, lost = {}, {}
    for path in sorted((out / "runs").glob("point_*.h5")):
        with h5py.File(path, "r") as f:
            name = tomllib.loads(f.attrs["config_toml"])["drug"]["name"]
            s = {k: f["summary"][k][: len(f["time"])] for k in f["summary"].attrs["names"]}
            start = int(np.searchsorted(f["time"][:], 432.0))
            final[name] = {k: float(v[-1]) for k, v in s.items()}
            lost[name] = float(s["cartilage_integrity"][start] - s["cartilage_integrity"][-1])
            if name == "adalimumab":
                assert final[name]["synovial_fluid_complex"] > 10 * final[name]["synovial_fluid_tnf"]
    untreated = final["none"]
    for drug in ("etanercept", "adalimumab", "infliximab"):
        for key in ("synovial_fluid_tnf", "synovial_fluid_il1", "synovial_fluid_leukocytes"):
            assert final[drug][key] < 0.15 * untreated[key], (drug, key, final[drug][key], untreated[key])
            assert final[drug][key] < final["anakinra"][key], (drug, key)
        assert lost[drug] < 0.5 * lost["none"], (drug, lost)
    for key in ("synovial_fluid_il1", "synovial_fluid_leukocytes"):
        assert final["anakinra"][key] < 0.8 * untreated[key], key


@pytest.mark.slow  # a 0.5 mm joint for 8 weeks per evaluation: ~45 s on 2 cores
def test_the_shipped_plasma_fit_recovers_the_patient_and_draws_the_model(tmp_path):
    """`synovia fit configs/fit_plasma.toml`: synthetic levels made with k_e 0.0027 /h and V 7.0 L
    (configs/data/adalimumab_plasma.csv) are fitted back within 3 standard errors from the label's
    values, and the figure and report hold the fitted plasma curve."""
    import subprocess
    import sys

    from inference import read_report

    out = tmp_path / "fit.h5"
    subprocess.run([sys.executable, "-m", "solver.cli", "fit", "configs/fit_plasma.toml", "-o", str(out), "-q"], check=True)
    report = read_report(out)
    fitted = dict(zip(report["names"], report["fitted"]))
    stderr = dict(zip(report["names"], report["stderr"]))
    for name, truth in (("drug_elimination", 0.0027), ("drug_volume", 7.0)):
        assert abs(fitted[name] - truth) < 3 * stderr[name], (name, fitted[name], stderr[name])
    curve = report["model_plasma"]
    assert float(np.max(curve["drug"])) > 3.0 and (tmp_path / "fit.png").is_file()
