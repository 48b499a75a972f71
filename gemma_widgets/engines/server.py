"""Any OpenAI-compatible server (vLLM, TGI, LocalAI, llama.cpp's server) through the ``openai`` client.

A workshop shares one server: every learner's panel streams chat completions from its URL, so a
2 GB Binder session can chat with Gemma 2 9B. The server runs the chat template and the
sampling; the engine sends the conversation's messages (the system prompt already folded into
the first user turn, since Gemma has no system role) and reads the streamed pieces.

The server is untrusted, and so is the URL (typed from a slide), so the client holds it to what
was asked, whatever it does:

* Keys: only ``api_key=`` or :data:`ENV_API_KEY` is sent (a ``user:password@`` in the URL as
  HTTP Basic), never ``$OPENAI_API_KEY``, a learner's personal key. Every request goes through
  one hook that drops any other header the ``openai`` client would add from the environment
  (``OPENAI_ORG_ID``, ``OPENAI_CUSTOM_HEADERS``...). No key or password appears in a message, a
  repr or :attr:`ServerEngine.url`.
* Time: a reply that gets no new token for ``timeout`` seconds (:data:`DEFAULT_TIMEOUT`) ends with
  an error that keeps the text so far, even while the server sends keep-alive comments (``: ping``)
  or a byte at a time. Stop, that deadline and the end of a reply hang up the connection (the
  server notices the client is gone and stops generating, or drops the queued request), which
  also ends the thread that reads it within a second, before the server's headers too.
* Length: the reply stops at ``max_new_tokens`` and at the context window, counting one token
  per streamed piece (or per :data:`TOKEN_CHARS` characters of a longer one), whether or not the
  server honours ``max_tokens``.
* Figures: usage counts and context windows that no server could report (negative, beyond the
  request or the window) are ignored. Bytes that are not UTF-8 become U+FFFD; the reply goes on.

Every failure (connection refused, a wrong key, an unknown model, a busy or dying server, a
server that stalls) becomes a :class:`ServerError` whose message says what to do. The server's
text and error messages are cut to one short line here, and the views escape everything they show.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from gemma_widgets.engines.base import Delta, Engine, Finish, Prompt, threaded
from gemma_widgets.engines.server_wire import (
    SENT_HEADERS,
    Line,
    basic_authorization,
    cause,
    chunk_text,
    client_class,
    display_url,
    one_line,
    server_message,
    stated_context,
    whole,
)
from gemma_widgets.engines.spec import Backend, Format, Options, Precision, Preset
from gemma_widgets.errors import GemmaWidgetsError, GenerationError, UnknownModelError
from gemma_widgets.host.hardware import Hardware
from gemma_widgets.host.packages import missing
from gemma_widgets.tokenizer import load_tokenizer

#: The environment variable a server's API key is read from when ``load_model`` gets no ``api_key=``.
#: Never ``$OPENAI_API_KEY``: that is a learner's personal key, and a URL from a slide must not get it.
ENV_API_KEY = "GEMMA_WIDGETS_API_KEY"

#: Seconds a reply may go without a new token (queueing, prefill, a stalled or pinging server)
#: before it ends with an error; also the connect (at most 10 s) and read timeout of every request.
#: ``load_model(url, timeout=...)`` sets it per server.
DEFAULT_TIMEOUT = 60.0

#: Characters of streamed text counted as one token at most: a server sends about one token per
#: piece, and Gemma's longest tokens are 31 characters (runs of spaces, tabs or new lines), so a
#: longer piece counts as several and a server cannot pass ``max_new_tokens`` in a few huge pieces.
TOKEN_CHARS = 64

#: Seconds the usage figures may take after the finish reason before the reply ends without them.
USAGE_SECONDS = 1.0

#: Seconds between checks of Stop and of the deadline while no piece arrives.
STOP_POLL_SECONDS = 0.02

_FINISH = {"stop": Finish.END_OF_TURN, "length": Finish.MAX_NEW_TOKENS}

_reading = threading.local()  # .line: the Line of the reply this thread requests, for the request hook


class ServerError(GenerationError):
    """The server could not be reached, refused a request, or failed during a reply."""


class ServerEngine(Engine):
    """Chat completions streamed from an OpenAI-compatible server at ``url`` (ending in ``/v1``).

    ``model=None`` picks the model the server serves (the first, if it lists several); a name it
    does not serve is an :class:`~gemma_widgets.errors.UnknownModelError` listing what it does.
    ``api_key`` defaults to ``$GEMMA_WIDGETS_API_KEY`` (:data:`ENV_API_KEY`; servers started
    without a key accept any); a ``user:password@`` in ``url`` logs in with HTTP Basic instead.
    ``timeout`` (seconds) bounds connecting (at most 10 s), every read, and the wait for each new
    token of a reply. ``url`` (the attribute) is the URL without credentials; ``model`` is the
    ``openai.OpenAI`` client, for lessons that show the API.
    """

    name = "server"
    can_generate_exact = False
    can_score = False
    why_no_scores = "the server returns no log-probabilities through this client"

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, tokenizer: Any = None):
        import openai  # heavy (pydantic, httpx): only a server's model needs it

        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                math.isfinite(timeout) and timeout > 0):
            raise ServerError(f"timeout must be a number of seconds > 0, not {timeout!r}.")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise UnknownModelError(f"model must be the name of a model the server serves, not {model!r}.")
        url = url.rstrip("/")
        self.url = display_url(url)
        self.timeout = float(timeout)
        self.tokenizer = tokenizer
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        self._authorization = basic_authorization(url) or (f"Bearer {key}" if key else None)
        http = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]})
        self.model = client_class()(  # the client's key is a placeholder: _on_request sets the header
            base_url=self.url, api_key="set-by-gemma-widgets", http_client=http, max_retries=0,
            timeout=openai.Timeout(self.timeout, connect=min(self.timeout, 10.0)))
        self._extras_ok = True  # cleared when the server rejects top_k / repetition penalty
        self._usage_ok = True  # cleared when the server rejects stream_options
        served = self.served_models()
        names = [entry["id"] for entry in served]
        if not names:
            raise ServerError(f"The server at {self.where} lists no models: start it with a model loaded.")
        if model is None:
            model = names[0]
        elif model not in names:
            close = difflib.get_close_matches(model, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownModelError(
                f"The server at {self.where} does not serve a model called {model!r}.{hint} It serves: "
                f"{', '.join(map(repr, names))}. Load one of those with model=..., or model=None for the "
                "first.")
        self.model_name: str = model
        self.context_window = stated_context(served[names.index(model)])

    @property
    def where(self) -> str:
        """The server's URL as messages show it (no credentials)."""
        return self.url

    def _on_request(self, request: Any) -> None:
        """Every request, as it leaves: the kit's key and nothing else from the environment, and a
        connection of its own (``Connection: close``), so hanging up ends this request only. A
        reply's request also reports its socket to the reply's :class:`Line`."""
        for name in {name.lower() for name in request.headers} - SENT_HEADERS:
            del request.headers[name]
        request.headers["Connection"] = "close"
        if self._authorization:
            request.headers["Authorization"] = self._authorization
        line = getattr(_reading, "line", None)
        if line is not None:
            request.extensions["trace"] = line.trace

    def served_models(self) -> list[dict[str, Any]]:
        """The server's ``/v1/models`` entries, as plain data."""
        try:
            return [entry.model_dump() for entry in self.model.models.list().data]
        except Exception as exc:
            raise self.error(exc, "listing its models") from exc

    # --- errors ----------------------------------------------------------------------------
    def _stalled(self) -> ServerError:
        """The error of a reply that got no new token for ``timeout`` seconds."""
        return ServerError(
            f"The server at {self.where} sent no new token within {self.timeout:g} s: it may be busy with "
            "other requests, stuck, or only keeping the connection open. The text so far is kept; send "
            "again, or load it with a longer timeout=...")

    def error(self, exc: BaseException, doing: str,
              streamed: bool = False) -> ServerError | UnknownModelError:
        """``exc`` from the ``openai`` client as a clear, one-line error: what happened, what to do."""
        import openai  # heavy (pydantic, httpx): only a server's model needs it

        where = self.where
        if isinstance(exc, openai.APITimeoutError):
            if doing != "listing its models":
                return self._stalled()
            return ServerError(
                f"The server at {where} did not answer within {self.timeout:g} s while {doing}: it may be "
                "overloaded or stuck. Try again, or load it with a longer timeout=...")
        if isinstance(exc, openai.APIConnectionError):
            if streamed:
                return ServerError(
                    f"The connection to the server at {where} broke during the reply ({cause(exc)}): the "
                    "server may have stopped or restarted. The text so far is kept; check the server, then "
                    "send again.")
            return ServerError(
                f"Could not reach the server at {where} ({cause(exc)}). Check that it is running and that "
                "the URL is its API root (usually ending in /v1).")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            what = "refused the API key" if self._authorization else "wants an API key"
            return ServerError(
                f"The server at {where} {what} (HTTP {exc.status_code}): pass the server's key with "
                f"load_model(url, api_key=...) or set {ENV_API_KEY}. The kit never sends $OPENAI_API_KEY, "
                "a personal key, to a server.")
        if isinstance(exc, openai.NotFoundError):
            if doing == "listing its models":
                return ServerError(
                    f"{where} has no OpenAI-compatible /models endpoint (HTTP 404): use the server's API "
                    "root, usually ending in /v1.")
            try:
                names = ", ".join(repr(e["id"]) for e in self.served_models())
            except GenerationError:
                names = "(could not list them)"
            return UnknownModelError(
                f"The server at {where} does not serve model {self.model_name!r} any more (HTTP 404: "
                f"{server_message(exc)}). It serves: {names}. Load one of those with model=...")
        if isinstance(exc, openai.RateLimitError):
            return ServerError(
                f"The server at {where} is busy (HTTP 429, too many requests: {server_message(exc)}). "
                "Wait a moment, then send again.")
        if isinstance(exc, openai.APIStatusError):
            if 400 <= exc.status_code < 500:
                return ServerError(
                    f"The server at {where} rejected the request (HTTP {exc.status_code}: "
                    f"{server_message(exc)}). Shorten the conversation or change the settings, then send "
                    "again.")
            return ServerError(
                f"The server at {where} failed while {doing} (HTTP {exc.status_code}: "
                f"{server_message(exc)}). Try again; if it keeps failing, look at the server's log.")
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            return ServerError(f"The server at {where} reported an error while {doing}: "
                               f"{server_message(exc)}. The text so far is kept; send again.")
        return ServerError(f"Talking to the server at {where} failed while {doing}: "
                           f"{type(exc).__name__}: {one_line(exc)}")

    # --- generation --------------------------------------------------------------------------
    def _reply_limit(self, prompt: Prompt, settings: Any) -> int:
        """The most new tokens a reply to ``prompt`` may have: ``max_new_tokens``, within what the
        context window leaves after the prompt (counted when a local tokenizer was loaded)."""
        return max(1, min(int(settings.max_new_tokens), self.context_window - len(prompt.input_ids)))

    def request(self, prompt: Prompt, settings: Any) -> dict[str, Any]:
        """The keyword arguments of ``client.chat.completions.create`` for ``prompt``."""
        if not prompt.messages:
            raise GenerationError("A server takes chat messages, and this prompt has token ids only: "
                                  "give the text or the messages.")
        greedy = settings.greedy
        request: dict[str, Any] = {
            "model": self.model_name, "messages": [dict(m) for m in prompt.messages], "stream": True,
            "max_tokens": self._reply_limit(prompt, settings),
            "temperature": 0.0 if greedy else float(settings.temperature),
            "top_p": 1.0 if greedy else float(settings.top_p)}
        extras: dict[str, Any] = {}
        if not greedy and int(settings.top_k) > 0:
            extras["top_k"] = int(settings.top_k)
        if float(settings.repetition_penalty) != 1.0:  # vLLM's name, then llama.cpp's
            extras["repetition_penalty"] = extras["repeat_penalty"] = float(settings.repetition_penalty)
        if extras and self._extras_ok:
            request["extra_body"] = extras
        if self._usage_ok:
            request["stream_options"] = {"include_usage": True}
        return request

    def _open(self, request: dict[str, Any]) -> Any:
        """The streaming response; a server that rejects the optional fields (400, 422) gets the
        request again without them, and is remembered."""
        import openai  # heavy (pydantic, httpx): only a server's model needs it

        attempts = [request]
        if "extra_body" in request:
            attempts.append({k: v for k, v in request.items() if k != "extra_body"})
        if "stream_options" in request:
            attempts.append({k: v for k, v in attempts[-1].items() if k != "stream_options"})
        for i, attempt in enumerate(attempts):
            try:
                stream = self.model.chat.completions.create(**attempt)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if i + 1 < len(attempts):
                    continue
                raise self.error(exc, "starting the reply") from exc
            except Exception as exc:
                raise self.error(exc, "starting the reply") from exc
            if "extra_body" in request and "extra_body" not in attempt:
                self._extras_ok = False
            if "stream_options" in request and "stream_options" not in attempt:
                self._usage_ok = False
            return stream
        raise AssertionError("unreachable")

    def _chunks(self, request: dict[str, Any], stop: threading.Event) -> Generator[Any, None, None]:
        """The stream's chunks, read in a thread of their own, and None every
        :data:`STOP_POLL_SECONDS` that brings none (so the caller keeps its deadline). It ends
        when ``stop`` is set; ending or closing it hangs up the connection, which ends the
        reading thread at once, whatever the server is doing."""
        line = Line()

        def read(put: Callable[[Any], None]) -> None:
            _reading.line = line
            try:
                with self._open(request) as stream:
                    for chunk in stream:
                        if line.hung_up:
                            return
                        put(chunk)
            except GemmaWidgetsError:
                if not line.hung_up:
                    raise
            except BaseException as exc:  # raised in the reader, unless it hung up
                if not line.hung_up:
                    raise self.error(exc, "streaming the reply", streamed=True) from exc

        try:
            for item in threaded(read, idle=STOP_POLL_SECONDS, name="gemma-widgets-server-stream"):
                if stop.is_set():
                    return
                yield item
        finally:
            line.hang_up()

    def stream(self, prompt: Prompt, settings: Any, stop: threading.Event) -> Iterator[Delta]:
        request = self.request(prompt, settings)
        limit = request["max_tokens"]
        counted, text, finish, usage = 0, "", None, None
        last = time.monotonic()  # when the last token (or the request) went out
        with contextlib.closing(self._chunks(request, stop)) as chunks:
            for chunk in chunks:
                if chunk is None:
                    patience = self.timeout if finish is None else min(self.timeout, USAGE_SECONDS)
                    if time.monotonic() - last <= patience:
                        continue
                    if finish is None:
                        raise self._stalled()
                    break  # the reply is whole; the server only kept the stream open
                usage = getattr(chunk, "usage", None) or usage
                piece, reason = chunk_text(chunk)
                if piece:
                    tokens = -(-len(piece) // TOKEN_CHARS)
                    room = limit - counted
                    if tokens > room:  # the server ignores max_tokens: keep what fits, then hang up
                        if room:
                            text += piece[:room * TOKEN_CHARS]
                            yield Delta(piece[:room * TOKEN_CHARS], room)
                        counted, finish = limit, Finish.MAX_NEW_TOKENS
                        break
                    counted += tokens
                    text += piece
                    last = time.monotonic()
                    yield Delta(piece, tokens)
                if reason:
                    finish = _FINISH.get(reason, Finish.END_OF_TURN)
                    last = time.monotonic()
        if finish is None and stop.is_set():
            finish = Finish.STOPPED
        elif finish is None:
            raise ServerError(f"The server at {self.where} ended the stream without finishing the reply (no "
                              "finish reason): another request may have interrupted it, or it restarted. "
                              "The text so far is kept; send again.")
        total = whole(getattr(usage, "completion_tokens", None), 1 if text else 0, limit)
        if total is None and self.tokenizer is not None and text:
            total = len(self.tokenizer(text, add_special_tokens=False).input_ids)
        yield Delta(tokens=total - counted if total is not None else 0, finish=finish,
                    prompt_tokens=whole(getattr(usage, "prompt_tokens", None), 1, self.context_window))

    def __repr__(self) -> str:
        return f"<ServerEngine {self.model_name!r} at {self.where}>"


@dataclass(frozen=True)
class ServerOptions(Options):
    """The server's model name (default: the one it serves), its API key, the seconds to wait for each
    piece of a reply, and a tokenizer folder or hub id to count tokens with (default: an estimate)."""

    model: str | None = None
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    tokenizer: str | None = None


class ServerBackend(Backend):
    """Whatever an OpenAI-compatible server runs, reached through the ``openai`` client."""

    options = ServerOptions

    def unavailable_reason(self, precision: Precision, preset: Preset, hardware: Hardware) -> str | None:
        if preset.fmt != Format.SERVER:
            return "only a server's URL (load_model('http://host:port/v1', model=...)) runs as 'served'"
        return missing("openai")

    def load(self, precision: Precision, preset: Preset, path: str, options: ServerOptions,
             hardware: Hardware) -> tuple[ServerEngine, list[str]]:
        engine = ServerEngine(path, model=options.model, api_key=options.api_key, timeout=options.timeout,
                              tokenizer=load_tokenizer(options.tokenizer) if options.tokenizer else None)
        return engine, [f"server model {engine.model_name!r}"]
