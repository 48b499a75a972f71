"""The precision arena: two replies, where they part, and figures from the engines' own logits."""

from __future__ import annotations

import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fakes import FakeTokenizer, NoLogits, ScriptedEngine, TextEngine, fake_model

from gemma_widgets import arena, divergence
from gemma_widgets.engines.base import Engine, Finish, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError, GenerationError

XSS = "<img src=x onerror=alert(1)>"
SHORT = SamplingSettings(temperature=0.0, max_new_tokens=16)


def parse(html: str) -> tuple[set[str], str]:
    """The tags in ``html`` and its text as a browser shows it."""
    tags: set[str] = set()
    text: list[str] = []
    parser = HTMLParser(convert_charrefs=True)
    parser.handle_starttag = lambda tag, attrs: tags.add(tag)  # type: ignore[method-assign]
    parser.handle_data = text.append  # type: ignore[method-assign]
    parser.feed(html)
    parser.close()
    return tags, "".join(text)


TOKENIZER = FakeTokenizer()  # one for every model here: the arena compares models that share a tokenizer
REPLY = "Red, green and blue are three colours that mix into every other colour on a screen."


def model(reply=REPLY, engine=ScriptedEngine, **options):
    """A loaded scripted engine on the shared tokenizer (``engine``: ScriptedEngine or NoLogits)."""
    return fake_model(engine(reply, tokenizer=TOKENIZER, **options), precision="fp32")


def pieces(ids):
    """Token ids as the pieces a script replies."""
    return [TOKENIZER.convert_ids_to_tokens(i) for i in ids]


@pytest.fixture(scope="module")
def reference():
    return model()


@pytest.fixture(scope="module")
def reference_reply(reference):
    """The reference's reply to a short prompt, against itself."""
    return arena.compare(reference, reference, "Name three colours.", SHORT)


def test_first_difference():
    assert divergence.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert divergence.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert divergence.first_difference([1, 2], [1, 2, 3]) == 2  # one ended where the other went on
    assert divergence.first_difference([], []) is None


def test_log_prob_blocks_rechunk_any_engine_chunks_from_the_reply_on():
    import torch

    logits = torch.randn(150, 11)

    class OddChunks(Engine):
        name = "odd-chunks"

        def score(self, ids, keep_generator=True):
            for a, b in ((0, 7), (7, 70), (70, 71), (71, 150)):
                yield logits[a:b]

    for start in (0, 5, 63, 64, 100, 149):
        blocks = list(divergence.log_prob_blocks(OddChunks(), list(range(150)), start))
        assert [len(b) for b in blocks[:-1]] == [64] * (len(blocks) - 1) and 0 < len(blocks[-1]) <= 64
        torch.testing.assert_close(torch.cat(blocks), torch.log_softmax(logits[start:], -1))


def test_a_reply_longer_than_a_block_is_scored_at_every_position():
    endless = model(finish=Finish.MAX_NEW_TOKENS)
    result = arena.compare(endless, endless, "Hi", SamplingSettings(temperature=0, max_new_tokens=100))
    n = len(result.reference_ids)
    assert n > 64 and len(result.kl) == len(result.reference_probs) == len(result.challenger_probs) == n
    assert result.agreement == 1.0 and max(result.kl) == pytest.approx(0, abs=1e-6)


def test_a_model_against_itself_is_identical(reference_reply):
    result = reference_reply
    assert result.reference_ids == result.challenger_ids and len(result.reference_ids) > 0
    assert result.reference_text == result.challenger_text
    assert result.divergence is None and result.identical_tokens == len(result.reference_ids)
    assert result.agreement == 1.0 and result.mean_kl == pytest.approx(0, abs=1e-6)
    assert result.reference_probs == result.challenger_probs and not result.unavailable
    assert result.summary().startswith(f"identical: all {len(result.reference_ids)} tokens")


