"""The precision/latency dashboard: a thin ipywidgets view over :mod:`gemma_widgets.bench`.

Choose a model and its variants (those that cannot run here are disabled, with the reason),
a prompt, new tokens and repeats; Run measures each variant in its own process in a
background thread, with a progress bar per variant and a Cancel button; each result shows up
as its variant finishes: the table, four charts (PNG images), the outputs side by side and a
recommendation. Export writes CSV, JSON or PNG; Load shows a saved results file without
measuring anything (a GPU run, say, on a laptop). The view shows the first :data:`MAX_ROWS` rows
and says so, and a row whose figures cannot be drawn (:func:`gemma_widgets.bench.charts.problem`) is
named in the notice and left out of the charts and the recommendation.

Everything the buttons do has a Python call, for tests and notebooks:

>>> dash = PrecisionDashboard(variants=["fp32", "bf16"], new_tokens=16, repeats=2)  # doctest: +SKIP
>>> dash                                # the widget                                 # doctest: +SKIP
>>> dash.run(); dash.wait(600)          # or click Run                               # doctest: +SKIP
True
>>> dash.results[0].decode_tps          # doctest: +SKIP
>>> dash.export("results.csv"); PrecisionDashboard(results="results.csv")           # doctest: +SKIP

CSS classes for browser tests: ``gw-dashboard`` (the whole view), ``gw-run`` (the Run button),
``gw-cancel``, ``gw-results-table`` (the table), ``gw-plot`` (each chart image),
``gw-outputs``, ``gw-recommendation``, ``gw-notice`` (rows not shown or not drawn).
:meth:`PrecisionDashboard.snapshot` is the view as it looks, for a stored notebook
(:mod:`gemma_widgets.widgets.display`).
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w

from gemma_widgets import bench
from gemma_widgets.bench import COLUMNS, DEFAULT_PROMPT, Progress, Result, charts, table_rows
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.presets import PRESETS, resolve_preset
from gemma_widgets.widgets._view import View
from gemma_widgets.widgets.display import html_snapshot, png_snapshot

#: Rows the view shows (table, charts, outputs): drawing takes about a second per 30 rows, and a file of
#: 600 blocked the kernel for 22 s. The results, export included, keep every row.
MAX_ROWS = 24
TITLE = "<h3>Precision dashboard</h3>"


class PrecisionDashboard(View):
    """Measure one prompt across precisions and compare speed, memory and quality.

    Args:
        model: preset, hub id or folder (default ``$GEMMA_MODEL`` or ``bundled``).
        variants: the variants ticked at start (default: every one that can run here); names
            outside the registry, such as ``"bf16+compile"``, get a box of their own.
        prompt, new_tokens, repeats, rounds: the scenario's starting values (see
            :func:`~gemma_widgets.bench.run`).
        results: a list of :class:`~gemma_widgets.bench.Result` or a saved results file to show.
    """

    def __init__(self, model: str | None = None, variants: Sequence[str] | None = None, *,
                 prompt: str = DEFAULT_PROMPT, new_tokens: int = 32, repeats: int = 3, rounds: int = 1,
                 results: Sequence[Result] | str | os.PathLike | None = None):
        self._results: list[Result] = []
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._extra = [v for v in variants or ()]
        self._wanted = set(variants) if variants else None
        self._bars: dict[str, w.FloatProgress] = {}
        self._stages: dict[str, w.Label] = {}

        self.model = w.Combobox(value=resolve_preset(model).name, options=list(PRESETS),
                                description="Model", ensure_option=False,
                                continuous_update=False)
        self.variant_box = w.VBox(layout=w.Layout(margin="0 0 0 90px"))
        self.prompt = w.Textarea(value=prompt, description="Prompt", layout=w.Layout(width="95%"))
        self.new_tokens = w.BoundedIntText(value=new_tokens, min=2, max=2048, description="New tokens")
        self.repeats = w.BoundedIntText(value=repeats, min=1, max=50, description="Repeats")
        self.rounds = w.BoundedIntText(value=rounds, min=1, max=20, description="Rounds",
                                       tooltip="interleaved rounds: every variant again, round after round")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True)
        self.status = w.HTML()
        self.notice = w.HTML()
        self.progress = w.VBox()
        self.table = w.HTML()
        self.images = {name: w.Image(format="png", layout=w.Layout(width="48%"))
                       for name in charts.CHARTS}
        self.outputs = w.HTML()
        self.recommendation = w.HTML()
        self.path = w.Text(value="precision_results.csv", description="File")
        self.export_buttons = [w.Button(description=f"Export {kind}", icon="download")
                               for kind in ("CSV", "JSON", "PNG")]
        self.load_button = w.Button(description="Load", icon="upload")

        self.run_button.add_class("gw-run")
        self.cancel_button.add_class("gw-cancel")
        self.table.add_class("gw-results-table")
        self.outputs.add_class("gw-outputs")
        self.recommendation.add_class("gw-recommendation")
        self.notice.add_class("gw-notice")
        for image in self.images.values():
            image.add_class("gw-plot")

        self.run_button.on_click(lambda _: self._ui(self.run))
        self.cancel_button.on_click(lambda _: self.cancel())
        for button, suffix in zip(self.export_buttons, (".csv", ".json", ".png"), strict=True):
            button.on_click(lambda _, s=suffix: self._ui(self.export, self._path_with(s)))
        self.load_button.on_click(lambda _: self._ui(self.load, self.path.value))
        self.model.observe(lambda _: self._ui(self._refresh_variants), names="value")

        self.widget = w.VBox([
            w.HTML(TITLE),
            self.model, w.Label("Variants:"), self.variant_box, self.prompt,
            w.HBox([self.new_tokens, self.repeats, self.rounds]),
            w.HBox([self.run_button, self.cancel_button]), self.status, self.progress,
            self.notice, self.table, w.HBox(list(self.images.values()), layout=w.Layout(flex_flow="row wrap")),
            self.recommendation, self.outputs,
            w.HBox([self.path, *self.export_buttons, self.load_button]),
        ])
        self.widget.add_class("gw-dashboard")
        self._refresh_variants()
        if results is not None:
            if isinstance(results, (str, os.PathLike)):
                self.load(results)
            else:
                self.show(results)

    # -- the Python API ------------------------------------------------------------------------

    @property
    def results(self) -> list[Result]:
        """The results shown: those measured so far, or those loaded."""
        return list(self._results)

    @property
    def selected(self) -> list[str]:
        """The ticked variants."""
        return [box.description for box in self._boxes() if box.value and not box.disabled]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        """Start measuring the ticked variants in a background thread (see :meth:`wait`)."""
        if self.running:
            raise GemmaWidgetsError("A run is already going: cancel it or wait for it first.")
        variants = self.selected
        if not variants:
            raise GemmaWidgetsError("Tick at least one variant that can run here.")
        self._cancel.clear()
        self._results = []
        self.show([])
        reference = bench.default_reference(variants)
        order = [reference] + [v for v in variants if v != reference]
        self._bars = {v: w.FloatProgress(value=0, min=0, max=1, description=v) for v in order}
        self._stages = {v: w.Label("waiting") for v in order}
        self.progress.children = [w.HBox([self._bars[v], self._stages[v]]) for v in order]
        self.run_button.disabled, self.cancel_button.disabled = True, False
        self.status.value = f"Measuring {len(order)} variant(s), each in a fresh process..."
        settings = dict(model=self.model.value, variants=order, prompt=self.prompt.value,
                        new_tokens=self.new_tokens.value, repeats=self.repeats.value, rounds=self.rounds.value,
                        reference=reference)
        self._thread = threading.Thread(target=self._work, kwargs=settings, daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop the run; the variant being measured is reported as cancelled."""
        self._cancel.set()
        self.status.value = "Cancelling..."

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def show(self, results: Sequence[Result]) -> None:
        """Show ``results`` (table, charts, outputs, recommendation) without measuring: the first
        :data:`MAX_ROWS`, the figures that cannot be drawn named in the notice."""
        self._results = list(results)
        shown = self._results[:MAX_ROWS]
        self.table.value = results_table_html(shown)
        for name, png in charts.charts(shown).items():
            self.images[name].value = png
        self.outputs.value = outputs_html(shown)
        drawable = [r for r in shown if charts.problem(r) is None]
        self.recommendation.value = (f"<b>Recommendation:</b> {html.escape(bench.recommend(drawable))}"
                                     if drawable else "")
        self.notice.value = notice_html(self._results)

    def load(self, path: str | os.PathLike) -> list[Result]:
        """Show a results file saved by :func:`gemma_widgets.bench.runner.save` (CSV or JSON)."""
        results = bench.load(path)
        self.show(results)
        self.status.value = f"Showing {len(results)} result(s) from {html.escape(str(path))}."
        return results

    def export(self, path: str | os.PathLike) -> Path:
        """Save the results shown: ``.csv`` or ``.json`` (the records) or ``.png`` (the charts)."""
        if not self._results:
            raise GemmaWidgetsError("Nothing to export yet: run the dashboard or load a results file.")
        path = Path(path)
        if path.suffix == ".png":  # the charts as shown
            saved = charts.save_png(self._results[:MAX_ROWS], path)
        else:
            saved = bench.save(self._results, path)
        self.status.value = f"Saved {html.escape(str(saved))}."
        return saved

    def snapshot(self) -> list[dict[str, Any]]:
        """The dashboard as it looks now, for a file: status, notice and table; the charts as one PNG;
        the recommendation and the outputs side by side."""
        shown = self._results[:MAX_ROWS]
        top = "\n".join(f"<div>{part}</div>" for part in (self.status.value, self.notice.value, self.table.value))
        outputs = [html_snapshot(self, "gw-dashboard", "", f"{TITLE}\n{top}")]
        if shown:
            outputs += [png_snapshot(charts.summary_png(shown), "the dashboard's charts"),
                        html_snapshot(self, "gw-dashboard", "", f"{self.recommendation.value}\n{self.outputs.value}",
                                      note=False)]
        return outputs

    # -- the view ------------------------------------------------------------------------------

    def _boxes(self) -> list[w.Checkbox]:
        return [row.children[0] for row in self.variant_box.children]

    def _refresh_variants(self) -> None:
        choices = bench.variant_choices(self.model.value)
        for name in self._extra:
            choices.setdefault(name, None)
        rows = []
        for name, reason in choices.items():
            ticked = reason is None and (self._wanted is None or name in self._wanted)
            box = w.Checkbox(value=ticked, description=name, disabled=reason is not None, indent=False,
                             layout=w.Layout(width="160px"))
            note = w.HTML(f"<span style='color:#888'>{html.escape(reason)}</span>" if reason else "")
            rows.append(w.HBox([box, note]))
        self.variant_box.children = rows

    def _path_with(self, suffix: str) -> Path:
        return Path(self.path.value or "precision_results").with_suffix(suffix)

    def _show_notice(self, text: str) -> None:
        """A problem with a button's action goes to the status line, in red."""
        self.status.value = f"<span style='color:#b00'>{html.escape(text)}</span>" if text else ""

    def _on_progress(self, p: Progress) -> None:
        if p.variant in self._bars:
            self._bars[p.variant].value = p.fraction
            self._stages[p.variant].value = p.stage

    def _on_result(self, result: Result) -> None:
        if result.variant in self._stages:
            self._stages[result.variant].value = ("done" if result.ok else
                                                  f"{result.status}: {result.error}"[:200])
            self._bars[result.variant].bar_style = "success" if result.ok else "danger"
        self.show(self._results + [result])

    def _work(self, **settings: Any) -> None:
        try:
            results = bench.run(cancel=self._cancel, on_progress=self._on_progress,
                                on_result=self._on_result, **settings)
            self.show(results)  # the noise floor of the whole run, and each row's comparison with it
            ended = "Cancelled" if self._cancel.is_set() else "Finished"
            self.status.value = f"{ended}: {sum(r.ok for r in results)} of {len(settings['variants'])} " \
                                "variant(s) measured."
        except Exception as exc:  # the thread must report, never die silently
            message = html.escape(f"{type(exc).__name__}: {exc}")
            self.status.value = f"<span style='color:#b00'>{message}</span>"
        finally:
            self.run_button.disabled, self.cancel_button.disabled = False, True


