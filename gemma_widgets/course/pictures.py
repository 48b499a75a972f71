"""The course's pictures: plain numbers measured in a notebook in, a PNG readable on a projector out
(large type, few marks), drawn on :mod:`gemma_widgets.figures`.

Each ``*_png`` has a ``*_figure`` beside it that returns the matplotlib figure (tests inspect it).

>>> from gemma_widgets.course import pictures                               # doctest: +SKIP
>>> Image(pictures.timeline_png([0.3, 0.35, 0.41], [2, 9, 15]))             # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from gemma_widgets.divergence import ArenaResult
from gemma_widgets.figures import BIG, COLOR, SMALL, empty, label, new_figure, small_png, style

_RED = "#c5221f"


def _shown(token: str) -> str:
    """A token as a box shows it: whitespace made visible, ``$`` kept literal."""
    return label(token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·").replace("▁", "·")) or "''"


def chat_tokens_figure(tokens: Sequence[str], special: Sequence[bool], row_chars: int = 56) -> Any:
    """A rendered chat as one coloured box per token (special tokens dark red), wrapped after ``\\n``.

    For notebook 02: what the model reads. ``tokens`` are the token strings (``convert_ids_to_tokens``)
    and ``special`` says which are special tokens.
    """
    # matplotlib loads with the figure, not at import (see gemma_widgets.figures)
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
    fig = new_figure(10.0, 0.5 * len(rows) + 0.7)
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
            ax.text(x + box / 2, -y, text, ha="center", va="center", family="monospace", fontsize=BIG,
                    color="white" if is_special else "black")
            x += box + 0.4
    ax.set_xlim(-0.3, row_chars + 1)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    ax.set_axis_off()
    ax.set_title(f"{len(tokens)} tokens · dark red: special tokens · a dot is a space, \\n a newline", fontsize=12)
    return fig


def chat_tokens_png(tokens: Sequence[str], special: Sequence[bool], row_chars: int = 56) -> bytes:
    """:func:`chat_tokens_figure` as PNG bytes."""
    return small_png(chat_tokens_figure(tokens, special, row_chars))


#: IEEE-style layouts: (sign bits, exponent bits, mantissa bits, smallest normal, largest finite).
FLOAT_FORMATS: dict[str, tuple[int, int, int, float, float]] = {
    "fp32": (1, 8, 23, 1.1754943508222875e-38, 3.4028234663852886e38),
    "bf16": (1, 8, 7, 1.1754943508222875e-38, 3.3895313892515355e38),
    "fp16": (1, 5, 10, 6.103515625e-05, 65504.0),
}


def float_formats_figure(activation_range: tuple[float, float], model_name: str = "") -> Any:
    """The bit layouts of fp32, bf16 and fp16, and where measured activations fall in each one's range.

    Top: sign, exponent and mantissa bits. Bottom (log scale): each format's smallest normal to largest
    finite value, with ``activation_range`` (for instance the smallest and largest per-layer peak of
    ``|activation|``) shaded across all three: a format whose largest value lies inside it overflows,
    and its bar is red.
    """
    from matplotlib.patches import Patch  # matplotlib loads with the figure (see gemma_widgets.figures)
    from matplotlib.ticker import LogLocator, MultipleLocator  # with the figure, as above

    fig = new_figure(10.0, 6.0)
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
                bits_ax.text(left + bits / 2, y, f"{bits}", ha="center", va="center", color="white", fontsize=BIG)
            left += bits
    bits_ax.xaxis.set_major_locator(MultipleLocator(4))  # whole bits, not 2.5 and 7.5
    bits_ax.set_yticks(range(len(names)), names)
    bits_ax.invert_yaxis()
    bits_ax.set_xlabel("bits", fontsize=12)
    bits_ax.set_title("Bit layout: exponent bits set the range, mantissa bits the precision", fontsize=BIG)
    bits_ax.legend(ncols=3, fontsize=SMALL, loc="lower right", bbox_to_anchor=(1, 1.12), frameon=False)
    low, high = activation_range
    fits, overflows = "#8fb0d8", "#c44e52"
    for y, name in enumerate(names):
        _, _, _, smallest, largest = FLOAT_FORMATS[name]
        range_ax.barh(y, largest - smallest, left=smallest, color=overflows if high > largest else fits)
        range_ax.text(largest, y, f" max {largest:.3g}", va="center", fontsize=SMALL)
    shade = range_ax.axvspan(low, high, color="#f0b400", alpha=0.45)
    range_ax.set_xscale("log")
    range_ax.set_xlim(1e-40, 1e45)
    range_ax.xaxis.set_major_locator(LogLocator(base=1e10))  # a tick every ten decades: 1e-40, 1e-30...
    range_ax.set_yticks(range(len(names)), names)
    range_ax.invert_yaxis()
    range_ax.set_xlabel("|value| (log scale): smallest normal to largest finite", fontsize=12)
    for ax in (bits_ax, range_ax):
        ax.tick_params(labelsize=SMALL)
        ax.tick_params(axis="y", labelsize=BIG)
    measured = f"measured activations{' of ' + label(model_name) if model_name else ''}: {low:.3g} to {high:.3g}"
    fig.legend([shade, Patch(color=fits), Patch(color=overflows)],
               [measured, "the format holds them", "the format overflows (inf)"],
               fontsize=SMALL, loc="outside lower center", ncols=2, frameon=False)
    return fig


def float_formats_png(activation_range: tuple[float, float], model_name: str = "") -> bytes:
    """:func:`float_formats_figure` as PNG bytes."""
    return small_png(float_formats_figure(activation_range, model_name))


def residual_peaks_figure(peaks: Sequence[float], limit: float, title: str) -> Any:
    """The largest ``|activation|`` after each decoder layer, red where it passes ``limit`` (float16's
    largest value), with the limit drawn across."""
    from matplotlib.patches import Patch  # matplotlib loads with the figure (see gemma_widgets.figures)
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter  # with the figure, as above

    fig = new_figure(10.0, 4.5)
    ax = fig.add_subplot()
    over = [p > limit for p in peaks]
    ax.bar(range(len(peaks)), peaks, color=[_RED if o else COLOR for o in over])
    line = ax.axhline(limit, color="black", linestyle="--")
    ax.legend([Patch(color=COLOR), Patch(color=_RED), line],
              ["within float16", f"past float16: {sum(over)} of {len(peaks)} layers", f"float16 max ({limit:,.0f})"],
              fontsize=SMALL, loc="upper left")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel("decoder layer", fontsize=BIG)
    ax.set_ylabel("max |activation|", fontsize=BIG)
    ax.set_title(label(title), fontsize=BIG + 1)
    style(ax)
    return fig


def residual_peaks_png(peaks: Sequence[float], limit: float, title: str) -> bytes:
    """:func:`residual_peaks_figure` as PNG bytes."""
    return small_png(residual_peaks_figure(peaks, limit, title))


def error_vs_bits_figure(points: Mapping[str, tuple[float, float]], title: str = "Quantization: error against size",
                         ylabel: str = "relative error of the weights") -> Any:
    """One marker per scheme, ``{name: (bits per weight, error)}``, named in a legend (4-bit schemes sit
    close together): on the left every scheme with the error on a log scale, on the right the schemes
    under 6 bits per weight, zoomed in."""
    import matplotlib  # loaded with the figure, not at import (see gemma_widgets.figures)

    fig = new_figure(11.0, 5.0)
    fig.suptitle(label(title), fontsize=BIG + 2)
    overview, zoom = fig.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"]
    markers = "osD^vP*Xhp<>"
    for ax, subset in ((overview, points), (zoom, {n: p for n, p in points.items() if p[0] < 6})):
        for i, (name, (bits, error)) in enumerate(points.items()):
            if name in subset:
                ax.scatter([bits], [error], s=110, color=colours(i % 10), marker=markers[i % len(markers)],
                           zorder=3, label=label(name) if ax is overview else None)
        ax.set_xlabel("bits per weight (scales included)", fontsize=BIG)
        style(ax)
        ax.grid(True, alpha=0.3)
    if points and all(error > 0 for _, error in points.values()):
        overview.set_yscale("log")
    overview.set_ylabel(label(ylabel), fontsize=BIG)
    overview.set_title("every scheme", fontsize=BIG)
    zoom.set_title("under 6 bits, zoomed in", fontsize=BIG)
    if points:
        fig.legend(fontsize=SMALL, loc="outside right center", frameon=False)
    return fig


def error_vs_bits_png(points: Mapping[str, tuple[float, float]], title: str = "Quantization: error against size",
                      ylabel: str = "relative error of the weights") -> bytes:
    """:func:`error_vs_bits_figure` as PNG bytes."""
    return small_png(error_vs_bits_figure(points, title, ylabel))


def compile_figure(tokens_per_second: Mapping[str, Sequence[float]], warmup_s: Mapping[str, float]) -> Any:
    """Two panels side by side: each variant's decode speed (a bar at the median, a dot per timed
    repeat: the spread) and its first (warm-up) call's seconds."""
    fig = new_figure(11.0, 4.8)
    speed_ax, warmup_ax = fig.subplots(1, 2)
    names = [label(n) for n in tokens_per_second]
    medians = [statistics.median(v) if v else 0.0 for v in tokens_per_second.values()]
    bars = speed_ax.bar(names, medians, color=COLOR, alpha=0.75, label="median")
    for x, repeats in enumerate(tokens_per_second.values()):
        speed_ax.scatter([x] * len(repeats), repeats, color="black", s=30, zorder=3,
                         label="one timed repeat" if x == 0 else None)
    speed_ax.bar_label(bars, fmt="%.1f", fontsize=SMALL, label_type="center", color="white")
    if tokens_per_second:
        fig.legend(*speed_ax.get_legend_handles_labels(), fontsize=SMALL, loc="outside lower left", ncols=2,
                   frameon=False)
    speed_ax.set_title("decode speed: median and each repeat", fontsize=BIG + 1)
    speed_ax.set_ylabel("tokens/s", fontsize=BIG)
    bars = warmup_ax.bar([label(n) for n in warmup_s], list(warmup_s.values()), color="#dd8452")
    warmup_ax.bar_label(bars, fmt="%.1f", fontsize=SMALL, padding=2)
    warmup_ax.margins(y=0.15)
    warmup_ax.set_title("first call (warm-up)", fontsize=BIG + 1)
    warmup_ax.set_ylabel("seconds", fontsize=BIG)
    for ax in (speed_ax, warmup_ax):
        style(ax)
    return fig


