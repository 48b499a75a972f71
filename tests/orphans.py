"""Helpers for the tests that kill a parent process and check that its children went with it."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it has ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone_within(pid: int, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``pid`` to end; True if it did."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def kill_if_ours(pid: int, marker: str) -> None:
    """SIGKILL ``pid`` if it still runs a command line containing ``marker`` (never a recycled pid)."""
    with contextlib.suppress(psutil.Error, ProcessLookupError):
        if alive(pid) and marker in " ".join(psutil.Process(pid).cmdline()):
            os.kill(pid, signal.SIGKILL)


def first_line(process: subprocess.Popen, seconds: float) -> str:
    """The first line ``process`` prints, or '' if none comes within ``seconds``."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=seconds).strip()
    except queue.Empty:
        return ""


@contextlib.contextmanager
def parent_process(script: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``python -c script`` with its stdout piped, SIGKILLed (if still running) after the block."""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)
