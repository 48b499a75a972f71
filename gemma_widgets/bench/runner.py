"""The precision benchmark harness: one prompt, several variants, speed beside quality.

Split the way optimum-benchmark splits it: the *variant* is a name from the precision registry
(plus loader flags, e.g. ``bf16+compile``); the *scenario* and the *trackers* (time, memory,
quality) run in :mod:`gemma_widgets.bench.worker`, one fresh process per variant; the
*records* are :class:`Result` dataclasses with a :class:`Machine` description, saved to CSV or
JSON and loaded back. The dashboard, the CLI and the notebooks only consume records.

Per variant: load time, weights footprint, peak resident memory (and peak CUDA memory on a
GPU), time to first token (a prefill that generates one token), decode tok/s (a generate with
``min_new_tokens == max_new_tokens``, minus the prefill, so ``(n - 1) / (t_n - ttft)``), after a
warm-up, over ``repeats`` runs with median, p10 and p90; perplexity on the package passage and
top-1 agreement with the reference variant, and the quality gate's verdict on those figures and the
weights' bytes per parameter (:func:`gemma_widgets.quality.judge`: no second scoring); the generated text.

The call the notebooks use:

>>> from gemma_widgets import bench                                            # doctest: +SKIP
>>> results = bench.run(model="bundled", variants=["fp32", "bf16", "ov-int4"],
...                     new_tokens=32, repeats=3)                              # doctest: +SKIP
>>> print(bench.format_table(results)); print(bench.recommend(results))     # doctest: +SKIP
>>> bench.save(results, "results.csv"); bench.load("results.csv") == results  # doctest: +SKIP
True
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
from gemma_widgets.errors import GemmaWidgetsError, UnknownPrecisionError
from gemma_widgets.host import lifeline
from gemma_widgets.host.files import READ_LIMIT, read_limited, write_atomic
from gemma_widgets.host.hardware import Machine, noise_probe
from gemma_widgets.quality import MIN_AGREEMENT, judge, top1_agreement

DEFAULT_PROMPT = "Explain in a few sentences how a lighthouse helps ships find their way at night."
#: Quality bound for the recommendation: perplexity at most this multiple of the reference's, and the
#: quality gate's share of top-1 predictions equal to the reference's (``MIN_AGREEMENT``).
MAX_PERPLEXITY_RATIO = 1.10
_MB = 1_000_000  # decimal megabytes, as the README's fit table and the notebooks count


@dataclass
class Result:
    """One variant's measurements (``status`` ``ok``) or why there are none (the others)."""

    model: str
    variant: str
    status: str = "ok"  # "ok", "failed", "unavailable" or "cancelled"
    error: str = ""
    engine: str = ""
    prompt_tokens: int | None = None
    new_tokens: int = 0
    repeats: int = 0
    load_s: float | None = None
    weights_mb: float | None = None
    peak_rss_mb: float | None = None
    rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    ttft_ms: float | None = None  # medians, then p10 and p90
    ttft_ms_p10: float | None = None
    ttft_ms_p90: float | None = None
    decode_tps: float | None = None
    decode_tps_p10: float | None = None
    decode_tps_p90: float | None = None
    perplexity: float | None = None
    top1_agreement: float | None = None
    reference: str = ""
    gate: str = ""  # the quality gate's verdict: "passed", "marked" or "failed" ("" when not judged)
    gate_reason: str = ""  # what failed, or why a marked variant may agree less than MIN_AGREEMENT
    text: str = ""
    recipe: str = ""  # which weights at which precision (gemma_widgets.recipe)
    rounds: int = 1  # interleaved rounds the timed runs come from
    noise_floor: float | None = None  # the machine's own spread over the run (machine.noise_floor)
    speed_vs_reference: float | None = None  # decode tok/s over the reference's
    within_noise: bool | None = None  # this variant's and the reference's tok/s ranges overlap
    ttft_runs_ms: list[float] = field(default_factory=list)
    decode_runs_tps: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: Machine | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def decode_spread(self) -> float | None:
        """``(p90 - p10) / median`` of decode tok/s: 0.05 means within 5% of the median."""
        if not self.decode_tps or self.decode_tps_p10 is None or self.decode_tps_p90 is None:
            return None
        return (self.decode_tps_p90 - self.decode_tps_p10) / self.decode_tps

    def decode_range(self) -> tuple[float, float] | None:
        """The p10-p90 range of decode tok/s, widened to at least the machine's noise floor around
        the median (a few runs can agree by chance more closely than the machine allows)."""
        if not self.decode_tps or self.decode_tps_p10 is None or self.decode_tps_p90 is None:
            return None
        half = self.decode_tps * (self.noise_floor or 0.0) / 2
        return min(self.decode_tps_p10, self.decode_tps - half), max(self.decode_tps_p90, self.decode_tps + half)


