"""The chat runtime on a real runtime (the tiny random Gemma 2 on transformers, openvino-genai): what the
scripted engines of test_generation.py cannot show."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from gemma_widgets.engines.base import IncrementalDecoder, SamplingSettings
from gemma_widgets.session import ChatSession

pytestmark = pytest.mark.model

GREEDY = SamplingSettings(temperature=0, max_new_tokens=12)


def test_decoder_hands_text_over_token_by_token(tiny):
    tok = tiny.tokenizer
    ids = tok("Hello wonderful world, café 👋\nnext line", add_special_tokens=False).input_ids
    decoder = IncrementalDecoder(tok)
    chunks = [decoder.feed([token]) for token in ids]
    assert "".join(chunks) == tok.decode(ids)
    assert chunks[0] == "Hello"  # no waiting for the end of a word
    assert all("\ufffd" not in c for c in chunks)  # emoji bytes are held until complete


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
    assert tiny.tokenizer.convert_tokens_to_ids("<end_of_turn>") in tiny.engine.stop_ids


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
