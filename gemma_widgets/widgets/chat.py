"""The chat panel: an ipywidgets view over :class:`~gemma_widgets.session.ChatSession`.

The panel only shows the session and forwards clicks to it. While a reply streams, the
reader thread sets the reply widget's value to escaped plain text (at most every
``LIVE_INTERVAL`` seconds after the first token, :mod:`gemma_widgets.widgets._view`); when it ends, the
reply is rendered once
as safe markdown. Widgets carry stable CSS classes (``gw-chat``, ``gw-input``, ``gw-send``,
``gw-stop``, ``gw-message``, ``gw-status``...) for browser tests and styling. :meth:`ChatPanel.snapshot`
is the panel as it looks, for a stored notebook (:mod:`gemma_widgets.widgets.display`).

>>> panel = ChatPanel(model="bundled", precision="bf16")  # doctest: +SKIP
>>> panel                                                  # doctest: +SKIP
>>> panel.send("Name three colours.").wait(60)             # doctest: +SKIP
True
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from gemma_widgets.engines.base import SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.files import parse_json, write_atomic
from gemma_widgets.loading import LoadedModel, load_model
from gemma_widgets.session import ChatSession, Generation
from gemma_widgets.widgets._view import Throttle, View
from gemma_widgets.widgets.display import html_snapshot, with_class
from gemma_widgets.widgets.markdown import escape_text
from gemma_widgets.widgets.messages import CSS, STYLES, live_html, message_html


class ChatPanel(View):
    """A streaming chat with a local Gemma: ``ChatPanel(loaded)`` or ``ChatPanel(model=..., precision="fast")``.

    Enter sends (Shift+Enter too: ipywidgets' only input with a submit event is the one-line
    ``Text``). For a message of several lines, the ¶ toggle swaps in a ``Textarea``, where
    Enter makes a new line and the Send button sends. The Python API mirrors the buttons:
    :meth:`send`, :meth:`stop`, :meth:`wait`, :meth:`regenerate`, :meth:`edit_last`,
    :meth:`clear`, :attr:`history`, :meth:`export_json`, :meth:`export_markdown`, :meth:`load`.
    """

    def __init__(self, loaded: LoadedModel | None = None, *, model: str | None = None,
                 precision: str | None = None, system: str = "",
                 settings: SamplingSettings | None = None, context_window: int | None = None,
                 **load_options: Any):
        if loaded is None:  # chat is speed-sensitive: "fast" is an OpenVINO export on a CPU when it can
            loaded = load_model(model, precision or "fast", **load_options)
        elif model is not None or precision is not None or load_options:
            raise GemmaWidgetsError("Give either a loaded model or model=/precision=, not both.")
        self.session = ChatSession(loaded, settings=settings or SamplingSettings(),
                                   context_window=context_window)
        self.session.conversation.system = system
        self.session.on_text.append(self._on_text)
        self.session.on_finish.append(self._on_finish)
        self._lock = threading.RLock()
        self._message_widgets: list[widgets.HTML] = []
        self._rendered: list[tuple] = []
        self._live: widgets.HTML | None = None
        self._finished_live: widgets.HTML | None = None
        self._finished: Generation | None = None
        self._paint = Throttle()
        self._editing = False
        self._build()
        self._update_meter(self.session.token_count())

    # --- the view ---------------------------------------------------------------------------
    def _build(self) -> None:
        s = self.session.settings
        lm = self.session.loaded
        full = {"style": {"description_width": "initial"}}
        self.title = with_class(widgets.HTML(
            f"<b>{escape_text(lm.preset.name)}</b> · {escape_text(lm.precision)} · "
            f"{escape_text(lm.engine.name)}"), "gw-title")
        self.meter_label = with_class(widgets.HTML(), "gw-meter")
        self.meter = with_class(widgets.IntProgress(value=0, min=0, max=self.session.window,
                                                     layout=widgets.Layout(width="160px")),
                                 "gw-meter-bar")
        self.notice = with_class(widgets.HTML(""), "gw-notice")
        self.transcript = with_class(widgets.VBox(layout=widgets.Layout(
            max_height="420px", overflow="auto")), "gw-transcript")
        self.status = with_class(widgets.HTML(""), "gw-status")
        self.input = with_class(widgets.Text(
            placeholder="Message Gemma (Enter sends)", continuous_update=True,
            layout=widgets.Layout(flex="1 1 auto", width="auto")), "gw-input")
        self._on_enter(self.input, self._send_input)
        self.multiline_input = with_class(widgets.Textarea(
            placeholder="Message Gemma (Enter makes a new line; Send sends)", rows=4,
            layout=widgets.Layout(flex="1 1 auto", width="auto", display="none")), "gw-input-multiline")
        self.multiline_toggle = with_class(widgets.ToggleButton(
            value=False, icon="paragraph", tooltip="multi-line input: Enter makes a new line, Send sends",
            layout=widgets.Layout(width="42px")), "gw-multiline")
        self.multiline_toggle.observe(self._on_multiline, "value")
        self.send_button = with_class(widgets.Button(description="Send", button_style="primary",
                                                      icon="paper-plane"), "gw-send")
        self.stop_button = with_class(widgets.Button(description="Stop", button_style="danger",
                                                      icon="stop", disabled=True), "gw-stop")
        self.regenerate_button = with_class(widgets.Button(description="Regenerate", icon="refresh",
                                                            tooltip="a new reply to the last message"),
                                             "gw-regenerate")
        self.edit_button = with_class(widgets.Button(description="Edit last", icon="edit",
                                                      tooltip="edit the last message, then Send"),
                                       "gw-edit")
        self.clear_button = with_class(widgets.Button(description="Clear", icon="trash"), "gw-clear")
        self.save_button = with_class(widgets.Button(description="Save", icon="download",
                                                      tooltip="write the transcript as JSON and Markdown"),
                                       "gw-save")
        self.upload = with_class(widgets.FileUpload(accept=".json", multiple=False,
                                                     description="Load"), "gw-load")
        self.system_box = with_class(widgets.Textarea(
            value=self.session.conversation.system, description="System prompt",
            placeholder="Folded into the first user turn (Gemma has no system role)",
            continuous_update=False, layout=widgets.Layout(width="98%"), **full), "gw-system")
        self.temperature = with_class(widgets.FloatSlider(
            value=s.temperature, min=0.0, max=2.0, step=0.05, description="temperature (0 = greedy)",
            **full), "gw-temperature")
        self.top_p = with_class(widgets.FloatSlider(value=s.top_p, min=0.05, max=1.0, step=0.05,
                                                     description="top-p", **full), "gw-top-p")
        self.top_k = with_class(widgets.IntSlider(value=s.top_k, min=0, max=200, step=1,
                                                   description="top-k (0 = off)", **full), "gw-top-k")
        self.max_new_tokens = with_class(widgets.IntSlider(
            value=s.max_new_tokens, min=1, max=max(s.max_new_tokens, min(4096, self.session.window)),
            description="max new tokens", **full), "gw-max-new-tokens")
        self.repetition_penalty = with_class(widgets.FloatSlider(
            value=s.repetition_penalty, min=0.8, max=2.0, step=0.05, description="repetition penalty",
            **full), "gw-repetition-penalty")
        settings_box = widgets.VBox([self.system_box, self.temperature, self.top_p, self.top_k,
                                     self.max_new_tokens, self.repetition_penalty])
        self.settings_panel = with_class(widgets.Accordion(children=[settings_box]), "gw-settings")
        self.settings_panel.set_title(0, "System prompt and sampling")
        self.settings_panel.selected_index = None

        self.send_button.on_click(lambda _: self._ui(self._send_input))
        self.stop_button.on_click(lambda _: self.stop())
        self.regenerate_button.on_click(lambda _: self._ui(self.regenerate))
        self.edit_button.on_click(lambda _: self._ui(self._start_edit))
        self.clear_button.on_click(lambda _: self._ui(self.clear))
        self.save_button.on_click(lambda _: self._ui(self._save_here))
        self.upload.observe(lambda change: self._ui(self._load_upload, change["new"]), "value")
        self.system_box.observe(self._on_system, "value")
        for name in ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty"):
            getattr(self, name).observe(self._on_setting, "value")

        self.widget = with_class(widgets.VBox([
            widgets.HTML(CSS),
            widgets.HBox([self.title, self.meter, self.meter_label]),
            self.transcript,
            self.status,
            self.notice,
            widgets.HBox([self.input, self.multiline_input, self.multiline_toggle, self.send_button,
                          self.stop_button]),
            widgets.HBox([self.regenerate_button, self.edit_button, self.clear_button,
                          self.save_button, self.upload]),
            self.settings_panel,
        ]), "gw-chat")

    def snapshot(self) -> list[dict[str, Any]]:
        """The panel as it looks now, for a file: the title, the transcript as shown, status and notice."""
        with self._lock:
            transcript = "\n".join(widget.value for widget in self.transcript.children)  # a line each: diffable
        body = (f'<div>{self.title.value} · {self.meter_label.value}</div>\n'
                f'<div class="gw-transcript" style="{STYLES["transcript"]}">\n{transcript}\n</div>\n'
                f'<div class="gw-status">{self.status.value}</div>\n'
                f'<div class="gw-notice" style="{STYLES["error"]}">{self.notice.value}</div>')
        return [html_snapshot(self, "gw-chat", CSS, body)]

    def _update_meter(self, used: int) -> None:
        window = self.session.window
        self.meter.value = min(used, window)
        self.meter_label.value = f"{used:,} / {window:,} tokens"

    def _set_busy(self, busy: bool) -> None:
        self.send_button.disabled = busy
        self.stop_button.disabled = not busy
        self.regenerate_button.disabled = busy
        self.edit_button.disabled = busy
        self.upload.disabled = busy

    def _sync(self) -> None:
        """Make the transcript widgets match the conversation, re-rendering only what changed."""
        with self._lock:
            messages = self.session.conversation.messages
            for extra in self._message_widgets[len(messages):]:
                extra.close()
            del self._message_widgets[len(messages):]
            del self._rendered[len(messages):]
            for i, message in enumerate(messages):
                key = (message.role, message.content, message.stopped, message.error)
                if i == len(self._message_widgets):
                    if message.role == "assistant" and self._finished_live is not None:
                        widget, self._finished_live = self._finished_live, None
                    else:
                        widget = with_class(widgets.HTML(), "gw-message", f"gw-{message.role}")
                    self._message_widgets.append(widget)
                    self._rendered.append(())
                if self._rendered[i] != key:
                    self._message_widgets[i].value = message_html(message)
                    self._rendered[i] = key
            children = list(self._message_widgets) + ([self._live] if self._live is not None else [])
            if list(self.transcript.children) != children:
                self.transcript.children = children

    # --- streaming callbacks (reader thread) ------------------------------------------------
    def _on_text(self, text: str) -> None:
        if self._live is not None and self._paint.due():
            self._live.value = live_html(text)

    def _on_finish(self, generation: Generation) -> None:
        with self._lock:
            self._finished = generation
            self._finished_live, self._live = self._live, None
            if self._finished_live is not None:
                self._finished_live.remove_class("gw-streaming")
            self._sync()
            stats = generation.stats
            if stats is not None:
                self.status.value = escape_text(f"{stats.summary()} · prompt {stats.prompt_tokens} tokens")
                self._update_meter(stats.prompt_tokens + stats.new_tokens)
            if generation.error is not None:
                reason = str(generation.error).rstrip(". ")
                self._show_notice(f"The model raised {type(generation.error).__name__}: {reason}. The transcript "
                                  "is kept: try again, regenerate, or change the settings.")
            self._set_busy(False)

    # --- actions ----------------------------------------------------------------------------
    def _start(self, action: Any, *args: Any) -> Generation:
        """Start a reply with ``action`` (a session method), with a live widget ready for it."""
        with self._lock:
            self._live = with_class(widgets.HTML(live_html("")), "gw-message", "gw-assistant",
                                     "gw-streaming")
            self._paint.reset()
            self.status.value = ""
            self._set_busy(True)
        try:
            generation = action(*args)
        except Exception as exc:  # nothing started: undo the live widget, keep the panel usable
            with self._lock:
                if self._live is not None:
                    self._live.close()
                    self._live = None
                self._set_busy(self.session.busy)
                self._sync()
                self._show_notice(str(exc))
            raise
        with self._lock:
            finished = self._finished is generation  # a fast reply can end before we get here
            if not (finished and generation.error is not None):  # an error's notice stays
                self._show_notice(generation.plan.notice() or "")
            if not finished:
                self._update_meter(generation.plan.prompt_tokens)
                self._sync()
        return generation

    def send(self, text: str) -> Generation:
        """Send ``text`` and start streaming the reply; empty text is rejected with a notice."""
        if self.session.busy:
            raise self._notice_error("A reply is still streaming: press Stop or wait for it.")
        if self._editing:
            self._editing = False
            return self._start(self.session.edit_last, text)
        return self._start(self.session.send, text)

    def _notice_error(self, text: str) -> GemmaWidgetsError:
        self._show_notice(text)
        return GemmaWidgetsError(text)

    @property
    def _active_input(self) -> widgets.Text | widgets.Textarea:
        return self.multiline_input if self.multiline_toggle.value else self.input

    def _on_multiline(self, change: dict) -> None:
        old, new = (self.input, self.multiline_input) if change["new"] else (self.multiline_input, self.input)
        new.value, old.value = old.value, ""
        old.layout.display, new.layout.display = "none", None

    def _send_input(self) -> None:
        box = self._active_input
        self.send(box.value)
        box.value = ""

    def stop(self) -> None:
        """Stop the streaming reply after the current decoding step; the partial reply is kept."""
        self.session.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the reply has finished and the panel shows it; False on timeout."""
        return self.session.wait(timeout)

    def regenerate(self) -> Generation:
        """Replace the last reply with a new one."""
        if self.session.busy:
            raise self._notice_error("A reply is still streaming: press Stop or wait for it.")
        return self._start(self.session.regenerate)

    def edit_last(self, text: str) -> Generation:
        """Replace the last user message with ``text`` (its reply is dropped) and resend."""
        self._editing = False
        return self._start(self.session.edit_last, text)

    def _start_edit(self) -> None:
        self.session._check_idle()
        messages = self.session.conversation.messages
        users = [m for m in messages if m.role == "user"]
        if not users:
            raise GemmaWidgetsError("There is no message to edit yet.")
        self._active_input.value = users[-1].content
        self._editing = True
        self._show_notice("Editing your last message: change it and press Enter or Send to resend it "
                          "(its reply is replaced).")

    def clear(self) -> None:
        """Stop any reply and empty the transcript (system prompt and settings stay)."""
        self.session.clear()
        self._editing = False
        self._sync()
        self.status.value = ""
        self._show_notice("")
        self._update_meter(self.session.token_count())

    @property
    def history(self) -> list[dict[str, str]]:
        """The transcript in transformers' messages format (system prompt first, if set)."""
        return self.session.history

    @property
    def settings(self) -> SamplingSettings:
        return self.session.settings

    def _on_system(self, change: dict) -> None:
        self.session.conversation.system = change["new"]
        self._update_meter(self.session.token_count())

    def _on_setting(self, _change: dict) -> None:
        s = self.session.settings
        s.temperature, s.top_p = float(self.temperature.value), float(self.top_p.value)
        s.top_k, s.max_new_tokens = int(self.top_k.value), int(self.max_new_tokens.value)
        s.repetition_penalty = float(self.repetition_penalty.value)

    # --- transcripts ------------------------------------------------------------------------
    def export_json(self, path: str | Path | None = None) -> str:
        """The transcript as JSON text; also written to ``path`` if given."""
        text = self.session.conversation.to_json()
        if path is not None:
            write_atomic(path, text)
        return text

    def export_markdown(self, path: str | Path | None = None) -> str:
        """The transcript as Markdown text; also written to ``path`` if given."""
        text = self.session.conversation.to_markdown()
        if path is not None:
            write_atomic(path, text)
        return text

    def _save_here(self) -> None:
        stem = time.strftime("gemma-chat-%Y%m%d-%H%M%S")
        self.export_json(f"{stem}.json")
        self.export_markdown(f"{stem}.md")
        self._show_notice(f"Saved {stem}.json and {stem}.md in {Path.cwd()}.")

    def load(self, source: str | Path | dict | list) -> None:
        """Replace the transcript with a saved one: a JSON path, or the data itself."""
        self.session.load(source)
        self._editing = False
        self.system_box.unobserve(self._on_system, "value")
        self.system_box.value = self.session.conversation.system
        self.system_box.observe(self._on_system, "value")
        self._sync()
        self.status.value = ""
        self._show_notice("")
        self._update_meter(self.session.token_count())

    def _load_upload(self, value: Any) -> None:
        # ipywidgets 8: a tuple of dicts with 'content'; 7.7 (Colab): {name: {'content': ...}}
        files = list(value.values()) if isinstance(value, dict) else list(value or ())
        if not files:
            return
        self.load(parse_json(bytes(files[0]["content"]), "That file is not a JSON transcript"))
