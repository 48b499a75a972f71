"""The widgets in a real browser: JupyterLab on loopback, driven by headless Debian Chromium.

Runs one-cell notebooks with the chat panel, the dashboard and the precision arena with "Run All
Cells", then uses the widgets as a learner would: types, presses Send and Stop, sends markup that
must stay text, and waits for the dashboard's table and plot and the arena's divergence mark. And
opens, without running it, a notebook stored by ``make outputs``'s code, as a learner who has just
cloned the course does: each widget shows as the run left it.
Screenshots go to ``artifacts/browser/``. Without Chromium the test skips locally and
fails in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from _lab import chromium_browser, lab_server, new_page, require_chromium

from gemma_widgets import bench

pytestmark = [pytest.mark.browser, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import store_outputs  # noqa: E402

ARTIFACTS = REPO / "artifacts" / "browser"
CHAT_NOTEBOOK = "chat_check.ipynb"
CHAT_CELL = """from gemma_widgets import ChatPanel, load_model

ChatPanel(load_model())"""
XSS = "<img src=x onerror=alert(1)>"
NOTEBOOK_TIMEOUT_S = 300  # "Run All Cells" of a one-cell notebook that loads the bundled model
REPLY_TIMEOUT_S = 180
STDERR_OUTPUT = "[data-mime-type='application/vnd.jupyter.stderr']"  # tracebacks too


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_chromium()
    work = tmp_path_factory.mktemp("lab")
    root = work / "notebooks"  # each test writes the one-cell notebook it opens
    root.mkdir()
    with lab_server(root, work) as server, chromium_browser(ARTIFACTS) as browser:
        yield server, browser


@pytest.fixture
def page(lab):
    """A tab of its own for each test, so one notebook's unsaved state never blocks the next."""
    with new_page(lab[1]) as page:
        yield page


