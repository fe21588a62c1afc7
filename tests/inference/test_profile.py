"""Profile likelihoods (inference.profile, synovia fit --profile): the exact profile of a closed-form
loss, its minimum at the optimum and its interval against the Gauss-Newton one, and a flat, open
profile for a parameter the data do not see."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar

import inference
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
