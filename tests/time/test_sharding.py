"""``run.devices``: one run's grid split over several devices along its slowest axis (Auto sharding, XLA's
partitioner adding the halo exchanges). Checked in a fresh process with 4 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``): the same frames as one device to round-off, the
compiled step exchanging halos (collective-permutes) and never gathering a whole field (no all-gather)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from solver import ConfigError, build_scenario, load_config

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from solver import build_scenario, load_config
    from solver.study import run

    class Frames:  # a writer that keeps the frames in memory
        n_frames = 0
        def __init__(self):
            self.fields, self.summaries = [], []
        def append(self, t, fields, summaries):
            self.fields.append(fields); self.summaries.append(summaries); self.n_frames += 1

    import re
    sets = ["geometry.spacing_mm=1.25", "run.t_end_h=2", "run.output_interval_h=1", "run.precision=float64"]
    out = {"devices": len(jax.devices())}
    for exact in ("false", "true"):
        frames = {}
        for n in (1, 2, 4):
            sc = build_scenario(load_config("configs/knee3d.toml", [*sets, f"run.devices={n}", f"run.reproducible={exact}"]))
            writer = Frames()
            run(sc, writer, progress=False)
            frames[n] = writer
            out["shape"] = list(sc.geometry.grid.shape)
            if n > 1:
                key = f"{n}_{exact}"
                state, params, domain = sc.place((sc.initial, sc.params, sc.domain))
                out[f"sharding_{key}"] = list(state.tnf.sharding.spec)
                hlo = jax.jit(sc.solver._advance_with_summary).lower(state, 0.0, sc.plan.dt, params, domain).compile().as_text()
                out[f"collective_permutes_{key}"] = hlo.count("collective-permute-start") + hlo.count("collective-permute(")
                gathered = re.findall(r"= \\w+\\[([\\d,]*)\\][^ ]* all-gather", hlo)
                out[f"all_gathers_{key}"] = hlo.count("all-gather")
                sizes = [int(np.prod([int(d) for d in g.split(",") if d])) for g in gathered]
                out[f"largest_gather_{key}"] = max(sizes, default=0)
                worst = 0.0
                for a, b in zip(frames[1].fields, writer.fields):
                    for s in a:
                        scale = max(float(np.max(np.abs(a[s]))), 1e-300)
                        worst = max(worst, float(np.max(np.abs(a[s] - b[s]))) / scale)
                out[f"max_rel_diff_{key}"] = worst
                out[f"frames_{key}"] = len(writer.fields)
                out[f"bit_identical_{key}"] = all(
                    all(np.array_equal(a[s], b[s]) for s in a) for a, b in zip(frames[1].fields, writer.fields)
                ) and all(a == b for a, b in zip(frames[1].summaries, writer.summaries))
    print(json.dumps(out))
    """
)


# ~130 s (six 3D runs in a fresh process, compiled for 1, 2 and 4 devices): its tests run with the slow validation
@pytest.fixture(scope="module")
def sharded():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_a_run_split_over_devices_matches_one_device(sharded, n):
    assert sharded["devices"] == 4
    assert sharded[f"sharding_{n}_false"] == ["slab"]
    assert sharded[f"frames_{n}_false"] == 3
    # The fields agree to round-off: whole-joint sums (the well-mixed fluid's means) add the devices' partial
    # sums in another order.
    assert sharded[f"max_rel_diff_{n}_false"] < 1e-14, sharded


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_a_reproducible_run_split_over_devices_is_bit_identical(sharded, n):
    # run.reproducible: every sum in an order fixed by the grid's shape, so the split changes nothing
    assert sharded[f"frames_{n}_true"] == 3
    assert sharded[f"bit_identical_{n}_true"], sharded


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_the_split_step_exchanges_halos_and_gathers_no_field(sharded, n):
    assert sharded[f"collective_permutes_{n}_false"] > 0, sharded
    assert sharded[f"all_gathers_{n}_false"] == 0, sharded
    # the fixed-order sums gather only the devices' partial sums along the split axis (40 cells), never a field
    assert sharded[f"collective_permutes_{n}_true"] > 0, sharded
    assert 0 < sharded[f"largest_gather_{n}_true"] <= sharded["shape"][0], sharded


