"""Files the kit writes and reads for the user: atomically, and never more than it can hold.

A save writes a temporary file in the same folder, then renames it over the target: a failed or
interrupted save leaves the previous file whole (``path.write_text`` truncates it first). A load
reads at most ``limit`` bytes, so ``/load /dev/zero`` is a clear error, not a MemoryError.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gemma_widgets.errors import GemmaWidgetsError

#: The largest transcript or results file the kit reads (a full 32k-token chat is well under 1 MB).
READ_LIMIT = 20 * 1024 * 1024


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` (UTF-8 for text) so that readers see the old file or the new one."""
    path = Path(path)
    if not path.parent.is_dir():
        raise GemmaWidgetsError(f"Cannot save to {path}: the folder {path.parent} does not exist.")
    payload = data.encode("utf-8") if isinstance(data, str) else data  # before anything is touched
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise GemmaWidgetsError(f"Cannot save to {path}: {exc.strerror or exc}.") from exc
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.chmod(tmp, _mode_for(path))  # mkstemp's 0600, else: a saved file is as readable as any other
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise GemmaWidgetsError(f"Cannot save to {path}: {exc.strerror or exc}.") from exc
        raise
    return path


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or those a new file gets under the process's umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def read_limited(path: str | os.PathLike, limit: int = READ_LIMIT) -> bytes:
    """The bytes of ``path``, or a clear error if it is not a file or holds more than ``limit``."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise GemmaWidgetsError(f"Could not read {path}: {exc.strerror or exc}.") from exc
    if len(data) > limit:
        raise GemmaWidgetsError(f"{path} is larger than {limit // 2**20} MB: not a file the kit wrote.")
    return data