def within_noise(a: Result, b: Result) -> bool | None:
    """True when ``a``'s and ``b``'s decode ranges (:meth:`Result.decode_range`) overlap: on this
    machine the two cannot be told apart. None when either has no decode figure."""
    ra, rb = a.decode_range(), b.decode_range()
    if ra is None or rb is None:
        return None
    return ra[0] <= rb[1] and rb[0] <= ra[1]


def compare_with_reference(results: Sequence[Result]) -> None:
    """Fill each result's ``speed_vs_reference`` and ``within_noise`` from the reference's row."""
    reference = next((r for r in results if r.ok and r.variant == r.reference), None)
    for r in results:
        if reference is None or r is reference or not (r.ok and r.decode_tps and reference.decode_tps):
            continue
        r.speed_vs_reference = r.decode_tps / reference.decode_tps
        r.within_noise = within_noise(r, reference)


@dataclass(frozen=True)
class Progress:
    """Where a run is: variant ``index`` of ``total``, at ``stage``, ``fraction`` of it done."""

    variant: str
    index: int
    total: int
    stage: str  # "prepare", "load", "warmup", "prefill", "decode", "quality", "finished"
    fraction: float


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _summary(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return statistics.median(values), _percentile(values, 0.1), _percentile(values, 0.9)


def noise_floor(probes: Sequence[float]) -> float | None:
    """The machine's own spread over a run, ``(p90 - p10) / median`` of :func:`~gemma_widgets.host.hardware.noise_probe`
    times taken between the variants: speeds that differ by less cannot be told apart here (None under 2)."""
    if len(probes) < 2:
        return None
    return (_percentile(probes, 0.9) - _percentile(probes, 0.1)) / statistics.median(probes)


def variant_choices(model: str | None = None) -> dict[str, str | None]:
    """Every precision for ``model``, with why it cannot run here (``None``: it can)."""
    from gemma_widgets import precisions
    from gemma_widgets.presets import resolve_preset

    return precisions.available(resolve_preset(model))


def default_variants(model: str | None = None) -> list[str]:
    """The variants this machine can run for ``model`` (what ``bench`` compares by default)."""
    return [name for name, reason in variant_choices(model).items() if reason is None]


def default_reference(variants: Sequence[str]) -> str:
    """The quality reference: the most precise variant measured (``fp32``, then ``bf16``), else the first."""
    return next((name for name in ("fp32", "bf16") if name in variants), variants[0])


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
    from gemma_widgets.precisions import PRECISIONS

    base = parse_variant(variant)[0]
    return base in PRECISIONS and PRECISIONS[base].needs_export


@dataclass
class _Measured:
    """One variant's measurement in one round: its result, top-1 predictions and raw timings."""

    result: Result
    top1: list[int] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    decode: list[Step] = field(default_factory=list)


def _measure(scenario: Scenario, index: int, total: int, cancel: threading.Event,
             timeout_s: float | None, progress: Callable[[Progress], None]) -> _Measured:
    """Measure one variant in its own process (its timings are summarised by the caller)."""
    from gemma_widgets.engines.server import display_url

    result = Result(display_url(scenario.model), scenario.variant, new_tokens=scenario.new_tokens,
                    repeats=scenario.repeats)
    measured = _Measured(result)
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
                result.weights_mb = event.weights_bytes / _MB
                tick("load")
            case PromptSize():
                result.prompt_tokens = event.prompt_tokens
            case Memory():
                result.peak_rss_mb = event.peak_rss_bytes / _MB
                result.rss_mb = event.rss_bytes / _MB
                cuda = event.peak_cuda_bytes
                result.peak_cuda_mb = cuda / _MB if cuda is not None else None
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


def _judge(result: Result, precision: str, params: int) -> None:
    """Fill ``result``'s quality gate from its figures: top-1 agreement, and weights over ``params``."""
    weights = result.weights_mb * _MB / params if result.weights_mb and params else None
    if result.top1_agreement is None and weights is None:
        return
    verdict = judge(precision, result.top1_agreement, weights)
    result.gate, result.gate_reason = verdict.status, "; ".join(verdict.failures) or verdict.mark


def _fill_timings(result: Result, prefill: list[float], decode: list[Step]) -> None:
    """TTFT from the prefills; decode tok/s per run as ``(n - 1) / (t_run - ttft)``, with the run's own
    ttft when it was read from a stream, else the median prefill."""
    result.ttft_runs_ms = [s * 1000 for s in prefill]
    result.ttft_ms, result.ttft_ms_p10, result.ttft_ms_p90 = _summary(result.ttft_runs_ms)
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
    result.decode_tps, result.decode_tps_p10, result.decode_tps_p90 = _summary(rates)
    if shorter:  # noise on a busy machine: say so instead of dropping the runs silently
        result.notes.append(f"{shorter} of {len(decode)} decode runs took no longer than their time to "
                            f"first token (median {result.ttft_ms:.1f} ms) or made one token: left out of "
                            "decode tok/s")


def run(model: str | None = None, variants: Sequence[str] | None = None, *,
        prompt: str = DEFAULT_PROMPT, new_tokens: int = 32, repeats: int = 3, warmup: int = 1,
        reference: str | None = None, quality: bool = True, passage_tokens: int | None = None,
        cancel: threading.Event | None = None, on_progress: Callable[[Progress], None] | None = None,
        on_result: Callable[[Result], None] | None = None, progress_bar: bool = False,
        timeout_s: float | None = 1800, rounds: int = 1) -> list[Result]:
    """Measure ``variants`` of ``model`` one at a time, each in a fresh process, in interleaved rounds.

    Args:
        model: a preset, hub id or folder (default ``$GEMMA_MODEL`` or ``bundled``).
        variants: precision names, optionally with loader flags (``"bf16+compile"``); default
            :func:`default_variants` (what this machine can run).
        prompt, new_tokens, repeats, warmup: the scenario; every decode makes exactly
            ``new_tokens`` tokens, greedily.
        reference: the variant quality is compared with (default :func:`default_reference`); it
            runs first, so every later result arrives with its agreement filled in.
        quality: score perplexity and top-1 agreement on the package passage.
        passage_tokens: score only the passage's first tokens (faster, for tests).
        cancel: set it to stop; the variant being measured ends ``cancelled`` and the ones that
            finished are returned.
        on_progress, on_result: called (from this thread) as stages and variants finish.
        progress_bar: show a tqdm bar over all variants' steps.
        timeout_s: the most one variant may take before it is stopped and reported failed.
        rounds: measure every variant this many times, round after round (a fresh process each
            time), so a slow minute of a shared machine falls on every variant rather than on one;
            each variant's timed runs are pooled over the rounds, its quality scored in the first.

    Returns:
        One :class:`Result` per variant measured, in the order run (the reference first); a
        variant that failed or could not run has ``status`` and ``error`` saying why.
    """
    from gemma_widgets import precisions
    from gemma_widgets.presets import resolve_preset

    if new_tokens < 2 or repeats < 1 or warmup < 0 or rounds < 1:
        raise GemmaWidgetsError(
            f"new_tokens must be at least 2, repeats and rounds at least 1 (got {new_tokens}, {repeats}, "
            f"{rounds}); warmup cannot be negative (got {warmup})."
        )
    preset = resolve_preset(model)
    variants = list(variants) if variants else default_variants(preset.name)
    if not variants:
        raise GemmaWidgetsError(f"No variant of {preset.name} can run on this machine.")
    if any("api_key" in parse_variant(variant)[1] for variant in variants):
        from gemma_widgets.engines.server import ENV_API_KEY

        raise GemmaWidgetsError(f"A variant's name is kept with its results (tables, CSV, JSON): give the "
                                f"server's key in ${ENV_API_KEY}, not as api_key= in the variant.")
    reference = reference or default_reference(variants)
    order = [reference] + [v for v in variants if v != reference] if reference in variants else variants
    cancel = cancel or threading.Event()
    machine = Machine.here()
    # A server's URL goes to the worker as given, password included, so that it can log in (through its
    # stdin, never its command line); results show preset.name, without it.
    loads = str(preset.repo_id) if preset.fmt == "server" else preset.name
    base = Scenario(loads, "", prompt, new_tokens, repeats, warmup, quality, passage_tokens)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order) * rounds, desc="bench", unit="run")

    def report(p: Progress) -> None:
        if bar is not None:
            bar.n = round(p.index + p.fraction, 2)
            bar.set_postfix_str(f"{p.variant}: {p.stage}", refresh=True)
        if on_progress:
            on_progress(p)

    measured: dict[str, _Measured] = {}
    results: list[Result] = []
    probes = [noise_probe()]
    reference_top1: list[int] | None = None

    def finish(m: _Measured) -> None:
        result = m.result
        _fill_timings(result, m.prefill, m.decode)
        if result.ok:
            _judge(result, precisions.resolve(parse_variant(result.variant)[0], preset).name, preset.params)
        result.noise_floor = noise_floor(probes)
        results.append(result)
        compare_with_reference(results)
        report(Progress(result.variant, order.index(result.variant) + (rounds - 1) * len(order), total,
                        "finished", 1.0))
        if on_result:
            on_result(result)

    total = len(order) * rounds
    try:
        for round_index in range(rounds):
            for i, variant in enumerate(order):
                if cancel.is_set():
                    break
                if variant in measured and not measured[variant].result.ok:
                    continue  # failed or could not run: reported once
                scenario = dataclasses.replace(base, variant=variant, quality=quality and round_index == 0)
                m = _measure(scenario, round_index * len(order) + i, total, cancel, timeout_s, report)
                probes.append(noise_probe())
                kept = measured.setdefault(variant, m)
                kept.result.machine, kept.result.reference = machine, reference
                if m is not kept and m.result.ok:
                    kept.prefill += m.prefill
                    kept.decode += m.decode
                    kept.result.rounds += 1
                elif m is not kept:
                    kept.result.notes.append(f"round {round_index + 1}: {m.result.status}: {m.result.error}")
                if variant == reference and m.top1:
                    reference_top1 = m.top1
                if m.top1 and reference_top1 and len(m.top1) == len(reference_top1):
                    kept.result.top1_agreement = top1_agreement(m.top1, reference_top1)
                if round_index == rounds - 1 or not kept.result.ok:
                    finish(kept)
                if m.result.status == "cancelled":
                    break
        for m in measured.values():  # cancelled before the last round: what the earlier rounds measured
            if m.result not in results:
                m.result.notes.append(f"cancelled after {m.result.rounds} of {rounds} rounds")
                finish(m)
        for result in results:  # every row beside the noise of the whole run
            result.noise_floor = noise_floor(probes)
        compare_with_reference(results)
        results.sort(key=lambda r: order.index(r.variant))
    finally:
        if bar is not None:
            bar.close()
    return results


