"""Threaded streaming generation: the chat runtime that the panel and the terminal chat view.

One reply is a :class:`Generation`: the engine runs in a background thread and hands token
ids to a :class:`TokenTextStreamer` (a ``TextIteratorStreamer`` with a timeout); a second
thread reads the text out of it and calls the view back, so the kernel stays free. Stop sets
a ``threading.Event`` that a ``StoppingCriteria`` (transformers, optimum-intel) or the
streamer's return value (openvino-genai) checks after every decoding step.

:class:`ChatSession` ties a :class:`~gemma_widgets.conversation.Conversation` to an engine:
``send``, ``regenerate``, ``edit_last``, ``stop``, ``wait``, ``clear``.

>>> from gemma_widgets import load_model            # doctest: +SKIP
>>> session = ChatSession(load_model("bundled"))    # doctest: +SKIP
>>> session.send("Name three colours.").wait(60)    # doctest: +SKIP
True
>>> session.history[-1]["role"]                     # doctest: +SKIP
'assistant'
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from gemma_widgets._native import release_openmp_threads
from gemma_widgets.conversation import Conversation, Message, PromptPlan
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.models import LoadedModel
from gemma_widgets.templates import end_of_turn_ids, ensure_chat_template

#: The engines of :class:`~gemma_widgets.models.LoadedModel` the chat can drive.
ENGINES = ("transformers", "optimum-intel", "openvino-genai")

#: How often (seconds) the reader thread wakes to check that the engine thread is alive.
POLL_SECONDS = 0.25


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


@dataclass
class GenerationStats:
    """What one reply cost. ``ttft_s`` runs from the send to the first text the view showed."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    total_s: float
    stop_reason: str  # "end_of_turn", "max_new_tokens", "stopped" or "error"

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first over the time after the first."""
        if self.ttft_s is None or self.new_tokens < 2 or self.total_s <= self.ttft_s:
            return self.new_tokens / self.total_s if self.total_s > 0 else 0.0
        return (self.new_tokens - 1) / (self.total_s - self.ttft_s)

    def summary(self) -> str:
        """One status line, e.g. ``first token 0.21 s · 48 tokens · 17.9 tok/s``."""
        first = f"first token {self.ttft_s:.2f} s" if self.ttft_s is not None else "no text"
        line = f"{first} · {self.new_tokens} tokens · {self.tokens_per_second:.1f} tok/s"
        if self.stop_reason in ("stopped", "max_new_tokens", "error"):
            line += f" · {self.stop_reason.replace('_', ' ')}"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 3)}


class TokenTextStreamer(TextIteratorStreamer):
    """A ``TextIteratorStreamer`` that hands text over as soon as it decodes, and counts tokens.

    transformers' streamer holds text back until a word ends (a space), which delays the
    first visible token by a decoding step; this one only holds back an incomplete UTF-8
    character. ``put_ids`` feeds it token ids from engines that do not use torch tensors.

    >>> streamer = TokenTextStreamer(tokenizer, timeout=0.25)  # doctest: +SKIP
    >>> streamer.put_ids(tokenizer("Hello world").input_ids[1:]); streamer.end()  # doctest: +SKIP
    >>> "".join(streamer)                                       # doctest: +SKIP
    'Hello world'
    """

    def __init__(self, tokenizer: Any, *, skip_prompt: bool = True, timeout: float = POLL_SECONDS):
        super().__init__(tokenizer, skip_prompt=skip_prompt, timeout=timeout, skip_special_tokens=True)
        self.new_tokens = 0
        self.last_token: int | None = None

    def put(self, value: Any) -> None:
        if len(value.shape) > 1 and value.shape[0] > 1:
            raise GemmaWidgetsError("The chat streams one conversation at a time (batch size 1).")
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.put_ids(value.reshape(-1).tolist())

    def put_ids(self, ids: list[int]) -> None:
        """Decode newly generated ``ids`` and queue whatever text they complete."""
        if not ids:
            return
        self.new_tokens += len(ids)
        self.last_token = int(ids[-1])
        self.token_cache.extend(ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return
        printable = text[self.print_len:]
        if text.endswith("\n"):  # a new line: start a fresh cache so decoding stays cheap
            self.token_cache, self.print_len = [], 0
        else:
            self.print_len = len(text)
        if printable:
            self.on_finalized_text(printable)


class StopOnEvent(StoppingCriteria):
    """A ``StoppingCriteria`` that ends ``generate`` after the step in which ``event`` was set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


