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

    sets = ["geometry.spacing_mm=1.25", "run.t_end_h=2", "run.output_interval_h=1", "run.precision=float64"]
    out = {"devices": len(jax.devices())}
    frames = {}
    for n in (1, 2, 4):
        sc = build_scenario(load_config("configs/knee3d.toml", [*sets, f"run.devices={n}"]))
        writer = Frames()
        run(sc, writer, progress=False)
        frames[n] = writer
        out["shape"] = list(sc.geometry.grid.shape)
        if n > 1:
            state, params, domain = sc.place((sc.initial, sc.params, sc.domain))
            out[f"sharding_{n}"] = list(state.tnf.sharding.spec)
            hlo = jax.jit(sc.solver._advance_with_summary).lower(state, 0.0, sc.plan.dt, params, domain).compile().as_text()
            out[f"collective_permutes_{n}"] = hlo.count("collective-permute-start") + hlo.count("collective-permute(")
            out[f"all_gathers_{n}"] = hlo.count("all-gather")
            worst = 0.0
            for a, b in zip(frames[1].fields, writer.fields):
                for s in a:
                    scale = max(float(np.max(np.abs(a[s]))), 1e-300)
                    worst = max(worst, float(np.max(np.abs(a[s] - b[s]))) / scale)
            out[f"max_rel_diff_{n}"] = worst
            out[f"frames_{n}"] = len(writer.fields)
            out[f"bit_identical_{n}"] = all(
                all(np.array_equal(a[s], b[s]) for s in a) for a, b in zip(frames[1].fields, writer.fields)
            )
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sharded():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n", [2, 4])
def test_a_run_split_over_devices_matches_one_device(sharded, n):
    assert sharded["devices"] == 4
    assert sharded[f"sharding_{n}"] == ["slab"]
    assert sharded[f"frames_{n}"] == 3
    # The fields agree to round-off: whole-joint sums (the well-mixed fluid's means) add the devices' partial
    # sums in another order.
    assert sharded[f"max_rel_diff_{n}"] < 1e-14, sharded


@pytest.mark.parametrize("n", [2, 4])
def test_the_split_step_exchanges_halos_and_gathers_no_field(sharded, n):
    assert sharded[f"collective_permutes_{n}"] > 0, sharded
    assert sharded[f"all_gathers_{n}"] == 0, sharded


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
    assert_same_runs(out, study, points=range(3))
