"""Any OpenAI-compatible server (vLLM, TGI, LocalAI, llama.cpp's server) through the ``openai`` client.

A workshop shares one server: every learner's panel streams chat completions from its URL, so a
2 GB Binder session can chat with Gemma 2 9B. The server runs the chat template and the
sampling; the engine sends the conversation's messages (the system prompt already folded into
the first user turn, since Gemma has no system role) and reads the streamed pieces.

* Stop closes the connection: the server notices the client is gone and stops generating. The
  stream is read in a thread of its own, so Stop ends the reply at once even while the server
  is still queueing or prefilling the request.
* Tokens: one per streamed piece with text (what streaming servers send), corrected at the end
  by the server's usage figures when it gives them (``stream_options.include_usage``), else by
  a local tokenizer when one was loaded with the model.
* Every failure (connection refused, a wrong key, an unknown model, a busy or dying server, a
  read that takes longer than ``timeout``) becomes a :class:`ServerError` whose message says
  what to do; the client's timeout bounds every read, so a reply can never hang.

The server's text and error messages are untrusted: error text is cut to one short line here,
and the views escape everything they show. The API key never appears in a message or a repr.
"""

from __future__ import annotations

import difflib
import math
import os
import queue
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gemma_widgets.engines.base import Delta, Engine, Prompt
from gemma_widgets.errors import GemmaWidgetsError, GenerationError, UnknownModelError

#: The context window assumed when the server does not say (Gemma 2's).
DEFAULT_CONTEXT = 8192

#: Seconds between checks of Stop while no piece arrives (so Stop answers within this).
STOP_POLL_SECONDS = 0.02

#: Fields of a ``/v1/models`` entry that give the model's context: vLLM's, llama.cpp's server's
#: (``meta.n_ctx_train``), and names other servers use.
_CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window", "max_context_length", "n_ctx")

_FINISH = {"stop": "end_of_turn", "length": "max_new_tokens"}

_END = object()


class ServerError(GenerationError):
    """The server could not be reached, refused a request, or failed during a reply."""


def display_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _one_line(text: Any, limit: int = 200) -> str:
    """Untrusted server text as one short line (no control characters)."""
    line = re.sub(r"[\x00-\x1f\x7f-\x9f\s]+", " ", str(text)).strip()
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _server_message(exc: Any) -> str:
    """The server's own error message from an ``openai.APIStatusError`` (or its text)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
        if message:
            return _one_line(message)
    return _one_line(getattr(exc, "message", "") or exc)


def _cause(exc: BaseException) -> str:
    """The lowest-level reason in an exception chain (``Connection refused``...), one line."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = _one_line(exc, 120)
    return text or type(exc).__name__


def _context_window(entry: dict[str, Any]) -> int:
    """The context a ``/v1/models`` entry states, else :data:`DEFAULT_CONTEXT`."""
    sources = [entry, entry.get("meta") or {}]
    for source in sources:
        for key in (*_CONTEXT_FIELDS, "n_ctx_train"):
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return DEFAULT_CONTEXT


