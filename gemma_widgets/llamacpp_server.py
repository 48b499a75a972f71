"""A local llama.cpp server (llama-cpp-python's ``python -m llama_cpp.server``) for lessons and tests.

A workshop runs one OpenAI-compatible server that every learner's panel talks to; this starts
the same kind of server on this machine, on the bundled GGUF file, so notebook 06, the tests and
``benchmarks/chat_bench.py`` can show and check the server engine without a network:

>>> from gemma_widgets import ChatPanel, load_model                          # doctest: +SKIP
>>> with start_llamacpp_server() as server:                                  # doctest: +SKIP
...     panel = ChatPanel(load_model(server.url, model=server.model))
...     panel.send("Name three colours.").wait(60)

The server listens on 127.0.0.1 on a free port, uses every core but one (:func:`default_threads`),
renders Gemma's chat template (``--chat_format gemma``: the same prompt as the kit's template) and
serves requests one after another (``--interrupt_requests False``: llama-cpp-python's default cuts a
streaming reply short when another request arrives).
Leaving the ``with`` block stops it by its process id (terminate, then kill).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_widgets.errors import GemmaWidgetsError, PrecisionUnavailableError

#: The name the server gives the bundled model (``load_model(url, model=MODEL_ALIAS)``).
MODEL_ALIAS = "gemma-3-270m"

#: What ``python -m llama_cpp.server`` imports (llama-cpp-python's ``[server]`` extra), and the client.
_NEEDS = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings",
          "openai")


def unavailable_reason() -> str | None:
    """Why a local llama.cpp server cannot start here (a package missing, or llama.cpp crashing on
    this CPU: :func:`gemma_widgets.engines.llamacpp.unavailable_reason`), or None."""
    missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
                "(pip install 'llama-cpp-python[server]' openai)")
    from gemma_widgets._bundled import bundled_gguf
    from gemma_widgets.engines.llamacpp import unavailable_reason as llamacpp_reason

    return llamacpp_reason(str(bundled_gguf()))


def default_threads() -> int:
    """Threads for a server on this machine: every core but one, which the client needs.

    The client (a notebook kernel, pytest) reads the stream on the same cores; llama.cpp's threads
    wait for each other at every step, so one that loses its core stalls them all. Measured on a
    busy 2-core machine, 32 tokens: 1.8 s with one thread, 2.8 to 28 s with two.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LlamaCppServer:
    """A running server: its ``url`` (the API root, ending in ``/v1``), the ``model`` name it
    serves, and its ``process``; its output goes to ``log``."""

    url: str
    model: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's output (for error messages)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server by its process id: SIGTERM, then SIGKILL after ``grace_s`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _models_answer(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
            return response.status == 200 and bool(json.load(response).get("data"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


def launch(gguf: str | Path | None = None, *, model: str = MODEL_ALIAS, n_ctx: int = 2048,
           n_threads: int | None = None, host: str = "127.0.0.1", port: int | None = None,
           startup_timeout_s: float = 120.0, extra_args: Sequence[str] = ()) -> LlamaCppServer:
    """Start the server on ``gguf`` (default: the bundled model's file) and wait until ``/v1/models``
    answers; raise :class:`GemmaWidgetsError` with the end of its output if it does not within
    ``startup_timeout_s``. The caller stops it (:meth:`LlamaCppServer.stop`); prefer
    :func:`start_llamacpp_server`, which always does."""
    reason = unavailable_reason()
    if reason:
        raise PrecisionUnavailableError(f"A local llama.cpp server cannot start here: {reason}.")
    if gguf is None:
        from gemma_widgets._bundled import bundled_gguf

        gguf = bundled_gguf()
    threads = n_threads or default_threads()
    port = port or free_port(host)
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", model,
               "--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--chat_format", "gemma", "--interrupt_requests", "False",
               "--logits_all", "False", "--verbose", "False", *extra_args]
    log_fd, log_name = tempfile.mkstemp(prefix="llamacpp-server-", suffix=".log")
    with os.fdopen(log_fd, "wb") as log_file:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = LlamaCppServer(f"http://{host}:{port}/v1", model, process, Path(log_name))
    deadline = time.monotonic() + startup_timeout_s
    while not _models_answer(server.url):
        if not server.alive() or time.monotonic() > deadline:
            why = (f"exited with status {process.returncode}" if not server.alive()
                   else f"did not answer within {startup_timeout_s:g} s")
            tail = server.log_tail()
            _discard(server)
            raise GemmaWidgetsError(f"The llama.cpp server on {Path(gguf).name} {why}. Its output ended "
                                    f"with:\n{tail}")
        time.sleep(0.25)
    return server


def _discard(server: LlamaCppServer) -> None:
    server.stop()
    with contextlib.suppress(OSError):
        server.log.unlink()


@contextlib.contextmanager
def start_llamacpp_server(gguf: str | Path | None = None, **options: Any) -> Iterator[LlamaCppServer]:
    """A llama.cpp server for the ``with`` block (see :func:`launch` for the options), stopped after it."""
    server = launch(gguf, **options)
    try:
        yield server
    finally:
        _discard(server)
