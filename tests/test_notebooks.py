"""Every notebook follows the course's shape; nbval (pytest's addopts) executes them all."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import sync_notebooks  # noqa: E402

NOTEBOOKS = sync_notebooks.NOTEBOOKS


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    title = nb.cells[0]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    slug = sync_notebooks.slug()
    assert f"colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}" \
        in title.source, "an Open in Colab badge for this notebook, on the repository the kit installs from"
    assert "What you will learn" in title.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == sync_notebooks.setup_cell(), "the first code cell is the course's set-up cell"
    assert any("Try it yourself" in c.source for c in nb.cells if c.cell_type == "markdown")
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


#: The tag of a code cell whose output (a picture of a reference run) is kept in git; nbval runs lax,
#: so a kept output is shown, never compared.
STORED_OUTPUT = "stored-output"
STORED_OUTPUT_BYTES = 64_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_stay_out_of_git(path):
    """Outputs are stripped, except on cells tagged ``stored-output``: those keep theirs, small and
    without widget state (a widget cannot be shown from a file)."""
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata, f"no widget state in {path.name}"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if STORED_OUTPUT not in cell.metadata.get("tags", ()):
            assert not cell.outputs and cell.execution_count is None, f"clear the outputs of {path.name}"
            continue
        assert cell.outputs, f"a {STORED_OUTPUT} cell of {path.name} has lost its output"
        assert cell.execution_count is not None, "nbval fails a cell with outputs and no execution count"
        assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.outputs)
        assert len(nbformat.writes(nbformat.v4.new_notebook(cells=[cell]))) < STORED_OUTPUT_BYTES


def test_setup_cells_and_badges_come_from_the_one_repository_url():
    """pyproject's Repository URL is written into every set-up cell and badge (``make notebooks``)."""
    assert sync_notebooks.sync(check=True) == []
    cell = sync_notebooks.setup_cell()
    assert f"git+{sync_notebooks.repository()}" in cell and "check=True" in cell
    readme = (ROOT / "README.md").read_text()
    assert f"mybinder.org/v2/gh/{sync_notebooks.slug()}/" in readme
    assert f"colab.research.google.com/github/{sync_notebooks.slug()}/" in readme


def test_the_setup_cell_pins_every_colab_package_and_fails_loudly(tmp_path, monkeypatch):
    """The set-up cell's install, run as on Colab with pip stubbed: Colab's packages go in as
    constraints (pip must keep them), and ``check=True`` makes a failed install stop the cell."""
    import subprocess
    from importlib.metadata import version

    from gemma_widgets.environment import COLAB_PACKAGES

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, check: calls.append((args, check)))
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    keep = tmp_path / "keep.txt"
    install = sync_notebooks.setup_cell().split("from gemma_widgets.environment")[0]
    namespace: dict = {}
    exec(install.replace("/tmp/colab-keep.txt", str(keep)), namespace)
    ((args, check),) = calls
    assert check is True and args[-3:] == ["-c", str(keep), namespace["KIT"]]
    assert keep.read_text().splitlines() == [f"{name}=={version(name)}" for name in COLAB_PACKAGES]
