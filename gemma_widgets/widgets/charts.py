"""Charts of benchmark results: PNG bytes from matplotlib's Agg canvas, no pyplot state.

Each chart is a function of a list of :class:`~gemma_widgets.bench.runner.Result`; only variants
that finished, with every figure a finite number in its sane range (:func:`problem`), are drawn:
a results file is untrusted, and ``decode_tps: 1e308`` made matplotlib raise. :func:`charts`
gives the dashboard its four images, and :func:`summary_png` puts them on one page for an export.

>>> from gemma_widgets.widgets import charts as plots                          # doctest: +SKIP
>>> png = plots.summary_png(bench.load("results.json"))                     # doctest: +SKIP
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"                                    # doctest: +SKIP
True
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma_widgets.bench import Result
from gemma_widgets.host.files import write_atomic

if TYPE_CHECKING:
    from gemma_widgets.divergence import ArenaResult

_COLOR = "#4c72b0"


def _label(text: str) -> str:
    """Text for a chart as it is: ``$`` would start matplotlib's mathtext (and can fail to parse)."""
    return text.replace("$", r"\$")


def _new_figure(width: float = 5.0, height: float = 3.2) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Any) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


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


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no finished variant yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def draw_speed(ax: Any, results: Sequence[Result]) -> None:
    """Decode tok/s per variant: the median, with a p10-p90 whisker."""
    done = _finished(results)
    if not done:
        return _empty(ax, "Decode speed")
    medians = [r.decode_tps or 0.0 for r in done]
    low = [m - (r.decode_tps_p10 or m) for r, m in zip(done, medians, strict=True)]
    high = [(r.decode_tps_p90 or m) - m for r, m in zip(done, medians, strict=True)]
    ax.bar([_label(r.variant) for r in done], medians, yerr=[low, high], capsize=4, color=_COLOR)
    ax.bar_label(ax.containers[-1], fmt="%.1f", padding=2)
    ax.margins(y=0.15)
    ax.set_ylabel("tokens / s (higher is better)")
    ax.set_title("Decode speed")


def draw_ttft(ax: Any, results: Sequence[Result]) -> None:
    """Time to first token per variant (the median prefill)."""
    done = [r for r in _finished(results) if r.ttft_ms is not None]
    if not done:
        return _empty(ax, "Time to first token")
    ax.bar([_label(r.variant) for r in done], [r.ttft_ms for r in done], color="#dd8452")
    ax.bar_label(ax.containers[-1], fmt="%.0f", padding=2)
    ax.margins(y=0.15)
    ax.set_ylabel("ms (lower is better)")
    ax.set_title("Time to first token")


def draw_memory(ax: Any, results: Sequence[Result]) -> None:
    """Weights footprint beside the process's peak resident memory (and CUDA peak on a GPU)."""
    done = _finished(results)
    if not done:
        return _empty(ax, "Memory")
    x = list(range(len(done)))
    width = 0.4
    weights = ax.bar([i - width / 2 for i in x], [r.weights_mb or 0 for r in done], width, label="weights")
    peak = [r.peak_cuda_mb if r.peak_cuda_mb else r.peak_rss_mb or 0 for r in done]
    label = "peak CUDA" if any(r.peak_cuda_mb for r in done) else "peak RSS"
    ax.bar([i + width / 2 for i in x], peak, width, label=label, color="#55a868")
    ax.bar_label(weights, fmt="%.0f", padding=2, fontsize=8)
    ax.bar_label(ax.containers[-1], fmt="%.0f", padding=2, fontsize=8)
    ax.set_xticks(x, [_label(r.variant) for r in done])
    ax.margins(y=0.15)
    ax.set_ylabel("MB (lower is better)")
    ax.set_title("Memory")
    ax.legend(fontsize=8)


