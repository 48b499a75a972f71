"""Safe HTML for untrusted chat text: escaped first, then a markdown subset.

Model output and user input are untrusted. :func:`escape_text` makes any text inert HTML;
:func:`render_markdown` escapes ``&`` and ``<`` before python-markdown sees the text, so no tag
of the input can survive (every tag needs a ``<``), then keeps only links to ``http(s)`` and
``mailto`` and turns images into links, so a reply cannot run script or load anything.

>>> render_markdown("**hi** <script>alert(1)</script>")
'<p><strong>hi</strong> &lt;script&gt;alert(1)&lt;/script&gt;</p>'
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as etree

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

SAFE_URL = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)
_CODE = re.compile(r"(<code[^>]*>)(.*?)(</code>)", re.DOTALL)


def escape_text(text: str) -> str:
    """Plain text as HTML that shows it verbatim (line breaks kept by the view's CSS)."""
    return html.escape(text, quote=True)


class _SafeLinks(Treeprocessor):
    """Drop links that are not http(s) or mailto; replace images with plain links."""

    def run(self, root: etree.Element) -> None:
        for parent in root.iter():
            for child in list(parent):
                if child.tag == "img":
                    child.tag = "a"
                    child.text = child.attrib.pop("alt", "") or "image"
                    src = child.attrib.pop("src", "")
                    child.attrib.pop("title", None)
                    child.set("href", src)
                if child.tag == "a":
                    href = child.get("href", "").strip()
                    if not SAFE_URL.match(href):
                        child.attrib.pop("href", None)
                    else:
                        child.set("target", "_blank")
                        child.set("rel", "noopener noreferrer nofollow")


class _SafeLinksExtension(Extension):
    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 (markdown's API)
        md.treeprocessors.register(_SafeLinks(md), "gw_safe_links", 0)  # after inline patterns


def render_markdown(text: str) -> str:
    """HTML for ``text`` as markdown (emphasis, lists, code, tables, links), with no raw HTML."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;")
    md = markdown.Markdown(extensions=["fenced_code", "tables", "sane_lists", _SafeLinksExtension()])
    out = md.convert(escaped)
    # markdown escapes code once more; undo that one level so code shows what was typed
    return _CODE.sub(lambda m: m.group(1) + m.group(2).replace("&amp;", "&") + m.group(3), out)