# -- records: CSV and JSON ---------------------------------------------------------------------

_FIELDS = [f for f in dataclasses.fields(Result) if f.name != "machine"]
_MACHINE_FIELDS = dataclasses.fields(Machine)


def save(results: Sequence[Result], path: str | os.PathLike) -> Path:
    """Write ``results`` to ``path`` atomically: ``.json`` (one document) or ``.csv`` (a row per variant)."""
    path = Path(path)
    if path.suffix == ".json":
        return write_atomic(path, json.dumps({"results": [asdict(r) for r in results]}, indent=1))
    if path.suffix != ".csv":
        raise GemmaWidgetsError(f"Save results as .csv or .json, not {path.name!r}.")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow([f.name for f in _FIELDS] + [f"machine.{f.name}" for f in _MACHINE_FIELDS])
    for r in results:
        row = [_csv_cell(getattr(r, f.name)) for f in _FIELDS]
        row += [_csv_cell(getattr(r.machine, f.name)) if r.machine else "" for f in _MACHINE_FIELDS]
        writer.writerow(row)
    return write_atomic(path, text.getvalue())


#: A spreadsheet reads a cell that starts with one of these as a formula (OWASP's CSV injection list);
#: such text cells are written with a leading ``'``, which :func:`load` removes again.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    elif not isinstance(value, str):
        return str(value)  # a number: "-1.5" stays a number
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _from_cell(text: str, hint: Any) -> Any:
    """A CSV cell back to the type in ``hint`` (``float | None``, ``list[str]``...)."""
    options = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    origin = {typing.get_origin(o) or o for o in options}
    if text == "" and type(None) in options:
        return None
    if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS):
        text = text[1:]  # written so that a spreadsheet shows it as text
    if origin & {list, dict}:
        return json.loads(text)
    if bool in options:
        if text not in ("True", "False"):
            raise ValueError(f"{text!r} is not True or False")
        return text == "True"
    if int in options:
        return int(text)
    if float in options:
        return float(text)
    return text


def load(path: str | os.PathLike) -> list[Result]:
    """Read results saved by :func:`save` (CSV or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise GemmaWidgetsError(f"No results file at {path}. Save one with bench.save() or --out.")
    if path.suffix not in (".json", ".csv"):
        raise GemmaWidgetsError(f"Results files are .csv or .json, not {path.name!r}.")
    data = read_limited(path)  # at most READ_LIMIT bytes: a clear error, not all of memory
    try:
        if path.suffix == ".json":
            return [_result_from_dict(d) for d in json.loads(data)["results"]]
        return _load_csv(data.decode("utf-8"))
    # RecursionError: lists nested thousands deep, in the file or in a CSV cell's JSON
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, csv.Error) as exc:
        raise GemmaWidgetsError(f"{path} is not a results file written by bench.save(): {exc}") from exc


def _result_from_dict(data: dict[str, Any]) -> Result:
    machine = data.pop("machine", None)
    result = Result(**data, machine=Machine(**machine) if machine else None)
    _check_types(result)
    return result


def _check_types(record: Any) -> None:
    """Raise ``TypeError`` if a field of ``record`` does not hold what its type hint says."""
    for name, hint in typing.get_type_hints(type(record)).items():
        value = getattr(record, name)
        options = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
        kinds = tuple(typing.get_origin(o) or o for o in options)
        if float in kinds:
            kinds += (int,)
        items = [value]
        if isinstance(value, list):  # list[float], list[str]: check the items against the item type
            (item,) = typing.get_args(next(o for o in options if typing.get_origin(o) is list))
            kinds, items = (item, int) if item is float else (item,), value
        for item in items:
            if isinstance(item, bool) and bool not in kinds or not isinstance(item, kinds):
                raise TypeError(f"{name} holds {item!r}, not {hint}")
            if isinstance(item, float) and not math.isfinite(item):
                raise TypeError(f"{name} holds {item!r}, not a finite number")
    if getattr(record, "machine", None) is not None:
        _check_types(record.machine)


def _load_csv(text: str) -> list[Result]:
    hints = typing.get_type_hints(Result)
    machine_hints = typing.get_type_hints(Machine)
    # csv's default cap (128 KiB a cell) refuses a long generated ``text`` that save() wrote; the
    # whole file is at most READ_LIMIT, so no cell can be larger than that
    csv.field_size_limit(max(csv.field_size_limit(), READ_LIMIT))
    results = []
    with io.StringIO(text, newline="") as handle:
        for row in csv.DictReader(handle):
            # a file from an older version lacks the newer columns: those keep their defaults
            data = {f.name: _from_cell(row[f.name], hints[f.name]) for f in _FIELDS if f.name in row}
            machine = None
            if row.get("machine.cpu"):
                machine = Machine(**{f.name: _from_cell(row[f"machine.{f.name}"], machine_hints[f.name])
                                     for f in _MACHINE_FIELDS})
            results.append(Result(**data, machine=machine))
            _check_types(results[-1])
    return results


#: The run shipped with the package: the bundled model, every CPU variant, on a 2-vCPU AMD EPYC with 25 GB.
REFERENCE_RUN = "reference-cpu.json"


def reference_run(name: str = REFERENCE_RUN) -> list[Result]:
    """The results saved in the package's ``data/`` folder (found through importlib.resources, so it
    works where the kit is pip-installed, as on Colab): a run from another machine to compare with."""
    from importlib.resources import as_file, files

    with as_file(files("gemma_widgets") / "data" / name) as path:
        return load(path)


def describe_machine(machine: Machine | None) -> str:
    """One line: CPU, cores, memory, GPU and the torch/transformers versions a run used."""
    if machine is None:
        return "an unrecorded machine"
    gpu = f", {machine.gpu}" if machine.gpu else ", no GPU"
    return (f"{machine.cpu} ({machine.cores} cores, {machine.memory_gb} GB{gpu}; "
            f"torch {machine.libraries.get('torch', '-')}, "
            f"transformers {machine.libraries.get('transformers', '-')})")


@dataclass(frozen=True)
class RunComparison:
    """One variant measured in two runs (say, this machine's and the shipped reference run's)."""

    variant: str
    here: Result
    there: Result

    @property
    def speed_ratio(self) -> float:
        """Decode tok/s here over there: 2.0 means twice as fast here."""
        return (self.here.decode_tps or 0.0) / (self.there.decode_tps or float("nan"))


def compare_runs(here: Sequence[Result], there: Sequence[Result]) -> list[RunComparison]:
    """The variants that finished with a decode speed in both runs, of the same model, in ``here``'s
    order. Empty when the runs measured different models: their speeds say nothing of the machines."""
    done = {r.variant: r for r in there if r.ok and r.decode_tps}
    return [RunComparison(r.variant, r, done[r.variant]) for r in here
            if r.ok and r.decode_tps and r.variant in done and r.model == done[r.variant].model]


# -- reading results: the table and the recommendation -----------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@dataclass(frozen=True)
class Column:
    """One column of the results table: its header and how a finished result's cell reads."""

    header: str
    cell: Callable[[Result], str]


