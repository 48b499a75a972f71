"""Benchmark records for people: the machine in one line, two runs side by side, the text table, and
the recommendation (the fastest variant within the quality bound)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gemma_widgets.bench.result import Result
from gemma_widgets.host.hardware import Machine
from gemma_widgets.quality import MIN_AGREEMENT

#: Quality bound for the recommendation: perplexity at most this multiple of the reference's, and the
#: quality gate's share of top-1 predictions equal to the reference's (``MIN_AGREEMENT``).
MAX_PERPLEXITY_RATIO = 1.10


def describe_machine(machine: Machine | None) -> str:
    """One line: CPU, cores, memory, GPU and the torch/transformers versions a run used."""
    if machine is None:
        return "an unrecorded machine"
    gpu = f", {machine.gpu}" if machine.gpu else ", no GPU"
    return (f"{machine.cpu} ({machine.cores} cores, {machine.memory_gb} GB{gpu}; "
            f"torch {machine.libraries.get('torch', '-')}, "
            f"transformers {machine.libraries.get('transformers', '-')})")


@dataclass(frozen=True)
class RunComparison:
    """One variant measured in two runs (say, this machine's and the shipped reference run's)."""

    variant: str
    here: Result
    there: Result

    @property
    def speed_ratio(self) -> float:
        """Decode tok/s here over there: 2.0 means twice as fast here."""
        return (self.here.decode_tps or 0.0) / (self.there.decode_tps or float("nan"))


def compare_runs(here: Sequence[Result], there: Sequence[Result]) -> list[RunComparison]:
    """The variants that finished with a decode speed in both runs, of the same model, in ``here``'s
    order. Empty when the runs measured different models: their speeds say nothing of the machines."""
    done = {r.variant: r for r in there if r.ok and r.decode_tps}
    return [RunComparison(r.variant, r, done[r.variant]) for r in here
            if r.ok and r.decode_tps and r.variant in done and r.model == done[r.variant].model]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass(frozen=True)
class Column:
    """One column of the results table: its header and how a finished result's cell reads."""

    header: str
    cell: Callable[[Result], str]


def _agreement(r: Result) -> str:
    return "-" if r.top1_agreement is None else f"{r.top1_agreement:.1%}"


def _spread(r: Result) -> str:
    spread = r.decode_spread
    if spread is None:
        return "-"
    return f"{spread:.1%}" + ("" if r.noise_floor is None else f" (noise {r.noise_floor:.1%})")


def _versus(r: Result) -> str:
    if r.speed_vs_reference is None:
        return "ref" if r.reference and r.variant == r.reference and r.decode_tps else "-"
    return f"{r.speed_vs_reference:.2f}x" + (", within noise" if r.within_noise else "")


#: The results table, as both the text table and the dashboard's HTML table show it.
COLUMNS = (
    Column("variant", lambda r: r.variant),
    Column("engine", lambda r: r.engine or "-"),
    Column("load s", lambda r: _fmt(r.load_s, ".1f")),
    Column("weights MB", lambda r: _fmt(r.weights_mb, ".0f")),
    Column("peak RSS MB", lambda r: _fmt(r.peak_rss_mb, ".0f")),
    Column("peak CUDA MB", lambda r: _fmt(r.peak_cuda_mb, ".0f")),
    Column("TTFT ms", lambda r: _fmt(r.ttft_ms, ".1f")),
    Column("decode tok/s", lambda r: _fmt(r.decode_tps, ".1f")),
    Column("p10-p90", lambda r: f"{_fmt(r.decode_tps_p10, '.1f')}-{_fmt(r.decode_tps_p90, '.1f')}"),
    Column("spread", _spread),
    Column("vs ref", _versus),
    Column("perplexity", lambda r: _fmt(r.perplexity, ".2f")),
    Column("top-1 agree", _agreement),
    Column("gate", lambda r: r.gate or "-"),
)


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    """Each result's cells under :data:`COLUMNS`; a result that did not finish has three cells:
    variant, engine and why."""
    return [[c.cell(r) for c in COLUMNS] if r.ok else [r.variant, r.engine or "-", f"{r.status}: {r.error}"]
            for r in results]


def format_table(results: Sequence[Result]) -> str:
    """A plain-text table of ``results`` (failed variants show their reason)."""
    head = [c.header for c in COLUMNS]
    rows = table_rows(results)
    full = [row for row in rows if len(row) == len(head)]
    widths = [max([len(h)] + [len(row[i]) for row in full]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for row in rows:
        if len(row) == len(head):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        else:
            lines.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2]]))
    return "\n".join(lines)


def recipes(results: Sequence[Result]) -> list[tuple[str, str]]:
    """``(variant, recipe)`` for each result that read one: which weights it keeps at which precision."""
    return [(r.variant, r.recipe) for r in results if r.recipe]


def within_quality_bound(result: Result, reference: Result | None,
                         max_perplexity_ratio: float = MAX_PERPLEXITY_RATIO,
                         min_agreement: float = MIN_AGREEMENT) -> bool:
    """True if ``result``'s quality is close enough to ``reference``'s (or nothing says otherwise); never
    for a variant that failed the quality gate."""
    if reference is None or result is reference:
        return True
    if result.gate == "failed":
        return False
    if result.perplexity and reference.perplexity:
        if result.perplexity > max_perplexity_ratio * reference.perplexity:
            return False
    return result.top1_agreement is None or result.top1_agreement >= min_agreement


def recommend(results: Sequence[Result], max_perplexity_ratio: float = MAX_PERPLEXITY_RATIO,
              min_agreement: float = MIN_AGREEMENT) -> str:
    """One line: the fastest variant within the quality bound, and the smallest that ran."""
    ok = [r for r in results if r.ok and r.decode_tps]
    if not ok:
        return "No variant finished, so there is nothing to recommend: see the errors above."
    reference = next((r for r in ok if r.variant == ok[0].reference), None)
    good = [r for r in ok if within_quality_bound(r, reference, max_perplexity_ratio, min_agreement)]
    fastest = max(good, key=lambda r: r.decode_tps or 0.0)
    smallest = min(ok, key=lambda r: r.peak_rss_mb or float("inf"))
    quality = ""
    if reference is not None and fastest is not reference and fastest.perplexity and reference.perplexity:
        quality = f", perplexity x{fastest.perplexity / reference.perplexity:.2f} of {reference.variant}"
        if fastest.top1_agreement is not None:
            quality += f", {fastest.top1_agreement:.0%} top-1 agreement"
    bound = (f"perplexity <= {max_perplexity_ratio:g}x and top-1 agreement >= {min_agreement:.0%} "
             f"of {reference.variant}" if reference else "no quality reference")
    return (f"Fastest within the quality bound ({bound}): {fastest.variant} "
            f"({fastest.decode_tps:.1f} tok/s{quality}); smallest that fits: {smallest.variant} "
            f"({_fmt(smallest.peak_rss_mb, '.0f')} MB peak RSS).")
