"""nbval runs every notebook as on Binder: told the memory budget, and held to it.

Each notebook's kernel starts with ``MEM_LIMIT`` set to Binder's 2 GiB (the variable JupyterHub
spawners, Binder's included, set; ``gemma_widgets.environment.setup`` reads it), so it takes the
path a Binder learner gets, and a watcher fails the notebook if it uses more. At the repository
root so that it applies however the notebooks are collected (``pytest``, ``pytest notebooks/``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from notebook_memory import MB, TreeWatcher  # noqa: E402

# mybinder.org gives 1-2 GB; the course's default path must fit 2 GB. NOTEBOOK_MEMORY_LIMIT_MB=0 lifts
# the limit (benchmarks/gpu_course.sh runs Gemma 2 2B's shape); peaks are reported either way.
BINDER_LIMIT_MB = int(os.environ.get("NOTEBOOK_MEMORY_LIMIT_MB", "2048"))


def pytest_collection_modifyitems(config, items):
    """Watch each notebook's kernel, and the processes it starts, while nbval runs its cells.

    A background thread (``benchmarks/notebook_memory.py``) sums their anonymous memory, what a
    container cannot reclaim, and their PSS. If the anonymous peak passes :data:`BINDER_LIMIT_MB`,
    the notebook's last cell fails with the figures. Every peak, and how long the cells ran, is
    printed in the summary.
    """
    notebooks: dict = {}
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            notebooks.setdefault(item.parent, []).append(item)
    peaks = config.stash.setdefault(_PEAKS, {})
    for notebook, cells in notebooks.items():
        _watch(notebook, cells[0], cells[-1], peaks)


def _watch(notebook, first, last, peaks: dict) -> None:
    watcher: list = []
    started: list = []
    run_first, run_last, start_kernel = first.runtest, last.runtest, notebook.setup

    def setup_as_on_binder() -> None:
        saved = os.environ.get("MEM_LIMIT")
        if BINDER_LIMIT_MB:
            os.environ["MEM_LIMIT"] = str(BINDER_LIMIT_MB * MB)  # the kernel inherits it
        try:
            start_kernel()
        finally:
            if saved is None:
                os.environ.pop("MEM_LIMIT", None)
            else:
                os.environ["MEM_LIMIT"] = saved

    def start() -> None:
        watcher.append(TreeWatcher(notebook.kernel.km.provisioner.pid, interval=0.2).start())
        started.append(time.monotonic())
        run_first()

    def check() -> None:
        try:
            run_last()
        finally:
            watcher[0].sample()  # the kernel is alive: its VmHWM is final
            watcher[0].stop()
        anon, pss, kernel = (value / MB for value in (watcher[0].peak_anon, watcher[0].peak, watcher[0].root_hwm))
        peaks[notebook.name] = (anon, pss, kernel, time.monotonic() - started[0])
        assert not BINDER_LIMIT_MB or anon <= BINDER_LIMIT_MB, (
            f"{notebook.name} peaked at {anon:.0f} MB of anonymous memory (kernel and the processes it "
            f"started; PSS {pss:.0f} MB): over Binder's {BINDER_LIMIT_MB} MB")

    notebook.setup, first.runtest, last.runtest = setup_as_on_binder, start, check


def pytest_terminal_summary(terminalreporter, config):
    peaks = config.stash.get(_PEAKS, {})
    if peaks:
        terminalreporter.section(f"notebook peak memory (Binder limit {BINDER_LIMIT_MB} MB)")
        for name, (anon, pss, kernel, seconds) in peaks.items():
            terminalreporter.write_line(f"{name}: {anon:.0f} MB anonymous, {pss:.0f} MB PSS (kernel + "
                                        f"children); kernel peak RSS {kernel:.0f} MB; cells ran {seconds:.0f} s")


_PEAKS = pytest.StashKey[dict]()
