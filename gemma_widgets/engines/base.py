"""The engine protocol: what every runtime that runs a model offers the kit.

An :class:`Engine` is one runtime behind one small interface (the shape of optimum-benchmark's
``backends/base.py``): the chat streams from it, the harness times and scores it, and neither
asks which runtime it is. Capabilities an engine may lack are flags the callers read
(``can_generate_exact``, ``can_score``), never an engine name compared as a string.

* :meth:`Engine.stream` yields :class:`Delta` pieces of the reply to a prompt, checking a
  ``threading.Event`` for Stop between decoding steps; the last piece says why it ended.
* :meth:`Engine.generate_exact` makes exactly ``n`` greedy tokens (the harness's decode).
* :meth:`Engine.score` yields next-token logits over token ids, in row chunks (perplexity).
* :meth:`Engine.weights_bytes`, :meth:`Engine.recipe`, :attr:`Engine.context_window`, :attr:`Engine.tokenizer`.

Local engines run token ids (:class:`LocalEngine`): they implement :meth:`LocalEngine.token_stream`
(new token ids as they are made) and inherit the text decoding, stop reasons and threading.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from gemma_widgets.errors import GemmaWidgetsError

#: Positions per chunk of logits from :meth:`Engine.score` (bounds the memory of scoring).
SCORE_CHUNK = 64

#: How often (seconds) a reader wakes to check that a generating thread is still alive.
POLL_SECONDS = 0.25


class CapabilityError(GemmaWidgetsError, NotImplementedError):
    """The engine cannot do this (e.g. give logits); the message says which engine and why."""


@dataclass
class SamplingSettings:
    """How the next token is chosen. ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 64
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> None:
        """Raise :class:`GemmaWidgetsError` saying which setting is out of range (or not a number)."""
        problems = []
        values = {}
        for name in ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number, not {value!r}")
            else:
                values[name] = value
        checks = {
            "temperature": (lambda v: v >= 0, "0 (greedy) or more"),
            "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
            "top_k": (lambda v: int(v) == v and v >= 0, "a whole number >= 0 (0: no limit)"),
            "max_new_tokens": (lambda v: int(v) == v and v >= 1, "a whole number >= 1"),
            "repetition_penalty": (lambda v: v > 0, "> 0 (1: off)"),
        }
        for name, value in values.items():
            ok, wanted = checks[name]
            if not ok(value):
                problems.append(f"{name} must be {wanted}, not {value}")
        if problems:
            raise GemmaWidgetsError("Invalid sampling settings: " + "; ".join(problems) + ".")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kwargs: dict[str, Any] = {"max_new_tokens": int(self.max_new_tokens),
                                  "repetition_penalty": float(self.repetition_penalty)}
        if self.greedy:
            return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {**kwargs, "do_sample": True, "temperature": float(self.temperature),
                "top_p": float(self.top_p), "top_k": int(self.top_k)}



class Finish(StrEnum):
    """Why a reply ended (a ``str``: it is stored in transcripts and results as its value)."""

    END_OF_TURN = "end_of_turn"
    MAX_NEW_TOKENS = "max_new_tokens"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True)