# --- engines: the one place where transformers and openvino-genai differ ---------------------
def hf_tokenizer(loaded: LoadedModel) -> Any:
    """The Hugging Face tokenizer for ``loaded``, with Gemma's chat template.

    An openvino-genai pipeline may carry an ``openvino_genai.Tokenizer``; the chat needs the
    Hugging Face one (chat template, incremental decoding), saved beside the IR.
    """
    tokenizer = loaded.tokenizer
    if not hasattr(tokenizer, "convert_tokens_to_ids"):
        from gemma_widgets._bundled import load_tokenizer

        tokenizer = load_tokenizer(loaded.path)
    ensure_chat_template(tokenizer)
    return tokenizer


class TransformersEngine:
    """``model.generate`` with a streamer and a stop criterion (transformers, optimum-intel)."""

    def __init__(self, loaded: LoadedModel, tokenizer: Any):
        self.model = loaded.model
        self.stop_ids = end_of_turn_ids(tokenizer, getattr(loaded.model, "generation_config", None))
        self.pad_id = tokenizer.pad_token_id

    def generate(self, input_ids: list[int], settings: SamplingSettings, options: dict[str, Any],
                 streamer: TokenTextStreamer, stop: threading.Event) -> None:
        import torch

        device = getattr(self.model, "device", "cpu")
        ids = torch.tensor([input_ids], dtype=torch.long, device=device)
        self.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopOnEvent(stop)]),
            eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
            **{**settings.generate_kwargs(), **options},
        )


class GenAIEngine:
    """An ``openvino_genai.LLMPipeline``: token ids in, a streamer whose return value stops it."""

    def __init__(self, loaded: LoadedModel, tokenizer: Any):
        self.pipe = loaded.model
        self.stop_ids = end_of_turn_ids(tokenizer)

    def generate(self, input_ids: list[int], settings: SamplingSettings, options: dict[str, Any],
                 streamer: TokenTextStreamer, stop: threading.Event) -> None:
        import numpy as np
        import openvino as ov
        import openvino_genai as genai

        class _Forward(genai.StreamerBase):
            def write(self, token: int | list[int]) -> genai.StreamingStatus:
                streamer.put_ids([token] if isinstance(token, int) else list(token))
                return genai.StreamingStatus.STOP if stop.is_set() else genai.StreamingStatus.RUNNING

            def end(self) -> None:  # the Generation thread ends the text streamer itself
                pass

        config = self.pipe.get_generation_config()
        config.max_new_tokens = int(settings.max_new_tokens)
        config.repetition_penalty = float(settings.repetition_penalty)
        config.do_sample = not settings.greedy
        if not settings.greedy:
            config.temperature, config.top_p = float(settings.temperature), float(settings.top_p)
            config.top_k = int(settings.top_k)
        config.stop_token_ids = set(self.stop_ids)
        for key, value in options.items():
            setattr(config, key, value)
        ids = np.array([input_ids], dtype=np.int64)
        inputs = genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        self.pipe.generate(inputs, config, _Forward())


def make_engine(loaded: LoadedModel, tokenizer: Any = None) -> TransformersEngine | GenAIEngine:
    """The engine adapter for ``loaded.engine``."""
    tokenizer = tokenizer if tokenizer is not None else hf_tokenizer(loaded)
    if loaded.engine == "openvino-genai":
        return GenAIEngine(loaded, tokenizer)
    if loaded.engine in ("transformers", "optimum-intel"):
        return TransformersEngine(loaded, tokenizer)
    raise GemmaWidgetsError(f"The chat cannot drive engine {loaded.engine!r}: use {', '.join(ENGINES)}.")


