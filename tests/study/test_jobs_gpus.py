"""``sweep --jobs N`` on a node with GPUs: each worker sees its own GPUs of the node's
(``CUDA_VISIBLE_DEVICES``), as many as the points' ``run.devices``, dealt round-robin within the GPUs
this process was given, without this process opening any. The dealing, the count and a worker's start
are checked here with the GPUs described by the environment and a stand-in ``nvidia-smi``; no GPU is
needed."""

import multiprocessing
import os
import signal

import pytest

from solver.study import _study


def test_workers_get_the_gpus_round_robin():
    assert _study.deal_gpus(2, ["0", "1"]) == ["0", "1"]
    assert _study.deal_gpus(3, ["0", "1"]) == ["0", "1", "0"]  # more workers than GPUs: they share
    assert _study.deal_gpus(2, ["5"]) == ["5", "5"]
    assert _study.deal_gpus(2, []) == [None, None]  # a CPU node: nothing set


def test_points_split_over_several_gpus_get_that_many_each():
    assert _study.deal_gpus(2, ["0", "1", "2", "3"], per=2) == ["0,1", "2,3"]
    assert _study.deal_gpus(3, ["0", "1", "2", "3"], per=2) == ["0,1", "2,3", "0,1"]
    assert _study.deal_gpus(2, ["0", "1", "2"], per=2) == ["0,1", "0,1"]
    assert _study.deal_gpus(2, ["0"], per=2) == [None, None]  # too few: every GPU visible, the run says why


def test_the_gpus_are_the_ones_this_process_was_given(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # SLURM gave this job the node's GPUs 2 and 3
    assert _study.local_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # none given
    assert _study.local_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    smi = tmp_path / "nvidia-smi"  # the driver's tool lists the node's GPUs
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert _study.local_gpus() == ["0", "1"]
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # JAX told to use the CPU: no GPUs to deal
    assert _study.local_gpus() == []


def test_no_driver_means_no_gpus(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert _study.local_gpus() == []


@pytest.mark.parametrize(
    "gpus, per, expected, shared",
    [(["2", "3"], 1, ["2", "3", "2"], True), (["0", "1", "2"], 1, ["0", "1", "2"], False), ([], 1, [None] * 3, True)],
)
def test_each_worker_takes_the_next_gpus_as_it_starts(monkeypatch, gpus, per, expected, shared):
    monkeypatch.setattr(_study, "_ignore_interrupt", lambda: None)  # keep this test process's Ctrl-C
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # and its SIGTERM
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in expected:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
        _study._start_worker(counter, len(expected), gpus, per)
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        # workers sharing GPUs (or all of them) take no GPU memory up front; a worker alone on its GPU may
        assert (os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") == "false") == shared
    assert seen == expected
    assert counter.value == len(expected)
