"""The machine at hand, described once: cores, memory (a container's limit included), CPU, GPU, libraries.

:class:`Hardware` is what a precision's check and the auto pick read (tests pass a made-up one);
:class:`Machine` travels with every benchmark result (results from different machines are not
comparable); :func:`usable_cores` and :func:`memory_limit_bytes` are what the set-up cell, the
engines' thread counts and the benchmarks read.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import psutil

#: The libraries whose versions a result records.
LIBRARIES = ("torch", "transformers", "optimum-intel", "openvino", "openvino-genai", "nncf",
             "bitsandbytes", "llama-cpp-python", "gemma_widgets")

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def usable_cores() -> int:
    """Logical cores this process may run on (its CPU affinity; a container may allow fewer)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_limit_bytes(limit_files: tuple[str, ...] = _CGROUP_LIMITS) -> int:
    """RAM this process may use: the machine's total, or a container's lower limit.

    Binder (Kubernetes) and Docker cap a kernel with a cgroup; ``psutil`` reports the host.
    """
    limit = psutil.virtual_memory().total
    candidates = [os.environ.get("MEM_LIMIT", "")]  # set by JupyterHub spawners, Binder's too
    for name in limit_files:
        try:
            candidates.append(Path(name).read_text().strip())
        except OSError:
            continue
    for value in candidates:
        if value.isdigit() and 0 < int(value) < limit:
            limit = int(value)
    return limit


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    """The GPUs ``nvidia-smi`` lists (name and memory), without importing torch; "" when none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return "; ".join(line.strip() for line in out.splitlines() if line.strip())


def memory_room(limit_files: tuple[str, ...] = _CGROUP_LIMITS) -> int | None:
    """Bytes this process may still take under a container's memory limit (Binder's 2 GB), beside what it
    holds already; None where no limit is below the machine's memory."""
    limit = memory_limit_bytes(limit_files)
    if limit >= psutil.virtual_memory().total:
        return None
    return limit - psutil.Process().memory_info().rss


@dataclass(frozen=True)
class Hardware:
    """What loading needs to know of this machine, taken once per load."""

    cuda_capability: tuple[int, int] | None  # the first CUDA GPU's compute capability; None: no GPU
    free_memory: int  # bytes weights may take: free GPU memory with CUDA, else available RAM
    cores: int = 1

    @property
    def cuda(self) -> bool:
        return self.cuda_capability is not None

    @property
    def memory_name(self) -> str:
        return "GPU memory" if self.cuda else "RAM"

    @classmethod
    def detect(cls) -> Hardware:
        """This machine as torch sees it."""
        import torch  # here, not at the top: describing a machine must not cost torch's 4 s import

        if torch.cuda.is_available():
            return cls(tuple(torch.cuda.get_device_capability()), torch.cuda.mem_get_info()[0], usable_cores())
        return cls(None, psutil.virtual_memory().available, usable_cores())


@dataclass(frozen=True)
class Machine:
    """Where a run happened: results from different machines are not comparable."""

    cpu: str
    cores: int  # logical cores this process may use
    physical_cores: int
    memory_gb: float
    gpu: str  # "" when there is none
    platform: str
    python: str
    libraries: dict[str, str] = field(default_factory=dict)

    @classmethod
    def here(cls) -> Machine:
        """Describe this machine (without importing torch: the GPU comes from ``nvidia-smi``)."""
        versions = {}
        for name in LIBRARIES:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return cls(cpu_name(), usable_cores(), int(psutil.cpu_count(logical=False) or 1),
                   round(memory_limit_bytes() / 1e9, 1), gpu_name(),
                   platform.platform(), platform.python_version(), versions)



def noise_probe(size_bytes: int = 32 * 2**20, repeats: int = 5) -> float:
    """Seconds (median of ``repeats``) to sum a ``size_bytes`` array: a fixed, memory-bound piece of
    work like a decoding step, timed again and again over a benchmark run."""
    data = np.ones(size_bytes // 4, dtype=np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