def compile_png(tokens_per_second: Mapping[str, Sequence[float]], warmup_s: Mapping[str, float]) -> bytes:
    """:func:`compile_figure` as PNG bytes."""
    return small_png(compile_figure(tokens_per_second, warmup_s))


def timeline_figure(arrivals_s: Sequence[float], sizes: Sequence[int], first_s: float | None = None,
                    unit: str = "characters") -> Any:
    """A streaming reply over time: each piece's arrival (seconds since send) against the reply's size
    then, with the first piece marked."""
    fig = new_figure(9.5, 4.5)
    ax = fig.add_subplot()
    ax.set_title("A reply streaming in", fontsize=BIG + 2)
    if arrivals_s:
        ax.step([0.0, *arrivals_s], [0, *sizes], where="post", color=COLOR)
        ax.scatter(arrivals_s, sizes, s=30, color=COLOR, zorder=3, label="a piece arrives")
        first = arrivals_s[0] if first_s is None else first_s
        ax.axvline(first, color=_RED, linestyle="--", label=f"first text {first:.2f} s")
        ax.legend(fontsize=SMALL, loc="upper left")
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since send", fontsize=BIG)
    ax.set_ylabel(f"reply so far ({unit})", fontsize=BIG)
    style(ax)
    ax.grid(True, alpha=0.3)
    return fig


