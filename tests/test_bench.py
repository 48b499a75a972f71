"""The harness: fresh process per variant, failures reported, cancel, records round trip, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading

import orphans
import pytest

from gemma_widgets import bench
from gemma_widgets.bench import Result, measure
from gemma_widgets.bench.records import parse_variant
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.hardware import Machine
from gemma_widgets.precisions import PRECISIONS
from gemma_widgets.presets import PRESETS

TINY = "tiny-random-gemma2"
FAST = {"new_tokens": 4, "repeats": 2, "warmup": 1, "passage_tokens": 48}


@pytest.fixture(scope="module")
def tiny_run():
    """fp32 and bf16 of the tiny model in two interleaved rounds, plus a variant that cannot load."""
    seen = []
    results = bench.run(TINY, ["bf16", "no-such-precision", "fp32"], on_progress=seen.append, rounds=2, **FAST)
    return results, seen


def test_variant_names_carry_loader_flags():
    assert parse_variant("bf16") == ("bf16", {})
    assert parse_variant("bf16+compile") == ("bf16", {"compile": True})
    assert parse_variant("ov-int4+group_size=32+all_layers+sym=false+ratio=0.8+engine=optimum") == (
        "ov-int4", {"group_size": 32, "all_layers": True, "sym": False, "ratio": 0.8, "engine": "optimum"})


@pytest.mark.slow
def test_every_variant_is_measured_and_the_reference_runs_first(tiny_run):
    results, _ = tiny_run
    assert [r.variant for r in results] == ["fp32", "bf16", "no-such-precision"]
    for r in results[:2]:
        assert r.ok, r.error
        assert r.engine == "transformers" and r.model == TINY
        assert r.load_s > 0 and r.weights_mb > 0 and r.peak_rss_mb >= r.rss_mb > 0
        assert r.rounds == 2 and len(r.ttft_runs_ms) == 4  # two repeats in each of two rounds
        assert len(r.decode_runs_tps) + sum("decode runs took no longer" in n for n in r.notes) >= 3
        assert r.decode_tps_p10 <= r.decode_tps <= r.decode_tps_p90
        assert r.ttft_ms_p10 <= r.ttft_ms <= r.ttft_ms_p90
        assert r.prompt_tokens > 1 and r.new_tokens == 4 and r.text
        assert r.perplexity > 1 and r.reference == "fp32"
        assert isinstance(r.machine, Machine) and r.machine.cores >= 1 and "torch" in r.machine.libraries
    assert results[0].top1_agreement == 1.0
    assert 0 <= results[1].top1_agreement <= 1
    # bf16 stores two bytes a parameter, fp32 four
    assert results[1].weights_mb == pytest.approx(results[0].weights_mb / 2, rel=0.05)
    assert results[0].recipe == "embedding fp32, output fp32; body: 14 fp32"
    assert results[1].recipe == "embedding bf16, output bf16; body: 14 bf16"


@pytest.mark.slow
def test_interleaved_rounds_report_the_noise_floor_and_compare_with_the_reference(tiny_run):
    results, seen = tiny_run
    fp32, bf16 = results[:2]
    assert fp32.noise_floor == bf16.noise_floor and fp32.noise_floor >= 0  # one machine, one run
    assert fp32.speed_vs_reference is None and fp32.within_noise is None  # the reference itself
    assert bf16.speed_vs_reference == pytest.approx(bf16.decode_tps / fp32.decode_tps)
    assert bf16.within_noise == bench.within_noise(bf16, fp32)
    assert "ref" in bench.table_rows(results)[0]
    # the rounds interleave: fp32, bf16, the failed name (once), then fp32 and bf16 again
    runs = dict.fromkeys((p.index, p.variant) for p in seen if p.stage != "finished")
    assert [variant for _, variant in runs] == ["fp32", "bf16", "no-such-precision", "fp32", "bf16"]


def _timed(variant, median, p10, p90, noise=None):
    return Result(TINY, variant, decode_tps=median, decode_tps_p10=p10, decode_tps_p90=p90, noise_floor=noise)


def test_within_noise_means_the_ranges_overlap_widened_to_the_noise_floor():
    assert bench.within_noise(_timed("a", 10, 9.5, 10.5), _timed("b", 10.4, 10.2, 10.8))
    assert not bench.within_noise(_timed("a", 10, 9.8, 10.2), _timed("b", 11, 10.8, 11.2))
    # runs that agree closely by chance still cannot beat the machine's own 20% swing
    assert bench.within_noise(_timed("a", 10, 9.8, 10.2, 0.2), _timed("b", 11, 10.8, 11.2, 0.2))
    assert bench.within_noise(_timed("a", 10, 9, 11), Result(TINY, "failed", status="failed")) is None


@pytest.mark.model
def test_a_variant_that_cannot_load_is_reported_and_the_rest_succeed(tiny_run):
    results, _ = tiny_run
    failed = results[2]
    assert failed.status == "failed"  # a name the kit does not know: an error, not a machine limit
    assert "Unknown precision 'no-such-precision'" in failed.error
    assert failed.decode_tps is None
    table = bench.format_table(results)
    assert "failed: Unknown precision" in table and "fp32" in table and "bf16" in table


@pytest.mark.model
def test_progress_goes_through_every_stage_of_every_variant(tiny_run):
    _, seen = tiny_run
    for variant in ("fp32", "bf16"):
        stages = [p.stage for p in seen if p.variant == variant]
        assert stages[0] == "load" and stages[-1] == "finished"
        assert {"warmup", "prefill", "decode", "quality"} <= set(stages)
        for index in {p.index for p in seen if p.variant == variant}:  # each round's run goes forward
            fractions = [p.fraction for p in seen if p.variant == variant and p.index == index]
            assert fractions == sorted(fractions)
        assert [p.fraction for p in seen if p.variant == variant][-1] == 1.0


@pytest.mark.model
def test_results_round_trip_through_csv_and_json(tiny_run, tmp_path):
    results, _ = tiny_run
    for name in ("results.csv", "results.json"):
        path = bench.save(results, tmp_path / name)
        assert bench.load(path) == results
    with pytest.raises(GemmaWidgetsError, match=".csv or .json"):
        bench.save(results, tmp_path / "results.txt")
    (tmp_path / "broken.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(GemmaWidgetsError, match="not a results file"):
        bench.load(tmp_path / "broken.json")
    with pytest.raises(GemmaWidgetsError, match="No results file"):
        bench.load(tmp_path / "missing.csv")


@pytest.mark.model
def test_a_results_file_from_before_the_newer_columns_still_loads(tiny_run, tmp_path):
    results, _ = tiny_run
    path = bench.save(results[:2], tmp_path / "new.csv")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    newer = [rows[0].index(name) for name in ("recipe", "rounds", "noise_floor", "speed_vs_reference", "within_noise")]
    old = tmp_path / "old.csv"
    with old.open("w", newline="") as fh:
        csv.writer(fh).writerows([[c for i, c in enumerate(row) if i not in newer] for row in rows])
    loaded = bench.load(old)
    assert [r.variant for r in loaded] == ["fp32", "bf16"] and loaded[1].decode_tps == results[1].decode_tps
    assert loaded[1].recipe == "" and loaded[1].rounds == 1 and loaded[1].within_noise is None


def test_a_crashed_worker_is_reported_with_its_reason(monkeypatch):
    killer = "import os, signal, sys; sys.stdin.read(); os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(measure, "_worker_command", lambda: [sys.executable, "-c", killer])
    results = bench.run(TINY, ["fp32", "bf16"], **FAST)
    assert [r.status for r in results] == ["failed", "failed"]
    assert "SIGKILL" in results[0].error and "out of memory" in results[0].error

    crasher = "import sys; sys.stdin.read(); print('segfault in a kernel', file=sys.stderr); sys.exit(7)"
    monkeypatch.setattr(measure, "_worker_command", lambda: [sys.executable, "-c", crasher])
    (result,) = bench.run(TINY, ["fp32"], **FAST)
    assert result.error == "the worker process exited with code 7: segfault in a kernel"


def test_a_stuck_worker_times_out(monkeypatch):
    sleeper = "import sys, time; sys.stdin.read(); time.sleep(60)"
    monkeypatch.setattr(measure, "_worker_command", lambda: [sys.executable, "-c", sleeper])
    (result,) = bench.run(TINY, ["fp32"], timeout_s=1, **FAST)
    assert result.status == "failed" and "timed out" in result.error


WORKER_PARENT = """
import time
from gemma_widgets.bench import measure
from gemma_widgets.bench.records import Scenario
# the hostile run's --new-tokens 1000000000: a warm-up that decodes for ever without a word to the parent
# (a worker that writes an event after its parent died is ended by the broken pipe)
worker = measure._Worker(Scenario("tiny-random-gemma2", "fp32", "Hi", 10**9, repeats=1, warmup=1, quality=False))
events = [type(worker.events.get(timeout=120)).__name__ for _ in range(2)]  # Loaded, PromptSize: now silent
print(worker.proc.pid, *events, flush=True)
time.sleep(300)
"""


@pytest.mark.model
def test_a_worker_dies_with_its_parent_even_when_the_parent_is_killed():
    """The hostile test: ``timeout 120 ... bench`` (or a dead kernel) left the worker decoding under PID 1.
    Here the parent is SIGKILLed while its worker decodes its warm-up: the worker must go too."""
    worker = 0
    with orphans.parent_process(WORKER_PARENT) as parent:
        try:
            line = orphans.first_line(parent, 180)
            assert line.endswith(" Loaded PromptSize"), f"the worker did not load the tiny model: {line!r}"
            worker = int(line.split()[0])
            assert orphans.alive(worker)
            parent.kill()
            parent.wait(10)
            assert orphans.gone_within(worker, 5), "the worker outlived its killed parent"
        finally:
            if worker:
                orphans.kill_if_ours(worker, "gemma_widgets.bench.worker")


@pytest.mark.slow
def test_cancel_inside_a_measurement_returns_what_finished():
    cancel = threading.Event()

    def on_progress(p: bench.Progress) -> None:
        if p.variant == "bf16" and p.stage == "prefill":
            cancel.set()

    results = bench.run(TINY, ["fp32", "bf16", "fp16"], cancel=cancel, on_progress=on_progress, **FAST)
    assert [(r.variant, r.status) for r in results] == [("fp32", "ok"), ("bf16", "cancelled")]
    assert results[1].load_s is not None and results[1].decode_tps is None


@pytest.mark.slow
def test_cancel_between_variants_stops_before_the_next():
    cancel = threading.Event()
    results = bench.run(TINY, ["fp32", "bf16"], cancel=cancel, on_result=lambda r: cancel.set(), **FAST)
    assert [(r.variant, r.status) for r in results] == [("fp32", "ok")]


def test_bad_settings_are_refused_before_anything_runs():
    with pytest.raises(GemmaWidgetsError, match="new_tokens"):
        bench.run(TINY, ["fp32"], new_tokens=1)
    with pytest.raises(GemmaWidgetsError, match="repeats"):
        bench.run(TINY, ["fp32"], repeats=0)


def _result(variant: str, tps: float, rss: float, ppl: float, agree: float | None) -> Result:
    return Result("bundled", variant, decode_tps=tps, decode_tps_p10=tps, decode_tps_p90=tps,
                  peak_rss_mb=rss, perplexity=ppl, top1_agreement=agree, reference="fp32")


def test_recommendation_is_the_fastest_within_the_quality_bound_and_the_smallest():
    results = [_result("fp32", 10, 2000, 10.0, 1.0), _result("bf16", 20, 1200, 10.1, 0.97),
               _result("broken", 90, 900, 40.0, 0.30), _result("int4", 50, 600, 10.5, 0.90),
               Result("bundled", "bnb-nf4", status="failed", error="no CUDA")]
    line = bench.recommend(results)
    assert "within the quality bound" in line and ": int4 (50.0 tok/s" in line
    assert "smallest that fits: broken (900 MB" not in line  # broken is fast and small...
    assert "smallest that fits: int4 (600 MB" in line        # ...but int4 is smaller still
    assert "broken" not in line
    assert bench.recommend([results[-1]]).startswith("No variant finished")
    assert bench.within_quality_bound(results[3], results[0], min_agreement=0.95) is False


def test_default_variants_are_those_that_can_run_here():
    choices = bench.variant_choices(TINY)
    assert choices["fp32"] is None
    assert bench.default_variants(TINY) == [name for name, reason in choices.items() if reason is None]
    assert bench.default_reference(["bf16", "fp32"]) == "fp32"
    assert bench.default_reference(["bf16", "ov-int4"]) == "bf16"
    assert bench.default_reference(["ov-int4", "bf16"]) == "bf16"  # not merely the first one
    assert bench.default_reference(["ov-int4", "ov-int8"]) == "ov-int4"


@pytest.mark.integration
def test_cli_compares_two_variants_of_the_bundled_model(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gemma_widgets", "bench", "--model", "bundled", "--precisions", "bf16,fp32",
         "--new-tokens", "8", "--repeats", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=1200, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("variant"))
    assert "decode tok/s" in header and "perplexity" in header and "top-1 agree" in header
    assert any(line.startswith("fp32 ") for line in lines) and any(line.startswith("bf16 ") for line in lines)
    assert any(line.startswith("Fastest within the quality bound") for line in lines)
    assert "bench" in proc.stderr  # the tqdm bar
    results = bench.load(out)
    assert [r.variant for r in results] == ["fp32", "bf16"] and all(r.ok for r in results)
    assert results[1].top1_agreement > 0.5  # bf16 mostly agrees with fp32 on a real model
    assert results[0].perplexity < 1000


@pytest.mark.skipif(bool(PRECISIONS["ov-int4-optimum"].unavailable_reason(PRESETS[TINY])),
                    reason="OpenVINO export unavailable (no optimum-intel)")
@pytest.mark.slow
def test_openvino_engines_are_measured_and_genai_is_scored_on_the_same_ir():
    results = bench.run(TINY, ["ov-int4", "ov-int4-optimum"], reference="ov-int4-optimum", **FAST)
    by = {r.variant: r for r in results}
    assert all(r.ok for r in results), [r.error for r in results]
    assert by["ov-int4"].engine == "openvino-genai" and by["ov-int4-optimum"].engine == "optimum-intel"
    assert by["ov-int4"].weights_mb == by["ov-int4-optimum"].weights_mb > 0  # the IR's weight file
    # openvino-genai gives no logits: it is scored by optimum-intel on the very same IR
    assert by["ov-int4"].top1_agreement == 1.0
    assert by["ov-int4"].perplexity == pytest.approx(by["ov-int4-optimum"].perplexity, rel=1e-4)
    assert by["ov-int4"].text and by["ov-int4-optimum"].text
    assert any("separate process" in note for note in by["ov-int4"].notes)


def test_csv_text_cells_cannot_become_spreadsheet_formulas(tmp_path):
    """OWASP's CSV injection: a text cell that starts with = + - @ is written with a leading quote,
    and read back as it was."""
    import csv

    texts = ["=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "'=quoted", "plain"]
    results = [Result("bundled", "bf16", status="failed", error=text, text=text, ttft_ms=-1.5)
               for text in texts]
    path = bench.save(results, tmp_path / "results.csv")
    with path.open(newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "@") or cell.startswith("-c")]
    assert "-1.5" in cells  # numbers stay numbers
    assert bench.load(path) == results


def test_the_shipped_reference_run_loads_from_the_installed_package():
    run = bench.reference_run()
    assert run and all(r.model == "bundled" and r.machine is not None for r in run)
    assert all(not r.machine.gpu for r in run)  # the CPU reference (a GPU one would be reference-gpu.json)
    assert any(r.variant == "bf16" and r.ok and r.decode_tps for r in run)
    with pytest.raises(GemmaWidgetsError, match="No results file"):
        bench.reference_run("no-such-run.json")


def test_two_runs_compare_the_variants_both_finished_on_the_same_model():
    here = [_result("fp32", 10, 2000, 10.0, 1.0), _result("bf16", 30, 1200, 10.1, 0.97),
            Result("bundled", "bnb-nf4", status="failed", error="no CUDA"), _result("ov-int4", 50, 600, 11, 0.9)]
    there = [_result("bf16", 20, 1200, 10.1, 0.97), _result("bnb-nf4", 8, 900, 10.4, 0.9),
             Result("bundled", "fp32", status="failed", error="killed")]
    rows = bench.compare_runs(here, there)
    assert [(r.variant, r.speed_ratio) for r in rows] == [("bf16", 1.5)]
    assert rows[0].here is here[1] and rows[0].there is there[0]
    other_model = [Result(TINY, "bf16", decode_tps=20.0)]
    assert bench.compare_runs(here, other_model) == []  # another model's speed says nothing of the machine


def test_a_machine_is_described_in_one_line():
    machine = Machine("Xeon", 2, 2, 23.6, "", "Linux", "3.11", {"torch": "2.13.0", "transformers": "4.57.6"})
    assert bench.describe_machine(machine) == "Xeon (2 cores, 23.6 GB, no GPU; torch 2.13.0, transformers 4.57.6)"
    gpu = Machine("EPYC", 8, 4, 64.0, "NVIDIA L4, 23034 MiB", "Linux", "3.11", {})
    assert "NVIDIA L4, 23034 MiB; torch -" in bench.describe_machine(gpu)
    assert bench.describe_machine(None) == "an unrecorded machine"
