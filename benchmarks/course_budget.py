"""The course's time budget, from the notebooks themselves: reading time plus cell time, core and deep dive.

A learner's time for a section is its prose at 200 words a minute plus its code cells' run time
times 2.5 (a learner reads the code, runs it, looks at the output: workshop organisers plan 2-3x an
instructor's time). A section is a "deep dive" when its ``##`` heading says so ("## 5. Deep dive:
...") and core otherwise; the cells before the first ``##`` heading are core.

Cell times come from running the notebooks (``--run``: each notebook in a fresh kernel on the
bundled model, timed by nbclient) or from a file a run saved (``--times``); without either, only the
reading time is printed.

    .venv/bin/python benchmarks/course_budget.py                         # reading time only
    .venv/bin/python benchmarks/course_budget.py --run --save times.json  # run every notebook (minutes)
    .venv/bin/python benchmarks/course_budget.py --times times.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WORDS_PER_MINUTE = 200
CELL_TIME_FACTOR = 2.5
CORE_BUDGET_MIN = 90


def sections(nb) -> list[tuple[bool, list]]:
    """``(deep_dive, cells)`` per ``##`` section, in order."""
    out: list[tuple[bool, list]] = [(False, [])]
    for cell in nb.cells:
        heading = re.match(r"^##\s+(.*)", cell.source) if cell.cell_type == "markdown" else None
        if heading:
            out.append(("deep dive" in heading.group(1).lower(), []))
        out[-1][1].append(cell)
    return out


def words(cell) -> int:
    text = re.sub(r"`[^`]*`", " x ", cell.source)  # inline code reads as a word
    return len(re.findall(r"[\w'’-]+", text))


def run_times(path: Path) -> list[float]:
    """Seconds each cell took, running ``path`` in a fresh kernel from the notebooks folder."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=True,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    times = []
    for cell in nb.cells:
        stamps = cell.get("metadata", {}).get("execution", {})
        start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
        if cell.cell_type == "code" and start and end:
            times.append((datetime.fromisoformat(end.rstrip("Z")) - datetime.fromisoformat(start.rstrip("Z")))
                         .total_seconds())
        else:
            times.append(0.0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run every notebook to time its cells")
    parser.add_argument("--times", default=None, help="cell times saved by --save")
    parser.add_argument("--save", default=None, help="with --run: save the cell times here (JSON)")
    args = parser.parse_args()
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    times: dict[str, list[float]] = json.loads(Path(args.times).read_text()) if args.times else {}
    if args.run:
        for path in paths:
            print(f"running {path.name}...", file=sys.stderr, flush=True)
            times[path.name] = run_times(path)
        if args.save:
            Path(args.save).write_text(json.dumps(times, indent=1))
    timed = bool(times)
    print(f"{'notebook':<28} {'core words':>10} {'core cells s':>12} {'core min':>9} {'deep min':>9}")
    total_core = total_deep = 0.0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        cell_times = times.get(path.name, [0.0] * len(nb.cells))
        seconds = dict(zip((id(c) for c in nb.cells), cell_times, strict=False))
        minutes = {False: 0.0, True: 0.0}
        core_words = core_seconds = 0.0
        for deep, cells in sections(nb):
            w = sum(words(c) for c in cells if c.cell_type == "markdown")
            s = sum(seconds.get(id(c), 0.0) for c in cells if c.cell_type == "code")
            minutes[deep] += w / WORDS_PER_MINUTE + s * CELL_TIME_FACTOR / 60
            if not deep:
                core_words, core_seconds = core_words + w, core_seconds + s
        total_core += minutes[False]
        total_deep += minutes[True]
        cells_text = f"{core_seconds:12.0f}" if timed else f"{'-':>12}"
        print(f"{path.stem:<28} {core_words:10.0f} {cells_text} {minutes[False]:9.1f} {minutes[True]:9.1f}")
    what = "reading + cell time x 2.5" if timed else "reading only (no cell times: --run or --times)"
    verdict = "within" if total_core <= CORE_BUDGET_MIN else "OVER"
    print(f"\ncore path: {total_core:.0f} min ({what}), {verdict} the {CORE_BUDGET_MIN}-minute workshop; "
          f"deep dives: {total_deep:.0f} min more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