class Prompt:
    """What a reply is generated from: token ids for a local engine, messages for a server."""

    input_ids: Sequence[int]
    messages: Sequence[dict[str, str]] = ()


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed reply: new ``text``, the ``tokens`` it took, and at the end ``finish``.

    ``finish`` is ``end_of_turn``, ``max_new_tokens`` or ``stopped`` on the last piece only;
    ``prompt_tokens`` is set when the engine counted the prompt itself (a server's usage figures);
    ``ids`` are the new token ids when the engine knows them (a local engine; a server sends text).
    """

    text: str = ""
    tokens: int = 0
    finish: Finish | None = None
    prompt_tokens: int | None = None
    ids: tuple[int, ...] = ()


class Engine:
    """One runtime. Subclasses set ``name`` and implement what they can (see the module docstring)."""

    name: ClassVar[str] = "engine"
    can_generate_exact: ClassVar[bool] = True
    can_score: ClassVar[bool] = False
    why_no_scores: ClassVar[str] = "it gives no logits"

    tokenizer: Any = None  # the Hugging Face tokenizer (chat template, counting), if there is one
    model: Any = None  # the runtime's own object, for lessons that show its API
    context_window: int = 8192
    stop_ids: Sequence[int] = ()

    #: The ``torch.nn.Module`` that generates, for ``torch.compile``; None when the runtime is not torch.
    torch_model: Any = None

    def stream(self, prompt: Prompt, settings: Any, stop: threading.Event) -> Iterator[Delta]:
        """The reply to ``prompt`` under ``settings`` (:class:`~gemma_widgets.session.SamplingSettings`)."""
        raise NotImplementedError

    def generate_exact(self, ids: Sequence[int], n: int) -> list[int]:
        """Exactly ``n`` greedy new token ids after ``ids`` (end of turn does not stop it)."""
        raise CapabilityError(f"{self.name} cannot make an exact number of tokens.")

    def score(self, ids: Sequence[int], keep_generator: bool = True) -> Iterator[Any]:
        """Next-token logits over ``ids`` as CPU tensors of ``[<= 64, vocab]`` rows.

        ``keep_generator=False`` lets an engine free its generating copy of the weights first
        (the harness scores last).
        """
        raise CapabilityError(f"{self.name} cannot score text: {self.why_no_scores}.")

    def weights_bytes(self) -> int:
        """Bytes the weights take in memory (or on disk for a mapped file); 0 if unknown."""
        return 0

    def recipe(self) -> str:
        """Which weights are kept at which precision (:mod:`gemma_widgets.recipe`); "" if unknown."""
        return ""

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class IncrementalDecoder:
    """Token ids in, text out as soon as it decodes; holds back only an incomplete UTF-8 character.

    transformers' ``TextIteratorStreamer`` holds text back until a word ends, which delays the
    first visible token by a step; this keeps its cache trick (restart after a new line) only.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: list[int] = []
        self.printed = 0

    def feed(self, ids: Sequence[int]) -> str:
        """The text that ``ids`` complete (possibly empty)."""
        self.cache.extend(int(i) for i in ids)
        text = self.tokenizer.decode(self.cache, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return ""
        new = text[self.printed:]
        if text.endswith("\n"):  # a new line: start a fresh cache so decoding stays cheap
            self.cache, self.printed = [], 0
        else:
            self.printed = len(text)
        return new


_END = object()


class LocalEngine(Engine):
    """An engine that runs token ids in this process; subclasses implement :meth:`token_stream`."""

    def token_stream(self, ids: Sequence[int], settings: Any, stop: threading.Event) -> Iterator[list[int]]:
        """New token ids as they are made; checks ``stop`` after every decoding step."""
        raise NotImplementedError

    def stream(self, prompt: Prompt, settings: Any, stop: threading.Event) -> Iterator[Delta]:
        decoder = IncrementalDecoder(self.tokenizer)
        stops = set(self.stop_ids)
        last = None
        for ids in self.token_stream(prompt.input_ids, settings, stop):
            if not ids:
                continue
            last = ids[-1]
            yield Delta(decoder.feed(ids), len(ids), ids=tuple(int(i) for i in ids))
        if last in stops:
            finish = Finish.END_OF_TURN
        elif stop.is_set():
            finish = Finish.STOPPED
        else:
            finish = Finish.MAX_NEW_TOKENS
        yield Delta(finish=finish)


def threaded(run: Callable[[Callable[[Any], None]], None], idle: float | None = None,
             name: str = "gemma-widgets-generate") -> Iterator[Any]:
    """The items ``run(put)`` puts (a blocking generate that calls ``put(ids)`` per step, a stream
    read chunk by chunk), run in a thread of its own: the caller reads them as they come, and an
    exception in ``run`` is raised here after the items before it (never a reader waiting forever).
    With ``idle``, a None comes every ``idle`` seconds that bring nothing, so the reader keeps a
    deadline of its own or stops; a reader that stops early leaves the thread to end on its own."""
    items: queue.Queue[Any] = queue.Queue()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run(items.put)
        except BaseException as exc:  # re-raised in the reader
            failure.append(exc)
        finally:
            items.put(_END)

    thread = threading.Thread(target=target, daemon=True, name=name)
    thread.start()
    while True:
        try:
            item = items.get(timeout=idle or POLL_SECONDS)
        except queue.Empty:
            if not thread.is_alive() and items.empty():
                break
            if idle is not None:
                yield None
            continue
        if item is _END:
            break
        yield item
    thread.join()
    if failure:
        raise failure[0]
