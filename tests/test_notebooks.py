"""The notebooks under notebooks/: committed without outputs, and each runs from top to bottom.

Running them needs nbclient and a Jupyter kernel (ipykernel), from the docs extra
(``pip install -e ".[docs]"``); those tests carry the ``notebooks`` marker and are skipped,
saying so, where nbclient is not installed, except with ``NPVAE_REQUIRE_NOTEBOOKS=1``, where
that is a failure (.ci/run's documentation stage installs the docs extra and sets it; the
test command of README.md, which has no docs extra, skips them; the NumPy-only job deselects
the marker).
The post's notebook trains for ``EPOCHS`` epochs, read from ``NPVAE_NB_EPOCHS``: here 1.
"""

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EPOCHS = 1
#: Notebooks that read MNIST (and so need the ``mnist_dir`` fixture).
NEED_MNIST = {"post.ipynb"}
#: Figures each notebook must show as images (a Figure that renders only as text is a bug).
FIGURES = {"post.ipynb": 4, "gradients.ipynb": 0}


def jupyter():
    """(nbformat, nbclient), or a skip (a failure with NPVAE_REQUIRE_NOTEBOOKS=1) naming what to install."""
    missing = [m for m in ("nbclient", "nbformat", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        message = f"running the notebooks needs {', '.join(missing)}: pip install -e \".[docs]\""
        if os.environ.get("NPVAE_REQUIRE_NOTEBOOKS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    import nbclient
    import nbformat
    return nbformat, nbclient


def code_cells(path):
    return [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def test_the_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"post.ipynb", "gradients.ipynb"}
    assert set(FIGURES) == {p.name for p in NOTEBOOKS}, "say how many figures each notebook shows"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs_or_execution_counts(path):
    dirty = [i for i, c in enumerate(code_cells(path)) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, (f"notebooks/{path.name}: code cells {dirty} hold outputs or execution counts; "
                       "clear them before committing (Jupyter: Edit > Clear Outputs of All Cells)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reads_its_parameters_in_a_first_cell_tagged_parameters(path):
    first = code_cells(path)[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), f"notebooks/{path.name}: first code cell"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, request, monkeypatch):
    nbformat, nbclient = jupyter()
    if path.name in NEED_MNIST:
        monkeypatch.setenv("NPVAE_DATA", str(request.getfixturevalue("mnist_dir")))
    monkeypatch.setenv("NPVAE_NB_EPOCHS", str(EPOCHS))     # the kernel inherits this environment
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"notebooks/{path.name} failed:\n{exc}", pytrace=False)
    images = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.outputs)
    assert images == FIGURES[path.name], f"notebooks/{path.name}: {images} figure(s) shown"
    if path.name == "post.ipynb":
        text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
        assert f"training for {EPOCHS} epoch(s)" in text and "eps (100, 5, 2)" in text
