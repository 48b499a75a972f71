"""Charts of benchmark results, as PNG bytes (:mod:`gemma_widgets.figures`).

Each chart is a function of a list of :class:`~gemma_widgets.bench.runner.Result`; only variants
that finished, with every figure a finite number in its sane range (:func:`problem`), are drawn:
a results file is untrusted, and ``decode_tps: 1e308`` made matplotlib raise. :func:`charts`
gives the dashboard its four images, and :func:`summary_png` puts them on one page for an export.

>>> from gemma_widgets.bench import charts                                  # doctest: +SKIP
>>> png = charts.summary_png(bench.load("results.json"))                    # doctest: +SKIP
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"                                    # doctest: +SKIP
True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gemma_widgets.bench.result import Result
from gemma_widgets.figures import BIG, COLOR, SMALL, empty, label, new_figure, small_png, style, to_png
from gemma_widgets.host.files import write_atomic

#: The range each drawn figure must lie in: (lowest, highest, unit). Beyond it a figure is a broken or
#: hand-edited file, not a measurement; drawn, it would raise or squash every other bar flat.
SANE_RANGES: dict[str, tuple[float, float, str]] = {
    **dict.fromkeys(("decode_tps", "decode_tps_p10", "decode_tps_p90"), (0.0, 1e6, " tok/s")),
    "ttft_ms": (0.0, 1e7, " ms"),
    **dict.fromkeys(("weights_mb", "peak_rss_mb", "peak_cuda_mb"), (0.0, 1e8, " MB")),
    "perplexity": (1.0, 1e12, ""),
    "top1_agreement": (0.0, 1.0, ""),
}


def problem(result: Result) -> str | None:
    """Why ``result`` cannot be drawn (a figure that is not a number in :data:`SANE_RANGES`, or a p10-p90
    range that does not hold the median), or None when it can."""
    for name, (low, high, unit) in SANE_RANGES.items():
        value = getattr(result, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
            return f"{name} = {shown} is not a figure from {low:g} to {high:g}{unit}"  # NaN fails the test too
    tps, p10, p90 = result.decode_tps, result.decode_tps_p10, result.decode_tps_p90
    if tps is not None and not (p10 if p10 is not None else tps) <= tps <= (p90 if p90 is not None else tps):
        return f"decode_tps = {tps:g} lies outside its own p10-p90 range ({p10} to {p90})"
    return None


def _finished(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r.ok and r.decode_tps and problem(r) is None]


def _variants(ax: Any, done: Sequence[Result]) -> None:
    """Variant names under the bars, slanted when there are more than four."""
    style(ax)
    if len(done) > 4:
        ax.tick_params(axis="x", labelrotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")


def _bars(ax: Any, done: Sequence[Result], values: list[float], fmt: str, ylabel: str, title: str,
          color: str = COLOR, **bar: Any) -> None:
    """One labelled bar per finished variant."""
    ax.bar([label(r.variant) for r in done], values, color=color, **bar)
    ax.bar_label(ax.containers[-1], fmt=fmt, padding=2, fontsize=SMALL)
    ax.margins(y=0.15)
    ax.set_ylabel(ylabel, fontsize=SMALL)
    ax.set_title(title, fontsize=BIG)
    _variants(ax, done)


def draw_speed(ax: Any, results: Sequence[Result]) -> None:
    """Decode tok/s per variant: the median, with a p10-p90 whisker."""
    done = _finished(results)
    if not done:
        return empty(ax, "Decode speed")
    medians = [r.decode_tps or 0.0 for r in done]
    low = [m - (r.decode_tps_p10 or m) for r, m in zip(done, medians, strict=True)]
    high = [(r.decode_tps_p90 or m) - m for r, m in zip(done, medians, strict=True)]
    _bars(ax, done, medians, "%.1f", "tokens / s (higher is better)", "Decode speed (median, p10-p90)",
          yerr=[low, high], capsize=4)


def draw_ttft(ax: Any, results: Sequence[Result]) -> None:
    """Time to first token per variant (the median prefill)."""
    done = [r for r in _finished(results) if r.ttft_ms is not None]
    if not done:
        return empty(ax, "Time to first token")
    _bars(ax, done, [r.ttft_ms or 0.0 for r in done], "%.0f", "ms (lower is better)", "Time to first token",
          color="#dd8452")


def draw_memory(ax: Any, results: Sequence[Result]) -> None:
    """Weights footprint beside the process's peak resident memory (and CUDA peak on a GPU)."""
    done = _finished(results)
    if not done:
        return empty(ax, "Memory")
    x = list(range(len(done)))
    width = 0.4
    weights = ax.bar([i - width / 2 for i in x], [r.weights_mb or 0 for r in done], width, label="weights")
    peak = [r.peak_cuda_mb if r.peak_cuda_mb else r.peak_rss_mb or 0 for r in done]
    name = "peak CUDA" if any(r.peak_cuda_mb for r in done) else "peak RSS"
    ax.bar([i + width / 2 for i in x], peak, width, label=name, color="#55a868")
    for bars in (weights, ax.containers[-1]):  # upright figures would run into their neighbours
        ax.bar_label(bars, fmt="%.0f", padding=3, fontsize=SMALL, rotation=90)
    ax.set_xticks(x, [label(r.variant) for r in done])
    ax.margins(y=0.3)
    ax.set_ylabel("MB (lower is better)", fontsize=SMALL)
    ax.set_title("Memory", fontsize=BIG)
    ax.legend(fontsize=SMALL, ncols=2, loc="upper left")
    _variants(ax, done)


