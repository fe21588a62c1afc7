"""Values below a detection limit (left-censored observations): the file column, the Tobit (M3) loss term
-ln Phi((d - y)/sigma) and its gradient against finite differences."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import inference
from solver import load_config
from tests.helpers import assert_close

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing")

SMALL = ["geometry.spacing_mm=1.0", "run.t_end_h=6", "run.output_interval_h=2", "run.precision='float64'"]
ROWS = [
    {"time_h": 2.0, "species": "tnf", "kind": "fluid", "value": 30.0, "sigma": 3.0},
    {"time_h": 4.0, "species": "tnf", "kind": "fluid", "value": 20.0, "sigma": 2.0},
    {"time_h": 6.0, "species": "il1", "kind": "fluid", "value": 1.0, "sigma": 0.2},
    {"time_h": 6.0, "species": "tnf", "kind": "tissue", "where": "synovium", "value": 0.5, "sigma": 0.3},
    {"time_h": 4.0, "species": "leukocytes", "kind": "fluid", "value": 400.0, "sigma": 40.0},
]


@pytest.fixture(scope="module")
def config():
    return load_config("configs/knee2d.toml", SMALL)


def _observations(censored, values=None):
    rows = [dict(r, censored=c) for r, c in zip(ROWS, censored)]
    if values is not None:
        rows = [dict(r, value=v) for r, v in zip(rows, values)]
    return inference.make_observations(rows)


def test_censored_rows_round_trip_through_csv_and_hdf5(tmp_path):
    obs = _observations([False, "below", "", True, False])
    np.testing.assert_array_equal(obs.censored, [False, True, False, True, False])
    for name in ("obs.csv", "obs.h5"):
        inference.save_observations(obs, tmp_path / name)
        back = inference.load_observations(tmp_path / name)
        np.testing.assert_array_equal(back.censored, obs.censored)
    assert "censored" in (tmp_path / "obs.csv").read_text().splitlines()[0]
    plain = inference.make_observations(ROWS)
    inference.save_observations(plain, tmp_path / "plain.csv")
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == ",".join(inference.COLUMNS)  # no column unless needed
    assert not inference.load_observations(tmp_path / "plain.csv").censored.any()
    (tmp_path / "bad.csv").write_text("time_h,species,kind,where,value,sigma,censored\n2,tnf,fluid,,3.0,0.5,<\n")
    with pytest.raises(inference.ObservationError, match=r"observation 1: censored = '<' must be empty or 'below'"):
        inference.load_observations(tmp_path / "bad.csv")


CENSORED = [False, True, False, True, True]


@pytest.fixture(scope="module")
def problem(config):
    """One parameter, three censored rows: the model lies far above one limit, above another and below the third."""
    return inference.Problem(config, _observations(CENSORED), ["tnf_per_leukocyte"])


def _with(problem, log_residuals):
    other = copy.copy(problem)
    other.log_residuals = log_residuals
    return other


@pytest.mark.parametrize("log_residuals", [False, True])
def test_a_censored_value_adds_minus_log_phi(problem, log_residuals):
    """Censored rows: -ln Phi((d - y)/sigma) (on the log scale with log_residuals), the rest 1/2 r^2, by hand."""
    problem = _with(problem, log_residuals)
    obs = problem.observations
    u = jnp.asarray(problem.u0)
    y = np.asarray(problem.predict_params(problem.params_of(u)))
    d, s, c = obs.value, obs.sigma, np.asarray(CENSORED)
    if log_residuals:
        e = problem.log_floor
        r = (np.log(y + e) - np.log(d + e)) * (d + e) / s
    else:
        r = (y - d) / s
    assert (r[c] > 5).any() and (r[c] < -1).any() and (np.abs(r[c]) < 5).any(), r
    expected = 0.5 * np.sum(r[~c] ** 2) - np.sum(norm.logcdf(-r[c]))
    assert_close(0.5 * jnp.sum(problem.whiten(jnp.asarray(y)) ** 2), expected, rtol=1e-12)
    if not log_residuals:  # and through the solver (the same function of y)
        assert_close(problem.loss(u), expected, rtol=1e-12)
    # the constant of the full likelihood leaves out the censored rows' ln sigma + ln(2 pi)/2
    plain = _with(problem, log_residuals)
    plain.censored = np.zeros(len(c), bool)
    sl = s / ((d + problem.log_floor) if log_residuals else 1.0)
    assert_close(plain.nll_constant() - problem.nll_constant(), np.sum(np.log(sl[c])) + 1.5 * np.log(2 * np.pi), rtol=1e-12)


@pytest.mark.parametrize("log_residuals", [False, True])
def test_the_censored_term_is_differentiable_in_the_predictions(problem, log_residuals, rng):
    """d loss / d y against central differences, on either side of each limit and far from it."""
    problem = _with(problem, log_residuals)
    d = np.asarray(problem.data)

    def loss(y):
        r = problem.whiten(y)
        return 0.5 * jnp.sum(r * r)

    grad = jax.jit(jax.grad(loss))
    for y in (d * 0.5, d * 1.1, d * 2.7, d * (1 + 0.3 * rng.standard_normal(d.shape))):
        g = np.asarray(grad(jnp.asarray(y)))
        for k in range(len(d)):
            h = 1e-6 * d[k]
            step = np.zeros(len(d))
            step[k] = h
            fd = (float(loss(jnp.asarray(y + step))) - float(loss(jnp.asarray(y - step)))) / (2 * h)
            assert_close(g[k], fd, rtol=1e-6, atol=1e-9, what=f"d loss / d y[{k}] (log_residuals={log_residuals})")


def test_censored_loss_gradient_through_the_solver_matches_finite_differences(problem):
    loss = jax.jit(problem.loss)
    u0 = jnp.asarray(problem.u0)
    grad = float(jax.jit(jax.grad(problem.loss))(u0)[0])
    h = 1e-5
    fd = (float(loss(u0 + h)) - float(loss(u0 - h))) / (2 * h)
    assert_close(grad, fd, rtol=1e-6, what="d loss / d u")
    assert grad != 0


def test_far_below_its_limit_a_censored_value_costs_nothing_and_has_a_finite_gradient(problem):
    """A limit far above the model: Phi(-r) = 1 in floating point; the residual's floor keeps the gradient finite."""
    values = np.array([r["value"] for r in ROWS])
    values[1] = 1e6
    far = problem.with_observations(_observations(CENSORED, values=values))
    y = jnp.asarray(far.predict_params(far.params_of(jnp.asarray(far.u0))))
    r = np.asarray(far.whiten(y))
    assert 0 <= r[1] < 1e-100
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda y: jnp.sum(far.whiten(y) ** 2))(y))))
    with pytest.raises(inference.ObservationError, match="same times, places"):
        problem.with_observations(_observations([False] * 5))


