"""Sampled sweep designs: seeded Latin hypercubes and scrambled Sobol sequences (scipy.stats.qmc) over
ranges, for studies too large for a grid."""

import csv
import tomllib
from pathlib import Path

import numpy as np
import pytest

from solver import ConfigError
from solver.cli import main
from solver.study import _study

BOX = {"geometry": {"kind": "box", "ndim": 2, "size_mm": [3.0, 3.0], "spacing_mm": 0.5},
       "run": {"t_end_h": 1.0, "output_interval_h": 0.5}, "initial": {"start": "baseline"}}  # fmt: skip
RANGES = {
    "parameters.chemotaxis": {"from": 0.01, "to": 0.1, "spacing": "log"},
    "parameters.recruitment_rate": {"from": 50.0, "to": 400.0},
    "injury.rate": {"from": 100.0, "to": 1000.0, "spacing": "linear"},
}


def sweep(combine="latin_hypercube", samples=16, seed=3, vary=RANGES, **extra):
    raw = {"scenario": BOX, "combine": combine, "samples": samples, "seed": seed, "vary": vary, **extra}
    return _study.sweep_from_dict({k: v for k, v in raw.items() if v is not None}, Path("."))


def unit_columns(s) -> np.ndarray:
    """Each point's values mapped back onto [0, 1) per key (log ranges in the logarithm)."""
    out = []
    for j, key in enumerate(s.keys):
        spec = RANGES[key]
        v = np.array([p[j] for p in s.values])
        if spec.get("spacing") == "log":
            v, low, high = np.log(v), np.log(spec["from"]), np.log(spec["to"])
        else:
            low, high = spec["from"], spec["to"]
        out.append((v - low) / (high - low))
    return np.array(out).T


@pytest.mark.parametrize("combine", ["latin_hypercube", "sobol"])
def test_each_key_is_stratified_over_its_range(combine):
    """16 points: in every key's range (its logarithm for a log range) each of 16 equal strata holds
    exactly one point: a Latin hypercube by construction, a scrambled Sobol net of 2^4 points by its
    balance. The values are applied to each point's config."""
    s = sweep(combine)
    assert len(s) == 16 and s.combine == combine
    unit = unit_columns(s)
    assert np.all((unit >= -1e-9) & (unit < 1 + 1e-9))
    for column in unit.T:
        assert sorted(np.floor(np.clip(column, 0, 1 - 1e-12) * 16).astype(int)) == list(range(16))
    for values, config in zip(s.values, s.configs):
        assert config.parameters["chemotaxis"] == values[0] and config.injury.rate == values[2]


def test_the_seed_fixes_the_points():
    assert sweep(seed=7).values == sweep(seed=7).values
    assert sweep(seed=7).values != sweep(seed=8).values
    assert sweep("sobol", seed=7).values == sweep("sobol", seed=7).values


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"samples": None}, ["'samples'", "latin_hypercube", "integer"]),
        ({"samples": 0}, ["'samples' = 0"]),
        ({"samples": True}, ["'samples' = True"]),
        ({"samples": 200_000}, ["'samples' = 200000", "100000"]),
        ({"seed": -1}, ["'seed' = -1", ">= 0"]),
        ({"vary": {"parameters.chemotaxis": [0.01, 0.1]}}, ["vary.parameters.chemotaxis", "samples ranges"]),
        ({"vary": {"parameters.chemotaxis": {"from": 0.01, "to": 0.1, "count": 4}}}, ["count", "'samples' instead"]),
        ({"vary": {"parameters.chemotaxis": {"from": 0.0, "to": 0.1, "spacing": "log"}}}, ["log range", "from and to > 0"]),
        ({"vary": {"parameters.chemotaxis": {"to": 0.1}}}, ["no 'from'"]),
        ({"combine": "grid", "vary": {"parameters.chemotaxis": [0.01]}}, ["'samples' is for a sampled design"]),
    ],
)
def test_a_bad_design_is_refused_naming_its_key(changes, words):
    args = {"combine": "latin_hypercube", "samples": 8, "seed": 1, "vary": RANGES, **changes}
    with pytest.raises(ConfigError) as err:
        sweep(**args)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_sampled_study_runs_and_records_its_design(tmp_path, capsys):
    """Through the command: 3 Latin-hypercube points of a small box, each a run; the manifest records the
    design (samples, seed, ranges) and summary.csv one row per point with its sampled values."""
    import tomli_w

    raw = {"scenario": BOX, "combine": "latin_hypercube", "samples": 3, "seed": 11,
           "vary": {"parameters.recruitment_rate": {"from": 50.0, "to": 400.0}}}  # fmt: skip
    (tmp_path / "s.toml").write_text(tomli_w.dumps(raw))
    assert main(["sweep", str(tmp_path / "s.toml"), "-o", str(tmp_path / "study"), "-q"]) == 0
    manifest = tomllib.loads((tmp_path / "study" / "study.toml").read_text())
    assert manifest["combine"] == "latin_hypercube"
    assert manifest["design"] == {"samples": 3, "seed": 11, "ranges": {"parameters.recruitment_rate": [50.0, 400.0, "linear"]}}
    rows = list(csv.DictReader(open(tmp_path / "study" / "summary.csv")))
    expected = [p["values"][0] for p in manifest["points"]]
    assert [float(r["parameters.recruitment_rate"]) for r in rows] == pytest.approx(expected, rel=1e-12)
    assert all(r["status"] == "complete" for r in rows) and len({r["parameters.recruitment_rate"] for r in rows}) == 3


def test_a_dry_run_lists_the_points_and_writes_nothing(tmp_path, capsys):
    import tomli_w

    raw = {"scenario": BOX, "combine": "sobol", "samples": 8, "seed": 2, "vary": RANGES}
    (tmp_path / "s.toml").write_text(tomli_w.dumps(raw))
    assert main(["sweep", str(tmp_path / "s.toml"), "-o", str(tmp_path / "study"), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.reader(out.splitlines()))
    assert rows[0] == ["point", *RANGES] and len(rows) == 9
    expected = sweep("sobol", samples=8, seed=2).values
    assert [tuple(float(x) for x in r[1:]) for r in rows[1:]] == [tuple(v) for v in expected]
    assert "8 points" in err and "nothing was run" in err
    assert not (tmp_path / "study").exists()


def test_the_shipped_design_loads():
    s = _study.load_sweep(Path(__file__).resolve().parents[2] / "configs" / "sweep_design_ra.toml")
    assert (len(s), s.combine, s.design["seed"]) == (64, "sobol", 1)
    doses = [v[2] for v in s.values]
    assert 0.0 <= min(doses) < 100.0 / 64 and 100.0 * (1 - 1 / 64) < max(doses) <= 100.0
