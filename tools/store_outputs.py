"""Run every notebook headless on the bundled model and store its outputs (``make outputs``).

The stored outputs are what a learner sees before running anything: on GitHub, in Colab's preview,
projected in a room. Each notebook runs in a fresh kernel from ``notebooks/``, as on Binder (told
its 2 GiB memory limit), with nbclient's cell timings kept (``benchmarks/course_budget.py`` reads
them). What a file cannot show is left out: widget state, and each widget's output becomes one
placeholder line. The notebook's metadata records the run: the model, the library versions, and a hash of
each code cell's source, so a test can tell when a cell changed after its output was stored.

    .venv/bin/python tools/store_outputs.py                      # every notebook
    .venv/bin/python tools/store_outputs.py notebooks/02_*.ipynb # some
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from importlib.metadata import version
from pathlib import Path

import nbformat
from sync_notebooks import NOTEBOOKS

from gemma_widgets._files import write_atomic

MEMORY_LIMIT_MB = 2048  # Binder's, as conftest.py gives nbval's kernels
CELL_TIMEOUT_S = 600  # nbval's, from pyproject's addopts
WIDGET = "application/vnd.jupyter.widget-view+json"
MAX_BYTES = 1_000_000
WIDGET_PLACEHOLDER = "[a widget: run the notebook to use it]"
RICH_HTML = '<pre style="white-space:pre;overflow-x:auto;line-height:normal;'  # rich.jupyter's format


def source_hash(cell) -> str:
    """A short hash of a code cell's source."""
    return hashlib.sha256(cell.source.encode()).hexdigest()[:12]


def run_signature() -> dict:
    """What the outputs depend on besides the cells: the model and the stack."""
    return {"model": os.environ.get("GEMMA_MODEL") or "bundled", "memory_limit_mb": MEMORY_LIMIT_MB,
            **{name: version(name) for name in ("torch", "transformers", "ipywidgets")}}


def output_kinds(outputs) -> list[str]:
    """What kinds of output a cell made, in order: stdout, each display's MIME types, an error.

    stderr (warnings, progress bars), widget views (tqdm's bars among them) and rich's terminal
    renderings (nncf's progress bar while it compresses) are left out: they depend on caches (a
    first export shows them, a cached one not) and on the front end. Consecutive repeats count once.
    """
    kinds: list[str] = []
    for out in outputs:
        data = out.get("data", {})
        if out["output_type"] == "stream":
            kind = "" if out["name"] == "stderr" else "stdout"
        elif out["output_type"] == "error":
            kind = "error"
        elif WIDGET in data or data.get("text/plain") == WIDGET_PLACEHOLDER or \
                str(data.get("text/html", "")).startswith(RICH_HTML):
            kind = ""
        else:
            kind = out["output_type"] + ":" + ",".join(sorted(data))
        if kind and (not kinds or kinds[-1] != kind):
            kinds.append(kind)
    return kinds


def _for_a_file(output) -> None:
    """Replace what a stored output cannot show, a widget (no state is stored), with one line: its
    ``repr`` is a dump of its children, or a progress bar's first state (0%), never what a run showed."""
    data = output.get("data", {})
    if WIDGET in data:
        output["data"] = {"text/plain": WIDGET_PLACEHOLDER}


def store(path: Path) -> int:
    """Execute ``path`` and write it back with its outputs; return the file's size in bytes."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["MEM_LIMIT"] = str(MEMORY_LIMIT_MB * 2**20)  # the kernel inherits it
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=True,
                   store_widget_state=False, resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            _for_a_file(output)
    nb.metadata.pop("widgets", None)
    nb.metadata["gemma_widgets"] = {"outputs": {
        **run_signature(), "cells": [source_hash(c) for c in nb.cells if c.cell_type == "code"]}}
    text = nbformat.writes(nb) + "\n"
    write_atomic(path, text)  # a failed run above leaves the stored notebook as it was
    return len(text.encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS)
    args = parser.parse_args()
    too_big = []
    for path in args.notebooks:
        print(f"running {path.name}...", flush=True)
        size = store(path.resolve())
        print(f"  stored, {size / 1000:.0f} kB", flush=True)
        if size > MAX_BYTES:
            too_big.append(path.name)
    if too_big:
        print(f"over {MAX_BYTES / 1e6:.0f} MB: {', '.join(too_big)}", file=sys.stderr)
    return 1 if too_big else 0


if __name__ == "__main__":
    sys.exit(main())
