"""Gemma widgets: run Gemma 2 with Hugging Face transformers, in a notebook or a terminal.

The table of contents:

* :func:`load_model`: a preset, hub id or folder, in a precision, ready to generate.
* :class:`ChatPanel`: a streaming chat widget.
* :class:`PrecisionDashboard`: measure one prompt across precisions and compare.
* :class:`PrecisionArena`: one prompt, two precisions side by side, and where their replies part.

The package's folders are its layers, top to bottom: the views (``widgets/``, ``cli/``, ``course/``);
the chat session, the arena, ``bench/`` and ``tuning/``; loading (``loading``, ``precisions``,
``presets``); ``engines/`` (one module per runtime, with its backend); and the leaves (``host/``,
``offline/``, templates, tokenizer, cache, errors). ``make lint`` checks that no import goes up.
"""

import importlib

from gemma_widgets.host.native import bound_native_memory

bound_native_memory()  # before torch builds its first oneDNN kernel and a reply starts a thread

from gemma_widgets.engines.base import SamplingSettings  # noqa: E402
from gemma_widgets.errors import (  # noqa: E402
    GatedModelError,
    GemmaWidgetsError,
    GenerationError,
    OfflineModelError,
    PrecisionUnavailableError,
    UnknownModelError,
    UnknownPrecisionError,
)

__all__ = [
    "PRESETS",
    "GatedModelError",
    "GemmaWidgetsError",
    "GenerationError",
    "LoadedModel",
    "OfflineModelError",
    "PrecisionUnavailableError",
    "SamplingSettings",
    "UnknownModelError",
    "UnknownPrecisionError",
    "load_model",
    "ChatPanel",
    "PrecisionDashboard",
    "PrecisionArena",
]
__version__ = "0.1.0"

#: Loaded on first use, so ``import gemma_widgets`` imports neither torch nor ipywidgets.
_LAZY = {
    "load_model": "gemma_widgets.loading",
    "LoadedModel": "gemma_widgets.loading",
    "PRESETS": "gemma_widgets.presets",
    "ChatPanel": "gemma_widgets.widgets.chat",
    "PrecisionDashboard": "gemma_widgets.widgets.dashboard",
    "PrecisionArena": "gemma_widgets.widgets.arena",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gemma_widgets' has no attribute {name!r}")
