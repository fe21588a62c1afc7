"""Profile likelihoods (inference.profile, synovia fit --profile): the exact profile of a closed-form
loss, its minimum at the optimum and its interval against the Gauss-Newton one, and a flat, open
profile for a parameter the data do not see."""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar

import inference
from inference._plot import profiles_figure
from inference._profile import profile_interval
from solver import load_config
from tests.helpers import assert_close

TIMES = np.array([0.25, 0.5, 1.0, 1.5, 2.0])


@pytest.fixture(scope="module")
def decay():
    """TNF decaying in a closed box of fluid: its fluid mean is y0 g(k dt)^n exactly (g the SSP-RK3
    amplification), so the loss is known in closed form in k; the drug's clearance does nothing here."""
    config = load_config("configs/box_diffusion.toml", ["geometry.spacing_mm=1.0"])
    obs = inference.synthesize(config, times=TIMES, species=("tnf",), noise=0.0)
    free = {"decay_tnf": {"lower": 0.5, "upper": 5.0}, "drug_clearance": {"lower": 1e-3, "upper": 1.0, "initial": 0.01}}
    problem = inference.Problem(config, obs, free)
    y0 = float(np.asarray(problem.scenario.initial.tnf).mean())
    dt = problem.plan.dt
    n = np.rint(TIMES / dt)
    data, sigma = np.asarray(obs.value), np.asarray(obs.sigma)

    def loss(k):
        x = k * dt
        y = y0 * (1 - x + x**2 / 2 - x**3 / 6) ** n
        return 0.5 * float(np.sum(((y - data) / sigma) ** 2))

    best = minimize_scalar(lambda z: loss(math.exp(z)), bracket=(math.log(2.0), math.log(2.5)), tol=1e-12)
    return problem, loss, math.exp(best.x), float(best.fun)


def test_profile_is_the_closed_form_loss_with_its_minimum_at_the_optimum(decay):
    problem, loss, k_best, loss_best = decay
    theta = np.array([k_best, 0.01])
    prof = inference.profile(problem, "decay_tnf", theta=theta, max_points=8, progress=False)
    assert prof.status == "complete" and prof.upper_stop == prof.lower_stop == "crossed"
    exact = np.array([loss(k) for k in prof.values])
    assert_close(prof.loss, exact, rtol=1e-8, atol=1e-9 * prof.threshold, what="profile against the closed form")
    # the minimum is the optimum, and the profile rises on both sides of it
    assert prof.values[np.argmin(prof.loss)] == pytest.approx(k_best, rel=1e-12)
    assert prof.reference_loss == pytest.approx(loss_best, rel=1e-6, abs=1e-9)
    assert np.all(prof.delta_chi2 >= 0) and prof.delta_chi2.max() >= 1.5 * prof.threshold
    assert_close(prof.parameters[:, 1], 0.01, rtol=1e-12)  # the other one has no gradient: never moved
    assert np.all(prof.iterations == 0)  # so nothing was re-optimised
    assert prof.converged.shape == prof.values.shape and prof.converged.all()
    # the interval: the closed form's crossings (to the interpolation between points), and the Gauss-Newton
    # interval exp(+-1.96 se) where the model is near linear (sigma 1 %)
    assert prof.threshold == pytest.approx(1.959963984540054**2, rel=1e-12)
    crossing = [brentq(lambda k: 2 * (loss(k) - loss_best) - prof.threshold, *b) for b in ((1.5, k_best), (k_best, 3.0))]
    lo, hi = prof.interval
    half = (crossing[1] - crossing[0]) / 2
    assert abs(lo - crossing[0]) < 0.02 * half and abs(hi - crossing[1]) < 0.02 * half, (prof.interval, crossing)
    glo, ghi = prof.laplace_interval
    assert abs(lo - glo) < 0.1 * half and abs(hi - ghi) < 0.1 * half, (prof.interval, prof.laplace_interval)
    assert prof.identifiable and "not identifiable" not in prof.summary()


def test_a_parameter_the_data_do_not_see_has_a_flat_open_profile(decay):
    problem, _, k_best, _ = decay
    prof = inference.profile(problem, "drug_clearance", theta=np.array([k_best, 0.01]), tolerance=1e-6, progress=False)
    assert prof.upper_stop == prof.lower_stop == "bound"
    assert prof.values[0] == pytest.approx(1e-3, rel=1e-5) and prof.values[-1] == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.abs(prof.delta_chi2) < 1e-6)
    assert np.all(np.isnan(prof.interval)) and not prof.identifiable
    assert "practically not identifiable" in prof.summary() and "Gauss-Newton: not identifiable" in prof.summary()


def test_bad_profile_requests(decay):
    problem, _, k_best, _ = decay
    with pytest.raises(inference.FitError, match="'chemotaxis': it is not a free parameter"):
        inference.profile(problem, "chemotaxis", theta=np.array([k_best, 0.01]))
    with pytest.raises(inference.FitError, match="confidence = 1.5"):
        inference.chi2_threshold(1.5)


