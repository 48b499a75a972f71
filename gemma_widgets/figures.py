"""Figures as PNG bytes: matplotlib's Agg canvas, no pyplot state, sized for a projector.

matplotlib is imported inside the functions: ``import gemma_widgets`` must not load it (it takes a
second and is not needed to chat). :mod:`gemma_widgets.bench.charts` and
:mod:`gemma_widgets.course.pictures` draw on these figures.

>>> fig = new_figure(9, 3)                                                   # doctest: +SKIP
>>> to_png(fig)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"                              # doctest: +SKIP
True
"""

from __future__ import annotations

import io
from typing import Any

#: Every figure's resolution: ``width`` inches make ``100 * width`` pixels.
DPI = 100
#: The smallest type on any figure, in points: readable from the back of a room.
SMALL = 11
#: Axis labels and panel titles.
BIG = 13
#: The colour of a single series.
COLOR = "#4c72b0"


def label(text: str) -> str:
    """Text for a figure as it is: ``$`` would start matplotlib's mathtext (and can fail to parse)."""
    return text.replace("$", r"\$")


def new_figure(width: float = 9.0, height: float = 4.5) -> Any:
    """A figure of ``width`` by ``height`` inches (:data:`DPI` pixels each) on its own Agg canvas, laid
    out by constrained layout. Whoever draws on it sets each text to :data:`SMALL` points or more."""
    # matplotlib loads here, not at import: importing gemma_widgets must not pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # likewise

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style(ax: Any) -> None:
    """Tick labels at :data:`SMALL` points."""
    ax.tick_params(labelsize=SMALL)


def empty(ax: Any, title: str, why: str = "no finished variant yet") -> None:
    """An axes that says why it has nothing to draw."""
    ax.set_title(title, fontsize=BIG)
    ax.text(0.5, 0.5, label(why), ha="center", va="center", transform=ax.transAxes, fontsize=SMALL, wrap=True)
    ax.set_axis_off()


def to_png(fig: Any) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def small_png(fig: Any) -> bytes:
    """The figure as a PNG of at most 64 colours (a third of the bytes: notebooks store it)."""
    from PIL import Image  # Pillow comes with matplotlib, loaded only when a figure is saved

    buffer = io.BytesIO()
    Image.open(io.BytesIO(to_png(fig))).convert("RGB").quantize(colors=64).save(buffer, format="png",
                                                                               optimize=True)
    return buffer.getvalue()
