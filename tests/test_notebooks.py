"""Every notebook in notebooks/ runs top to bottom (nbclient, the running interpreter's kernel)."""

import glob
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install 'ferrotune[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install 'ferrotune[test]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install 'ferrotune[test]')")

TIMEOUT_PER_CELL = 900  # seconds; the whole 01 notebook takes a few minutes on 2 cores


def test_notebooks_are_committed_without_outputs():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{os.path.basename(path)} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    ferrotune = pytest.importorskip("ferrotune", reason="the ferrotune extension is not built")
    if not hasattr(ferrotune, "Trainer"):
        pytest.skip("ferrotune.Trainer is not available in this build")
    # Outputs (checkpoints, logs) go to a temporary directory instead of notebooks/outputs.
    monkeypatch.setenv("FERROTUNE_OUTPUT_DIR", str(tmp_path / "outputs"))
    # A kernel spec for the interpreter running the tests (its venv holds ferrotune).
    kdir = tmp_path / "jupyter" / "kernels" / "ferrotune-test"
    kdir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ferrotune test",
        "language": "python",
    }
    (kdir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT_PER_CELL,
        kernel_name="ferrotune-test",
        resources={"metadata": {"path": NOTEBOOK_DIR}},
    )
    client.execute()  # raises CellExecutionError with the failing cell and traceback
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors
