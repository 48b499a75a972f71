"""``torch.compile`` for Gemma: static caches, a compiled decode step, and the inductor cache.

Two recipes, both current for transformers 4.57 and 5:

* :func:`compile_forward` is the seed's recipe, ``model.forward = torch.compile(model.forward,
  mode="reduce-overhead", fullgraph=True)`` with an explicit :func:`static_cache` passed to
  ``generate``: prefill and decode are both compiled, so every new prompt length is a new shape.
* :func:`compile_generate` is what ``generate`` itself does on CUDA with
  ``cache_implementation="static"``: the prefill runs eagerly and only the one-token decode step
  is compiled, against a static cache that is reused while it is large enough.

``HybridCache`` is deprecated in transformers 4.57 and gone in 5: :class:`transformers.StaticCache` reads
``config.layer_types`` and gives each sliding-window layer (Gemma 2 and 3) a window-sized
buffer and each global layer a ``max_cache_len`` one. Timing the recipes side by side is
:mod:`gemma_widgets.bench.compiled`'s job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import CompileConfig, StaticCache

from gemma_widgets.cache import cache_root, writable_folder
from gemma_widgets.engines.hf import greedy_exact
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.native import inductor_kernels_intact

DEFAULT_CACHE_LEN = 512  # tokens of prompt plus reply that compiled generation serves without recompiling


def default_mode(device: str) -> str:
    """``reduce-overhead`` (CUDA graphs) on a GPU; ``default`` on a CPU, which has no CUDA graphs."""
    return "reduce-overhead" if str(device).startswith("cuda") else "default"


def check_mode(mode: str) -> str:
    """``mode`` if ``torch.compile`` knows it, else a :class:`GemmaWidgetsError` listing the modes."""
    from torch._inductor import list_mode_options  # the compiler stack, loaded to compile

    known = tuple(dict.fromkeys(("default", *list_mode_options())))
    if mode not in known:
        raise GemmaWidgetsError(f"Unknown torch.compile mode {mode!r}; choose from {', '.join(known)}.")
    return mode


def compile_unavailable_reason(device: str = "cpu") -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or None if it can."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile is not supported on this Python/platform (torch {torch.__version__})"
    if str(device).startswith("cuda"):
        from torch.utils._triton import has_triton  # the compiler stack, loaded to compile

        if not has_triton():
            return "compiling for CUDA needs Triton (pip install triton)"
        return None
    compiler = os.environ.get("CXX") or "c++"
    if not shutil.which(compiler) and not shutil.which("g++") and not shutil.which("clang++"):
        return "compiling for the CPU needs a C++ compiler (install g++ or clang++)"
    return None


#: Compile serially on machines this small (see :func:`use_inductor_cache`).
SERIAL_COMPILE_CORES = 4


def inductor_cache_dir() -> Path:
    """The kit's persistent inductor cache: ``<cache root>/inductor``."""
    return cache_root() / "inductor"


def use_inductor_cache(folder: Path | str | None = None) -> Path:
    """Keep compiled kernels in ``folder`` (default :func:`inductor_cache_dir`) across processes.

    A ``$TORCHINDUCTOR_CACHE_DIR`` set by the user wins unless ``folder`` is given, so CI can point
    it anywhere; torch's own default (``/tmp/torchinductor_<user>``, which torch writes into the
    environment the first time it imports inductor, loading a model for one) does not: it would not
    survive a reboot. A process whose inductor registered a wrapped torch function
    (:func:`~gemma_widgets.host.native.inductor_kernels_intact`) compiles into a private folder instead,
    so its graphs never reach a shared cache. Returns the folder in use.

    On a machine of :data:`SERIAL_COMPILE_CORES` cores or fewer it also compiles in this process
    (``compile_threads=1``, inherited by child processes): inductor's pool of compile workers
    starts a Python process per core, about 100 MB each, and buys little on two cores.
    """
    if (os.cpu_count() or 1) <= SERIAL_COMPILE_CORES:
        import torch._inductor.config  # the compiler stack, loaded to compile

        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        torch._inductor.config.compile_threads = int(os.environ["TORCHINDUCTOR_COMPILE_THREADS"])
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # the compiler stack, loaded to compile

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not inductor_kernels_intact():  # its graphs would break other processes: keep them apart
        path = Path(tempfile.mkdtemp(prefix="gemma_widgets-inductor-private-"))
        warnings.warn("inductor registered a wrapped torch function in this process (an OpenVINO export "
                      "ran before the first compile): compiling into a private folder, not the shared "
                      f"cache. A fresh kernel compiles into {inductor_cache_dir()}.", stacklevel=2)
    elif folder is None and chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        path = Path(chosen)
    else:
        path = Path(folder) if folder is not None else inductor_cache_dir()
    writable_folder(path)  # a read-only cache: a clear error now, not a traceback deep in inductor
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def static_cache(model: Any, max_cache_len: int, batch_size: int = 1) -> Any:
    """A :class:`transformers.StaticCache` for ``model``, allocated now (not at the first update).

    Sliding-window layers get ``min(sliding_window, max_cache_len)`` slots, global layers
    ``max_cache_len``: what ``HybridCache`` did before transformers 4.57.
    """
    config = model.config.get_text_config(decoder=True)
    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache.early_initialization(batch_size, config.num_key_value_heads, head_dim, model.dtype, model.device)
    return cache


