"""Where the kit keeps what it builds (the converted bundled model, OpenVINO exports).

A folder is built in a temporary sibling, stamped with a manifest that lists every file with
its size and a sampled digest (its first 64 KiB and 16 blocks of 4 KiB spread over the rest), and
the format version of the builder, and renamed into place under a file lock. A reader trusts a
folder only if its manifest matches what is on disk and the version it expects, so a half-written,
damaged (even at the same size) or outdated folder is rebuilt. Reading the samples of a 540 MB
model costs about 130 KiB of I/O.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

MANIFEST = "gemma_widgets_manifest.json"
ENV_CACHE = "GEMMA_WIDGETS_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$GEMMA_WIDGETS_CACHE``, else ``$XDG_CACHE_HOME/gemma_widgets``."""
    env = os.environ.get(ENV_CACHE)
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


_HEAD, _BLOCK, _SAMPLES = 64 * 1024, 4096, 16


def file_digest(path: Path) -> str:
    """A cheap content check of one file: sha256 of its size, its head and evenly spread blocks."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_HEAD))
        if size > _HEAD:
            for i in range(_SAMPLES):
                handle.seek(_HEAD + (size - _HEAD - _BLOCK) * i // max(_SAMPLES - 1, 1))
                digest.update(handle.read(_BLOCK))
    return digest.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """A content key for every file under ``folder`` (names and :func:`file_digest`), following links."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST):
        digest.update(f"{path.relative_to(folder)}\0{file_digest(path)}\0".encode())
    return digest.hexdigest()[:12]


def is_complete(folder: Path, version: int = 1) -> bool:
    """True if ``folder``'s manifest has ``version`` and every file it lists has its recorded digest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("version", 1) != version:
            return False
        return all(file_digest(folder / name) == digest for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def read_manifest(folder: Path) -> dict:
    """The ``info`` a folder was stamped with by :func:`build_once`."""
    return json.loads((folder / MANIFEST).read_text()).get("info", {})


def build_once(folder: Path, build: Callable[[Path], dict], version: int = 1) -> Path:
    """Return ``folder``, building it with ``build(tmp_dir)`` unless a complete copy exists.

    ``build`` writes into a fresh temporary folder and returns a small dict of facts to keep
    in the manifest. Concurrent callers wait on a lock; the second finds the folder done.
    Raise ``version`` when ``build`` changes what it writes: older folders are then rebuilt.
    An existing folder is swapped out only once the new one is complete, so a process that
    is reading it meanwhile keeps working.
    """
    if is_complete(folder, version):
        return folder
    with _locked(folder):
        if is_complete(folder, version):
            return folder
        for stale in folder.parent.glob(glob.escape(folder.name) + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a build that was killed
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        try:
            os.chmod(tmp, 0o755)
            info = build(tmp)
            files = {str(p.relative_to(tmp)): file_digest(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {"version": version, "files": files, "info": info}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if folder.exists():  # damaged or outdated: swap it out, then delete it
                old = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-old-", dir=folder.parent))
                os.replace(folder, old / folder.name)
                os.replace(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder
