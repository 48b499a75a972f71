"""Chat panel overhead, side by side with a bare ``model.generate`` in one process.

Measures what issue 5 asks of the panel (run it on an idle machine; timings on a shared
one are noise):

* streaming overhead: the panel's tok/s over the same greedy tokens as a bare
  ``model.generate`` (target >= 0.97x), and the time from ``send`` to the first text shown
  against a bare prefill (target <= 50 ms over);
* stop latency: from ``stop()`` to the reply ended (target <= one decoding step + 100 ms);
* memory: RSS over many consecutive turns against the KV cache of the context kept;
* prefix reuse (issues 18, 29): the first text's delay on turn 10 of a chat against turn 1, for new
  messages of one length (target <= 1.5x: the earlier turns are not prefilled again). ``--turns-only``
  measures just this, for any precision (each engine: bf16 for transformers, fast for
  openvino-genai, gguf-q4_k_m for llama.cpp).

The bare baseline is the engine's own fixed-length greedy generate (``generate_exact``: a
``model.generate`` with ``min_new_tokens``, an ``LLMPipeline.generate``...), with no streaming.

``--server`` measures the server engine instead (issue 16), against a llama.cpp server started
here on the bundled GGUF (or ``--url`` with ``--served-model`` for a running one):

* stop latency over the server: from ``stop()`` to the reply ended (target <= one decoding step
  + 150 ms), and whether the server stopped generating (the next request's first token);
* decode speed: the panel's tok/s over a bare loop of the same ``openai`` client streaming the
  same request (target >= 0.95x), medians of interleaved rounds.

    .venv/bin/python benchmarks/chat_bench.py                     # bundled model, bf16
    .venv/bin/python benchmarks/chat_bench.py --precision fast        # the chat default (prefix reuse)
    .venv/bin/python benchmarks/chat_bench.py --precision gguf-q4_k_m --turns-only
    .venv/bin/python benchmarks/chat_bench.py --precision fp32 --json chat_bench.json
    .venv/bin/python benchmarks/chat_bench.py --server            # a local llama.cpp server
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass

import psutil
import torch

from gemma_widgets import load_model
from gemma_widgets.conversation import Conversation
from gemma_widgets.engines.base import Prompt, SamplingSettings
from gemma_widgets.host.native import free_memory
from gemma_widgets.presets import locate
from gemma_widgets.widgets.chat import ChatPanel

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Figures:
    """The measured figures (medians over repeats) and the issue's targets."""

    model: str
    precision: str
    new_tokens: int
    repeats: int
    bare_tok_s: float | None  # None: the engine cannot make an exact number of tokens
    bare_in_thread_tok_s: float | None  # the same generate from a worker thread, as the panel runs it
    panel_tok_s: float
    speed_ratio: float | None  # panel over bare (main thread); target >= 0.97
    speed_ratio_vs_thread: float | None  # panel over bare in a worker thread: the streaming overhead alone
    bare_prefill_ms: float | None
    bare_prefill_in_thread_ms: float | None
    panel_first_text_ms: float
    first_text_over_prefill_ms: float | None  # target <= 50
    decode_step_ms: float  # from the bare runs, or from the panel's own when there are none
    stop_latency_ms: float  # median; target <= decode_step_ms + 100
    stop_latency_max_ms: float
    turns: int
    turn_context_window: int
    rss_after_warmup_mb: float
    rss_last_mb: float
    rss_growth_mb: float  # last turn minus turn 5
    rss_growth_second_half_mb: float  # last turn minus the middle turn: ~0 once the window is full
    kv_cache_kept_mb: float  # KV cache bytes of the context kept at the last turn
    dropped_messages_last_turn: int
    transcript_widgets: int
    ttft_by_turn_ms: list[float]  # the first text's delay per turn, medians over chats
    turn10_over_turn1: float  # target <= 1.5


def rss_mb() -> float:
    """Resident memory after a garbage collection and giving freed heap back to the OS."""
    free_memory()
    return psutil.Process().memory_info().rss / 2**20