def cache_length(cache: Any) -> int:
    """How many tokens a static cache holds: its global layers' length (sliding ones hold a window).

    Read from the layers: transformers 5 has no ``StaticCache.max_cache_len``.
    """
    return max(layer.max_cache_len for layer in cache.layers)


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def encode(tokenizer: Any, prompt: str, device: Any, pad_to_multiple_of: int | None = None) -> Any:
    """Tokenize ``prompt`` onto ``device`` (the model's: ``model.device``); with ``pad_to_multiple_of``,
    left-pad it so compiled shapes repeat."""
    batch = tokenizer(prompt, return_tensors="pt", padding=bool(pad_to_multiple_of),
                      pad_to_multiple_of=pad_to_multiple_of, padding_side="left")
    return batch.to(device)


def compile_forward(model: Any, mode: str | None = None, fullgraph: bool = True) -> None:
    """The seed's recipe: replace ``model.forward`` by its compiled version (undo: :func:`uncompile`)."""
    mode = mode or default_mode(model.device.type)
    uncompile(model)
    model._eager_forward = model.forward
    model.forward = torch.compile(model.forward, mode=mode, fullgraph=fullgraph)


def compile_generate(model: Any, mode: str | None = None, fullgraph: bool = True,
                     max_cache_len: int | None = DEFAULT_CACHE_LEN) -> None:
    """Make ``model.generate`` decode with a compiled step over a static cache (undo: :func:`uncompile`).

    This is transformers' own path (``cache_implementation="static"`` plus a ``CompileConfig``),
    also enabled on a CPU. With ``max_cache_len``, a cache of that size is allocated now, so
    every request of up to that many tokens (prompt plus reply) reuses one compiled graph.
    """
    mode = mode or default_mode(model.device.type)
    uncompile(model)
    config = CompileConfig(fullgraph=fullgraph, mode=mode)
    config._compile_all_devices = True  # transformers compiles on CUDA only unless told
    model.generation_config.compile_config = config
    model.generation_config.cache_implementation = "static"
    if max_cache_len:
        model._cache = static_cache(model, max_cache_len)  # generate reuses it while it is large enough


def uncompile(model: Any) -> None:
    """Back to eager: undo :func:`compile_forward` and :func:`compile_generate`."""
    eager = model.__dict__.pop("_eager_forward", None)
    if eager is not None:
        model.forward = eager
    model.generation_config.compile_config = None
    model.generation_config.cache_implementation = None
    for attr in ("_cache", "_compiled_call", "_last_compile_config"):
        model.__dict__.pop(attr, None)


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process (each recompile adds at least one)."""
    from torch._dynamo.utils import counters  # the compiler stack, loaded to compile

    return int(counters["stats"]["unique_graphs"])


@dataclass
class GraphCount:
    """What :func:`count_graphs` saw: graphs compiled, and the guard failures that caused recompiles."""

    graphs: int = 0
    reasons: list[str] = field(default_factory=list)


def _guard_failure_counts() -> dict[Any, int]:
    from torch._dynamo.utils import guard_failures  # the compiler stack, loaded to compile

    return {code: len(reasons) for code, reasons in list(guard_failures.items())}


@contextlib.contextmanager
def count_graphs() -> Iterator[GraphCount]:
    """Count graphs compiled inside the block: ``with count_graphs() as c: ...``, then ``c.graphs``.

    ``c.reasons`` holds the first line of each guard failure (why dynamo recompiled).
    """
    from torch._dynamo.utils import guard_failures  # the compiler stack, loaded to compile

    count = GraphCount()
    start, seen = compiled_graphs(), _guard_failure_counts()
    try:
        yield count
    finally:
        count.graphs = compiled_graphs() - start
        new = [reason.splitlines()[0] for code, reasons in list(guard_failures.items())
               for reason in reasons[seen.get(code, 0):]]
        count.reasons = list(dict.fromkeys(new))


def enable_compile(lm: Any, mode: str | bool = True, max_cache_len: int = DEFAULT_CACHE_LEN) -> Any:
    """Compile ``lm``'s generation (:func:`compile_generate`) and warm it up now.

    ``mode`` is a ``torch.compile`` mode or True for :func:`default_mode`. A compile that cannot
    run or fails falls back to eager, says why in ``lm.notes`` and leaves ``lm.compiled`` None.
    """
    model = lm.engine.torch_model
    if model is None:
        lm.notes.append(f"torch.compile skipped: {lm.engine.name} models are compiled by their own runtime")
        return lm
    mode = check_mode(default_mode(model.device.type) if mode is True else str(mode))
    reason = compile_unavailable_reason(model.device.type)
    if reason:
        lm.notes.append(f"torch.compile skipped, running eager: {reason}")
        return lm
    use_inductor_cache()
    compile_generate(model, mode, max_cache_len=max_cache_len)
    start = time.perf_counter()
    try:
        greedy_exact(model, encode(lm.tokenizer, "Hello", model.device), 2)
    except Exception as exc:  # a compiler error must not take the kernel down
        uncompile(model)
        first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
        lm.notes.append(f"torch.compile(mode={mode!r}) failed, running eager: "
                        f"{exc.__class__.__name__}: {first_line}")
        return lm
    lm.compiled = mode
    lm.notes.append(f"compiled decode step (mode={mode!r}, static cache of {max_cache_len} tokens); "
                    f"compile and warm-up took {time.perf_counter() - start:.1f} s")
    return lm
