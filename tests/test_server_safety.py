"""The server engine against a hostile OpenAI-compatible server: keys, deadlines, lengths, figures.

Each test runs a hand-written server (:mod:`server_fakes`) on 127.0.0.1 that misbehaves one way
(sends only ``: ping`` comments, trickles a byte at a time, ignores ``max_tokens``, reports
impossible figures, sends bytes that are not UTF-8) and checks that the client holds to what it
was asked: it sends only the kit's key, ends a reply that makes no progress, hangs up on Stop,
and stops at ``max_new_tokens`` whatever the server does. No model is needed.
"""

from __future__ import annotations

import base64
import threading
import time

import psutil
import pytest
from server_fakes import DONE, SECRET, canned_server, chunk, endless, pinging, trickling

pytest.importorskip("openai")

from gemma_widgets import (
    bench,  # noqa: E402
    load_model,
)
from gemma_widgets.cli import main  # noqa: E402
from gemma_widgets.engines import server  # noqa: E402
from gemma_widgets.engines.base import SamplingSettings  # noqa: E402
from gemma_widgets.engines.server import ServerError  # noqa: E402
from gemma_widgets.errors import GemmaWidgetsError  # noqa: E402
from gemma_widgets.session import ChatSession  # noqa: E402

PERSONAL = "sk-personal-openai-key-0000"
ENV_API_KEY = "GEMMA_WIDGETS_API_KEY"  # the kit's own variable, named in the README


@pytest.fixture(autouse=True)
def _no_keys_in_the_environment(monkeypatch):
    for name in (ENV_API_KEY, "OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
                 "OPENAI_CUSTOM_HEADERS", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def _session(url: str, max_new_tokens: int = 8, **load) -> ChatSession:
    return ChatSession(load_model(url, **load), settings=SamplingSettings(temperature=0,
                                                                          max_new_tokens=max_new_tokens))


def _sockets_to(port: int) -> int:
    return sum(bool(c.raddr) and c.raddr.port == port for c in psutil.Process().net_connections("tcp"))


def _within(seconds: float, condition) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _hello(handler, body):
    handler.stream(chunk("Hello"), chunk(" there"), chunk(finish="stop"), DONE)


# --- 1: keys ----------------------------------------------------------------------------------
def test_the_personal_openai_key_and_other_openai_settings_never_reach_a_server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", PERSONAL)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-0000")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-personal")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-personal")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Api-Key: sk-custom-0000")
    with canned_server(_hello) as (httpd, url):
        session = _session(url)
        session.send("Hi")
        assert session.wait(10) and session.history[-1]["content"] == "Hello there"
    sent = " ".join(f"{k}: {v}" for headers in httpd.seen_headers for k, v in headers.items())
    assert len(httpd.seen_headers) == 2  # the model list and the chat request
    for secret in (PERSONAL, "sk-admin", "org-personal", "proj-personal", "sk-custom", "Authorization"):
        assert secret not in sent


def test_only_api_key_or_the_kits_variable_is_sent(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", PERSONAL)
    with canned_server(_hello, auth=f"Bearer {SECRET}") as (httpd, url):
        with pytest.raises(ServerError, match=f"wants an API key .*401.*api_key=.*{ENV_API_KEY}") as info:
            load_model(url)
        assert PERSONAL not in str(info.value)
        monkeypatch.setenv(ENV_API_KEY, SECRET)
        session = _session(url)
        session.send("Hi")
        assert session.wait(10) and session.history[-1]["content"] == "Hello there"
        monkeypatch.setenv(ENV_API_KEY, "sk-some-other-server")
        lm = load_model(url, api_key=SECRET)  # api_key= comes first (a 401 otherwise)
        for text in (repr(lm), repr(lm.engine), repr(lm.preset), lm.engine.url, str(lm.model.base_url)):
            assert SECRET not in text


# --- 10: a password in the URL ----------------------------------------------------------------
def test_a_password_in_the_url_logs_in_and_is_shown_nowhere(capsys):
    basic = "Basic " + base64.b64encode(b"alice:pa55word").decode()
    with canned_server(_hello, auth=basic) as (httpd, url):
        secret_url = url.replace("http://", "http://alice:pa55word@")
        session = _session(secret_url)
        session.send("Hi")
        assert session.wait(10) and session.history[-1]["content"] == "Hello there"
        lm = session.loaded
        shown = [repr(lm), repr(lm.preset), repr(lm.engine), lm.engine.url, str(lm.model.base_url), lm.notes]
        assert main(["prepare", "--model", secret_url]) == 0
    shown.append(capsys.readouterr())
    assert url in str(shown) and "pa55word" not in str(shown)


def test_bench_through_a_url_with_a_password_logs_in_and_shows_it_nowhere():
    basic = "Basic " + base64.b64encode(b"alice:pa55word").decode()
    with canned_server(_hello, auth=basic) as (httpd, url):
        secret_url = url.replace("http://", "http://alice:pa55word@")
        (result,) = bench.run(model=secret_url, variants=["served"], new_tokens=2, repeats=1, warmup=0,
                              quality=False, timeout_s=60)
    assert result.status == "ok", result.error  # the worker logged in
    assert result.model == url  # what the results table and files show


def test_bench_keeps_no_key_in_a_variant_name():
    from gemma_widgets.engines.llamacpp_server import free_port

    with pytest.raises(GemmaWidgetsError, match=f"{ENV_API_KEY}, not as api_key=") as info:
        bench.run(model=f"http://127.0.0.1:{free_port()}/v1", variants=[f"served+api_key={SECRET}"],
                  quality=False, repeats=1, warmup=0, timeout_s=60)
    assert SECRET not in str(info.value)


# --- 3: a reply that makes no progress, and Stop ------------------------------------------------
def test_a_server_that_only_pings_ends_the_reply_at_the_deadline():
    with canned_server(pinging(chunk("Once upon"), pause=0.05)) as (httpd, url):
        session = _session(url, timeout=1)
        session.send("Tell me a story")
        assert session.wait(10), "the reply never ended"
        assert httpd.wait_for_hang_ups(1, 5), "the client kept the connection open"
    message = session.conversation.messages[-1]
    assert message.content == "Once upon" and "sent no new token within 1 s" in message.error
    assert "text so far is kept" in message.error


def test_a_server_that_trickles_a_byte_at_a_time_ends_the_reply_at_the_deadline():
    with canned_server(trickling(chunk("Once upon"), pause=0.05)) as (httpd, url):
        session = _session(url, timeout=1)
        session.send("Tell me a story")
        assert session.wait(10), "the reply never ended"
        assert httpd.wait_for_hang_ups(1, 5), "the client kept the connection open"
    message = session.conversation.messages[-1]
    assert message.content == "Once upon" and "sent no new token within 1 s" in message.error


def test_a_finished_reply_ends_even_if_the_server_keeps_pinging():
    with canned_server(pinging(chunk("Done"), chunk(finish="stop"), pause=0.05)) as (httpd, url):
        session = _session(url)  # the default deadline, a minute: the reply must end long before
        session.send("Hi")
        assert session.wait(5), "the finished reply never ended"
        assert httpd.wait_for_hang_ups(1, 5)
    assert session.history[-1]["content"] == "Done" and session.generation.error is None
    assert session.generation.stats.stop_reason == "end_of_turn"


def test_stop_hangs_up_and_ends_the_reading_thread():
    with canned_server(pinging(chunk("Once"), pause=0.05)) as (httpd, url):
        session = _session(url, timeout=30)
        before = threading.active_count()
        for _ in range(5):
            generation = session.send("Tell me a story")
            assert _within(5, lambda: session.generation.text), "the reply never started"
            session.stop()
            assert session.wait(2) and generation.stats.stop_reason == "stopped"
        assert _within(2, lambda: threading.active_count() <= before), "reading threads outlived Stop"
        assert _within(2, lambda: _sockets_to(httpd.port) == 0), "connections outlived Stop"
        assert httpd.wait_for_hang_ups(5, 2), "the server never saw the client go"


def test_stop_before_the_server_answers_hangs_up_too():
    with canned_server(lambda handler, body: handler.wait_for_hang_up()) as (httpd, url):
        session = _session(url, timeout=30)
        before = threading.active_count()
        session.send("Hello")
        assert _within(5, lambda: httpd.requests), "the request never arrived"
        session.stop()
        assert session.wait(2)
        assert _within(2, lambda: threading.active_count() <= before), "the reading thread outlived Stop"
        assert httpd.wait_for_hang_ups(1, 2), "the request stayed queued on the server"


# --- 4: the client stops at max_new_tokens and the context window ------------------------------
def test_a_server_that_ignores_max_tokens_is_cut_at_max_new_tokens():
    with canned_server(endless(pause=0.001)) as (httpd, url):
        session = _session(url, max_new_tokens=8)
        session.send("Count")
        assert session.wait(10), "the reply never ended"
        assert httpd.wait_for_hang_ups(1, 5), "the client kept reading"
    assert httpd.requests[0]["max_tokens"] == 8
    assert session.history[-1]["content"] == "w0 w1 w2 w3 w4 w5 w6 w7"
    stats = session.generation.stats
    assert (stats.new_tokens, stats.stop_reason) == (8, "max_new_tokens")


def test_the_context_window_bounds_a_reply_and_a_huge_piece_counts_as_many_tokens():
    models = [{"id": "small", "object": "model", "owned_by": "me", "max_model_len": 12}]

    def flood(handler, body):
        handler.stream(chunk("x" * 100_000), chunk(finish="stop"), DONE)

    with canned_server(flood, models=models) as (httpd, url):
        session = _session(url, max_new_tokens=100)
        assert session.window == 12
        session.send("Write")
        assert session.wait(10)
    assert httpd.requests[0]["max_tokens"] == 12
    assert session.history[-1]["content"] == "x" * (12 * server.TOKEN_CHARS)
    stats = session.generation.stats
    assert (stats.new_tokens, stats.stop_reason) == (12, "max_new_tokens")


def test_an_honest_reply_of_exactly_max_new_tokens_keeps_the_servers_figures():
    def exact(handler, body):
        handler.stream(*(chunk(f" w{i}") for i in range(4)), chunk(finish="length"),
                       chunk(usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}), DONE)

    with canned_server(exact) as (httpd, url):
        session = _session(url, max_new_tokens=4)
        session.send("Count")
        assert session.wait(10)
    stats = session.generation.stats
    assert (stats.prompt_tokens, stats.new_tokens, stats.stop_reason) == (9, 4, "max_new_tokens")


