"""The transformers engine keeps a chat's KV cache: a turn prefills only its new tokens, and its reply is the
one a fresh prefill gives, token for token, whether the cache grows, is cropped (a regenerated reply) or is
past a sliding window (the tiny Gemma 2's is 16 tokens) and starts again."""

from __future__ import annotations

import threading

import pytest
import transformers

from gemma_widgets import load_model
from gemma_widgets.engines.base import SamplingSettings
from gemma_widgets.engines.hf import TransformersEngine
from gemma_widgets.session import ChatSession

pytestmark = pytest.mark.integration

def reply(engine, ids, n: int = 6) -> list[int]:
    """``n`` greedy tokens (fewer at an end of turn) after ``ids``, as ``engine`` streams them."""
    settings = SamplingSettings(temperature=0, max_new_tokens=n)
    return [i for piece in engine.token_stream(ids, settings, threading.Event()) for i in piece]


def forward_lengths(model) -> tuple[list[int], object]:
    """A list that gets the number of tokens each forward pass of ``model``'s decoder is given, and its hook."""
    seen: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    return seen, hook


@pytest.fixture
def prefills(tiny):
    seen, hook = forward_lengths(tiny.model)
    yield seen
    hook.remove()


def test_a_chat_prefills_only_each_turns_new_tokens_and_replies_as_a_fresh_prefill():
    """Ten turns of a real chat in float32: from turn 2 on the first forward pass takes only the tokens the
    cache lacks (the last reply's final token and the new message), and every reply equals a fresh prefill's.

    In bfloat16 a reply's cached keys, computed a token at a time, round differently from a fresh prefill's
    (one batch), so near-ties may break the other way (4 of these 10 turns did in one run), as they do
    between any two bf16 kernels: float32 is where "the same reply" can be asked of the cache."""
    bundled = load_model("bundled", "fp32")
    session = ChatSession(bundled, settings=SamplingSettings(temperature=0, max_new_tokens=12))
    fresh = TransformersEngine(bundled.model, bundled.tokenizer, bundled.path)
    fresh.reuses_prefix = False
    seen, hook = forward_lengths(bundled.model)
    held: list[int] = []
    try:
        for turn in range(10):
            seen.clear()
            generation = session.send(f"Turn {turn + 1}: name one more colour.")
            assert session.wait(120) and generation.error is None
            ids = list(generation.plan.input_ids)
            assert seen[0] == len(ids) - len(held)  # the first turn: all of it
            assert list(generation.token_ids) == reply(fresh, ids, len(generation.token_ids)), f"turn {turn + 1}"
            held = list(bundled.engine._cached_ids)
            assert ids == held[:len(ids)]  # the cache holds the prompt and the reply but its last token
    finally:
        hook.remove()


def test_within_the_window_a_turn_prefills_only_what_is_new(tiny, prefills):
    engine = tiny.engine
    engine._cache, engine._cached_ids = None, []
    ids = [2, 105, 2364, 107, 10979]  # five tokens: cache and reply stay inside the 16-token window
    first = reply(engine, ids[:3])
    assert len(engine._cached_ids) == 3 + len(first) - 1 <= 16
    prefills.clear()
    second = [*ids[:3], *first]
    assert reply(engine, second) == reply(TransformersEngine(tiny.model, tiny.tokenizer, tiny.path), second)
    assert prefills[0] == 1  # only the reply's last token was not cached


def test_a_regenerated_reply_crops_the_cache_and_comes_out_the_same(tiny, prefills):
    engine = tiny.engine
    engine._cache, engine._cached_ids = None, []
    ids = [2, 105, 2364, 107]
    once = reply(engine, ids)
    prefills.clear()
    again = reply(engine, ids)  # the cache holds ids + the reply: cropped back to ids[:-1]
    # transformers 5's sliding layers keep no past to roll back: there a crop starts the cache again
    assert again == once and prefills[0] == (1 if transformers.__version__.startswith("4.") else len(ids))


def test_past_the_sliding_window_a_cache_that_would_need_cropping_starts_again(tiny, prefills):
    engine = tiny.engine
    engine._cache, engine._cached_ids = None, []
    ids = list(range(1000, 1020))  # 20 tokens: past the tiny model's 16-token window
    once = reply(engine, ids)
    prefills.clear()
    assert reply(engine, ids) == once and prefills[0] == len(ids)  # cropping it would lose states


def test_a_compiled_model_keeps_generates_own_static_cache(tiny):
    tiny.model.generation_config.cache_implementation = "static"
    try:
        assert tiny.engine.reusable_cache([1, 2, 3]) is None
    finally:
        tiny.model.generation_config.cache_implementation = None
