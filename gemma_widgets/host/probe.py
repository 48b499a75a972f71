"""Native code tried in a child process before the kernel runs it: a crash becomes a reason.

A library built for another CPU dies at its first kernel call ("Illegal instruction": an AVX-512
build on a CPU without it), and a crash of native code cannot be caught in Python: it takes the
Jupyter kernel or the pytest process with it. :func:`probe` runs a short script in a child
process instead and returns why it failed, or None. The answer is cached per installed build
(the package's files, sizes and times) and per CPU (its model and flags) in the kit's cache, so
the child runs once per machine and build (about 2 s for llama.cpp on the bundled model).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import platform
import signal
import subprocess
import sys
from pathlib import Path

from gemma_widgets.cache import cache_root
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.files import write_atomic

#: Seconds a probe may run. A timeout is reported but not cached: a busy machine may pass later.
PROBE_TIMEOUT = 120


def cpu_signature() -> str:
    """The CPU's model name and instruction-set flags (Linux), else what ``platform`` reports."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = {line for line in lines if line.split(":")[0].strip() in ("model name", "flags")}
    return "\n".join(sorted(wanted))


def cpu_flags() -> set[str]:
    """The instruction-set flags this CPU reports (empty where /proc/cpuinfo does not exist)."""
    for line in cpu_signature().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def build_signature(module: str) -> str | None:
    """Name, size and modification time of every file of an installed package (None if missing).

    Found on ``sys.path`` as a child process finds it, not in ``sys.modules``: a package rebuilt
    while this process runs is a new build."""
    spec = importlib.machinery.PathFinder.find_spec(module)
    if spec is None or not spec.origin:
        return None
    root = Path(spec.origin).parent
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return "\n".join(f"{p.relative_to(root)} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)


def _cache_file() -> Path:
    return cache_root() / "native-probes.json"


def _cached() -> dict[str, str | None]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and (v is None or isinstance(v, str))}


def probe(name: str, module: str, script: str, *args: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Run ``script`` (Python source, given ``args`` in ``sys.argv[1:]``) in a child process and say
    why it failed, or None when it exited 0. ``module`` names the package whose build is probed."""
    build = build_signature(module)
    if build is None:
        return f"{module} is not installed"
    key = hashlib.sha256("\n\n".join((name, build, cpu_signature(), script, *args)).encode()).hexdigest()
    known = _cached()
    if key in known:
        return known[key]
    try:
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                              errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"a test run of {name} in a child process did not finish in {timeout:.0f} s; try again"
    reason = None if done.returncode == 0 else _failure(name, done.returncode, done.stderr)
    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_cache_file(), json.dumps({**_cached(), key: reason}, indent=1))
    except (OSError, GemmaWidgetsError):  # a read-only cache: probe again next time
        pass
    return reason


def _failure(name: str, returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
        what = " ('Illegal instruction': built for instructions this CPU lacks)" if signame == "SIGILL" else ""
        return f"{name} crashed with {signame}{what} in a test run in a child process"
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [f"exit status {returncode}"]
    return f"{name} failed in a test run in a child process: {last[0][:300]}"
