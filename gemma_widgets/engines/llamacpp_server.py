"""A local llama.cpp server (llama-cpp-python's ``python -m llama_cpp.server``) for lessons and tests.

A workshop runs one OpenAI-compatible server that every learner's panel talks to; this starts
the same kind of server on this machine, on the bundled model (the package's GGUF file with the kit's
chat adapter as a llama.cpp LoRA, :mod:`gemma_widgets.offline.gguf_lora`: the ``bundled`` chat model), so
notebook 06, the tests and ``benchmarks/chat_bench.py`` can show and check the server engine without
a network:

>>> from gemma_widgets import ChatPanel, load_model                          # doctest: +SKIP
>>> with start_llamacpp_server() as server:                                  # doctest: +SKIP
...     panel = ChatPanel(load_model(server.url, model=server.model))
...     panel.send("Name three colours.").wait(60)

The server listens on 127.0.0.1 on a free port, uses every core but one (:func:`default_threads`),
renders Gemma's chat template (``--chat_format gemma``: the same prompt as the kit's template) and
serves requests one after another (``--interrupt_requests False``: llama-cpp-python's default cuts a
streaming reply short when another request arrives).
Leaving the ``with`` block stops it by its process id (terminate, then kill), and the server dies
with the process that started it (:mod:`gemma_widgets.host.lifeline`): a killed notebook kernel leaves no
server holding its port. A port another program holds is refused before anything starts, and the
server is reported ready only when the process answering is the one this started.

Upstream answers any web page (CORS ``*``) and asks for no key: bound to anything but loopback (a
workshop's ``host="0.0.0.0"``), the server gets an API key, printed once for the instructor; the
readiness probe sends the key, whether the kit made it or ``api_key=``/``--api_key`` gave it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gemma_widgets.engines.llamacpp import bundled_reason
from gemma_widgets.errors import GemmaWidgetsError, PrecisionUnavailableError
from gemma_widgets.host import lifeline
from gemma_widgets.host.hardware import usable_cores
from gemma_widgets.host.packages import installed
from gemma_widgets.offline.bundled import bundled_gguf
from gemma_widgets.offline.gguf_lora import bundled_lora

#: The name the server gives the bundled model (``load_model(url, model=MODEL_ALIAS)``).
MODEL_ALIAS = "gemma-3-270m"

#: What ``python -m llama_cpp.server`` imports (llama-cpp-python's ``[server]`` extra), and the client.
_NEEDS = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings",
          "openai")

#: Environment variables llama-cpp-python's server reads over its command line (``HOST``, ``PORT``,
#: ``CONFIG_FILE`` in its ``__main__``; ``API_KEY`` as a setting): the launcher's options win.
_OVERRIDES = ("HOST", "PORT", "CONFIG_FILE", "API_KEY")


def unavailable_reason(chat: bool = True) -> str | None:
    """Why a local llama.cpp server cannot start here (a package missing, llama.cpp crashing on this
    CPU; with ``chat``, the bundled chat model's adapter missing or refused:
    :func:`gemma_widgets.engines.llamacpp.bundled_reason`), or None."""
    absent = [name for name in _NEEDS if not installed(name)]
    if absent:
        return (f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not installed "
                "(pip install 'llama-cpp-python[server]' openai)")
    return bundled_reason(chat)


def default_threads() -> int:
    """Threads for a server on this machine: every core but one, which the client needs.

    The client (a notebook kernel, pytest) reads the stream on the same cores; llama.cpp's threads
    wait for each other at every step, so one that loses its core stalls them all. Measured on a
    busy 2-core machine, 32 tokens: 1.8 s with one thread, 2.8 to 28 s with two.
    """
    return max(1, usable_cores() - 1)


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
    #: The key clients send (``load_model(url, api_key=...)``); None when the server asks for none.
    api_key: str | None = field(default=None, repr=False)

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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``127.0.0.1``, ``::1``, ``localhost``): nobody else can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to an address others reach
        return False


def _check_port_free(host: str, port: int) -> None:
    """Raise if something already listens on ``host:port`` (the server would die there with EADDRINUSE
    while the other program answered its readiness probe). SO_REUSEADDR as uvicorn binds: a port
    left in TIME_WAIT by a server that just stopped counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise GemmaWidgetsError(
                f"Port {port} on {host} is already in use ({exc.strerror}): another server holds it. Stop that "
                "server, pick another port, or leave port=None for a free one.") from exc


def _models_answer(url: str, api_key: str | None) -> list[str]:
    """The model names ``url`` serves (``/models``), sending the key if there is one; [] if no answer."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/models", headers=headers), timeout=2) as response:
            data = json.load(response).get("data") if response.status == 200 else None
    except (OSError, ValueError, AttributeError, urllib.error.URLError):
        return []
    return [str(entry.get("id")) for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on ``port`` (so an answer there is its own, not another's);
    True where the system does not say (the model name check must then do)."""
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections(kind="inet"))
    except psutil.AccessDenied:
        return True
    except psutil.NoSuchProcess:
        return False


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--name value`` or ``--name=value``), or None."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def _api_key(host: str, port: int, api_key: str | None, extra_args: Sequence[str]) -> str | None:
    """The key the server will ask for: ``api_key``, or ``--api_key`` in ``extra_args``, or (bound beyond
    loopback) a new one, printed once for the instructor to hand out."""
    given = _option(extra_args, "--api_key")
    if api_key is not None and given is not None and api_key != given:
        raise GemmaWidgetsError("Two different API keys: api_key=... and --api_key in extra_args. Give one.")
    key = api_key if api_key is not None else given
    if key is None and not is_loopback(host):
        key = secrets.token_urlsafe(24)
        print(f"The llama.cpp server listens on {host}, beyond this machine, so it asks for an API key: {key}\n"
              f"Learners connect with load_model('http://<this machine>:{port}/v1', "
              "api_key='<the key>'). It is printed only this once.")
    return key


def launch(gguf: str | Path | None = None, *, lora: str | Path | None = None, model: str = MODEL_ALIAS,
           n_ctx: int = 2048, n_threads: int | None = None, host: str = "127.0.0.1", port: int | None = None,
           startup_timeout_s: float = 120.0, api_key: str | None = None,
           extra_args: Sequence[str] = ()) -> LlamaCppServer:
    """Start the server on ``gguf`` with the LoRA adapter GGUF ``lora`` and wait until it answers
    ``/v1/models`` with ``model``; raise :class:`GemmaWidgetsError` with the end of its output if it
    does not within ``startup_timeout_s``, and before starting anything if ``port`` is taken.

    By default it serves the bundled chat model: the package's file with the kit's chat adapter
    (:func:`gemma_widgets.offline.gguf_lora.bundled_lora`). Name a file to serve it as it is: the bundled base
    model is ``launch(bundled_gguf())`` (:func:`gemma_widgets.offline.bundled.bundled_gguf`).

    ``api_key`` (or ``--api_key`` in ``extra_args``) makes the server ask for that key; bound to
    anything but loopback it gets a new one by default, printed once. The caller stops the server
    (:meth:`LlamaCppServer.stop`); prefer :func:`start_llamacpp_server`, which always does."""
    reason = unavailable_reason(chat=gguf is None)
    if reason:
        raise PrecisionUnavailableError(f"A local llama.cpp server cannot start here: {reason}.")
    if gguf is None:
        gguf, lora = bundled_gguf(), lora or bundled_lora()
    lora_args = ["--lora_path", str(lora)] if lora is not None else []
    threads = n_threads or default_threads()
    if port:
        _check_port_free(host, port)
    else:
        port = free_port(host)
    key = _api_key(host, port, api_key, extra_args)
    key_args = ["--api_key", key] if key is not None and _option(extra_args, "--api_key") is None else []
    command = [sys.executable, "-m", "gemma_widgets.host.lifeline", "llama_cpp.server", "--model", str(gguf),
               "--model_alias", model, "--host", host, "--port", str(port), "--n_ctx", str(n_ctx),
               "--n_threads", str(threads), "--n_threads_batch", str(threads), "--chat_format", "gemma",
               "--interrupt_requests", "False", "--logits_all", "False", "--verbose", "False", *lora_args,
               *key_args, *extra_args]
    env = {name: value for name, value in os.environ.items() if name not in _OVERRIDES}
    log_fd, log_name = tempfile.mkstemp(prefix="llamacpp-server-", suffix=".log")
    with os.fdopen(log_fd, "wb") as log_file:  # a file, not a pipe: a full pipe would block the server
        process = lifeline.popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True)
    where = f"[{host}]" if ":" in host else host
    server = LlamaCppServer(f"http://{where}:{port}/v1", model, process, Path(log_name), key)
    deadline = time.monotonic() + startup_timeout_s
    # ready: our process is alive, serves ``model`` and is the one listening (not another server on the port)
    while not (model in _models_answer(server.url, key) and server.alive() and _listens_on(server.pid, port)):
        if not server.alive() or time.monotonic() > deadline:
            why = (f"exited with status {process.returncode}" if not server.alive()
                   else f"did not answer within {startup_timeout_s:g} s")
            tail = server.log_tail()
            _discard(server)
            hint = (f" Port {port} was taken meanwhile by another program: try again, or leave port=None."
                    if "address already in use" in tail.lower() else "")
            raise GemmaWidgetsError(f"The llama.cpp server on {Path(gguf).name} {why}.{hint} Its output ended "
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
