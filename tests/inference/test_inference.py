"""Inference: observations, the observation operator, gradients of the loss, fits that recover the truth."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inference
from fields import Tissue
from solver import load_config, summaries
from tests.helpers import assert_close

SMALL_2D = [
    "geometry.spacing_mm=0.75",
    "run.t_end_h=24",
    "run.output_interval_h=2",
    "run.precision='float64'",
]

#: The free parameters of the recovery tests: bounds and a start away from the truth.
RECOVER = {
    "tnf_per_leukocyte": {"lower": 1e-4, "upper": 0.1, "initial": 0.02},
    "recruitment_rate": {"lower": 10.0, "upper": 1000.0, "initial": 100.0},
    "injury_rate": {"lower": 10.0, "upper": 2000.0, "initial": 800.0},
    "chemotaxis": {"lower": 1e-3, "upper": 0.2, "initial": 0.1},
}
TRUTH = {"tnf_per_leukocyte": 0.01, "recruitment_rate": 200.0, "injury_rate": 500.0, "chemotaxis": 0.05}


@pytest.fixture(scope="module")
def small_config():
    return load_config("configs/knee2d.toml", SMALL_2D)


# ------------------------------------------------------------------------------------------
# Observation files and the observation operator
# ------------------------------------------------------------------------------------------


def _rows():
    return [
        {"time_h": 2.0, "species": "tnf", "kind": "fluid", "where": "", "value": 3.5, "sigma": 0.2},
        {"time_h": 5.5, "species": "leukocytes", "kind": "tissue", "where": "synovium", "value": 120.0, "sigma": 10.0},
        {"time_h": 4.0, "species": "il1", "kind": "point", "where": "1.0 2.0", "value": 0.3, "sigma": 0.05},
        {"time_h": 6.0, "species": "tnf", "kind": "box", "where": "0:5 0:8", "value": 1.0, "sigma": 0.1},
    ]


def test_observation_files_round_trip(tmp_path):
    value = np.full((4, 3), np.nan)
    value[1, 1] = 7.0
    maps = [inference.FieldMap("L_6h", 6.0, "leukocytes", value, np.full((4, 3), 0.5))]
    obs = inference.make_observations(_rows(), maps, {"note": "test"})
    inference.save_observations(obs, tmp_path / "o.h5")
    back = inference.load_observations(tmp_path / "o.h5")
    assert back.species == obs.species and back.kind == obs.kind and back.where == obs.where
    assert_close(back.value, obs.value, rtol=0)
    assert_close(back.sigma, obs.sigma, rtol=0)
    assert back.maps[0].name == "L_6h" and back.maps[0].time_h == 6.0
    assert_close(back.maps[0].value, value, rtol=0)
    assert back.count == 5 and back.attrs["note"] == "test"
    plain = inference.make_observations(_rows())
    inference.save_observations(plain, tmp_path / "o.csv")
    csv = inference.load_observations(tmp_path / "o.csv")
    assert csv.where == plain.where
    assert_close(csv.time_h, plain.time_h, rtol=0)
    assert_close(csv.value, plain.value, rtol=0)
    with pytest.raises(inference.ObservationError, match="CSV holds only scalar"):
        inference.save_observations(obs, tmp_path / "m.csv")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"species": "tnfa"}, "species 'tnfa' is not one of"),
        ({"sigma": 0.0}, "sigma = 0.0 must be a positive number"),
        ({"sigma": -1.0}, "sigma = -1.0 must be a positive number"),
        ({"time_h": -1.0}, "time_h = -1.0 must be a finite time"),
        ({"kind": "aspirate"}, "kind 'aspirate' is not one of"),
    ],
)
def test_bad_observation_rows(row, message):
    base = {"time_h": 1.0, "species": "tnf", "kind": "fluid", "where": "", "value": 1.0, "sigma": 1.0}
    with pytest.raises(inference.ObservationError, match=message):
        inference.make_observations([{**base, **row}])


def test_operator_means_match_the_solver_summaries_and_numpy(small_config):
    """At frame times the fluid rows equal the run's synovial-fluid summaries; tissue/point/box rows the numpy means."""
    rows = [
        {"time_h": t, "species": s, "kind": "fluid", "where": "", "value": 1.0, "sigma": 1.0}
        for t in (2.0, 8.0)
        for s in ("tnf", "il1", "leukocytes")
    ]
    rows += [
        {"time_h": 8.0, "species": "leukocytes", "kind": "tissue", "where": "synovium", "value": 1.0, "sigma": 1.0},
        {"time_h": 8.0, "species": "tnf", "kind": "point", "where": "25.1 2.3", "value": 1.0, "sigma": 1.0},
        {"time_h": 8.0, "species": "leukocytes", "kind": "box", "where": "20:30 0:6", "value": 1.0, "sigma": 1.0},
    ]
    obs = inference.make_observations(rows)
    problem = inference.Problem(small_config, obs, ["recruitment_rate"])
    frames = problem.frames(problem.scenario.params)
    pred = np.asarray(problem.operator.predict(frames))
    domain, options = problem.scenario.domain, problem.scenario.options
    for i, r in enumerate(rows[:6]):
        k = round(r["time_h"] / problem.scenario.interval)
        state = jax.tree.map(lambda a, k=k: a[k], frames)
        expected = summaries(state, domain, options)[f"synovial_fluid_{r['species']}"]
        assert_close(pred[i], expected, rtol=1e-12, what=f"row {i}")
    geometry = problem.scenario.geometry
    labels = np.asarray(geometry.labels)
    grid = geometry.grid
    leuk = np.asarray(frames.leukocytes[4])
    assert_close(pred[6], leuk[labels == Tissue.SYNOVIUM].mean(), rtol=1e-12)
    i, j = int(25.1 // grid.spacing[0]), int(2.3 // grid.spacing[1])
    assert_close(pred[7], np.asarray(frames.tnf[4])[i, j], rtol=1e-12)
    zc, yc = grid.axis_centres(0), grid.axis_centres(1)
    inside = ((zc >= 20) & (zc <= 30))[:, None] & ((yc >= 0) & (yc <= 6))[None, :]
    lives = np.isin(labels, [Tissue.SYNOVIAL_FLUID, Tissue.SYNOVIUM, Tissue.CAPSULE])
    assert_close(pred[8], leuk[inside & lives].mean(), rtol=1e-12)


def _predict_one(overrides, row) -> float:
    config = load_config("configs/knee2d.toml", [*SMALL_2D, *overrides])
    problem = inference.Problem(config, inference.make_observations([row]), ["recruitment_rate"])
    return float(problem.predict_params(problem.scenario.params)[0])


def test_values_between_frames_converge_at_second_order():
    """Linear interpolation in time: the error at t = 5 h against a frame at 5 h falls with the interval squared.

    Same step (dt = 0.05 h) in every run, so only the interpolation differs. At t = 5 h the
    offset into the frame is a = 1/4 of 4 h and 1/2 of 2 h; the error ~ a(1 - a) interval^2 u''/2
    so the ratio should be about (3/16 * 16) / (1/4 * 4) = 3.
    """
    row = {"time_h": 5.0, "species": "tnf", "kind": "fluid", "where": "", "value": 1.0, "sigma": 1.0}
    exact = _predict_one(["run.output_interval_h=1", "run.dt_h=0.05"], row)
    errors = [
        abs(_predict_one([f"run.output_interval_h={dt}", "run.t_end_h=8", "run.dt_h=0.05"], row) - exact) for dt in (4.0, 2.0)
    ]
    assert 2.0 < errors[0] / errors[1] < 4.5, errors
    assert errors[1] / exact < 0.05, errors


def test_operator_errors(small_config):
    base = {"time_h": 1.0, "species": "tnf", "kind": "fluid", "where": "", "value": 1.0, "sigma": 1.0}
    cases = [
        ({"time_h": 30.0}, "outside the run"),
        ({"species": "drug"}, "not simulated in this run"),
        ({"kind": "tissue", "where": "meniscus"}, "is not a tissue"),
        ({"kind": "point", "where": "500 1"}, "outside the grid"),
        ({"kind": "box", "where": "0:1"}, "needs 2 entries"),
        ({"species": "leukocytes", "kind": "tissue", "where": "cartilage"}, "holds leukocytes"),
    ]
    for change, message in cases:
        with pytest.raises(inference.ObservationError, match=message):
            inference.Problem(small_config, inference.make_observations([{**base, **change}]), ["recruitment_rate"])


# ------------------------------------------------------------------------------------------
# Parameters, transforms, priors
# ------------------------------------------------------------------------------------------


def test_transforms_round_trip_and_keep_bounds():
    t = inference.Problem.__init__  # noqa: F841 (import check)
    from inference._problem import Transform

    tr = Transform(
        np.array([0.0, 0.0, 1e-3, 2.0]), np.array([np.inf, 5.0, 1.0, np.inf]), ("log", "bounded", "log-bounded", "shifted-log")
    )
    theta = np.array([[0.3, 2.5, 0.01, 7.0], [1e-5, 4.99, 0.999, 2.001]])
    assert_close(np.asarray(tr.theta(jnp.asarray(tr.u(theta)))), theta, rtol=1e-9)
    extreme = np.asarray(tr.theta(jnp.array([[-40.0] * 4, [40.0] * 4])))
    assert np.all(extreme[:, 0] > 0) and np.all((extreme[:, 1] >= 0) & (extreme[:, 1] <= 5.0))
    assert np.all((extreme[:, 2] >= 1e-3 * (1 - 1e-12)) & (extreme[:, 2] <= 1.0)) and np.all(extreme[:, 3] >= 2.0)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"tnf_per_leukocte": None}, "unknown parameter 'tnf_per_leukocte' \\(did you mean 'tnf_per_leukocyte'"),
        ({"injury_onset": None}, "event time"),
        ({"recruitment_rate": (500.0, 100.0)}, "bounds"),
        ({"recruitment_rate": {"lower": 1.0, "upper": 50.0}}, "initial value 200 must be"),
        ({"decay_tnf": {"prior": "literature"}, "recruitment_rate": {"prior": "literature"}}, "no literature prior"),
        ({"chemotaxis": {"prior": [0.05, 0.5]}}, "factor > 1"),
    ],
)
def test_bad_parameter_specs(small_config, spec, message):
    obs = inference.make_observations([{"time_h": 2.0, "species": "tnf", "kind": "fluid", "value": 1.0, "sigma": 1.0}])
    with pytest.raises(inference.FitError, match=message):
        inference.Problem(small_config, obs, spec)


