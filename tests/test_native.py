"""The native-runtime settings: bounded kernel caches and released OpenMP teams."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest
import torch

from gemma_widgets.host.native import KERNEL_CACHE_VARIABLES, release_openmp_threads

#: The start of a fresh-process probe: ``heap_in_use()``, glibc's bytes in use after a collection.
HEAP_PROBE = """
import ctypes, gc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def heap_in_use():
    gc.collect()
    return libc.mallinfo2().uordblks
"""

#: Forward passes of the tiny model in bf16 at 24 new prompt lengths, in a fresh process;
#: prints how much heap they left behind.
SHAPES_SCRIPT = HEAP_PROBE + """
import torch
from gemma_widgets import load_model

model = load_model("tiny-random-gemma2", "bf16").model
with torch.no_grad():
    for length in range(8, 48):  # more shapes than the kit's cap: its cache is full from here on
        model(torch.randint(10, 1000, (1, length)))
    before = heap_in_use()
    for length in range(48, 72):
        model(torch.randint(10, 1000, (1, length)))
print(heap_in_use() - before)
"""


def heap_left_by_new_shapes(capacity: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_VARIABLES}
    if capacity is not None:
        env.update(dict.fromkeys(KERNEL_CACHE_VARIABLES, capacity))
    done = subprocess.run([sys.executable, "-c", SHAPES_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads glibc's heap figures")
def test_new_prompt_lengths_leave_no_kernels_behind_once_the_capped_caches_are_full():
    """Under the kit's cap, 24 new lengths leave under 2 MB. Without it (oneDNN's and ideep's default
    of 1024 kernels each) they left over 20 MB on an AVX-512 Xeon, about 2 MB per length, and 1 kB on
    an AMD EPYC whose bf16 path builds no per-shape kernels: the cap is checked, not the growth."""
    assert heap_left_by_new_shapes(None) < 2 * 2**20


#: Four threads allocate at once after ``import gemma_widgets``; prints how many heap arenas
#: glibc then has (``malloc_info`` writes one ``<heap nr=...>`` element per arena).
ARENAS_SCRIPT = """
import ctypes, tempfile, threading
import gemma_widgets

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = libc.fopen.restype = ctypes.c_void_p
together = threading.Barrier(4)

def allocate():
    together.wait()
    for _ in range(100):
        libc.free(ctypes.c_void_p(libc.malloc(4096)))

threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = ctypes.c_void_p(libc.fopen(report.name.encode(), b"w"))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(report.name).read().count("<heap nr="))
"""


def heap_arenas(arena_max: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if arena_max is not None:
        env["MALLOC_ARENA_MAX"] = arena_max
    done = subprocess.run([sys.executable, "-c", ARENAS_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas")
def test_threads_share_one_heap_arena_unless_the_user_chose_otherwise():
    assert heap_arenas(None) == 1  # the kit's setting: a reply thread's freed heap is reused
    assert heap_arenas("8") > 1  # the user's own MALLOC_ARENA_MAX is kept


def test_the_users_own_cache_setting_is_kept():
    code = "import gemma_widgets, os; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "7"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "7"


def test_releasing_openmp_threads_frees_the_idle_team_and_torch_still_computes():
    if torch.get_num_threads() < 2:
        pytest.skip("one OpenMP thread: there is no idle team to release")
    x = torch.randn(4_000_000)
    total = (x * 2).sum()  # a parallel region: the calling thread now has a team of workers
    before = psutil.Process().num_threads()
    release_openmp_threads()
    deadline = time.monotonic() + 5
    while psutil.Process().num_threads() >= before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert psutil.Process().num_threads() < before
    assert torch.allclose((x * 2).sum(), total)  # the team comes back when needed
