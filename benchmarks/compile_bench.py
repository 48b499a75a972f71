"""Eager vs static cache vs torch.compile, for each dtype and compile mode, in one process.

Prints a table (ratios against eager with a dynamic cache) and, with ``--json``, writes every
record. Run it twice with the same ``--inductor-cache`` to see a second start reuse kernels:

    python benchmarks/compile_bench.py                                   # bundled, bf16, this device's modes
    python benchmarks/compile_bench.py --dtypes bf16,fp32 --modes default,max-autotune-no-cudagraphs
    python benchmarks/compile_bench.py --random-weights FOLDER           # config + tokenizer, no weights

``--random-weights`` builds the model from a folder's ``config.json`` with random weights (speed
does not depend on weight values), for machines the real weights cannot reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def random_model(folder: str, precision: str, device: str):
    """A :class:`LoadedModel` with ``folder``'s config and tokenizer and random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gemma_widgets.presets import LoadedModel, resolve_preset
    from gemma_widgets.tokenizer import load_tokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPES[precision]))
    model.eval()
    return LoadedModel(model, load_tokenizer(folder), resolve_preset(folder), precision, path=folder,
                       notes=["random weights"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", help="preset, hub id or folder (default: bundled)")
    parser.add_argument("--random-weights", metavar="FOLDER", help="config + tokenizer folder; random weights")
    parser.add_argument("--dtypes", default="bf16", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--modes", default="", help="torch.compile modes (default: reduce-overhead on CUDA, "
                        "default on CPU)")
    parser.add_argument("--variants", default="eager-dynamic,eager-static,compiled",
                        help="comma-separated, from: eager-dynamic, eager-static, compiled, compiled-forward")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", default="The theory of special relativity states")
    parser.add_argument("--inductor-cache", metavar="DIR", help="TORCHINDUCTOR_CACHE_DIR (default: the kit's)")
    parser.add_argument("--json", metavar="FILE", help="write the records here (rewritten after each one)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from gemma_widgets.bench.compiled import format_records, measure
    from gemma_widgets.compilation import default_mode, use_inductor_cache

    print("inductor cache:", use_inductor_cache(args.inductor_cache), flush=True)
    import torch
    import transformers

    from gemma_widgets import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else f", {torch.get_num_threads()} threads"),
          flush=True)
    modes = [m for m in args.modes.split(",") if m] or [default_mode(device)]
    variants = [v for v in args.variants.split(",") if v]
    records, failures = [], []
    for precision in args.dtypes.split(","):
        start = time.perf_counter()
        lm = (random_model(args.random_weights, precision, device) if args.random_weights
              else load_model(args.model, precision=precision))
        print(f"{precision}: loaded in {time.perf_counter() - start:.1f} s", flush=True)
        plan = [(v, modes[0]) for v in variants if not v.startswith("compiled")]
        plan += [(v, m) for v in variants if v.startswith("compiled") for m in modes]
        for variant, mode in plan:
            rec = measure(lm, args.prompt, args.new_tokens, (variant,), mode, args.repeats)[0]
            if rec.error:
                failures.append(f"{precision} {variant} {mode}: {rec.error}")
                print("FAILED", failures[-1], flush=True)
                continue
            records.append(rec)
            print(f"{precision} {variant} {rec.mode}: {rec.tokens_per_second:.1f} tok/s, "
                  f"first call {rec.warmup_seconds[0]:.1f} s", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps([r.as_dict() for r in records], indent=1))
        del lm
    if records:
        print("\nratio x is against the first row\n" + format_records(records))
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures and not records else 0


if __name__ == "__main__":
    raise SystemExit(main())
