"""Every shipped config builds; the full knee scenarios run end to end (slow)."""

from pathlib import Path

import numpy as np
import pytest

from solver._cli import main
from solver._config import load_config
from solver._output import RunFile
from solver._scenario import build_scenario

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_builds(path):
    scenario = build_scenario(load_config(path))
    assert scenario.n_frames >= 1 and scenario.n_substeps >= 1
    assert scenario.dt <= min(scenario.stability_limits.values())
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
    assert main(["run", str(CONFIGS[[p.stem for p in CONFIGS].index(name)]), "-o", str(out), "-q"]) == 0
    with RunFile.open(out) as f:
        assert f.time[-1] == 72.0
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
