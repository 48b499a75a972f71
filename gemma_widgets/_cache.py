"""Where the kit keeps what it builds (the converted bundled model, OpenVINO exports).

A folder is built in a temporary sibling, stamped with a manifest that lists every file
and its size, and renamed into place under a file lock. A reader trusts a folder only if
its manifest matches what is on disk, so a half-written or damaged folder is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

MANIFEST = "gemma_widgets_manifest.json"


def cache_root() -> Path:
    """The cache folder: ``$GEMMA_WIDGETS_CACHE``, else ``$XDG_CACHE_HOME/gemma_widgets``."""
    env = os.environ.get("GEMMA_WIDGETS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "gemma_widgets"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_complete(folder: Path) -> bool:
    """True if ``folder`` has a manifest and every file it lists has the listed size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def read_manifest(folder: Path) -> dict:
    """The ``info`` a folder was stamped with by :func:`build_once`."""
    return json.loads((folder / MANIFEST).read_text()).get("info", {})


def build_once(folder: Path, build: Callable[[Path], dict]) -> Path:
    """Return ``folder``, building it with ``build(tmp_dir)`` unless a complete copy exists.

    ``build`` writes into a fresh temporary folder and returns a small dict of facts to keep
    in the manifest. Concurrent callers wait on a lock; the second finds the folder done.
    """
    if is_complete(folder):
        return folder
    with _locked(folder):
        if is_complete(folder):
            return folder
        if folder.exists():
            shutil.rmtree(folder)  # damaged or half-written: rebuild from scratch
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        try:
            info = build(tmp)
            files = {
                str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()
            }
            (tmp / MANIFEST).write_text(json.dumps({"files": files, "info": info}, indent=1))
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder
