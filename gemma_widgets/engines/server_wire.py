"""What travels between the kit and an OpenAI-compatible server: the ``openai`` client, bytes that
are not UTF-8, streamed chunks, a connection another thread can hang up, the server's error messages
and context window, and URLs shown without their password. All of it is untrusted text."""

from __future__ import annotations

import base64
import codecs
import contextlib
import functools
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

#: The context window assumed when the server does not say (Gemma 2's).
DEFAULT_CONTEXT = 8192

#: The largest context window believed (16 M tokens, past any model's): a larger figure is broken.
MAX_CONTEXT = 1 << 24

#: Fields of a ``/v1/models`` entry that give the model's context: vLLM's, llama.cpp's server's
#: (``meta.n_ctx_train``), and names other servers use.
CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window", "max_context_length", "n_ctx")

#: The request headers a server gets (plus the kit's ``Authorization``); the ``openai`` client's
#: others (organization, project, ``$OPENAI_CUSTOM_HEADERS``, telemetry) are dropped.
SENT_HEADERS = frozenset({"host", "accept", "accept-encoding", "connection", "content-length", "content-type",
                           "user-agent"})


SURROGATE = re.compile("[\ud800-\udfff]")  # a lone one (a JSON "\udc80") cannot be written as UTF-8






def display_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def one_line(text: Any, limit: int = 200) -> str:
    """Untrusted server text as one short line (no control characters)."""
    line = re.sub(r"[\x00-\x1f\x7f-\x9f\s]+", " ", str(text)).strip()
    return line if len(line) <= limit else line[:limit - 1] + "…"


def server_message(exc: Any) -> str:
    """The server's own error message from an ``openai.APIStatusError`` (or its text)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
        if message:
            return one_line(message)
    return one_line(getattr(exc, "message", "") or exc)


def cause(exc: BaseException) -> str:
    """The lowest-level reason in an exception chain (``Connection refused``...), one line."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = one_line(exc, 120)
    return text or type(exc).__name__


def whole(value: Any, low: int, high: int) -> int | None:
    """``value`` if it is a whole number from ``low`` to ``high``, else None (a figure to ignore)."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def stated_context(entry: dict[str, Any]) -> int:
    """The context a ``/v1/models`` entry states, else :data:`DEFAULT_CONTEXT`."""
    sources = [entry, entry.get("meta") or {}]
    for source in sources:
        for key in (*CONTEXT_FIELDS, "n_ctx_train"):
            value = whole(source.get(key) if isinstance(source, dict) else None, 1, MAX_CONTEXT)
            if value is not None:
                return value
    return DEFAULT_CONTEXT


def chunk_text(chunk: Any) -> tuple[str, str | None]:
    """A streamed chunk's new text (a lone surrogate, which no file or terminal can take, as
    U+FFFD) and finish reason; a malformed chunk has neither."""
    for choice in (getattr(chunk, "choices", None) or [])[:1]:
        text = getattr(getattr(choice, "delta", None), "content", None)
        reason = getattr(choice, "finish_reason", None)
        return (SURROGATE.sub("\ufffd", text) if isinstance(text, str) else "",
                reason if isinstance(reason, str) else None)
    return "", None


def basic_authorization(url: str) -> str | None:
    """The HTTP Basic ``Authorization`` value for a ``user:password@`` in ``url``, else None."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def valid_utf8(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` with every byte sequence that is not UTF-8 replaced by U+FFFD's bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        yield decoder.decode(chunk).encode()
    yield decoder.decode(b"", final=True).encode()


class ReplacingDecoder:
    """The ``openai`` client's server-sent-event decoder, fed :func:`valid_utf8` bytes: one bad
    byte marks its place in the reply instead of failing the whole stream."""

    def __init__(self, decoder: Any):
        self._decoder = decoder

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[Any]:
        return self._decoder.iter_bytes(valid_utf8(iterator))


@functools.cache
def client_class() -> type:
    """``openai.OpenAI`` reading streams through :class:`ReplacingDecoder` (imported on first use)."""
    import openai  # heavy (pydantic, httpx): only a server's model needs it

    class Client(openai.OpenAI):
        def _make_sse_decoder(self) -> Any:
            return ReplacingDecoder(super()._make_sse_decoder())

    return Client


class Line:
    """The socket under one reply's request, so that another thread can hang it up.

    Closing a socket does not wake a thread blocked reading it; shutting it down does, at once,
    whether the server is still to send its headers, sending ``: ping`` comments or nothing. The
    socket comes from httpcore's ``trace`` request extension as each connection is made.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.hung_up = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's callback: keep each new connection's socket (and hang it up if it is too late)."""
        if event.endswith((".connect_tcp.complete", ".connect_unix_socket.complete", ".start_tls.complete")):
            stream = info.get("return_value")
            with self._lock:
                self._socket = stream.get_extra_info("socket") if stream is not None else None
                if self.hung_up:
                    self._shutdown()

    def hang_up(self) -> None:
        with self._lock:
            self.hung_up = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):  # closed already: the reply ended
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)  # not ssl's: no TLS state touched
