"""The server engine: the chat panel and the harness against a real OpenAI-compatible server.

The server is llama.cpp's (``python -m llama_cpp.server``) on the bundled GGUF, started once for
the module on 127.0.0.1 and stopped by its process id; the test of a crash starts a second one
and kills it. The first tests need no server: they check the error messages of the failures a
workshop meets (nothing listening, a server that never answers, a wrong key, a busy server, a
stream that stalls or ends early) through the real ``openai`` client and real HTTP.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from server_fakes import DONE, SECRET, canned_server, chunk

pytestmark = pytest.mark.integration
pytest.importorskip("openai")

from gemma_widgets import bench, load_model  # noqa: E402
from gemma_widgets.engines.base import SamplingSettings  # noqa: E402
from gemma_widgets.engines.llamacpp_server import free_port, start_llamacpp_server, unavailable_reason  # noqa: E402
from gemma_widgets.engines.server import ServerError  # noqa: E402
from gemma_widgets.errors import UnknownModelError  # noqa: E402
from gemma_widgets.session import ChatSession  # noqa: E402
from gemma_widgets.widgets.chat import ChatPanel  # noqa: E402

STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle."


# --- failures without a model: real HTTP, canned answers ------------------------------------
def _reply(url: str, timeout: float = 5.0, **load) -> tuple[ChatSession, float]:
    session = ChatSession(load_model(url, timeout=timeout, **load),
                          settings=SamplingSettings(temperature=0, max_new_tokens=8))
    start = time.perf_counter()
    session.send("Hello")
    assert session.wait(30), "the reply never ended"
    return session, time.perf_counter() - start


def test_nothing_listening_is_a_clear_error_at_once():
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(ServerError, match="Could not reach the server at .*Connection refused.*running"):
        load_model(url, model="gemma")
    assert time.perf_counter() - start < 5


def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.perf_counter()
        with pytest.raises(ServerError, match="did not answer within 1 s"):
            load_model(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", timeout=1)
        assert time.perf_counter() - start < 5


def test_a_wrong_key_and_a_wrong_url_say_what_to_do_and_never_show_the_key():
    with canned_server(lambda handler, body: None, auth=f"Bearer {SECRET}") as (_, url):
        with pytest.raises(ServerError, match="refused the API key .*401.*api_key") as info:
            load_model(url, api_key="sk-wrong-key-5678")
        assert "sk-wrong-key-5678" not in str(info.value)
        lm = load_model(url, api_key=SECRET)
        assert lm.engine.model_name == "canned" and lm.precision == "served"
        for text in (repr(lm), repr(lm.engine), str(lm.engine), " ".join(lm.notes)):
            assert SECRET not in text
        with pytest.raises(ServerError, match="no OpenAI-compatible /models endpoint.*ending in /v1"):
            load_model(url.removesuffix("/v1"), api_key=SECRET)


def test_a_busy_server_is_a_notice_in_the_panel():
    def busy(handler, body):
        handler.reply_json(429, {"error": {"message": "Too many requests: 30 in the queue"}})

    with canned_server(busy) as (_, url):
        panel = ChatPanel(load_model(url), settings=SamplingSettings(temperature=0, max_new_tokens=8))
        panel.send("Hello")
        assert panel.wait(10)
        assert "busy (HTTP 429" in panel.notice.value and "30 in the queue" in panel.notice.value
        assert panel.session.generation.stats.stop_reason == "error"
        assert not panel.send_button.disabled and panel.stop_button.disabled


def test_a_stalled_stream_ends_at_the_timeout_with_the_text_so_far():
    def stall(handler, body):
        handler.stream(chunk("Once upon"), chunk(" a time"), pause=3)

    with canned_server(stall) as (_, url):
        session, seconds = _reply(url, timeout=1)
    message = session.conversation.messages[-1]
    assert message.content == "Once upon" and "sent no new token within 1 s" in message.error
    assert seconds < 2.9  # no new token for 1 s ended it; the server's next piece was still 2 s away


def test_a_stream_cut_short_is_an_error_not_a_finished_reply():
    def cut(handler, body):
        handler.stream(chunk("Once upon"), DONE)

    with canned_server(cut) as (_, url):
        session, _ = _reply(url)
    message = session.conversation.messages[-1]
    assert message.content == "Once upon" and "without finishing the reply" in message.error


def test_settings_reach_the_server_and_rejected_extras_are_dropped_once():
    def picky(handler, body):
        if "stream_options" in body or "top_k" in body:
            return handler.reply_json(400, {"error": {"message": f"unknown fields in {sorted(body)}"}})
        handler.stream(chunk("Hi"), chunk(" there"), chunk(finish="length"), DONE)

    with canned_server(picky) as (httpd, url):
        session = ChatSession(load_model(url), settings=SamplingSettings(
            temperature=0.5, top_p=0.8, top_k=20, max_new_tokens=2, repetition_penalty=1.3))
        assert session.send("Hello").wait(10)
        assert session.send("Again").wait(10)
    first, *retries = httpd.requests[:3]
    assert (first["temperature"], first["top_p"], first["max_tokens"]) == (0.5, 0.8, 2)
    assert (first["top_k"], first["repetition_penalty"], first["repeat_penalty"]) == (20, 1.3, 1.3)
    assert "stream_options" not in retries[-1] and "top_k" not in retries[-1]
    assert len(httpd.requests) == 4  # the second reply went out without the rejected fields at once
    assert session.history[-1]["content"] == "Hi there"
    assert session.generation.stats.stop_reason == "max_new_tokens"
    assert session.generation.stats.new_tokens == 2


# --- a real server: llama.cpp on the bundled GGUF ---------------------------------------------
@pytest.fixture(scope="module")
def server():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no local llama.cpp server: {reason}")
    with start_llamacpp_server(n_ctx=2048) as running:
        yield running


@pytest.fixture(scope="module")
def served(server):
    return load_model(server.url, model=server.model)


def _forget_prompt(lm, server) -> None:
    """Make the server's next prompt start from scratch (but for ``<bos>``).

    llama-cpp-python keeps the KV cache of the previous prompt and computes only what differs; a
    prompt computed in a shorter batch gets logits that differ in the last bits, and the bundled
    base model has near-ties that this flips (measured: one greedy token changed). A one-token
    request on another prompt before each of two compared requests makes them compute alike.
    """
    lm.model.completions.create(model=server.model, prompt="Hello", max_tokens=1, temperature=0)


def _first_text(panel: ChatPanel) -> threading.Event:
    seen = threading.Event()
    panel.session.on_text.append(lambda text: seen.set())
    return seen


def test_the_panel_streams_a_reply_from_the_server(served, server):
    assert served.engine.name == "server" and served.engine.model_name == server.model
    panel = ChatPanel(served, settings=SamplingSettings(temperature=0, max_new_tokens=24))
    texts: list[str] = []
    panel.session.on_text.append(texts.append)
    panel.send("Name three colours.")
    assert panel.wait(60)
    reply = panel.history[-1]
    assert reply["role"] == "assistant" and reply["content"]
    assert len(texts) >= 2 and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert texts[-1].strip() == reply["content"]
    stats = panel.session.generation.stats
    assert stats.stop_reason in ("end_of_turn", "max_new_tokens") and 0 < stats.new_tokens <= 24
    assert stats.ttft_s is not None and "tok/s" in panel.status.value and panel.notice.value == ""


def test_the_server_reads_the_prompt_the_kit_writes(server):
    """With the kit's tokenizer given, the panel's prompt and the server's are the same tokens,
    and the reply is what the server makes of the kit's own rendering of the chat."""
    from gemma_widgets.offline.bundled import prepare_bundled

    lm = load_model(server.url, model=server.model, tokenizer=str(prepare_bundled()))
    session = ChatSession(lm, settings=SamplingSettings(temperature=0, max_new_tokens=16))
    _forget_prompt(lm, server)
    session.send("Name three colours.")
    assert session.wait(60)
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}],
                                            tokenize=False, add_generation_prompt=True)
    _forget_prompt(lm, server)
    raw = lm.model.completions.create(model=server.model, prompt=text.removeprefix("<bos>"), max_tokens=16,
                                      temperature=0)  # the server adds <bos> itself
    assert session.history[-1]["content"] == raw.choices[0].text.strip()
    stats = session.generation.stats  # counted with the local tokenizer: the server's figures
    assert stats.prompt_tokens == raw.usage.prompt_tokens and stats.new_tokens == raw.usage.completion_tokens


def test_top_k_reaches_the_server(served, server):
    """top-k 1 at temperature 1 can only pick the greedy token: the replies must be equal."""
    _forget_prompt(served, server)
    greedy = served.generate("Tell me about the sea.", max_new_tokens=16, temperature=0)
    _forget_prompt(served, server)
    top1 = served.generate("Tell me about the sea.", max_new_tokens=16, temperature=1.0, top_p=1.0, top_k=1)
    assert greedy and top1 == greedy


def test_stop_mid_reply_keeps_the_text_and_frees_the_server(served):
    panel = ChatPanel(served, settings=SamplingSettings(temperature=0, max_new_tokens=1500))
    seen = _first_text(panel)
    generation = panel.send(STORY)
    assert seen.wait(60)
    start = time.perf_counter()
    panel.stop()
    assert panel.wait(5)
    assert time.perf_counter() - start < 1.0
    message = panel.session.conversation.messages[-1]
    assert generation.stats.stop_reason == "stopped" and message.stopped and message.content
    assert generation.stats.new_tokens < 1500 and "stopped" in panel.status.value
    # the server stopped too: the next request is not queued behind 1500 tokens
    again = ChatPanel(served, settings=SamplingSettings(temperature=0, max_new_tokens=4))
    again.send("Hello")
    assert again.wait(60)
    assert again.session.generation.stats.ttft_s < 8


def test_a_killed_server_mid_reply_leaves_a_clear_notice_and_a_usable_panel():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no local llama.cpp server: {reason}")
    with start_llamacpp_server(n_ctx=2048) as doomed:
        panel = ChatPanel(load_model(doomed.url, model=doomed.model, timeout=20),
                          settings=SamplingSettings(temperature=0, max_new_tokens=1500))
        seen = _first_text(panel)
        generation = panel.send(STORY)
        assert seen.wait(60)
        doomed.kill()
        start = time.perf_counter()
        assert panel.wait(25), "the panel hung on a dead server"
        assert time.perf_counter() - start < 25
    message = panel.session.conversation.messages[-1]
    assert generation.stats.stop_reason == "error" and message.content  # the partial reply is kept
    assert "broke during the reply" in message.error
    assert "broke during the reply" in panel.notice.value and "text so far is kept" in panel.notice.value
    assert not panel.send_button.disabled and panel.stop_button.disabled
    start = time.perf_counter()
    panel.send("Are you there?")  # usable again: the next message fails fast, with what to do
    assert panel.wait(15)
    assert "Could not reach the server" in panel.notice.value and time.perf_counter() - start < 15
    assert [m.role for m in panel.session.conversation.messages] == ["user", "assistant"] * 2


def test_a_wrong_model_name_is_named_at_load(server):
    with pytest.raises(UnknownModelError) as info:
        load_model(server.url, model="gemma-2-9b-it")
    assert "'gemma-2-9b-it'" in str(info.value) and f"'{server.model}'" in str(info.value)
    assert load_model(server.url).engine.model_name == server.model  # model=None: the one it serves


def test_eight_panels_at_once_each_get_their_own_reply(served):
    topics = ["apples", "bridges", "comets", "deserts", "engines", "forests", "glaciers", "harbours"]
    prompts = [f"{topic.capitalize()}: write one sentence about {topic}." for topic in topics]
    settings = SamplingSettings(temperature=0, max_new_tokens=12)
    alone = [served.generate(p, max_new_tokens=12, temperature=0).strip() for p in prompts]
    assert len(set(alone)) >= 6, f"the prompts should get different replies: {alone}"
    panels = [ChatPanel(served, settings=SamplingSettings(**vars(settings))) for _ in prompts]
    start = time.perf_counter()
    generations = [panel.send(prompt) for panel, prompt in zip(panels, prompts, strict=True)]
    assert all(panel.wait(120) for panel in panels)
    assert time.perf_counter() - start < 120
    for panel, generation, expected in zip(panels, generations, alone, strict=True):
        assert generation.error is None and generation.stats.stop_reason in ("end_of_turn", "max_new_tokens")
        assert panel.history[-1]["content"] == expected


def test_bench_times_the_server_from_its_stream(server):
    results = bench.run(model=server.url, variants=[f"served+model={server.model}"], new_tokens=8,
                        repeats=2, warmup=1, passage_tokens=64, timeout_s=300)
    (result,) = results
    assert result.status == "ok", result.error
    assert result.engine == "server" and result.ttft_ms > 0 and result.decode_tps > 0
    assert result.perplexity is None
    assert any("perplexity unavailable" in note and "log-probabilities" in note for note in result.notes)
