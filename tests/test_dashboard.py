"""The PrecisionDashboard view and its charts, driven through their Python API."""

from __future__ import annotations

import base64
import dataclasses
import io
import subprocess
import sys
import threading

import pytest

from gemma_widgets import bench
from gemma_widgets.bench import Result, charts
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.hardware import Machine

PNG = b"\x89PNG\r\n\x1a\n"
MACHINE = Machine("Test CPU", 2, 2, 24.0, "", "Linux", "3.11", {"torch": "2.13.0"})
#: The model the views are made for: the bundled one would convert its GGUF to list its precisions.
TINY = "tiny-random-gemma2"


def _results() -> list[Result]:
    def ok(variant, tps, rss, ppl, agree, text):
        return Result("bundled", variant, engine="transformers", new_tokens=32, repeats=3, load_s=2.0,
                      weights_mb=rss / 2, peak_rss_mb=rss, rss_mb=rss, ttft_ms=1000 / tps,
                      ttft_ms_p10=900 / tps, ttft_ms_p90=1100 / tps, decode_tps=tps,
                      decode_tps_p10=tps * 0.98, decode_tps_p90=tps * 1.02, perplexity=ppl,
                      top1_agreement=agree, reference="fp32", text=text, machine=MACHINE)

    return [ok("fp32", 9.0, 1900, 12.0, 1.0, "The beam <b>sweeps</b> & turns."),
            ok("bf16", 18.0, 1100, 12.1, 0.96, "The beam sweeps."),
            Result("bundled", "bnb-nf4", status="unavailable", error="needs <CUDA>", machine=MACHINE)]


def _is_png(data) -> bool:
    from matplotlib.image import imread

    data = bytes(data)
    return data.startswith(PNG) and imread(io.BytesIO(data), format="png").ndim == 3


