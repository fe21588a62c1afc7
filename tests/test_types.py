"""The packages type-check: mypy, configured in pyproject.toml ([tool.mypy]), finds no errors in
fields, solver and inference (they ship a py.typed marker, so users' type checkers read their
annotations)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (the dev extra has it)")
def test_the_packages_type_check():
    # the packages and options come from pyproject.toml; the cache (.mypy_cache) makes a rerun take seconds
    done = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout[-8000:]}{done.stderr[-2000:]}"


@pytest.mark.parametrize("package", ["fields", "solver", "inference"])
def test_the_packages_are_marked_typed(package):
    assert (ROOT / package / "py.typed").is_file(), f"{package}/py.typed (PEP 561) is missing"
