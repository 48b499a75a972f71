"""Where the kit keeps what it builds (the converted bundled model, OpenVINO exports).

A folder is built in a temporary sibling, stamped with a manifest that lists every file with
its size and a sampled digest (its first 64 KiB and 16 blocks of 4 KiB spread over the rest), and
the format version of the builder, and renamed into place under a file lock. A reader trusts a
folder only if its manifest matches what is on disk and the version it expects, so a half-written,
damaged (even at the same size) or outdated folder is rebuilt. Reading the samples of a 540 MB
model costs about 130 KiB of I/O.

A built folder is as readable as the umask allows (some writers make 0600 files), so a cache built
by root serves every user; reading a complete folder needs no write access (not even to the lock).
A cache that cannot be written (another user's, read-only, a file in its place, a full disk) is a
:class:`~gemma_widgets.errors.GemmaWidgetsError` that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from gemma_widgets.errors import GemmaWidgetsError

MANIFEST = "gemma_widgets_manifest.json"
ENV_CACHE = "GEMMA_WIDGETS_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$GEMMA_WIDGETS_CACHE``, else ``$XDG_CACHE_HOME/gemma_widgets``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "gemma_widgets"


#: Errors of a build that only writing causes: a full disk or quota, a read-only file system.
_WRITE_FAILED = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _unwritable(folder: Path, exc: OSError) -> GemmaWidgetsError:
    """The error for ``exc``, met writing in the cache ``folder``: what happened and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free some space there"
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR):
        todo = "a file stands where the cache needs a folder: move it away"
    else:
        todo = ("this user cannot write there: have the cache's owner build what is missing (python -m "
                f"gemma_widgets prepare, with the same --precision or --compile) and make it readable (chmod -R "
                f"a+rX {folder})")
    where = f" ({exc.filename})" if exc.filename else ""
    return GemmaWidgetsError(f"Cannot write in the cache folder {folder}: {exc.strerror or exc}{where}. "
                             f"Either {todo}, or set {ENV_CACHE} to a folder of your own.")


def writable_folder(folder: Path) -> Path:
    """``folder``, created if needed, once this process can write in it; else a clear error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):  # root passes, except on a read-only file system
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise _unwritable(folder, exc) from exc
    return folder


def _readable_as_umask_allows(folder: Path) -> None:
    """Add to every file and folder under ``folder`` the permissions a new one would get.

    safetensors writes a 0600 temporary file and renames it: other users (the workshop's, when root
    built the cache) could not read model.safetensors and took the folder for incomplete. A probe
    file gives the umask's mask without calling ``os.umask``, which changes it for every thread.
    """
    probe = folder / ".umask-probe"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777))
    allowed = probe.stat().st_mode & 0o777
    probe.unlink()
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            wanted = allowed if stat.S_ISDIR(mode) or mode & 0o111 else allowed & 0o666
            os.chmod(path, stat.S_IMODE(mode) | wanted)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        handle = open(path.with_name(path.name + ".lock"), "w")
    except OSError as exc:
        raise _unwritable(path.parent, exc) from exc
    with handle:
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
    try:
        with _locked(writable_folder(folder.parent) / folder.name):
            if is_complete(folder, version):
                return folder
            _build(folder, build, version)
    except OSError as exc:
        if exc.errno in _WRITE_FAILED:
            raise _unwritable(folder.parent, exc) from exc
        raise
    return folder


def _build(folder: Path, build: Callable[[Path], dict], version: int) -> None:
    for stale in folder.parent.glob(glob.escape(folder.name) + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a build that was killed
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        info = build(tmp)
        files = {str(p.relative_to(tmp)): file_digest(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"version": version, "files": files, "info": info}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _readable_as_umask_allows(tmp)
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
