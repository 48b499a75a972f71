"""The chat transcript's messages as safe HTML: the user's text verbatim, replies as markdown (raw HTML off),
a streaming reply as escaped text, with the styles that carry meaning inline (panel's message, beside the
feed and the interface of :mod:`gemma_widgets.widgets.chat`)."""

from __future__ import annotations

from gemma_widgets.conversation import Message
from gemma_widgets.widgets.markdown import escape_text, render_markdown

#: The transcript's styles, inline on each message (a stored snapshot keeps them where a sanitizer drops
#: the ``<style>`` block); the block holds those of the live widgets and of markdown inside a message.
STYLES = {
    "msg": "padding: 4px 8px; margin: 2px 0; border-radius: 6px; line-height: 1.4;",
    "user": "background: rgba(66,133,244,.10);",
    "assistant": "background: rgba(128,128,128,.08);",
    "who": "font-weight: 600; font-size: 85%; opacity: .7;",
    "plain": "white-space: pre-wrap;",
    "note": "font-size: 85%; font-style: italic; opacity: .8;",
    "error": "color: #c5221f;",
    "transcript": "border: 1px solid rgba(128,128,128,.3); border-radius: 6px; padding: 4px;",
}

CSS = f"""<style>
.gw-chat .gw-transcript {{ {STYLES["transcript"]} }}
.gw-chat .gw-plain {{ {STYLES["plain"]} }}
.gw-chat .gw-body pre {{ white-space: pre-wrap; }}
.gw-chat .gw-notice {{ {STYLES["error"]} }}
</style>"""


def _who(name: str) -> str:
    return f'<div class="gw-who" style="{STYLES["who"]}">{name}</div>'


def _message(role: str, body: str) -> str:
    return f'<div class="gw-msg gw-{role}" style="{STYLES["msg"]} {STYLES[role]}">{body}</div>'


def message_html(message: Message) -> str:
    """A transcript message as safe HTML: user text verbatim, replies as markdown."""
    who = "You" if message.role == "user" else "Gemma"
    if message.role == "user":
        body = f'<div class="gw-body gw-plain" style="{STYLES["plain"]}">{escape_text(message.content)}</div>'
    else:
        body = f'<div class="gw-body">{render_markdown(message.content)}</div>'
    notes = ""
    if message.stopped:
        notes += f'<div class="gw-note" style="{STYLES["note"]}">stopped by the user: the reply is partial</div>'
    if message.error:
        notes += (f'<div class="gw-note gw-error" style="{STYLES["note"]} {STYLES["error"]}">'
                  f"error: {escape_text(message.error)}</div>")
    return _message(message.role, _who(who) + body + notes)


def live_html(text: str) -> str:
    """A reply that is still streaming: escaped plain text, no markdown yet."""
    return _message("assistant", _who("Gemma") +
                    f'<div class="gw-body gw-plain" style="{STYLES["plain"]}">{escape_text(text) or "…"}</div>')
