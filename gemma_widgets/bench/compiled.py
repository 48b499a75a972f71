"""Timing ``torch.compile`` recipes: eager against static-cache against compiled generation.

:func:`measure` times greedy generation of a loaded model under each recipe of
:mod:`gemma_widgets.compilation` (warm-up calls apart from the steady state, graphs counted);
:func:`first_call` times a fresh process's first compiled call, with and without the inductor
cache on disk.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gemma_widgets.compilation import (
    check_mode,
    compile_forward,
    compile_generate,
    compile_unavailable_reason,
    count_graphs,
    default_mode,
    encode,
    round_up,
    static_cache,
    uncompile,
    use_inductor_cache,
)
from gemma_widgets.engines.hf import greedy_exact
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.native import free_memory
from gemma_widgets.loading import load_model
from gemma_widgets.presets import resolve_preset

VARIANTS = ("eager-dynamic", "eager-static", "compiled", "compiled-forward")
@dataclass
class CompileRecord:
    """One variant's timings: the warm-up calls, then the steady state."""

    variant: str
    dtype: str
    mode: str  # torch.compile mode, "" for eager
    device: str
    prompt_tokens: int
    new_tokens: int
    warmup_seconds: tuple[float, ...]  # first call (compiles), second call (CUDA graphs record)
    seconds: tuple[float, ...]  # steady-state repeats
    graphs: int  # graphs compiled during warm-up and repeats
    steady_graphs: int  # graphs compiled during the timed repeats (should be 0)
    error: str = ""  # why the variant could not run (compiler missing or failed); no timings then

    @property
    def tokens_per_second(self) -> float:
        """Median steady-state tokens per second (whole generate call, prefill included); 0 if it failed."""
        return self.new_tokens / statistics.median(self.seconds) if self.seconds else 0.0

    @property
    def spread(self) -> tuple[float, float]:
        """Slowest and fastest tokens per second of the repeats."""
        if not self.seconds:
            return 0.0, 0.0
        return self.new_tokens / max(self.seconds), self.new_tokens / min(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, with the derived figures, for CSV/JSON."""
        return {**asdict(self), "tokens_per_second": self.tokens_per_second, "spread": self.spread}


def time_generate(model: Any, inputs: Any, new_tokens: int, **kwargs: Any) -> tuple[float, list[int]]:
    """Seconds for one greedy ``generate`` of exactly ``new_tokens`` tokens, and the new ids."""
    start = time.perf_counter()
    ids = greedy_exact(model, inputs, new_tokens, **kwargs)
    return time.perf_counter() - start, ids


def _run_variant(lm: Any, variant: str, inputs: Any, new_tokens: int, cache_len: int, mode: str,
                 repeats: int) -> tuple[list[float], list[float], int, int]:
    model = lm.model
    uncompile(model)
    kwargs: dict[str, Any] = {"disable_compile": True}  # generate compiles static caches on CUDA by itself
    cache = None
    if variant in ("eager-static", "compiled-forward"):
        cache = static_cache(model, cache_len)
        kwargs["past_key_values"] = cache
    if variant == "compiled-forward":
        compile_forward(model, mode)
    elif variant == "compiled":
        compile_generate(model, mode, max_cache_len=cache_len)
        kwargs = {}
    times: list[float] = []
    try:
        with count_graphs() as total:
            for _ in range(2):
                if cache is not None:
                    cache.reset()
                times.append(time_generate(model, inputs, new_tokens, **kwargs)[0])
            with count_graphs() as steady:
                for _ in range(repeats):
                    if cache is not None:
                        cache.reset()
                    times.append(time_generate(model, inputs, new_tokens, **kwargs)[0])
    finally:
        uncompile(model)
    return times[:2], times[2:], total.graphs, steady.graphs


def _failure(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0][:300] if lines else ''}"


def measure(lm: Any, prompt: str = "The theory of special relativity states", new_tokens: int = 32,
            variants: Sequence[str] = ("eager-dynamic", "eager-static", "compiled"), mode: str | None = None,
            repeats: int = 3, cache_multiple: int = 64) -> list[CompileRecord]:
    """Time ``variants`` of greedy generation on ``lm`` (a :class:`LoadedModel`), one after another.

    Each variant gets two warm-up calls (the first compiles; the second records CUDA graphs
    under ``reduce-overhead``) and ``repeats`` timed calls. The static cache holds prompt plus
    reply rounded up to ``cache_multiple``. The model is left eager afterwards.
    """
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"Unknown variants {sorted(unknown)}; choose from {VARIANTS}.")
    if repeats < 1:
        raise ValueError("repeats must be at least 1.")
    model = lm.model
    mode = check_mode(mode or default_mode(model.device.type))
    inputs = encode(lm.tokenizer, prompt, model.device)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    cache_len = round_up(prompt_tokens + new_tokens, cache_multiple)
    dtype = str(model.dtype).removeprefix("torch.")
    records = []
    for variant in variants:
        compiled = variant.startswith("compiled")
        record = CompileRecord(variant, dtype, mode if compiled else "", model.device.type, prompt_tokens,
                               new_tokens, (), (), 0, 0)
        reason = compile_unavailable_reason(model.device.type) if compiled else None
        if reason:
            record.error = reason
        else:
            if compiled:
                torch._dynamo.reset()  # each compiled variant starts from an empty in-memory cache
            try:
                warmup, seconds, record.graphs, record.steady_graphs = _run_variant(
                    lm, variant, inputs, new_tokens, cache_len, mode, repeats)
            except Exception as exc:  # a compiler error: report it in the table, keep the other rows
                if not compiled:
                    raise
                record.error = _failure(exc)
            else:
                record.warmup_seconds, record.seconds = tuple(warmup), tuple(seconds)
        records.append(record)
    return records


def format_records(records: Sequence[CompileRecord]) -> str:
    """A plain-text table; the ratio ``x`` is against the first record."""
    base = records[0].tokens_per_second if records and records[0].tokens_per_second else 1.0
    lines = [f"{'variant':17} {'dtype':9} {'mode':27} {'warm-up 1, 2 (s)':>17} {'tok/s':>7} "
             f"{'spread':>13} {'x':>5} {'graphs':>6}"]
    for r in records:
        if r.error:
            lines.append(f"{r.variant:17} {r.dtype:9} {r.mode or '-':27} failed: {r.error}")
            continue
        lo, hi = r.spread
        lines.append(f"{r.variant:17} {r.dtype:9} {r.mode or '-':27} "
                     f"{r.warmup_seconds[0]:8.1f} {r.warmup_seconds[1]:8.1f} {r.tokens_per_second:7.1f} "
                     f"{lo:6.1f}-{hi:<6.1f} {r.tokens_per_second / base:5.2f} {r.graphs:6d}")
    return "\n".join(lines)


_FIRST_CALL = """
import json, sys
from torch._dynamo.utils import counters
from gemma_widgets import load_model
from gemma_widgets.bench.compiled import measure
from gemma_widgets.compilation import use_inductor_cache
use_inductor_cache(sys.argv[1])
lm = load_model(sys.argv[2], precision=sys.argv[3])
record = measure(lm, new_tokens=int(sys.argv[4]), variants=("compiled",), repeats=1)[0]
hits = counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"]
misses = counters["inductor"]["fxgraph_cache_miss"] + counters["aot_autograd"]["autograd_cache_miss"]
print(json.dumps([record.warmup_seconds[0], hits, misses]))
"""


@dataclass(frozen=True)
class FirstCall:
    """A fresh process's first compiled call: its seconds and what the inductor cache gave it."""

    seconds: float
    cache_hits: int  # compiled graphs loaded from the cache folder
    cache_misses: int  # graphs compiled from scratch (and written to the folder)


def first_call(cache_dir: Path | str, model: str = "tiny-random-gemma2", precision: str = "fp32",
               new_tokens: int = 4, timeout: float = 1200) -> FirstCall:
    """Time the first compiled ``generate`` in a fresh Python process that uses ``cache_dir``.

    Run it twice with one folder: the second start loads the compiled graphs from disk.
    """
    cmd = [sys.executable, "-c", _FIRST_CALL, str(cache_dir), model, precision, str(new_tokens)]
    free_memory()  # the child needs ~1 GB: do not hold what this process freed beside it
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise GemmaWidgetsError(f"Compiling {model} took over {timeout:.0f} s; try again on a quieter "
                                "machine or a smaller model.") from exc
    if done.returncode:
        raise GemmaWidgetsError(f"Compiling {model} in a fresh process failed:\n{done.stderr[-1500:]}")
    seconds, hits, misses = json.loads(done.stdout.strip().splitlines()[-1])
    return FirstCall(seconds, hits, misses)


def warm_stamp(model: str | None = None, precision: str = "bf16") -> Path:
    """The file :func:`warm_cache` leaves in the inductor cache once it has compiled ``model`` in ``precision``
    with this torch: where it exists, notebook 05's compiled cell loads kernels instead of compiling them."""
    return use_inductor_cache() / f".warmed-{resolve_preset(model).name}-{precision}-torch-{torch.__version__}"


def warm_cache(model: str | None = None, precision: str = "bf16") -> dict[str, float]:
    """Compile, once, the graphs a first session would compile, into :func:`inductor_cache_dir`
    (or ``$TORCHINDUCTOR_CACHE_DIR``): for a build step such as Binder's ``postBuild``, so a learner's
    first compile loads kernels instead of building them. ``python -m gemma_widgets prepare --compile``.

    Warms what notebook 05 section 2 compiles (``bench_compile.measure``'s ``compiled`` variant: the
    decode step with a static cache for its prompt plus 32 tokens) and what ``load_model(...,
    compile=True)`` compiles (the dashboard's ``bf16+compile``). Returns the seconds each took. Inductor's
    cache is keyed by the graph, torch's version and the CPU: a build machine with another instruction
    set than the one that runs the notebook warms nothing for it. A stamp in the cache folder marks
    a finished warm-up for this model, precision and torch: a second call returns ``{}`` at once.
    """
    stamp = warm_stamp(model, precision)
    if stamp.exists():
        return {}
    seconds: dict[str, float] = {}
    lm = load_model(model, precision)
    start = time.perf_counter()
    (record,) = measure(lm, variants=("compiled",), repeats=1)
    if record.error:
        raise RuntimeError(f"compiling {lm.preset.name} failed: {record.error}")
    seconds["notebook 05 (bench_compile.measure, compiled)"] = time.perf_counter() - start
    del lm
    start = time.perf_counter()
    compiled = load_model(model, precision, compile=True)
    if not compiled.compiled:
        raise RuntimeError("; ".join(compiled.notes))
    seconds["load_model(compile=True)"] = time.perf_counter() - start
    stamp.touch()
    return seconds
