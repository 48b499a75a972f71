"""The llama.cpp server launcher, on a stand-in server (tests/fakes/llama_cpp): ports, keys, dying with it."""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orphans
import pytest

from gemma_widgets.engines import llamacpp_server
from gemma_widgets.engines.llamacpp_server import MODEL_ALIAS, launch
from gemma_widgets.errors import GemmaWidgetsError

FAKES = str(Path(__file__).parent / "fakes")


@pytest.fixture
def stand_in(monkeypatch):
    """``launch`` starts the stand-in ``llama_cpp.server`` from tests/fakes, whatever is installed."""
    monkeypatch.setattr(llamacpp_server, "unavailable_reason", lambda chat=True: None)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [FAKES, os.environ.get("PYTHONPATH")])))


@pytest.fixture
def other_server():
    """Another program's OpenAI-compatible server on 127.0.0.1, serving a model of the kit's name."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"data": [{"id": MODEL_ALIAS}]}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _status(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/models", headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _stopped(server) -> None:
    if server is not None:
        llamacpp_server._discard(server)


def test_a_port_another_server_answers_on_is_refused_before_starting(stand_in, other_server):
    """The hostile test: launch(port=P) beside another server reported "ready" pointing at the other one."""
    server = None
    try:
        with pytest.raises(GemmaWidgetsError, match=f"Port {other_server} on 127.0.0.1 is already in use"):
            server = launch("model.gguf", port=other_server, startup_timeout_s=20)
    finally:
        _stopped(server)


def test_ready_means_our_own_process_answers_not_another_on_the_port(stand_in, other_server, monkeypatch):
    """Were the port taken between the check and the bind, our server dies with EADDRINUSE while the other
    answers the probe: that is an error naming the port, never a server pointing at the other program."""
    monkeypatch.setattr(llamacpp_server, "_check_port_free", lambda host, port: None, raising=False)
    server = None
    try:
        with pytest.raises(GemmaWidgetsError, match=f"exited with status 1. Port {other_server} was taken"):
            server = launch("model.gguf", port=other_server, startup_timeout_s=20)
    finally:
        _stopped(server)


def test_an_api_key_in_extra_args_is_sent_by_the_readiness_probe(stand_in):
    """The hostile test: --api_key made the probe fail (it sent no key) until the 120 s timeout."""
    server = launch("model.gguf", extra_args=["--api_key", "s3cret"], startup_timeout_s=15)
    try:
        assert server.api_key == "s3cret" and "s3cret" not in repr(server)
        assert _status(server.url) == 401 and _status(server.url, "s3cret") == 200
    finally:
        _stopped(server)


def test_a_server_bound_beyond_loopback_gets_a_key_printed_once(stand_in, capsys):
    server = launch("model.gguf", host="0.0.0.0", startup_timeout_s=15)
    try:
        key = server.api_key
        assert key and len(key) >= 24 and key not in repr(server)
        assert capsys.readouterr().out.count(key) == 1
        assert f"--api_key {key}" in server.log_tail()  # the server itself asks for it
        assert _status(server.url) == 401 and _status(server.url, key) == 200
    finally:
        _stopped(server)
    local = launch("model.gguf", host="127.0.0.1", startup_timeout_s=15)
    try:
        assert local.api_key is None and _status(local.url) == 200 and not capsys.readouterr().out
    finally:
        _stopped(local)


def test_the_default_server_runs_the_bundled_chat_model_and_a_named_file_runs_as_it_is(stand_in, monkeypatch):
    """launch() serves the package's file with the chat adapter (--lora_path), and asks whether that can
    run here; launch(file) serves the file alone, or with the adapter it is given."""

    asked = []
    monkeypatch.setattr(llamacpp_server, "unavailable_reason", lambda chat=True: asked.append(chat))
    monkeypatch.setattr(llamacpp_server, "bundled_gguf", lambda: Path("/cache/gguf/bundled.gguf"))
    monkeypatch.setattr(llamacpp_server, "bundled_lora", lambda: Path("/cache/gguf-lora-1/lora-adapter-f32.gguf"))
    for args, options, expected in [((), {}, "--lora_path /cache/gguf-lora-1/lora-adapter-f32.gguf"),
                                    (("model.gguf",), {}, None),
                                    (("model.gguf",), {"lora": "mine.gguf"}, "--lora_path mine.gguf")]:
        server = launch(*args, startup_timeout_s=15, **options)
        try:
            command = server.log_tail()
            assert ("--model /cache/gguf/bundled.gguf" in command) == (not args)
            assert (expected in command) if expected else "--lora_path" not in command
        finally:
            _stopped(server)
    assert asked == [True, False, False]


LAUNCHER = """
import time
from gemma_widgets.engines import llamacpp_server
llamacpp_server.unavailable_reason = lambda chat=True: None
server = llamacpp_server.launch("model.gguf", startup_timeout_s=60)
print(server.pid, server.url.rsplit(":", 1)[1].split("/")[0], flush=True)
time.sleep(300)
"""


def test_the_server_dies_with_its_killed_launcher_and_frees_its_port():
    """The hostile test: the server outlived a killed launcher (a dead kernel) and kept its port."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [FAKES, os.environ.get("PYTHONPATH")]))}
    pid = 0
    with orphans.parent_process(LAUNCHER, env) as launcher:
        try:
            line = orphans.first_line(launcher, 60)
            assert len(line.split()) == 2, f"the launcher did not start the server: {line!r}"
            pid, port = map(int, line.split())
            assert orphans.alive(pid)
            launcher.kill()
            launcher.wait(10)
            assert orphans.gone_within(pid, 5), "the server outlived its killed launcher"
            with socket.socket() as sock:  # the port is free again
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
        finally:
            if pid:
                orphans.kill_if_ours(pid, "llama_cpp.server")
