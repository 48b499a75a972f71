"""Issue 27's figures for the package: modules per folder, the largest modules, and the function-level
imports (each should be an optional or heavy dependency, with a comment saying why).

    .venv/bin/python tools/layout_report.py
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "gemma_widgets"


def function_level_imports(path: Path) -> list[tuple[int, bool]]:
    """``(line, commented)`` for each import inside a function of ``path``."""
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    line = lines[sub.lineno - 1]
                    found.append((sub.lineno, "#" in line or lines[sub.lineno - 2].strip().startswith("#")))
    return found


def main() -> None:
    modules = sorted(ROOT.rglob("*.py"))
    folders = collections.Counter(str(p.parent.relative_to(ROOT.parent)) for p in modules)
    print("modules per folder:", ", ".join(f"{name} {count}" for name, count in sorted(folders.items())))
    sizes = sorted(((len(p.read_text().splitlines()), p.relative_to(ROOT.parent)) for p in modules), reverse=True)
    print("largest modules:", ", ".join(f"{path} {n}" for n, path in sizes[:3]))
    imports = {p: function_level_imports(p) for p in modules}
    total = sum(len(found) for found in imports.values())
    bare = [f"{p.relative_to(ROOT.parent)}:{line}" for p, found in imports.items() for line, ok in found if not ok]
    print(f"function-level imports: {total}, without a comment: {len(bare)}", *bare, sep="\n  " if bare else "")


if __name__ == "__main__":
    main()
