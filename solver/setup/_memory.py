"""What this machine can hold: the memory budget the caller gives ``Solver.trajectory``.

Read at the edge (the command line, a fit), never inside the numerics.
"""

from __future__ import annotations

import jax

from fields import host_memory_bytes

#: share of the device's memory that ``trajectory(checkpoint="auto")`` lets the stored step
#: states take (:func:`checkpoint_budget_bytes`)
CHECKPOINT_SHARE = 0.25


def device_memory_bytes(device=None) -> int:
    """The memory of ``device`` (default: JAX's default device): a GPU's allocator ``bytes_limit`` (0 where
    it reports none); for a CPU the smallest of the host's RAM, the cgroup's limit and what is available now."""
    if device is None:
        default = jax.config.jax_default_device  # type: ignore[attr-defined]  # jax's options are untyped
        device = jax.devices(default)[0] if isinstance(default, str) else default or jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # a backend without memory_stats
            stats = {}
        return int(stats.get("bytes_limit", 0))
    return host_memory_bytes()


def checkpoint_budget_bytes(device=None) -> int:
    """Bytes ``Solver.trajectory(checkpoint="auto")`` may spend on stored step states:
    :data:`CHECKPOINT_SHARE` of :func:`device_memory_bytes` (0, so one state per frame, for a GPU that
    reports no limit)."""
    return int(CHECKPOINT_SHARE * device_memory_bytes(device))