def draw_tradeoff(ax: Any, results: Sequence[Result]) -> None:
    """Speed against peak memory; each point labelled with its quality against the reference."""
    done = _finished(results)
    if not done:
        return _empty(ax, "Speed vs memory")
    agreements = [r.top1_agreement if r.top1_agreement is not None else 1.0 for r in done]
    points = ax.scatter([r.peak_rss_mb or 0 for r in done], [r.decode_tps for r in done], c=agreements,
                        cmap="viridis", vmin=min(0.5, *agreements), vmax=1.0, s=60, zorder=3)
    for r in done:
        quality = "" if r.perplexity is None else f"\nppl {r.perplexity:.1f}"
        if r.top1_agreement is not None:
            quality += f", top-1 {r.top1_agreement:.0%}"
        ax.annotate(_label(f"{r.variant}{quality}"), (r.peak_rss_mb or 0, r.decode_tps), fontsize=7,
                    xytext=(5, 4), textcoords="offset points")
    ax.figure.colorbar(points, ax=ax, label="top-1 agreement")
    ax.set_xlabel("peak RSS, MB (left is smaller)")
    ax.set_ylabel("decode tokens / s (up is faster)")
    ax.margins(x=0.3, y=0.2)
    ax.set_title("Speed vs memory, with quality")
    ax.grid(alpha=0.3)


#: The dashboard's charts, in display order.
CHARTS: dict[str, Callable[[Any, Sequence[Result]], None]] = {
    "speed": draw_speed,
    "ttft": draw_ttft,
    "memory": draw_memory,
    "tradeoff": draw_tradeoff,
}


def charts(results: Sequence[Result]) -> dict[str, bytes]:
    """Each of :data:`CHARTS` drawn on its own figure, as PNG bytes."""
    pngs = {}
    for name, draw in CHARTS.items():
        fig = _new_figure()
        draw(fig.add_subplot(), results)
        pngs[name] = to_png(fig)
    return pngs


def summary_figure(results: Sequence[Result]) -> Any:
    """All four charts on one 2x2 figure, titled with the model and machine."""
    fig = _new_figure(11, 7.5)
    for ax, draw in zip(fig.subplots(2, 2).flat, CHARTS.values(), strict=True):
        draw(ax, results)
    first = next((r for r in results if r.machine), None)
    if first is not None and first.machine is not None:
        m = first.machine
        fig.suptitle(f"{first.model}: {first.new_tokens} new tokens, median of {first.repeats} "
                     f"- {m.cpu}, {m.cores} cores{', ' + m.gpu if m.gpu else ''}", fontsize=10)
    return fig


def summary_png(results: Sequence[Result]) -> bytes:
    """:func:`summary_figure` as PNG bytes."""
    return to_png(summary_figure(results))


def save_png(results: Sequence[Result], path: str | os.PathLike) -> Path:
    """Write :func:`summary_png` to ``path`` (atomically)."""
    return write_atomic(path, summary_png(results))


def arena_png(result: ArenaResult, width: float = 8.0, height: float = 3.0) -> bytes:
    """Where the challenger parts from the reference (an :class:`~gemma_widgets.divergence.ArenaResult`):
    the reference's probability of each challenger token, the KL per position, the divergence marked."""
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    ax.set_title(_label(f"{result.challenger} against {result.reference}"), fontsize=10)
    if result.reference_probs is None and result.kl is None:
        reasons = "; ".join(sorted(set(result.unavailable.values()))) or "no logits"
        ax.text(0.5, 0.5, _label(f"no figures: {reasons}"), ha="center", va="center", transform=ax.transAxes,
                wrap=True)
        ax.set_axis_off()
        return small_png(fig)
    if result.reference_probs is not None:
        ax.bar(range(1, len(result.reference_probs) + 1), result.reference_probs, color=_COLOR, alpha=0.8,
               label="reference's probability of the challenger's token")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("probability")
    if result.kl is not None:
        kl_ax = ax.twinx() if result.reference_probs is not None else ax
        kl_ax.plot(range(1, len(result.kl) + 1), result.kl, color="#dd8452", marker=".",
                   label="KL(reference || challenger), nats")
        kl_ax.set_ylabel("KL (nats)")
        kl_ax.set_ylim(bottom=0)
    if result.divergence is not None:
        ax.axvline(result.divergence + 1, color="#c5221f", linestyle="--", label="they part")
    ax.set_xlabel("token of the reply")
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=3, frameon=False)
    return small_png(fig)


