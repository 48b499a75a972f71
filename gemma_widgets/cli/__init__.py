"""Command line: ``python -m gemma_widgets prepare|chat|bench|train-chat|eval-chat``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gemma_widgets.bench import cli as bench_cli
from gemma_widgets.bench.compiled import warm_cache
from gemma_widgets.cli import terminal
from gemma_widgets.compilation import inductor_cache_dir
from gemma_widgets.engines.spec import Format
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.loading import load_model
from gemma_widgets.offline.bundled import chat_adapter_dir
from gemma_widgets.presets import locate, resolve_preset
from gemma_widgets.tuning import evaluate as chat_eval
from gemma_widgets.tuning import train as chat_tuning


def _prepare(args: argparse.Namespace) -> int:
    preset = resolve_preset(args.model)
    for precision in args.precision or ():  # every name checked before anything is built
        bench_cli.check_variant(precision)
    print(preset.name if preset.fmt == Format.SERVER else locate(preset))  # a server's URL without its password
    for precision in args.precision or ():  # load once, so its cached export is built now
        print(f"{precision}: ready ({load_model(args.model, precision).load_seconds:.0f} s)")
    if args.compile:  # torch.compile's kernels, so a first session loads them instead of compiling
        compiled = warm_cache(args.model)
        for what, seconds in compiled.items():
            print(f"compiled {what}: {seconds:.0f} s")
        if not compiled:
            print("compiled: nothing to do, this cache was warmed before")
        print(f"inductor cache: {os.environ.get('TORCHINDUCTOR_CACHE_DIR') or inductor_cache_dir()}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    return terminal.run(args)


def _bench(args: argparse.Namespace) -> int:
    return bench_cli.main(args)


def _train_chat(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else chat_adapter_dir()
    settings = chat_tuning.TrainSettings(**({"epochs": args.epochs} if args.epochs else {}))
    chat_tuning.train(out, settings)
    print(f"adapter saved in {out}")
    if args.out:  # the shipped adapter is what `bundled` merges; another folder is evaluated by hand
        return 0
    args.model, args.precision, args.max_new_tokens, args.show = ["bundled", "bundled-base"], "bf16", 48, 5
    return chat_eval.main(args)


def _eval_chat(args: argparse.Namespace) -> int:
    return chat_eval.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gemma_widgets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="build the bundled model's cache and print where it is")
    prepare.add_argument("--model", default=None, help="preset or hub id (default: bundled)")
    prepare.add_argument("--precision", action="append",
                         help="also build this precision's cache, e.g. ov-int4 (repeatable)")
    prepare.add_argument("--compile", action="store_true",
                         help="also compile what notebook 05 and load_model(compile=True) compile, into the "
                              "inductor cache (minutes on a small CPU; a build step such as Binder's postBuild)")
    prepare.set_defaults(func=_prepare)
    chat = sub.add_parser("chat", help="chat with a model in the terminal (a pipe works too)")
    terminal.add_arguments(chat)
    chat.set_defaults(func=_chat)
    bench = sub.add_parser("bench", help="measure speed, memory and quality across precisions")
    bench_cli.add_arguments(bench)
    bench.set_defaults(func=_bench)
    train = sub.add_parser("train-chat", help="fine-tune the chat adapter of the bundled model (LoRA; ~9 min)")
    train.add_argument("--out", help="where to save the adapter (default: the package's, which `bundled` merges)")
    train.add_argument("--epochs", type=int, help="passes over the training set (default: the shipped adapter's)")
    train.set_defaults(func=_train_chat)
    evaluation = sub.add_parser("eval-chat", help="how well models chat on held-out questions")
    chat_eval.add_arguments(evaluation)
    evaluation.set_defaults(func=_eval_chat)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GemmaWidgetsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
