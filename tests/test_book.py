"""The course as a website (``make book``): every page is there, every internal link lands, the
pictures, widget snapshots and recap/quiz blocks survive, and Chromium shows every page offline.
"""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import build_book  # noqa: E402

NOTEBOOKS = build_book.notebooks()
OTHER_PAGES = ["index.html", "cheatsheet.html", "instructor.html", "solutions.html"]
URL = re.compile(r'\b(?:href|src)="([^"]*)"')
EXTERNAL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//)")


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    build_book.build(out)
    return out


def ids(page: Path) -> set[str]:
    """The page's element ids (nbconvert writes a heading's id percent-encoded, as browsers match it first)."""
    return {html.unescape(i) for i in re.findall(r'\bid="([^"]*)"', page.read_text(encoding="utf-8"))}


def stored(notebook: Path) -> tuple[int, int, int]:
    """PNG outputs, widget snapshots and <details> blocks that the notebook holds."""
    nb = nbformat.read(REPO / notebook, as_version=4)
    outputs = [o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])]
    pngs = sum("image/png" in d for d in outputs)
    snapshots = sum(d.get("text/html", "").count('gw-snapshot"') for d in outputs)
    details = sum(c.source.count("<details") for c in nb.cells if c.cell_type == "markdown")
    return pngs, snapshots, details


def test_every_page_is_built_and_every_internal_link_lands(book, tmp_path):
    pages = {p.name for p in book.glob("*.html")}
    assert pages == {nb.with_suffix(".html").name for nb in NOTEBOOKS} | set(OTHER_PAGES)
    assert len(NOTEBOOKS) == 7

    checked = 0
    for page in sorted(book.glob("*.html")):
        for url in map(html.unescape, URL.findall(page.read_text(encoding="utf-8"))):
            if EXTERNAL.match(url):
                assert url.startswith(("https://", "http://", "mailto:", "data:image/png;base64,")), (page.name, url)
                continue
            path, _, fragment = url.partition("#")
            target = book / unquote(path) if path else page
            assert target.is_file(), f"{page.name}: broken link {url}"
            assert not fragment or {fragment, unquote(fragment)} & ids(target), f"{page.name}: no anchor for {url}"
            checked += 1
    assert checked > 100  # the bar at the top of every page alone holds 11 links a page

    home = (book / "index.html").read_text(encoding="utf-8")
    order = list(dict.fromkeys(re.findall(r'href="(\d\d_\w+\.html)"', home.split('id="course-map"', 1)[1])))
    assert order == [nb.with_suffix(".html").name for nb in NOTEBOOKS]

    for notebook in NOTEBOOKS:  # what the stored run shows is on the page
        text = (book / notebook.with_suffix(".html").name).read_text(encoding="utf-8")
        pngs, snapshots, details = stored(notebook)
        assert text.count('src="data:image/png;base64,') == pngs, notebook
        assert text.count('gw-snapshot"') == snapshots, notebook
        assert text.count("<details") == details > 0, notebook
        assert "<script" not in text and "cdnjs" not in text, notebook

    solutions = ids(book / "solutions.html")
    assert {p.stem for p in (REPO / build_book.SOLUTIONS).glob("*.py")} <= solutions

    again = tmp_path / "again"  # deterministic: a second build writes the same bytes
    build_book.build(again)
    first = {p.name: p.read_bytes() for p in book.glob("*.html")}
    assert {p.name: p.read_bytes() for p in again.glob("*.html")} == first


def test_the_build_refuses_a_broken_link_and_a_script_output():
    pages = build_book.page_names()
    with pytest.raises(build_book.BookError, match="no_such_notebook"):
        build_book.rewrite_url("no_such_notebook.ipynb", Path("notebooks/cheatsheet.md"), pages)
    readme = build_book.rewrite_url("../README.md#course-map", Path("docs/instructor.md"), pages)
    assert readme == "index.html#course-map"

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={"text/html": '<img src=x onerror="alert(1)">'})])])
    with pytest.raises(build_book.BookError, match="cell 0"):
        build_book.check_outputs(nb, Path("x.ipynb"))
    nb.cells[0].outputs[0].data = {"application/javascript": "alert(1)"}
    with pytest.raises(build_book.BookError, match="application/javascript"):
        build_book.check_outputs(nb, Path("x.ipynb"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on loopback, for as long as the block runs."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.browser
def test_every_page_shows_in_chromium_offline(book):
    from _lab import chromium_browser, new_page, require_chromium

    require_chromium()
    names = [nb.with_suffix(".html").name for nb in NOTEBOOKS] + OTHER_PAGES
    errors: list[str] = []
    remote: list[str] = []
    anchors: dict[str, set[str]] = {}
    links: set[tuple[str, str, str]] = set()
    with serve(book) as origin, chromium_browser(REPO / "artifacts" / "book") as browser, new_page(browser) as page:
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        page.on("requestfailed", lambda request: errors.append(f"{request.url}: {request.failure}"))

        def local_only(route) -> None:  # the site must show without the network
            if route.request.url.startswith(origin):
                route.continue_()
            else:
                remote.append(route.request.url)
                route.abort()

        page.route("**/*", local_only)
        for name in names:
            response = page.goto(f"{origin}/{name}")
            assert response is not None and response.ok, name
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
            assert all(width > 0 for _, width in widths), (name, widths)
            anchors[name] = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
            for href in page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)"):
                if href.startswith(origin):
                    parts = urlsplit(href)
                    links.add((name, parts.path.lstrip("/"), parts.fragment))
            if name in ("06_chat_panel.html", "07_precision_dashboard.html"):
                assert page.locator(".gw-snapshot").first.is_visible(), name
                page.screenshot(path=REPO / "artifacts" / "book" / name.replace(".html", ".png"))
            if name.startswith("0"):
                assert page.locator("details").count() > 0, name
    assert not errors and not remote, (errors, remote)
    broken = [(page, path, frag) for page, path, frag in links
              if path not in anchors or (frag and not {frag, unquote(frag)} & anchors[path])]
    assert not broken and len(links) > 100, broken
