"""The memory budget a caller gives Solver.trajectory(checkpoint="auto")."""

import os

from solver import checkpoint_budget_bytes
from solver.setup import host_memory_bytes


class Device:
    def __init__(self, platform, stats):
        self.platform, self.stats = platform, stats

    def memory_stats(self):
        return self.stats


def test_checkpoint_budget_is_a_share_of_the_device_memory():
    assert checkpoint_budget_bytes(Device("gpu", {"bytes_limit": 80 * 2**30})) == 20 * 2**30
    assert checkpoint_budget_bytes(Device("gpu", {})) == 0  # no limit reported: one state per frame
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < host_memory_bytes() <= host
    budget = checkpoint_budget_bytes()  # this CPU: at most a quarter of its RAM
    assert 0 < budget <= host // 4