def test_loss_is_the_gaussian_nll_with_priors(small_config):
    """loss = 1/2 sum((y - d)/sigma)^2 + 1/2 sum((ln theta - ln m)/ln f)^2, computed here by hand."""
    obs = inference.synthesize(small_config, times=[4.0, 10.0], noise=0.1, seed=3)
    problem = inference.Problem(
        small_config, obs, {"chemotaxis": {"prior": "literature", "initial": 0.08}, "tnf_per_leukocyte": None}
    )
    u = jnp.asarray(problem.u0)
    y = np.asarray(problem.predict_params(problem.params_of(u)))
    data = 0.5 * np.sum(((y - obs.value) / obs.sigma) ** 2)
    prior = 0.5 * ((math.log(0.08) - math.log(0.05)) / math.log(3.0)) ** 2
    assert_close(problem.loss(u), data + prior, rtol=1e-12)
    logp = inference.Problem(small_config, obs, ["tnf_per_leukocyte"], log_residuals=True)
    y = np.asarray(logp.predict_params(logp.params_of(jnp.asarray(logp.u0))))
    e = logp.log_floor
    expected = 0.5 * np.sum(((np.log(y + e) - np.log(obs.value + e)) * (obs.value + e) / obs.sigma) ** 2)
    assert_close(logp.loss(jnp.asarray(logp.u0)), expected, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Gradients against central finite differences
# ------------------------------------------------------------------------------------------


def _fd_check(problem, rng, what):
    """d loss / d every Params leaf (a random direction per array leaf) and / d the initial state vs central FD."""
    params, initial = problem.scenario.params, problem.scenario.initial
    loss = jax.jit(problem.loss_of)
    grads_p, grads_y = jax.jit(jax.grad(problem.loss_of, argnums=(0, 1)))(params, initial)
    checked = 0
    for name in params._fields:
        value = np.asarray(getattr(params, name))
        direction = (
            rng.standard_normal(value.shape) * np.maximum(np.abs(value), 1e-3)
            if value.ndim
            else np.array(max(abs(float(value)), 1e-3))
        )
        g = float(np.sum(np.asarray(getattr(grads_p, name)) * direction))
        h = 1e-5
        plus = params._replace(**{name: jnp.asarray(value + h * direction)})
        minus = params._replace(**{name: jnp.asarray(value - h * direction)})
        fd = (float(loss(plus, initial)) - float(loss(minus, initial))) / (2 * h)
        assert_close(g, fd, rtol=2e-5, atol=1e-7 * abs(float(loss(params, initial))), what=f"{what}: d loss / d {name}")
        checked += abs(fd) > 0
    assert checked >= 25, f"only {checked} parameters change the loss"
    # the initial state: a random direction in every species, zero where the species does not live
    masks = {
        "tnf": problem.scenario.domain.cytokine,
        "il1": problem.scenario.domain.cytokine,
        "drug": problem.scenario.domain.cytokine,
        "complex": problem.scenario.domain.cytokine,
    }
    masks.update(leukocytes=problem.scenario.domain.leukocyte, cartilage=problem.scenario.domain.cartilage)
    direction = jax.tree.map(lambda a: a, initial)._replace(
        **{
            s: jnp.asarray(rng.standard_normal(np.shape(getattr(initial, s)))) * masks[s] * (1.0 + jnp.max(getattr(initial, s)))
            for s in initial._fields
        }
    )
    g = sum(float(jnp.sum(a * b)) for a, b in zip(grads_y, direction))
    h = 1e-6
    plus = jax.tree.map(lambda a, d: a + h * d, initial, direction)
    minus = jax.tree.map(lambda a, d: a - h * d, initial, direction)
    fd = (float(loss(params, plus)) - float(loss(params, minus))) / (2 * h)
    assert_close(g, fd, rtol=2e-5, what=f"{what}: d loss / d initial state")


def _gradient_problem(overrides):
    sets = [
        "run.precision='float64'",
        "drug.enabled=true",
        "drug.first_dose_h=1.1331",  # off every stage time, as the onset below
        "drug.infusion_h=1.0",
        "injury.onset_h=0.3731",  # off every stage time of the step plans (0.37 is a half step of 0.02 h)
        "run.output_interval_h=1",
        "run.t_end_h=4",
        "parameters.recruitment_from_fragments=50.0",
        *overrides,
    ]
    config = load_config("configs/knee2d.toml", sets)
    config = inference.fitted_config(config, {})
    from solver import config_from_dict

    raw = config.to_dict()
    raw["initial"]["cartilage"]["cartilage"] = 0.8  # damaged matrix activates the synovium: w_F and C matter
    config = config_from_dict(raw, ".")
    obs = inference.synthesize(
        config, species=("tnf", "il1", "leukocytes", "drug"), where=("fluid", "tissue:synovium"), map_times=[3.5], noise=0.1
    )
    obs = inference.make_observations(
        [
            {"time_h": t, "species": s, "kind": k, "where": w, "value": v, "sigma": g}
            for t, s, k, w, v, g in zip(obs.time_h, obs.species, obs.kind, obs.where, obs.value, obs.sigma)
        ]
        + [{"time_h": 3.5, "species": "cartilage", "kind": "tissue", "where": "cartilage", "value": 0.7, "sigma": 0.05}],
        obs.maps,
    )
    return inference.Problem(config, obs, ["recruitment_rate"])


@pytest.mark.slow  # ~30 s; the censored loss's gradient is checked in the fast suite
@pytest.mark.filterwarnings("ignore:grid spacing")
def test_loss_gradient_matches_finite_differences_2d(rng):
    _fd_check(_gradient_problem(["geometry.spacing_mm=1.0"]), rng, "2D")


@pytest.mark.slow  # ~30 s; the 2D check runs in the fast suite
@pytest.mark.filterwarnings("ignore:grid spacing")
def test_loss_gradient_matches_finite_differences_3d(rng):
    _fd_check(_gradient_problem(["geometry.ndim=3", "geometry.spacing_mm=2.0"]), rng, "3D")


def test_unidentifiable_parameter_is_flagged(small_config):
    """The drug's clearance does nothing without the drug: the Gauss-Newton matrix is singular along it."""
    obs = inference.synthesize(small_config, times=[4.0, 8.0, 12.0], noise=0.05)
    problem = inference.Problem(small_config, obs, ["tnf_per_leukocyte", "drug_clearance"])
    uq = inference.gauss_newton(problem, np.array([0.01, math.log(2) / 96]))
    assert uq["identifiable"].tolist() == [True, False]
    assert np.isfinite(uq["stderr"][0]) and np.isinf(uq["stderr"][1])


# ------------------------------------------------------------------------------------------
# Fits
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recover_config():
    """A coarse 2D knee (1 mm cells, 16 h): the synovium is under-resolved, but data and fit share the grid.

    The fluid is not mixed: its 2 /h would halve the step (the reaction limit) of these tests of the
    fitting itself; the gradient through the mixing is checked against finite differences above.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        changes = ["geometry.spacing_mm=1.0", "run.t_end_h=16", "injury.rate=500", "parameters.fluid_mixing=0"]
        return load_config("configs/knee2d.toml", [*SMALL_2D, *changes])


@pytest.fixture(scope="module")
def recover_problem(recover_config):
    """Four free parameters, synovial-fluid TNF/IL-1/leukocyte time courses and one leukocyte map (noiseless)."""
    obs = inference.synthesize(recover_config, map_times=[8.0], noise=0.0)
    return inference.Problem(recover_config, obs, RECOVER)


@pytest.mark.slow  # compile-bound (~45 s on 2 cores); so is the noisy fit below
def test_fit_recovers_parameters_from_noiseless_data(recover_problem):
    """Each parameter to within 1%, from starts a factor 1.6-2 away from the truth."""
    result = inference.fit(problem=recover_problem, max_iterations=60)
    for name, truth in TRUTH.items():
        assert abs(result.parameters[name] / truth - 1) < 0.01, (name, result.parameters[name], truth)
    assert result.truth == pytest.approx(TRUTH)
    assert result.loss_history[-1, 0] < 1e-3 * result.loss_history[0, 0]


@pytest.mark.slow  # ~50 s; in the fast suite a plasma fit lands within its standard errors (test_drugs.py)
def test_fit_from_noisy_data_lands_within_its_uncertainty(recover_config, recover_problem, tmp_path):
    """5% noise, two starts batched with vmap: each parameter within 2 reported standard errors of the truth."""
    obs = inference.synthesize(recover_config, map_times=[8.0], noise=0.05, seed=11)
    problem = recover_problem.with_observations(obs)
    result = inference.fit(problem=problem, max_iterations=40, starts=2, seed=1, report=tmp_path / "fit.h5")
    z = {n: (result.parameters[n] - TRUTH[n]) / result.stderr[n] for n in TRUTH}
    assert all(abs(v) < 2.0 for v in z.values()), z  # measured |z| 0.23-0.86
    assert all(result.identifiable.values())
    assert all(0 < result.relative_stderr[n] < 0.25 for n in TRUTH), result.relative_stderr  # measured 3-10%
    # at the optimum the loss (chi^2 / 2) is about half the number of observed values
    assert 0.35 * obs.count < result.loss < 0.7 * obs.count
    assert result.best_start == int(np.argmin(result.loss_history[-1]))
    report = inference.read_report(tmp_path / "fit.h5")
    assert_close(report["fitted"], result.theta, rtol=0)
    assert_close(report["stderr"], [result.stderr[n] for n in result.names], rtol=0)
    assert report["status"] in ("converged", "budget") and report["loss_history"].shape == (result.iterations + 1, 2)
    assert result.fitted_config().parameters["chemotaxis"] == pytest.approx(result.parameters["chemotaxis"])
    assert result.fitted_config().injury.rate == pytest.approx(result.parameters["injury_rate"])


# ~11 s: runs with the slow validation
@pytest.mark.slow
def test_multistart_batches_equal_separate_evaluations(recover_problem, monkeypatch):
    from inference._fit import _OptimiserStep, make_optimizer
    from solver import Solver

    # the trajectory's checkpointing counts every start's states (3 here) when it picks what to keep
    members = []
    choose = Solver.checkpoint_for

    def counting(self, state, n_frames, n_members, memory_budget):
        members.append(n_members)
        return choose(self, state, n_frames, n_members, memory_budget)

    monkeypatch.setattr(Solver, "checkpoint_for", counting)
    problem = recover_problem
    stepper = _OptimiserStep(problem, make_optimizer("lbfgs", 0.05), "lbfgs")
    theta = np.array([[0.01, 200.0, 500.0, 0.05], [0.03, 80.0, 900.0, 0.02], [0.005, 300.0, 100.0, 0.1]])
    u = jnp.asarray(problem.transform.u(theta))
    values, grads = stepper.value_and_grad(u, problem)
    assert members == [3]
    single = jax.jit(jax.value_and_grad(problem.loss))
    separate = [single(u[k]) for k in range(3)]
    # the first start is the truth of noiseless data: its loss (~1e-26) and gradient (~1e-11) are
    # round-off, which the batched reductions (fluid means) may order differently; the absolute
    # tolerance is 1e-10 of the largest gradient of the other starts
    scale = max(float(np.abs(g).max()) for _, g in separate[1:])
    for k, (v, g) in enumerate(separate):
        assert_close(values[k], v, rtol=1e-12, atol=1e-18)
        assert_close(grads[k], g, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.slow  # ~30 s each
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_resumed_fit_equals_an_uninterrupted_one(recover_problem, tmp_path, optimizer):
    kw = dict(problem=recover_problem, optimizer=optimizer, starts=2, tolerance=0.0, learning_rate=0.1)
    straight = inference.fit(max_iterations=4, **kw)
    inference.fit(max_iterations=2, report=tmp_path / "r.h5", **kw)
    resumed = inference.fit(max_iterations=4, report=tmp_path / "r.h5", resume=True, **kw)
    assert resumed.iterations == 4
    assert_close(resumed.loss_history, straight.loss_history, rtol=1e-10)
    assert_close(resumed.theta_history, straight.theta_history, rtol=1e-10)


# ~45 s: runs with the slow validation (the fast suite resumes a fit in the test above)
@pytest.mark.slow
def test_interrupted_fit_keeps_its_report_and_resumes(recover_problem, tmp_path):
    """Ctrl-C mid-fit: the report holds every finished iteration, and --resume continues from it."""

    def stop_at_two(iteration, values):
        if iteration == 2:
            raise KeyboardInterrupt

    kw = dict(problem=recover_problem, optimizer="lbfgs", starts=2, tolerance=0.0, report=tmp_path / "r.h5")
    with pytest.raises(KeyboardInterrupt):
        inference.fit(max_iterations=4, on_iteration=stop_at_two, **kw)
    saved = inference.read_report(tmp_path / "r.h5")
    assert saved["status"] == "interrupted" and saved["loss_history"].shape == (3, 2)
    resumed = inference.fit(max_iterations=3, resume=True, **kw)
    assert resumed.iterations == 3
    assert_close(resumed.loss_history[:3], saved["loss_history"], rtol=0)


def test_gauss_newton_standard_error_equals_the_exact_one_for_decay():
    """TNF decaying in a closed box: its fluid mean is y0 g(k dt)^n exactly (g the SSP-RK3 amplification),
    so d y / d ln k is known in closed form, and se(ln k) = (sum (dy/dlnk / sigma)^2 + 1/ln(f)^2)^(-1/2)."""
    config = load_config("configs/box_diffusion.toml", ["geometry.spacing_mm=0.5"])
    times = np.array([0.25, 0.5, 1.0, 1.5, 2.0])
    obs = inference.synthesize(config, times=times, species=("tnf",), noise=0.0)
    problem = inference.Problem(config, obs, {"decay_tnf": {"prior": [2.0, 1.5]}})
    k, y0 = 2.25, float(np.asarray(problem.scenario.initial.tnf).mean())

    def amplification(dt):
        x = k * dt
        return x, 1 - x + x**2 / 2 - x**3 / 6, np.rint(times / dt)

    _, g, n = amplification(problem.scenario.plan.dt)  # the data: the scenario's own step
    assert_close(obs.value, y0 * g**n, rtol=1e-12, what="closed-form fluid mean")
    x, g, n = amplification(problem.plan.dt)  # the fit: a step small enough for 4x the initial k
    dy_dlnk = y0 * n * g ** (n - 1) * (-1 + x - x**2 / 2) * x
    fisher = np.sum((dy_dlnk / obs.sigma) ** 2) + 1 / math.log(1.5) ** 2
    uq = inference.gauss_newton(problem, np.array([k]))
    assert_close(uq["relative_stderr"][0], fisher**-0.5, rtol=1e-9)
    assert_close(uq["stderr"][0], k * fisher**-0.5, rtol=1e-9)


@pytest.mark.slow  # an L-BFGS fit compiles its line search (~35 s on 2 cores)
def test_the_optimiser_step_compiles_once():
    """The L-BFGS state starts strongly typed: the step's second iteration reuses the first's compile."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sets = ["geometry.spacing_mm=1.5", "run.t_end_h=4", "run.output_interval_h=2", "run.precision='float64'",
                "injury.rate=500", "parameters.fluid_mixing=0", "initial.start=baseline"]  # fmt: skip
        config = load_config("configs/knee2d.toml", sets)
        spec = {"tnf_per_leukocyte": RECOVER["tnf_per_leukocyte"]}
        problem = inference.Problem(config, inference.synthesize(config, noise=0.0), spec)
    result = inference.fit(problem=problem, optimizer="lbfgs", max_iterations=3, starts=2, tolerance=0.0)
    assert result.iterations == 3
    step = inference.FitSettings(optimizer="lbfgs").compiled_step(problem)
    assert step._step._cache_size() == 1


def test_a_fit_shows_progress_by_default_only_to_a_person(monkeypatch):
    import io
    import sys
    import types

    from inference._fit import interactive

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a file or a pipe: no bar
    assert not interactive()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert interactive()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: object()))  # a notebook
    assert interactive()
