"""``sweep --jobs N`` on a node with GPUs: each worker sees one GPU of the node's (``CUDA_VISIBLE_DEVICES``),
dealt round-robin, within the GPUs this process was given. The dealing and a worker's start are checked
here on a CPU; no GPU is needed for either."""

import multiprocessing
import os

import pytest

from solver.study import _study


def test_workers_get_the_gpus_round_robin():
    assert _study.deal_gpus(2, ["0", "1"]) == ["0", "1"]
    assert _study.deal_gpus(3, ["0", "1"]) == ["0", "1", "0"]  # more workers than GPUs: they share
    assert _study.deal_gpus(2, ["5"]) == ["5", "5"]
    assert _study.deal_gpus(2, []) == [None, None]  # a CPU node: nothing set


def test_the_gpus_are_the_ones_this_process_was_given(monkeypatch):
    import jax

    monkeypatch.setattr(jax, "local_devices", lambda backend=None: ["gpu", "gpu"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # SLURM gave this job the node's GPUs 2 and 3
    assert _study.local_gpus() == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _study.local_gpus() == ["0", "1"]


def test_no_gpu_backend_means_no_gpus():
    assert _study.local_gpus() == []  # this machine's JAX has a CPU only


@pytest.mark.parametrize("gpus, expected", [(["2", "3"], ["2", "3", "2"]), ([], [None, None, None])])
def test_each_worker_takes_the_next_gpu_as_it_starts(monkeypatch, gpus, expected):
    monkeypatch.setattr(_study, "_ignore_interrupt", lambda: None)  # keep this test process's Ctrl-C
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in expected:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        _study._start_worker(counter, gpus)
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert seen == expected
    assert counter.value == len(expected)
