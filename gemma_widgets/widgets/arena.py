"""The precision arena's view: one prompt, two columns streaming, and where the replies part.

A thin view over :class:`~gemma_widgets.arena.ArenaRun`. While the replies stream (the reference,
then the challenger) each column shows escaped plain text; when both are done each reply is
redrawn token by token as escaped spans, the challenger's shaded by how likely the reference
found each token, the first diverging token marked ``gw-diverge``, and a one-line summary below.
Stable CSS classes: ``gw-arena``, ``gw-arena-input``, ``gw-send``, ``gw-stop``, ``gw-arena-ref``,
``gw-arena-challenger``, ``gw-tok``, ``gw-diverge``, ``gw-arena-summary``, ``gw-notice``.
:meth:`PrecisionArena.snapshot` is the arena as it looks, for a stored notebook (:mod:`gemma_widgets.widgets.display`).

>>> arena = PrecisionArena(models=["bf16", "ov-int4"])   # doctest: +SKIP
>>> arena                                                 # doctest: +SKIP
>>> arena.compare("Name three colours.").summary()        # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets

from gemma_widgets import precisions
from gemma_widgets.arena import DEFAULT_SETTINGS, ArenaRun, label
from gemma_widgets.divergence import ArenaResult
from gemma_widgets.engines.base import IncrementalDecoder, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.loading import LoadedModel, load_model
from gemma_widgets.widgets._view import Throttle, View
from gemma_widgets.widgets.display import html_snapshot, with_class
from gemma_widgets.widgets.markdown import escape_text
from gemma_widgets.widgets.messages import STYLES

#: Styles that carry meaning sit inline in the replies' HTML (a stored snapshot keeps them where a
#: sanitizer drops the ``<style>`` block): the shading, the divergence mark, the columns.
COLUMN_STYLE = "flex: 1 1 0; min-width: 0; border: 1px solid rgba(128,128,128,.3); border-radius: 6px; " \
               "padding: 4px 8px; margin: 2px;"
DIVERGE_STYLE = "outline: 2px solid #c5221f; border-radius: 2px;"
SPECIAL_STYLE = "font-size: 75%; opacity: .6;"

CSS = f"""<style>
.gw-arena .gw-col {{ {COLUMN_STYLE} }}
.gw-arena .gw-notice {{ {STYLES["error"]} }}
</style>"""

LEGEND = ("Challenger tokens are shaded by how unlikely the reference found them (darker = less likely; hover "
          "for the figures); the red box is the first token where the replies part.")
LEGEND_HTML = f'<div class="gw-legend" style="font-size: 85%; opacity: .8;">{escape_text(LEGEND)}</div>'


def _load(models: Sequence[str | LoadedModel], model: str | None) -> list[LoadedModel]:
    """Two loaded models from ``models``: LoadedModels as they are, precision names loaded for ``model``.

    An OpenVINO precision loads on optimum-intel, whose one model both generates and gives logits
    (openvino-genai would read the IR a second time to score: too much for Binder's 2 GB).
    """
    if len(models) != 2:
        raise GemmaWidgetsError(f"The arena compares two models (a reference and a challenger), not {len(models)}.")
    loaded = []
    for item in models:
        if isinstance(item, LoadedModel):
            loaded.append(item)
        else:  # with the options under which its engine gives logits (OpenVINO: optimum-intel)
            name = str(item).strip().lower()
            options = precisions.PRECISIONS[name].with_logits if name in precisions.PRECISIONS else {}
            loaded.append(load_model(model, name, **options))
    return loaded


def _shade(p: float | None) -> str:
    return "" if p is None else f"background: rgba(220,50,47,{0.7 * (1 - p):.2f});"


def tokens_html(tokenizer: Any, ids: Sequence[int], divergence: int | None,
                probs: Sequence[float] | None = None, kl: Sequence[float] | None = None) -> str:
    """A reply as escaped token spans: shaded by ``probs`` if given, the ``divergence`` token marked.

    A token with no text of its own (end of turn) shows its name, small; a reply that ended where the
    other went on gets an "ended" mark at the divergence.
    """
    decoder = IncrementalDecoder(tokenizer)
    spans = []
    for j, token in enumerate(ids):
        piece = decoder.feed([token])
        p = probs[j] if probs is not None and j < len(probs) else None
        classes, style = "gw-tok", _shade(p)
        if j == divergence:
            classes, style = classes + " gw-diverge", style + DIVERGE_STYLE
        if not piece and token in getattr(tokenizer, "all_special_ids", ()):
            piece = tokenizer.convert_ids_to_tokens(int(token))
            classes, style = classes + " gw-special", style + SPECIAL_STYLE
        hover = [] if p is None else [f"reference p = {p:.3f}"]
        if kl is not None and j < len(kl) and (divergence is None or j <= divergence):
            hover.append(f"KL = {kl[j]:.4f}")
        title = f' title="{escape_text(" · ".join(hover))}"' if hover else ""
        spans.append(f'<span class="{classes}" style="{style}"{title}>{escape_text(piece)}</span>')
    if divergence is not None and divergence >= len(ids):
        spans.append(f'<span class="gw-tok gw-diverge gw-special" style="{DIVERGE_STYLE}{SPECIAL_STYLE}">'
                     "(ended)</span>")
    return "".join(spans)


def column_html(title: str, body: str) -> str:
    return (f'<div class="gw-who" style="{STYLES["who"]}">{escape_text(title)}</div>'
            f'<div class="gw-reply" style="white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.6;">'
            f'{body or "…"}</div>')


class PrecisionArena(View):
    """One prompt, two precisions side by side: ``PrecisionArena(models=["bf16", "ov-int4"])``.

    ``models`` holds two precision names for ``model`` (default ``$GEMMA_MODEL`` or ``bundled``) or
    two :class:`LoadedModel` s; the first is the reference. Both sides share ``settings`` (greedy
    by default). The Python API mirrors the view: :meth:`send`, :meth:`stop`, :meth:`wait`,
    :meth:`compare`, :attr:`result`.
    """

    def __init__(self, models: Sequence[str | LoadedModel] = ("bf16", "ov-int4"), *, model: str | None = None,
                 settings: SamplingSettings | None = None):
        self.reference, self.challenger = _load(models, model)
        self.settings = SamplingSettings(**vars(settings or DEFAULT_SETTINGS))
        self.run: ArenaRun | None = None
        self._lock = threading.RLock()
        self._paint = {side: Throttle() for side in ("reference", "challenger")}
        self._build()

    @property
    def result(self) -> ArenaResult | None:
        """The last finished comparison, if any."""
        return self.run.result if self.run is not None else None

    @property
    def busy(self) -> bool:
        return self.run is not None and not self.run.done

    # --- the view ---------------------------------------------------------------------------
    def _build(self) -> None:
        full = {"style": {"description_width": "initial"}}
        self.input = with_class(widgets.Text(placeholder="One prompt for both (Enter compares)",
                                             layout=widgets.Layout(flex="1 1 auto", width="auto")),
                                "gw-arena-input")
        self._on_enter(self.input, self._send_input)
        self.send_button = with_class(widgets.Button(description="Send", button_style="primary",
                                                     icon="paper-plane"), "gw-send")
        self.stop_button = with_class(widgets.Button(description="Stop", button_style="danger", icon="stop",
                                                     disabled=True), "gw-stop")
        self.temperature = with_class(widgets.FloatSlider(
            value=self.settings.temperature, min=0.0, max=2.0, step=0.05,
            description="temperature (0 = greedy)", **full), "gw-temperature")
        self.max_new_tokens = with_class(widgets.IntSlider(
            value=self.settings.max_new_tokens, min=1, max=max(512, int(self.settings.max_new_tokens)),
            description="max new tokens", **full),
            "gw-max-new-tokens")
        self.ref_column = with_class(widgets.HTML(column_html(self._title("reference"), "")),
                                     "gw-col", "gw-arena-ref")
        self.challenger_column = with_class(widgets.HTML(column_html(self._title("challenger"), "")),
                                            "gw-col", "gw-arena-challenger")
        self.summary = with_class(widgets.HTML(""), "gw-arena-summary")
        self.notice = with_class(widgets.HTML(""), "gw-notice")
        self.send_button.on_click(lambda _: self._ui(self._send_input))
        self.stop_button.on_click(lambda _: self.stop())
        self.temperature.observe(self._on_setting, "value")
        self.max_new_tokens.observe(self._on_setting, "value")
        self.widget = with_class(widgets.VBox([
            widgets.HTML(CSS),
            widgets.HBox([self.input, self.send_button, self.stop_button]),
            widgets.HBox([self.temperature, self.max_new_tokens]),
            widgets.HBox([self.ref_column, self.challenger_column]),
            self.summary,
            self.notice,
            widgets.HTML(LEGEND_HTML),
        ]), "gw-arena")

    def snapshot(self) -> list[dict[str, Any]]:
        """The arena as it looks now, for a file: the prompt, both columns side by side, summary, notice."""
        with self._lock:
            prompt = f"<div><b>Prompt:</b> {escape_text(self.run.prompt)}</div>" if self.run is not None else ""
            columns = "\n".join(f'<div class="gw-col gw-arena-{side}" style="{COLUMN_STYLE}">{column.value}</div>'
                                for side, column in (("ref", self.ref_column), ("challenger", self.challenger_column)))
            body = (f'{prompt}\n<div style="display: flex;">\n{columns}\n</div>\n'
                    f'<div class="gw-arena-summary">{self.summary.value}</div>\n'
                    f'<div class="gw-notice" style="{STYLES["error"]}">{self.notice.value}</div>\n{LEGEND_HTML}')
        return [html_snapshot(self, "gw-arena", CSS, body)]

    def _title(self, side: str) -> str:
        return f"{side}: {label(self.reference if side == 'reference' else self.challenger)}"

    def _column(self, side: str) -> widgets.HTML:
        return self.ref_column if side == "reference" else self.challenger_column

    def _set_busy(self, busy: bool) -> None:
        self.send_button.disabled = busy
        self.stop_button.disabled = not busy

    def _on_setting(self, _change: dict) -> None:
        self.settings.temperature = float(self.temperature.value)
        self.settings.max_new_tokens = int(self.max_new_tokens.value)

    # --- streaming callbacks (the run's thread) ---------------------------------------------------
    def _on_text(self, side: str, text: str) -> None:
        if self._paint[side].due():
            self._column(side).value = column_html(self._title(side), escape_text(text))

    def _on_finish(self, run: ArenaRun) -> None:
        with self._lock:
            for side in ("reference", "challenger"):  # the last piece may have come between repaints
                self._column(side).value = column_html(self._title(side), escape_text(run.texts[side]))
            if run.result is not None:
                self._show_result(run.result)
            elif run.error is not None:
                self._show_notice(f"{type(run.error).__name__}: {run.error}".rstrip(". ") +
                                  ". Nothing was compared; try again or change the settings.")
            elif run.stopped:
                self._show_notice("Stopped by the user: the replies so far are kept, not compared.")
            self._set_busy(False)

    def _show_result(self, result: ArenaResult) -> None:
        tokenizer = self.reference.tokenizer
        self.ref_column.value = column_html(self._title("reference"), tokens_html(
            tokenizer, result.reference_ids, result.divergence, kl=result.kl))
        self.challenger_column.value = column_html(self._title("challenger"), tokens_html(
            tokenizer, result.challenger_ids, result.divergence, result.reference_probs, result.kl))
        self.summary.value = escape_text(result.summary())

    # --- actions ----------------------------------------------------------------------------
    def send(self, prompt: str) -> ArenaRun:
        """Start comparing the replies to ``prompt`` (returns at once; :meth:`wait` for the end)."""
        with self._lock:
            if self.busy:
                raise GemmaWidgetsError("A comparison is still running: press Stop or wait for it.")
            try:
                run = ArenaRun(self.reference, self.challenger, prompt, self.settings,
                               on_text=self._on_text, on_finish=self._on_finish)
            except GemmaWidgetsError as exc:  # nothing started: the columns keep the last comparison
                self._show_notice(str(exc))
                raise
            self.notice.value = self.summary.value = ""
            for throttle in self._paint.values():
                throttle.reset()
            for side in ("reference", "challenger"):
                self._column(side).value = column_html(self._title(side), "")
            self._set_busy(True)
            self.run = run.start()  # its on_finish waits for this lock: the view is ready before it ends
            return run

    def _send_input(self) -> None:
        self.send(self.input.value)

    def stop(self) -> None:
        """Stop the reply that is streaming; the other side does not start and nothing is scored."""
        if self.run is not None:
            self.run.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the comparison has finished and the view shows it; False on timeout."""
        return self.run is None or self.run.wait(timeout)

    def compare(self, prompt: str) -> ArenaResult:
        """Compare as Send does, wait, and return the :class:`~gemma_widgets.divergence.ArenaResult`."""
        run = self.send(prompt)
        run.wait()
        if run.error is not None:
            raise run.error
        if run.result is None:
            raise GemmaWidgetsError("The comparison was stopped before both replies finished.")
        return run.result
