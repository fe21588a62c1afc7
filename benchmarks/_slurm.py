"""A real single-node SLURM cluster on this machine, for the ``cluster`` benchmark case and the tests marked
``cluster`` (tests/cluster/conftest.py); see /work/shared/CLUSTER.md.

:func:`running_cluster` starts munged, slurmctld and slurmd with every file (key, config, state, spool, logs,
PID files) under one directory, and stops them by their PID files. It needs root and the Debian packages
slurmctld, slurmd, slurm-client and munge (:func:`unavailable` says which is missing).

slurmd is started by a small reaper process (:data:`REAPER`) that asks the kernel to make it the parent of
every process orphaned below it (``PR_SET_CHILD_SUBREAPER``): slurmd once it daemonizes, and the slurmstepd
that slurmd starts for each job and job step (slurmd forks twice so that they are orphans). A slurmstepd waits
for the processes of its step, so the resource usage that ``wait4`` returns when the reaper collects it holds
their CPU time too. The reaper writes one line per process it collects to ``run/reaped.jsonl``:
:meth:`SlurmCluster.reaped` reads them. No accounting (``sacct``) is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PARTITION = "debug"
#: Job states after which a job runs no more (squeue's names).
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
# Stopped in this order: slurmd first, munged last (both SLURM daemons authenticate through it).
DAEMONS = ("slurmd", "slurmctld", "munged")
TOOLS = ("slurmctld", "slurmd", "sbatch", "munged")

#: ``python -c REAPER LOG COMMAND...``: run COMMAND (a daemon that forks and returns) as the subreaper of what
#: it leaves behind, print its exit status and stderr as one JSON line, then collect every orphan until none is
#: left, logging each one's name and CPU time (its own and that of the processes it waited for).
REAPER = r"""
import ctypes, json, os, subprocess, sys, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    print(json.dumps({"rc": 1, "stderr": "prctl(PR_SET_CHILD_SUBREAPER) failed"}), flush=True)
    sys.exit(1)
log = open(sys.argv[1], "a", buffering=1)
done = subprocess.run(sys.argv[2:], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "stderr": done.stderr}), flush=True)
while True:
    try:
        pid = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT).si_pid
    except ChildProcessError:
        break
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = "?"
    pid, status, ru = os.wait4(pid, 0)
    row = {"pid": pid, "comm": comm, "user_s": ru.ru_utime, "system_s": ru.ru_stime, "time": time.time()}
    log.write(json.dumps(row) + "\n")
"""


class ClusterStartError(RuntimeError):
    """A daemon failed to start, or the node did not become idle; the message holds the logs' tails."""


def unavailable() -> str | None:
    """Why no cluster can be started here (packages missing, not root), or None."""
    if any(shutil.which(tool) is None for tool in TOOLS):
        return "SLURM not installed: apt-get install slurmctld slurmd slurm-client munge"
    if os.geteuid() != 0:
        return "needs root to start munged and slurmd"
    return None


@dataclass
class SlurmCluster:
    """A running cluster: clients reach it through ``env`` (``SLURM_CONF``)."""

    conf: Path
    root: Path
    partition: str = PARTITION
    env: dict[str, str] = field(default_factory=dict)
    reaper_pid: int | None = None

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

    def reaped(self) -> list[dict]:
        """The processes the reaper has collected, oldest first: ``pid``, ``comm`` (its name), ``user_s`` and
        ``system_s`` (its CPU time and that of the processes it waited for) and ``time`` (when, epoch s)."""
        try:
            lines = (self.root / "run" / "reaped.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def running(self) -> int:
        """Processes the reaper has yet to collect, slurmd aside: slurmstepd and what its jobs left behind
        (running, or ended and not yet waited for)."""
        if self.reaper_pid is None:
            return 0
        try:
            slurmd = int((self.root / "run" / "slurmd.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            slurmd = None
        count = 0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != slurmd:
                info = _proc_stat(int(entry.name))
                count += info is not None and info["ppid"] == self.reaper_pid
        return count

    def settle(self, timeout: float = 30) -> None:
        """Wait until the reaper has collected every slurmstepd and what its job left behind (a job leaves the
        queue just before its slurmstepd exits)."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise TimeoutError(f"job processes still running {timeout} s after their jobs ended")
            time.sleep(0.05)
        time.sleep(0.1)  # the reaper writes its line just after collecting the process

    def daemon_cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of each daemon (user + system, its own and that of the processes it waited for)."""
        out = {}
        for name, path in _pid_files(self.root).items():
            try:
                info = _proc_stat(int(path.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                info = None
            out[name] = info["cpu_s"] if info is not None and info["comm"] == name else 0.0
        return out


def _proc_stat(pid: int) -> dict | None:
    """A process's name, parent and CPU seconds (utime + stime + cutime + cstime) from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()  # rest[0] is field 3 (state)
    ticks = sum(int(v) for v in rest[11:15])
    return {"comm": comm, "ppid": int(rest[1]), "cpu_s": ticks / os.sysconf("SC_CLK_TCK")}


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
        raise ClusterStartError(f"munged failed to start ({done.returncode}): {done.stderr}\n{_tail(log)}")


def _start_slurmd(root: Path, conf: Path, env: dict[str, str]) -> subprocess.Popen:
    """slurmd under the reaper (:data:`REAPER`); the reaper, once slurmd has daemonized."""
    argv = [sys.executable, "-c", REAPER, str(root / "run" / "reaped.jsonl"), "slurmd", "-f", str(conf), "-N", "localhost"]
    with open(root / "log" / "reaper.log", "ab") as err:
        reaper = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
    with reaper.stdout:
        line = reaper.stdout.readline()
    try:
        done = json.loads(line)
    except ValueError:
        done = {"rc": reaper.wait(), "stderr": f"the reaper printed {line!r}\n{_tail(root / 'log' / 'reaper.log')}"}
    if done["rc"] != 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            reaper.wait(timeout=10)
        raise ClusterStartError(f"slurmd failed to start ({done['rc']}): {done['stderr']}\n{_tail(root / 'log' / 'slurmd.log')}")
    return reaper


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
    """munged insists that everyone may traverse the folders above its socket (pytest makes them mode 700):
    add execute bits (not read: nobody may list them) and return the old modes, to restore at the end."""
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
    """Start munged, slurmctld and slurmd under ``root`` and wait until the node is idle; stop them on exit.

    Raises :class:`ClusterStartError` when a daemon fails to start or the node is not idle within 30 s."""
    root = Path(root)
    for sub in ("state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    conf = _write_conf(root)
    cluster = SlurmCluster(conf=conf, root=root, env={"SLURM_CONF": str(conf)})
    env = {**os.environ, **cluster.env}
    modes = _open_path(root)
    started = False
    reaper = None
    try:
        _start_munged(root)
        done = subprocess.run(["slurmctld", "-f", str(conf)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            log = _tail(root / "log" / "slurmctld.log")
            raise ClusterStartError(f"slurmctld failed to start ({done.returncode}): {done.stderr}\n{log}")
        reaper = _start_slurmd(root, conf, env)
        cluster.reaper_pid = reaper.pid
        deadline = time.monotonic() + 30
        state = ""
        while state != "idle":
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {d}.log\n{_tail(root / 'log' / f'{d}.log')}" for d in ("slurmctld", "slurmd"))
                raise ClusterStartError(f"node not idle after 30 s (sinfo: {state!r})\n{logs}")
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
            if reaper is not None:  # it ends once slurmd and every slurmstepd have ended
                try:
                    reaper.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    reaper.kill()
                    reaper.wait()
            for parent, mode in modes.items():
                parent.chmod(mode)