class ServerEngine(Engine):
    """Chat completions streamed from an OpenAI-compatible server at ``url`` (ending in ``/v1``).

    ``model=None`` picks the model the server serves (the first, if it lists several); a name it
    does not serve is an :class:`~gemma_widgets.errors.UnknownModelError` listing what it does.
    ``api_key`` defaults to ``$OPENAI_API_KEY`` (servers started without a key accept any).
    ``timeout`` (seconds) bounds connecting and every read of the stream. ``model`` (the
    attribute) is the ``openai.OpenAI`` client, for lessons that show the API.
    """

    name = "server"
    can_generate_exact = False
    can_score = False
    why_no_scores = "the server returns no log-probabilities through this client"

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, tokenizer: Any = None):
        import openai

        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                math.isfinite(timeout) and timeout > 0):
            raise ServerError(f"timeout must be a number of seconds > 0, not {timeout!r}.")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise UnknownModelError(f"model must be the name of a model the server serves, not {model!r}.")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.tokenizer = tokenizer
        self.model = openai.OpenAI(
            base_url=self.url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
            timeout=openai.Timeout(self.timeout, connect=min(self.timeout, 10.0)), max_retries=0)
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
        self.context_window = _context_window(served[names.index(model)])

    @property
    def where(self) -> str:
        """The server's URL as messages show it (no credentials)."""
        return display_url(self.url)

    def served_models(self) -> list[dict[str, Any]]:
        """The server's ``/v1/models`` entries, as plain data."""
        try:
            return [entry.model_dump() for entry in self.model.models.list().data]
        except Exception as exc:
            raise self.error(exc, "listing its models") from exc

    # --- errors ----------------------------------------------------------------------------
    def error(self, exc: BaseException, doing: str,
              streamed: bool = False) -> ServerError | UnknownModelError:
        """``exc`` from the ``openai`` client as a clear, one-line error: what happened, what to do."""
        import openai

        where = self.where
        if isinstance(exc, openai.APITimeoutError):
            return ServerError(
                f"The server at {where} did not answer within {self.timeout:g} s while {doing}: it may be "
                "overloaded or stuck. Try again, or load it with a longer timeout=...")
        if isinstance(exc, openai.APIConnectionError):
            if streamed:
                return ServerError(
                    f"The connection to the server at {where} broke during the reply ({_cause(exc)}): the "
                    "server may have stopped or restarted. The text so far is kept; check the server, then "
                    "send again.")
            return ServerError(
                f"Could not reach the server at {where} ({_cause(exc)}). Check that it is running and that "
                "the URL is its API root (usually ending in /v1).")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return ServerError(
                f"The server at {where} refused the API key (HTTP {exc.status_code}): pass the workshop's "
                "key with load_model(url, api_key=...) or set OPENAI_API_KEY.")
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
                f"{_server_message(exc)}). It serves: {names}. Load one of those with model=...")
        if isinstance(exc, openai.RateLimitError):
            return ServerError(
                f"The server at {where} is busy (HTTP 429, too many requests: {_server_message(exc)}). "
                "Wait a moment, then send again.")
        if isinstance(exc, openai.APIStatusError):
            if 400 <= exc.status_code < 500:
                return ServerError(
                    f"The server at {where} rejected the request (HTTP {exc.status_code}: "
                    f"{_server_message(exc)}). Shorten the conversation or change the settings, then send "
                    "again.")
            return ServerError(
                f"The server at {where} failed while {doing} (HTTP {exc.status_code}: "
                f"{_server_message(exc)}). Try again; if it keeps failing, look at the server's log.")
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            return ServerError(f"The server at {where} reported an error while {doing}: "
                               f"{_server_message(exc)}. The text so far is kept; send again.")
        return ServerError(f"Talking to the server at {where} failed while {doing}: "
                           f"{type(exc).__name__}: {_one_line(exc)}")

    # --- generation --------------------------------------------------------------------------
    def request(self, prompt: Prompt, settings: Any) -> dict[str, Any]:
        """The keyword arguments of ``client.chat.completions.create`` for ``prompt``."""
        if not prompt.messages:
            raise GenerationError("A server takes chat messages, and this prompt has token ids only: "
                                  "give the text or the messages.")
        greedy = settings.greedy
        request: dict[str, Any] = {
            "model": self.model_name, "messages": [dict(m) for m in prompt.messages], "stream": True,
            "max_tokens": int(settings.max_new_tokens),
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
        import openai

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

    def _chunks(self, request: dict[str, Any], stop: threading.Event) -> Iterator[Any]:
        """The stream's chunks, read in a thread of their own, so this returns within
        :data:`STOP_POLL_SECONDS` of Stop even while the server is still queueing or prefilling.
        The reading thread closes the connection on its next wake-up, which stops the server."""
        items: queue.Queue[Any] = queue.Queue()
        finished = threading.Event()  # this reader is done (stopped, failed or abandoned)

        def read() -> None:
            try:
                stream = self._open(request)
                with stream:  # closing the response tells the server the client is gone
                    for chunk in stream:
                        if finished.is_set() or stop.is_set():
                            break
                        items.put(chunk)
            except BaseException as exc:  # raised in the reader below
                items.put(exc if isinstance(exc, GemmaWidgetsError)
                          else self.error(exc, "streaming the reply", streamed=True))
            finally:
                items.put(_END)

        threading.Thread(target=read, daemon=True, name="gemma-widgets-server-stream").start()
        try:
            while not stop.is_set():
                try:
                    item = items.get(timeout=STOP_POLL_SECONDS)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            finished.set()

    def stream(self, prompt: Prompt, settings: Any, stop: threading.Event) -> Iterator[Delta]:
        request = self.request(prompt, settings)
        counted, text, finish, usage = 0, "", None, None
        for chunk in self._chunks(request, stop):
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            for choice in chunk.choices[:1]:
                piece = getattr(choice.delta, "content", None) or ""
                if piece:
                    counted += 1
                    text += piece
                    yield Delta(piece, 1)
                if choice.finish_reason:
                    finish = _FINISH.get(choice.finish_reason, "end_of_turn")
            if stop.is_set():
                break
        if finish is None and stop.is_set():
            finish = "stopped"
        elif finish is None:
            raise ServerError(f"The server at {self.where} ended the stream without finishing the reply (no "
                              "finish reason): another request may have interrupted it, or it restarted. "
                              "The text so far is kept; send again.")
        total = getattr(usage, "completion_tokens", None)
        if not isinstance(total, int) and self.tokenizer is not None and text:
            total = len(self.tokenizer(text, add_special_tokens=False).input_ids)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        yield Delta(tokens=total - counted if isinstance(total, int) else 0, finish=finish,
                    prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None)

    def __repr__(self) -> str:
        return f"<ServerEngine {self.model_name!r} at {self.where}>"