def results_table_html(results: Sequence[Result]) -> str:
    """The results as an HTML table, with the text table's columns (every string escaped)."""
    if not results:
        return ""
    header = "".join(f"<th>{html.escape(c.header)}</th>" for c in COLUMNS)
    rows = []
    for row in table_rows(results):
        if len(row) == len(COLUMNS):
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        else:
            rows.append(f"<tr><td>{html.escape(row[0])}</td><td>{html.escape(row[1])}</td>"
                        f"<td colspan='{len(COLUMNS) - 2}' style='color:#b00'>{html.escape(row[2])}</td></tr>")
    return (f"<table class='gw-table'><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def notice_html(results: Sequence[Result]) -> str:
    """What the view leaves out: the rows past :data:`MAX_ROWS`, and each shown row it cannot draw, and why."""
    lines = []
    if len(results) > MAX_ROWS:
        lines.append(f"Showing the first {MAX_ROWS} of {len(results)} rows (the results and an export keep "
                     "them all).")
    for r in results[:MAX_ROWS]:
        why = charts.problem(r)
        if why:
            lines.append(f"{r.variant}: {why}: left out of the charts and the recommendation.")
    return "<br>".join(f"<span style='color:#b00'>{html.escape(line)}</span>" for line in lines)


def outputs_html(results: Sequence[Result]) -> str:
    """Each finished variant's generated text, side by side (escaped: model output is untrusted)."""
    done = [r for r in results if r.ok]
    if not done:
        return ""
    columns = "".join(
        f"<div style='flex:1;min-width:180px;border:1px solid #ddd;padding:4px'>"
        f"<b>{html.escape(r.variant)}</b>"
        + (f"<div class='gw-recipe' style='font-size:85%;color:#666'>{html.escape(r.recipe)}</div>" if r.recipe else "")
        + f"<pre style='white-space:pre-wrap'>{html.escape(r.text)}</pre></div>"
        for r in done
    )
    return f"<div style='display:flex;gap:6px;flex-wrap:wrap'>{columns}</div>"