def test_the_fit_report_keeps_the_censored_flags_and_its_figure_draws_them_as_limits(problem, tmp_path):
    """A censored value is a detection limit, not a measurement: the report stores the flags (as an observations
    file does) and fit.png draws those rows as open triangles at the limit, without error bars."""
    from matplotlib.collections import LineCollection

    inference.fit(problem=problem, max_iterations=2, progress=False, report=tmp_path / "fit.h5")
    report = inference.read_report(tmp_path / "fit.h5")
    np.testing.assert_array_equal(np.asarray(report["observations"]["censored"], bool), CENSORED)
    assert inference.load_observations(tmp_path / "fit.h5").censored.tolist() == CENSORED
    fig = inference.figure_fit(report)
    keys = list(zip(*(report["observations"][k] for k in ("species", "kind", "where"))))
    drawn_bars, drawn_limits = 0, 0
    for ax in fig.axes:
        limits = [line for line in ax.get_lines() if line.get_marker() == "v"]
        drawn_limits += sum(len(line.get_xdata()) for line in limits)
        assert all(line.get_markerfacecolor() == "none" for line in limits)
        bars = [c for c in ax.collections if isinstance(c, LineCollection)]
        drawn_bars += sum(len(c.get_segments()) for c in bars)
    assert drawn_limits == sum(CENSORED) and drawn_bars == len(CENSORED) - sum(CENSORED), (drawn_limits, drawn_bars, keys)
