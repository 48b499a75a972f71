"""Bad values anywhere get a clear message from gemma_widgets.errors, never a raw exception."""

from __future__ import annotations

import json
import math
import warnings

import psutil
import pytest
from fakes import scripted

from gemma_widgets import bench, load_model
from gemma_widgets.bench import Result, measure
from gemma_widgets.bench.records import Step
from gemma_widgets.engines.base import Finish, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError, UnknownModelError, UnknownPrecisionError
from gemma_widgets.session import ChatSession


@pytest.mark.parametrize("change", [{"top_k": math.nan}, {"max_new_tokens": math.inf}, {"temperature": "0.5"},
                                   {"temperature": math.inf}, {"top_p": None}, {"max_new_tokens": True}])
def test_sampling_settings_that_are_not_finite_numbers_are_named(change):
    settings = SamplingSettings(**change)
    (name,) = change
    with pytest.raises(GemmaWidgetsError, match=f"{name} must be a finite number"):
        settings.validate()


@pytest.mark.parametrize("window", [-5, 0, 10**9, 2.5, "64"])
def test_a_context_window_outside_the_model_is_refused(window):
    with pytest.raises(GemmaWidgetsError, match="context_window must be a whole number"):
        ChatSession(scripted(), context_window=window)


def test_a_precision_or_option_that_does_not_exist_is_a_clear_error():
    with pytest.raises(UnknownPrecisionError, match="not 5"):
        load_model("tiny-random-gemma2", 5)
    with pytest.raises(UnknownPrecisionError, match="Unknown precision 'bf17'"):
        load_model("tiny-random-gemma2", "bf17")
    with pytest.raises(UnknownPrecisionError, match="takes no option 'grup_size'"):
        load_model("tiny-random-gemma2", "fp32", grup_size=32)


def test_a_folder_with_a_broken_config_or_no_weights_is_named(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UnknownModelError, match="not a model config"):
        load_model(str(broken))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "gemma2", "hidden_size": 8}))
    with pytest.raises(UnknownModelError, match="no weights"):
        load_model(str(empty))


MALFORMED = ['{"results": "abc"}', '{"results": [{"model": "m", "variant": "v", "decode_tps": "fast"}]}',
             '[1, 2]', '{"results": [{"variant": 3}]}',
             '{"results": [{"model": "m", "variant": "v", "decode_runs_tps": ["x"]}]}']


@pytest.mark.parametrize("content", MALFORMED)
def test_a_malformed_results_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(GemmaWidgetsError, match="not a results file"):
        bench.load(path)


def test_the_dashboard_shows_a_malformed_file_as_a_message_and_odd_names_as_text(tmp_path):
    from gemma_widgets import PrecisionDashboard

    bad = tmp_path / "bad.json"
    bad.write_text('{"results": "abc"}')
    dash = PrecisionDashboard("tiny-random-gemma2", variants=["bf16"])  # bundled would check (and build) its GGUF
    dash._ui(dash.load, bad)
    assert "not a results file" in dash.status.value
    odd = [Result("m", "$\\frac{$x<b>", decode_tps=10.0, decode_tps_p10=9.0, decode_tps_p90=11.0,
                  ttft_ms=5.0, peak_rss_mb=100.0, weights_mb=50.0)]
    dash.show(odd)
    assert "<b>" not in dash.table.value and all(image.value for image in dash.images.values())


def test_editing_while_a_reply_streams_is_refused():
    from gemma_widgets import ChatPanel

    panel = ChatPanel(scripted(["la "], delay=0.01, finish=Finish.MAX_NEW_TOKENS))
    panel.send("sing")
    with pytest.raises(GemmaWidgetsError, match="still streaming"):
        panel._start_edit()
    with pytest.raises(GemmaWidgetsError, match="still streaming"):
        panel.edit_last("other")
    panel.stop()
    assert panel.wait(10) and [m["content"] for m in panel.history][0] == "sing"


def _cli(*args: str, cwd):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "gemma_widgets", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("args, message", [
    (["bench", "--precisions", "nonsense"], "Unknown precision 'nonsense'"),
    (["bench", "--precisions", ""], "--precisions is empty"),
    (["bench", "--precisions", "ov-int4+ratio=2"], "ratio must be in (0, 1]"),
    (["bench", "--precisions", "bf16", "--out", "results.txt"], "as .csv or .json"),
    (["bench", "--precisions", "bf16", "--out", "no/such/folder/r.csv"], "does not exist"),
    (["prepare", "--precision", "nonsense"], "Unknown precision 'nonsense'"),
])
def test_the_command_line_refuses_bad_input_in_one_line_before_measuring(tmp_path, args, message):
    done = _cli(*args, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, no folder made


def test_decode_runs_shorter_than_the_first_token_are_reported():
    result = Result("m", "bf16", new_tokens=8)
    decode = [Step("decode", i + 1, seconds=s) for i, s in enumerate([0.05, 0.30, 0.40])]
    measure.fill_timings(result, prefill=[0.10, 0.10, 0.10], decode=decode)
    assert len(result.decode_runs_tps) == 2 and "1 of 3 decode runs" in result.notes[0]
    assert result.decode_runs_tps == pytest.approx([7 / 0.2, 7 / 0.3])


def test_a_streamed_decode_uses_its_own_first_token_time_and_count():
    result = Result("m", "served", new_tokens=8)
    decode = [Step("decode", 1, seconds=1.0, tokens=5, ttft=0.2), Step("decode", 2, seconds=1.0, tokens=1, ttft=0.2)]
    measure.fill_timings(result, prefill=[0.5], decode=decode)
    assert result.decode_runs_tps == pytest.approx([4 / 0.8])  # (tokens - 1) over the time after its first
    assert "1 of 2 decode runs" in result.notes[0]  # one token: no decode rate


def test_json_nested_past_pythons_stack_is_a_notice_in_the_chat_panel(tmp_path):
    """200,000 ``[`` (RecursionError in the parser) through the upload button and ChatPanel.load, and
    stats nested 5,000 deep handed over as data: each a message, and the transcript kept."""
    from gemma_widgets import ChatPanel

    panel = ChatPanel(scripted("Hi"))
    panel.load([{"role": "user", "content": "kept"}, {"role": "assistant", "content": "Hi"}])
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    panel._ui(panel._load_upload, ({"name": "deep.json", "content": memoryview(deep.read_bytes())},))
    assert "not a JSON transcript: it nests lists or objects too deeply" in panel.notice.value
    with pytest.raises(GemmaWidgetsError, match="too deeply"):
        panel.load(deep)
    stats: dict = {}
    for _ in range(5000):
        stats = {"a": stats}
    with pytest.raises(GemmaWidgetsError, match="nothing nested"):
        panel.load([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "stats": stats}])
    assert [m["content"] for m in panel.history] == ["kept", "Hi"]


@pytest.mark.parametrize("name, content", [
    ("deep.json", '{"results": ' + "[" * 200_000),
    ("deep.csv", "model,variant,notes\nm,v," + "[" * 5000 + "\n"),  # a list cell's JSON, under csv's cap
])
def test_results_nested_past_pythons_stack_are_a_clear_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GemmaWidgetsError, match="not a results file written by bench.save()"):
        bench.load(path)


@pytest.mark.parametrize("name", ["results.csv", "results.json"])
def test_a_long_generated_text_round_trips(tmp_path, name):
    """csv refused a cell over 128 KiB on load (``_csv.Error: field larger than field limit``)."""
    results = [Result("m", "bf16", text="lighthouse " * 20_000, notes=["x" * 150_000])]
    assert bench.load(bench.save(results, tmp_path / name)) == results


def test_a_results_file_larger_than_the_read_limit_is_refused_unread(tmp_path):
    from gemma_widgets.host.files import READ_LIMIT

    path = tmp_path / "results.json"
    path.write_text('{"results": []}' + " " * READ_LIMIT)
    with pytest.raises(GemmaWidgetsError, match="larger than 20 MB"):
        bench.load(path)


def test_a_load_that_would_not_fit_beside_what_the_kernel_holds_is_warned_of(monkeypatch):
    """Binder's 2 GB: the kit warns before the load, instead of the kernel dying half-way through it."""
    from gemma_widgets import loading
    from gemma_widgets.errors import MemoryWarning

    monkeypatch.setattr(loading, "memory_room", lambda: 10 * 10**6)  # 10 MB left under the limit
    with pytest.warns(MemoryWarning, match="tiny-random-gemma2 in fp32 needs about 0.1 GB .* leaves 0.0 GB"):
        load_model("tiny-random-gemma2", "fp32")
    monkeypatch.setattr(loading, "memory_room", lambda: None)  # no container limit: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoryWarning)
        load_model("tiny-random-gemma2", "fp32")


def test_the_room_left_counts_a_containers_limit_and_what_this_process_holds(tmp_path, monkeypatch):
    from gemma_widgets.host import hardware

    monkeypatch.delenv("MEM_LIMIT", raising=False)
    limit = tmp_path / "memory.max"
    limit.write_text("max\n")
    assert hardware.memory_room((str(limit),)) is None
    limit.write_text(f"{2 * 1024**3}\n")
    held = psutil.Process().memory_info().rss
    assert abs(hardware.memory_room((str(limit),)) - (2 * 1024**3 - held)) < 50 * 10**6
