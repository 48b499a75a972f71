"""The precision benchmark harness: one prompt, several variants, speed beside quality.

Split the way optimum-benchmark splits it: the *variant* is a name from the precision registry
(plus loader flags, e.g. ``bf16+compile``); the *scenario* and the *trackers* (time, memory,
quality) run in :mod:`gemma_widgets.bench.worker`, one fresh process per variant; the
*records* are :class:`~gemma_widgets.bench.result.Result` dataclasses with a machine description,
saved to CSV or JSON and loaded back (:mod:`~gemma_widgets.bench.io`), shown as a table and a
recommendation (:mod:`~gemma_widgets.bench.report`). The dashboard, the CLI and the notebooks only
consume records.

Per variant: load time, weights footprint, peak resident memory (and peak CUDA memory on a
GPU), time to first token (a prefill that generates one token), decode tok/s (a generate with
``min_new_tokens == max_new_tokens``, minus the prefill, so ``(n - 1) / (t_n - ttft)``), after a
warm-up, over ``repeats`` runs with median, p10 and p90; perplexity on the package passage and
top-1 agreement with the reference variant, and the quality gate's verdict on those figures and the
weights' bytes per parameter (:func:`gemma_widgets.quality.judge`: no second scoring); the generated text.

The call the notebooks use:

>>> from gemma_widgets import bench                                            # doctest: +SKIP
>>> results = bench.run(model="bundled", variants=["fp32", "bf16", "ov-int4"],
...                     new_tokens=32, repeats=3)                              # doctest: +SKIP
>>> print(bench.format_table(results)); print(bench.recommend(results))     # doctest: +SKIP
>>> bench.save(results, "results.csv"); bench.load("results.csv") == results  # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from gemma_widgets import precisions
from gemma_widgets.bench.measure import Measured, Progress, fill_timings, judge_result, measure_variant
from gemma_widgets.bench.records import (
    Scenario,
    parse_variant,
)
from gemma_widgets.bench.result import Result, compare_with_reference, noise_floor
from gemma_widgets.engines.server import ENV_API_KEY
from gemma_widgets.engines.spec import Preset
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.hardware import Machine, noise_probe
from gemma_widgets.presets import resolve_preset
from gemma_widgets.quality import top1_agreement

DEFAULT_PROMPT = "Explain in a few sentences how a lighthouse helps ships find their way at night."




def variant_choices(model: str | None = None) -> dict[str, str | None]:
    """Every precision for ``model``, with why it cannot run here (``None``: it can)."""
    return precisions.available(resolve_preset(model))


def default_variants(model: str | None = None) -> list[str]:
    """The variants this machine can run for ``model`` (what ``bench`` compares by default)."""
    return [name for name, reason in variant_choices(model).items() if reason is None]


def default_reference(variants: Sequence[str]) -> str:
    """The quality reference: the most precise variant measured (``fp32``, then ``bf16``), else the first."""
    return next((name for name in ("fp32", "bf16") if name in variants), variants[0])




def run(model: str | None = None, variants: Sequence[str] | None = None, *,
        prompt: str = DEFAULT_PROMPT, new_tokens: int = 32, repeats: int = 3, warmup: int = 1,
        reference: str | None = None, quality: bool = True, passage_tokens: int | None = None,
        cancel: threading.Event | None = None, on_progress: Callable[[Progress], None] | None = None,
        on_result: Callable[[Result], None] | None = None, progress_bar: bool = False,
        timeout_s: float | None = 1800, rounds: int = 1) -> list[Result]:
    """Measure ``variants`` of ``model`` one at a time, each in a fresh process, in interleaved rounds.

    Args:
        model: a preset, hub id or folder (default ``$GEMMA_MODEL`` or ``bundled``).
        variants: precision names, optionally with loader flags (``"bf16+compile"``); default
            :func:`default_variants` (what this machine can run).
        prompt, new_tokens, repeats, warmup: the scenario; every decode makes exactly
            ``new_tokens`` tokens, greedily.
        reference: the variant quality is compared with (default :func:`default_reference`); it
            runs first, so every later result arrives with its agreement filled in.
        quality: score perplexity and top-1 agreement on the package passage.
        passage_tokens: score only the passage's first tokens (faster, for tests).
        cancel: set it to stop; the variant being measured ends ``cancelled`` and the ones that
            finished are returned.
        on_progress, on_result: called (from this thread) as stages and variants finish.
        progress_bar: show a tqdm bar over all variants' steps.
        timeout_s: the most one variant may take before it is stopped and reported failed.
        rounds: measure every variant this many times, round after round (a fresh process each
            time), so a slow minute of a shared machine falls on every variant rather than on one;
            each variant's timed runs are pooled over the rounds, its quality scored in the first.

    Returns:
        One :class:`Result` per variant measured, in the order run (the reference first); a
        variant that failed or could not run has ``status`` and ``error`` saying why.
    """
    if new_tokens < 2 or repeats < 1 or warmup < 0 or rounds < 1:
        raise GemmaWidgetsError(
            f"new_tokens must be at least 2, repeats and rounds at least 1 (got {new_tokens}, {repeats}, "
            f"{rounds}); warmup cannot be negative (got {warmup})."
        )
    preset = resolve_preset(model)
    variants = list(variants) if variants else default_variants(preset.name)
    if not variants:
        raise GemmaWidgetsError(f"No variant of {preset.name} can run on this machine.")
    if any("api_key" in parse_variant(variant)[1] for variant in variants):
        raise GemmaWidgetsError(f"A variant's name is kept with its results (tables, CSV, JSON): give the "
                                f"server's key in ${ENV_API_KEY}, not as api_key= in the variant.")
    reference = reference or default_reference(variants)
    order = [reference] + [v for v in variants if v != reference] if reference in variants else variants
    # A server's URL goes to the worker as given, password included, so that it can log in (through its
    # stdin, never its command line); results show preset.name, without it.
    loads = str(preset.repo_id) if preset.fmt == "server" else preset.name
    base = Scenario(loads, "", prompt, new_tokens, repeats, warmup, quality, passage_tokens)
    bar = tqdm(total=len(order) * rounds, desc="bench", unit="run") if progress_bar else None

    def report(p: Progress) -> None:
        if bar is not None:
            bar.n = round(p.index + p.fraction, 2)
            bar.set_postfix_str(f"{p.variant}: {p.stage}", refresh=True)
        if on_progress:
            on_progress(p)

    run = _Rounds(preset, order, reference, rounds, base, report, on_result)
    try:
        for round_index in range(rounds):
            if not run.play(round_index, cancel or threading.Event(), timeout_s):
                break
        return run.results()
    finally:
        if bar is not None:
            bar.close()


class _Rounds:
    """The rounds of one :func:`run`: each variant measured once a round, merged into one result per variant."""

    def __init__(self, preset: Preset, order: list[str], reference: str, rounds: int, base: Scenario,
                 report: Callable[[Progress], None], on_result: Callable[[Result], None] | None):
        self.preset, self.order, self.rounds, self.base = preset, order, rounds, base
        self.report, self.on_result = report, on_result
        self.reference, self.machine = reference, Machine.here()
        self.total = len(order) * rounds
        self.measured: dict[str, Measured] = {}
        self.finished: list[Result] = []
        self.probes = [noise_probe()]
        self.reference_top1: list[int] | None = None

    def play(self, round_index: int, cancel: threading.Event, timeout_s: float | None) -> bool:
        """Measure every variant once (in order); False when the run was cancelled."""
        for i, variant in enumerate(self.order):
            if cancel.is_set():
                return False
            if variant in self.measured and not self.measured[variant].result.ok:
                continue  # failed or could not run: reported once
            scenario = dataclasses.replace(self.base, variant=variant, quality=self.base.quality and round_index == 0)
            m = measure_variant(scenario, round_index * len(self.order) + i, self.total, cancel, timeout_s, self.report)
            self.probes.append(noise_probe())
            kept = self.merge(variant, m, round_index)
            if round_index == self.rounds - 1 or not kept.result.ok:
                self.finish(kept)
            if m.result.status == "cancelled":
                return False
        return True

    def merge(self, variant: str, m: Measured, round_index: int) -> Measured:
        """``m``, a round of ``variant``, pooled into its first round's measurement (returned)."""
        kept = self.measured.setdefault(variant, m)
        kept.result.machine, kept.result.reference = self.machine, self.reference
        if m is not kept and m.result.ok:
            kept.prefill += m.prefill
            kept.decode += m.decode
            kept.result.rounds += 1
        elif m is not kept:
            kept.result.notes.append(f"round {round_index + 1}: {m.result.status}: {m.result.error}")
        if variant == self.reference and m.top1:
            self.reference_top1 = m.top1
        if m.top1 and self.reference_top1 and len(m.top1) == len(self.reference_top1):
            kept.result.top1_agreement = top1_agreement(m.top1, self.reference_top1)
        return kept

    def finish(self, m: Measured) -> None:
        result = m.result
        fill_timings(result, m.prefill, m.decode)
        if result.ok:
            precision = precisions.resolve(parse_variant(result.variant)[0], self.preset).name
            judge_result(result, precision, self.preset.params)
        result.noise_floor = noise_floor(self.probes)
        self.finished.append(result)
        compare_with_reference(self.finished)
        index = self.order.index(result.variant) + (self.rounds - 1) * len(self.order)
        self.report(Progress(result.variant, index, self.total, "finished", 1.0))
        if self.on_result:
            self.on_result(result)

    def results(self) -> list[Result]:
        """Every variant's result in the order run; a variant cancelled before the last round keeps what
        the earlier rounds measured. Each row sits beside the noise of the whole run."""
        for m in self.measured.values():
            if m.result not in self.finished:
                m.result.notes.append(f"cancelled after {m.result.rounds} of {self.rounds} rounds")
                self.finish(m)
        for result in self.finished:
            result.noise_floor = noise_floor(self.probes)
        compare_with_reference(self.finished)
        return sorted(self.finished, key=lambda r: self.order.index(r.variant))
