"""A benchmark's record: :class:`Result` (one variant's measurements, or why there are none), the
statistics its figures come from, and how rows compare with the reference and the machine's noise."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from gemma_widgets.host.hardware import Machine

MB = 1_000_000  # decimal megabytes, as the README's fit table and the notebooks count


@dataclass
class Result:
    """One variant's measurements (``status`` ``ok``) or why there are none (the others)."""

    model: str
    variant: str
    status: str = "ok"  # "ok", "failed", "unavailable" or "cancelled"
    error: str = ""
    engine: str = ""
    prompt_tokens: int | None = None
    new_tokens: int = 0
    repeats: int = 0
    load_s: float | None = None
    weights_mb: float | None = None
    peak_rss_mb: float | None = None
    rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    ttft_ms: float | None = None  # medians, then p10 and p90
    ttft_ms_p10: float | None = None
    ttft_ms_p90: float | None = None
    decode_tps: float | None = None
    decode_tps_p10: float | None = None
    decode_tps_p90: float | None = None
    perplexity: float | None = None
    top1_agreement: float | None = None
    reference: str = ""
    gate: str = ""  # the quality gate's verdict: "passed", "marked" or "failed" ("" when not judged)
    gate_reason: str = ""  # what failed, or why a marked variant may agree less than MIN_AGREEMENT
    text: str = ""
    recipe: str = ""  # which weights at which precision (gemma_widgets.recipe)
    rounds: int = 1  # interleaved rounds the timed runs come from
    noise_floor: float | None = None  # the machine's own spread over the run (machine.noise_floor)
    speed_vs_reference: float | None = None  # decode tok/s over the reference's
    within_noise: bool | None = None  # this variant's and the reference's tok/s ranges overlap
    ttft_runs_ms: list[float] = field(default_factory=list)
    decode_runs_tps: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: Machine | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def decode_spread(self) -> float | None:
        """``(p90 - p10) / median`` of decode tok/s: 0.05 means within 5% of the median."""
        if not self.decode_tps or self.decode_tps_p10 is None or self.decode_tps_p90 is None:
            return None
        return (self.decode_tps_p90 - self.decode_tps_p10) / self.decode_tps

    def decode_range(self) -> tuple[float, float] | None:
        """The p10-p90 range of decode tok/s, widened to at least the machine's noise floor around
        the median (a few runs can agree by chance more closely than the machine allows)."""
        if not self.decode_tps or self.decode_tps_p10 is None or self.decode_tps_p90 is None:
            return None
        half = self.decode_tps * (self.noise_floor or 0.0) / 2
        return min(self.decode_tps_p10, self.decode_tps - half), max(self.decode_tps_p90, self.decode_tps + half)


def within_noise(a: Result, b: Result) -> bool | None:
    """True when ``a``'s and ``b``'s decode ranges (:meth:`Result.decode_range`) overlap: on this
    machine the two cannot be told apart. None when either has no decode figure."""
    ra, rb = a.decode_range(), b.decode_range()
    if ra is None or rb is None:
        return None
    return ra[0] <= rb[1] and rb[0] <= ra[1]


def compare_with_reference(results: Sequence[Result]) -> None:
    """Fill each result's ``speed_vs_reference`` and ``within_noise`` from the reference's row."""
    reference = next((r for r in results if r.ok and r.variant == r.reference), None)
    for r in results:
        if reference is None or r is reference or not (r.ok and r.decode_tps and reference.decode_tps):
            continue
        r.speed_vs_reference = r.decode_tps / reference.decode_tps
        r.within_noise = within_noise(r, reference)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return statistics.median(values), percentile(values, 0.1), percentile(values, 0.9)


def noise_floor(probes: Sequence[float]) -> float | None:
    """The machine's own spread over a run, ``(p90 - p10) / median`` of :func:`~gemma_widgets.host.hardware.noise_probe`
    times taken between the variants: speeds that differ by less cannot be told apart here (None under 2)."""
    if len(probes) < 2:
        return None
    return (percentile(probes, 0.9) - percentile(probes, 0.1)) / statistics.median(probes)
