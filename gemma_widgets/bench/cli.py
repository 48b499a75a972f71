"""``python -m gemma_widgets bench``: its options, the checks made before anything is measured, and the run."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gemma_widgets.bench.io import save
from gemma_widgets.bench.records import parse_variant
from gemma_widgets.bench.report import describe_machine, format_table, recipes, recommend
from gemma_widgets.bench.result import Result
from gemma_widgets.bench.runner import DEFAULT_PROMPT, run
from gemma_widgets.errors import GemmaWidgetsError, UnknownPrecisionError
from gemma_widgets.precisions import PRECISIONS


def add_arguments(parser: Any) -> None:
    """The ``bench`` subcommand's options."""
    parser.add_argument("--model", default=None, help="preset, hub id or folder (default: bundled)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated variants, e.g. fp32,bf16,ov-int4,bf16+compile "
                             "(default: every one this machine can run)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per decode (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds: every variant again, round after round (default 1)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt every variant completes")
    parser.add_argument("--reference", default=None,
                        help="quality reference (default fp32 if run, else bf16, else the first)")
    parser.add_argument("--out", default=None, help="save the results to a .csv or .json file")


def check_variant(variant: str) -> None:
    """Raise :class:`UnknownPrecisionError` unless ``variant`` names a precision and options it takes."""
    base, options = parse_variant(variant)
    options.pop("compile", None)
    if base not in PRECISIONS and base not in ("auto", "fast"):
        raise UnknownPrecisionError(f"Unknown precision {base!r} in {variant!r}. "
                                    f"Known: auto, fast, {', '.join(PRECISIONS)}.")
    if base in PRECISIONS:
        PRECISIONS[base].parse_options(options)


def check_output(path: str | os.PathLike, suffixes: tuple[str, ...]) -> Path:
    """``path`` if results can be saved there: a known suffix, in a folder that exists and is writable."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise GemmaWidgetsError(f"Save results as {' or '.join(suffixes)}, not {path.name!r}.")
    folder = path.parent
    if not folder.is_dir():
        raise GemmaWidgetsError(f"Cannot save to {path}: the folder {folder} does not exist "
                                "(create it first).")
    if not os.access(folder, os.W_OK):
        raise GemmaWidgetsError(f"Cannot save to {path}: the folder {folder} is not writable.")
    return path


def main(args: Any) -> int:
    """Run the benchmark for parsed ``args``; Ctrl-C stops it and keeps what finished."""
    variants = None
    if args.precisions is not None:
        variants = [v.strip() for v in args.precisions.split(",") if v.strip()]
    if variants is not None:
        if not variants:
            raise GemmaWidgetsError("--precisions is empty: name one or more, e.g. --precisions fp32,bf16 "
                                    "(leave the option out to measure every variant this machine can run).")
        for variant in variants:
            check_variant(variant)
    if args.out:
        check_output(args.out, (".csv", ".json"))
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())

    def finished(r: Result) -> None:
        figure = f"{r.decode_tps:.1f} tok/s" if r.ok and r.decode_tps else f"{r.status}: {r.error}"
        tqdm.write(f"{r.variant}: {figure}")

    try:
        results = run(args.model, variants, prompt=args.prompt, new_tokens=args.new_tokens,
                      repeats=args.repeats, warmup=args.warmup, reference=args.reference,
                      cancel=cancel, on_result=finished, progress_bar=True, rounds=args.rounds)
    finally:
        signal.signal(signal.SIGINT, previous)
    machine = next((r.machine for r in results if r.machine), None)
    if machine:
        print(f"\n{results[0].model} on {describe_machine(machine)}; {args.new_tokens} new tokens, "
              f"median of {args.repeats} runs x {args.rounds} interleaved round(s)\n")
    print(format_table(results))
    for variant, recipe in recipes(results):
        print(f"recipe of {variant}: {recipe}")
    for r in results:
        if r.gate_reason:
            print(f"quality gate: {r.variant} {r.gate}: {r.gate_reason}")
    print(recommend(results))
    if args.out:
        print(f"saved {save(results, args.out)}")
    return 0 if any(r.ok for r in results) else 1
