"""Every course picture and dashboard chart, drawn from representative figures, is readable on a
projector: wide enough, and no text under 10 points."""

from __future__ import annotations

import io

import pytest
from matplotlib.text import Text
from PIL import Image

from gemma_widgets.bench import Result, charts
from gemma_widgets.course import pictures
from gemma_widgets.divergence import ArenaResult
from gemma_widgets.figures import to_png
from gemma_widgets.host.hardware import Machine

MIN_POINTS = 10
MACHINE = Machine("Test CPU", 2, 2, 24.0, "", "Linux", "3.11", {"torch": "2.13.0"})


def _result(variant: str, tps: float, weights: float, rss: float, ppl: float, agree: float, gate: str) -> Result:
    return Result("bundled", variant, engine="transformers", new_tokens=24, repeats=2, load_s=5.0,
                  weights_mb=weights, peak_rss_mb=rss, rss_mb=rss, ttft_ms=1500 / tps, decode_tps=tps,
                  decode_tps_p10=tps * 0.97, decode_tps_p90=tps * 1.03, perplexity=ppl, top1_agreement=agree,
                  gate=gate, reference="bf16", machine=MACHINE)


#: Notebook 07's stored run (bundled model, 2-core CPU), plus llama.cpp's row: seven variants.
RESULTS = [_result("bf16", 19.5, 511, 1338, 32.0, 1.0, "passed"),
           _result("bnb-int8", 11.5, 416, 1474, 33.2, 0.919, "passed"),
           _result("bnb-nf4", 21.9, 368, 1431, 40.1, 0.746, "marked"),
           _result("ov-int8", 63.3, 257, 1395, 32.4, 0.941, "passed"),
           _result("ov-int4", 69.7, 213, 1363, 50.9, 0.659, "marked"),
           _result("gguf-q4_k_m", 45.0, 253, 1290, 35.1, 0.86, "passed"),
           Result("bundled", "fp16", status="unavailable", error="overflows float16", machine=MACHINE)]

ARENA = ArenaResult(
    prompt="Explain what a lighthouse does.", reference="bf16 (transformers)", challenger="ov-int4 (openvino)",
    reference_text="A lighthouse guides ships.", challenger_text="A lighthouse warns ships.",
    reference_ids=tuple(range(24)), challenger_ids=(*range(9), 99, *range(10, 24)), divergence=9,
    reference_tps=19.5, challenger_tps=69.7, agreement=0.66,
    kl=tuple(0.05 * (i % 5) + (0.9 if i == 9 else 0.0) for i in range(24)),
    reference_probs=tuple(0.9 - 0.03 * (i % 7) - (0.7 if i == 9 else 0.0) for i in range(24)))

TOKENS = ["<bos>", "<start_of_turn>", "user", "\n", "What", "▁is", "▁the", "▁capital", "▁of", "▁France", "?",
          "<end_of_turn>", "\n", "<start_of_turn>", "model", "\n"]

#: (figure, smallest width in pixels): full-width pictures, and the dashboard's charts two to a row.
FIGURES = {
    "chat tokens": (lambda: pictures.chat_tokens_figure(TOKENS, [t.startswith("<") for t in TOKENS]), 900),
    "float formats": (lambda: pictures.float_formats_figure((12.5, 1.2e5), "bundled"), 900),
    "residual peaks": (lambda: pictures.residual_peaks_figure([900.0 * 1.4**i for i in range(18)], 65504.0,
                                                              "Residual stream peaks (bf16 run)"), 900),
    "error vs bits": (lambda: pictures.error_vs_bits_figure(
        {"int8 per row": (8.03, 0.008), "nf4, blocks of 64": (4.5, 0.09), "nf4 + double quant": (4.13, 0.091),
         "int4 g32 sym": (4.5, 0.1), "int4 g128 asym": (4.25, 0.12)}), 900),
    "compile": (lambda: pictures.compile_figure(
        {"eager-dynamic": [12.1, 11.8, 12.4], "eager-static": [11.0, 11.3, 10.9], "compiled": [13.5, 14.0, 12.9]},
        {"eager-dynamic": 0.6, "eager-static": 0.7, "compiled": 95.0}), 900),
    "timeline": (lambda: pictures.timeline_figure([0.3, 0.35, 0.41, 0.5], [2, 9, 15, 22], first_s=0.3), 900),
    "cache layers": (lambda: pictures.cache_layers_figure({"tiny-random-gemma2": [(16, True), (1024, False)],
                                                           "Gemma 2 9B": [(4096, True), (8192, False)] * 21}), 900),
    "arena": (lambda: pictures.arena_figure(ARENA), 900),
    "summary": (lambda: charts.summary_figure(RESULTS), 900),
    **{f"chart {name}": (lambda name=name: charts.chart_figures(RESULTS)[name], 600) for name in charts.CHARTS},
}


@pytest.mark.parametrize("name", FIGURES)
def test_each_picture_is_wide_enough_and_its_smallest_text_is_ten_points(name):
    build, min_width = FIGURES[name]
    fig = build()
    width, _ = Image.open(io.BytesIO(to_png(fig))).size  # saving draws every tick label too
    assert width >= min_width
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < MIN_POINTS]
    assert not small, f"{name}: text under {MIN_POINTS} pt: {small}"