def test_importing_the_package_does_not_import_ipywidgets():
    code = ("import sys, gemma_widgets; assert 'ipywidgets' not in sys.modules; "
            "import gemma_widgets.bench, gemma_widgets.bench.charts; assert 'ipywidgets' not in sys.modules; "
            "assert gemma_widgets.PrecisionDashboard.__name__ == 'PrecisionDashboard'; "
            "assert 'ipywidgets' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_charts_are_valid_png_images_even_before_any_result():
    for results in ([], _results()):
        pngs = charts.charts(results)
        assert list(pngs) == ["speed", "ttft", "memory", "tradeoff"]
        assert all(_is_png(png) for png in pngs.values())
    assert _is_png(charts.summary_png(_results()))


def test_a_saved_results_file_is_shown_without_measuring(tmp_path):
    from gemma_widgets import PrecisionDashboard

    path = bench.save(_results(), tmp_path / "gpu_run.json")
    dash = PrecisionDashboard(TINY, results=path)
    assert dash.results == _results()
    table = dash.table.value
    assert "<td>fp32</td>" in table and "<td>18.0</td>" in table and "96.0%" in table
    assert "unavailable: needs &lt;CUDA&gt;" in table
    assert all(_is_png(image.value) for image in dash.images.values())
    assert "&lt;b&gt;sweeps&lt;/b&gt; &amp; turns." in dash.outputs.value  # model text is escaped
    assert "<b>sweeps" not in dash.outputs.value
    assert "bf16 (18.0 tok/s" in dash.recommendation.value
    assert "gpu_run.json" in dash.status.value


def test_the_table_flags_speeds_within_noise_and_the_outputs_show_each_recipe():
    from gemma_widgets import PrecisionDashboard

    results = _results()
    results[0].recipe = "embedding fp32, output fp32; body: 126 fp32"
    results[1].recipe = "embedding <bf16>, output bf16; body: 126 bf16"  # text from a file: escaped
    for r in results:
        r.noise_floor = 0.25
    bench.compare_with_reference(results)
    dash = PrecisionDashboard(TINY, results=results)
    table = dash.table.value
    assert "<th>vs ref</th>" in table and "<td>ref</td>" in table
    assert "2.00x</td>" in table  # 18 against 9 tok/s: apart even with a 25% noise floor
    assert "4.0% (noise 25.0%)" in table
    results[1].decode_tps = results[1].decode_tps_p10 = results[1].decode_tps_p90 = 10.0
    bench.compare_with_reference(results)
    dash.show(results)
    assert "1.11x, within noise" in dash.table.value
    assert "class='gw-recipe'" in dash.outputs.value and "embedding &lt;bf16&gt;" in dash.outputs.value


def test_css_classes_for_the_browser_test():
    from gemma_widgets import PrecisionDashboard

    dash = PrecisionDashboard("tiny-random-gemma2")
    assert "gw-dashboard" in dash.widget._dom_classes
    assert "gw-run" in dash.run_button._dom_classes
    assert "gw-results-table" in dash.table._dom_classes
    assert all("gw-plot" in image._dom_classes for image in dash.images.values())


def test_the_snapshot_is_the_table_one_small_png_of_the_charts_and_the_outputs():
    """What a stored notebook shows: the view's own table and outputs (escaped), and the charts as an
    image/png output of their own (an untrusted JupyterLab drops data: images inside HTML)."""
    from gemma_widgets.widgets.dashboard import PrecisionDashboard

    assert [sorted(b) for b in PrecisionDashboard(TINY, results=[]).snapshot()] == [["text/html", "text/plain"]]
    dash = PrecisionDashboard(TINY, results=_results())
    top, picture, bottom = dash.snapshot()
    assert dash.table.value in top["text/html"] and "&lt;CUDA&gt;" in top["text/html"]
    png = base64.b64decode(picture["image/png"])
    assert _is_png(png) and len(png) < 100_000
    assert dash.recommendation.value in bottom["text/html"] and dash.outputs.value in bottom["text/html"]
    assert "&lt;b&gt;sweeps&lt;/b&gt;" in bottom["text/html"] and "<img" not in top["text/html"] + bottom["text/html"]


def test_unavailable_variants_are_disabled_with_their_reason(monkeypatch):
    from gemma_widgets import PrecisionDashboard

    monkeypatch.setattr(bench, "variant_choices",
                        lambda model: {"fp32": None, "bf16": None, "bnb-int8": "needs a CUDA GPU"})
    dash = PrecisionDashboard("tiny-random-gemma2", variants=["bf16", "bf16+compile"])
    rows = {row.children[0].description: row for row in dash.variant_box.children}
    assert list(rows) == ["fp32", "bf16", "bnb-int8", "bf16+compile"]
    assert rows["bnb-int8"].children[0].disabled and "needs a CUDA GPU" in rows["bnb-int8"].children[1].value
    assert not rows["fp32"].children[0].disabled
    assert dash.selected == ["bf16", "bf16+compile"]


def test_export_writes_csv_json_and_png(tmp_path):
    from gemma_widgets import PrecisionDashboard

    dash = PrecisionDashboard("tiny-random-gemma2")
    with pytest.raises(GemmaWidgetsError, match="Nothing to export"):
        dash.export(tmp_path / "empty.csv")
    dash.show(_results())
    dash.path.value = str(tmp_path / "out.csv")
    for button in dash.export_buttons:
        button.click()
    assert bench.load(tmp_path / "out.csv") == _results()
    assert bench.load(tmp_path / "out.json") == _results()
    assert _is_png((tmp_path / "out.png").read_bytes())
    dash.path.value = str(tmp_path / "missing.json")
    dash.load_button.click()
    assert "No results file" in dash.status.value  # a bad path is reported, not raised


def test_run_with_nothing_ticked_says_so():
    from gemma_widgets import PrecisionDashboard

    dash = PrecisionDashboard("tiny-random-gemma2", variants=["fp32"])
    dash.variant_box.children[0].children[0].value = False
    dash.run_button.click()
    assert "Tick at least one variant" in dash.status.value
    assert not dash.running


def test_cancel_from_the_widget_reaches_the_harness(monkeypatch):
    from gemma_widgets import PrecisionDashboard

    started = threading.Event()

    def fake_run(cancel, on_progress, on_result, variants, **settings):
        on_progress(bench.Progress(variants[0], 0, len(variants), "decode", 0.5))
        started.set()
        assert cancel.wait(30)
        result = Result("bundled", variants[0], status="cancelled", error="cancelled by the user")
        on_result(result)
        return [result]

    monkeypatch.setattr(bench, "run", fake_run)
    dash = PrecisionDashboard("tiny-random-gemma2", variants=["fp32", "bf16"])
    dash.run()
    assert started.wait(30) and dash.running
    assert dash.cancel_button.disabled is False and dash.run_button.disabled is True
    assert dash._bars["fp32"].value == 0.5 and dash._stages["fp32"].value == "decode"
    dash.cancel_button.click()
    assert dash.wait(30)
    assert dash.status.value.startswith("Cancelled: 0 of 2")
    assert [r.status for r in dash.results] == ["cancelled"]
    assert dash.run_button.disabled is False and dash.cancel_button.disabled is True


@pytest.mark.slow
def test_run_measures_the_tiny_model_through_the_python_api():
    from gemma_widgets import PrecisionDashboard

    dash = PrecisionDashboard("tiny-random-gemma2", variants=["bf16", "fp32"], new_tokens=4, repeats=1,
                              prompt="A lighthouse")
    dash.run()
    with pytest.raises(GemmaWidgetsError, match="already going"):
        dash.run()
    assert dash.wait(600), "the run did not finish"
    assert [r.variant for r in dash.results] == ["fp32", "bf16"]
    assert all(r.ok for r in dash.results), [r.error for r in dash.results]
    assert dash.status.value.startswith("Finished: 2 of 2")
    assert all(bar.value == 1.0 and bar.bar_style == "success" for bar in dash._bars.values())
    assert "<td>bf16</td>" in dash.table.value
    assert all(_is_png(image.value) for image in dash.images.values())
    assert "Recommendation" in dash.recommendation.value


@pytest.mark.parametrize("rows", [600, 3000])
def test_a_results_file_of_many_rows_shows_the_first_ones_and_says_so(tmp_path, rows):
    """The hostile test: 600 and 3,000 rows blocked the kernel for 22 s and 91 s, drawing every one."""
    from gemma_widgets import PrecisionDashboard

    fp32, bf16 = _results()[:2]
    many = [dataclasses.replace((fp32, bf16)[i % 2], variant=f"v{i}") for i in range(rows)]
    path = bench.save(many, tmp_path / "many.json")
    dash = PrecisionDashboard(TINY, results=path)
    shown = dash.table.value.count("<tr><td>")
    assert 0 < shown < rows and f"Showing the first {shown} of {rows} rows" in dash.notice.value
    assert "<td>v0</td>" in dash.table.value and f"<td>v{rows - 1}</td>" not in dash.table.value
    assert len(dash.results) == rows  # only the view is bounded: an export keeps every row
    assert all(_is_png(image.value) for image in dash.images.values())


def test_figures_that_cannot_be_drawn_are_reported_not_raised(tmp_path):
    """The hostile test: ``decode_tps: 1e308`` in a results file raised matplotlib's ValueError from the
    constructor. Such a row is named, with the figure, and left out of the charts and the recommendation."""
    from gemma_widgets import PrecisionDashboard

    results = _results()
    results[1].decode_tps = 1e308
    dash = PrecisionDashboard(TINY, results=bench.save(results, tmp_path / "bad.json"))
    assert "bf16: decode_tps = 1e+308 is not a figure from 0 to 1e+06 tok/s" in dash.notice.value
    assert "<td>bf16</td>" in dash.table.value and "bf16" not in dash.recommendation.value
    assert all(_is_png(image.value) for image in dash.images.values())

    for name, value in (("perplexity", float("nan")), ("peak_rss_mb", -5.0), ("top1_agreement", 1.5),
                        ("decode_tps_p10", 19.0)):  # above the median: a negative whisker
        odd = _results()
        setattr(odd[1], name, value)
        assert charts.problem(odd[1]) is not None and charts.problem(odd[0]) is None
        dash.show(odd)
        assert "bf16: " in dash.notice.value and "fp32" not in dash.notice.value
        assert _is_png(charts.summary_png(odd))
