"""docs/example.ipynb runs from top to bottom in a fresh kernel (nbclient), so the example notebook
cannot rot; its figures come out as images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (the dev extra has it)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (the dev extra has it)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (the dev extra has it)")
pytest.importorskip("xarray", reason="the notebook reads the run through xarray (synovia[xarray])")

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "example.ipynb"


def test_the_example_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    # from an empty folder: it names presets, never the checkout's files, and leaves no file behind
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    assert os.listdir(tmp_path) == []
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2, "the two figure cells show their Figures"
    text = "".join(out.get("text", "") for out in outputs)
    assert "fluid TNF peaks at" in text and "True [" in text  # the callbacks ran; the second stopped its run
    html = [out["data"]["text/html"] for out in outputs if "text/html" in out.get("data", {})]
    assert any("synovial_fluid_tnf" in h and "time" in h for h in html), "the dataset shows its variables and coordinates"