class Generation:
    """One reply being generated in the background; ``text`` grows as tokens arrive.

    ``on_text(text_so_far)`` and ``on_finish(self)`` are called from the reader thread.
    An exception in the engine ends the reply with ``error`` set (the text so far is kept);
    ``done`` is always set in the end, so ``wait`` never hangs on a failed engine.
    """

    def __init__(self, engine: TransformersEngine | GenAIEngine, tokenizer: Any, plan: PromptPlan,
                 settings: SamplingSettings, *, options: dict[str, Any] | None = None,
                 on_text: Callable[[str], None] | None = None,
                 on_finish: Callable[[Generation], None] | None = None,
                 started: float | None = None):
        self.plan = plan
        self.settings = settings
        self.text = ""
        self.error: BaseException | None = None
        self.stats: GenerationStats | None = None
        self._started = started if started is not None else time.perf_counter()
        self._first_text: float | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._on_text, self._on_finish = on_text, on_finish
        self._streamer = TokenTextStreamer(tokenizer)
        self._stop_ids = set(engine.stop_ids)
        self._engine_thread = threading.Thread(
            target=self._run_engine, args=(engine, dict(options or {})), daemon=True,
            name="gemma-widgets-generate")
        self._reader_thread = threading.Thread(target=self._read, daemon=True, name="gemma-widgets-stream")
        release_openmp_threads()
        self._engine_thread.start()
        self._reader_thread.start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the engine to end after the current decoding step; the text so far is kept."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the reply is finished (and the view updated); False on timeout."""
        return self._done.wait(timeout)

    def _run_engine(self, engine: TransformersEngine | GenAIEngine, options: dict[str, Any]) -> None:
        try:
            engine.generate(self.plan.input_ids, self.settings, options, self._streamer, self._stop)
        except BaseException as exc:  # shown in the view; the reader must not wait forever
            self.error = exc
        finally:
            self._streamer.end()

    def _read(self) -> None:
        try:
            while True:
                try:
                    chunk = next(self._streamer)
                except StopIteration:
                    break
                except queue.Empty:
                    if not self._engine_thread.is_alive() and self._streamer.text_queue.empty():
                        break  # the engine died without ending the stream
                    continue
                if not chunk:
                    continue
                self.text += chunk
                if self._on_text is not None:
                    self._on_text(self.text)
                if self._first_text is None:
                    self._first_text = time.perf_counter()
        except BaseException as exc:  # a view callback failed: end the reply, report it
            self.error = self.error or exc
            self._stop.set()
        finally:
            self._finish()

    def _finish(self) -> None:
        try:
            self._engine_thread.join()  # an error raised after the stream ended is still seen
            end = time.perf_counter()
            if self.error is not None:
                reason = "error"
            elif self._streamer.last_token in self._stop_ids:
                reason = "end_of_turn"
            elif self._stop.is_set():
                reason = "stopped"
            else:
                reason = "max_new_tokens"
            ttft = None if self._first_text is None else self._first_text - self._started
            self.stats = GenerationStats(self.plan.prompt_tokens, self._streamer.new_tokens, ttft,
                                         end - self._started, reason)
            if self._on_finish is not None:
                self._on_finish(self)
        finally:
            self._done.set()

    def message(self) -> Message:
        """The finished reply as a transcript message."""
        error = None if self.error is None else f"{type(self.error).__name__}: {self.error}"
        stopped = self.stats is not None and self.stats.stop_reason == "stopped"
        return Message("assistant", self.text.strip(), stopped=stopped, error=error,
                       stats=self.stats.as_dict() if self.stats else None)


