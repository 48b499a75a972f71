"""Any text, from a user or a model, through everything that shows or stores it (Hypothesis).

Random Unicode (surrogates and control characters included), markdown and HTML fragments, up to
~20 kB: the renderer never raises and lets no tag or attribute of the input through, the panel's
send / export / load round trip gives the transcript back (or refuses text that is not Unicode
with a clear message), and the terminal printer passes no control character. How long rendering
takes is measured by ``benchmarks/render_bench.py``, not asserted here.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from fakes import FakeTokenizer, ScriptedEngine, fake_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemma_widgets.cli.terminal import printable
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.widgets.markdown import SAFE_URL, render_markdown

FRAGMENTS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<a href='javascript:x'>",
             "[link](javascript:alert(1))", "[ok](https://example.org)", "![i](http://x/p.png)",
             "```{.evil #id onclick=alert(1)}\n", "```\n", "`", "**", "_", "- ", "1. ", "> ", "# ", "---\n",
             "| a | b |\n|---|---|\n", "\n", "\n\n", "&amp;", "&#x3C;script&#x3E;", "<!-- x -->", "\\",
             "\x1b]52;c;ZXZpbA==\x07", "\x1b[2J", "\u202e", "\x00", "\ud800", "<start_of_turn>model\n",
             "<end_of_turn>", "[", "](", "<", "\"", "'"]
ANY_CHAR = st.characters(exclude_categories=())  # surrogates and controls too
TEXT = st.lists(st.one_of(st.text(ANY_CHAR, max_size=300), st.sampled_from(FRAGMENTS)),
                max_size=60).map("".join)

#: What the renderer itself may write; nothing else, whatever the input.
TAGS = {"p", "strong", "em", "code", "pre", "ul", "ol", "li", "blockquote", "h1", "h2", "h3", "h4", "h5",
        "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "hr", "br"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, list]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, attrs))


def _attribute_is_the_renderers(tag: str, name: str, value: str | None) -> bool:
    allowed = {
        ("a", "href"): lambda v: bool(SAFE_URL.match(v or "")),
        ("a", "target"): lambda v: v == "_blank",
        ("a", "rel"): lambda v: v == "noopener noreferrer nofollow",
        ("ol", "start"): lambda v: (v or "").isdigit(),
        ("p", "class"): lambda v: v == "gw-plain",
        ("th", "style"): lambda v: v in ("text-align:left", "text-align:right", "text-align:center"),
        ("td", "style"): lambda v: v in ("text-align:left", "text-align:right", "text-align:center"),
    }
    check = allowed.get((tag, name))
    return check is not None and check(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXT)
def test_rendering_never_raises_and_lets_no_tag_or_attribute_through(text):
    html = render_markdown(text)
    parser = _Tags()
    parser.feed(html)
    for tag, attrs in parser.found:
        assert tag in TAGS, (tag, text)
        for name, value in attrs:
            assert _attribute_is_the_renderers(tag, name, value), (tag, name, value, text)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_the_terminal_prints_no_control_character(text):
    shown = printable(text)
    assert not [c for c in shown if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0]
    assert "\u202e" not in shown


def _valid(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@pytest.fixture(scope="module")
def echo_panel():
    """A panel whose model replies with the example's own text (model output is untrusted too)."""
    from gemma_widgets import ChatPanel

    model = ScriptedEngine("ok")
    return ChatPanel(fake_model(model)), model


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=TEXT, system=TEXT)
def test_send_export_and_load_give_the_transcript_back(echo_panel, tmp_path_factory, user, system):
    from gemma_widgets import ChatPanel

    panel, model = echo_panel
    panel.clear()
    folder = tmp_path_factory.mktemp("round-trip")
    panel.system_box.value = system if _valid(system) else ""
    if not user.strip() or not _valid(user):
        with pytest.raises(GemmaWidgetsError):
            panel.send(user)
        return
    model.reply = user
    try:
        panel.send(user)
    except GemmaWidgetsError as exc:  # a message longer than the context window, said clearly
        assert "context window" in str(exc)
        return
    assert panel.wait(30)
    shown = "".join(widget.value for widget in panel.transcript.children)
    parser = _Tags()
    parser.feed(shown)
    assert not [tag for tag, attrs in parser.found
                if tag in ("script", "img", "iframe", "svg", "object") or any(a.startswith("on") for a, _ in attrs)]
    panel.export_json(folder / "chat.json")
    panel.export_markdown(folder / "chat.md")
    again = ChatPanel(panel.session.loaded)
    again.load(folder / "chat.json")
    assert again.history == panel.history
    assert json.loads((folder / "chat.json").read_text(encoding="utf-8"))["messages"][0]["content"] == user


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, where=st.integers(0, 400))
def test_the_arena_shows_any_reply_as_token_spans_and_nothing_else(text, where):
    """Any model text in the arena's columns: escaped token spans (the same escaping as the chat), and
    the only tags and attributes are the view's own."""
    from gemma_widgets.widgets.arena import column_html, tokens_html

    if not _valid(text):
        return
    tokenizer = FakeTokenizer()
    ids = tokenizer(text, add_special_tokens=False).input_ids[:300]
    probs = [(i % 10) / 10 for i in range(len(ids))]
    html = column_html(f"challenger: {text[:40]}", tokens_html(tokenizer, ids, where, probs, probs))
    parser = _Tags()
    parser.feed(html)
    for tag, attrs in parser.found:
        assert tag in ("div", "span"), (tag, text)
        assert {name for name, _ in attrs} <= {"class", "style", "title"}, (attrs, text)
    assert html.count("gw-diverge") == 1  # the token there, or an "ended" mark past the reply
