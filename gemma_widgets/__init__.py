"""Gemma widgets: run Gemma 2 with Hugging Face transformers, in a notebook or a terminal.

The table of contents:

* :func:`load_model`: a preset, hub id or folder, in a precision, ready to generate.
* :class:`ChatPanel`: a streaming chat widget.
* :class:`PrecisionDashboard`: measure one prompt across precisions and compare.
"""

from gemma_widgets.errors import (
    GatedModelError,
    GemmaWidgetsError,
    GenerationError,
    OfflineModelError,
    PrecisionUnavailableError,
    UnknownModelError,
)
from gemma_widgets.models import PRESETS, LoadedModel, load_model

__all__ = [
    "PRESETS",
    "GatedModelError",
    "GemmaWidgetsError",
    "GenerationError",
    "LoadedModel",
    "OfflineModelError",
    "PrecisionUnavailableError",
    "UnknownModelError",
    "load_model",
]
__version__ = "0.1.0"
