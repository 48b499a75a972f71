""":func:`load_model`: a model by name, in a precision, ready to generate on its engine."""

from __future__ import annotations

import time
from typing import Any

from gemma_widgets import precisions
from gemma_widgets.presets import LoadedModel, hub_errors, locate, resolve_preset


def load_model(name: str | None = None, precision: str | None = None, compile: str | bool | None = None,
               **options: Any) -> LoadedModel:
    """Load a Gemma model and its tokenizer.

    Args:
        name: a preset, a hub id, a local folder, or the URL of an OpenAI-compatible server
            (``http://host:port/v1``); default ``$GEMMA_MODEL`` or ``bundled``.
        precision: a name from :data:`gemma_widgets.precisions.PRECISIONS` (default ``auto``).
        compile: a ``torch.compile`` mode, or True for the device's default, to compile the
            decode step and warm it up now (:func:`gemma_widgets.compilation.enable_compile`); if
            compiling fails, the model stays eager and ``notes`` says why.
        options: passed to the precision's loader (``group_size`` for ``ov-int4``, ``model`` for
            a server...).

    >>> lm = load_model()          # doctest: +SKIP
    >>> lm.precision, lm.engine.name    # doctest: +SKIP
    ('bf16', 'transformers')
    """
    preset = resolve_preset(name)
    variant = precisions.resolve(precision, preset)
    start = time.perf_counter()
    path = locate(preset)
    with hub_errors(path):
        loaded = variant.load(preset, path, **options)
    if compile:
        from gemma_widgets.compilation import enable_compile

        enable_compile(loaded, compile)
    loaded.load_seconds = time.perf_counter() - start
    return loaded
