"""llama.cpp as an engine: the bundled GGUF through llama-cpp-python, in the chat and the harness.

``bundled`` (the chat model) is the package's Q4_K_M file plus the kit's chat adapter as a llama.cpp
LoRA GGUF; ``bundled-base`` is the file alone (tests/test_gguf_lora.py checks the conversion).
"""

from __future__ import annotations

import threading

import pytest

from gemma_widgets import ChatPanel, bench, load_model
from gemma_widgets.engines.base import SamplingSettings
from gemma_widgets.offline.bundled import TOKENIZER_PROBES
from gemma_widgets.precisions import PRECISIONS
from gemma_widgets.presets import PRESETS

pytestmark = pytest.mark.integration
llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def gguf():
    return load_model("bundled", "gguf-q4_k_m")


def test_llamacpp_tokenizes_as_the_kit_does(gguf):
    """The kit feeds llama.cpp ids from its Hugging Face tokenizer: they must be llama.cpp's own."""
    for text in TOKENIZER_PROBES:
        ours = gguf.tokenizer(text).input_ids
        theirs = gguf.model.tokenize(text.encode(), add_bos=True, special=True)
        assert ours == theirs, text


def test_scores_agree_with_what_generation_picks(gguf):
    """The logits scoring reads (a second context with every position's logits) pick the token that
    greedy generation picks after each prefix."""
    ids = gguf.prompt("Name three colours.").input_ids
    logits = list(gguf.engine.score(ids))[0]
    assert logits.shape == (len(ids), len(gguf.tokenizer))
    for end in (len(ids) - 8, len(ids)):
        assert int(logits[end - 1].argmax()) == gguf.engine.generate_exact(ids[:end], 1)[0]


def test_panel_streams_counts_and_stops_on_llamacpp(gguf):
    panel = ChatPanel(gguf, settings=SamplingSettings(temperature=0, max_new_tokens=24))
    assert panel.send("Name three colours.").wait(120)
    reply = panel.history[-1]
    stats = panel.session.generation.stats
    expected = gguf.tokenizer.decode(gguf.engine.generate_exact(gguf.prompt(panel.history[:1]).input_ids,
                                                                stats.new_tokens), skip_special_tokens=True)
    assert reply["content"] == expected.strip() != ""  # greedy: the same tokens as a bare generate
    assert 0 < stats.new_tokens <= 24 and stats.stop_reason in ("end_of_turn", "max_new_tokens")

    panel.settings.max_new_tokens = 2000
    first = threading.Event()
    panel.session.on_text.append(lambda text: first.set())
    generation = panel.send("Tell me a very long story.")
    assert first.wait(60)
    panel.stop()
    assert generation.wait(30) and generation.stats.stop_reason == "stopped"
    assert 0 < generation.stats.new_tokens < 2000 and panel.history[-1]["content"] == generation.text.strip()


def test_a_reply_is_the_same_whatever_came_before_it(gguf):
    """Prefix reuse stays off on llama.cpp: the engine resets its context for every request, because
    ``Llama.generate`` would reuse the longest cached prefix, and on this sliding-window model a greedy
    reply after another reply then differed from the same request made first. A chat's next turn shares
    its whole history with the turn before, the case where reuse would apply."""
    chat = [{"role": "user", "content": "Name three colours."}]
    ids = gguf.prompt(chat).input_ids
    first = gguf.engine.generate_exact(ids, 16)
    later = [*chat, {"role": "assistant", "content": gguf.tokenizer.decode(first, skip_special_tokens=True)},
             {"role": "user", "content": "And three more?"}]
    gguf.engine.generate_exact(gguf.prompt(later).input_ids, 16)
    assert gguf.engine.generate_exact(ids, 16) == first


def test_sampling_reaches_llamacpp(gguf):
    greedy = gguf.generate("Once upon a time", chat=False, temperature=0, max_new_tokens=16)
    sampled = {gguf.generate("Once upon a time", chat=False, temperature=1.5, top_k=0, top_p=1.0,
                             max_new_tokens=16) for _ in range(3)}
    assert greedy == gguf.generate("Once upon a time", chat=False, temperature=0, max_new_tokens=16)
    assert len(sampled | {greedy}) > 1  # sampling at temperature 1.5 over the whole vocabulary varies


def test_bench_row_for_llamacpp():
    (result,) = bench.run("bundled", ["gguf-q4_k_m"], new_tokens=8, repeats=1, warmup=1, passage_tokens=128)
    assert result.ok, result.error
    assert result.engine == "llama.cpp" and result.decode_tps > 0 and result.ttft_ms > 0
    from gemma_widgets.offline.bundled import bundled_gguf
    from gemma_widgets.offline.gguf_lora import bundled_lora

    files = bundled_gguf().stat().st_size + bundled_lora().stat().st_size  # the GGUF file and the adapter's
    assert result.weights_mb == pytest.approx(files / 1e6, rel=0.01)
    assert 253_000_000 < files < 253_000_000 + 20_000_000  # the adapter: 3.8 M float32 numbers
    assert 5 < result.perplexity < 200 and result.text


def test_bundled_runs_the_chat_adapter_and_bundled_base_runs_the_file_alone(gguf):
    """The chat model on llama.cpp is the merged chat model transformers runs: the same top-1 token on the
    passage at 93% of positions or more (a random adapter: 0.968, the file alone against the base 0.965)."""
    from gemma_widgets.offline.gguf_lora import bundled_lora
    from gemma_widgets.quality import score_passage

    assert gguf.engine.lora == str(bundled_lora()) and "LoRA adapter on 126 matrices" in gguf.engine.recipe()
    base = load_model("bundled-base", "gguf-q4_k_m")
    assert base.engine.lora is None and "LoRA" not in base.engine.recipe()
    merged = score_passage(load_model("bundled", "fp32"))
    assert score_passage(gguf).agreement(merged) >= 0.93


def test_llamacpp_is_for_the_bundled_gguf_only():
    reason = PRECISIONS["gguf-q4_k_m"].unavailable_reason(PRESETS["tiny-random-gemma2"])
    assert reason and "GGUF" in reason


def test_fast_keeps_llamacpp_quality(gguf):
    """The chat default on a CPU (issue 18's bound): passage perplexity within 2% of llama.cpp's on the
    package's own Q4_K_M file, and the same top-1 token as fp32 at 90% of positions or more."""
    from gemma_widgets.precisions import PRECISIONS, resolve
    from gemma_widgets.quality import score_passage

    preset = PRESETS["bundled"]
    if PRECISIONS["ov-int8"].unavailable_reason(preset):
        pytest.skip(PRECISIONS["ov-int8"].unavailable_reason(preset))
    assert resolve("fast", preset).name == "ov-int8"
    fast = score_passage(load_model("bundled", "fast"), keep_generator=False)
    llama = score_passage(gguf)
    reference = score_passage(load_model("bundled", "fp32"))
    assert fast.perplexity <= 1.02 * llama.perplexity
    assert fast.agreement(reference) >= 0.90
