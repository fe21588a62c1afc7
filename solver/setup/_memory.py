"""What this machine can hold: the memory budget the caller gives ``Solver.trajectory``.

Read at the edge (the command line, a fit), never inside the numerics.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

#: share of the device's memory that ``trajectory(checkpoint="auto")`` lets the stored step
#: states take (:func:`checkpoint_budget_bytes`)
CHECKPOINT_SHARE = 0.25


def checkpoint_budget_bytes(device=None) -> int:
    """Bytes ``Solver.trajectory(checkpoint="auto")`` may spend on stored step states:
    :data:`CHECKPOINT_SHARE` of the memory of ``device`` (default: JAX's default device).

    A GPU's memory is its allocator's ``bytes_limit`` (0, so one state per frame, where it reports
    none); a CPU's the smallest of the host's RAM, the cgroup's limit and what is available now.
    """
    if device is None:
        default = jax.config.jax_default_device
        device = jax.devices(default)[0] if isinstance(default, str) else default or jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # a backend without memory_stats
            stats = {}
        return int(CHECKPOINT_SHARE * stats.get("bytes_limit", 0))
    return int(CHECKPOINT_SHARE * host_memory_bytes())


def host_memory_bytes() -> int:
    """The host memory this process may use: the least of the RAM, the cgroup's limit and what is available now."""
    sizes = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            sizes.append(int(Path(path).read_text().split()[0]))
        except (OSError, ValueError, IndexError):  # absent, or "max"
            pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                sizes.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(sizes)
