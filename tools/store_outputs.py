"""Run every notebook headless on the bundled model and store its outputs (``make outputs``).

The stored outputs are what a learner sees before running anything: on GitHub, in Colab's preview,
projected in a room. Each notebook runs in a fresh kernel from ``notebooks/``, as on Binder (told
its 2 GiB memory limit), with nbclient's cell timings kept (``benchmarks/course_budget.py`` reads
them). The notebook's metadata records the run: the model, the library versions, and a hash of
each code cell's source, so a test can tell when a cell changed after its output was stored.

Widgets are stored as they looked at the end of the run. After the last cell the same kernel gives
each shown widget's snapshot (:func:`gemma_widgets.widgets.display.publish_snapshots`: a kit view's own escaped
HTML and its charts as PNG; another widget's text, a tqdm bar's last line), whose outputs replace the
widget's view, tagged ``{"gemma_widgets": {"snapshot": true}}``. No widget state is kept: nbconvert's
HTML (nbviewer and the like) and JupyterLab draw a widget view only from state and with the widget
JavaScript (nbconvert's page fetches it from a CDN; JupyterLab does not run it for an untrusted
notebook, one just cloned), while HTML and PNG show everywhere; and a run's state holds every widget
the kernel made (tqdm's bars, each slider's layout, the charts' images), JSON that changes every run.

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

from gemma_widgets.host.files import write_atomic
from gemma_widgets.widgets.display import METADATA_KEY

MEMORY_LIMIT_MB = 2048  # Binder's, as conftest.py gives nbval's kernels
CELL_TIMEOUT_S = 600  # nbval's, from pyproject's addopts
WIDGET = "application/vnd.jupyter.widget-view+json"
MAX_BYTES = 1_000_000
SNAPSHOT_CELL = "from gemma_widgets.widgets.display import publish_snapshots\npublish_snapshots({})"
RICH_HTML = '<pre style="white-space:pre;overflow-x:auto;line-height:normal;'  # rich.jupyter's format


def source_hash(cell) -> str:
    """A short hash of a code cell's source."""
    return hashlib.sha256(cell.source.encode()).hexdigest()[:12]


def run_signature() -> dict:
    """What the outputs depend on besides the cells: the model and the stack."""
    return {"model": os.environ.get("GEMMA_MODEL") or "bundled", "memory_limit_mb": MEMORY_LIMIT_MB,
            **{name: version(name) for name in ("torch", "transformers", "ipywidgets")}}


def output_kinds(outputs) -> list[str]:
    """What kinds of output a cell made, in order: stdout, each display's MIME types, a kit view, an error.

    A kit view counts as ``widget:`` and its name, live or stored as its snapshot (its outputs'
    metadata name it). stderr (warnings, progress bars), other widgets and their snapshots (tqdm's
    bars) and rich's terminal renderings (nncf's progress bar while it compresses) are left out: they
    depend on caches (a first export shows them, a cached one not) and on the front end. Consecutive
    repeats count once.
    """
    kinds: list[str] = []
    for out in outputs:
        data, tag = out.get("data", {}), out.get("metadata", {}).get(METADATA_KEY, {})
        if out["output_type"] == "stream":
            kind = "" if out["name"] == "stderr" else "stdout"
        elif out["output_type"] == "error":
            kind = "error"
        elif "view" in tag:
            kind = f"widget:{tag['view']}"
        elif WIDGET in data or "snapshot" in tag or str(data.get("text/html", "")).startswith(RICH_HTML):
            kind = ""
        else:
            kind = out["output_type"] + ":" + ",".join(sorted(data))
        if kind and (not kinds or kinds[-1] != kind):
            kinds.append(kind)
    return kinds


def widget_ids(nb) -> list[str]:
    """The model id of every widget view in ``nb``'s outputs, in order, once each."""
    ids = (out["data"][WIDGET]["model_id"] for cell in nb.cells for out in cell.get("outputs", [])
           if WIDGET in out.get("data", {}))
    return list(dict.fromkeys(ids))


def take_snapshots(client, nb) -> dict[str, list[dict]]:
    """Ask ``client``'s kernel, after the notebook's last cell, for each widget view's snapshot outputs."""
    cell = nbformat.v4.new_code_cell(SNAPSHOT_CELL.format(widget_ids(nb)))
    nb.cells.append(cell)
    try:
        client.execute_cell(cell, len(nb.cells) - 1, store_history=False)
    finally:
        nb.cells.pop()
    (snapshots,) = [out["data"]["application/json"] for out in cell.outputs if out["output_type"] == "display_data"]
    return snapshots


def for_a_file(outputs, snapshots: dict[str, list[dict]]) -> list:
    """``outputs`` as a file can show them: each widget view replaced by its snapshot's outputs (none for
    a widget that was closed), tagged as a snapshot, with the view's name for a kit view."""
    stored = []
    for out in outputs:
        data = out.get("data", {})
        if WIDGET not in data:
            stored.append(out)
            continue
        tag = {**out.get("metadata", {}).get(METADATA_KEY, {}), "snapshot": True}
        stored += [nbformat.v4.new_output("display_data", data=bundle, metadata={METADATA_KEY: tag})
                   for bundle in snapshots[data[WIDGET]["model_id"]]]
    return stored


def store(path: Path) -> int:
    """Execute ``path`` and write it back with its outputs; return the file's size in bytes."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["MEM_LIMIT"] = str(MEMORY_LIMIT_MB * 2**20)  # the kernel inherits it
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=True,
                            store_widget_state=False, resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel():  # one kernel for the cells and, after them, the snapshots
        client.execute(cleanup_kc=False)
        snapshots = take_snapshots(client, nb)
    for cell in nb.cells:
        if "outputs" in cell:
            cell.outputs = for_a_file(cell.outputs, snapshots)
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
