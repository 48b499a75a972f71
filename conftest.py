"""nbval runs every notebook as on Binder: told the memory budget, and held to it.

Each notebook's kernel starts with ``MEM_LIMIT`` set to Binder's 2 GiB (the variable JupyterHub
spawners, Binder's included, set; ``gemma_widgets.course.environment.setup`` reads it), so it takes the
path a Binder learner gets, and a watcher fails the notebook if it uses more. At the repository
root so that it applies however the notebooks are collected (``pytest``, ``pytest notebooks/``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tools")]
from notebook_memory import MB, TreeWatcher  # noqa: E402
from store_outputs import output_kinds, run_signature  # noqa: E402

# mybinder.org gives 1-2 GB; the course's default path must fit 2 GB. NOTEBOOK_MEMORY_LIMIT_MB=0 lifts
# the limit (benchmarks/gpu_course.sh runs Gemma 2 2B's shape); peaks are reported either way.
BINDER_LIMIT_MB = int(os.environ.get("NOTEBOOK_MEMORY_LIMIT_MB", "2048"))


def pytest_collection_modifyitems(config, items):
    """Watch each notebook's kernel, and the processes it starts, while nbval runs its cells.

    A background thread (``benchmarks/notebook_memory.py``) sums their anonymous memory, what a
    container cannot reclaim, and their PSS. If the anonymous peak passes :data:`BINDER_LIMIT_MB`,
    the notebook's last cell fails with the figures. Every peak, and how long the cells ran, is
    printed in the summary. Where the notebook's stored outputs come from this run's model, stack
    and memory limit, each cell's new outputs are compared with them (:func:`_compare_with_stored`).
    """
    this_run = {**run_signature(), "memory_limit_mb": BINDER_LIMIT_MB}
    notebooks: dict = {}
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            notebooks.setdefault(item.parent, []).append(item)
    peaks = config.stash.setdefault(_PEAKS, {})
    for notebook, cells in notebooks.items():
        stored = notebook.nb.metadata.get("gemma_widgets", {}).get("outputs", {})
        if {key: stored.get(key) for key in this_run} == this_run:
            for cell in cells:
                _compare_with_stored(cell)
        _watch(notebook, cells[0], cells[-1], peaks)


def _compare_with_stored(cell) -> None:
    """After nbval runs ``cell``, fail it if it made other kinds of output than the stored run did
    (same model and stack: only the values, timings above all, may differ)."""
    run = cell.runtest

    def run_and_compare() -> None:
        run()
        stored, now = output_kinds(cell.cell.outputs), output_kinds(cell.test_outputs)
        assert stored == now, (f"cell {cell.cell_num} made {now}, the stored run {stored}: the stored outputs "
                               "are not this code's; run `make outputs`")

    cell.runtest = run_and_compare


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