def kv_bytes_per_token(config) -> tuple[int, torch.dtype]:
    """Bytes of keys and values one token of context holds across the layers, and their dtype.

    The dtype is the model's; for an OpenVINO IR, its source's (its CPU plugin picks its own).
    """
    config = getattr(config, "text_config", config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dtype = getattr(config, "dtype", None) or torch.float32
    dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * itemsize, dtype


def bare_generate(engine, ids: list[int], n: int) -> float:
    """Seconds for the engine's own ``n`` greedy tokens, no streaming."""
    start = time.perf_counter()
    out = engine.generate_exact(ids, n)
    elapsed = time.perf_counter() - start
    assert len(out) == n
    return elapsed


def in_thread(fn, *args):
    """``fn(*args)`` run in a fresh thread (the panel generates in one), its result returned."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join()
    return result[0]


@dataclass
class ServerFigures:
    """The server engine's figures (medians) and the issue's targets."""

    url: str
    model: str
    new_tokens: int
    rounds: int
    bare_decode_tok_s: float  # the same request read by a bare loop of the same openai client
    panel_decode_tok_s: float
    speed_ratio: float  # median of each round's panel over bare; target >= 0.95
    bare_first_token_ms: float
    panel_first_text_ms: float
    decode_step_ms: float  # from the bare loop
    stop_latency_ms: float  # median; target <= decode_step_ms + 150
    stop_latency_max_ms: float
    first_token_after_stop_ms: float  # the next request's: the server stopped generating, or not
    idle_first_token_ms: float


def bare_stream(client, request: dict) -> tuple[int, float, float]:
    """Pieces with text, seconds to the first, and decode tok/s of one streamed request read by a
    plain loop (decode as the panel counts it: pieces after the first over the time after it)."""
    start = time.perf_counter()
    first, pieces = None, 0
    with client.chat.completions.create(**request) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None, "the server sent no text"
    return pieces, first - start, (pieces - 1) / (end - first) if end > first else 0.0


def server_main(args: argparse.Namespace) -> int:
    """Stop latency and decode speed of the panel over an OpenAI-compatible server."""
    from contextlib import nullcontext

    from gemma_widgets.engines.llamacpp_server import start_llamacpp_server

    n = args.tokens
    context = nullcontext() if args.url else start_llamacpp_server()
    with context as server:
        url, name = (args.url, args.served_model) if args.url else (server.url, server.model)
        loaded = load_model(url, model=name)
        client = loaded.model  # the panel's own openai client
        greedy = SamplingSettings(temperature=0, max_new_tokens=n)
        request = loaded.engine.request(Prompt((), [{"role": "user", "content": PROMPT}]), greedy)
        panel = ChatPanel(loaded, settings=greedy)
        print(f"{loaded!r}: {n} greedy tokens, {args.rounds} interleaved rounds beside a bare "
              f"openai loop, {args.repeats} stops", flush=True)
        bare_stream(client, request)  # warm-up (the server's first request loads its caches)
        bare_tps, bare_first, panel_tps, panel_first = [], [], [], []
        for i in range(args.rounds):
            for who in (("bare", "panel") if i % 2 == 0 else ("panel", "bare")):
                if who == "bare":
                    pieces, first, tps = bare_stream(client, request)
                    bare_tps.append(tps)
                    bare_first.append(first)
                    continue
                generation = panel.send(PROMPT)
                panel.wait()
                assert generation.error is None, generation.error
                panel_tps.append(generation.stats.tokens_per_second)
                panel_first.append(generation.stats.ttft_s)
                panel.clear()
            if generation.stats.new_tokens != pieces:
                print(f"note: round {i + 1}: the panel counted {generation.stats.new_tokens} tokens, the "
                      f"bare loop {pieces} pieces", file=sys.stderr)
        step = 1 / statistics.median(bare_tps)

        stops, after_stop, idle = [], [], []
        panel.session.settings.max_new_tokens = 4 * n
        one = {**request, "max_tokens": 1}
        for _ in range(args.repeats):
            idle.append(bare_stream(client, one)[1])
            generation = panel.send(PROMPT)
            while generation.new_tokens < 8 and not generation.done:
                time.sleep(0.001)
            start = time.perf_counter()
            panel.stop()
            panel.wait()
            stops.append(time.perf_counter() - start)
            assert generation.stats.stop_reason == "stopped", generation.stats
            after_stop.append(bare_stream(client, one)[1])  # queued behind the old reply if it went on
            panel.clear()

    median = statistics.median
    figures = ServerFigures(
        url, loaded.engine.model_name, n, args.rounds,
        bare_decode_tok_s=median(bare_tps), panel_decode_tok_s=median(panel_tps),
        speed_ratio=median(p / b for p, b in zip(panel_tps, bare_tps, strict=True)),
        bare_first_token_ms=1000 * median(bare_first), panel_first_text_ms=1000 * median(panel_first),
        decode_step_ms=1000 * step, stop_latency_ms=1000 * median(stops),
        stop_latency_max_ms=1000 * max(stops),
        first_token_after_stop_ms=1000 * median(after_stop), idle_first_token_ms=1000 * median(idle))
    checks = [
        ("stop over the server <= one decode step + 150 ms",
         figures.stop_latency_max_ms <= figures.decode_step_ms + 150,
         f"median {figures.stop_latency_ms:.0f} ms, max {figures.stop_latency_max_ms:.0f} ms; "
         f"step {figures.decode_step_ms:.0f} ms; the next request's first token "
         f"{figures.first_token_after_stop_ms:.0f} ms after a stop, "
         f"{figures.idle_first_token_ms:.0f} ms idle"),
        ("panel decode tok/s >= 0.95x a bare openai loop", figures.speed_ratio >= 0.95,
         f"{figures.speed_ratio:.3f}x, the median of {args.rounds} interleaved rounds' ratios "
         f"({', '.join(f'{p / b:.2f}' for p, b in zip(panel_tps, bare_tps, strict=True))}); medians "
         f"{figures.panel_decode_tok_s:.2f} vs {figures.bare_decode_tok_s:.2f} tok/s; first text "
         f"{figures.panel_first_text_ms:.0f} ms vs first piece {figures.bare_first_token_ms:.0f} ms"),
    ]
    return report(checks, figures, args.json)


def ttft_by_turn(loaded, turns: int, chats: int, reply_tokens: int) -> list[float]:
    """Seconds from ``send`` to the first text on each turn of a chat, medians over ``chats`` chats.

    Every turn's new message has the same number of tokens, so a turn's delay grows with the
    context only where the engine prefills the earlier turns again.
    """
    greedy = SamplingSettings(temperature=0, max_new_tokens=reply_tokens)
    delays = []
    for chat in range(chats):
        panel = ChatPanel(loaded, settings=greedy)
        delays.append([])
        for turn in range(turns):
            generation = panel.send(f"Turn {turn + 1:02d} of chat {chat + 1:02d}: one more fact about lighthouses.")
            panel.wait()
            assert generation.error is None, generation.error
            delays[-1].append(generation.stats.ttft_s)
        print(f"chat {chat + 1}/{chats}: first text per turn (ms) "
              + " ".join(f"{1000 * d:.0f}" for d in delays[-1]), file=sys.stderr, flush=True)
    return [statistics.median(chat[turn] for chat in delays) for turn in range(turns)]


def report(checks: list, figures: object, path: str | None) -> int:
    """Print each check as PASS or MISS, and write the figures (and checks) to ``path`` if given."""
    print()
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    if path:
        with open(path, "w") as fh:
            json.dump({**asdict(figures), "checks": {c[0]: c[1] for c in checks}}, fh, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per measured reply")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--turns", type=int, default=50, help="consecutive turns for the memory check")
    parser.add_argument("--turn-tokens", type=int, default=32, help="reply length in the memory check")
    parser.add_argument("--turn-window", type=int, default=1024,
                        help="context window for the memory check (small, so old turns get dropped)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--turns-only", action="store_true", help="only the first text's delay per turn")
    parser.add_argument("--server", action="store_true",
                        help="measure the server engine against a local llama.cpp server instead")
    parser.add_argument("--url", default=None, help="with --server: a running server's URL (ending in /v1)")
    parser.add_argument("--served-model", default=None, help="with --url: the model name it serves")
    parser.add_argument("--rounds", type=int, default=7, help="with --server: interleaved speed rounds")
    args = parser.parse_args(argv)
    if args.server:
        return server_main(args)

    loaded = load_model(args.model, args.precision)
    if args.turns_only:
        by_turn = ttft_by_turn(loaded, 10, args.repeats, args.turn_tokens)
        print(f"{loaded!r}: first text on turn 10 = {by_turn[9] / by_turn[0]:.2f}x turn 1 "
              f"({1000 * by_turn[9]:.0f} vs {1000 * by_turn[0]:.0f} ms; per turn "
              + " ".join(f"{1000 * d:.0f}" for d in by_turn) + " ms)")
        return 0
    engine, tok, n = loaded.engine, loaded.tokenizer, args.tokens
    bare = engine.can_generate_exact
    conv = Conversation()
    conv.add_user(PROMPT)
    ids = conv.plan(tok, loaded.context_window, n).input_ids
    greedy = SamplingSettings(temperature=0, max_new_tokens=n)
    panel = ChatPanel(loaded, settings=greedy)

    print(f"{loaded!r}: {n} greedy tokens, {args.repeats} repeats"
          + (", side by side with a bare generate" if bare else ""), flush=True)
    if bare:
        bare_generate(engine, ids, 8)  # warm-up
    panel.send(PROMPT).wait()
    panel.clear()
    prefill, prefill_thread, bare_s, bare_thread, panel_s, first_text = [], [], [], [], [], []
    for _ in range(args.repeats):
        if bare:
            prefill.append(bare_generate(engine, ids, 1))
            prefill_thread.append(in_thread(bare_generate, engine, ids, 1))
            bare_s.append(bare_generate(engine, ids, n))
            bare_thread.append(in_thread(bare_generate, engine, ids, n))
        start = time.perf_counter()
        generation = panel.send(PROMPT)
        panel.wait()
        panel_s.append(time.perf_counter() - start)
        assert generation.plan.input_ids == ids
        if generation.stats.new_tokens != n:  # the panel ends at end of turn; the bare run does not
            print(f"note: the panel's reply ended after {generation.stats.new_tokens} of {n} tokens "
                  f"({generation.stats.stop_reason}): its tok/s counts those", file=sys.stderr)
        panel_s[-1] *= n / max(generation.stats.new_tokens, 1)
        first_text.append(generation.stats.ttft_s)
        panel.clear()
    median = lambda values: statistics.median(values) if values else None  # noqa: E731
    pan_s, bare_med, thread_med = median(panel_s), median(bare_s), median(bare_thread)
    step = ((bare_med - median(prefill)) if bare else (pan_s - median(first_text))) / (n - 1)

    stops = []
    panel.session.settings.max_new_tokens = 4 * n
    for _ in range(args.repeats):
        generation = panel.send(PROMPT)
        while generation.new_tokens < 8 and not generation.done:
            time.sleep(0.001)
        start = time.perf_counter()
        panel.stop()
        panel.wait()
        stops.append(time.perf_counter() - start)
        assert generation.stats.stop_reason == "stopped"
        panel.clear()

    by_turn = ttft_by_turn(loaded, 10, args.repeats, args.turn_tokens)
    turns = ChatPanel(loaded, settings=SamplingSettings(temperature=0, max_new_tokens=args.turn_tokens),
                      context_window=args.turn_window)
    rss = []
    for i in range(args.turns):
        turns.send(f"Turn {i}: tell me one more thing about the lighthouse keeper.").wait()
        rss.append(rss_mb())
        print(f"turn {i + 1}/{args.turns}: RSS {rss[-1]:.0f} MB", file=sys.stderr, flush=True)
    plan = turns.session.plan
    kept_tokens = plan.prompt_tokens + args.turn_tokens
    config = getattr(engine.torch_model, "config", None)
    if config is None:  # OpenVINO, llama.cpp: the config of the folder the model was made from
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(locate(loaded.preset))
    kv_bytes, kv_dtype = kv_bytes_per_token(config)
    warm = min(5, len(rss)) - 1

    figures = Figures(
        loaded.preset.name, loaded.precision, n, args.repeats,
        bare_tok_s=n / bare_med if bare else None, bare_in_thread_tok_s=n / thread_med if bare else None,
        panel_tok_s=n / pan_s, speed_ratio=bare_med / pan_s if bare else None,
        speed_ratio_vs_thread=thread_med / pan_s if bare else None,
        bare_prefill_ms=1000 * median(prefill) if bare else None,
        bare_prefill_in_thread_ms=1000 * median(prefill_thread) if bare else None,
        panel_first_text_ms=1000 * median(first_text),
        first_text_over_prefill_ms=1000 * (median(first_text) - median(prefill)) if bare else None,
        decode_step_ms=1000 * step, stop_latency_ms=1000 * statistics.median(stops),
        stop_latency_max_ms=1000 * max(stops), turns=args.turns, turn_context_window=args.turn_window,
        rss_after_warmup_mb=rss[warm], rss_last_mb=rss[-1], rss_growth_mb=rss[-1] - rss[warm],
        rss_growth_second_half_mb=rss[-1] - rss[len(rss) // 2],
        kv_cache_kept_mb=kept_tokens * kv_bytes / 2**20,
        dropped_messages_last_turn=plan.dropped, transcript_widgets=len(turns.transcript.children),
        ttft_by_turn_ms=[1000 * d for d in by_turn], turn10_over_turn1=by_turn[9] / by_turn[0],
    )
    checks = []
    if bare:
        checks += [
            ("panel tok/s >= 0.97x bare generate", figures.speed_ratio >= 0.97,
             f"{figures.panel_tok_s:.2f} vs {figures.bare_tok_s:.2f} tok/s = {figures.speed_ratio:.3f}x "
             f"(bare generate in a worker thread: {figures.bare_in_thread_tok_s:.2f} tok/s, "
             f"panel {figures.speed_ratio_vs_thread:.3f}x of it)"),
            ("first text <= bare prefill + 50 ms", figures.first_text_over_prefill_ms <= 50,
             f"{figures.panel_first_text_ms:.0f} ms vs prefill {figures.bare_prefill_ms:.0f} ms "
             f"(+{figures.first_text_over_prefill_ms:.0f} ms; prefill in a worker thread "
             f"{figures.bare_prefill_in_thread_ms:.0f} ms)"),
        ]
    else:
        print(f"\n{loaded.engine} cannot make an exact number of tokens to compare with: the panel decoded "
              f"{figures.panel_tok_s:.2f} tok/s, first text after {figures.panel_first_text_ms:.0f} ms")
    checks += [
        ("stop <= one decode step + 100 ms", figures.stop_latency_max_ms <= figures.decode_step_ms + 100,
         f"median {figures.stop_latency_ms:.0f} ms, max {figures.stop_latency_max_ms:.0f} ms; "
         f"step {figures.decode_step_ms:.0f} ms"),
        (f"{args.turns} turns: RSS growth <= KV cache of kept context",
         figures.rss_growth_mb <= figures.kv_cache_kept_mb,
         f"+{figures.rss_growth_mb:.1f} MB after turn {warm + 1} (KV cache of {kept_tokens} kept tokens "
         f"in {kv_dtype}: {figures.kv_cache_kept_mb:.1f} MB; {plan.dropped} old messages left out; "
         f"+{figures.rss_growth_second_half_mb:.1f} MB over the second half of the turns)"),
        ("first text on turn 10 <= 1.5x turn 1 (prefix reuse)", figures.turn10_over_turn1 <= 1.5,
         f"{figures.turn10_over_turn1:.2f}x: {figures.ttft_by_turn_ms[9]:.0f} vs {figures.ttft_by_turn_ms[0]:.0f} ms "
         f"(medians of {args.repeats} chats; turns 1-10: "
         f"{' '.join(f'{d:.0f}' for d in figures.ttft_by_turn_ms)} ms)"),
    ]
    return report(checks, figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
