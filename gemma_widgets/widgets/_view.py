"""What the kit's three views share: a notice for problems the user can fix, button actions guarded so that
such a problem becomes the notice (not a traceback in the kernel's log), Enter in a one-line input, and
repaints throttled while text streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.widgets.display import WidgetView
from gemma_widgets.widgets.markdown import escape_text

#: Seconds between repaints of a streaming reply (the first piece is painted at once).
LIVE_INTERVAL = 0.05


class View(WidgetView):
    """A kit view: subclasses build ``widget`` and a ``notice`` HTML widget."""

    notice: Any

    def _show_notice(self, text: str) -> None:
        """``text`` (untrusted: escaped) in the notice; "" clears it."""
        self.notice.value = f"<span>{escape_text(text)}</span>" if text else ""

    def _ui(self, action: Callable[..., Any], *args: Any) -> None:
        """Run a button's action; a problem the user can fix becomes the notice, not a traceback."""
        try:
            action(*args)
        except GemmaWidgetsError as exc:
            self._show_notice(str(exc))

    def _on_enter(self, box: Any, send: Callable[[], None]) -> None:
        """Run ``send`` (guarded) when Enter is pressed in the one-line ``box``: its "submit" event, in
        ipywidgets 7 and 8 (the only input with one)."""
        box.on_msg(lambda _widget, content, _buffers: self._ui(send) if content.get("event") == "submit" else None)


class Throttle:
    """At most one repaint every ``interval`` seconds while text streams; the first always paints."""

    def __init__(self, interval: float = LIVE_INTERVAL):
        self.interval, self.last = interval, 0.0

    def due(self) -> bool:
        """Whether to repaint now (and if so, count it)."""
        now = time.perf_counter()
        if self.last and now - self.last < self.interval:
            return False
        self.last = now
        return True

    def reset(self) -> None:
        """The next piece paints at once (a new reply)."""
        self.last = 0.0
