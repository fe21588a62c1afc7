"""The README and docs/ say what the code does."""

import re
from pathlib import Path

import pytest

from solver.setup.reference import config_reference, drug_reference, model_parameters

ROOT = Path(__file__).resolve().parents[2]

README = (ROOT / "README.md").read_text()
MODEL = (ROOT / "docs" / "model.md").read_text()
CONFIG = (ROOT / "docs" / "config.md").read_text()
FITTING = (ROOT / "docs" / "fitting.md").read_text()


def test_config_reference_is_the_generated_one():
    block = CONFIG.split("<!-- config-reference:start -->\n", 1)[1].split("\n<!-- config-reference:end -->", 1)[0]
    assert block == config_reference(), (
        "docs/config.md is stale: regenerate the block with `python -m solver.setup.reference > ...`"
    )


def test_model_reference_parameter_table_is_the_generated_one():
    block = MODEL.split("<!-- parameters:start -->\n", 1)[1].split("\n<!-- parameters:end -->", 1)[0]
    assert block == model_parameters(), "docs/model.md is stale: regenerate with `python -m solver.setup.reference model`"


def test_model_reference_drug_tables_are_the_generated_ones():
    block = MODEL.split("<!-- drugs:start -->\n", 1)[1].split("\n<!-- drugs:end -->", 1)[0]
    assert block == drug_reference(), "docs/model.md is stale: regenerate with `python -m solver.setup.reference drugs`"


def test_the_project_cites_its_own_model_reference():
    """The model reference is docs/model.md, in the project; nothing cites the shared notes' MODEL.md."""
    root = ROOT
    for path in [*root.glob("*.md"), *root.glob("docs/*.md"), *root.glob("*/*.py"), *root.glob("*/*/*.py"),
                 *root.glob("configs/**/*.toml"), *root.glob("configs/**/*.csv")]:  # fmt: skip
        if path.name != "test_docs.py":
            assert "MODEL.md" not in path.read_text(), path


def test_readme_opens_with_the_run_and_test_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    assert "synovia run configs/knee2d.toml" in commands[0]
    assert "pytest" in commands[1]
    for config in re.findall(r"configs/[\w]+\.toml", README):
        assert (ROOT / config).is_file(), config


def test_readme_python_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    code = re.findall(r"```python\n(.*?)\n```", README, flags=re.S)[0]
    code = code.replace('"run.t_end_h=24"', '"run.t_end_h=2"')  # same code, fewer frames
    exec(compile(code, "README.md", "exec"), {})


# ~30 s: runs with the slow validation (tests/inference/test_petab.py runs a fit command)
@pytest.mark.slow
def test_readme_fit_example_runs(monkeypatch):
    """The README's fitting example, cut to one iteration (same code path)."""
    import warnings

    monkeypatch.chdir(ROOT)
    code = re.findall(r"```python\n(.*?)\n```", README, flags=re.S)[1]
    code, cut = re.subn(r"max_iterations=\d+", "max_iterations=1", code)
    assert cut == 1, code
    code = code.replace("starts=2", "starts=1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README.md", "exec"), {})


def test_fitting_reference_lists_every_fit_setting():
    import dataclasses

    from inference._config import FitSection

    for field in dataclasses.fields(FitSection):
        assert f"`{field.name}`" in FITTING, field.name
