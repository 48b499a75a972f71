"""One variant measured in a fresh process: ``python -m gemma_widgets.bench.worker``.

:func:`gemma_widgets.bench.run` starts this module once per variant, writes a JSON spec on its
stdin (a :class:`~gemma_widgets.bench.records.Scenario`) and reads one event per line from
its stdout (:mod:`gemma_widgets.bench.records`). A process of its own per variant
means the peak memory it reports is that variant's alone, and a crash or an out-of-memory
kill ends this process, not the run. Anything a library prints goes to stderr, so the
event stream stays clean. The worker dies with the process that started it
(:mod:`gemma_widgets.host.lifeline`): a killed ``bench`` or a dead kernel leaves no worker decoding.

With ``prepare_only`` in the scenario it only loads the variant (building any cache, such as an
OpenVINO export) and exits. The scenario, in order: load; warm-up; prefill repeats (generate
exactly one token: time to first token); decode repeats (``min_new_tokens == max_new_tokens``);
memory; the text of the last decode; quality on the package passage (after the memory reading,
so scoring's activations do not count as the variant's footprint).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from gemma_widgets.bench import records as protocol
from gemma_widgets.engines.base import Engine, Prompt, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError, GenerationError, PrecisionUnavailableError
from gemma_widgets.host.lifeline import hold
from gemma_widgets.loading import load_model
from gemma_widgets.quality import score_passage

Emit = Callable[[protocol.Event], None]


def peak_rss_bytes() -> int:
    """This process's high-water resident memory.

    On Linux it is ``VmHWM``: ``ru_maxrss`` survives fork and exec, so a worker started by a
    notebook kernel holding 3 GB would report at least 3 GB. macOS reports bytes in ru_maxrss.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def _peak_cuda_bytes() -> int | None:
    if "torch" not in sys.modules:
        return None
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


@dataclass
class Run:
    """One timed generation: seconds in all, seconds to its first token if the stream said, tokens, text."""

    seconds: float
    tokens: int
    text: str
    ttft: float | None = None


def _exact_run(engine: Engine, tokenizer: Any, ids: Sequence[int], n: int) -> Run:
    """A whole ``generate_exact`` call, timed as a user waits for it (prefill included)."""
    start = time.perf_counter()
    made = engine.generate_exact(ids, n)
    seconds = time.perf_counter() - start
    if len(made) != n:
        raise GenerationError(f"asked for exactly {n} new tokens, got {len(made)}")
    return Run(seconds, n, tokenizer.decode(made, skip_special_tokens=True))


def _stream_run(engine: Engine, prompt: Prompt, n: int) -> Run:
    """One greedy streamed reply of at most ``n`` tokens, timed from the stream's pieces."""
    start = time.perf_counter()
    first, tokens, text = None, 0, ""
    for delta in engine.stream(prompt, SamplingSettings(temperature=0, max_new_tokens=n), threading.Event()):
        if delta.tokens and first is None:
            first = time.perf_counter()
        tokens += delta.tokens
        text += delta.text
    end = time.perf_counter()
    return Run(end - start, tokens, text, (first or end) - start)


def measure(scenario: protocol.Scenario, emit: Emit) -> None:
    """Run ``scenario`` (see :mod:`gemma_widgets.bench.runner`), emitting events.

    An engine that makes an exact number of tokens (``can_generate_exact``) is timed on whole
    calls: a one-token generate for the time to first token, ``new_tokens`` for decode. One that
    only streams (a server) is timed from the stream's timestamps.
    """
    precision, flags = protocol.parse_variant(scenario.variant)
    start = time.perf_counter()
    loaded = load_model(scenario.model, precision=precision, **flags)
    load_s = time.perf_counter() - start
    if scenario.prepare_only:  # caches are built now; the measuring process only reads them
        emit(protocol.Prepared(load_s))
        return
    engine = loaded.engine
    notes = list(loaded.notes)
    if scenario.quality and not engine.can_score:
        notes.append(f"perplexity unavailable: {engine.name} cannot score text ({engine.why_no_scores})")
    try:
        recipe = engine.recipe()
    except (OSError, ValueError, RuntimeError) as exc:  # an unreadable file costs the recipe, not the run
        recipe = ""
        notes.append(f"recipe unavailable: {exc}")
    emit(protocol.Loaded(engine.name, load_s, engine.weights_bytes(), notes, recipe))
    prompt = loaded.prompt(scenario.prompt, chat=loaded.preset.instruction_tuned)
    emit(protocol.PromptSize(len(prompt.input_ids)))

    def run(n: int) -> Run:
        if engine.can_generate_exact:
            return _exact_run(engine, loaded.tokenizer, prompt.input_ids, n)
        return _stream_run(engine, prompt, n)

    for i in range(scenario.warmup):
        run(scenario.new_tokens)
        emit(protocol.Step("warmup", i + 1))
    for i in range(scenario.repeats):
        first = run(1)
        emit(protocol.Step("prefill", i + 1, seconds=first.seconds if first.ttft is None else first.ttft))
    last = None
    for i in range(scenario.repeats):
        last = run(scenario.new_tokens)
        streamed = last.ttft is not None
        emit(protocol.Step("decode", i + 1, seconds=last.seconds, tokens=last.tokens if streamed else None,
                  ttft=last.ttft))
    rss = _rss_bytes()  # the kernel updates its high-water mark lazily: never report less than now
    emit(protocol.Memory(max(peak_rss_bytes(), rss), rss, _peak_cuda_bytes()))
    emit(protocol.Text(last.text if last else ""))
    if scenario.quality and engine.can_score:
        scores = score_passage(loaded, scenario.passage_tokens, keep_generator=False)
        emit(protocol.Quality(scores.perplexity, scores.top1))
    emit(protocol.Step("quality", 1))


def main() -> int:
    """Read the spec from stdin, measure, and report events on (the original) stdout; die with the parent."""
    hold()  # first: a worker whose parent is gone must not load a model and decode for nobody
    scenario = protocol.Scenario.from_json(sys.stdin.read())
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(event: protocol.Event) -> None:
        events.write(protocol.encode(event) + "\n")

    try:
        measure(scenario, emit)
    except PrecisionUnavailableError as exc:
        emit(protocol.Failed("unavailable", str(exc)))
        return 3
    except GemmaWidgetsError as exc:
        emit(protocol.Failed("failed", str(exc)))
        return 2
    except Exception as exc:  # any failure is this variant's result, reported to the parent
        traceback.print_exc()
        emit(protocol.Failed("failed", f"{type(exc).__name__}: {exc}"))
        return 1
    emit(protocol.Done())
    return 0


if __name__ == "__main__":
    sys.exit(main())
