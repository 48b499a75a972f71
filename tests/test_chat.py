"""The ChatPanel, driven headless through its Python API and its widget models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from fakes import ScriptedEngine, fake_model, scripted

from gemma_widgets import ChatPanel
from gemma_widgets.engines.base import Finish, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.widgets.markdown import escape_text, render_markdown
from gemma_widgets.widgets.messages import live_html

XSS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">x</a>',
       "<iframe src=//evil></iframe>", "<svg onload=alert(1)>"]


def _panel(reply="Hello **world**.", **kwargs) -> tuple[ChatPanel, ScriptedEngine]:
    fake = {k: kwargs.pop(k) for k in ("delay", "finish", "fail_at") if k in kwargs}
    engine = ScriptedEngine(reply, **fake)
    return ChatPanel(fake_model(engine), **kwargs), engine


def _all_html(panel: ChatPanel) -> str:
    return "\n".join(w.value for w in panel.transcript.children) + panel.notice.value + panel.status.value


def _wait_for(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_widgets_have_stable_css_classes():
    panel, _ = _panel()
    assert "gw-chat" in panel.widget._dom_classes
    for widget, name in [(panel.input, "gw-input"), (panel.send_button, "gw-send"),
                         (panel.stop_button, "gw-stop"), (panel.status, "gw-status"),
                         (panel.notice, "gw-notice"), (panel.transcript, "gw-transcript"),
                         (panel.clear_button, "gw-clear"), (panel.regenerate_button, "gw-regenerate"),
                         (panel.edit_button, "gw-edit"), (panel.system_box, "gw-system"),
                         (panel.temperature, "gw-temperature"), (panel.meter_label, "gw-meter")]:
        assert name in widget._dom_classes
    assert panel.send("hi").wait(10)
    user, reply = panel.transcript.children
    assert all("gw-message" in w._dom_classes for w in (user, reply))
    assert "gw-streaming" not in reply._dom_classes and "<strong>world</strong>" in reply.value  # the reply, rendered


@pytest.mark.model
def test_build_from_a_preset_name():
    panel = ChatPanel(model="tiny-random-gemma2", precision="fp32")
    assert panel.session.loaded.preset.name == "tiny-random-gemma2"
    assert panel.meter.max == panel.session.context_window == 1024
    with pytest.raises(GemmaWidgetsError, match="not both"):
        ChatPanel(panel.session.loaded, model="bundled")


def test_a_model_name_without_a_precision_gets_the_fast_one(monkeypatch):
    """Chat is speed-sensitive: ``fast`` (an OpenVINO export on openvino-genai on a CPU) by default."""
    import gemma_widgets.widgets.chat as chat

    asked = []
    monkeypatch.setattr(chat, "load_model", lambda name, precision, **kw: asked.append(precision) or scripted())
    ChatPanel(model="tiny-random-gemma2")
    ChatPanel(model="tiny-random-gemma2", precision="bf16")
    assert asked == ["fast", "bf16"]


def test_streaming_updates_the_reply_and_disables_send():
    panel, model = _panel("one two three four five six seven eight", delay=0.03)
    panel.input.value = "count"
    panel.send_button.click()
    assert panel.input.value == ""
    assert panel.send_button.disabled and not panel.stop_button.disabled
    live = panel.transcript.children[-1]
    assert "gw-streaming" in live._dom_classes and "gw-message" in live._dom_classes
    assert _wait_for(lambda: "three" in live.value)
    assert "eight" not in re.sub("<[^>]*>", "", live.value)  # it is mid-reply: the text arrived in pieces
    assert panel.wait(10)
    assert not panel.send_button.disabled and panel.stop_button.disabled
    assert [m["role"] for m in panel.history] == ["user", "assistant"]
    assert panel.history[-1]["content"] == "one two three four five six seven eight"
    assert "eight" in panel.transcript.children[-1].value and len(panel.transcript.children) == 2
    assert "gw-streaming" not in panel.transcript.children[-1]._dom_classes
    assert "tokens" in panel.status.value and "tok/s" in panel.status.value
    assert panel.meter.value > 0 and "/ 1,024 tokens" in panel.meter_label.value


def test_enter_sends_through_the_submit_event():
    panel, _ = _panel()
    panel.input.value = "via Enter"
    panel.input._handle_custom_msg({"event": "submit"}, [])  # what the browser sends on Enter
    assert panel.wait(10)
    assert panel.history[0] == {"role": "user", "content": "via Enter"} and panel.input.value == ""


def test_multiline_input_sends_with_the_button():
    panel, _ = _panel()
    panel.input.value = "first line"
    panel.multiline_toggle.value = True
    assert panel.multiline_input.value == "first line" and panel.input.layout.display == "none"
    panel.multiline_input.value = "first line\nsecond line"
    panel.send_button.click()
    assert panel.wait(10) and panel.history[0]["content"] == "first line\nsecond line"
    assert panel.multiline_input.value == ""
    panel.edit_button.click()
    assert panel.multiline_input.value == "first line\nsecond line"
    panel.multiline_toggle.value = False
    assert panel.input.value == "first line\nsecond line" and panel.multiline_input.layout.display == "none"


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_message_is_rejected_with_a_notice(text):
    panel, model = _panel()
    panel.input.value = text
    panel.send_button.click()
    assert "empty" in panel.notice.value and panel.history == [] and model.calls == []
    with pytest.raises(GemmaWidgetsError, match="empty"):
        panel.send(text)
    assert panel.transcript.children == () and not panel.send_button.disabled


@pytest.mark.parametrize("attack", XSS)
def test_html_in_user_and_model_text_is_shown_as_text(attack):
    panel, _ = _panel(f"{attack} and **bold**")
    assert panel.send(f"look: {attack}").wait(10)
    html = _all_html(panel)
    for tag in ("<script", "<img", "<iframe", "<svg", "<a href=\"javascript", "<a "):
        assert tag not in html
    assert "&lt;" in html and "<strong>bold</strong>" in html
    assert panel.history[0]["content"] == f"look: {attack}"  # the transcript keeps the raw text


def test_the_snapshot_is_the_transcript_as_shown_with_its_styles_inline():
    """What a stored notebook shows: the panel's own message HTML (escaped), title and status, with the
    styles that carry meaning inline (JupyterLab drops the <style> block of an untrusted notebook)."""
    from gemma_widgets.widgets.display import SNAPSHOT_NOTE

    panel, _ = _panel("<script>alert(1)</script> and **bold**")
    assert panel.send("<img src=x onerror=alert(1)>\nsecond line").wait(10)
    (bundle,) = panel.snapshot()
    html = bundle["text/html"]
    assert all(widget.value in html for widget in panel.transcript.children)
    assert "<script" not in html and "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<strong>bold</strong>" in html and panel.status.value in html and SNAPSHOT_NOTE in html
    assert 'class="gw-msg gw-user" style="' in html and "white-space: pre-wrap" in html
    assert bundle["text/plain"].startswith("[ChatPanel")


def test_streaming_text_is_escaped_too():
    assert "<script" not in live_html("<script>alert(1)</script>")
    assert "&lt;script&gt;" in live_html("<script>alert(1)</script>")


def test_markdown_subset_is_rendered_safely():
    html = render_markdown("# T\n\n- a\n- b\n\n`x < y && z`\n\n```\nif a<b: pass\n```\n\n"
                           "[ok](https://example.org) [bad](javascript:alert(1)) ![pic](https://e.org/p.png)")
    assert "<h1>T</h1>" in html and "<li>a</li>" in html
    assert "<code>x &lt; y &amp;&amp; z</code>" in html and "if a&lt;b: pass" in html
    assert '<a href="https://example.org"' in html and 'href="javascript' not in html
    assert "<img" not in html and '<a href="https://e.org/p.png"' in html


def test_no_user_text_sets_an_attribute_and_deep_or_odd_markdown_renders():
    """A fence's info string would set ``class`` (or ``id`` with attribute syntax); nesting 500 deep
    raised RecursionError in the old renderer and froze the panel."""
    html = render_markdown("```python {#x .evil onclick=alert(1)}\nprint(1)\n```")
    assert html == "<pre><code>print(1)\n</code></pre>\n"
    for deep in ("- " * 1000 + "x", "> " * 5000 + "x"):  # beyond markdown-it's nesting: the whole text, plain
        assert render_markdown(deep) == f'<p class="gw-plain">{escape_text(deep)}</p>'
    assert render_markdown("- a\n  - b\n    - c").count("<ul>") == 3
    assert "[" * 100 in render_markdown("[" * 20000) and "![" * 100 in render_markdown("![" * 10000)


def test_stop_keeps_the_partial_reply_marked():
    panel, model = _panel(["la "], delay=0.01, finish=Finish.MAX_NEW_TOKENS,
                          settings=SamplingSettings(max_new_tokens=900))
    panel.send("sing")
    assert _wait_for(lambda: model.steps >= 5)
    panel.stop_button.click()
    assert panel.wait(10)
    assert model.steps < 900 and panel.history[-1]["content"].startswith("la la")
    assert "stopped by the user" in panel.transcript.children[-1].value
    assert "stopped" in panel.status.value and not panel.send_button.disabled


def test_clear_regenerate_and_edit_last():
    panel, model = _panel("reply")
    assert panel.send("first").wait(10)
    panel.regenerate_button.click()
    assert panel.wait(10) and len(model.calls) == 2 and len(panel.history) == 2
    panel.edit_button.click()
    assert panel.input.value == "first" and "Editing" in panel.notice.value
    panel.input.value = "first, edited"
    panel.send_button.click()
    assert panel.wait(10)
    assert [m["content"] for m in panel.history] == ["first, edited", "reply"]
    assert len(panel.transcript.children) == 2 and "first, edited" in panel.transcript.children[0].value
    assert panel.edit_last("third version").wait(10)
    assert panel.history[0]["content"] == "third version"
    panel.clear_button.click()
    assert panel.history == [] and panel.transcript.children == ()
    panel.regenerate_button.click()
    assert "nothing to regenerate" in panel.notice.value


def test_system_prompt_box_is_folded_into_the_first_turn():
    panel, model = _panel()
    panel.system_box.value = "You are a pirate."
    assert panel.send("Where is the treasure?").wait(10)
    prompt = model.tokenizer.decode(model.calls[-1].input_ids)
    assert "<start_of_turn>user\nYou are a pirate.\n\nWhere is the treasure?" in prompt
    assert panel.history[0] == {"role": "system", "content": "You are a pirate."}


def test_sampling_controls_drive_the_engine():
    panel, model = _panel()
    panel.temperature.value, panel.top_p.value, panel.top_k.value = 0.4, 0.5, 5
    panel.max_new_tokens.value, panel.repetition_penalty.value = 33, 1.25
    assert panel.send("hi").wait(10)
    assert model.calls[-1].settings == SamplingSettings(temperature=0.4, top_p=0.5, top_k=5, max_new_tokens=33,
                                                        repetition_penalty=1.25)
    panel.temperature.value = 0
    assert panel.send("greedy now").wait(10)
    assert model.calls[-1].settings.greedy


def test_context_overflow_shows_a_notice():
    panel, _ = _panel("an answer " * 5, context_window=160, settings=SamplingSettings(max_new_tokens=20))
    for i in range(8):
        assert panel.send(f"message {i} " + "filler " * 10).wait(10)
    assert "left out of the prompt" in panel.notice.value and len(panel.history) == 16
    assert len(panel.transcript.children) == 16 and panel.meter.value <= 160


def test_overflow_notice_shows_when_the_reply_ends_before_send_returns():
    panel, _ = _panel("an answer " * 5, context_window=160, settings=SamplingSettings(max_new_tokens=20))
    send = panel.session.send

    def send_and_finish(text):  # the race a busy machine makes: the reply ends first
        generation = send(text)
        assert generation.wait(10)
        return generation

    panel.session.send = send_and_finish
    for i in range(8):
        panel.send(f"message {i} " + "filler " * 10)
    assert "left out of the prompt" in panel.notice.value and len(panel.history) == 16


def test_a_raising_generation_shows_the_error_and_stays_usable():
    panel, model = _panel("some words before failing", fail_at=2)
    assert panel.send("go").wait(10)
    assert "RuntimeError" in panel.notice.value and "transcript is kept" in panel.notice.value
    assert "gw-error" in panel.transcript.children[-1].value
    assert not panel.send_button.disabled and panel.stop_button.disabled
    model.fail_at = None
    assert panel.send("again").wait(10)
    assert len(panel.history) == 4 and panel.history[-1]["content"] == "some words before failing"


def test_send_while_streaming_is_refused():
    panel, _ = _panel("x " * 200, delay=0.01)
    panel.send("long one")
    with pytest.raises(GemmaWidgetsError, match="still streaming"):
        panel.send("too soon")
    panel.stop()
    assert panel.wait(10) and len(panel.history) == 2


def test_export_and_load(tmp_path, monkeypatch):
    panel, _ = _panel("a reply")
    panel.system_box.value = "Sys"
    assert panel.send("question <b>").wait(10)
    data = json.loads(panel.export_json(tmp_path / "t.json"))
    assert data["messages"][0] == {"role": "user", "content": "question <b>"}
    assert "## User\n\n> question &lt;b&gt;" in panel.export_markdown(tmp_path / "t.md")  # quoted, escaped
    other, _ = _panel()
    other.load(tmp_path / "t.json")
    assert other.history == panel.history and other.system_box.value == "Sys"
    assert len(other.transcript.children) == 2
    raw = (tmp_path / "t.json").read_bytes()
    for value in (({"name": "t.json", "content": memoryview(raw)},),  # ipywidgets 8
                  {"t.json": {"metadata": {}, "content": raw}}):  # ipywidgets 7.7 (Colab)
        other.clear()
        other._ui(other._load_upload, value)
        assert other.history == panel.history
    other._ui(other._load_upload, ({"name": "x.json", "content": memoryview(b"nope")},))
    assert "not a JSON transcript" in other.notice.value
    monkeypatch.chdir(tmp_path)
    panel.save_button.click()
    assert len(list(tmp_path.glob("gemma-chat-*.json"))) == 1 and "Saved" in panel.notice.value


def test_runtime_does_not_import_ipywidgets():
    code = ("import sys, gemma_widgets, gemma_widgets.session, gemma_widgets.conversation, "
            "gemma_widgets.cli.terminal, gemma_widgets.arena; print('ipywidgets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.integration
def test_bundled_model_chats_in_the_panel(bundled):
    panel = ChatPanel(bundled, settings=SamplingSettings(temperature=0, max_new_tokens=16))
    panel.system_box.value = "Answer briefly."
    assert panel.send("What is the capital of France?").wait(120)
    reply = panel.history[-1]
    assert reply["role"] == "assistant" and reply["content"].strip()
    assert panel.session.generation.stats.new_tokens > 0
    assert "<end_of_turn>" not in reply["content"]


def test_an_unexpected_error_before_the_reply_leaves_the_panel_usable(monkeypatch):
    panel, _ = _panel()

    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(panel.session.conversation, "plan", broken)
    with pytest.raises(RuntimeError):
        panel.send("hi")
    assert not panel.send_button.disabled and panel.stop_button.disabled
    assert "template exploded" in panel.notice.value
    assert panel.history == [] and panel.transcript.children == ()
    monkeypatch.undo()
    assert panel.send("hi").wait(10) and len(panel.history) == 2
