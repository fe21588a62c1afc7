"""Every shipped config builds; the full knee scenarios run end to end (slow)."""

import tomllib
from pathlib import Path

import numpy as np
import pytest

from solver import RunFile, build_scenario, load_config
from solver.cli import main

ALL_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.toml"))
#: Sweep configs have a [vary] table; fit configs (a top-level `scenario` key, no [vary]) are checked by
#: inference._config; the rest are run configs.
SWEEP_CONFIGS = [p for p in ALL_CONFIGS if "vary" in tomllib.loads(p.read_text())]
FIT_CONFIGS = [p for p in ALL_CONFIGS if tomllib.loads(p.read_text()).get("scenario") is not None and p not in SWEEP_CONFIGS]
CONFIGS = [p for p in ALL_CONFIGS if p not in FIT_CONFIGS and p not in SWEEP_CONFIGS]


@pytest.mark.parametrize("path", SWEEP_CONFIGS, ids=lambda p: p.stem)
def test_shipped_sweep_config_loads(path):
    from solver import load_sweep

    sweep = load_sweep(path)
    assert len(sweep) > 1 and len(sweep.configs) == len(sweep)
    for config in sweep.configs:  # every point builds (nothing is refused when its turn comes)
        scenario = build_scenario(config)
        assert scenario.n_frames >= 1 and scenario.plan.substeps >= 1


@pytest.mark.parametrize("path", FIT_CONFIGS, ids=lambda p: p.stem)
def test_shipped_fit_config_loads(path):
    from inference import Problem
    from inference._config import load_fit_config

    fc = load_fit_config(path)
    problem = Problem(fc.scenario, fc.observations, {p.name: p for p in fc.parameters})
    assert problem.n == len(fc.parameters) and problem.operator.n_frames >= 1


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_builds(path):
    scenario = build_scenario(load_config(path))
    assert scenario.n_frames >= 1 and scenario.plan.substeps >= 1
    assert scenario.plan.dt <= min(scenario.plan.limits.values())
    # the injury region (when on) lies in tissue where TNF lives
    if scenario.config.injury.enabled:
        assert float(np.asarray(scenario.domain.injury).sum()) > 0


def test_box_diffusion_config_matches_its_exact_solution(tmp_path):
    out = tmp_path / "box.h5"
    assert main(["run", str(CONFIGS[[p.stem for p in CONFIGS].index("box_diffusion")]), "-o", str(out), "-q"]) == 0
    with RunFile.open(out) as f:
        y, x = np.meshgrid(f.grid.axis_centres(0), f.grid.axis_centres(1), indexing="ij")
        d, k, s, a = 0.27, 2.25, 0.5, 100.0
        for frame, t in enumerate(f.time):
            var = s**2 + 2 * d * t
            exact = a * s**2 / var * np.exp(-((x - 5) ** 2 + (y - 5) ** 2) / (2 * var) - k * t)
            assert np.max(np.abs(f.field("tnf", frame) - exact)) < 0.01 * a * s**2 / var * np.exp(-k * t)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["knee2d", "knee3d"])
def test_knee_scenario_runs_to_the_end(tmp_path, name):
    out = tmp_path / f"{name}.h5"
    path = CONFIGS[[p.stem for p in CONFIGS].index(name)]
    assert main(["run", str(path), "-o", str(out), "-q"]) == 0
    with RunFile.open(out) as f:
        assert f.time[-1] == load_config(path).run.t_end_h
        # an acute response: TNF at the injury rises far above baseline, then resolves...
        tnf_max = [float(np.max(f.field("tnf", k))) for k in range(f.n_frames)]
        peak = int(np.argmax(tnf_max))
        assert 0 < peak < f.n_frames - 1
        assert tnf_max[peak] > 10 * tnf_max[0] and tnf_max[-1] < 0.1 * tnf_max[peak]
        # ...and leukocytes follow: recruited in the synovium, peaking after TNF, then falling
        leuk_max = [float(np.max(f.field("leukocytes", k))) for k in range(f.n_frames)]
        leuk_peak = int(np.argmax(leuk_max))
        assert leuk_max[leuk_peak] > 5 * leuk_max[0] and leuk_peak > peak
        assert leuk_max[-1] < leuk_max[leuk_peak]
        # TNF-induced IL-1 from the leukocytes
        assert max(float(np.max(f.field("il1", k))) for k in range(f.n_frames)) > 5 * float(np.max(f.field("il1", 0)))
        for species in f.species:
            assert np.all(np.isfinite(f.field(species, -1)))
            assert np.min(f.field(species, -1)) >= 0


def test_initial_regions_and_blobs_from_the_config():
    from solver import config_from_dict

    raw = {
        "geometry": {"preset": "mcp", "spacing_mm": 0.2},
        "initial": {
            "regions": [{"species": "cartilage", "centre_mm": [8.4, 8.0], "radius_mm": 0.5, "value": 0.25}],
            "blobs": [{"species": "il1", "centre_mm": [8.0, 8.0], "sigma_mm": 0.3, "amplitude": 40.0}],
        },
    }
    sc = build_scenario(config_from_dict(raw))
    y, x = sc.geometry.grid.mesh()
    inside = ((y - 8.4) ** 2 + (x - 8.0) ** 2 <= 0.25) & (sc.geometry.labels == 2)
    cart = np.asarray(sc.initial.cartilage)
    assert inside.any() and np.all(cart[inside] == 0.25)
    assert np.all(cart[(sc.geometry.labels == 2) & ~inside] == 1.0)
    il1 = np.asarray(sc.initial.il1)
    fluid = sc.geometry.labels == 3
    assert il1[fluid].max() > 30.0  # the blob's peak sits in the fluid gap
    assert np.all(il1[sc.geometry.labels == 1] == 0)  # none in bone
    assert load_config(None).run.t_end_h == 72.0  # no file: all defaults
