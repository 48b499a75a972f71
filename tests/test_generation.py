"""The chat runtime on scripted engines: streaming, stop, errors, sampling settings, the session's actions."""

from __future__ import annotations

import time

import pytest
from fakes import ScriptedEngine, fake_model, scripted

from gemma_widgets.engines.base import Finish, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError, GenerationError
from gemma_widgets.session import ChatSession


def test_sampling_settings_to_generate_kwargs():
    greedy = SamplingSettings(temperature=0, max_new_tokens=5).generate_kwargs()
    assert greedy["do_sample"] is False and greedy["max_new_tokens"] == 5
    sample = SamplingSettings(temperature=0.5, top_p=0.9, top_k=10, repetition_penalty=1.2).generate_kwargs()
    assert sample == {"do_sample": True, "temperature": 0.5, "top_p": 0.9, "top_k": 10,
                      "max_new_tokens": 256, "repetition_penalty": 1.2}


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                 dict(max_new_tokens=0), dict(repetition_penalty=0)])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(GemmaWidgetsError, match=next(iter(bad))):
        SamplingSettings(**bad).validate()


def test_sampling_settings_reach_the_engine():
    loaded = scripted()
    session = ChatSession(loaded, settings=SamplingSettings(temperature=0.3, top_p=0.8, top_k=7, max_new_tokens=9,
                                                            repetition_penalty=1.3))
    assert session.send("hi").wait(10)
    assert loaded.engine.calls[-1].settings == session.settings
    assert loaded.engine.calls[-1].settings is not session.settings  # a copy: a later change waits for the next reply
    session.settings.temperature = 0
    assert session.send("again").wait(10)
    assert loaded.engine.calls[-1].settings.greedy
    session.settings.top_p = 2
    with pytest.raises(GemmaWidgetsError, match="top_p"):
        session.send("bad settings")
    assert len(session.history) == 4  # nothing was sent


def test_end_of_turn_ends_the_reply():
    session = ChatSession(scripted("Hi **there**"))
    generation = session.send("hello")
    assert generation.wait(10)
    assert generation.text == "Hi **there**" and generation.stats.stop_reason == "end_of_turn"


def test_max_new_tokens_ends_the_reply():
    session = ChatSession(scripted(["la "], finish=Finish.MAX_NEW_TOKENS), settings=SamplingSettings(max_new_tokens=5))
    generation = session.send("sing")
    assert generation.wait(10)
    assert generation.text == "la " * 5 and generation.stats.stop_reason == "max_new_tokens"
    assert "max new tokens" in generation.stats.summary()


def test_stop_ends_within_a_step_and_keeps_the_partial_reply():
    model = ScriptedEngine(["la "], delay=0.01, finish=Finish.MAX_NEW_TOKENS)
    session = ChatSession(fake_model(model), settings=SamplingSettings(max_new_tokens=900))
    generation = session.send("sing")
    deadline = time.monotonic() + 10
    while model.steps < 6 and time.monotonic() < deadline:
        time.sleep(0.005)
    session.stop()
    assert session.wait(10)
    steps = model.steps
    assert steps < 900 and generation.stats.stop_reason == "stopped"
    assert generation.stats.new_tokens == steps  # no token after the step in which Stop came
    last = session.conversation.messages[-1]
    assert last.stopped and last.content.startswith("la la") and not last.error


def test_a_raising_model_keeps_the_transcript_and_the_session_usable():
    model = ScriptedEngine("partial answer here", fail_at=2)
    session = ChatSession(fake_model(model))
    generation = session.send("question")
    assert generation.wait(10)  # never hangs
    assert isinstance(generation.error, RuntimeError) and generation.stats.stop_reason == "error"
    last = session.conversation.messages[-1]
    assert last.error == "RuntimeError: the fake engine failed on purpose"
    assert last.content == generation.text.strip() != ""
    model.fail_at = None
    assert session.send("again").wait(10)
    assert session.history[-1]["content"] == "partial answer here"


def test_a_failing_view_callback_ends_the_reply_with_the_error():
    session = ChatSession(scripted("x " * 50, delay=0.001))

    def broken(text: str) -> None:
        raise ValueError("view broke")

    session.on_text.append(broken)
    generation = session.send("hi")
    assert generation.wait(10)
    assert isinstance(generation.error, ValueError) and session.conversation.messages[-1].error


def test_regenerate_edit_clear_and_busy():
    model = ScriptedEngine("one two", delay=0.02)
    session = ChatSession(fake_model(model))
    session.send("first")
    with pytest.raises(GemmaWidgetsError, match="still streaming"):
        session.send("too soon")
    assert session.wait(10)
    assert session.regenerate().wait(10)
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert len(model.calls) == 2 and model.calls[0].input_ids == model.calls[1].input_ids
    assert session.edit_last("first, edited").wait(10)
    assert session.history[0]["content"] == "first, edited" and len(session.history) == 2
    with pytest.raises(GemmaWidgetsError, match="empty"):
        session.edit_last("  ")
    assert session.history[0]["content"] == "first, edited"
    session.clear()
    assert session.history == []
    with pytest.raises(GemmaWidgetsError, match="nothing to regenerate"):
        session.regenerate()


def test_too_long_message_is_not_added():
    session = ChatSession(scripted(), context_window=64,
                          settings=SamplingSettings(max_new_tokens=16))
    with pytest.raises(GenerationError, match="context window"):
        session.send("word " * 100)
    assert session.history == [] and not session.busy


def test_context_overflow_drops_old_turns():
    session = ChatSession(scripted("an answer " * 5),
                          context_window=160, settings=SamplingSettings(max_new_tokens=20))
    for i in range(8):
        assert session.send(f"message {i} " + "filler " * 10).wait(10)
    assert session.plan.dropped > 0 and "left out" in session.plan.notice()
    assert session.plan.prompt_tokens + 20 <= 160
    assert len(session.history) == 16  # nothing lost from the transcript
    assert session.token_count() <= 160


def test_save_and_load(tmp_path):
    session = ChatSession(scripted())
    session.conversation.system = "Sys"
    assert session.send("hi").wait(10)
    path = session.save(tmp_path / "t.json")
    other = ChatSession(scripted())
    other.load(path)
    assert other.history == session.history
    assert other.send("continue").wait(10)
    assert len(other.history) == 5
