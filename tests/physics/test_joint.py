"""The joint's biology: the resting state, fluid mixing, leukocyte entry, the cartilage's sub-grid
surface layer, the matrix-fragment signal, and steady states from several starts.

The slow cases (a week of the default knee at rest, the OA preset healing, cartilage loss over a
run at two grid spacings) are at the end, marked ``slow``.
"""

import dataclasses
import math
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from fields import Grid, Tissue
from solver import ConfigError, RunFile, build_scenario, config_from_dict
from solver.cli import main
from solver.physics import fluid_mean, reactions, summaries
from solver.physics._rhs import exposure_weight, exposure_weights, fragment_signal
from solver.time import relative_change, relax, resting_params
from tests.helpers import TRANSPORT_ONLY, assert_close, integrate, setup

pytestmark = pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")


def _knee(spacing, **sections):
    raw = {"geometry": {"spacing_mm": spacing}, "run": {"t_end_h": 24.0, "output_interval_h": 2.0, "precision": "float64"}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return build_scenario(config_from_dict(raw))


def _run(scenario, state, hours, t0=0.0):
    """Advance by whole output intervals; the fluid summaries at the end of each."""
    solver = scenario.solver
    out = []
    for k in range(round(hours / scenario.interval)):
        state = solver.advance(state, t0 + k * scenario.interval, scenario.plan.dt, scenario.params, scenario.domain)
        out.append({n: float(v) for n, v in summaries(state, scenario.domain, scenario.options).items()})
    return state, out


# --- the cartilage's sub-grid surface layer -------------------------------------------------------


@pytest.mark.parametrize("h", [0.2, 0.1, 0.04, 0.01])
def test_exposure_weights_integrate_the_penetration_profile_exactly(h):
    """Fluid over a flat cartilage slab: down every column the weights x thickness sum to
    delta (1 - exp(-H/delta)), the integral of exp(-z/delta) over the slab, whatever the grid."""
    thickness, fluid = 0.4, 0.2
    n_c, n_f = round(thickness / h), round(fluid / h)
    labels = np.full((n_c + n_f, 3), int(Tissue.SYNOVIAL_FLUID), np.uint8)
    labels[n_f:] = int(Tissue.CARTILAGE)
    grid = Grid(labels.shape, (h, h))
    options, params, domain, _ = setup(grid, labels, {})
    for diffusivity, decay in ((params.diffusivity_il1, params.decay_il1), (params.diffusivity_tnf, params.decay_tnf)):
        delta = math.sqrt(float(diffusivity[int(Tissue.CARTILAGE)]) / float(decay))
        w = np.asarray(exposure_weight(domain, options, diffusivity, decay))
        assert_close(w.sum(axis=0) * h, delta * (1 - math.exp(-thickness / delta)), rtol=1e-12, what=f"h = {h}")
        assert np.all(w[:n_f] == 0) and np.all(np.diff(w[n_f:, 0]) < 0)  # zero outside, falling with depth
    assert 0.09 < delta < 0.1  # TNF's penetration, sqrt(0.019 / 2.25) mm: below a 0.25 mm cell


def test_cartilage_loss_rate_converges_under_refinement_on_the_knee():
    """The rate at which the resting fluid's cytokines degrade the knee's cartilage (mm^2/h per mm of
    depth) at 1, 0.5, 0.25 and 0.125 mm: the differences shrink and 0.25 mm is within 3% of 0.125 mm.
    (A damage confined to each grid's surface row of cells would halve with every halving of h.)"""
    rates = []
    for h in (1.0, 0.5, 0.25, 0.125):
        sc = _knee(h, initial={"start": "baseline"})
        dc = reactions(sc.baseline, 0.0, sc.params, sc.domain, sc.options).cartilage
        rates.append(-float(jnp.sum(dc)) * float(np.prod(sc.geometry.grid.spacing)))
    rates = np.array(rates)
    steps = np.abs(np.diff(rates))
    assert np.all(rates > 0) and np.all(np.diff(steps) < 0), rates
    assert abs(rates[2] - rates[3]) < 0.03 * rates[3], rates


def test_fragment_signal_is_the_damage_of_the_exposed_surface_layer():
    sc = _knee(0.5, initial={"start": "baseline"})
    cart = sc.domain.cartilage
    _, w_i = exposure_weights(sc.params, sc.domain, sc.options)
    for c in (1.0, 0.6, 0.0):
        assert_close(fragment_signal(cart * c, w_i), 1 - c, rtol=0, atol=1e-12)
    # damage deeper than the cytokines reach is not shed into the fluid
    deep = jnp.where(sc.domain.cartilage_depth > 1.0, 0.5, 1.0) * cart
    assert float(fragment_signal(deep, w_i)) < 1e-4  # against 0.5 were it counted


# --- the fluid: mixing and entry ----------------------------------------------------------------


def test_fluid_mixing_conserves_and_relaxes_every_cell_to_the_mean_at_its_rate():
    """With nothing else on, u - mean(u) decays as exp(-k_mix t) in every fluid cell, and the amount is kept."""
    n, h, k = 24, 0.1, 3.0
    grid = Grid((n, n), (h, h))
    labels = np.full((n, n), int(Tissue.SYNOVIAL_FLUID), np.uint8)
    y, x = grid.mesh()
    tnf = 10 * np.exp(-((x - 0.8) ** 2 + (y - 1.5) ** 2) / 0.2)
    still = {f"diffusivity_{s}": np.zeros(6) for s in ("tnf", "il1", "leukocytes", "drug")}
    transport = {**TRANSPORT_ONLY, **still, "fluid_mixing": k, "chemotaxis": 0.0}
    options, params, domain, state = setup(grid, labels, {"tnf": tnf, "leukocytes": 1 + tnf}, **transport)
    final, _, _ = integrate(options, params, domain, state, 0.5, dt=0.005)
    for name in ("tnf", "leukocytes"):
        u0, u1 = np.asarray(getattr(state, name)), np.asarray(getattr(final, name))
        assert_close(u1.sum(), u0.sum(), rtol=1e-13, what=f"{name} kept")
        assert_close(u1 - u1.mean(), (u0 - u0.mean()) * math.exp(-k * 0.5), rtol=0, atol=1e-7 * np.abs(u0).max(), what=name)


def test_leukocytes_enter_the_fluid_as_the_fluid_cytokines_drive_them():
    """Entry into the fluid follows r_F h(mean T, mean I) (1 - L/L_max) in every fluid cell, and only there."""
    sc = _knee(0.5, initial={"start": "baseline"}, parameters={"recruitment_rate": 0.0})
    st = sc.baseline._replace(leukocytes=sc.baseline.leukocytes * 0)  # no death, no secretion from cells
    p = sc.params
    d = reactions(st, 0.0, p, sc.domain, sc.options).leukocytes
    t_bar, i_bar = (fluid_mean(u, sc.domain, sc.options) for u in (st.tnf, st.il1))
    drive = float(t_bar + p.il1_weight_recruitment * i_bar)
    expected = float(p.fluid_recruitment) * drive / (float(p.recruitment_half_saturation) + drive)
    fluid = np.asarray(sc.domain.fluid, bool)
    assert_close(np.asarray(d)[fluid], expected, rtol=1e-12)
    assert np.all(np.asarray(d)[~fluid] == 0)


# --- the resting joint --------------------------------------------------------------------------


def test_the_resting_joint_is_stationary_at_the_healthy_fluid_values():
    """initial.start = "rest" (the default): the run starts from a steady state of its own scheme, and
    the default parameters put it at the healthy fluid values (TNF 2.9, IL-1 1.1 pg/mL, 150 cells/uL)."""
    sc = _knee(0.5, injury={"enabled": False})
    assert sc.rest.converged and sc.rest.change < 1e-5
    s0 = summaries(sc.initial, sc.domain, sc.options)
    for name, value in (("synovial_fluid_tnf", 2.9), ("synovial_fluid_il1", 1.1), ("synovial_fluid_leukocytes", 150.0)):
        assert_close(float(s0[name]), value, rtol=0.03, what=name)  # calibrated at this grid to 0.1%
    final, series = _run(sc, sc.initial, 48.0)
    assert relative_change(final, sc.initial) < 1e-4
    assert float(s0["cartilage_integrity"]) == 1.0


def test_injury_rises_from_rest_brings_white_cells_into_the_fluid_within_a_day_and_resolves():
    sc = _knee(0.5, run={"t_end_h": 240.0, "output_interval_h": 6.0, "precision": "float32"})
    rest = {n: float(v) for n, v in summaries(sc.initial, sc.domain, sc.options).items()}
    _, series = _run(sc, sc.initial, 240.0)
    cells = np.array([s["synovial_fluid_leukocytes"] for s in series])
    tnf = np.array([s["synovial_fluid_tnf"] for s in series])
    t = 6.0 * np.arange(1, len(series) + 1)
    assert tnf.max() > 10 * rest["synovial_fluid_tnf"] and t[np.argmax(tnf)] <= 12  # the injury's TNF reaches the fluid
    assert cells[t == 24][0] > 2.5 * rest["synovial_fluid_leukocytes"]  # white cells in the fluid within a day
    assert t[np.argmax(cells)] <= 24
    assert cells[-1] == pytest.approx(rest["synovial_fluid_leukocytes"], rel=0.03)  # back to rest


def test_start_rest_refuses_per_tissue_values_it_would_ignore(tmp_path):
    with pytest.raises(ConfigError, match=r"'initial.synovial_fluid.leukocytes' = 600: with initial.start = \"rest\""):
        config_from_dict({"initial": {"synovial_fluid": {"leukocytes": 600.0}}})
    with pytest.raises(ConfigError, match="initial.start' = 'steady': allowed values are rest, baseline"):
        config_from_dict({"initial": {"start": "steady"}})
    # cartilage (damage on a healthy joint) is applied on top of the rest, and the resolved config reloads
    config = config_from_dict({"initial": {"cartilage": {"cartilage": 0.6}}})
    assert config_from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert config_from_dict({"initial": {"start": "baseline", "synovial_fluid": {"leukocytes": 600.0}}})


def test_a_rest_that_diverges_is_refused_with_exit_2(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[geometry]\nspacing_mm = 1.0\n[run]\nprecision = "float32"\n[parameters]\ntnf_per_leukocyte = 1e37\n')
    assert main(["run", str(cfg), "-o", str(tmp_path / "bad.h5"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "the resting state could not be found: the model diverged" in err and "Traceback" not in err
    assert not (tmp_path / "bad.h5").exists()


def test_the_run_file_records_how_the_rest_was_found(tmp_path, capsys):
    cfg = tmp_path / "k.toml"
    cfg.write_text("[geometry]\nspacing_mm = 1.0\n[run]\nt_end_h = 2.0\n")
    assert main(["run", str(cfg), "-o", str(tmp_path / "k.h5"), "-q"]) == 0
    assert "resting joint steady after" in capsys.readouterr().err
    with RunFile.open(tmp_path / "k.h5") as f:
        assert f.attrs["rest_relaxed_h"] > 0 and f.attrs["rest_change_per_window"] < 1e-5


# --- steady states from several starts ----------------------------------------------------------

#: A joint whose resident cells secrete nothing (basal secretion off): at r_syn = 1000 the empty joint
#: and an inflamed one (~1100 cells/uL) are both stable; at 500 only the empty one, at 2000 only the
#: inflamed one. (The default joint's basal secretion removes the empty state.)
BISTABLE = {"basal_tnf": 0.0, "basal_il1": 0.0, "tnf_per_leukocyte": 0.0054, "il1_per_leukocyte": 0.022,
            "leukocyte_capacity": 2e5}  # fmt: skip
INFLAMED = {"start": "baseline", "synovial_fluid": {"leukocytes": 15000.0, "tnf": 60.0, "il1": 130.0},
            "synovium": {"leukocytes": 15000.0, "tnf": 60.0, "il1": 130.0}}  # fmt: skip


def test_relaxation_from_two_starts_finds_both_stable_states_of_a_bistable_joint():
    states = {}
    for name, initial in (("rest", {}), ("inflamed", INFLAMED)):
        sc = _knee(0.5, injury={"enabled": False}, parameters={**BISTABLE, "recruitment_rate": 1000.0}, initial=initial)
        solver = sc.plan.solver(dataclasses.replace(sc.options, drug=False))
        result = relax(solver, sc.baseline._replace(drug=None), resting_params(sc.params), sc.domain, sc.plan.dt)
        assert result.converged
        states[name] = float(fluid_mean(result.state.leukocytes, sc.domain, sc.options))
    assert states["inflamed"] > 500 and states["rest"] < 1, states


# ~20 s (a sweep): runs with the slow validation
@pytest.mark.slow
def test_a_sweep_from_two_starts_reports_the_bistable_window(tmp_path, capsys):
    from solver import read_study

    text = textwrap.dedent(
        f"""
        [scenario.run]
        t_end_h = 720.0
        output_interval_h = 24.0
        precision = "float64"
        [scenario.geometry]
        spacing_mm = 0.5
        [scenario.injury]
        enabled = false
        [scenario.parameters]
        {chr(10).join(f"{k} = {v}" for k, v in BISTABLE.items())}
        [vary]
        "parameters.recruitment_rate" = [500.0, 1000.0, 2000.0]
        [starts]
        rest = {{}}
        [starts.inflamed]
        "initial.start" = "baseline"
        "initial.synovial_fluid.leukocytes" = 15000.0
        "initial.synovial_fluid.tnf" = 60.0
        "initial.synovial_fluid.il1" = 130.0
        "initial.synovium.leukocytes" = 15000.0
        "initial.synovium.tnf" = 60.0
        "initial.synovium.il1" = 130.0
        """
    )
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(text)
    out = tmp_path / "study"
    assert main(["sweep", str(cfg), "-o", str(out), "-q", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "bistable (starts end on different states) at 1 of 3: parameters.recruitment_rate = 1000" in printed
    table = read_study(out)
    assert table.keys == ["parameters.recruitment_rate", "start"] and len(table.values) == 6
    assert [b["bistable"] for b in table.branches()] == [False, True, False]
    assert [b["settled"] for b in table.branches()][1:] == [True, True]  # at 500 the inflamed start still empties
    header = (out / "summary.csv").read_text().splitlines()[0]
    assert ",start," in header and "final_drift [fraction]" in header
    from solver import plot_study

    written = plot_study(out, tmp_path / "figs")
    assert written[0].name == "study.png"


# --- slow: a week at rest, the OA preset healing, cartilage loss over a run at two grids -----------


@pytest.mark.slow
def test_the_default_knee_at_rest_drifts_below_one_percent_in_a_week(tmp_path):
    out = tmp_path / "rest.h5"
    assert main(["run", "configs/knee2d.toml", "--set", "injury.enabled=false", "-o", str(out), "-q"]) == 0
    with RunFile.open(out) as f:
        assert f.time[-1] == 168.0
        for name in ("synovial_fluid_tnf", "synovial_fluid_il1", "synovial_fluid_leukocytes", "cartilage_integrity"):
            series = f.summary[name]
            assert np.max(np.abs(series / series[0] - 1)) < 0.01, name
        for species in ("tnf", "il1", "leukocytes"):
            first, last = f.field(species, 0), f.field(species, -1)
            assert np.max(np.abs(last - first)) < 0.01 * np.max(first), species
        assert f.summary["synovial_fluid_leukocytes"][0] == pytest.approx(150.0, rel=0.03)


@pytest.mark.slow
def test_the_oa_preset_resolves_when_its_cartilage_heals():
    """From the OA preset's state at day 18, intact cartilage: the fluid returns to the resting joint's."""
    from solver import load_config

    sc = build_scenario(load_config("configs/oa.toml"))
    oa, series = _run(sc, sc.initial, sc.config.run.t_end_h)
    rest = summaries(
        build_scenario(load_config("configs/oa.toml", ["initial.cartilage.cartilage=1.0"])).initial, sc.domain, sc.options
    )
    assert series[-1]["synovial_fluid_leukocytes"] > 2.5 * float(rest["synovial_fluid_leukocytes"])
    healed = oa._replace(cartilage=sc.domain.cartilage * 1.0)
    _, after = _run(sc, healed, sc.config.run.t_end_h, t0=sc.config.run.t_end_h)
    for name in ("synovial_fluid_leukocytes", "synovial_fluid_tnf", "synovial_fluid_il1"):
        assert after[-1][name] == pytest.approx(float(rest[name]), rel=0.02), name


@pytest.mark.slow
def test_cartilage_loss_over_a_run_agrees_at_two_grid_spacings():
    """Three days of a knee whose fluid holds ~100 pg/mL IL-1 (basal secretion raised): the cartilage lost
    (mm^2 per mm of depth) at 0.5 and 0.25 mm agrees within 8%, and 0.25 mm within 3% of 0.125 mm."""
    lost = []
    for h in (0.5, 0.25, 0.125):
        sc = _knee(
            h, injury={"enabled": False}, parameters={"basal_il1": 300.0}, run={"t_end_h": 72.0, "output_interval_h": 24.0}
        )
        final, _ = _run(sc, sc.initial, 72.0)
        area = float(np.prod(sc.geometry.grid.spacing))
        lost.append(float(jnp.sum((sc.initial.cartilage - final.cartilage) * sc.domain.cartilage)) * area)
    assert lost[0] > 0 and abs(lost[0] - lost[1]) < 0.08 * lost[1] and abs(lost[1] - lost[2]) < 0.03 * lost[2], lost
