"""Every Python snippet in the README, docs/ and the packages' docstrings runs, so none can rot;
none of them, nor any prose there, names a private module; and every file of the repository that
the docs, docstrings or comments name is there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = [ROOT / p / "__init__.py" for p in ("fields", "solver", "inference")]
#: Prose a user reads that must not send them to private modules.
PROSE = [*DOCS, ROOT / "benchmarks" / "README.md"]
#: A path into the repository, as docs and comments write it: solver/physics/_rhs.py, tests/io/...
REPO_PATH = re.compile(r"\b(?:fields|solver|inference|benchmarks|tests|configs|docs)/[\w/.-]*\w\.(?:py|toml|md)\b")

#: A fenced block; ``<!-- snippet: slow -->`` on the line before puts it in the slow suite.
FENCED = re.compile(r"(?:<!-- snippet: (?P<tag>\w+) -->\n)?```python\n(?P<code>.*?)```", re.S)
#: An indented block after a line ending in "::" (reStructuredText), in a docstring.
LITERAL = re.compile(r"::\n\n(?P<code>(?:(?: {4}.*)?\n)+)")
#: A dotted name with a private component in one of the packages: solver._x, solver.io._runfile, ...
PRIVATE = re.compile(r"\b(?:fields|solver|inference)(?:\.[A-Za-z]\w*)*\._\w+")


def _docstring(path: Path) -> str:
    text = path.read_text()
    return text[: text.index('"""', 3) + 3] if text.startswith('"""') else ""


def snippets() -> list:
    out = []
    for path in DOCS:
        for k, m in enumerate(FENCED.finditer(path.read_text())):
            marks = [pytest.mark.slow] if m["tag"] == "slow" else []
            out.append(pytest.param(m["code"], id=f"{path.name}[{k}]", marks=marks))
    for path in PACKAGES:
        for k, m in enumerate(LITERAL.finditer(_docstring(path))):
            code = "\n".join(line[4:] for line in m["code"].splitlines())
            out.append(pytest.param(code, id=f"{path.parent.name}/__init__[{k}]"))
    return out


def test_there_are_snippets():
    ids = [p.id for p in snippets()]
    assert any(i.startswith("README.md") for i in ids) and any(i.startswith("solver/") for i in ids), ids


@pytest.mark.parametrize("code", snippets())
def test_snippet_runs(code, tmp_path):
    """The snippet as a fresh program from the repository root (as a reader would run it)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"snippet failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("path", PROSE + PACKAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_no_private_module(path):
    text = path.read_text() if path.suffix == ".md" else _docstring(path)
    assert not PRIVATE.findall(text), f"{path.name} names private modules: {sorted(set(PRIVATE.findall(text)))}"


def test_files_named_in_docs_and_code_exist():
    """A moved file leaves no stale pointer behind: README, docs, benchmarks' README and every
    Python file's docstrings and comments name only files that are there."""
    sources = [*PROSE, *(p for p in sorted(ROOT.glob("*/**/*.py")) if ".venv" not in p.parts)]
    named = {(src.relative_to(ROOT), m) for src in sources for m in REPO_PATH.findall(src.read_text())}
    assert len(named) > 20, "the pattern finds the docs' file names"
    missing = sorted(f"{src}: {name}" for src, name in named if not (ROOT / name).exists())
    assert not missing, missing
