"""Every notebook follows the course's shape; nbval (pytest's addopts) executes them all."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SETUP = '''# Set-up: nothing to do locally or on Binder; on Colab this installs the kit first.
import sys
if "google.colab" in sys.modules:
    %pip install -q "gemma_widgets[openvino] @ git+https://github.com/gemma-widgets/gemma-widgets"
from gemma_widgets.environment import setup
env = setup()'''


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    title = nb.cells[0]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert f"colab.research.google.com/github/gemma-widgets/gemma-widgets/blob/main/notebooks/{path.name}" \
        in title.source, "an Open in Colab badge for this notebook"
    assert "What you will learn" in title.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.strip() == SETUP, "the first code cell is the course's set-up cell"
    assert any("Try it yourself" in c.source for c in nb.cells if c.cell_type == "markdown")
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_stay_out_of_git(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"clear the outputs of {path.name}"
