"""llama.cpp (through llama-cpp-python) on a GGUF file: the engine most CPU users already run.

The kit feeds it the same token ids as every other engine (its Hugging Face tokenizer and
Gemma's chat template; ``tests/test_llamacpp.py`` checks that llama.cpp's own tokenizer gives the
same ids), so a row of the dashboard compares runtimes, not prompts. ``Llama.generate`` yields
one token id per step and never stops on its own: the engine ends at an end-of-turn id, at
``max_new_tokens`` or when Stop is set.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gemma_widgets._probe import cpu_flags, probe
from gemma_widgets.engines.base import SCORE_CHUNK, LocalEngine
from gemma_widgets.templates import end_of_turn_ids

#: Tokens of context the engine allocates by default: the KV cache grows with it (Gemma 3 270M:
#: ~18 KB a token in f16), and a chat in a notebook rarely needs Gemma 3's whole 32k.
DEFAULT_CONTEXT = 4096


#: A two-token greedy decode: the first call into llama.cpp's CPU kernels, where a build for
#: instructions this CPU lacks dies.
_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
for count, _ in enumerate(llm.generate(llm.tokenize(b"Bees make"), temp=0.0, top_k=1), start=1):
    if count == 2:
        break
"""

#: How to build llama-cpp-python for the machine at hand (the kit's Makefile builds the same flags).
REBUILD = ("rebuild it for this machine: `make install-llamacpp` in the kit's checkout, or "
           "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF' "
           "pip install --force-reinstall --no-cache-dir llama-cpp-python")


def unavailable_reason(gguf: str) -> str | None:
    """Why llama.cpp cannot run on this machine, or None: it decodes ``gguf`` in a child process
    first (once per build and CPU, :mod:`gemma_widgets._probe`), so a build that crashes here is
    reported instead of killing the kernel."""
    reason = probe("llama-cpp-python", "llama_cpp", _PROBE, gguf)
    if reason is None:
        return None
    flags = cpu_flags()
    no_avx512 = flags and "avx512f" not in flags
    hint = " This CPU has no AVX-512, so a build made for AVX-512 dies here." if no_avx512 else ""
    return f"{reason}.{hint} The other precisions do not need it; {REBUILD}"


def default_threads() -> int:
    """The cores this process may use (llama-cpp-python's own default is half the CPU count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LlamaCppEngine(LocalEngine):
    """A ``llama_cpp.Llama`` on one GGUF file."""

    name = "llama.cpp"
    can_score = True

    def __init__(self, llm: Any, tokenizer: Any, path: str):
        self.model = llm
        self.tokenizer = tokenizer
        self.path = path
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.context_window = int(llm.n_ctx())

    @classmethod
    def from_gguf(cls, path: str, tokenizer: Any, n_threads: int | None = None,
                  n_ctx: int | None = None) -> LlamaCppEngine:
        """llama.cpp on the GGUF file at ``path``, with ``tokenizer`` (the same vocabulary) for the chat."""
        from llama_cpp import Llama

        threads = n_threads or default_threads()
        llm = Llama(model_path=path, n_ctx=n_ctx or DEFAULT_CONTEXT, n_threads=threads,
                    n_threads_batch=threads, verbose=False)
        return cls(llm, tokenizer, path)

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
        """llama.cpp's own logits over ``ids``: a second context on the same (memory-mapped) file
        that keeps every position's logits (``logits_all``), read in chunks of rows."""
        import torch
        from llama_cpp import Llama

        if not keep_generator:
            self.model = None
        threads = default_threads()
        scorer = Llama(model_path=self.path, n_ctx=len(ids), n_batch=min(512, len(ids)), logits_all=True,
                       n_threads=threads, n_threads_batch=threads, verbose=False)
        scorer.eval(list(ids))
        for start in range(0, len(ids), SCORE_CHUNK):
            yield torch.from_numpy(scorer.scores[start:min(start + SCORE_CHUNK, len(ids))].copy())

    def weights_bytes(self) -> int:
        return Path(self.path).stat().st_size

    def recipe(self) -> str:
        from gemma_widgets.recipe import describe, gguf_rows

        return describe(gguf_rows(self.path))