def _agreement(r: Result) -> str:
    return "-" if r.top1_agreement is None else f"{r.top1_agreement:.1%}"


def _spread(r: Result) -> str:
    spread = r.decode_spread
    if spread is None:
        return "-"
    return f"{spread:.1%}" + ("" if r.noise_floor is None else f" (noise {r.noise_floor:.1%})")


def _versus(r: Result) -> str:
    if r.speed_vs_reference is None:
        return "ref" if r.reference and r.variant == r.reference and r.decode_tps else "-"
    return f"{r.speed_vs_reference:.2f}x" + (", within noise" if r.within_noise else "")


#: The results table, as both the text table and the dashboard's HTML table show it.
COLUMNS = (
    Column("variant", lambda r: r.variant),
    Column("engine", lambda r: r.engine or "-"),
    Column("load s", lambda r: _fmt(r.load_s, ".1f")),
    Column("weights MB", lambda r: _fmt(r.weights_mb, ".0f")),
    Column("peak RSS MB", lambda r: _fmt(r.peak_rss_mb, ".0f")),
    Column("peak CUDA MB", lambda r: _fmt(r.peak_cuda_mb, ".0f")),
    Column("TTFT ms", lambda r: _fmt(r.ttft_ms, ".1f")),
    Column("decode tok/s", lambda r: _fmt(r.decode_tps, ".1f")),
    Column("p10-p90", lambda r: f"{_fmt(r.decode_tps_p10, '.1f')}-{_fmt(r.decode_tps_p90, '.1f')}"),
    Column("spread", _spread),
    Column("vs ref", _versus),
    Column("perplexity", lambda r: _fmt(r.perplexity, ".2f")),
    Column("top-1 agree", _agreement),
    Column("gate", lambda r: r.gate or "-"),
)


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    """Each result's cells under :data:`COLUMNS`; a result that did not finish has three cells:
    variant, engine and why."""
    return [[c.cell(r) for c in COLUMNS] if r.ok else [r.variant, r.engine or "-", f"{r.status}: {r.error}"]
            for r in results]