def test_an_engine_without_logits_still_gives_texts_and_the_divergence(reference, reference_reply):
    """Three tokens as the reference wrote them, then markup: the divergence is at token 3, the
    reference still scores the challenger's tokens, and the figures that need both say why not."""
    tail = TOKENIZER(XSS, add_special_tokens=False).input_ids
    assert tail[0] != reference_reply.reference_ids[3]
    challenger = model(pieces([*reference_reply.reference_ids[:3], *tail]), engine=NoLogits)
    result = arena.compare(reference, challenger, "Name three colours.", SHORT)
    assert result.reference_ids == reference_reply.reference_ids
    assert result.challenger_ids[:-1] == (*reference_reply.reference_ids[:3], *tail)  # then end of turn
    assert XSS in result.challenger_text
    assert result.divergence == 3 and result.identical_tokens == 3
    assert result.agreement is None and result.kl is None and result.mean_kl is None
    assert result.challenger_probs is None and result.challenger_sure is None
    assert set(result.unavailable) == {"agreement", "kl", "challenger_probs", "challenger_sure"}
    assert all("no-logits cannot score text: a scripted fake gives no logits" in why
               for why in result.unavailable.values())
    assert len(result.reference_probs) == len(result.challenger_ids)
    assert result.reference_probs[:3] == pytest.approx(reference_reply.reference_probs[:3], abs=1e-5)
    assert 0 < result.reference_sure <= 1
    line = result.summary()
    assert "3 identical tokens, then they part at token 4" in line and "unavailable: agreement" in line


def test_a_text_only_challenger_is_compared_on_its_retokenized_text(reference):
    server = fake_model(TextEngine(), "server")
    result = arena.compare(reference, server, "Name three colours.", SHORT)
    assert server.engine.seen == [[{"role": "user", "content": "Name three colours."}]]
    assert result.challenger_text == "Hello there."
    assert result.challenger_ids == tuple(TOKENIZER("Hello there.", add_special_tokens=False).input_ids)
    assert result.divergence == divergence.first_difference(result.reference_ids, result.challenger_ids)
    assert "re-tokenized from its text" in result.unavailable["challenger_ids"]
    assert result.kl is None and "text-only cannot score text" in result.unavailable["kl"]
    assert result.reference_probs is not None and len(result.reference_probs) == len(result.challenger_ids)


def test_a_server_reply_past_max_new_tokens_is_stopped_there_and_cut():
    """The hostile test: a server challenger replying 100k characters was still being scored after 90 s.
    Like that server, the flood ignores max_tokens and sends 100k characters, 100 a piece."""
    flood = fake_model(TextEngine(["word " * 20] * 1000), "server")
    reference = model()
    result = arena.compare(reference, flood, "Name three colours.", SHORT)
    assert max(reference.engine.scored) <= 200  # the prompt and a 16-token reply, never the whole flood
    assert len(result.challenger_ids) == SHORT.max_new_tokens
    assert result.challenger_text == TOKENIZER.decode(list(result.challenger_ids))
    assert result.challenger_text.startswith("word word")
    note = result.unavailable["challenger_ids"]
    assert "re-tokenized from its text" in note and "cut at max_new_tokens=16" in note
    assert flood.engine.sent < 1000  # stopped once past the limit, not read to the end
    assert len(result.reference_probs) == SHORT.max_new_tokens


def test_stop_while_scoring_ends_the_run_and_leaves_no_thread():
    """The hostile test: after Stop, wait(10) was still False: scoring ignored Stop."""
    slow = model(score_delay=1.0)  # about 25 s of scoring for a 16-token reply
    run = arena.ArenaRun(slow, model(), "Hi", SHORT).start()
    try:
        assert slow.engine.scoring.wait(60)
        run.stop()
        assert run.wait(10), "scoring went on after Stop"
        assert run.stopped and run.result is None and run.error is None
        run._thread.join(5)
        assert not run._thread.is_alive() and not run.generation._thread.is_alive()
    finally:
        slow.engine.score_delay = 0.0
        assert run.wait(60)