def run_notebook(server, page, name: str) -> None:
    """Open ``name``, wait for its kernel, Run All Cells, and wait until every cell has run."""
    if not (server.root / name).is_file():
        pytest.fail(f"notebooks/{name} does not exist")
    page.goto(server.lab_url(name))
    notebook = page.locator(".jp-NotebookPanel:visible").first  # this notebook's cells only
    notebook.wait_for(timeout=120_000)
    kernel_idle(page).wait_for(timeout=120_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_S
    started = False
    while True:
        # textContent, not innerText: cells scrolled out of view are not rendered (content-visibility)
        prompts = [p.strip() for p in notebook.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()]
        started = started or any(p not in ("[ ]:", "") for p in prompts)
        if started and not any("*" in p for p in prompts) and kernel_idle(page).count():
            break  # nothing queued: every cell ran, or one raised and Run All stopped there
        assert time.monotonic() < deadline, f"{name}: cells still running after {NOTEBOOK_TIMEOUT_S} s"
        page.wait_for_timeout(1000)
    page.screenshot(path=ARTIFACTS / f"{Path(name).stem}_ran.png", full_page=True)
    if not all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
        tracebacks = [t for t in notebook.locator(STDERR_OUTPUT).all_text_contents() if "Error" in t]
        pytest.fail(f"{name} stopped before its last cell:\n" + "\n".join(tracebacks)[-4000:])


def shut_down_kernels(server, page) -> None:
    """Free the notebook's memory before the next one runs, as a learner on Binder would."""
    headers = {"Authorization": f"token {server.token}"}
    for kernel in page.request.get(f"{server.url}/api/kernels", headers=headers).json():
        page.request.delete(f"{server.url}/api/kernels/{kernel['id']}", headers=headers)


def kernel_idle(page):
    return page.locator("#jp-main-statusbar", has_text="Idle")


def reply_text(reply) -> str:
    return reply.inner_text().removeprefix("Gemma").replace("…", "").strip()


def send(chat, text: str):
    """Type ``text``, press Send, and return the locator of the reply that starts."""
    replies = chat.locator(".gw-message.gw-assistant")
    before = replies.count()
    chat.locator(".gw-input input").fill(text)
    chat.locator("button.gw-send").click()
    reply = replies.nth(before)
    reply.wait_for(timeout=30_000)
    return reply


def watch_stream(page, chat, reply, samples: int = 3) -> list[str]:
    """The reply's successive texts in the page, until ``samples`` differ or the reply ends."""
    seen: list[str] = []
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while len(seen) < samples and chat.locator("button.gw-send[disabled]").count():
        text = reply_text(reply)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        assert time.monotonic() < deadline, f"no streamed text after {REPLY_TIMEOUT_S} s: {seen!r}"
        page.wait_for_timeout(30)
    return seen


def stop_and_wait(page, chat) -> None:
    """Press Stop and wait until Send is enabled again (the partial reply is rendered)."""
    chat.locator("button.gw-stop").click()
    chat.locator("button.gw-send:not([disabled])").wait_for(timeout=60_000)


def checked(check, page, server) -> None:
    """``check(page, server)``, then the notebook's kernel shut down whatever happened."""
    try:
        check(page, server)
    finally:
        shut_down_kernels(server, page)


def test_chat_panel_streams_stops_and_keeps_markup_as_text(lab, page):
    """A throwaway notebook with the panel alone (notebook 06 runs under nbval)."""
    write_notebook(lab[0].root / CHAT_NOTEBOOK, CHAT_CELL)
    checked(check_chat, page, lab[0])


def check_chat(page, server) -> None:
    run_notebook(server, page, CHAT_NOTEBOOK)
    chat = page.locator(".gw-chat").first
    chat.scroll_into_view_if_needed()
    assert chat.is_visible()
    chat.locator("button.gw-send:not([disabled])").wait_for(timeout=REPLY_TIMEOUT_S * 1000)

    # Send streams: the reply grows in the page while it is generated; Stop then ends it early,
    # and the partial reply is kept, marked, and grows no more. A sampled reply can end on its
    # own before three updates: then ask again.
    for attempt in range(3):
        reply = send(chat, f"Tell me a long story about a lighthouse keeper and the sea (take {attempt + 1}).")
        seen = watch_stream(page, chat, reply)
        if len(seen) == 3 and chat.locator("button.gw-stop:not([disabled])").count():
            break
        chat.locator("button.gw-send:not([disabled])").wait_for(timeout=REPLY_TIMEOUT_S * 1000)
    else:
        pytest.fail(f"no reply streamed three updates before it ended (last: {seen!r})")
    assert len(seen[0]) < len(seen[1]) < len(seen[2]), seen
    page.screenshot(path=ARTIFACTS / "06_chat_streaming.png", full_page=True)
    stop_and_wait(page, chat)
    assert "stopped by the user" in reply.inner_text()
    assert "stopped" in chat.locator(".gw-status").inner_text()
    stopped_text = reply_text(reply)
    page.wait_for_timeout(2000)
    assert reply_text(reply) == stopped_text
    page.screenshot(path=ARTIFACTS / "06_chat_stopped.png", full_page=True)

    # Markup in a message is shown as text and runs nothing.
    reply = send(chat, f"Repeat this exactly: {XSS}")
    user_message = chat.locator(".gw-message.gw-user").last
    assert XSS in user_message.inner_text()
    watch_stream(page, chat, reply, samples=2)
    if chat.locator("button.gw-send[disabled]").count():
        stop_and_wait(page, chat)
    assert page.locator("[onerror]").count() == 0
    assert chat.locator("img").count() == 0
    assert page.dialogs == [], f"a dialog opened: {page.dialogs}"
    page.screenshot(path=ARTIFACTS / "06_chat_markup_as_text.png", full_page=True)


DASHBOARD_CHECK = "dashboard_check.ipynb"
DASHBOARD_CELL = """from gemma_widgets import PrecisionDashboard

PrecisionDashboard(variants=["bf16"], new_tokens=8, repeats=1)"""


def test_dashboard_runs_from_its_button_and_renders_its_table_and_plot(lab, page):
    """A throwaway notebook with the dashboard alone (notebook 07 runs under nbval, and its measuring
    cell takes two minutes): the learner clicks Run, a worker measures bf16, the table and plots show."""
    server = lab[0]
    write_notebook(server.root / DASHBOARD_CHECK, DASHBOARD_CELL)
    checked(check_dashboard, page, server)


def check_dashboard(page, server) -> None:
    run_notebook(server, page, DASHBOARD_CHECK)
    dashboard = page.locator(".gw-dashboard").first
    dashboard.scroll_into_view_if_needed()
    assert dashboard.is_visible()
    rows = dashboard.locator(".gw-results-table table tbody tr")
    assert rows.count() == 0
    dashboard.locator("button.gw-run").click()
    measured = rows.filter(has_not=page.locator("td[colspan]"))  # a failed variant spans the row
    measured.first.wait_for(timeout=REPLY_TIMEOUT_S * 1000)
    assert "bf16" in measured.first.inner_text()
    dashboard.locator("button.gw-run:not([disabled])").wait_for(timeout=REPLY_TIMEOUT_S * 1000)
    page.wait_for_function(
        "el => [...el.querySelectorAll('img.gw-plot')].some(img => img.complete && img.naturalWidth > 0)",
        arg=dashboard.element_handle(), timeout=60_000)
    dashboard.locator("img.gw-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "07_dashboard.png", full_page=True)
    assert page.dialogs == []


def write_notebook(path, source: str) -> None:
    """A one-cell notebook at ``path``."""
    import nbformat

    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                     "language": "python"}}), path)


