"""Threaded streaming generation: the chat runtime that the panel and the terminal chat view.

One reply is a :class:`Generation`: a background thread reads the engine's stream
(:meth:`gemma_widgets.engines.base.Engine.stream`, the same on every runtime) and calls the
view back, so the kernel stays free. Stop sets a ``threading.Event`` that the engine checks
after every decoding step (a ``StoppingCriteria`` in transformers, the streamer's return value
in openvino-genai, the loop in llama.cpp, closing the connection for a server).

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

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gemma_widgets.conversation import Conversation, Message, PromptPlan
from gemma_widgets.engines.base import Engine, Finish, Prompt, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.native import release_openmp_threads
from gemma_widgets.loading import LoadedModel


@dataclass
class GenerationStats:
    """What one reply cost. ``ttft_s`` runs from the send to the first text the view showed."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    total_s: float
    stop_reason: Finish

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
        if self.stop_reason in (Finish.STOPPED, Finish.MAX_NEW_TOKENS, Finish.ERROR):
            line += f" · {self.stop_reason.replace('_', ' ')}"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 3)}


class Background:
    """Work in a thread of its own: :meth:`stop` asks it to end after its current step, :meth:`wait`
    blocks until ``done``, which the work sets at its very end (after its callbacks), failed or not."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the work to end after its current step (a reply keeps the text so far)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work is finished (and its callbacks have run); False on timeout."""
        return self._done.wait(timeout)


class Generation(Background):
    """One reply being generated in the background; ``text`` grows as pieces arrive.

    A reader thread iterates the engine's :meth:`~gemma_widgets.engines.base.Engine.stream` and
    calls ``on_text(text_so_far)`` and, at the end, ``on_finish(self)``. An exception in the
    engine ends the reply with ``error`` set (the text so far is kept); ``done`` is always set
    in the end, so ``wait`` never hangs on a failed engine.
    """

    def __init__(self, engine: Engine, plan: PromptPlan, settings: SamplingSettings, *,
                 on_text: Callable[[str], None] | None = None,
                 on_finish: Callable[[Generation], None] | None = None,
                 started: float | None = None):
        self.plan = plan
        self.settings = settings
        self.text = ""
        self.error: BaseException | None = None
        self.stats: GenerationStats | None = None
        self.new_tokens = 0
        self.token_ids: list[int] = []  # the reply's ids, when the engine streams them (see Delta.ids)
        self._finish_reason = Finish.MAX_NEW_TOKENS
        self._prompt_tokens = plan.prompt_tokens
        self._started = started if started is not None else time.perf_counter()
        self._first_text: float | None = None
        super().__init__()
        self._on_text, self._on_finish = on_text, on_finish
        self._thread = threading.Thread(target=self._read, args=(engine,), daemon=True,
                                        name="gemma-widgets-stream")
        release_openmp_threads()
        self._thread.start()

    def _read(self, engine: Engine) -> None:
        try:
            for delta in engine.stream(Prompt(self.plan.input_ids, self.plan.messages), self.settings,
                                       self._stop):
                self.new_tokens += delta.tokens
                self.token_ids += delta.ids
                if delta.prompt_tokens is not None:
                    self._prompt_tokens = delta.prompt_tokens
                if delta.finish:
                    self._finish_reason = delta.finish
                if not delta.text:
                    continue
                self.text += delta.text
                if self._on_text is not None:
                    self._on_text(self.text)
                if self._first_text is None:
                    self._first_text = time.perf_counter()
        except BaseException as exc:  # shown in the view; the transcript keeps the text so far
            self.error = exc
            self._stop.set()
        finally:
            self._finish()

    def _finish(self) -> None:
        try:
            end = time.perf_counter()
            reason = Finish.ERROR if self.error is not None else self._finish_reason
            ttft = None if self._first_text is None else self._first_text - self._started
            self.stats = GenerationStats(self._prompt_tokens, self.new_tokens, ttft, end - self._started, reason)
            if self._on_finish is not None:
                self._on_finish(self)
        finally:
            self._done.set()

    def message(self) -> Message:
        """The finished reply as a transcript message."""
        error = None if self.error is None else f"{type(self.error).__name__}: {self.error}"
        stopped = self.stats is not None and self.stats.stop_reason == Finish.STOPPED
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
    on_text: list[Callable[[str], None]] = field(default_factory=list)
    on_finish: list[Callable[[Generation], None]] = field(default_factory=list)
    generation: Generation | None = field(default=None, init=False)
    plan: PromptPlan | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokenizer = self.loaded.tokenizer  # None for a server without a local tokenizer
        self.engine = self.loaded.engine
        limit = self.loaded.context_window
        window = limit if self.context_window is None else self.context_window
        if isinstance(window, bool) or not isinstance(window, int) or not 0 < window <= limit:
            raise GemmaWidgetsError(f"context_window must be a whole number of tokens from 1 to the model's "
                                    f"{limit}, not {window!r}.")
        self.context_window = window

    @property
    def window(self) -> int:
        """The context window the prompt is fitted into (checked when the session was made)."""
        return int(self.context_window or 0)

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

        def put_back() -> None:
            if old is not None:
                self.conversation.messages.append(old)

        return self._reply(started, on_fail=put_back)

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
            self.plan = self.conversation.plan(self.tokenizer, self.window,
                                               int(self.settings.max_new_tokens))
        except Exception:  # nothing was sent: the transcript goes back to how it was
            on_fail()
            raise
        self.generation = Generation(
            self.engine, self.plan, SamplingSettings(**asdict(self.settings)),
            on_text=self._emit_text, on_finish=self._finished, started=started)
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
        if self.tokenizer is None:  # a server: its own count of the last exchange
            stats = self.generation.stats if self.generation else None
            return stats.prompt_tokens + stats.new_tokens if stats else 0
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
