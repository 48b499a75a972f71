"""Every notebook follows the course's shape; nbval (pytest's addopts) executes them all."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "benchmarks")]
import course_budget  # noqa: E402
import store_outputs  # noqa: E402
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_with_the_outputs_of_their_current_cells(path):
    """``make outputs`` stored every notebook with the outputs of a reference run: every code cell
    ran, none failed, and no code cell changed since (the run hashed each source). Re-executing
    the stored notebook changes nothing but timings: conftest.py compares each cell's kinds of
    output while nbval runs it on the same model and stack."""
    nb = nbformat.read(path, as_version=4)
    stored = nb.metadata.get("gemma_widgets", {}).get("outputs")
    assert stored, f"{path.name} has no stored run: run `make outputs`"
    code = [c for c in nb.cells if c.cell_type == "code"]
    changed = [i for i, (cell, digest) in enumerate(zip(code, stored["cells"], strict=False))
               if store_outputs.source_hash(cell) != digest]
    assert len(code) == len(stored["cells"]) and not changed, (
        f"code cells {changed} of {path.name} changed after their outputs were stored: run `make outputs`")
    for cell in code:
        assert cell.execution_count is not None and "execution" in cell.metadata, "every cell ran, timed"
        assert "error" not in store_outputs.output_kinds(cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebooks_are_small_and_hold_no_secret(path):
    """Under 1 MB, no widget state (a widget cannot be shown from a file), no Hugging Face token."""
    text = path.read_text()
    assert len(text.encode()) < store_outputs.MAX_BYTES
    nb = nbformat.reads(text, as_version=4)
    assert "widgets" not in nb.metadata, f"no widget state in {path.name}"
    assert store_outputs.WIDGET not in text
    assert not re.search(r"hf_[A-Za-z0-9]{30,}", text), f"{path.name} holds what looks like a token"


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_opens_with_the_budget_of_its_stored_run(path):
    """The first cell's time line, and the README's course-map row, are what
    ``benchmarks/course_budget.py --write`` computes from the notebook (``make outputs`` runs it)."""
    b = course_budget.budget(nbformat.read(path, as_version=4))
    assert b.paragraph() in nbformat.read(path, as_version=4).cells[0].source, "run course_budget.py --write"
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| [{path.stem}]"))
    assert f"| {round(b.core_minutes)} / {round(b.deep_minutes)} |" in row


def test_the_core_path_fits_a_90_minute_workshop():
    core = sum(course_budget.budget(nbformat.read(p, as_version=4)).core_minutes for p in NOTEBOOKS)
    assert core <= course_budget.CORE_BUDGET_MIN, f"the core path takes {core:.0f} minutes"


def test_output_kinds_ignore_what_varies_between_runs():
    new = nbformat.v4
    outputs = [new.new_output("stream", name="stdout", text="3.1 tok/s\n"),
               new.new_output("stream", name="stderr", text="Loading 50%\r"),
               new.new_output("stream", name="stdout", text="done\n"),
               new.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Image>"}),
               new.new_output("display_data", data={store_outputs.WIDGET: {}, "text/plain": "VBox(" + "x" * 300}),
               new.new_output("display_data", data={store_outputs.WIDGET: {}, "text/plain": "bench:   0%| 0/5"}),
               new.new_output("display_data", data={"text/plain": "Applying Weight Compression ━━ 100%",
                                                    "text/html": store_outputs.RICH_HTML + '">━━</pre>'}),
               new.new_output("display_data", data={"text/html": "<table></table>", "text/plain": "table"})]
    kinds = ["stdout", "display_data:image/png,text/plain", "display_data:text/html,text/plain"]
    assert store_outputs.output_kinds(outputs) == kinds
    for widget in outputs[4:6]:
        store_outputs._for_a_file(widget)
        assert widget["data"] == {"text/plain": store_outputs.WIDGET_PLACEHOLDER}
    assert store_outputs.output_kinds(outputs) == kinds  # a stored file's placeholders count as the widgets did


CORE_CELL_LINES = 15


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_core_cells_are_short(path):
    """No code cell of the core path is longer than 15 lines (blank lines aside): a learner reads each
    before running it. The set-up cell is the course's own; deep dives may run longer."""
    nb = nbformat.read(path, as_version=4)
    core = [c for deep, cells in course_budget.sections(nb) if not deep for c in cells if c.cell_type == "code"]
    long = {nb.cells.index(c): n for c in core[1:] if (n := sum(1 for line in c.source.splitlines() if line.strip()))
            > CORE_CELL_LINES}
    assert not long, f"core cells of {path.name} over {CORE_CELL_LINES} lines (cell index: lines): {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lessons_check_claims_visibly_and_leave_plumbing_to_tests(path):
    """A claim a learner should see verified is a ``check(...)`` (a printed ✓ line); a bare
    ``assert`` is plumbing, and plumbing is tested in ``tests/``."""
    nb = nbformat.read(path, as_version=4)
    bare = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any(line.strip().startswith("assert ") for line in c.source.splitlines())]
    assert not bare, f"cells {bare} of {path.name} assert without showing it: use course.check or a test"
