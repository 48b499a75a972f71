"""The chat runtime: streaming, stop, errors, sampling settings, the session's actions."""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch
from chat_fakes import ScriptedModel, fake_loaded

from gemma_widgets.engines.base import IncrementalDecoder, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError, GenerationError
from gemma_widgets.session import ChatSession

GREEDY = SamplingSettings(temperature=0, max_new_tokens=12)


def test_decoder_hands_text_over_token_by_token(tiny):
    tok = tiny.tokenizer
    ids = tok("Hello wonderful world, café 👋\nnext line", add_special_tokens=False).input_ids
    decoder = IncrementalDecoder(tok)
    chunks = [decoder.feed([token]) for token in ids]
    assert "".join(chunks) == tok.decode(ids)
    assert chunks[0] == "Hello"  # no waiting for the end of a word
    assert all("\ufffd" not in c for c in chunks)  # emoji bytes are held until complete


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


def test_reply_equals_a_bare_greedy_generate(tiny):
    session = ChatSession(tiny, settings=GREEDY)
    seen: list[str] = []
    session.on_text.append(seen.append)
    generation = session.send("Tell me a story")
    assert generation.wait(60)
    ids = torch.tensor([generation.plan.input_ids])
    bare = tiny.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                               eos_token_id=list(tiny.engine.stop_ids), pad_token_id=0)
    expected = tiny.tokenizer.decode(bare[0, ids.shape[1]:], skip_special_tokens=True)
    assert generation.text == expected
    assert len(seen) > 1 and seen[-1] == expected  # it streamed, growing to the final text
    assert session.history[-1] == {"role": "assistant", "content": expected.strip()}
    stats = generation.stats
    assert stats.new_tokens == bare.shape[1] - ids.shape[1] and stats.prompt_tokens == ids.shape[1]
    assert stats.ttft_s is not None and 0 < stats.ttft_s <= stats.total_s
    assert stats.stop_reason in ("end_of_turn", "max_new_tokens")


def test_sampling_settings_reach_generate(tiny):
    model = ScriptedModel(tiny.tokenizer)
    session = ChatSession(fake_loaded(tiny, model),
                          settings=SamplingSettings(temperature=0.3, top_p=0.8, top_k=7, max_new_tokens=9,
                                                    repetition_penalty=1.3))
    session.send("hi").wait(10)
    call = model.calls[-1]
    assert (call["do_sample"], call["temperature"], call["top_p"], call["top_k"]) == (True, 0.3, 0.8, 7)
    assert call["max_new_tokens"] == 9 and call["repetition_penalty"] == 1.3
    assert tiny.tokenizer.convert_tokens_to_ids("<end_of_turn>") in call["eos_token_id"]
    session.settings.temperature = 0
    session.send("again").wait(10)
    assert model.calls[-1]["do_sample"] is False
    session.settings.top_p = 2
    with pytest.raises(GemmaWidgetsError, match="top_p"):
        session.send("bad settings")
    assert len(session.history) == 4  # nothing was sent


def test_end_of_turn_ends_the_reply(tiny):
    session = ChatSession(fake_loaded(tiny, ScriptedModel(tiny.tokenizer, "Hi **there**")))
    generation = session.send("hello")
    assert generation.wait(10)
    assert generation.text == "Hi **there**" and generation.stats.stop_reason == "end_of_turn"


def test_stop_ends_within_a_step_and_keeps_the_partial_reply(tiny):
    model = ScriptedModel(tiny.tokenizer, "la ", delay=0.01, forever=True)
    session = ChatSession(fake_loaded(tiny, model), settings=SamplingSettings(max_new_tokens=900))
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


def test_stop_with_the_real_stopping_criteria(tiny):
    session = ChatSession(tiny, settings=SamplingSettings(temperature=0, max_new_tokens=600))
    first = threading.Event()
    session.on_text.append(lambda text: first.set())
    generation = session.send("go on and on")
    assert first.wait(60)
    session.stop()
    assert generation.wait(60)
    assert generation.stats.stop_reason in ("stopped", "end_of_turn")
    assert generation.stats.new_tokens < 600


def test_a_raising_model_keeps_the_transcript_and_the_session_usable(tiny):
    model = ScriptedModel(tiny.tokenizer, "partial answer here", fail_after=2)
    session = ChatSession(fake_loaded(tiny, model))
    generation = session.send("question")
    assert generation.wait(10)  # never hangs
    assert isinstance(generation.error, RuntimeError) and generation.stats.stop_reason == "error"
    last = session.conversation.messages[-1]
    assert last.error == "RuntimeError: the fake model failed on purpose"
    assert last.content == generation.text.strip() != ""
    model.fail_after = None
    assert session.send("again").wait(10)
    assert session.history[-1]["content"] == "partial answer here"