def format_table(results: Sequence[Result]) -> str:
    """A plain-text table of ``results`` (failed variants show their reason)."""
    head = [c.header for c in COLUMNS]
    rows = table_rows(results)
    full = [row for row in rows if len(row) == len(head)]
    widths = [max([len(h)] + [len(row[i]) for row in full]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for row in rows:
        if len(row) == len(head):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        else:
            lines.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2]]))
    return "\n".join(lines)


def recipes(results: Sequence[Result]) -> list[tuple[str, str]]:
    """``(variant, recipe)`` for each result that read one: which weights it keeps at which precision."""
    return [(r.variant, r.recipe) for r in results if r.recipe]


def within_quality_bound(result: Result, reference: Result | None,
                         max_perplexity_ratio: float = MAX_PERPLEXITY_RATIO,
                         min_agreement: float = MIN_AGREEMENT) -> bool:
    """True if ``result``'s quality is close enough to ``reference``'s (or nothing says otherwise); never
    for a variant that failed the quality gate."""
    if reference is None or result is reference:
        return True
    if result.gate == "failed":
        return False
    if result.perplexity and reference.perplexity:
        if result.perplexity > max_perplexity_ratio * reference.perplexity:
            return False
    return result.top1_agreement is None or result.top1_agreement >= min_agreement


