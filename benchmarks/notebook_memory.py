"""Peak memory of each notebook, run top to bottom: does the course fit Binder's 1-2 GB?

Each notebook runs in a fresh kernel with nbclient (as nbval does). A thread samples, every
``interval`` seconds, the kernel and every process it started (the dashboard's per-variant
workers, for example) and keeps the peaks of two sums over them:

* anonymous memory (``Pss_Anon + Pss_Shmem``): what cannot be given back under pressure. A
  container's limit (Binder's cgroup) counts page cache too, but drops clean file pages (a
  memory-mapped model file) before it kills anything, so this is the figure that decides an
  out-of-memory kill, and the one held against ``--limit-gb``. Proportional, not ``RssAnon``:
  a child forked from the kernel shares its pages until it writes them, and the cgroup charges
  a shared page once (``RssAnon`` summed over the tree counted the kernel twice, 1 GB over, in a
  sample taken while a child had just forked);
* PSS, which adds the file pages in use, shared pages split between processes: the memory the
  tree touches, a tighter fit than the limit needs.

The kernel's own exact peak RSS (Linux ``VmHWM``, file pages included) is kept beside them.

    python benchmarks/notebook_memory.py                      # every notebook, a Markdown table
    python benchmarks/notebook_memory.py notebooks/06_*.ipynb --limit-gb 2 --json memory.json

Exit status 1 if a notebook fails or its peak exceeds ``--limit-gb``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


@dataclass
class NotebookMemory:
    """One notebook's run: its peak memory and how long it took."""

    notebook: str
    peak_anon_mb: float  # peak of the summed anonymous memory of the kernel and its descendants
    peak_mb: float  # peak of their summed PSS (file pages in use included)
    kernel_peak_mb: float  # the kernel process's own high-water mark (VmHWM)
    max_processes: int  # most processes alive at once (kernel included)
    seconds: float
    error: str = ""

    def fits(self, limit_mb: float) -> bool:
        return not self.error and self.peak_anon_mb <= limit_mb


def _proc_kb(pid: int, table: str = "status") -> dict[str, int]:
    """/proc/<pid>/<table> (``status``, ``smaps_rollup``) as {key: bytes}; empty where unavailable."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/{table}").read_text().splitlines():
            key, _, value = line.partition(":")
            fields = value.split()
            if len(fields) == 2 and fields[1] == "kB":
                values[key] = int(fields[0]) * 1024
    except (OSError, ValueError):
        pass
    return values


class TreeWatcher:
    """Samples the memory of a process and all its descendants in a background thread.

    ``peak_anon`` and ``peak`` (PSS) are the peaks of the sums over the tree, in bytes;
    ``root_hwm`` is the root process's own peak RSS.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = self.peak_anon = self.root_hwm = self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        pss = anon = 0
        for process in processes:
            rollup = _proc_kb(process.pid, "smaps_rollup")  # one read: the kernel walks every mapping
            pss += rollup.get("Pss", 0)
            anon += rollup.get("Pss_Anon", 0) + rollup.get("Pss_Shmem", 0)
        self.peak, self.peak_anon = max(self.peak, pss), max(self.peak_anon, anon)
        self.max_processes = max(self.max_processes, len(processes))
        self.root_hwm = max(self.root_hwm, _proc_kb(self.root.pid).get("VmHWM", 0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def measure(notebook: Path, timeout: int = 1800, interval: float = 0.1) -> NotebookMemory:
    """Run ``notebook`` in a fresh kernel (outputs discarded) and return its peak memory."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    watchers: list[TreeWatcher] = []
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})

    def on_start(**_kwargs) -> None:
        watchers.append(TreeWatcher(client.km.provisioner.pid, interval).start())

    def after_cell(**_kwargs) -> None:  # the kernel is alive here, so its VmHWM can be read
        watchers[0].sample()

    client.on_notebook_start = on_start
    client.on_cell_executed = after_cell
    error = ""
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc).strip().splitlines()[-1][:300]
    except Exception as exc:  # a timeout or a dead kernel is a result here, not a crash
        error = f"{type(exc).__name__}: {exc}"[:300]
    seconds = time.perf_counter() - start
    watcher = watchers[0] if watchers else None
    if watcher:
        watcher.stop()
    return NotebookMemory(
        notebook.name,
        peak_anon_mb=round(watcher.peak_anon / MB, 1) if watcher else 0.0,
        peak_mb=round(watcher.peak / MB, 1) if watcher else 0.0,
        kernel_peak_mb=round(watcher.root_hwm / MB, 1) if watcher else 0.0,
        max_processes=watcher.max_processes if watcher else 0,
        seconds=round(seconds, 1),
        error=error,
    )


def markdown_table(results: list[NotebookMemory], limit_mb: float) -> str:
    lines = ["| notebook | peak anonymous memory (kernel + workers) | peak PSS | kernel peak RSS | processes "
             "| run time | fits |", "|---|---|---|---|---|---|---|"]
    for r in results:
        fits = "yes" if r.fits(limit_mb) else ("error: " + r.error if r.error else "no")
        lines.append(f"| {r.notebook} | {r.peak_anon_mb:.0f} MB | {r.peak_mb:.0f} MB | {r.kernel_peak_mb:.0f} MB "
                     f"| {r.max_processes} | {r.seconds:.0f} s | {fits} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--limit-gb", type=float, default=2.0, help="memory budget (GiB, default 2)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
    limit_mb = args.limit_gb * 1024
    results = []
    for notebook in notebooks:
        result = measure(notebook, args.timeout)
        print(f"{result.notebook}: peak anonymous {result.peak_anon_mb:.0f} MB, PSS {result.peak_mb:.0f} MB, "
              f"kernel {result.kernel_peak_mb:.0f} MB, "
              f"{result.seconds:.0f} s{' ERROR ' + result.error if result.error else ''}",
              file=sys.stderr, flush=True)
        results.append(result)
    print(markdown_table(results, limit_mb))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.fits(limit_mb) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
