"""What :mod:`gemma_widgets.bench.measure` and its worker process say to each other, as typed records.

The parent writes one :class:`Scenario` (JSON) on the worker's stdin; the worker writes one
event per line on its stdout (:func:`encode`, :func:`decode`). :func:`parse_variant` is the one
reader of variant names (``"ov-int4+group_size=32+all_layers"``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any


def parse_variant(variant: str) -> tuple[str, dict[str, Any]]:
    """A variant name -> a precision and :func:`~gemma_widgets.load_model` options.

    ``"bf16"`` -> ``("bf16", {})``; ``"bf16+compile"`` -> ``("bf16", {"compile": True})``;
    ``"ov-int4+group_size=32+all_layers"`` -> ``("ov-int4", {"group_size": 32, "all_layers": True})``.
    """
    base, *flags = [part.strip() for part in variant.split("+")]
    options: dict[str, Any] = {}
    for flag in filter(None, flags):
        key, sep, value = flag.partition("=")
        options[key.strip()] = _option_value(value.strip()) if sep else True
    return base, options


def _option_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(text.lower(), text)


@dataclass(frozen=True)
class Scenario:
    """One variant's measurement: what the worker loads and runs."""

    model: str
    variant: str
    prompt: str
    new_tokens: int
    repeats: int
    warmup: int
    quality: bool = True
    passage_tokens: int | None = None
    prepare_only: bool = False  # load (building caches such as an OpenVINO export) and exit

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        return cls(**json.loads(text))


# --- events, in the order a worker sends them -----------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """``prepare_only``: the variant loaded (caches built) in ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Loaded:
    """The variant is loaded: its engine, load time, weights footprint, loading notes and recipe."""

    engine: str
    load_s: float
    weights_bytes: int
    notes: list[str] = field(default_factory=list)
    recipe: str = ""  # which weights at which precision (gemma_widgets.recipe)


@dataclass(frozen=True)
class PromptSize:
    """The prompt, through the chat template where the model is instruction-tuned, in tokens."""

    prompt_tokens: int


@dataclass(frozen=True)
class Step:
    """A stage's step done. Timed steps carry ``seconds``; a decode timed from a stream also carries
    the ``tokens`` it made and its own ``ttft`` (seconds to its first token)."""

    stage: str  # "warmup", "prefill", "decode", "quality"
    done: int
    seconds: float | None = None
    tokens: int | None = None
    ttft: float | None = None


@dataclass(frozen=True)
class Memory:
    """This process's memory after the timed runs (scoring comes later and is not counted)."""

    peak_rss_bytes: int
    rss_bytes: int
    peak_cuda_bytes: int | None


@dataclass(frozen=True)
class Text:
    """The text of the last timed generation."""

    text: str


@dataclass(frozen=True)
class Quality:
    """Passage perplexity and the top-1 prediction at every position (agreement is computed by the parent)."""

    perplexity: float
    top1: list[int]


@dataclass(frozen=True)
class Done:
    """The scenario finished."""

    pass


@dataclass(frozen=True)
class Failed:
    """The variant could not be measured, and why."""

    status: str  # "failed", "unavailable" or "cancelled"
    message: str


Event = Prepared | Loaded | PromptSize | Step | Memory | Text | Quality | Done | Failed
_EVENTS: dict[str, type] = {cls.__name__: cls for cls in
                            (Prepared, Loaded, PromptSize, Step, Memory, Text, Quality, Done, Failed)}


def encode(event: Event) -> str:
    """One JSON line for ``event``."""
    return json.dumps({"event": type(event).__name__, **asdict(event)})


def decode(line: str) -> Event:
    """The event in ``line``; ``ValueError`` if it is not one."""
    data = json.loads(line)
    kind = _EVENTS.get(data.pop("event", None)) if isinstance(data, dict) else None
    if kind is None:
        raise ValueError(f"not a worker event: {line[:80]!r}")
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in data.items() if k in names})
