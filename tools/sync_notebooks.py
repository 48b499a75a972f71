"""Write the course's set-up cell and badges from one place: ``[project.urls] Repository`` in pyproject.toml.

A course organiser who forks the repository changes that URL once and runs ``make notebooks``:
every notebook's first code cell (which installs the kit on Colab) and its Open-in-Colab badge,
and the README's Binder and Colab badges, are rewritten to match. ``--check`` changes nothing and
exits 1 if a file is out of date (the tests run it).

The URL becomes code in every notebook, so it must be a plain GitHub repository URL (the badges
are GitHub's), and it is written as a Python string literal, never pasted into code. The install
is pinned to the release tag of the project's version (``v0.1.0``), so a notebook installs the kit
it was stored with, not whatever the default branch holds that day.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

SETUP_CELL = '''\
# Set-up, the same in every notebook. On Colab it installs the kit beside Colab's own packages,
# which pip may not replace (if it would, this cell fails with pip's error). Elsewhere: nothing.
import os, subprocess, sys
KIT = os.environ.get("GEMMA_WIDGETS_SOURCE", {kit!r})
if "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ:
    from importlib.metadata import version
    keep = [f"{{name}}=={{version(name)}}" for name in {packages}]
    with open("/tmp/colab-keep.txt", "w") as constraints:
        constraints.write("\\n".join(keep))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", constraints.name, KIT], check=True)
from gemma_widgets.course.environment import setup
env = setup()'''

BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^/\s)]+/")
BINDER = re.compile(r"https://mybinder\.org/v2/gh/[^/\s)]+/[^/\s)]+/")
#: GitHub's rules for owner and repository names: nothing that could end a string or a link.
REPOSITORY = re.compile(r"https://github\.com/[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def repository() -> str:
    """The repository URL from pyproject.toml, e.g. ``https://github.com/owner/name``; anything else
    (a quote, a space, another host) is refused before it reaches a notebook."""
    url = _project()["urls"]["Repository"]
    if not isinstance(url, str) or not REPOSITORY.fullmatch(url):
        raise SystemExit(f"pyproject.toml's Repository must be https://github.com/OWNER/NAME, not {url!r}.")
    return url


def release() -> str:
    """The git tag of this version of the kit (``v`` and pyproject's version), which the set-up cell installs."""
    return f"v{_project()['version']}"


def slug() -> str:
    """``owner/name`` of :func:`repository`."""
    return "/".join(repository().rstrip("/").split("/")[-2:])


def setup_cell() -> str:
    """The set-up cell every notebook starts with."""
    from gemma_widgets.course.environment import COLAB_PACKAGES

    return SETUP_CELL.format(kit=f"gemma_widgets @ git+{repository()}@{release()}", packages=COLAB_PACKAGES)


def _badged(text: str) -> str:
    text = BADGE.sub(f"https://colab.research.google.com/github/{slug()}/blob/main/", text)
    return BINDER.sub(f"https://mybinder.org/v2/gh/{slug()}/", text)


def sync(check: bool) -> list[Path]:
    """Rewrite what is out of date (or, with ``check``, only list it)."""
    stale = []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        title = nb.cells[0]
        first_code = next(cell for cell in nb.cells if cell.cell_type == "code")
        new_title, new_setup = _badged(title.source), setup_cell()
        if (new_title, new_setup) != (title.source, first_code.source):
            stale.append(path)
            title.source, first_code.source = new_title, new_setup
            if not check:
                nbformat.write(nb, path)
    readme = ROOT / "README.md"
    text = readme.read_text()
    if _badged(text) != text:
        stale.append(readme)
        if not check:
            readme.write_text(_badged(text))
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args()
    stale = sync(args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'updated'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