EXIT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from fakes import scripted
from gemma_widgets import arena
from gemma_widgets.engines.base import SamplingSettings

slow = scripted(score_delay=1.0)
finished = lambda run: print("finished", "stopped" if run.stopped else "not stopped", run.result, flush=True)
arena.ArenaRun(slow, slow, "Hi", SamplingSettings(temperature=0, max_new_tokens=16), on_finish=finished).start()
assert slow.engine.scoring.wait(120)
print("scoring", flush=True)
"""  # the main thread ends here, with the run still scoring


def test_a_run_still_scoring_when_python_exits_is_stopped_and_ends_cleanly():
    """The hostile test: at exit, "terminate called without an active exception" (a thread inside torch)."""
    script = EXIT_SCRIPT.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.stdout.splitlines() == ["scoring", "finished stopped None"], done.stderr[-2000:]
    assert done.returncode == 0 and "terminate called" not in done.stderr


def test_an_empty_or_too_long_prompt_is_refused_with_a_reason(reference):
    for empty in ("", "   \n"):
        with pytest.raises(GemmaWidgetsError, match="The prompt is empty"):
            arena.compare(reference, reference, empty)
    with pytest.raises(GenerationError, match="context window"):
        arena.compare(reference, reference, "word " * reference.context_window, SHORT)


def test_a_model_that_raises_becomes_a_generation_error(reference):
    broken = model(fail_at=1)
    with pytest.raises(GenerationError, match=r"challenger \(fp32 · scripted\) raised RuntimeError"):
        arena.compare(reference, broken, "Hi", SHORT)


# --- the widget --------------------------------------------------------------------------------
def test_the_arena_widget_shows_both_replies_the_divergence_and_the_summary(reference, reference_reply):
    from gemma_widgets.widgets.arena import PrecisionArena

    tail = TOKENIZER(XSS, add_special_tokens=False).input_ids
    challenger = model(pieces([*reference_reply.reference_ids[:3], *tail]), engine=NoLogits)
    view = PrecisionArena([reference, challenger], settings=SHORT)
    result = view.compare("Name three colours.")
    assert view.result is result and result.divergence == 3
    assert "3 identical tokens, then they part at token 4" in view.summary.value
    challenger = view.challenger_column.value
    assert challenger.count("gw-diverge") == 1
    tags, text = parse(challenger)
    assert XSS in text and tags <= {"div", "span"}  # the markup is text, split into token spans
    assert parse(view.ref_column.value)[0] <= {"div", "span"}
    assert 'title="reference p = ' in challenger
    assert view.ref_column.value.count("gw-diverge") == 1
    assert view.send_button.disabled is False and view.stop_button.disabled is True

    # A stored notebook shows the prompt, both columns as drawn (shading and mark inline) and the summary.
    (bundle,) = view.snapshot()
    snapshot = bundle["text/html"]
    assert view.ref_column.value in snapshot and challenger in snapshot and view.summary.value in snapshot
    assert "<b>Prompt:</b> Name three colours." in snapshot
    assert 'gw-diverge" style="background: rgba(' in challenger and "outline: 2px solid" in challenger
    assert parse(snapshot)[0] <= {"style", "div", "span", "b"} and XSS in parse(snapshot)[1]

    # An empty prompt is refused with a notice, and the last comparison stays on show.
    view.input.value = "  "
    view._ui(view._send_input)
    assert "The prompt is empty" in view.notice.value
    assert view.challenger_column.value == challenger and view.result is result


def test_the_arena_widget_stops_and_reports_errors_in_one_line(reference):
    from gemma_widgets.widgets.arena import PrecisionArena

    slow = model(" one two three", engine=NoLogits, delay=0.05, finish=Finish.MAX_NEW_TOKENS)
    view = PrecisionArena([slow, reference], settings=SamplingSettings(temperature=0, max_new_tokens=400))
    run = view.send("Hi")
    assert view.stop_button.disabled is False and view.send_button.disabled is True
    assert slow.engine.started.wait(30)
    view.stop()
    assert view.wait(30) and run.stopped and run.result is None
    assert "Stopped by the user" in view.notice.value
    assert view.ref_column.value.count("gw-diverge") == 0 and "…" not in view.ref_column.value
    assert view.challenger_column.value.endswith("…</div>")  # the challenger never started

    broken = PrecisionArena([reference, model(fail_at=1)], settings=SHORT)
    with pytest.raises(GenerationError):
        broken.compare("Hi")
    assert "RuntimeError" in broken.notice.value and "Nothing was compared" in broken.notice.value
    assert broken.send_button.disabled is False


def test_the_arena_widget_needs_two_models(reference):
    from gemma_widgets.widgets.arena import PrecisionArena

    with pytest.raises(GemmaWidgetsError, match="two models"):
        PrecisionArena([reference])


def test_the_arena_picture_is_a_png(reference_reply):
    from gemma_widgets.course import pictures

    png = pictures.arena_png(reference_reply)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# --- the bundled model -------------------------------------------------------------------------
PROMPT = "Write one sentence about the sea."
BUNDLED = SamplingSettings(temperature=0.0, max_new_tokens=24)


@pytest.mark.integration
def test_the_bundled_model_against_itself_is_identical(bundled):
    result = arena.compare(bundled, bundled, PROMPT, BUNDLED)
    assert result.reference_text == result.challenger_text and result.reference_text.strip()
    assert result.divergence is None and result.agreement == 1.0
    assert result.mean_kl == pytest.approx(0, abs=1e-6)


@pytest.fixture(scope="module")
def int4(bundled):
    from gemma_widgets import PRESETS, load_model
    from gemma_widgets.precisions import PRECISIONS

    reason = PRECISIONS["ov-int4-optimum"].unavailable_reason(PRESETS["bundled"])
    if reason:
        pytest.skip(reason)
    return load_model("bundled", "ov-int4", engine="optimum")


@pytest.mark.integration
def test_bf16_against_ov_int4_matches_an_independent_computation_from_both_models_logits(bundled, int4):
    """One plain forward pass of each model over prompt + the bf16 reply, log-softmax, KL and argmax."""
    import torch

    result = arena.compare(bundled, int4, PROMPT, BUNDLED)
    prompt = list(bundled.prompt(PROMPT).input_ids)
    reply = list(result.reference_ids)
    ids = torch.tensor([prompt + reply])
    with torch.inference_mode():
        ref_logits = bundled.model(input_ids=ids).logits[0].float()
        int4_logits = int4.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
    rows = slice(len(prompt) - 1, len(prompt) - 1 + len(reply))  # the rows that predict the reply
    lp, lq = torch.log_softmax(ref_logits[rows], -1), torch.log_softmax(int4_logits[rows], -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    agreement = (lq.argmax(-1) == lp.argmax(-1)).float().mean().item()
    chosen = lq.argmax(-1).tolist()  # greedy int4 on the bf16 prefix: where it first picks otherwise
    parts = next((j for j, (a, b) in enumerate(zip(chosen, reply, strict=True)) if a != b), None)

    assert result.agreement == pytest.approx(agreement, abs=1e-3)
    assert result.mean_kl == pytest.approx(kl.mean().item(), abs=1e-3)
    assert result.kl == pytest.approx(kl.tolist(), abs=1e-3)
    expected = parts if parts is not None else divergence.first_difference(reply, result.challenger_ids)
    assert result.divergence == expected
    if result.divergence is not None:
        assert result.challenger_ids[:result.divergence] == result.reference_ids[:result.divergence]
        assert result.challenger_sure is not None and result.reference_sure is not None
    assert math.isfinite(result.reference_tps) and result.reference_tps > 0 and result.challenger_tps > 0
    assert not result.unavailable
