"""The ``slurm_cluster`` fixture runs batch jobs, job arrays, and cancels jobs."""

import subprocess
import time

import pytest

pytestmark = pytest.mark.cluster


def sbatch(*args: str) -> str:
    """Submit a batch job (SLURM_CONF comes from the fixture) and return its id."""
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"


def test_batch_job_writes_its_output(slurm_cluster, tmp_path):
    out = tmp_path / "hello.out"
    job = sbatch("-p", slurm_cluster.partition, "-o", str(out), "--wrap", "echo hello")
    slurm_cluster.wait(job, timeout=60)
    assert out.read_text() == "hello\n"


def test_array_job_runs_every_task(slurm_cluster, tmp_path):
    job = sbatch("--array=0-3%2", "-o", str(tmp_path / "%a.out"), "--wrap", "echo $SLURM_ARRAY_TASK_ID")
    slurm_cluster.wait(job, timeout=60)
    assert {p.name: p.read_text() for p in tmp_path.glob("*.out")} == {f"{i}.out": f"{i}\n" for i in range(4)}


def test_scancel_removes_a_running_job(slurm_cluster, tmp_path):
    job = sbatch("-o", str(tmp_path / "sleep.out"), "--wrap", "sleep 60")
    deadline = time.monotonic() + 30
    while subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.25)
    start = time.monotonic()
    subprocess.run(["scancel", job], check=True)
    slurm_cluster.wait(job, timeout=15)
    assert time.monotonic() - start < 15
