"""Smoke test of the benchmark suite: the smallest forward case end to end, in a subprocess.

It runs without py-pde or numba (the references are not part of ``--only smallest``).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_smallest(tmp_path):
    out = tmp_path / "bench"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "smallest", "--out", str(out), "--no-plots"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 60, f"smoke benchmark took {elapsed:.0f} s"
    result = json.loads((out / "results.json").read_text())
    forward = [r for r in result["records"] if r["case"] == "forward" and "skipped" not in r]
    assert forward, result["records"]
    assert all(r["cell_updates_per_s"] > 0 and r["finite"] for r in forward)
    assert result["machine"]["device"] in ("CPU", "GPU") or result["machine"]["device"]
    markdown = (out / "results.md").read_text()
    assert "cell-updates/s" in markdown
    assert forward[0]["grid"] in markdown