def draw_tradeoff(ax: Any, results: Sequence[Result]) -> None:
    """Speed against peak memory, both axes from zero; each variant its own colour, named in the legend
    with its quality against the reference (a cross where the quality gate marked it). The peaks of
    the variants often lie within 10% of each other: from zero, the axis shows them so."""
    import matplotlib  # loaded with the figure, not at import (see gemma_widgets.figures)

    done = _finished(results)
    if not done:
        return empty(ax, "Speed vs memory")
    colours = matplotlib.colormaps["tab10"]
    for i, r in enumerate(done):
        quality = [] if r.perplexity is None else [f"ppl {r.perplexity:.1f}"]
        if r.top1_agreement is not None:
            quality.append(f"top-1 {r.top1_agreement:.0%}")
        marked = r.gate in ("marked", "failed")
        name = f"{r.variant}: {', '.join(quality)}" if quality else r.variant
        ax.scatter([r.peak_rss_mb or 0], [r.decode_tps], s=150 if marked else 110, zorder=3,
                   color=colours(i % 10), marker="X" if marked else "o",
                   label=label(name + (", marked" if marked else "")))
    ax.set_xlim(0, max(r.peak_rss_mb or 0 for r in done) * 1.15 or 1)
    ax.set_ylim(0, max(r.decode_tps or 0 for r in done) * 1.15)
    ax.set_xlabel("peak RSS, MB (left is smaller)", fontsize=SMALL)
    ax.set_ylabel("decode tokens / s (up is faster)", fontsize=SMALL)
    ax.set_title("Speed vs memory, with quality", fontsize=BIG)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=SMALL, loc="best", title="quality against the reference", title_fontsize=SMALL)
    style(ax)


#: The dashboard's charts, in display order.
CHARTS: dict[str, Callable[[Any, Sequence[Result]], None]] = {
    "speed": draw_speed,
    "ttft": draw_ttft,
    "memory": draw_memory,
    "tradeoff": draw_tradeoff,
}


def chart_figures(results: Sequence[Result]) -> dict[str, Any]:
    """Each of :data:`CHARTS` drawn on its own figure (half a notebook's width: two to a row)."""
    figures = {}
    for name, draw in CHARTS.items():
        fig = new_figure(6.4, 4.8)
        draw(fig.add_subplot(), results)
        figures[name] = fig
    return figures


def charts(results: Sequence[Result]) -> dict[str, bytes]:
    """:func:`chart_figures` as PNG bytes."""
    return {name: to_png(fig) for name, fig in chart_figures(results).items()}


def summary_figure(results: Sequence[Result]) -> Any:
    """All four charts on one 2x2 figure, titled with the model and machine."""
    fig = new_figure(13, 10)
    for ax, draw in zip(fig.subplots(2, 2).flat, CHARTS.values(), strict=True):
        draw(ax, results)
    first = next((r for r in results if r.machine), None)
    if first is not None and first.machine is not None:
        m = first.machine
        fig.suptitle(label(f"{first.model}: {first.new_tokens} new tokens, median of {first.repeats} "
                           f"- {m.cpu}, {m.cores} cores{', ' + m.gpu if m.gpu else ''}"), fontsize=BIG)
    return fig


def summary_png(results: Sequence[Result]) -> bytes:
    """:func:`summary_figure` as PNG bytes (64 colours: notebooks store it)."""
    return small_png(summary_figure(results))


def save_png(results: Sequence[Result], path: str | os.PathLike) -> Path:
    """Write :func:`summary_figure` to ``path`` (atomically), in full colour."""
    return write_atomic(path, to_png(summary_figure(results)))
