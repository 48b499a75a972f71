"""A hand-written OpenAI-compatible server for the server engine's tests: real HTTP on 127.0.0.1.

It serves one model (``canned``, or the ``/v1/models`` entries a test gives), records every
request's headers and body, and answers chat requests as the test's ``chat(handler, body)`` says:
canned pieces, or the misbehaviour a hostile test needs (``: ping`` comments only, a byte at a
time, text without end, no answer at all). Every loop in a handler ends when the client hangs up
(counted in ``hang_ups``) or when the test's ``with`` block ends, so nothing outlives a test.

Run as a script, it serves one misbehaviour until Ctrl+C, to try the terminal chat against by hand::

    .venv/bin/python tests/server_fakes.py ping --port 18080 &
    printf 'Tell me a story\\n/quit\\n' | .venv/bin/python -m gemma_widgets chat --model http://127.0.0.1:18080/v1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "sk-workshop-secret-1234"

#: The longest any handler loop runs (seconds), should a client never hang up.
HANDLER_LIMIT = 30.0

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"

Chat = Callable[["CannedHandler", dict], None]


def chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    """One server-sent event of a streamed chat completion."""
    delta = {} if content is None else {"content": content}
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "canned",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"], body["choices"] = usage, []
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class CannedHandler(BaseHTTPRequestHandler):
    """Serves ``/v1/models`` and hands chat requests to the test's ``chat``."""

    chat: Chat | None = None
    server: CannedServer

    def log_message(self, *args):  # keep the test output clean
        pass

    def reply_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        self.server.seen_headers.append(dict(self.headers))
        if self.server.auth is None or self.headers.get("Authorization") == self.server.auth:
            return True
        self.reply_json(401, {"error": {"message": "Invalid API key"}})
        return False

    def do_GET(self):
        if not self._authorized():
            return
        if self.path.rstrip("/") != "/v1/models":
            return self.reply_json(404, {"detail": "Not Found"})
        self.reply_json(200, {"object": "list", "data": self.server.models})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._authorized():
            return
        self.server.requests.append(body)
        type(self).chat(self, body)

    # --- streaming ---------------------------------------------------------------------------
    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.flush()

    def send_raw(self, data: bytes) -> bool:
        """Write ``data`` at once; False (and a hang-up counted) once the client is gone."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            self.server.hung_up()
            return False

    def stream(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Headers, then ``pieces`` with ``pause`` seconds after each."""
        self.start_stream()
        for piece in pieces:
            if not self.send_raw(piece) or self.server.closing.wait(pause):
                return

    def keep_sending(self, make: Callable[[int], bytes], pause: float) -> None:
        """``make(0)``, ``make(1)``... every ``pause`` seconds until the client hangs up."""
        i = 0
        while not self.server.closing.wait(pause) and i * pause < self.server.limit:
            if not self.send_raw(make(i)):
                return
            i += 1

    def wait_for_hang_up(self) -> None:
        """Send nothing, not even headers, until the client closes the connection."""
        limit = self.server.limit
        while limit > 0 and not self.server.closing.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            limit -= 0.05
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                self.server.hung_up()
                return


class CannedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[CannedHandler], auth: str | None, models: list[dict], port: int,
                 limit: float):
        super().__init__(("127.0.0.1", port), handler)
        self.auth, self.models, self.limit = auth, models, limit
        self.requests: list[dict] = []
        self.seen_headers: list[dict[str, str]] = []
        self.closing = threading.Event()
        self.hang_ups = 0
        self._lock = threading.Condition()

    def hung_up(self) -> None:
        with self._lock:
            self.hang_ups += 1
            self._lock.notify_all()

    def wait_for_hang_ups(self, count: int, timeout: float) -> bool:
        """Whether ``count`` clients hung up within ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: self.hang_ups >= count, timeout)

    @property
    def port(self) -> int:
        return self.server_address[1]


@contextlib.contextmanager
def canned_server(chat: Chat, auth: str | None = None, models: list[dict] | None = None, port: int = 0,
                  limit: float = HANDLER_LIMIT) -> Iterator[tuple[CannedServer, str]]:
    """A server on ``port`` (a free one by default) answering chat requests with ``chat``; ``auth``
    is the ``Authorization`` header it requires (401 otherwise); no handler loop runs longer than
    ``limit`` seconds. Yields the server and its ``/v1`` URL."""
    handler = type("Handler", (CannedHandler,), {"chat": staticmethod(chat)})
    httpd = CannedServer(handler, auth, models or [{"id": "canned", "object": "model", "owned_by": "me"}],
                         port, limit)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.port}/v1"
    finally:
        httpd.closing.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# --- misbehaviours ----------------------------------------------------------------------------
def pinging(*first: bytes, pause: float) -> Chat:
    """``first``, then only ``: ping`` comments every ``pause`` seconds (what llama.cpp's server and
    sse-starlette's send while a request waits), until the client hangs up."""
    def chat(handler: CannedHandler, body: dict) -> None:
        handler.stream(*first)
        handler.keep_sending(lambda i: PING, pause)

    return chat


def trickling(*first: bytes, pause: float) -> Chat:
    """``first``, then one byte every ``pause`` seconds (of an event it never finishes in time)."""
    event = chunk(" a time")

    def chat(handler: CannedHandler, body: dict) -> None:
        handler.stream(*first)
        handler.keep_sending(lambda i: event[i % len(event):][:1], pause)

    return chat


def endless(pause: float) -> Chat:
    """A word every ``pause`` seconds, whatever ``max_tokens`` says, until the client hangs up."""
    def chat(handler: CannedHandler, body: dict) -> None:
        handler.start_stream()
        handler.keep_sending(lambda i: chunk(f" w{i}"), pause)

    return chat


MODES = {"ping": pinging(chunk("Once upon a time"), pause=1.0), "trickle": trickling(chunk("Once upon"), pause=1.0),
         "endless": endless(pause=0.01)}


def main() -> None:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible server that misbehaves (Ctrl+C ends it).")
    parser.add_argument("mode", choices=sorted(MODES), help="ping: one piece, then only ': ping' comments; "
                        "trickle: one byte a second; endless: words without end, ignoring max_tokens")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    with canned_server(MODES[args.mode], port=args.port, limit=3600) as (httpd, url):
        print(f"serving {args.mode!r} at {url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            httpd.closing.wait()


if __name__ == "__main__":
    main()
