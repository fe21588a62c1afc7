"""The command line: runs to HDF5, resume after kill -9, info, config errors, divergence."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from solver import RunFile, RunWriter
from solver.cli import main
from tests.helpers import assert_close

REPO = Path(__file__).resolve().parents[2]

SMALL = textwrap.dedent(
    """
    [run]
    t_end_h = 3.0
    output_interval_h = 0.5
    precision = "float64"

    [geometry]
    kind = "joint"
    preset = "mcp"
    spacing_mm = 0.2

    [injury]
    centre_mm = [8.0, 2.6]
    radius_mm = 1.0
    """
)


def _write(tmp_path, text, name="case.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "solver.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_run_writes_every_frame_and_info_reads_it(tmp_path, capsys):
    cfg = _write(tmp_path, SMALL)
    out = tmp_path / "run.h5"
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 0
    with RunFile.open(out) as f:
        assert_close(f.time, np.arange(7) * 0.5, rtol=1e-15)
        assert f.species == ["tnf", "il1", "leukocytes", "cartilage"]
        assert f.field("tnf", -1).shape == f.grid.shape == f.labels.shape
        assert "synovial_fluid_leukocytes" in f.summary
        assert f.attrs["precision"] == "float64"
        assert "[injury]" in f.config_toml and "centre_mm" in f.config_toml
        tnf_peak = f.field("tnf", 2).max()
        assert tnf_peak > 50  # the injury released TNF
        # summary agrees with the stored field
        fluid = f.labels == 3
        assert_close(f.summary["synovial_fluid_tnf"][-1], f.field("tnf", -1)[fluid].mean(), rtol=1e-12)
    assert (tmp_path / "run.xdmf").is_file()
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "frames: 7" in text and "synovial_fluid_tnf" in text
    assert " pg/mL\n" in text  # a fraction's unit "1" is not printed after its value
    assert re.search(r"^  cartilage_integrity = [0-9.e+-]+$", text, re.MULTILINE), text
    assert "[injury]" not in text
    assert main(["info", str(out), "--config"]) == 0
    assert "[injury]" in capsys.readouterr().out


def test_outputs_default_to_the_inputs_name_and_progress_reads_cleanly(tmp_path):
    """run CONFIG -> CONFIG.h5, plot FILE -> FILE_figs/, sweep CONFIG -> CONFIG/, synth CONFIG ->
    CONFIG_observations.h5; the progress bar reads "synovia: 100%|"."""
    _write(tmp_path, SMALL.replace("t_end_h = 3.0", "t_end_h = 1.0"))
    done = _cli("run", "case.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "synovia: 100%|" in done.stderr
    assert (tmp_path / "case.h5").is_file()
    assert _cli("plot", "case.h5", "--dpi", "40", cwd=tmp_path).returncode == 0
    assert any((tmp_path / "case_figs").glob("*.png"))
    _write(tmp_path, 'scenario = "case.toml"\n[vary]\n"injury.rate" = [100.0]\n', "sw.toml")
    done = _cli("sweep", "sw.toml", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sw" / "study.toml").is_file() and (tmp_path / "sw" / "runs" / "point_000.h5").is_file()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    synth = ["synovia", "synth", "case.toml", "--times", "1"]
    done = subprocess.run(synth, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "case_observations.h5").is_file()


def test_existing_output_is_refused_without_overwrite(tmp_path, capsys):
    cfg = _write(tmp_path, SMALL.replace("t_end_h = 3.0", "t_end_h = 0.5"))
    out = tmp_path / "run.h5"
    out.write_bytes(b"precious")
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["run", str(cfg), "-o", str(out), "-q", "--overwrite"]) == 0


def test_output_in_a_missing_folder_is_refused_before_running(tmp_path, capsys):
    cfg = _write(tmp_path, SMALL)
    assert main(["run", str(cfg), "-o", str(tmp_path / "no" / "run.h5"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"folder '{tmp_path / 'no'}' does not exist" in err[0], err
    assert not (tmp_path / "no").exists()


def test_resume_after_kill_gives_the_same_final_state(tmp_path):
    # many small steps per frame so the run is still going when it is killed
    text = SMALL.replace("t_end_h = 3.0", "t_end_h = 6.0").replace('precision = "float64"', 'precision = "float64"\ndt_h = 0.001')
    cfg = _write(tmp_path, text)
    full, cut = tmp_path / "full.h5", tmp_path / "cut.h5"
    assert main(["run", str(cfg), "-o", str(full), "-q"]) == 0

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "solver.cli", "run", str(cfg), "-o", str(cut), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    frames = 0
    while time.time() < deadline and proc.poll() is None:
        if cut.exists():
            try:
                with RunFile.open(cut) as f:
                    frames = f.n_frames
            except OSError:
                frames = 0
            if frames >= 3:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    with RunFile.open(cut) as f:
        killed_at = f.n_frames
    assert 3 <= killed_at < 13

    assert main(["run", "--resume", str(cut), "-q"]) == 0
    with RunFile.open(full) as a, RunFile.open(cut) as b:
        assert_close(b.time, a.time, rtol=0)
        for species in a.species:
            for frame in range(a.n_frames):
                np.testing.assert_array_equal(b.field(species, frame), a.field(species, frame), err_msg=f"{species} {frame}")
        for name, values in a.summary.items():
            assert_close(b.summary[name], values, rtol=0, what=name)


def test_resume_of_a_file_cut_after_its_first_frame(tmp_path):
    cfg = _write(tmp_path, SMALL)
    full, cut = tmp_path / "full.h5", tmp_path / "cut.h5"
    assert main(["run", str(cfg), "-o", str(full), "-q"]) == 0
    with RunFile.open(full) as f:  # what a run killed before its second frame leaves
        layout = dict(grid=f.grid, labels=f.labels, species=f.species, summary_names=f.summary_names, dtype=f.dtype)
        with RunWriter(cut, attrs=f.attrs, **layout) as w:
            w.append(0.0, f.fields(0), {n: v[0] for n, v in f.summary.items()})
    assert main(["run", "--resume", str(cut), "-q"]) == 0
    with RunFile.open(full) as a, RunFile.open(cut) as b:
        assert_close(b.time, a.time, rtol=0)
        for species in a.species:
            np.testing.assert_array_equal(b.field(species, -1), a.field(species, -1), err_msg=species)


@pytest.mark.parametrize(
    "setting,message",
    [
        ("run.t_edn_h=5", "'run.t_edn_h' (did you mean 't_end_h'?)"),
        ("run.t_end_h=-1", "'run.t_end_h' = -1.0: must be > 0"),
        ('run.precision="float16"', "'run.precision' = 'float16': allowed values are float32, float64"),
        ('run.t_end_h="long"', "'run.t_end_h' = 'long': must be a number"),
        ("parameters.chemotaxsis=0.1", "'parameters.chemotaxsis' (did you mean 'chemotaxis'?)"),
        ("parameters.decay_tnf=-2", "'parameters.decay_tnf' = -2: must be >= 0"),
        ("tissues.synovium.diffusivity_tnf=-1", "'tissues.synovium.diffusivity_tnf' = -1: must be >= 0"),
        ("tissues.synovum.diffusivity_tnf=1", "'tissues.synovum' (did you mean 'synovium'?)"),
        ("initial.synovial_fluid.cartilage=2", "'initial.synovial_fluid.cartilage' = 2: must be in [0, 1]"),
        ('boundary.tnf.x_min={type="dirichet"}', "'boundary.tnf.x_min.type' = 'dirichet'"),
        ("geometry.ndim=4", "'geometry.ndim' = 4: allowed values are 2, 3"),
        ("injury.centre_mm=[1.0]", "'injury.centre_mm' = [1.0]: needs 2 coordinates"),
        ("run.dt_h=10.0", "run.dt_h = 10 h is above the stable limit"),
        ("run.output_interval_h=0.7", "'run.t_end_h' = 3.0: must be a whole multiple of run.output_interval_h"),
        ("runn.t_end_h=1", "'runn' (did you mean 'run'?)"),
    ],
)
def test_config_errors_exit_2_naming_the_key(tmp_path, capsys, setting, message):
    cfg = _write(tmp_path, SMALL)
    code = main(["run", str(cfg), "-o", str(tmp_path / "x.h5"), "-q", "--set", setting])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def test_config_error_from_the_command_has_no_traceback(tmp_path):
    cfg = _write(tmp_path, SMALL + "\n[drug]\nenabeld = true\n")
    result = _cli("run", cfg, "-o", tmp_path / "x.h5")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'drug.enabeld' (did you mean 'enabled'?)" in result.stderr
    bad = _write(tmp_path, "[run\n", "bad.toml")
    result = _cli("run", bad)
    assert result.returncode == 2 and "not valid TOML" in result.stderr and "Traceback" not in result.stderr


def test_divergence_stops_with_exit_3_and_keeps_frames(tmp_path, capsys):
    text = SMALL.replace('precision = "float64"', 'precision = "float32"')
    text += '\n[initial]\nstart = "baseline"\n[parameters]\ntnf_per_leukocyte = 1e37\n'
    cfg = _write(tmp_path, text)
    out = tmp_path / "bad.h5"
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 3
    assert "diverged" in capsys.readouterr().err
    with RunFile.open(out) as f:
        assert 1 <= f.n_frames < 7
        assert all(np.isfinite(f.field(s, -1)).all() for s in f.species)


def test_set_overrides_reach_the_stored_config(tmp_path):
    cfg = _write(tmp_path, SMALL)
    out = tmp_path / "o.h5"
    assert (
        main(
            [
                "run",
                str(cfg),
                "-o",
                str(out),
                "-q",
                "--set",
                "run.t_end_h=1.0",
                "--set",
                "parameters.chemotaxis=0.125",
                "--set",
                "drug.enabled=true",
            ]
        )
        == 0
    )
    with RunFile.open(out) as f:
        assert f.n_frames == 3
        assert "chemotaxis = 0.125" in f.config_toml
        assert "drug" in f.species


def test_label_map_and_initial_arrays_from_files(tmp_path):
    """A segmented joint from HDF5 (with its spacing) and per-species initial arrays from a file."""
    import h5py

    labels = np.full((20, 24), 3, np.uint8)  # synovial fluid
    labels[:, :4] = 4  # synovium
    labels[8:12, 10:14] = 1  # a bone island
    with h5py.File(tmp_path / "seg.h5", "w") as f:
        f.create_dataset("labels", data=labels).attrs["spacing_mm"] = [0.2, 0.2]
    tnf = np.zeros(labels.shape)
    tnf[2:6, 2:8] = 80.0
    with h5py.File(tmp_path / "ic.h5", "w") as f:
        f["tnf"] = tnf
    cfg = _write(
        tmp_path,
        textwrap.dedent(
            """
        [run]
        t_end_h = 1.0
        output_interval_h = 0.5
        [geometry]
        kind = "file"
        path = "seg.h5"
        [injury]
        enabled = false
        [initial]
        file = "ic.h5"
        """
        ),
    )
    out = tmp_path / "seg_run.h5"
    assert main(["run", str(cfg), "-o", str(out), "-q"]) == 0
    with RunFile.open(out) as f:
        np.testing.assert_array_equal(f.labels, labels)
        assert f.grid.spacing == (0.2, 0.2)
        first = f.field("tnf", 0)
        np.testing.assert_array_equal(first, tnf.astype(first.dtype))  # the file's values, bone cells excluded
        assert np.all(f.field("tnf", -1)[labels == 1] == 0)
        assert 0 < f.field("tnf", -1).max() < 80.0


def test_robin_drainage_from_the_config_removes_tnf(tmp_path):
    base = textwrap.dedent(
        """
        [run]
        t_end_h = 2.0
        output_interval_h = 1.0
        precision = "float64"
        [geometry]
        kind = "box"
        size_mm = [2.0, 2.0]
        spacing_mm = 0.1
        [injury]
        enabled = false
        [parameters]
        decay_tnf = 0.0
        tnf_per_leukocyte = 0.0
        basal_tnf = 0.0
        fluid_mixing = 0.0
        [initial]
        start = "baseline"
        [initial.synovial_fluid]
        tnf = 10.0
        leukocytes = 0.0
        """
    )
    closed = _write(tmp_path, base, "closed.toml")
    drained = _write(
        tmp_path, base + '\n[boundary.tnf]\nx_max = {type = "robin", coefficient = 0.5, value = 0.0}\n', "drained.toml"
    )
    assert main(["run", str(closed), "-o", str(tmp_path / "c.h5"), "-q"]) == 0
    assert main(["run", str(drained), "-o", str(tmp_path / "d.h5"), "-q"]) == 0
    with RunFile.open(tmp_path / "c.h5") as c, RunFile.open(tmp_path / "d.h5") as d:
        assert_close(c.summary["total_tnf"], c.summary["total_tnf"][0], rtol=1e-12, what="closed box keeps its TNF")
        lost = d.summary["total_tnf"][0] - d.summary["total_tnf"][-1]
        assert lost > 0.1 * d.summary["total_tnf"][0]
        last = d.field("tnf", -1)
        assert last[:, -1].mean() < last[:, 0].mean()  # lower next to the draining wall
