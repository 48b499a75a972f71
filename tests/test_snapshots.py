"""How a view shows live (tagged as the kit's) and how any shown widget becomes a snapshot for a file."""

from __future__ import annotations

import ipywidgets
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.display import display
from IPython.utils.capture import capture_output

from gemma_widgets.widgets import display as _display
from gemma_widgets.widgets.display import (
    METADATA_KEY,
    SNAPSHOT_NOTE,
    WidgetView,
    html_snapshot,
    snapshot_of,
    widget_text,
)

WIDGET = "application/vnd.jupyter.widget-view+json"


class Greeting(WidgetView):
    """The smallest view: one HTML widget whose snapshot is its value."""

    def __init__(self, text: str):
        self.widget = ipywidgets.HTML(text)

    def snapshot(self) -> list[dict]:
        return [html_snapshot(self, "gw-greeting", "<style>.gw-greeting { color: red; }</style>", self.widget.value)]


@pytest.fixture
def shown():
    """``display`` as in a kernel: what it publishes (``.outputs``, with metadata)."""
    InteractiveShell.instance()
    with capture_output() as captured:
        yield captured


def test_a_view_shows_its_widget_tagged_with_its_name(shown):
    view = Greeting("<b>hi</b>")
    display(view)
    (output,) = shown.outputs
    assert output.data[WIDGET]["model_id"] == view.widget.model_id
    ipywidgets_7 = ipywidgets.__version__.startswith("7.")  # Colab's: its widgets display themselves, untagged
    assert output.metadata == ({} if ipywidgets_7 else {METADATA_KEY: {"view": "Greeting"}})


def test_a_shown_view_snapshots_as_it_looks_at_the_end(shown):
    view = Greeting("<b>hi</b>")
    display(view)
    view.widget.value = "<b>bye</b>"
    (bundle,) = snapshot_of(view.widget.model_id)
    assert bundle["text/html"].startswith("<style>.gw-greeting") and "<b>bye</b>" in bundle["text/html"]
    assert 'class="gw-greeting gw-snapshot"' in bundle["text/html"] and SNAPSHOT_NOTE in bundle["text/html"]
    assert bundle["text/plain"] == f"[Greeting: {SNAPSHOT_NOTE}]"


def test_another_widget_snapshots_as_its_text_and_a_closed_one_as_nothing():
    """A tqdm bar (two HTML texts around a progress bar, escaped by tqdm) reads as its terminal line."""
    bar = ipywidgets.HBox([ipywidgets.HTML("bench: 100%"), ipywidgets.FloatProgress(value=3, max=3),
                           ipywidgets.HTML(" 3/3 [00:01&lt;00:00, <i>2.1it/s</i>]")])
    line = "bench: 100%|██████████| 3/3 [00:01<00:00, 2.1it/s]"
    assert widget_text(bar) == line
    escaped = line.replace("<", "&lt;")
    assert snapshot_of(bar.model_id) == [{"text/html": f"<pre>{escaped}</pre>", "text/plain": line}]
    half = ipywidgets.VBox([ipywidgets.Label("<loading>"), ipywidgets.IntProgress(value=1, max=2),
                            ipywidgets.Button(description="not text")])
    assert widget_text(half) == "<loading>|█████     |"
    assert "&lt;loading&gt;" in snapshot_of(half.model_id)[0]["text/html"]
    assert snapshot_of("closed-or-never-made") == []


def test_publish_snapshots_answers_every_id_in_one_json_output(shown):
    view, label = Greeting("a"), ipywidgets.Label("b")
    display(view)
    _display.publish_snapshots([view.widget.model_id, label.model_id])
    output = shown.outputs[-1]
    assert output.data["application/json"] == {view.widget.model_id: view.snapshot(),
                                               label.model_id: snapshot_of(label.model_id)}
