"""The shape of the code: imports run one way (import-linter's contracts in pyproject.toml) and no
module imports a private module of another package."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fields", "solver", "inference")
#: Code outside the packages that must use their public API too.
USERS = ("benchmarks", "docs/figures")
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(LINT is None, reason="import-linter is not installed (the dev extra has it)")
def test_imports_run_one_way():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.skipif(LINT is None, reason="import-linter is not installed (the dev extra has it)")
@pytest.mark.parametrize(
    "module, line",
    [("solver/physics/_rhs.py", "from solver.setup import Config"), ("fields/_grid.py", "import solver")],
    ids=["physics imports setup", "fields imports solver"],
)
def test_contracts_catch_a_wrong_way_import(tmp_path, module, line):
    """A copy of the packages with one import the wrong way breaks a contract."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    done = _lint(tmp_path)
    assert done.returncode != 0 and "broken" in done.stdout, done.stdout[-2000:]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every module or name imported, relative imports resolved."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def private_imports(path: Path) -> list[str]:
    """Imports in ``path`` of a private module (or name) ``P._x`` of a package P it is not inside."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for line, name in _imported(tree, module, path.name == "__init__.py"):
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            continue
        for k, part in enumerate(parts[1:], start=1):
            if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):  # not __version__
                owner = ".".join(parts[:k])
                if not (module == owner or module.startswith(owner + ".")):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
                break
    return bad


def _sources() -> list[Path]:
    return [p for d in (*PACKAGES, *USERS) for p in sorted((ROOT / d).rglob("*.py")) if "__pycache__" not in p.parts]


def test_no_private_module_of_another_package():
    bad = [b for p in _sources() for b in private_imports(p)]
    assert not bad, "private modules imported from outside their package:\n" + "\n".join(bad)


def test_private_import_check_can_fail():
    # a module of solver.time importing a private module of solver.physics, and one of inference
    # reaching into solver.setup's: both flagged; solver.time's own private modules are not
    probe = ROOT / "solver" / "time" / "_probe_private.py"
    probe.write_text(
        "from ..physics._rhs import rhs\nfrom solver.setup import _checks\nfrom . import _solver\nfrom ._plan import StepPlan\n"
    )
    try:
        bad = private_imports(probe)
    finally:
        probe.unlink()
    assert [b.split(": ")[1] for b in bad] == ["solver.physics._rhs.rhs", "solver.setup._checks"]