ARENA_NOTEBOOK = "arena_check.ipynb"
ARENA_CELL = """from gemma_widgets import PrecisionArena
from gemma_widgets.course.environment import can_run

arena = PrecisionArena(models=["bf16", "ov-int4"] if can_run("ov-int4-optimum") else ["fp32", "bf16"])
arena"""


def test_arena_streams_both_columns_and_marks_where_they_part(lab, page):
    """A throwaway notebook with the arena alone (not all of notebook 04): Send streams the reference's
    column, then the challenger's, then the divergence mark and the summary appear; no markup runs."""
    server = lab[0]
    write_notebook(server.root / ARENA_NOTEBOOK, ARENA_CELL)
    checked(check_arena, page, server)


def check_arena(page, server) -> None:
    run_notebook(server, page, ARENA_NOTEBOOK)
    view = page.locator(".gw-arena").first
    view.wait_for(timeout=120_000)
    columns = {side: view.locator(f".gw-arena-{side} .gw-reply") for side in ("ref", "challenger")}
    view.locator(".gw-arena-input input").fill(f"Explain what a lighthouse does. {XSS}")
    view.locator("button.gw-send").click()
    seen: dict[str, list[str]] = {side: [] for side in columns}
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while not view.locator(".gw-arena-summary", has_text="tok/s").count():
        for side, column in columns.items():
            text = column.inner_text().replace("…", "").strip()
            if text and (not seen[side] or seen[side][-1] != text):
                seen[side].append(text)
                if len(seen[side]) == 2:
                    page.screenshot(path=ARTIFACTS / f"arena_streaming_{side}.png", full_page=True)
        assert time.monotonic() < deadline, f"no summary after {REPLY_TIMEOUT_S} s: {seen!r}"
        page.wait_for_timeout(20)
    for side, texts in seen.items():  # each column grew in the page while its reply streamed
        assert len(texts) >= 2 and len(texts[0]) < len(texts[1]), (side, texts)
    view.locator("button.gw-send:not([disabled])").wait_for(timeout=10_000)
    summary = view.locator(".gw-arena-summary").inner_text()
    if "identical: all" not in summary:  # greedy replies that never part have no mark, and say so
        mark = view.locator(".gw-arena-challenger .gw-diverge")
        assert mark.count() == 1 and mark.is_visible(), summary
        assert view.locator(".gw-arena-ref .gw-diverge").count() == 1
        assert "then they part at token" in summary
    assert view.locator(".gw-arena-challenger .gw-tok").count() > 1
    view.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "arena_compared.png", full_page=True)
    assert page.locator("[onerror]").count() == 0 and view.locator("img").count() == 0
    assert page.dialogs == [], f"a dialog opened: {page.dialogs}"


