"""A real single-node SLURM cluster for the tests marked ``cluster`` (see /work/shared/CLUSTER.md).

``slurm_cluster`` (session scope) starts munged, slurmctld and slurmd with every file (key, config, state,
spool, logs, PID files) under one temporary directory, and stops them by their PID files at teardown
(benchmarks._slurm, which the ``cluster`` benchmark case uses too). It needs root and the Debian packages
slurmctld, slurmd, slurm-client and munge; without them it skips.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from benchmarks._slurm import ClusterStartError, SlurmCluster, running_cluster, unavailable


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs a real SLURM cluster started by the tests (root, slurm packages)")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A running single-node cluster with one partition, ``debug``; ``SLURM_CONF`` is set for the session."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    previous = os.environ.get("SLURM_CONF")
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_cluster(tmp_path_factory.mktemp("slurm")))
        except ClusterStartError as err:
            pytest.fail(str(err), pytrace=False)
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous
