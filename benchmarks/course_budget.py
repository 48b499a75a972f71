"""The course's time budget, from the notebooks themselves: reading time plus cell time, core and deep dive.

A learner's time for a section is its prose at 200 words a minute plus its code cells' run time
times 2.5 (a learner reads the code, runs it, looks at the output: workshop organisers plan 2-3x an
instructor's time). A section is a "deep dive" when its ``##`` heading says so ("## 5. Deep dive:
...") and core otherwise; the cells before the first ``##`` heading are core.

Cell times are those of the stored reference run (``make outputs`` keeps nbclient's timings in each
cell's metadata). ``--write`` puts each notebook's budget into its first cell's ``**Time budget``
paragraph and the README's course map (``make outputs`` does this after storing the run).

    .venv/bin/python benchmarks/course_budget.py          # print the budget
    .venv/bin/python benchmarks/course_budget.py --write  # and write it where learners read it
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WORDS_PER_MINUTE = 200
CELL_TIME_FACTOR = 2.5
CORE_BUDGET_MIN = 90
TIME_PARAGRAPH = re.compile(r"^\*\*Time budget.*$", re.M)


@dataclass
class Budget:
    core_words: int
    core_seconds: float
    core_minutes: float
    deep_minutes: float
    cell_seconds: float  # every code cell, core and deep dive

    def paragraph(self) -> str:
        """The first cell's time line."""
        return (f"**Time budget: about {round(self.core_minutes + self.deep_minutes)} minutes** (core path "
                f"{round(self.core_minutes)}, deep dives {round(self.deep_minutes)}): {self.core_words} words "
                f"of core prose at {WORDS_PER_MINUTE} words a minute plus {self.core_seconds:.0f} s of core cells "
                f"in the stored run, times {CELL_TIME_FACTOR}.")


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
    text = TIME_PARAGRAPH.sub("", cell.source)  # the budget does not count itself
    text = re.sub(r"`[^`]*`", " x ", text)  # inline code reads as a word
    return len(re.findall(r"[\w'’-]+", text))


def seconds(cell) -> float:
    """How long the stored run took to run ``cell`` (0 for markdown)."""
    stamps = cell.get("metadata", {}).get("execution", {})
    start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
    if cell.cell_type != "code" or not (start and end):
        return 0.0
    return (datetime.fromisoformat(end.rstrip("Z")) - datetime.fromisoformat(start.rstrip("Z"))).total_seconds()


def budget(nb) -> Budget:
    minutes = {False: 0.0, True: 0.0}
    core_words, core_seconds = 0, 0.0
    for deep, cells in sections(nb):
        w = sum(words(c) for c in cells if c.cell_type == "markdown")
        s = sum(seconds(c) for c in cells)
        minutes[deep] += w / WORDS_PER_MINUTE + s * CELL_TIME_FACTOR / 60
        if not deep:
            core_words, core_seconds = core_words + w, core_seconds + s
    return Budget(core_words, core_seconds, minutes[False], minutes[True], sum(seconds(c) for c in nb.cells))


def write(path: Path, b: Budget) -> None:
    """Put ``b`` into the notebook's first cell and its README course-map row."""
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    if not TIME_PARAGRAPH.search(first.source):
        raise SystemExit(f"{path.name}: no '**Time budget' line in the first cell")
    first.source = TIME_PARAGRAPH.sub(b.paragraph(), first.source, count=1)
    nbformat.write(nb, path)
    readme = ROOT / "README.md"
    row = re.compile(rf"^(\| \[{re.escape(path.stem)}\]\([^)]*\) \|[^|]*\| )[^|]*(\|[^|]*\| )[^|]*\|", re.M)
    text, n = row.subn(rf"\g<1>{round(b.core_minutes)} / {round(b.deep_minutes)} \g<2>{b.cell_seconds / 60:.1f} |",
                       readme.read_text())
    if n != 1:
        raise SystemExit(f"README.md: no course-map row for {path.stem}")
    readme.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the budgets into the notebooks and README")
    args = parser.parse_args()
    print(f"{'notebook':<28} {'core words':>10} {'core cells s':>12} {'core min':>9} {'deep min':>9}")
    total_core = total_deep = 0.0
    for path in NOTEBOOKS:
        b = budget(nbformat.read(path, as_version=4))
        total_core, total_deep = total_core + b.core_minutes, total_deep + b.deep_minutes
        print(f"{path.stem:<28} {b.core_words:10d} {b.core_seconds:12.0f} {b.core_minutes:9.1f} {b.deep_minutes:9.1f}")
        if args.write:
            write(path, b)
    verdict = "within" if total_core <= CORE_BUDGET_MIN else "OVER"
    print(f"\ncore path: {total_core:.0f} min (reading + stored cell times x {CELL_TIME_FACTOR}), {verdict} the "
          f"{CORE_BUDGET_MIN}-minute workshop; deep dives: {total_deep:.0f} min more")
    return 0 if total_core <= CORE_BUDGET_MIN else 1


if __name__ == "__main__":
    sys.exit(main())