def test_the_centre_point_a_few_ulps_off_the_fitted_value_belongs_to_both_sides():
    """The centre comes back through the transforms (float32) a few ulps off the fitted value: it must
    still start the search on both sides, not drop out of one and leave that side open."""
    exact = profile_interval([0.9, 1.0, 1.5], [5, 0, 5], 1.0, 3.84)
    off = profile_interval([0.9, 1 - 1e-7, 1.5], [5, 0, 5], 1.0, 3.84)
    above = profile_interval([0.9, 1 + 1e-7, 1.5], [5, 0, 5], 1.0, 3.84)
    assert exact == pytest.approx((0.92227, 1.36533), rel=1e-4)
    assert off == pytest.approx(exact, rel=1e-6) and above == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_failed_point_leaves_its_side_open_not_crossed(bad):
    """A point whose loss is not finite (a failed re-optimisation) is no crossing: interpolating to it
    would put the bound exactly at the last good point and call the parameter identifiable."""
    lo, hi = profile_interval([0.5, 1.0, 1.2, 2.0, 3.0], [5, 0, 1, bad, 10], 1.0, 3.84)
    assert lo == pytest.approx(math.exp(math.log(0.5) * 3.84 / 5)) and math.isnan(hi)
    # a crossing before the failed point still counts
    assert profile_interval([1.0, 1.5, 2.0], [0, 5, bad], 1.0, 3.84)[1] < 1.5


class _Breaking:
    """``Progress`` whose starts fail (loss NaN) or need re-optimising (gradient 1) where the held parameter
    (the first) exceeds ``fail`` or ``slow``; the optimiser (:func:`_budget`) then runs out of iterations."""

    fail, slow = math.inf, math.inf

    @classmethod
    def start(cls, problem, step, theta_init, started=None):
        progress = inference._fit.Progress.start(problem, step, theta_init, started)
        k = float(theta_init[0, 0])
        if k > cls.fail:
            progress.value = progress.value * math.nan
        if k > cls.slow:
            progress.grad = progress.grad + 1.0
        return progress


def _budget(problem, step, progress, settings, on_iteration=None):
    return "budget"


def test_a_profile_point_whose_loss_turns_nan_stops_its_side_as_failed(decay, monkeypatch):
    problem, _, k_best, _ = decay
    theta = np.array([k_best, 0.01])
    se = inference.gauss_newton(problem, theta)["relative_stderr"][0]
    # the first step up (0.5 se) is fine; the next (about 1.5 se) fails, before the profile crosses (1.96 se)
    monkeypatch.setattr(_Breaking, "fail", k_best * math.exp(se))
    monkeypatch.setattr(inference._profile, "Progress", _Breaking)
    prof = inference.profile(problem, "decay_tnf", theta=theta, max_points=8, progress=False)
    assert prof.upper_stop == "failed" and prof.lower_stop == "crossed"
    assert prof.values[-1] > _Breaking.fail and prof.loss[-1] == math.inf and not prof.converged[-1]
    assert prof.converged[:-1].all()
    lo, hi = prof.interval
    assert lo < k_best and math.isnan(hi) and not prof.identifiable
    text = prof.summary()
    assert "open (failed)" in text and "re-optimisation failed" in text and "practically not identifiable" not in text


def test_unconverged_points_are_flagged_and_kept_in_the_report(decay, monkeypatch, tmp_path):
    problem, _, k_best, _ = decay
    theta = np.array([k_best, 0.01])
    monkeypatch.setattr(_Breaking, "slow", k_best * 1.001)  # the points above the centre need re-optimising
    monkeypatch.setattr(inference._profile, "Progress", _Breaking)
    monkeypatch.setattr(inference._profile, "optimise", _budget)  # ... and do not converge
    report = tmp_path / "fit.h5"
    h5py.File(report, "w").close()
    prof = inference.profile(problem, "decay_tnf", theta=theta, max_points=8, progress=False, report=report)
    above = prof.values > _Breaking.slow
    assert above.any() and (~above).any()
    assert np.array_equal(prof.converged, ~above)
    assert "did not converge" in prof.summary() and "raise max_iterations" in prof.summary()
    saved = _read_profile(report)
    assert np.array_equal(saved["converged"], ~above)
    assert "not converged" in _figure_legend(saved, problem.names)
    # a report written before the flag: read and drawn without it
    with h5py.File(report, "a") as f:
        del f["profiles/decay_tnf/converged"]
    old = _read_profile(report)
    assert "converged" not in old and "not converged" not in _figure_legend(old, problem.names)
    assert "did not converge" not in dataclasses.replace(prof, converged=np.zeros(0, bool)).summary()