def test_a_failing_view_callback_ends_the_reply_with_the_error(tiny):
    session = ChatSession(fake_loaded(tiny, ScriptedModel(tiny.tokenizer, "x " * 50, delay=0.001)))

    def broken(text: str) -> None:
        raise ValueError("view broke")

    session.on_text.append(broken)
    generation = session.send("hi")
    assert generation.wait(10)
    assert isinstance(generation.error, ValueError) and session.conversation.messages[-1].error


def test_regenerate_edit_clear_and_busy(tiny):
    model = ScriptedModel(tiny.tokenizer, "one two", delay=0.02)
    session = ChatSession(fake_loaded(tiny, model))
    session.send("first")
    with pytest.raises(GemmaWidgetsError, match="still streaming"):
        session.send("too soon")
    session.wait(10)
    session.regenerate().wait(10)
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert len(model.calls) == 2 and model.calls[0]["input_ids"] == model.calls[1]["input_ids"]
    session.edit_last("first, edited").wait(10)
    assert session.history[0]["content"] == "first, edited" and len(session.history) == 2
    with pytest.raises(GemmaWidgetsError, match="empty"):
        session.edit_last("  ")
    assert session.history[0]["content"] == "first, edited"
    session.clear()
    assert session.history == []
    with pytest.raises(GemmaWidgetsError, match="nothing to regenerate"):
        session.regenerate()


def test_too_long_message_is_not_added(tiny):
    session = ChatSession(fake_loaded(tiny, ScriptedModel(tiny.tokenizer)), context_window=64,
                          settings=SamplingSettings(max_new_tokens=16))
    with pytest.raises(GenerationError, match="context window"):
        session.send("word " * 100)
    assert session.history == [] and not session.busy


def test_context_overflow_drops_old_turns(tiny):
    session = ChatSession(fake_loaded(tiny, ScriptedModel(tiny.tokenizer, "an answer " * 5)),
                          context_window=160, settings=SamplingSettings(max_new_tokens=20))
    for i in range(8):
        session.send(f"message {i} " + "filler " * 10).wait(10)
    assert session.plan.dropped > 0 and "left out" in session.plan.notice()
    assert session.plan.prompt_tokens + 20 <= 160
    assert len(session.history) == 16  # nothing lost from the transcript
    assert session.token_count() <= 160


def test_save_and_load(tiny, tmp_path):
    session = ChatSession(fake_loaded(tiny, ScriptedModel(tiny.tokenizer)))
    session.conversation.system = "Sys"
    session.send("hi").wait(10)
    path = session.save(tmp_path / "t.json")
    other = ChatSession(fake_loaded(tiny, ScriptedModel(tiny.tokenizer)))
    other.load(path)
    assert other.history == session.history
    other.send("continue").wait(10)
    assert len(other.history) == 5


def _export_tiny_for_genai(tiny, out) -> dict:
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from optimum.intel import OVModelForCausalLM

    with warnings.catch_warnings():  # the export's tracer warnings teach nothing here
        warnings.simplefilter("ignore")
        OVModelForCausalLM.from_pretrained(tiny.path, export=True, compile=False).save_pretrained(out)
    tiny.tokenizer.save_pretrained(out)
    tokenizer, detokenizer = convert_tokenizer(tiny.tokenizer, with_detokenizer=True)
    ov.save_model(tokenizer, str(out / "openvino_tokenizer.xml"))
    ov.save_model(detokenizer, str(out / "openvino_detokenizer.xml"))
    return {"source": tiny.path}


@pytest.mark.integration
def test_openvino_genai_engine_matches_transformers_and_stops(tiny):
    pytest.importorskip("openvino_genai")
    pytest.importorskip("optimum.intel", exc_type=ImportError)
    from gemma_widgets.cache import build_once, cache_root
    from gemma_widgets.engines.genai import GenAIEngine
    from gemma_widgets.loading import LoadedModel

    folder = build_once(cache_root() / "tiny-random-gemma2-genai",
                        lambda out: _export_tiny_for_genai(tiny, out))
    loaded = LoadedModel(GenAIEngine.from_ir(str(folder)), tiny.preset, "ov-fp32")
    ov_session = ChatSession(loaded, settings=GREEDY)
    pt_session = ChatSession(tiny, settings=GREEDY)
    ov_reply, pt_reply = ov_session.send("Hello there"), pt_session.send("Hello there")
    assert ov_reply.wait(120) and pt_reply.wait(120)
    assert ov_reply.error is None and ov_reply.text == pt_reply.text != ""
    assert ov_reply.stats.new_tokens == pt_reply.stats.new_tokens

    ov_session.settings.max_new_tokens = 600
    first = threading.Event()
    ov_session.on_text.append(lambda text: first.set())
    generation = ov_session.send("and on and on")
    assert first.wait(60)
    ov_session.stop()
    assert generation.wait(60) and generation.stats.stop_reason in ("stopped", "end_of_turn")
    assert generation.stats.new_tokens < 600