def test_devices_that_do_not_split_the_grid_or_are_missing_are_refused():
    with pytest.raises(ConfigError, match=r"'run.devices' = 2: this process has 1 CPU device\(s\)"):
        build_scenario(load_config(ROOT / "configs" / "knee2d.toml", ["run.devices=2", "geometry.spacing_mm=1.0"]))
    with pytest.raises(ConfigError, match=r"'run.devices' = 0: must be >= 1"):
        load_config(ROOT / "configs" / "knee2d.toml", ["run.devices=0"])


ENSEMBLE = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from solver.cli import main
    from solver.study import _ensemble, _study, load_sweep

    cfg, out = sys.argv[1], sys.argv[2]
    # three points over four devices: the batch is padded to four members, one per device
    code = main(["sweep", cfg, "-o", out, "-q", "--ensemble", "--point", "0", "1", "2"])
    sweep = load_sweep(cfg)
    members = [_study.point_scenario(i, sweep.configs[i].to_toml(), sweep.base_dir) for i in range(4)]
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("members",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
    args = [jax.device_put(_ensemble._stacked([getattr(m, k) for m in members]), split) for k in ("initial", "params", "domain")]
    state, params, domain = args
    advance = _ensemble._batched(members[0].solver)
    hlo = advance.lower(state, 0.0, members[0].plan.dt, params, domain).compile().as_text()
    new_state = advance(state, 0.0, members[0].plan.dt, params, domain)[0]
    collectives = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
    print(json.dumps({
        "code": code,
        "devices": len(jax.devices()),
        "collectives": {c: hlo.count(c) for c in collectives},
        "sharding": list(new_state.tnf.sharding.spec),
        "member_devices": [sorted(d.id for d in shard.data.devices()) for shard in new_state.tnf.addressable_shards],
    }))
    """
)


@pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")
def test_an_ensemble_splits_its_members_over_devices_without_collectives(study, tmp_path):
    """``sweep --ensemble`` over 4 CPU devices: one member per device, nothing exchanged between them, and
    every point's run the one it has run point by point (tests/study/test_ensemble.py)."""
    from tests.study.test_ensemble import assert_same_runs

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "ensemble"
    done = subprocess.run(
        [sys.executable, "-c", ENSEMBLE, str(study.parent / "sweep.toml"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["devices"] == 4
    assert result["sharding"][0] == "members"
    assert result["member_devices"] == [[0], [1], [2], [3]]
    assert result["collectives"] == dict.fromkeys(result["collectives"], 0), result
    assert_same_runs(out, study, points=range(3), exact=False)


FIT = textwrap.dedent(
    """
    import json, warnings
    import jax
    jax.config.update("jax_enable_x64", True)
    warnings.simplefilter("ignore")
    import inference
    from inference import _fit
    from solver import load_config

    sets = ["geometry.spacing_mm=1.0", "run.t_end_h=8", "run.output_interval_h=2", "run.precision='float64'",
            "injury.rate=500", "parameters.fluid_mixing=0"]
    config = load_config("configs/knee2d.toml", sets)
    spec = {"tnf_per_leukocyte": {"lower": 1e-4, "upper": 0.1, "initial": 0.02},
            "recruitment_rate": {"lower": 10.0, "upper": 1000.0, "initial": 100.0}}
    problem = inference.Problem(config, inference.synthesize(config, noise=0.0), spec)
    kw = dict(problem=problem, optimizer="adam", learning_rate=0.1, max_iterations=2, starts=4, seed=3, tolerance=0.0)
    spread = inference.fit(**kw)
    placed = _fit.place_starts(jax.numpy.zeros((4, 2)))
    _fit.place_starts = lambda u: u  # every start on the first device
    together = inference.fit(**kw)
    print(json.dumps({"devices": len(jax.devices()), "placed_on": len(placed.sharding.device_set),
                      "loss": [spread.loss_history.tolist(), together.loss_history.tolist()],
                      "theta": [spread.theta_history.tolist(), together.theta_history.tolist()]}))
    """
)


@pytest.mark.slow  # two fits of four starts, compiled for each placement (~50 s on 2 cores)
def test_fit_starts_split_over_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", FIT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["placed_on"] == 4
    # a batch of one start per device against four on one: the losses agree to round-off (not to the bit)
    spread, together = (np.array(x) for x in result["loss"])
    np.testing.assert_allclose(spread, together, rtol=1e-13)
    spread, together = (np.array(x) for x in result["theta"])
    np.testing.assert_allclose(spread, together, rtol=1e-12)
