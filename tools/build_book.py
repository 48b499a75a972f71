"""Build the course as a static website in ``build/book/`` (``make book``), offline, in seconds.

Why nbconvert: it is already in the venv, converts the notebooks' stored outputs without running a
cell, and needs no network. jupyter-book 2 needs Node (mystmd) and fetches its site theme from the
network, which a clone on a closed machine cannot do.

Pages: ``index.html`` is the README's title, introduction and course map (the README stays the one
source of that text); every ``notebooks/NN_*.ipynb`` becomes ``NN_*.html`` with its stored pictures,
widget snapshots and recap/quiz ``<details>``; ``notebooks/cheatsheet.md`` and ``docs/instructor.md``
become ``cheatsheet.html`` and ``instructor.html``; ``solutions.html`` shows every solution, highlighted.
Links between the course's files are rewritten to these pages, a link to another file of the
repository goes to it on GitHub, and a link to nothing stops the build.

Safety: stored outputs hold model text. The build accepts only text, PNG/JPEG and HTML outputs, and an
HTML output only if it holds no script, event handler, frame or ``javascript:`` URL (the kit's
snapshots escape model text). The pages carry no JavaScript at all: the lab template's require.js,
MathJax (no notebook uses TeX), mermaid and widget-manager tags, all fetched from CDNs, are left
out, and a remote image (the Colab badge) becomes its alt text, so a page loads nothing off the machine.
Markdown files are rendered with raw HTML off.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import nbformat
import tomllib
from jinja2 import DictLoader
from markdown_it import MarkdownIt
from nbconvert import HTMLExporter
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "book"
SOLUTIONS = Path("notebooks/solutions")
MARKDOWN_PAGES = {Path("notebooks/cheatsheet.md"): "cheatsheet.html", Path("docs/instructor.md"): "instructor.html"}
OUTPUT_TYPES = {"text/plain", "text/html", "image/png", "image/jpeg"}
UNSAFE_HTML = re.compile(r"<\s*/?\s*(script|iframe|frame|object|embed|base|form|meta|link)\b"
                         r"|<[^>]*\son\w+\s*=|javascript:|@import|url\(\s*['\"]?\s*(https?:)?//", re.I)
URL_ATTR = re.compile(r'\b(href|src)="([^"]*)"')
REMOTE_IMG = re.compile(r'<img\b[^>]*\bsrc="(?:https?:)?//[^"]*"[^>]*>', re.I)
SOLUTION_CODE = re.compile(r"<code>((?:%load )?solutions/(\w+)\.py)</code>")

CSS = """
body { font-family: system-ui, sans-serif; line-height: 1.5; }
.book-nav { font-family: system-ui, sans-serif; font-size: 14px; padding: 8px 12px; margin-bottom: 12px;
            border-bottom: 1px solid #ccc; background: #f6f8fa; }
.book-nav a { margin-right: 10px; }
.book-page { max-width: 960px; margin: 0 auto; padding: 0 16px 32px; }
.book-page table { border-collapse: collapse; margin: 12px 0; }
.book-page th, .book-page td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
.book-page code { background: #f3f3f3; padding: 0 3px; }
.book-page pre { background: #f6f8fa; padding: 8px; overflow-x: auto; }
"""

# The lab template, minus every <script>: require.js, MathJax, mermaid and the widget manager come from CDNs.
NOTEBOOK_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style type="text/css">{{ resources.book_css }}</style>{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}{{ resources.book_nav }}{%- endblock body_header -%}
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{nav}
<main class="book-page">
{body}
</main>
</body>
</html>
"""


class BookError(Exception):
    """The book cannot be built as asked: a broken link or an output the site must not carry."""


def notebooks() -> list[Path]:
    """The course's notebooks, in course order, relative to the repository."""
    return sorted(p.relative_to(REPO) for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def page_names() -> dict[Path, str]:
    """Each source file of the book and the page it becomes."""
    pages = {nb: nb.with_suffix(".html").name for nb in notebooks()}
    return {Path("README.md"): "index.html", **pages, **MARKDOWN_PAGES}


def repository_url() -> str:
    """``[project.urls] Repository`` from pyproject.toml, where a link to a non-page file goes."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


def rewrite_url(url: str, source: Path, pages: dict[Path, str]) -> str:
    """Where ``url``, written in ``source``, points in the book; external links and anchors are kept."""
    if not url or url.startswith(("#", "//")) or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", url):
        return url
    path, _, fragment = url.partition("#")
    if path in pages.values() or path == "solutions.html":
        return url  # a link the build wrote itself (the bar at the top, the solutions' notebooks)
    anchor = f"#{fragment}" if fragment else ""
    target = (REPO / source.parent / unquote(path)).resolve()
    if not target.is_relative_to(REPO) or not target.exists():
        raise BookError(f"{source}: link to {url!r}, which is not a file of the repository")
    relative = target.relative_to(REPO)
    if relative in pages:
        return pages[relative] + anchor
    if relative.parent == SOLUTIONS and relative.suffix == ".py":
        return f"solutions.html#{relative.stem}"
    kind = "tree" if target.is_dir() else "blob"
    return f"{repository_url()}/{kind}/main/{relative.as_posix()}{anchor}"


def alt_text(tag: re.Match) -> str:
    """What shows in place of a remote image: its alt text (escaped already, as an attribute)."""
    found = re.search(r'\balt="([^"]*)"', tag.group(0))
    return found.group(1) if found else ""


def rewrite_links(page: str, source: Path, pages: dict[Path, str]) -> str:
    """Every href/src of an HTML page, rewritten by :func:`rewrite_url`; remote images become their alt."""
    page = REMOTE_IMG.sub(alt_text, page)

    def one(match: re.Match) -> str:
        url = rewrite_url(html.unescape(match.group(2)), source, pages)
        return f'{match.group(1)}="{html.escape(url)}"'

    return URL_ATTR.sub(one, page)


def nav(pages: dict[Path, str], titles: dict[Path, str]) -> str:
    """The bar at the top of every page: the course map, each notebook, and the three other pages."""
    links = ['<a href="index.html">Course map</a>']
    links += [f'<a href="{pages[nb]}" title="{html.escape(titles[nb])}">{nb.name[:2]}</a>' for nb in notebooks()]
    links += ['<a href="cheatsheet.html">Cheat sheet</a>', '<a href="solutions.html">Solutions</a>',
              '<a href="instructor.html">Instructor guide</a>']
    return f'<nav class="book-nav">{" ".join(links)}</nav>'


def notebook_title(nb: nbformat.NotebookNode, path: Path) -> str:
    """The first ``# `` heading of the notebook's first cell, as plain text."""
    first = nb.cells[0].source.splitlines() if nb.cells else []
    heading = next((line[2:] for line in first if line.startswith("# ")), path.stem)
    return heading.replace("`", "")


def check_outputs(nb: nbformat.NotebookNode, path: Path) -> None:
    """Refuse an output the site must not carry: a type that runs code, or HTML with script in it."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            extra = set(data) - OUTPUT_TYPES
            if extra:
                raise BookError(f"{path} cell {index}: output of type {sorted(extra)}, which the book does not carry")
            stored = data.get("text/html", "")
            if UNSAFE_HTML.search(stored):
                raise BookError(f"{path} cell {index}: HTML output with script, a frame or a remote URL")


def link_solutions(page: str) -> str:
    """Make each ``solutions/NAME.py`` code span a link to that solution on the solutions page."""
    def one(match: re.Match) -> str:
        if not (REPO / SOLUTIONS / f"{match.group(2)}.py").is_file():
            return match.group(0)
        return f'<a href="solutions.html#{match.group(2)}">{match.group(0)}</a>'

    return SOLUTION_CODE.sub(one, page)


def notebook_page(path: Path, title: str, nb: nbformat.NotebookNode, navbar: str) -> str:
    """One notebook as an HTML page from its stored outputs (nothing runs)."""
    exporter = HTMLExporter(template_name="lab", template_file="book.html.j2",
                            extra_loaders=[DictLoader({"book.html.j2": NOTEBOOK_TEMPLATE})])
    resources = {"metadata": {"name": title}, "book_css": CSS, "book_nav": navbar}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return link_solutions(body)


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML off (shown as text), tables on, and GitHub's heading anchors."""
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    tokens = md.parse(text)
    for open_token, inline in zip(tokens, tokens[1:], strict=False):
        if open_token.type == "heading_open":
            open_token.attrSet("id", slug(inline.content))
    return md.renderer.render(tokens, md.options, {})


def markdown_page(text: str, title: str, navbar: str) -> str:
    """A page of the book from markdown text."""
    return PAGE.format(title=html.escape(title), css=CSS, nav=navbar, body=render_markdown(text))


def home_markdown(readme: str) -> str:
    """The README's title and introduction (before its first section) and its course map section."""
    intro = readme.split("\n## ", 1)[0]
    found = re.search(r"^## Course map\n.*?(?=^## |\Z)", readme, re.M | re.S)
    if not found:
        raise BookError("README.md has no '## Course map' section for the home page")
    return f"{intro}\n\n{found.group(0)}"


def solutions_page(navbar: str, pages: dict[Path, str]) -> str:
    """Every solution script, highlighted, under an anchor named after it, with its notebook."""
    formatter = HtmlFormatter(cssclass="highlight")
    by_number = {nb.name[:2]: nb for nb in notebooks()}
    parts = ["<h1>Solutions to the exercises</h1>",
             "<p>In a notebook, load one into a cell with <code>%load solutions/NAME.py</code> and run it.</p>"]
    for script in sorted((REPO / SOLUTIONS).glob("*.py")):
        notebook = by_number.get(script.name[:2])
        source = f' · <a href="{pages[notebook]}">{notebook.stem}</a>' if notebook else ""
        parts.append(f'<h2 id="{script.stem}">{script.name}{source}</h2>')
        parts.append(highlight(script.read_text(encoding="utf-8"), PythonLexer(), formatter))
    css = CSS + formatter.get_style_defs(".highlight")
    return PAGE.format(title="Solutions", css=css, nav=navbar, body="\n".join(parts))


def check_page(name: str, page: str) -> None:
    """The site's promise, checked on every finished page: no script, no handler, nothing remote."""
    if re.search(r"<script\b|<[^>]*\son\w+\s*=|javascript:", page, re.I):
        raise BookError(f"{name} would run JavaScript")
    if re.search(r'\bsrc="(https?:)?//', page):
        raise BookError(f"{name} would load a resource from the network")


def build(out: Path = OUT) -> list[Path]:
    """Write every page of the book into ``out``; return the pages written, in course order."""
    pages = page_names()
    loaded = {path: nbformat.read(REPO / path, as_version=4) for path in notebooks()}
    titles = {path: notebook_title(nb, path) for path, nb in loaded.items()}
    navbar = nav(pages, titles)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    written: dict[str, str] = {
        "index.html": markdown_page(home_markdown(readme), readme.splitlines()[0].lstrip("# "), navbar)}
    for path, nb in loaded.items():
        check_outputs(nb, path)
        written[pages[path]] = notebook_page(path, titles[path], nb, navbar)
    for path, name in MARKDOWN_PAGES.items():
        text = (REPO / path).read_text(encoding="utf-8")
        written[name] = markdown_page(text, text.splitlines()[0].lstrip("# "), navbar)
    written["solutions.html"] = solutions_page(navbar, pages)
    sources = {name: source for source, name in pages.items()} | {"solutions.html": SOLUTIONS}
    out.mkdir(parents=True, exist_ok=True)
    for stale in set(out.glob("*.html")) - {out / name for name in written}:
        stale.unlink()
    for name, page in written.items():
        page = rewrite_links(page, sources[name], pages)
        check_page(name, page)
        (out / name).write_text(page, encoding="utf-8")
    return [out / name for name in written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder of the site (default {OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        written = build(args.out)
    except BookError as error:
        print(f"build_book: {error}", file=sys.stderr)
        return 1
    print(f"{len(written)} pages in {args.out} ({time.monotonic() - start:.1f} s); open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
