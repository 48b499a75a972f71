"""The terminal chat: driven through a pipe, and in process with a fake model."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys

import pytest
from fakes import scripted

from gemma_widgets.cli import terminal
from gemma_widgets.engines.base import SamplingSettings
from gemma_widgets.session import ChatSession


def _run(script: str, reply: str = "Hi there.", **session_args) -> tuple[str, ChatSession]:
    session = ChatSession(scripted(reply), **session_args)
    out = io.StringIO()
    assert terminal.TerminalChat(session, io.StringIO(script), out).run() == 0
    return out.getvalue(), session


@pytest.mark.slow
def test_chat_subcommand_through_a_pipe():
    script = "Hello there\n   \n/system Be brief.\nsecond \\\nline\n/quit\nnever read\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "gemma_widgets", "chat", "--model", "tiny-random-gemma2",
         "--precision", "fp32", "--temperature", "0", "--max-new-tokens", "6"],
        input=script, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("gemma> ") == 2 and out.count("6 tokens") == 2  # two replies, streamed and counted
    assert "! The message is empty" in out and "system prompt: Be brief." in out
    assert "Traceback" not in proc.stderr


def test_bad_option_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "gemma_widgets", "chat", "--top-p", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "top_p must be in (0, 1]" in proc.stderr


def test_help_shows_the_real_defaults():
    parser = argparse.ArgumentParser()
    terminal.add_arguments(parser)
    text = parser.format_help()
    d = SamplingSettings()
    for value in (d.temperature, d.top_p, d.top_k, d.max_new_tokens, d.repetition_penalty):
        assert f"(default {value})" in text


def test_commands(tmp_path):
    saved = tmp_path / "chat.json"
    out, session = _run(f"first\n/regen\n/edit changed\n/set temperature=0\n/set top_p=7\n"
                        f"/set nope=1\n/save {saved}\n/clear\n/load {saved}\n/bogus\n/help\n")
    assert out.count("gemma> Hi there.") == 3
    assert "temperature = 0.0" in out and "top_p must be in (0, 1]" in out and "Use /set NAME=VALUE" in out
    assert "Unknown command /bogus" in out and "/regen" in out
    assert "loaded 2 messages" in out
    assert json.loads(saved.read_text())["messages"][0]["content"] == "changed"
    assert session.history == [{"role": "user", "content": "changed"},
                               {"role": "assistant", "content": "Hi there."}]
    assert session.settings.temperature == 0 and session.settings.top_p == 0.95


def test_replies_escape_nothing_and_report_errors():
    session = ChatSession(scripted("<b>raw</b> text and more", fail_at=2))
    out = io.StringIO()
    assert terminal.TerminalChat(session, io.StringIO("go\n"), out).run() == 0
    text = out.getvalue()
    assert "gemma> <b>" in text and "the model raised RuntimeError" in text
    assert session.conversation.messages[-1].error


def test_context_notice_is_printed():
    out, _ = _run("".join(f"message {i} " + "filler " * 10 + "\n" for i in range(6)),
                  reply="an answer " * 5, context_window=160, settings=SamplingSettings(max_new_tokens=20))
    assert "left out of the prompt" in out


def test_escape_sequences_from_the_model_are_shown_not_obeyed():
    """OSC 52 (clipboard), a title change and a screen clear arrive as visible text."""
    attack = "a\x1b]52;c;ZXZpbA==\x07b\x1b]0;owned\x07c\x1b[2Jd\u202ee 👋🏽"
    out, _ = _run("hi\n/quit\n", reply=attack)
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]52;c;ZXZpbA==\\x07b" in out and "👋🏽" in out


def test_a_failed_command_prints_one_line_and_keeps_the_chat(tmp_path):
    script = f"hello\n/save {tmp_path}/nodir/chat.json\n/load /dev/zero\n/save {tmp_path}/chat.json\n/quit\n"
    out, session = _run(script)
    assert "! Cannot save to" in out and "does not exist" in out and "larger than" in out
    assert len(session.conversation.messages) == 2  # the chat went on, and was saved after all
    assert json.loads((tmp_path / "chat.json").read_text())["messages"][0]["content"] == "hello"


def test_a_loaded_system_prompt_is_shown_not_obeyed(tmp_path):
    """A transcript's system prompt is untrusted too: OSC 52 and a screen clear, printed by /system."""
    saved = tmp_path / "evil.json"
    saved.write_text(json.dumps({"system": "be \x1b]52;c;ZXZpbA==\x07nice\x1b[2J", "messages": []}))
    out, _ = _run(f"/load {saved}\n/system\n/quit\n")
    assert "\x1b" not in out and "\x07" not in out
    assert "system prompt: be \\x1b]52;c;ZXZpbA==\\x07nice\\x1b[2J" in out


def test_a_file_nested_past_pythons_stack_is_one_line_and_the_chat_goes_on(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    out, session = _run(f"/load {deep}\nhello\n/quit\n")
    assert "! Could not read a JSON transcript" in out and "too deeply" in out
    assert "gemma> Hi there." in out and len(session.conversation.messages) == 2