STORED_NOTEBOOK = "stored_check.ipynb"
STORED_CELL = f"""from gemma_widgets import ChatPanel, PrecisionArena, PrecisionDashboard, bench
from gemma_widgets.engines.base import SamplingSettings

panel = ChatPanel(model="tiny-random-gemma2", precision="fp32", settings=SamplingSettings(max_new_tokens=8))
display(panel)
assert panel.send("Repeat: {XSS}").wait(120)
arena = PrecisionArena(models=["fp32", "bf16"], model="tiny-random-gemma2")
arena.compare("Explain what a lighthouse does.")
display(arena)
PrecisionDashboard(results=bench.reference_run())"""


def test_a_stored_notebook_shows_each_widget_as_the_run_left_it(lab, page, monkeypatch):
    """``make outputs``'s code stores a notebook with the three views (the tiny model); JupyterLab opens it
    untrusted, as a clone, and sanitizes its HTML (no <style> blocks, no data: images), yet shows the
    transcript, the arena's shaded columns and divergence mark, the dashboard's table and charts."""
    server = lab[0]
    path = server.root / STORED_NOTEBOOK
    write_notebook(path, STORED_CELL)
    monkeypatch.delenv("MEM_LIMIT", raising=False)  # store() sets Binder's for its kernel: undone after
    store_outputs.store(path)
    page.goto(server.lab_url(STORED_NOTEBOOK))
    page.locator(".jp-NotebookPanel:visible").first.wait_for(timeout=120_000)
    snapshots = page.locator(".gw-snapshot")
    snapshots.first.wait_for(timeout=60_000)
    assert snapshots.count() == 4  # the panel, the arena, the dashboard's table and its outputs
    assert page.locator(".jp-OutputArea style").count() == 0, "the notebook is untrusted: sanitized"

    assert XSS in page.locator(".gw-snapshot .gw-msg.gw-user").inner_text()
    assert page.locator(".gw-snapshot .gw-msg.gw-assistant").count() == 1
    assert page.locator(".gw-snapshot .gw-msg.gw-user").evaluate("e => getComputedStyle(e).backgroundColor") \
        != "rgba(0, 0, 0, 0)"
    columns = page.locator(".gw-snapshot .gw-col")
    assert columns.count() == 2 and columns.first.bounding_box()["y"] == columns.last.bounding_box()["y"]
    shaded = page.locator(".gw-snapshot .gw-arena-challenger .gw-tok").evaluate_all(
        "spans => spans.filter(s => getComputedStyle(s).backgroundColor !== 'rgba(0, 0, 0, 0)').length")
    assert shaded > 0
    summary = page.locator(".gw-snapshot .gw-arena-summary").inner_text()
    if "identical: all" not in summary:
        mark = page.locator(".gw-snapshot .gw-arena-challenger .gw-diverge")
        assert mark.evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
    assert page.locator(".gw-snapshot table tbody tr").count() == len(bench.reference_run())
    page.wait_for_function("() => [...document.querySelectorAll('.jp-RenderedImage img')]"
                           ".some(img => img.complete && img.naturalWidth > 1000)", timeout=30_000)
    assert page.locator("[onerror]").count() == 0 and page.dialogs == []
    page.screenshot(path=ARTIFACTS / "stored_widgets.png", full_page=True)