def timeline_png(arrivals_s: Sequence[float], sizes: Sequence[int], first_s: float | None = None,
                 unit: str = "characters") -> bytes:
    """:func:`timeline_figure` as PNG bytes."""
    return small_png(timeline_figure(arrivals_s, sizes, first_s, unit))


def cache_layers_figure(layouts: Mapping[str, Sequence[tuple[int, bool]]]) -> Any:
    """One panel per model: the KV slots each layer of its static cache holds, sliding-window layers
    coloured apart from global ones, and hatched above each sliding layer the slots it would hold if
    it kept every position like a global layer (what the window saves).

    ``layouts`` maps a panel's title to its layers' ``(slots, is_sliding)``, in layer order; from a
    real cache, ``[(layer.keys.shape[2], layer.is_sliding) for layer in cache.layers]``.
    """
    from matplotlib.ticker import MaxNLocator  # matplotlib loads with the figure (see gemma_widgets.figures)

    fig = new_figure(11.0, 4.8)
    fig.suptitle("Static cache: KV slots per layer", fontsize=BIG + 2)
    colours = {True: "#dd8452", False: COLOR}
    for ax, (name, layers) in zip(fig.subplots(1, max(len(layouts), 1), squeeze=False).flat,
                                  layouts.items() or {"no model": []}.items(), strict=True):
        if not layers:
            empty(ax, label(name))
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
        ax.set_title(label(f"{name}\nthe window saves {saved:.0%}"), fontsize=BIG)
        ax.set_xlabel("layer", fontsize=BIG)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("KV slots", fontsize=BIG)
        style(ax)
        ax.legend(fontsize=SMALL, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return fig


def cache_layers_png(layouts: Mapping[str, Sequence[tuple[int, bool]]]) -> bytes:
    """:func:`cache_layers_figure` as PNG bytes."""
    return small_png(cache_layers_figure(layouts))


def arena_figure(result: ArenaResult) -> Any:
    """Where the challenger parts from the reference, in two panels over the reply's tokens: above, how
    likely the reference found each token the challenger wrote; below, KL(reference || challenger) at
    each token of the reference's reply. A dashed line marks where they part."""
    fig = new_figure(10.0, 6.5)
    fig.suptitle(label(f"{result.challenger} against {result.reference}"), fontsize=BIG + 1)
    if result.reference_probs is None and result.kl is None:
        ax = fig.add_subplot()
        reasons = "; ".join(sorted(set(result.unavailable.values()))) or "no logits"
        empty(ax, "", f"no figures: {reasons}")
        return fig
    probs_ax, kl_ax = fig.subplots(2, 1)
    probs_title = "the reference's probability of each token the challenger wrote"
    kl_title = "KL(reference || challenger) at each token of the reference's reply"
    if result.reference_probs is not None:
        probs_ax.bar(range(1, len(result.reference_probs) + 1), result.reference_probs, color=COLOR)
        probs_ax.set_ylim(0, 1.05)
        probs_ax.set_title(probs_title, fontsize=BIG)
        probs_ax.set_ylabel("probability", fontsize=BIG)
    else:
        empty(probs_ax, probs_title, result.unavailable.get("reference_probs", "no logits"))
    if result.kl is not None:
        kl_ax.plot(range(1, len(result.kl) + 1), result.kl, color="#dd8452", marker="o")
        kl_ax.set_ylim(bottom=0)
        kl_ax.set_title(kl_title, fontsize=BIG)
        kl_ax.set_ylabel("KL (nats)", fontsize=BIG)
    else:
        empty(kl_ax, kl_title, result.unavailable.get("kl", "no logits"))
    drawn = [ax for ax in (probs_ax, kl_ax) if ax.axison]  # an empty panel says why, with no axes
    length = max(len(result.reference_probs or ()), len(result.kl or ()))
    for ax in drawn:
        ax.set_xlim(0.3, length + 0.7)  # the same tokens under each other
        ax.set_xlabel("token of the reply", fontsize=SMALL)
        style(ax)
        if result.divergence is not None:
            ax.axvline(result.divergence + 1, color=_RED, linestyle="--",
                       label=f"they part at token {result.divergence + 1}")
    if result.divergence is not None:
        fig.legend(*drawn[0].get_legend_handles_labels(), fontsize=SMALL, loc="outside lower center", frameon=False)
    return fig


def arena_png(result: ArenaResult) -> bytes:
    """:func:`arena_figure` as PNG bytes."""
    return small_png(arena_figure(result))
