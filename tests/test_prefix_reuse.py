"""The transformers engine keeps a chat's KV cache: a turn prefills only its new tokens, and its reply is the
one a fresh prefill gives, token for token, whether the cache grows, is cropped (a regenerated reply) or is
past a sliding window (the tiny Gemma 2's is 16 tokens) and starts again."""

from __future__ import annotations

import threading

import pytest

from gemma_widgets.engines.base import SamplingSettings
from gemma_widgets.engines.hf import TransformersEngine

pytestmark = pytest.mark.integration

GREEDY = SamplingSettings(temperature=0, max_new_tokens=6)


def reply(engine, ids) -> list[int]:
    return [i for piece in engine.token_stream(ids, GREEDY, threading.Event()) for i in piece]


@pytest.fixture
def prefills(tiny):
    """The number of tokens each forward pass of ``tiny``'s decoder is given, as they come."""
    seen: list[int] = []
    hook = tiny.model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    yield seen
    hook.remove()


def test_a_chat_prefills_only_each_turns_new_tokens_and_replies_as_a_fresh_prefill(tiny, prefills):
    engine = tiny.engine
    fresh = TransformersEngine(tiny.model, tiny.tokenizer, tiny.path)
    fresh.reuses_prefix = False
    engine._cache, engine._cached_ids = None, []
    messages: list[dict[str, str]] = []
    reused = 0
    for turn in range(4):
        messages.append({"role": "user", "content": f"Turn {turn}: name a colour."})
        ids = list(tiny.prompt(messages).input_ids)
        held = list(engine._cached_ids)
        shared = next((i for i, (a, b) in enumerate(zip(held, ids[:-1], strict=False)) if a != b),
                      min(len(held), len(ids) - 1))
        prefills.clear()
        mine = reply(engine, ids)
        assert mine == reply(fresh, ids), f"turn {turn}: the reused cache changed the reply"
        can_reuse = shared and (shared == len(held) or len(held) < 16)  # growing, or cropped inside the window
        assert prefills[0] == (len(ids) - shared if can_reuse else len(ids))
        reused += bool(can_reuse)
        messages.append({"role": "assistant", "content": tiny.tokenizer.decode(mine, skip_special_tokens=True)})
    assert reused >= 2  # the later turns grew the cache of the one before


def test_within_the_window_a_turn_prefills_only_what_is_new(tiny, prefills):
    engine = tiny.engine
    engine._cache, engine._cached_ids = None, []
    ids = [2, 105, 2364, 107, 10979]  # five tokens: cache and reply stay inside the 16-token window
    first = reply(engine, ids[:3])
    assert len(engine._cached_ids) == 3 + len(first) - 1 <= 16
    prefills.clear()
    second = [*ids[:3], *first]
    assert reply(engine, second) == reply(TransformersEngine(tiny.model, tiny.tokenizer, tiny.path), second)
    assert prefills[0] == 1 or prefills[0] < len(second)  # only the last reply token was not cached


def test_a_regenerated_reply_crops_the_cache_and_comes_out_the_same(tiny, prefills):
    engine = tiny.engine
    engine._cache, engine._cached_ids = None, []
    ids = [2, 105, 2364, 107]
    once = reply(engine, ids)
    prefills.clear()
    again = reply(engine, ids)  # the cache holds ids + the reply: cropped back to ids[:-1]
    assert again == once and prefills[0] == 1


def test_a_compiled_model_keeps_generates_own_static_cache(tiny):
    tiny.model.generation_config.cache_implementation = "static"
    try:
        assert tiny.engine.reusable_cache([1, 2, 3]) is None
    finally:
        tiny.model.generation_config.cache_implementation = None
