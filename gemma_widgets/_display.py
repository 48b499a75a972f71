"""One display hook for the kit's views, the same on ipywidgets 7 (Colab pins 7.7.1) and 8.

ipywidgets 8 widgets display through ``_repr_mimebundle_``, which 7 does not have; IPython's
``_ipython_display_`` hook exists beside both, so a view hands its top widget to ``display``.
"""

from __future__ import annotations

from typing import Any


class WidgetView:
    """A Python object that shows as its ``widget`` when it ends a cell or is passed to ``display``."""

    widget: Any

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def with_class(widget: Any, *names: str) -> Any:
    """``widget`` with the CSS classes ``names`` added (the stable hooks of tests and styles)."""
    for name in names:
        widget.add_class(name)
    return widget