def test_only_unconverged_points_that_decide_the_interval_are_warned_of():
    """The interval is decided by the points from the centre out to the first one past the threshold on
    each side; an unconverged point beyond (here 2.0) does not matter, one within (1.2) does."""
    values = np.array([0.5, 0.8, 1.0, 1.2, 1.5, 2.0])
    d = np.array([10.0, 2.0, 0.0, 2.0, 5.0, 10.0])
    prof = inference.Profile(
        "k", ("k",), values, 1.0 + d / 2, values[:, None], np.zeros(6), np.ones(6, int), 1.0, np.ones(1), 1.0, 0.1,
        0.95, 3.84, "crossed", "crossed", "complete", 1.0, np.ones(6, bool),
    )  # fmt: skip
    assert "did not converge" not in prof.summary()
    outside, inside = prof.converged.copy(), prof.converged.copy()
    outside[5] = inside[3] = False
    assert "did not converge" not in dataclasses.replace(prof, converged=outside).summary()
    assert (
        "1 point(s) within the interval's region did not converge (k = 1.2)"
        in dataclasses.replace(prof, converged=inside).summary()
    )


def _read_profile(path):
    with h5py.File(path, "r") as f:
        return inference._profile.read_profiles(f)["decay_tnf"]


def _figure_legend(saved, names) -> list[str]:
    fig = profiles_figure({"profiles": {"decay_tnf": saved}, "names": names})
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


#: TNF decaying and diffusing from a blob in a closed box of fluid, seen at two points and as the fluid mean (5% noise).
WHERE = ("fluid", "point:5 5", "point:5 6.5")
FREE = {
    "decay_tnf": {"lower": 0.2, "upper": 10.0, "initial": 1.5},
    "diffusivity_tnf.synovial_fluid": {"lower": 0.02, "upper": 1.0, "initial": 0.4},
    "drug_clearance": {"lower": 1e-3, "upper": 1.0},  # no drug: the data do not see it
}


@pytest.mark.slow  # an L-BFGS fit, its profiles and their own compiled step: ~2 min on 2 cores
def test_profiles_reoptimise_the_others_and_match_gauss_newton_near_linear(tmp_path):
    """A fit of three parameters to noisy data: each profile's minimum is the fit's optimum (the others
    re-optimised there land on the fitted values), the identifiable ones' intervals are the Gauss-Newton
    ones within 10 % of their width, the unseen one's profile is flat; one compiled step for all; Ctrl-C
    keeps the points done in the report."""
    config = load_config("configs/box_diffusion.toml", ["geometry.spacing_mm=0.5"])
    obs = inference.synthesize(config, times=[0.5, 1.0, 1.5, 2.0], species=("tnf",), where=WHERE, noise=0.05, seed=3)
    report = tmp_path / "fit.h5"
    result = inference.fit(config, obs, FREE, max_iterations=60, report=report)
    for name in ("decay_tnf", "diffusivity_tnf.synovial_fluid"):
        prof = inference.profile(result, name, max_points=8, report=report, progress=False)
        centre = int(np.argmin(prof.loss))
        assert prof.values[centre] == pytest.approx(result.parameters[name], rel=1e-12)
        assert_close(prof.parameters[centre, :2], result.theta[:2], rtol=1e-4, what=f"others at the centre of {name}")
        assert np.all(prof.delta_chi2 > -1e-6) and prof.fitted_loss - prof.reference_loss < 1e-6
        assert np.all(prof.iterations[np.arange(len(prof.values)) != centre] > 0)  # the others were re-optimised
        (lo, hi), (glo, ghi) = prof.interval, prof.laplace_interval
        assert prof.identifiable and abs(lo - glo) < 0.1 * (ghi - glo) and abs(hi - ghi) < 0.1 * (ghi - glo), prof.summary()
    flat = inference.profile(result, "drug_clearance", report=report, progress=False)
    assert not flat.identifiable and np.all(np.abs(flat.delta_chi2) < 1e-4)
    step = inference._profile.profile_step(result.problem, inference.FitSettings())
    assert step._step._cache_size() == 1  # one compiled step for every profiled parameter
    saved = inference.read_report(report)["profiles"]
    assert sorted(saved) == ["decay_tnf", "diffusivity_tnf.synovial_fluid", "drug_clearance"]
    assert_close(saved["decay_tnf"]["values"], inference.profile(result, "decay_tnf", max_points=8).values, rtol=1e-10)
    assert saved["drug_clearance"]["status"] == "complete" and not saved["drug_clearance"]["identifiable"]

    calls = []

    def stop_after_a_few(iteration, values):
        calls.append(iteration)
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        inference.profile(result, "decay_tnf", report=report, progress=False, on_iteration=stop_after_a_few)
    kept = inference.read_report(report)["profiles"]["decay_tnf"]
    assert kept["status"] == "interrupted" and 1 <= len(kept["values"]) < 11
