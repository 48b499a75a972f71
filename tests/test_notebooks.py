"""Every notebook follows the course's shape; nbval (pytest's addopts) executes them all."""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
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
    """Under 1 MB, no widget state (``tools/store_outputs.py`` says why), no Hugging Face token."""
    text = path.read_text()
    assert len(text.encode()) < store_outputs.MAX_BYTES
    nb = nbformat.reads(text, as_version=4)
    assert "widgets" not in nb.metadata, f"no widget state in {path.name}"
    assert not re.search(r"hf_[A-Za-z0-9]{30,}", text), f"{path.name} holds what looks like a token"


#: What ``make outputs`` stored for a widget before it stored snapshots.
OLD_PLACEHOLDER = "[a widget: run the notebook to use it]"


def runs_code(html: str) -> list[str]:
    """What in ``html`` a browser would run: script-like tags, event handlers, ``javascript:`` URLs."""
    found: list[str] = []

    def start(tag: str, attrs: list) -> None:
        found.extend([tag] if tag in ("script", "iframe", "object", "embed") else [])
        found.extend(name for name, value in attrs
                     if name.startswith("on") or (value or "").strip().lower().startswith("javascript:"))

    parser = HTMLParser()
    parser.handle_starttag = start  # type: ignore[method-assign]
    parser.feed(html)
    parser.close()
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebooks_show_each_widget_as_the_run_left_it(path):
    """Every widget is stored as its snapshot: HTML or a PNG, never a view a file cannot show (nor the
    old placeholder line), and a kit view's snapshot is the view's own HTML, with nothing that runs."""
    nb = nbformat.read(path, as_version=4)
    outputs = [(i, out) for i, cell in enumerate(nb.cells) for out in cell.get("outputs", [])]
    views = [i for i, out in outputs if store_outputs.WIDGET in out.get("data", {})]
    placeholders = [i for i, out in outputs if out.get("data", {}).get("text/plain") == OLD_PLACEHOLDER]
    assert not views and not placeholders, (
        f"cells {views + placeholders} of {path.name} hold a widget with no snapshot: run `make outputs`")
    for i, out in outputs:
        tag = out.get("metadata", {}).get(store_outputs.METADATA_KEY, {})
        if tag.get("snapshot"):
            html = out["data"].get("text/html", "")
            assert html or "image/png" in out["data"], f"cell {i}: a snapshot with nothing to see"
            assert not runs_code(html), f"cell {i}: a snapshot with markup that runs"
            assert "view" not in tag or "image/png" in out["data"] or "gw-snapshot" in html


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

    from gemma_widgets.course.environment import COLAB_PACKAGES

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, check: calls.append((args, check)))
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    keep = tmp_path / "keep.txt"
    install = sync_notebooks.setup_cell().split("from gemma_widgets.course.environment")[0]
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
    tag = {store_outputs.METADATA_KEY: {"view": "PrecisionDashboard"}}
    outputs = [new.new_output("stream", name="stdout", text="3.1 tok/s\n"),
               new.new_output("stream", name="stderr", text="Loading 50%\r"),
               new.new_output("stream", name="stdout", text="done\n"),
               new.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Image>"}),
               new.new_output("display_data", data={store_outputs.WIDGET: {"model_id": "dash"}, "text/plain": "VBox("},
                              metadata=tag),
               new.new_output("display_data", data={store_outputs.WIDGET: {"model_id": "bar"}, "text/plain": "bench:"}),
               new.new_output("display_data", data={"text/plain": "Applying Weight Compression ━━ 100%",
                                                    "text/html": store_outputs.RICH_HTML + '">━━</pre>'}),
               new.new_output("display_data", data={store_outputs.WIDGET: {"model_id": "closed"}, "text/plain": ""}),
               new.new_output("display_data", data={"text/html": "<table></table>", "text/plain": "table"})]
    kinds = ["stdout", "display_data:image/png,text/plain", "widget:PrecisionDashboard",
             "display_data:text/html,text/plain"]
    assert store_outputs.output_kinds(outputs) == kinds
    snapshots = {"dash": [{"text/html": "<table></table>", "text/plain": "[x]"}, {"image/png": "iVBOR"}],
                 "bar": [{"text/html": "<pre>bench: 100%</pre>", "text/plain": "bench: 100%"}], "closed": []}
    stored = store_outputs.for_a_file(outputs, snapshots)
    assert len(stored) == len(outputs)  # the dashboard's two outputs, and none for the closed widget
    assert [out["data"] for out in stored[4:7]] == [*snapshots["dash"], *snapshots["bar"]]
    assert all(out["metadata"][store_outputs.METADATA_KEY]["snapshot"] for out in stored[4:7])
    assert store_outputs.output_kinds(stored) == kinds  # a stored snapshot counts as its widget did


@pytest.mark.slow
def test_store_keeps_each_widget_as_the_run_left_it(tmp_path, monkeypatch):
    """``store`` on a notebook of its own (the tiny model): the panel's transcript after a later cell
    sent a message, a tqdm bar's last line, nothing for a widget that was closed; no view, no state."""
    monkeypatch.delenv("MEM_LIMIT", raising=False)  # store() sets Binder's for its kernel: undone after
    cells = ['from gemma_widgets import ChatPanel, SamplingSettings\n'
             'panel = ChatPanel(model="tiny-random-gemma2", precision="fp32", '
             'settings=SamplingSettings(temperature=0, max_new_tokens=4))\npanel',
             'from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc="steps"):\n    pass',
             'import ipywidgets\ngone = ipywidgets.Label("gone")\ndisplay(gone)\ngone.close()',
             'assert panel.send("<b>bold</b> & <script>alert(1)</script>").wait(120)']
    path = tmp_path / "widgets.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                            metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                     "display_name": "Python 3"}}), path)
    store_outputs.store(path)
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata and store_outputs.WIDGET not in path.read_text()
    (panel,), (bar,), closed = (cell.outputs for cell in nb.cells[:3])
    assert panel.metadata[store_outputs.METADATA_KEY] == {"view": "ChatPanel", "snapshot": True}
    html = panel.data["text/html"]
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;" in html and "<script" not in html
    assert html.count('class="gw-msg gw-assistant"') == 1 and "tok/s" in html
    assert "steps: 100%|██████████| 3/3" in bar.data["text/plain"].replace("\u2007", " ")
    assert closed == []
    assert store_outputs.output_kinds([panel]) == ["widget:ChatPanel"] and store_outputs.output_kinds([bar]) == []


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