def small_png(fig: Any) -> bytes:
    """The figure as a PNG of at most 64 colours (a third of the bytes: notebooks store it)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(to_png(fig))).convert("RGB").quantize(colors=64).save(buffer, format="png",
                                                                               optimize=True)
    return buffer.getvalue()


def _shown(token: str) -> str:
    """A token as a box shows it: whitespace made visible, ``$`` kept literal."""
    return _label(token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·").replace("▁", "·")) or "''"


def chat_tokens_png(tokens: Sequence[str], special: Sequence[bool], row_chars: int = 56) -> bytes:
    """A rendered chat as one coloured box per token (special tokens dark red), wrapped after ``\\n``.

    For the course (notebook 02): what the model reads, at projector size. ``tokens`` are the token
    strings (``convert_ids_to_tokens``) and ``special`` says which are special tokens.
    """
    from matplotlib.patches import FancyBboxPatch

    rows: list[list[tuple[str, bool]]] = [[]]
    used = 0
    for token, is_special in zip(tokens, special, strict=True):
        width = len(_shown(token)) + 1
        if rows[-1] and used + width > row_chars:
            rows.append([])
            used = 0
        rows[-1].append((token, bool(is_special)))
        used += width
        if token.endswith("\n"):
            rows.append([])
            used = 0
    rows = [row for row in rows if row]
    fig = _new_figure(10.0, 0.5 * len(rows) + 0.7)
    ax = fig.add_subplot()
    plain = ("#dbe7f5", "#fde9c9")  # two pale colours, alternating, so token boundaries show
    for y, row in enumerate(rows):
        x = 0.0
        for i, (token, is_special) in enumerate(row):
            text = _shown(token)
            box = len(text) + 0.6
            face = "#a61c1c" if is_special else plain[i % 2]
            ax.add_patch(FancyBboxPatch((x, -y - 0.4), box, 0.8, boxstyle="round,pad=0.02,rounding_size=0.15",
                                        facecolor=face, edgecolor="#555555", linewidth=0.6))
            ax.text(x + box / 2, -y, text, ha="center", va="center", family="monospace", fontsize=13,
                    color="white" if is_special else "black")
            x += box + 0.4
    ax.set_xlim(-0.3, row_chars + 1)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    ax.set_axis_off()
    ax.set_title(f"{len(tokens)} tokens · dark red: special tokens · a dot is a space, \\n a newline", fontsize=12)
    return small_png(fig)


#: IEEE-style layouts: (sign bits, exponent bits, mantissa bits, smallest normal, largest finite).
FLOAT_FORMATS: dict[str, tuple[int, int, int, float, float]] = {
    "fp32": (1, 8, 23, 1.1754943508222875e-38, 3.4028234663852886e38),
    "bf16": (1, 8, 7, 1.1754943508222875e-38, 3.3895313892515355e38),
    "fp16": (1, 5, 10, 6.103515625e-05, 65504.0),
}


def float_formats_png(activation_range: tuple[float, float], model_name: str = "") -> bytes:
    """The bit layouts of fp32, bf16 and fp16, and where measured activations fall in each one's range.

    Top: sign, exponent and mantissa bits. Bottom (log scale): each format's smallest normal to largest
    finite value, with ``activation_range`` (for instance the smallest and largest per-layer peak of
    ``|activation|``) shaded across all three: where it passes a format's bar, that format overflows.
    """
    fig = _new_figure(10.0, 5.6)
    bits_ax, range_ax = fig.subplots(2, 1, height_ratios=(1, 1.1))
    colours = {"sign": "#a61c1c", "exponent": "#4c72b0", "mantissa": "#55a868"}
    names = list(FLOAT_FORMATS)
    for y, name in enumerate(names):
        sign, exponent, mantissa, _, _ = FLOAT_FORMATS[name]
        left = 0
        for part, bits in (("sign", sign), ("exponent", exponent), ("mantissa", mantissa)):
            bits_ax.barh(y, bits, left=left, color=colours[part], edgecolor="white",
                         label=part if y == 0 else None)
            if bits > 1:
                bits_ax.text(left + bits / 2, y, f"{bits}", ha="center", va="center", color="white", fontsize=13)
            left += bits
    bits_ax.set_yticks(range(len(names)), names, fontsize=13)
    bits_ax.invert_yaxis()
    bits_ax.set_xlabel("bits", fontsize=12)
    bits_ax.set_title("Bit layout: exponent bits set the range, mantissa bits the precision", fontsize=13)
    bits_ax.legend(ncols=3, fontsize=11, loc="lower right", bbox_to_anchor=(1, 1.12), frameon=False)
    low, high = activation_range
    for y, name in enumerate(names):
        _, _, _, smallest, largest = FLOAT_FORMATS[name]
        overflow = high > largest
        range_ax.barh(y, largest - smallest, left=smallest, color="#c44e52" if overflow else "#8fb0d8")
        range_ax.text(largest, y, f" max {largest:.3g}", va="center", fontsize=11)
    range_ax.axvspan(low, high, color="#f0b400", alpha=0.45,
                     label=f"measured activations{' of ' + _label(model_name) if model_name else ''}: "
                           f"{low:.3g} to {high:.3g}")
    range_ax.set_xscale("log")
    range_ax.set_xlim(1e-40, 1e45)
    range_ax.set_yticks(range(len(names)), names, fontsize=13)
    range_ax.invert_yaxis()
    range_ax.set_xlabel("|value| (log scale): smallest normal to largest finite", fontsize=12)
    fig.legend(*range_ax.get_legend_handles_labels(), fontsize=11, loc="outside lower center", frameon=False)
    return small_png(fig)


# Course pictures (notebooks 04, 05, 06): plain numbers measured in a notebook in, a PNG readable on a
# projector out (large type, few marks).
_BIG = 13


def error_vs_bits_png(points: Mapping[str, tuple[float, float]], title: str = "Quantization: error against size",
                      ylabel: str = "relative error of the weights", width: float = 11.0, height: float = 5.0) -> bytes:
    """One marker per scheme, ``{name: (bits per weight, error)}``, named in a legend (4-bit schemes sit
    close together): on the left every scheme with the error on a log scale, on the right the schemes
    under 6 bits per weight, zoomed in."""
    import matplotlib

    fig = _new_figure(width, height)
    fig.suptitle(_label(title), fontsize=_BIG + 2)
    overview, zoom = fig.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"]
    markers = "osD^vP*Xhp<>"
    for ax, subset in ((overview, points), (zoom, {n: p for n, p in points.items() if p[0] < 6})):
        for i, (name, (bits, error)) in enumerate(points.items()):
            if name in subset:
                ax.scatter([bits], [error], s=110, color=colours(i % 10), marker=markers[i % len(markers)],
                           zorder=3, label=_label(name) if ax is overview else None)
        ax.set_xlabel("bits per weight (scales included)", fontsize=_BIG)
        ax.tick_params(labelsize=_BIG - 2)
        ax.grid(True, alpha=0.3)
    if points and all(error > 0 for _, error in points.values()):
        overview.set_yscale("log")
    overview.set_ylabel(_label(ylabel), fontsize=_BIG)
    overview.set_title("every scheme", fontsize=_BIG)
    zoom.set_title("under 6 bits, zoomed in", fontsize=_BIG)
    if points:
        fig.legend(fontsize=_BIG - 2, loc="outside right center", frameon=False)
    return small_png(fig)


def compile_png(tokens_per_second: Mapping[str, float], warmup_s: Mapping[str, float],
                width: float = 10.0, height: float = 4.5) -> bytes:
    """Two bar charts side by side: steady-state tokens/s and the first (warm-up) call's seconds per variant."""
    fig = _new_figure(width, height)
    for ax, values, title, unit in ((fig.add_subplot(1, 2, 1), tokens_per_second, "decode speed", "tokens/s"),
                                    (fig.add_subplot(1, 2, 2), warmup_s, "first call (warm-up)", "seconds")):
        names = [_label(n) for n in values]
        bars = ax.bar(names, list(values.values()), color=_COLOR)
        ax.bar_label(bars, fmt="%.1f", fontsize=_BIG - 2)
        ax.set_title(title, fontsize=_BIG + 1)
        ax.set_ylabel(unit, fontsize=_BIG)
        ax.tick_params(labelsize=_BIG - 2)
    return small_png(fig)