@dataclass
class ChatSession:
    """A conversation with a model: the runtime both chat views drive.

    Listeners are plain callables, called from the reader thread:
    ``on_text(text_so_far)`` while a reply streams, ``on_finish(generation)`` once it ended
    (the reply is already in the transcript).
    """

    loaded: LoadedModel
    conversation: Conversation = field(default_factory=Conversation)
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    context_window: int | None = None  # default: the model's
    options: dict[str, Any] = field(default_factory=dict)  # extra engine arguments
    on_text: list[Callable[[str], None]] = field(default_factory=list)
    on_finish: list[Callable[[Generation], None]] = field(default_factory=list)
    generation: Generation | None = field(default=None, init=False)
    plan: PromptPlan | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokenizer = hf_tokenizer(self.loaded)
        self.engine = make_engine(self.loaded, self.tokenizer)
        limit = self.loaded.context_window
        window = limit if self.context_window is None else self.context_window
        if isinstance(window, bool) or not isinstance(window, int) or not 0 < window <= limit:
            raise GemmaWidgetsError(f"context_window must be a whole number of tokens from 1 to the model's "
                                    f"{limit}, not {window!r}.")
        self.context_window = window

    @property
    def busy(self) -> bool:
        return self.generation is not None and not self.generation.done

    @property
    def history(self) -> list[dict[str, str]]:
        return self.conversation.history

    def _check_idle(self) -> None:
        if self.busy:
            raise GemmaWidgetsError("A reply is still streaming: call stop() or wait() first.")

    def send(self, text: str) -> Generation:
        """Add a user message and start the reply; raises (and sends nothing) if it is empty."""
        started = time.perf_counter()
        self._check_idle()
        self.settings.validate()
        self.conversation.add_user(text)
        return self._reply(started, on_fail=self.conversation.messages.pop)

    def regenerate(self) -> Generation:
        """Drop the last reply and generate a new one to the same user message."""
        started = time.perf_counter()
        self._check_idle()
        self.settings.validate()
        old = self.conversation.pop_reply()
        if self.conversation.last is None:
            raise GemmaWidgetsError("There is nothing to regenerate: send a message first.")
        return self._reply(started, on_fail=lambda: old and self.conversation.messages.append(old))

    def edit_last(self, text: str) -> Generation:
        """Replace the last user message (dropping its reply) with ``text`` and resend."""
        self._check_idle()
        if not isinstance(text, str) or not text.strip():
            raise GemmaWidgetsError("The message is empty: type something to send.")
        old_reply = self.conversation.pop_reply()
        old_text = self.conversation.pop_user()
        try:
            return self.send(text)
        except GemmaWidgetsError:
            self.conversation.add_user(old_text)
            if old_reply is not None:
                self.conversation.add_reply(old_reply)
            raise

    def _reply(self, started: float, on_fail: Callable[[], Any]) -> Generation:
        try:
            self.plan = self.conversation.plan(self.tokenizer, self.context_window,
                                               int(self.settings.max_new_tokens))
        except Exception:  # nothing was sent: the transcript goes back to how it was
            on_fail()
            raise
        self.generation = Generation(
            self.engine, self.tokenizer, self.plan, SamplingSettings(**asdict(self.settings)),
            options=self.options, on_text=self._emit_text, on_finish=self._finished, started=started)
        return self.generation

    def _emit_text(self, text: str) -> None:
        for callback in self.on_text:
            callback(text)

    def _finished(self, generation: Generation) -> None:
        self.conversation.add_reply(generation.message())
        for callback in self.on_finish:
            callback(generation)

    def stop(self) -> None:
        """Stop the streaming reply (if any) after the current decoding step."""
        if self.generation is not None:
            self.generation.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the streaming reply to finish; True if none is running any more."""
        return self.generation is None or self.generation.wait(timeout)

    def clear(self) -> None:
        """Stop any reply and forget the messages (the system prompt and settings stay)."""
        if self.busy:
            self.stop()
            self.wait()
        self.conversation.clear()
        self.plan = None

    def token_count(self) -> int:
        """Tokens of the transcript the model would see next (system prompt included)."""
        start = self.plan.first_kept if self.plan else 0
        return self.conversation.count_tokens(self.tokenizer, start=start)

    def save(self, path: str | Path) -> Path:
        """Write the transcript as JSON (or Markdown if ``path`` ends in ``.md``)."""
        return self.conversation.save(path)

    def load(self, source: str | Path | dict | list) -> None:
        """Replace the transcript with a saved one (a path, or the data itself)."""
        self._check_idle()
        if isinstance(source, (str, Path)):
            self.conversation = Conversation.load(source)
        else:
            self.conversation = Conversation.from_data(source)
        self.plan = None
