"""Timing, memory and machine description shared by every case.

Timing: a case warms up (compiles) first, then times ``repeats`` calls that each end in
``jax.block_until_ready`` and reports the median (the machine may be shared and noisy).

Memory: the host's peak resident set size per case comes from ``VmHWM`` in
``/proc/self/status``, reset before the case by writing ``5`` to ``/proc/self/clear_refs``
(Linux); elsewhere ``resource.getrusage`` gives the process peak so far. On an accelerator,
``jax.devices()[0].memory_stats()['peak_bytes_in_use']`` is the device peak since start
(it cannot be reset, so it is reported as the peak so far); XLA's own estimate for one
compiled function (``compiled.memory_analysis()``) is reported as well.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import jax
import numpy as np


def now() -> float:
    return time.perf_counter()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def proc_field(path: str, key: str) -> str | None:
    """The value after ``key`` in a /proc file of ``key: value`` lines (None where unreadable)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _kib(value: str | None) -> int | None:
    """``"1234 kB"`` -> bytes."""
    return None if value is None else int(value.split()[0]) * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since the last reset where supported)."""
    peak = _kib(proc_field("/proc/self/status", "VmHWM:"))
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def device_peak_bytes() -> int | None:
    """Accelerator peak bytes in use since start (None on CPU or when not reported)."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return None
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    value = stats.get("peak_bytes_in_use")
    return int(value) if value is not None else None


def compiled_memory(compiled) -> dict:
    """XLA's memory analysis of one compiled function (bytes), where the backend gives it."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return {}
    if m is None:
        return {}
    out = {}
    for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes"):
        value = getattr(m, key, None)
        if value is not None:
            out[key.replace("_size_in_bytes", "_bytes")] = int(value)
    return out


class Memory:
    """Context that records the host peak RSS (and device peak) over a block."""

    def __enter__(self):
        self.reset = reset_peak_rss()
        return self

    def __exit__(self, *exc):
        self.peak_rss = peak_rss_bytes()
        self.device_peak = device_peak_bytes()
        return False

    def as_dict(self) -> dict:
        return {
            "peak_rss_bytes": self.peak_rss,
            "peak_rss_scope": "case" if self.reset else "process",
            "device_peak_bytes": self.device_peak,
        }


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Median (and spread) of ``repeats`` timed calls after ``warmup`` untimed ones.

    ``fn`` must block until its result is ready (use :func:`jax.block_until_ready`).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append(now() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
    }


def blocking(fn: Callable[..., object], *args) -> Callable[[], object]:
    """A no-argument callable that runs ``fn(*args)`` and waits for the result."""

    def call():
        return jax.block_until_ready(fn(*args))

    return call


def _cpu_model() -> str:
    return proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()


def _total_memory() -> int | None:
    return _kib(proc_field("/proc/meminfo", "MemTotal:"))


def machine() -> dict:
    """What the numbers were measured on."""
    dev = jax.devices()[0]
    info = {
        "platform": dev.platform,
        "device": "GPU" if dev.platform == "gpu" else dev.platform.upper(),
        "device_kind": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "host_memory_bytes": _total_memory(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "os": platform.platform(),
    }
    try:
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            info["device_memory_bytes"] = int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001
        pass
    for name in ("numba", "py-pde"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    return info


def on_gpu() -> bool:
    return jax.devices()[0].platform == "gpu"