def timeline_png(arrivals_s: Sequence[float], sizes: Sequence[int], first_s: float | None = None,
                 unit: str = "characters", width: float = 9.0, height: float = 4.5) -> bytes:
    """A streaming reply over time: each piece's arrival (seconds since send) against the reply's size
    then, with the first piece marked."""
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    ax.set_title("A reply streaming in", fontsize=_BIG + 2)
    if arrivals_s:
        ax.step([0.0, *arrivals_s], [0, *sizes], where="post", color=_COLOR)
        ax.scatter(arrivals_s, sizes, s=30, color=_COLOR, zorder=3, label="a piece arrives")
        first = arrivals_s[0] if first_s is None else first_s
        ax.axvline(first, color="#c5221f", linestyle="--", label=f"first text {first:.2f} s")
        ax.legend(fontsize=_BIG - 2, loc="upper left")
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since send", fontsize=_BIG)
    ax.set_ylabel(f"reply so far ({unit})", fontsize=_BIG)
    ax.tick_params(labelsize=_BIG - 2)
    ax.grid(True, alpha=0.3)
    return small_png(fig)


def cache_layers_png(layouts: Mapping[str, Sequence[tuple[int, bool]]], width: float = 11.0,
                     height: float = 4.8) -> bytes:
    """One panel per model: the KV slots each layer of its static cache holds, sliding-window layers
    coloured apart from global ones, and hatched above each sliding layer the slots it would hold if
    it kept every position like a global layer (what the window saves).

    ``layouts`` maps a panel's title to its layers' ``(slots, is_sliding)``, in layer order; from a
    real cache, ``[(layer.keys.shape[2], layer.is_sliding) for layer in cache.layers]``.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(width, height)
    fig.suptitle("Static cache: KV slots per layer", fontsize=_BIG + 2)
    colours = {True: "#dd8452", False: _COLOR}
    for ax, (name, layers) in zip(fig.subplots(1, max(len(layouts), 1), squeeze=False).flat,
                                  layouts.items() or {"no model": []}.items(), strict=True):
        if not layers:
            _empty(ax, _label(name))
            continue
        full = max(slots for slots, _ in layers)
        x = range(len(layers))
        ax.bar(x, [full - slots for slots, _ in layers], bottom=[slots for slots, _ in layers], width=0.8,
               color="none", edgecolor="#aaaaaa", hatch="//", linewidth=0, label="saved by the window")
        for sliding in (True, False):
            kind = [(i, slots) for i, (slots, s) in enumerate(layers) if s == sliding]
            if kind:
                sizes = sorted({slots for _, slots in kind})
                ax.bar([i for i, _ in kind], [slots for _, slots in kind], width=0.8, color=colours[sliding],
                       label=f"{len(kind)} {'sliding' if sliding else 'global'} layer{'s' * (len(kind) != 1)} × "
                             f"{'/'.join(map(str, sizes))} slots")
        saved = 1 - sum(slots for slots, _ in layers) / (full * len(layers))
        ax.set_title(_label(f"{name}\nthe window saves {saved:.0%}"), fontsize=_BIG)
        ax.set_xlabel("layer", fontsize=_BIG)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("KV slots", fontsize=_BIG)
        ax.tick_params(labelsize=_BIG - 2)
        ax.legend(fontsize=_BIG - 2, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return small_png(fig)
