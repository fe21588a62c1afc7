"""One run over the devices of several processes: ``srun -n 2 synovia run ... run.devices=2`` on the real
single-node cluster (the ``slurm_cluster`` fixture), each process with one CPU device. The processes join
through ``jax.distributed`` (solver.study.start_processes), process 0 writes the file, and its frames are
those of one process with one device to round-off (the whole-joint means add the processes' partial sums in
another order)."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from solver import RunFile

pytestmark = [pytest.mark.cluster, pytest.mark.filterwarnings("ignore:grid spacing .* under-resolved:UserWarning")]

ROOT = Path(__file__).resolve().parents[2]
KNEE3D = str(ROOT / "configs" / "knee3d.toml")
SETS = ["geometry.spacing_mm=1.25", "run.t_end_h=2", "run.output_interval_h=1", "run.precision=float64"]


def _run(command, env, timeout=400):
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_srun_with_two_processes_runs_one_grid_over_both(slurm_cluster, tmp_path):
    env = {**os.environ, **slurm_cluster.env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    sets = [a for s in SETS for a in ("--set", s)]
    one = _run(["synovia", "run", KNEE3D, *sets, "-o", str(tmp_path / "one.h5"), "-q"], env)
    assert one.returncode == 0, one.stderr[-2000:]
    # run.devices = 2 with one device per process: refused unless the two processes' devices are joined
    two_h5 = str(tmp_path / "two.h5")
    two = _run(["srun", "-n", "2", "synovia", "run", KNEE3D, *sets, "--set", "run.devices=2", "-o", two_h5, "-q"], env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("wrote '") == 1, two.stderr[-3000:]  # process 0 alone reports and writes
    files = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert files == ["one.h5", "one.xdmf", "two.h5", "two.xdmf"]
    with RunFile.open(tmp_path / "one.h5") as a, RunFile.open(tmp_path / "two.h5") as b:
        assert a.n_frames == b.n_frames == 3
        np.testing.assert_array_equal(a.time, b.time)
        for k in range(a.n_frames):
            fa, fb = a.fields(k), b.fields(k)
            for name in fa:
                scale = np.abs(fa[name]).max()
                np.testing.assert_allclose(fb[name], fa[name], rtol=1e-14, atol=1e-14 * scale, err_msg=f"frame {k} {name}")


def test_resume_in_a_multi_process_step_is_refused(slurm_cluster, tmp_path):
    env = {**os.environ, **slurm_cluster.env, "JAX_PLATFORMS": "cpu"}
    done = _run(["srun", "-n", "2", "synovia", "run", "--resume", str(tmp_path / "x.h5")], env)
    assert done.returncode == 2
    assert "--resume in a multi-process job step: resume it with one process" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "taken, says",
    [("taken.h5", "exists; pass --overwrite to replace it"), ("taken.xdmf", "would be replaced by the run's ParaView sidecar")],
)
def test_an_existing_output_file_is_refused_by_every_process(slurm_cluster, tmp_path, taken, says):
    # the later process sees the same files and agrees with process 0 before anything is created: one
    # message, exit 2 from both, no wait for a process that already gave up
    env = {**os.environ, **slurm_cluster.env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    (tmp_path / taken).write_bytes(b"the user's file")
    sets = [a for s in SETS for a in ("--set", s)]
    done = _run(
        ["srun", "-n", "2", "synovia", "run", KNEE3D, *sets, "--set", "run.devices=2", "-o", str(tmp_path / "taken.h5")], env
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count(says) == 1, done.stderr[-3000:]  # process 0 says it, once
    assert "Traceback" not in done.stderr
    assert (tmp_path / taken).read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [taken]


def test_srun_with_reproducible_sums_is_bit_identical_to_one_process(slurm_cluster, tmp_path):
    # run.reproducible adds every grid sum pairwise in an order fixed by the shape, so the processes'
    # partial sums give one process's frames to the bit
    env = {**os.environ, **slurm_cluster.env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    sets = [a for s in [*SETS, "run.reproducible=true", "initial.start=baseline"] for a in ("--set", s)]
    one = _run(["synovia", "run", KNEE3D, *sets, "-o", str(tmp_path / "one.h5"), "-q"], env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run(
        ["srun", "-n", "2", "synovia", "run", KNEE3D, *sets, "--set", "run.devices=2", "-o", str(tmp_path / "two.h5"), "-q"], env
    )
    assert two.returncode == 0, two.stderr[-3000:]
    with RunFile.open(tmp_path / "one.h5") as a, RunFile.open(tmp_path / "two.h5") as b:
        assert a.n_frames == b.n_frames == 3
        np.testing.assert_array_equal(a.time, b.time)
        for k in range(a.n_frames):
            for name, values in a.fields(k).items():
                np.testing.assert_array_equal(b.fields(k)[name], values, err_msg=f"frame {k} {name}")
        for name, series in a.summary.items():
            np.testing.assert_array_equal(b.summary[name], series, err_msg=name)
