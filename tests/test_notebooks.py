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


def _skip_without_required_files(nb, path):
    """A notebook that needs data outside the repository lists it in its metadata:
    ``"ferrotune": {"requires_files": [paths relative to notebooks/], "requires_files_env": "VAR"}``;
    it is skipped when a file is absent, unless the environment variable names an existing file."""
    meta = nb.metadata.get("ferrotune", {})
    env = meta.get("requires_files_env")
    if env and os.path.isfile(os.environ.get(env, "")):
        return
    for rel in meta.get("requires_files", []):
        if not os.path.exists(os.path.join(NOTEBOOK_DIR, rel)):
            hint = f" (or set {env})" if env else ""
            pytest.skip(f"{os.path.basename(path)} needs {os.path.normpath(rel)}{hint}, which is absent")


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
    _skip_without_required_files(nb, path)
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
