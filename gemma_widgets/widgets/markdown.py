"""Safe HTML for untrusted chat text: CommonMark by markdown-it-py, with raw HTML off.

Model output and user input are untrusted. :func:`escape_text` makes any text inert HTML.
:func:`render_markdown` parses with markdown-it-py (no recursion limit to hit: a 2 KB ``- - - ...``
list renders in milliseconds; link syntax is dropped where its scans would grow quadratic; text
nested deeper than markdown-it keeps is shown as plain text) with HTML disabled, so every
``<`` of the input comes out escaped; only ``http(s)`` and ``mailto`` links survive, images
become plain links, and nothing the text says sets an attribute (a fence's info string would set
``class``: it is dropped). If rendering fails for any reason, the text is shown escaped.

>>> render_markdown("**hi** <script>alert(1)</script>")
'<p><strong>hi</strong> &lt;script&gt;alert(1)&lt;/script&gt;</p>\\n'
"""

from __future__ import annotations

import html
import re
from typing import Any

from markdown_it import MarkdownIt

SAFE_URL = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)
_LINK_ATTRS = ' target="_blank" rel="noopener noreferrer nofollow"'


def escape_text(text: str) -> str:
    """Plain text as HTML that shows it verbatim (line breaks kept by the view's CSS)."""
    return html.escape(text, quote=True)


def _link_open(renderer: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
    return f'<a href="{escape_text(tokens[idx].attrGet("href") or "")}"{_LINK_ATTRS}>'


def _image(renderer: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    alt = "".join(child.content for child in token.children or ()) or "image"
    return f'<a href="{escape_text(token.attrGet("src") or "")}"{_LINK_ATTRS}>{escape_text(alt)}</a>'


def _code_block(renderer: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
    return f"<pre><code>{escape_text(tokens[idx].content)}</code></pre>\n"


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    # markdown-it-py's documented hook for link policies; links it refuses stay text
    md.validateLink = lambda url: bool(SAFE_URL.match(url.strip()))  # type: ignore[method-assign]
    for rule, render in (("link_open", _link_open), ("image", _image), ("fence", _code_block),
                         ("code_block", _code_block)):
        md.add_render_rule(rule, render)
    return md


_MD = _parser()
#: Link syntax costs markdown-it a scan to the end of the text for each unclosed ``[`` (20,000 of
#: them took 0.56 s); past this budget of brackets x characters, brackets are rendered as text.
_LINK_BUDGET = 2_000_000
_MD_NO_LINKS = _parser().disable(["link", "image", "reference"])


def render_markdown(text: str) -> str:
    """HTML for ``text`` as markdown (emphasis, lists, code, tables, links), with no raw HTML."""
    try:
        parser = _MD if text.count("[") * len(text) <= _LINK_BUDGET else _MD_NO_LINKS
        tokens = parser.parse(text)
        if any(token.level >= parser.options.maxNesting - 1 for token in tokens):
            raise ValueError("nested deeper than markdown-it renders: it would drop the rest")
        return parser.renderer.render(tokens, parser.options, {})
    except Exception:  # a renderer bug must not reach the view: show the text as it is
        return f'<p class="gw-plain">{escape_text(text)}</p>'
