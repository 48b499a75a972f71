""":func:`load_model`: a model by name, in a precision, ready to generate on its engine; and what it gives back,
a :class:`LoadedModel`."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemma_widgets import precisions
from gemma_widgets.compilation import enable_compile
from gemma_widgets.engines.base import Engine, Prompt, SamplingSettings
from gemma_widgets.engines.spec import Precision, Preset
from gemma_widgets.errors import GemmaWidgetsError, MemoryWarning, PrecisionUnavailableError
from gemma_widgets.host.hardware import Hardware, memory_room
from gemma_widgets.presets import hub_errors, locate, resolve_preset
from gemma_widgets.templates import chat_ids


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
    hardware = Hardware.detect()
    variant = precisions.resolve(precision, preset, hardware)
    parsed = variant.parse_options(options)
    reason = variant.unavailable_reason(preset, hardware)
    if reason:
        raise PrecisionUnavailableError(f"{variant.name} is not available here: {reason}")
    warn_if_tight(preset, variant)
    start = time.perf_counter()
    path = locate(preset)
    with hub_errors(path):
        engine, notes = variant.runner().load(variant, preset, path, parsed, hardware)
    loaded = LoadedModel(engine, preset, variant.name, notes=notes)
    if compile:
        enable_compile(loaded, compile)
    loaded.load_seconds = time.perf_counter() - start
    return loaded


def warn_if_tight(preset: Preset, precision: Precision) -> None:
    """Warn before a load whose weights alone exceed what a container's limit leaves this kernel (Binder: one
    model at a time): the kernel would die half-way, taking its other work with it."""
    room = memory_room()
    need = preset.weights_bytes(precision.bytes_per_param)
    if room is not None and need > room:
        warnings.warn(f"{preset.name} in {precision.name} needs about {need / 1e9:.1f} GB for its weights, and this "
                      f"kernel's memory limit leaves {max(room, 0) / 1e9:.1f} GB beside what it holds: free a model "
                      "first (del lm; gc.collect()) or restart the kernel", MemoryWarning, stacklevel=3)


@dataclass
class LoadedModel:
    """A model ready to generate: its engine (the runtime), and how it was loaded.

    ``generate`` and ``stream`` work the same on every engine, so a cell keeps working when the
    precision (and with it the runtime) changes; ``model`` is the runtime's own object, for
    lessons that show its API (a transformers model, an ``LLMPipeline``, a ``Llama``...).
    """

    engine: Engine
    preset: Preset
    precision: str
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    compiled: str | None = None  # the torch.compile mode generation runs under, if compiled

    @property
    def model(self) -> Any:
        return self.engine.model

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def path(self) -> str:
        """The local folder or hub id the weights came from ("" for a server)."""
        return str(getattr(self.engine, "path", ""))

    @property
    def context_window(self) -> int:
        """How many tokens (prompt plus reply) the model attends to."""
        return int(self.engine.context_window)

    def prompt(self, prompt: str | Sequence[dict[str, str]], chat: bool = True) -> Prompt:
        """``prompt`` (text, or chat messages) as the engine's input: through the chat template
        unless ``chat`` is False (plain text continued by the model)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self.tokenizer is None:
            return Prompt((), messages)
        if chat:
            return Prompt(chat_ids(self.tokenizer, messages), messages)
        if not isinstance(prompt, str):
            raise GemmaWidgetsError("chat=False continues plain text: give a string, not messages.")
        return Prompt(list(self.tokenizer(prompt).input_ids), messages)

    def stream(self, prompt: str | Sequence[dict[str, str]], chat: bool = True,
               stop: threading.Event | None = None, **settings: Any) -> Iterator[str]:
        """The reply's text piece by piece, on any engine. ``settings`` are
        :class:`~gemma_widgets.session.SamplingSettings` fields (``max_new_tokens=64``,
        ``temperature=0`` for greedy...); setting ``stop`` ends it after the current step."""
        sampling = SamplingSettings(**settings)
        sampling.validate()
        for delta in self.engine.stream(self.prompt(prompt, chat), sampling, stop or threading.Event()):
            if delta.text:
                yield delta.text

    def generate(self, prompt: str | Sequence[dict[str, str]], chat: bool = True, **settings: Any) -> str:
        """The whole reply to ``prompt`` as text, on any engine (see :meth:`stream`).

        >>> lm = load_model("bundled", "fast")                              # doctest: +SKIP
        >>> lm.generate("Name three colours.", max_new_tokens=32, temperature=0)  # doctest: +SKIP
        """
        return "".join(self.stream(prompt, chat, **settings))

    def __repr__(self) -> str:
        return (f"LoadedModel({self.preset.name!r}, precision={self.precision!r}, "
                f"engine={self.engine.name!r}, load_seconds={self.load_seconds:.1f})")
