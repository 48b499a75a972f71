"""Settings of the native runtimes under torch (GNU OpenMP, oneDNN) that a chat needs.

* :func:`bound_native_memory`: a chat's prompt is a new length every turn. oneDNN and ideep
  keep the kernels they build for each input shape, up to 1024 of each, so every turn added
  ~3.7 MB that stayed (bundled model in bf16); and glibc gave each new reply thread its own
  heap arena, whose freed pages RSS kept (up to +70 MB over 50 turns). The kit caps the
  caches and keeps to one arena: 50 turns then grew RSS by ~2 MB (``benchmarks/chat_bench.py``).
* :func:`release_openmp_threads`: frees the caller's idle OpenMP team before another thread
  computes.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import sys

#: Kernels kept per cache. A decoding step uses about six shapes (one per distinct linear
#: layer) and a prompt as many again, so this keeps a step's kernels and a few prompts'.
KERNEL_CACHE_CAPACITY = 32

#: ``mallopt``'s parameter for the most heap arenas glibc creates (``malloc.h``).
M_ARENA_MAX = -8

#: The environment variables oneDNN's primitive cache and ideep's LRU cache read at first use.
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_native_memory(capacity: int = KERNEL_CACHE_CAPACITY) -> None:
    """Cap oneDNN's and ideep's per-shape kernel caches and glibc's heap arenas.

    Each setting the user made already (the cache variables, ``MALLOC_ARENA_MAX``) is kept.
    The caches read their variable once, when torch first runs a oneDNN kernel (after
    ``import torch`` is fine), so ``import gemma_widgets`` calls this. One arena serialises
    ``malloc`` between threads, which a chat (one decoding thread) does not feel.
    """
    for name in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        try:
            ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)
        except (OSError, AttributeError):  # not glibc
            pass


def release_openmp_threads() -> None:
    """Free the calling thread's idle OpenMP workers before another thread starts computing.

    torch's CPU kernels run on GNU OpenMP, which keeps a team of workers per thread that ever
    ran a parallel region. While the main thread's idle team exists beside the generation
    thread's, there are more OpenMP threads than cores on a small machine, and libgomp then
    stops spin-waiting between regions: on 2 cores a reply decoded in a background thread at
    about 0.75x the speed of the same ``generate`` in the main thread (``benchmarks/chat_bench.py``).
    ``omp_pause_resource_all`` releases the calling thread's team; it comes back when that
    thread next computes. A no-op where libgomp is not loaded (macOS, other builds).
    """
    try:
        libgomp = ctypes.CDLL("libgomp.so.1", mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        libgomp.omp_pause_resource_all(1)  # omp_pause_soft
    except (OSError, AttributeError):
        pass


def free_memory() -> None:
    """Collect garbage, then give the heap this process freed back to the OS (glibc keeps freed
    pages otherwise, and a container such as Binder's counts them). Only the collection where
    glibc is not the C library (macOS, musl)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


#: The torch functions inductor registers as extern kernels when its kernel modules are first
#: imported, by their ``__name__``; a compiled graph calls them as ``extern_kernels.<name>``.
_EXTERN_KERNELS = {"torch._inductor.kernel.bmm": ("aten_bmm", "bmm"),
                   "torch._inductor.kernel.mm": ("aten_mm", "mm")}


def inductor_kernels_intact() -> bool:
    """Register inductor's extern kernels now, and say whether they are torch's own functions.

    OpenVINO's PyTorch frontend swaps ``torch.bmm`` for a function named ``wrapper`` while it
    traces a 16-bit model (an optimum-intel export). If inductor's kernel modules are first
    imported during that window, inductor registers the wrapper, every graph that process
    compiles calls ``extern_kernels.wrapper``, and a later process that finds the graph in a
    shared cache fails (``'KernelNamespace' object has no attribute 'wrapper'``). Calling this
    before an export registers the real functions; False means that registration already went
    wrong in this process.
    """
    return all(getattr(importlib.import_module(module), choice).name == name
               for module, (choice, name) in _EXTERN_KERNELS.items())
