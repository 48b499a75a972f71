"""Chat panel overhead, side by side with a bare ``model.generate`` in one process.

Measures what issue 5 asks of the panel (run it on an idle machine; timings on a shared
one are noise):

* streaming overhead: the panel's tok/s over the same greedy tokens as a bare
  ``model.generate`` (target >= 0.97x), and the time from ``send`` to the first text shown
  against a bare prefill (target <= 50 ms over);
* stop latency: from ``stop()`` to the reply ended (target <= one decoding step + 100 ms);
* memory: RSS over many consecutive turns against the KV cache of the context kept.

The side-by-side figures need ``model.generate`` (transformers, optimum-intel); on the
openvino-genai engine (``ov-int4``, the chat's default on a CPU) stop and memory are measured.

    .venv/bin/python benchmarks/chat_bench.py                     # bundled model, bf16
    .venv/bin/python benchmarks/chat_bench.py --precision ov-int4
    .venv/bin/python benchmarks/chat_bench.py --precision fp32 --json chat_bench.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass

import psutil
import torch

from gemma_widgets import load_model
from gemma_widgets.chat import ChatPanel
from gemma_widgets.conversation import Conversation
from gemma_widgets.generation import SamplingSettings, hf_tokenizer
from gemma_widgets.templates import end_of_turn_ids

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Figures:
    """The measured figures (medians over repeats) and the issue's targets."""

    model: str
    precision: str
    new_tokens: int
    repeats: int
    bare_tok_s: float | None  # None: the engine has no model.generate (openvino-genai)
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


def rss_mb() -> float:
    """Resident memory after a garbage collection and giving freed heap back to the OS."""
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
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


def bare_generate(model, ids: torch.Tensor, n: int, stop_ids: list[int], pad: int) -> float:
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, eos_token_id=stop_ids, pad_token_id=pad)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - ids.shape[1] == n
    return elapsed


def in_thread(fn, *args):
    """``fn(*args)`` run in a fresh thread (the panel generates in one), its result returned."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join()
    return result[0]


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
    args = parser.parse_args(argv)

    loaded = load_model(args.model, args.precision)
    bare = loaded.engine in ("transformers", "optimum-intel")  # else openvino-genai: no model.generate
    model, tok, n = loaded.model, hf_tokenizer(loaded), args.tokens
    stop_ids, pad = end_of_turn_ids(tok), tok.pad_token_id
    conv = Conversation()
    conv.add_user(PROMPT)
    ids = torch.tensor([conv.plan(tok, loaded.context_window, n).input_ids],
                       device=getattr(model, "device", "cpu"))
    greedy = SamplingSettings(temperature=0, max_new_tokens=n)
    panel = ChatPanel(loaded, settings=greedy)
    panel.session.options["min_new_tokens"] = n  # the same n tokens as the bare run

    print(f"{loaded!r}: {n} greedy tokens, {args.repeats} repeats"
          + (", side by side with a bare generate" if bare else ""), flush=True)
    if bare:
        bare_generate(model, ids, 8, stop_ids, pad)  # warm-up
    panel.send(PROMPT).wait()
    panel.clear()
    prefill, prefill_thread, bare_s, bare_thread, panel_s, first_text = [], [], [], [], [], []
    for _ in range(args.repeats):
        if bare:
            prefill.append(bare_generate(model, ids, 1, stop_ids, pad))
            prefill_thread.append(in_thread(bare_generate, model, ids, 1, stop_ids, pad))
            bare_s.append(bare_generate(model, ids, n, stop_ids, pad))
            bare_thread.append(in_thread(bare_generate, model, ids, n, stop_ids, pad))
        start = time.perf_counter()
        generation = panel.send(PROMPT)
        panel.wait()
        panel_s.append(time.perf_counter() - start)
        assert generation.stats.new_tokens == n and generation.plan.input_ids == ids[0].tolist()
        first_text.append(generation.stats.ttft_s)
        panel.clear()
    median = lambda values: statistics.median(values) if values else None  # noqa: E731
    pan_s, bare_med, thread_med = median(panel_s), median(bare_s), median(bare_thread)
    step = ((bare_med - median(prefill)) if bare else (pan_s - median(first_text))) / (n - 1)

    stops = []
    panel.session.settings.max_new_tokens = panel.session.options["min_new_tokens"] = 4 * n
    for _ in range(args.repeats):
        generation = panel.send(PROMPT)
        while generation._streamer.new_tokens < 8 and not generation.done:
            time.sleep(0.001)
        start = time.perf_counter()
        panel.stop()
        panel.wait()
        stops.append(time.perf_counter() - start)
        assert generation.stats.stop_reason == "stopped"
        panel.clear()

    turns = ChatPanel(loaded, settings=SamplingSettings(temperature=0, max_new_tokens=args.turn_tokens),
                      context_window=args.turn_window)
    turns.session.options["min_new_tokens"] = args.turn_tokens
    rss = []
    for i in range(args.turns):
        turns.send(f"Turn {i}: tell me one more thing about the lighthouse keeper.").wait()
        rss.append(rss_mb())
        print(f"turn {i + 1}/{args.turns}: RSS {rss[-1]:.0f} MB", file=sys.stderr, flush=True)
    plan = turns.session.plan
    kept_tokens = plan.prompt_tokens + args.turn_tokens
    kv_bytes, kv_dtype = kv_bytes_per_token(loaded.config)
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
        print(f"\n{loaded.engine} has no model.generate to compare with: the panel decoded "
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
    ]
    print()
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**asdict(figures), "checks": {c[0]: c[1] for c in checks}}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