# --- 14: figures no server could report ---------------------------------------------------------
@pytest.mark.parametrize("prompt_tokens, completion_tokens",
                         [(-100, -5), (10**30, 10**30), ("9", 2.5)], ids=["negative", "huge", "not-whole"])
def test_impossible_usage_figures_are_ignored(prompt_tokens, completion_tokens):
    def liar(handler, body):
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": 0}
        handler.stream(chunk("One"), chunk(" two"), chunk(" three"), chunk(finish="stop"), chunk(usage=usage),
                       DONE)

    with canned_server(liar) as (_, url):
        session = _session(url)
        session.send("Count")
        assert session.wait(10)
    stats = session.generation.stats
    assert (stats.prompt_tokens, stats.new_tokens) == (0, 3)  # the pieces counted, not the server's figures
    assert stats.tokens_per_second >= 0 and session.token_count() == 3


@pytest.mark.parametrize("window", [10**30, 2**31, -1, True])
def test_an_impossible_context_window_is_ignored(window):
    models = [{"id": "canned", "object": "model", "owned_by": "me", "max_model_len": window}]
    with canned_server(_hello, models=models) as (_, url):
        assert load_model(url).context_window == 8192


# --- 18: bytes that are not UTF-8 -----------------------------------------------------------------
def test_bytes_that_are_not_utf8_are_marked_and_the_reply_goes_on():
    bad = chunk("caf\u00e9").replace(b"\\u00e9", b"\xff\xfe")  # two bytes no UTF-8 text has
    lone = chunk("x").replace(b'"x"', b'"\\udc80 half"')  # a JSON escape of half a surrogate pair

    def garbled(handler, body):
        handler.stream(bad, chunk(" au lait"), lone, chunk(finish="stop"), DONE)

    with canned_server(garbled) as (_, url):
        session = _session(url)
        session.send("Coffee?")
        assert session.wait(10)
    message = session.conversation.messages[-1]
    assert message.error is None
    assert message.content == "caf\ufffd\ufffd au lait\ufffd half"
    message.content.encode("utf-8")  # whatever the server sent, the reply can be saved and printed