def recommend(results: Sequence[Result], max_perplexity_ratio: float = MAX_PERPLEXITY_RATIO,
              min_agreement: float = MIN_AGREEMENT) -> str:
    """One line: the fastest variant within the quality bound, and the smallest that ran."""
    ok = [r for r in results if r.ok and r.decode_tps]
    if not ok:
        return "No variant finished, so there is nothing to recommend: see the errors above."
    reference = next((r for r in ok if r.variant == ok[0].reference), None)
    good = [r for r in ok if within_quality_bound(r, reference, max_perplexity_ratio, min_agreement)]
    fastest = max(good, key=lambda r: r.decode_tps or 0.0)
    smallest = min(ok, key=lambda r: r.peak_rss_mb or float("inf"))
    quality = ""
    if reference is not None and fastest is not reference and fastest.perplexity and reference.perplexity:
        quality = f", perplexity x{fastest.perplexity / reference.perplexity:.2f} of {reference.variant}"
        if fastest.top1_agreement is not None:
            quality += f", {fastest.top1_agreement:.0%} top-1 agreement"
    bound = (f"perplexity <= {max_perplexity_ratio:g}x and top-1 agreement >= {min_agreement:.0%} "
             f"of {reference.variant}" if reference else "no quality reference")
    return (f"Fastest within the quality bound ({bound}): {fastest.variant} "
            f"({fastest.decode_tps:.1f} tok/s{quality}); smallest that fits: {smallest.variant} "
            f"({_fmt(smallest.peak_rss_mb, '.0f')} MB peak RSS).")


