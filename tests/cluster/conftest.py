"""A real single-node SLURM cluster for the tests marked ``cluster`` (see /work/shared/CLUSTER.md).

``slurm_cluster`` (session scope) starts munged, slurmctld and slurmd with every file (key, config, state,
spool, logs, PID files) under one temporary directory, and stops them by their PID files at teardown. It
needs root and the Debian packages slurmctld, slurmd, slurm-client and munge; without them it skips.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PARTITION = "debug"
#: Job states after which a job runs no more (squeue's names).
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
# Stopped in this order: slurmd first, munged last (both SLURM daemons authenticate through it).
DAEMONS = ("slurmd", "slurmctld", "munged")


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs a real SLURM cluster started by the tests (root, slurm packages)")


@dataclass
class SlurmCluster:
    """A running cluster: clients reach it through ``env`` (``SLURM_CONF``)."""

    conf: Path
    root: Path
    partition: str = PARTITION
    env: dict[str, str] = field(default_factory=dict)

    def wait(self, job_id: str | int, timeout: float = 120) -> None:
        """Return once job ``job_id`` (every task, for an array job) has left the queue.

        Polls ``squeue`` every 0.25 s: ``sbatch --wait`` polls far more slowly."""
        deadline = time.monotonic() + timeout
        while True:
            # every state, ended ones included (for MinJobAge): a job being requeued is briefly in a state
            # (REQUEUED) that squeue's default listing leaves out, as if it had ended
            out = subprocess.run(
                ["squeue", "-h", "-r", "-t", "all", "-j", str(job_id), "-o", "%i %T"],
                env={**os.environ, **self.env},
                capture_output=True,
                text=True,
            )
            states = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
            if all(state in ENDED for state in states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still queued after {timeout} s:\n{out.stdout}")
            time.sleep(0.25)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(no log: {err})"


def _write_conf(root: Path) -> Path:
    cpus = os.cpu_count() or 1
    memory = _mem_total_mb() - 512
    conf = root / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName=synovia-test
SlurmctldHost=localhost
# Free ports rather than 6817/6818: another session's test cluster may be running beside this one.
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={root / "munge" / "munge.socket.2"}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300  # ended jobs stay known to scontrol for 5 min; squeue lists only queued ones
# Without a default, a job that asks no memory is given the whole node's, and jobs then run one at a time.
DefMemPerCPU={memory // cpus}
# Batch jobs are otherwise scheduled at most every 3 s (batch_sched_delay): each would wait up to 3 s to start.
SchedulerParameters=batch_sched_delay=0
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _start_munged(root: Path) -> None:
    """munged runs as user munge: it refuses a key or a socket directory that others may write."""
    munge = pwd.getpwnam("munge")
    folder = root / "munge"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # not 700: the SLURM daemons and the jobs connect to its socket
    os.chown(folder, munge.pw_uid, munge.pw_gid)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chown(key, munge.pw_uid, munge.pw_gid)
    key.chmod(0o400)
    log = folder / "munged.log"  # user munge may not write root's log folder
    done = subprocess.run(
        [
            "munged",
            f"--key-file={key}",
            f"--socket={folder / 'munge.socket.2'}",
            f"--pid-file={folder / 'munged.pid'}",
            f"--log-file={log}",
            f"--seed-file={folder / 'munged.seed'}",
        ],
        user=munge.pw_uid,
        group=munge.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"munged failed to start ({done.returncode}): {done.stderr}\n{_tail(log)}", pytrace=False)


def _pid_files(root: Path) -> dict[str, Path]:
    return {
        "slurmd": root / "run" / "slurmd.pid",
        "slurmctld": root / "run" / "slurmctld.pid",
        "munged": root / "munge" / "munged.pid",
    }


def _alive(pid: int, name: str) -> bool:
    """Whether process ``pid`` runs ``name``: guards against a stale PID file naming some other process."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


def _stop(root: Path) -> None:
    """Stop the daemons by their PID files: SIGTERM, up to 10 s, then SIGKILL."""
    for name in DAEMONS:
        try:
            pid = int(_pid_files(root)[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        for sig, patience in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if not _alive(pid, name):
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + patience
            while _alive(pid, name) and time.monotonic() < deadline:
                time.sleep(0.05)


def _cancel_all(cluster: SlurmCluster) -> None:
    """Cancel the jobs still queued, so that no job process outlives slurmd."""
    env = {**os.environ, **cluster.env}
    jobs = subprocess.run(["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True).stdout.split()
    if jobs:
        subprocess.run(["scancel", *jobs], env=env, capture_output=True)
        for job in jobs:
            with contextlib.suppress(TimeoutError):
                cluster.wait(job, timeout=15)


def _open_path(root: Path) -> dict[Path, int]:
    """munged insists that everyone may traverse the folders above its socket, and pytest makes them mode 700:
    add execute bits (not read: nobody may list them) and return the old modes, to restore at teardown."""
    search = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    modes = {}
    for parent in root.parents:
        mode = stat.S_IMODE(parent.stat().st_mode)
        if mode & search == search:
            break
        modes[parent] = mode
        parent.chmod(mode | search)
    return modes


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under ``root`` and wait until the node is idle; stop them on exit."""
    for sub in ("state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    conf = _write_conf(root)
    cluster = SlurmCluster(conf=conf, root=root, env={"SLURM_CONF": str(conf)})
    env = {**os.environ, **cluster.env}
    modes = _open_path(root)
    started = False
    try:
        _start_munged(root)
        for daemon, args in (("slurmctld", []), ("slurmd", ["-N", "localhost"])):
            done = subprocess.run([daemon, "-f", str(conf), *args], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                log = _tail(root / "log" / f"{daemon}.log")
                pytest.fail(f"{daemon} failed to start ({done.returncode}): {done.stderr}\n{log}", pytrace=False)
        deadline = time.monotonic() + 30
        state = ""
        while state != "idle":
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {d}.log\n{_tail(root / 'log' / f'{d}.log')}" for d in ("slurmctld", "slurmd"))
                pytest.fail(f"node not idle after 30 s (sinfo: {state!r})\n{logs}", pytrace=False)
            time.sleep(0.2)
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
        started = True
        yield cluster
    finally:
        try:
            if started:  # with no controller, squeue would retry for a long time
                _cancel_all(cluster)
        finally:
            _stop(root)
            for parent, mode in modes.items():
                parent.chmod(mode)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A running single-node cluster with one partition, ``debug``; ``SLURM_CONF`` is set for the session."""
    if any(shutil.which(tool) is None for tool in ("slurmctld", "slurmd", "sbatch", "munged")):
        pytest.skip("SLURM not installed: apt-get install slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        pytest.skip("needs root to start munged and slurmd")
    previous = os.environ.get("SLURM_CONF")
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous
