"""One variant measured in a process of its own: the worker's events read with a timeout, turned into a
:class:`~gemma_widgets.bench.result.Result`, and the :class:`Progress` a view shows meanwhile."""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gemma_widgets.bench.records import (
    Done,
    Event,
    Failed,
    Loaded,
    Memory,
    Prepared,
    PromptSize,
    Quality,
    Scenario,
    Step,
    Text,
    decode,
    parse_variant,
)
from gemma_widgets.bench.result import MB, Result, summary
from gemma_widgets.engines.server_wire import display_url
from gemma_widgets.host import lifeline
from gemma_widgets.precisions import PRECISIONS
from gemma_widgets.quality import judge


@dataclass(frozen=True)
class Progress:
    """Where a run is: variant ``index`` of ``total``, at ``stage``, ``fraction`` of it done."""

    variant: str
    index: int
    total: int
    stage: str  # "prepare", "load", "warmup", "prefill", "decode", "quality", "finished"
    fraction: float


class _Worker:
    """One worker process and the events it sends, for one variant."""

    def __init__(self, scenario: Scenario):
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        # A session of its own: Ctrl-C in a terminal cancels the run (see main), not the worker. The
        # lifeline ends the worker when this process ends, killed or not (a hung-up terminal, a dead kernel).
        self.proc = lifeline.popen(_worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=self.stderr, text=True, env=env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        assert self.proc.stdin is not None
        self.proc.stdin.write(scenario.to_json())
        self.proc.stdin.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(decode(line))
            except (ValueError, TypeError):  # not an event: a library wrote to stdout
                continue
        self.events.put(None)

    def stop(self) -> None:
        """Terminate the worker (then kill it if it does not go within five seconds)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def exit_reason(self) -> str:
        """Why the worker ended without reporting an error of its own."""
        code = self.proc.wait()
        self.stderr.seek(0)
        lines = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
        tail = f": {lines[-1]}" if lines else ""
        if code < 0:
            name = signal.Signals(-code).name
            oom = -code == signal.SIGKILL
            hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if oom else ""
            return f"the worker process was killed by {name}{hint}{tail}"
        return f"the worker process exited with code {code}{tail}"


def _worker_command() -> list[str]:
    return [sys.executable, "-m", "gemma_widgets.bench.worker"]


def _events(scenario: Scenario, cancel: threading.Event, timeout_s: float | None,
            started: float) -> Iterator[Event]:
    """A worker's events for ``scenario``, always ending with ``Done`` or ``Failed``.

    Cancel, the deadline (``timeout_s`` after ``started``) and a worker that dies without a
    word (killed, crashed) all end the stream with a ``Failed`` that says which.
    """
    worker = _Worker(scenario)
    try:
        while True:
            if cancel.is_set():
                yield Failed("cancelled", "cancelled by the user")
                return
            if timeout_s and time.monotonic() - started > timeout_s:
                yield Failed("failed", f"timed out after {timeout_s:.0f} s")
                return
            try:
                event = worker.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if event is None:
                yield Failed("failed", worker.exit_reason())
                return
            yield event
            if isinstance(event, (Done, Failed)):
                return
    finally:
        worker.stop()


def _needs_prepare(variant: str) -> bool:
    """OpenVINO variants may export on first load: build that cache in a process of its own."""
    base = parse_variant(variant)[0]
    return base in PRECISIONS and PRECISIONS[base].needs_export


@dataclass
class Measured:
    """One variant's measurement in one round: its result, top-1 predictions and raw timings."""

    result: Result
    top1: list[int] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    decode: list[Step] = field(default_factory=list)


def measure_variant(scenario: Scenario, index: int, total: int, cancel: threading.Event,
             timeout_s: float | None, progress: Callable[[Progress], None]) -> Measured:
    """Measure one variant in its own process (its timings are summarised by the caller)."""
    result = Result(display_url(scenario.model), scenario.variant, new_tokens=scenario.new_tokens,
                    repeats=scenario.repeats)
    measured = Measured(result)
    prepare = _needs_prepare(scenario.variant)
    steps = prepare + 1 + scenario.warmup + 2 * scenario.repeats + 1
    done = 0
    started = time.monotonic()

    def tick(stage: str) -> None:
        nonlocal done
        done += 1
        progress(Progress(scenario.variant, index, total, stage, done / steps))

    if prepare:
        progress(Progress(scenario.variant, index, total, "prepare", 0.0))
        for event in _events(dataclasses.replace(scenario, prepare_only=True), cancel, timeout_s, started):
            if isinstance(event, Failed):
                result.status, result.error = event.status, event.message
                return measured
            if isinstance(event, Prepared):
                result.notes.append(f"loaded once first in a separate process ({event.seconds:.0f} s), "
                                    "so a one-time export counts in neither load time nor memory")
        tick("prepare")
    progress(Progress(scenario.variant, index, total, "load", done / steps))
    for event in _events(scenario, cancel, timeout_s, started):
        match event:
            case Failed():
                result.status, result.error = event.status, event.message
            case Loaded():
                result.engine, result.load_s, result.recipe = event.engine, event.load_s, event.recipe
                result.notes += event.notes
                result.weights_mb = event.weights_bytes / MB
                tick("load")
            case PromptSize():
                result.prompt_tokens = event.prompt_tokens
            case Memory():
                result.peak_rss_mb = event.peak_rss_bytes / MB
                result.rss_mb = event.rss_bytes / MB
                cuda = event.peak_cuda_bytes
                result.peak_cuda_mb = cuda / MB if cuda is not None else None
            case Text():
                result.text = event.text
            case Quality():
                result.perplexity, measured.top1 = event.perplexity, event.top1
            case Step():
                if event.stage == "prefill" and event.seconds is not None:
                    measured.prefill.append(event.seconds)
                elif event.stage == "decode":
                    measured.decode.append(event)
                tick(event.stage)
    return measured


def judge_result(result: Result, precision: str, params: int) -> None:
    """Fill ``result``'s quality gate from its figures: top-1 agreement, and weights over ``params``."""
    weights = result.weights_mb * MB / params if result.weights_mb and params else None
    if result.top1_agreement is None and weights is None:
        return
    verdict = judge(precision, result.top1_agreement, weights)
    result.gate, result.gate_reason = verdict.status, "; ".join(verdict.failures) or verdict.mark


def fill_timings(result: Result, prefill: list[float], decode: list[Step]) -> None:
    """TTFT from the prefills; decode tok/s per run as ``(n - 1) / (t_run - ttft)``, with the run's own
    ttft when it was read from a stream, else the median prefill."""
    result.ttft_runs_ms = [s * 1000 for s in prefill]
    result.ttft_ms, result.ttft_ms_p10, result.ttft_ms_p90 = summary(result.ttft_runs_ms)
    if result.ttft_ms is None or result.new_tokens < 2:
        return
    median_ttft = result.ttft_ms / 1000
    rates, shorter = [], 0
    for step in decode:
        seconds = step.seconds or 0.0
        ttft = median_ttft if step.ttft is None else step.ttft
        tokens = result.new_tokens if step.tokens is None else step.tokens
        if seconds > ttft and tokens > 1:
            rates.append((tokens - 1) / (seconds - ttft))
        else:
            shorter += 1
    result.decode_runs_tps = rates
    result.decode_tps, result.decode_tps_p10, result.decode_tps_p90 = summary(rates)
    if shorter:  # noise on a busy machine: say so instead of dropping the runs silently
        result.notes.append(f"{shorter} of {len(decode)} decode runs took no longer than their time to "
                            f"first token (median {result.ttft_ms:.1f} ms) or made one token: left out of "
                            "decode tok/s")
