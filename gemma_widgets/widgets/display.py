"""How the kit's views show: live through ipywidgets 7 (Colab pins 7.7.1) or 8, and as a static snapshot.

Live: ipywidgets 8 widgets display through ``_repr_mimebundle_``, which 7 does not have; IPython's
``_ipython_display_`` hook exists beside both, so a view hands its top widget to ``display``. On 8
the output's metadata names the view (``{"gemma_widgets": {"view": "ChatPanel"}}``), so a tool can
tell a kit view from other widgets (a tqdm bar) in a saved notebook.

Static: a file cannot hold a live widget, and widget state in a file shows only where the widget
JavaScript can run. :meth:`WidgetView.snapshot` gives a view as it looks now as ordinary outputs:
HTML made of the view's own (escaped) rendering, with the styles that carry meaning inline (a
sanitizer, JupyterLab's for an untrusted notebook, drops ``<style>`` blocks), and PNG charts as
``image/png`` outputs of their own (it drops ``data:`` images too). ``tools/store_outputs.py``
calls :func:`publish_snapshots` after a notebook's last cell and stores them in place of the views; a
widget that is not the kit's is stored as its text (:func:`widget_text`).
"""

from __future__ import annotations

import base64
import html
import re
import weakref
from collections.abc import Iterable
from typing import Any

import ipywidgets
from IPython.display import display
from ipywidgets.widgets import widget as widget_module

from gemma_widgets.widgets.markdown import escape_text

#: The output-metadata key of the kit's views, live and stored as snapshots.
METADATA_KEY = "gemma_widgets"
SNAPSHOT_NOTE = "A snapshot from the stored run: run the notebook to use it."
#: Characters kept of another widget's text (a tqdm bar's line is under 200).
MAX_TEXT = 2000

_shown: weakref.WeakValueDictionary[str, WidgetView] = weakref.WeakValueDictionary()


class WidgetView:
    """A Python object that shows as its ``widget`` when it ends a cell or is passed to ``display``, and
    gives a :meth:`snapshot` of it for a stored notebook."""

    widget: Any

    def _ipython_display_(self) -> None:
        _shown[self.widget.model_id] = self
        display(self.widget, metadata={METADATA_KEY: {"view": type(self).__name__}})

    def snapshot(self) -> list[dict[str, Any]]:
        """The view as it looks now, as outputs (MIME bundles) a front end with no kernel can show."""
        raise NotImplementedError


def with_class(widget: Any, *names: str) -> Any:
    """``widget`` with the CSS classes ``names`` added (the stable hooks of tests and styles)."""
    for name in names:
        widget.add_class(name)
    return widget


def html_snapshot(view: WidgetView, css_class: str, css: str, body: str, note: bool = True) -> dict[str, str]:
    """One output of ``view``'s snapshot: ``body`` (the view's own HTML) in a ``css_class`` div, after the
    view's ``<style>`` block ``css``, opening with :data:`SNAPSHOT_NOTE` if ``note``."""
    caption = f'<div class="gw-snapshot-note" style="font-size: 85%; font-style: italic; opacity: .7;">' \
              f"{escape_text(SNAPSHOT_NOTE)}</div>" if note else ""
    lines = [css, f'<div class="{css_class} gw-snapshot">{caption}', body, "</div>"]  # diffable lines
    return {"text/html": "\n".join(line for line in lines if line),
            "text/plain": f"[{type(view).__name__}: {SNAPSHOT_NOTE}]"}


def png_snapshot(png: bytes, what: str) -> dict[str, str]:
    """One output of a snapshot: a PNG picture, described by ``what`` for text-only front ends."""
    return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"[{what}]"}


def widget_text(widget: Any) -> str:
    """A widget's text on one line: its children's in order, an HTML value without its tags, a progress
    bar drawn in blocks (so a tqdm bar reads as its terminal line), other widgets' string values."""
    if isinstance(widget, ipywidgets.Box):
        return "".join(widget_text(child) for child in widget.children)
    if isinstance(widget, (ipywidgets.FloatProgress, ipywidgets.IntProgress)):
        span = widget.max - widget.min
        filled = round(10 * (widget.value - widget.min) / span) if span else 10
        return f"|{'█' * filled}{' ' * (10 - filled)}|"
    value = getattr(widget, "value", None)
    if not isinstance(value, str):
        return ""
    return html.unescape(re.sub(r"<[^<>]*>", "", value)) if isinstance(widget, ipywidgets.HTML) else value  # linear


def snapshot_of(model_id: str) -> list[dict[str, Any]]:
    """What the widget ``model_id`` shows now: a kit view's :meth:`~WidgetView.snapshot`, another widget's
    :func:`widget_text`, or nothing for a closed widget (a live front end removes it too)."""
    view = _shown.get(model_id)
    if view is not None:
        return view.snapshot()
    instances = getattr(widget_module, "_instances", None)  # ipywidgets 8; 7 has Widget.widgets
    widget = (instances if instances is not None else widget_module.Widget.widgets).get(model_id)
    if widget is None:
        return []
    text = widget_text(widget)[:MAX_TEXT]
    return [{"text/html": f"<pre>{escape_text(text)}</pre>", "text/plain": text}]


def publish_snapshots(model_ids: Iterable[str]) -> None:
    """Display every widget's :func:`snapshot_of`, by model id, as one JSON output (``make outputs``)."""
    display({"application/json": {model_id: snapshot_of(model_id) for model_id in model_ids}}, raw=True)