# -- the command line: python -m gemma_widgets bench -------------------------------------------

def add_arguments(parser: Any) -> None:
    """The ``bench`` subcommand's options."""
    parser.add_argument("--model", default=None, help="preset, hub id or folder (default: bundled)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated variants, e.g. fp32,bf16,ov-int4,bf16+compile "
                             "(default: every one this machine can run)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per decode (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds: every variant again, round after round (default 1)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt every variant completes")
    parser.add_argument("--reference", default=None,
                        help="quality reference (default fp32 if run, else bf16, else the first)")
    parser.add_argument("--out", default=None, help="save the results to a .csv or .json file")


def check_variant(variant: str) -> None:
    """Raise :class:`UnknownPrecisionError` unless ``variant`` names a precision and options it takes."""
    from gemma_widgets.precisions import PRECISIONS

    base, options = parse_variant(variant)
    options.pop("compile", None)
    if base not in PRECISIONS and base not in ("auto", "fast"):
        raise UnknownPrecisionError(f"Unknown precision {base!r} in {variant!r}. "
                                    f"Known: auto, fast, {', '.join(PRECISIONS)}.")
    if base in PRECISIONS:
        PRECISIONS[base].parse_options(options)


def check_output(path: str | os.PathLike, suffixes: tuple[str, ...]) -> Path:
    """``path`` if results can be saved there: a known suffix, in a folder that exists and is writable."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise GemmaWidgetsError(f"Save results as {' or '.join(suffixes)}, not {path.name!r}.")
    folder = path.parent
    if not folder.is_dir():
        raise GemmaWidgetsError(f"Cannot save to {path}: the folder {folder} does not exist "
                                "(create it first).")
    if not os.access(folder, os.W_OK):
        raise GemmaWidgetsError(f"Cannot save to {path}: the folder {folder} is not writable.")
    return path


def main(args: Any) -> int:
    """Run the benchmark for parsed ``args``; Ctrl-C stops it and keeps what finished."""
    from tqdm.auto import tqdm

    variants = None
    if args.precisions is not None:
        variants = [v.strip() for v in args.precisions.split(",") if v.strip()]
    if variants is not None:
        if not variants:
            raise GemmaWidgetsError("--precisions is empty: name one or more, e.g. --precisions fp32,bf16 "
                                    "(leave the option out to measure every variant this machine can run).")
        for variant in variants:
            check_variant(variant)
    if args.out:
        check_output(args.out, (".csv", ".json"))
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())

    def finished(r: Result) -> None:
        figure = f"{r.decode_tps:.1f} tok/s" if r.ok and r.decode_tps else f"{r.status}: {r.error}"
        tqdm.write(f"{r.variant}: {figure}")

    try:
        results = run(args.model, variants, prompt=args.prompt, new_tokens=args.new_tokens,
                      repeats=args.repeats, warmup=args.warmup, reference=args.reference,
                      cancel=cancel, on_result=finished, progress_bar=True, rounds=args.rounds)
    finally:
        signal.signal(signal.SIGINT, previous)
    machine = next((r.machine for r in results if r.machine), None)
    if machine:
        print(f"\n{results[0].model} on {describe_machine(machine)}; {args.new_tokens} new tokens, "
              f"median of {args.repeats} runs x {args.rounds} interleaved round(s)\n")
    print(format_table(results))
    for variant, recipe in recipes(results):
        print(f"recipe of {variant}: {recipe}")
    for r in results:
        if r.gate_reason:
            print(f"quality gate: {r.variant} {r.gate}: {r.gate_reason}")
    print(recommend(results))
    if args.out:
        print(f"saved {save(results, args.out)}")
    return 0 if any(r.ok for r in results) else 1
