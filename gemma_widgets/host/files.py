"""Files the kit writes and reads for the user: atomically, and never more than it can hold.

A save writes a temporary file in the same folder, then renames it over the target: a failed or
interrupted save leaves the previous file whole (``path.write_text`` truncates it first). It
replaces only a regular file: a device, a pipe or a symbolic link at the path is refused, since a
rename would put a plain file in its place (``/dev/null``, as root) or write through the link. A
load reads at most ``limit`` bytes, so ``/load /dev/zero`` is a clear error, not a MemoryError,
and parses JSON with every failure (even nesting deeper than Python's stack) as a clear error.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from gemma_widgets.errors import GemmaWidgetsError

#: The largest transcript or results file the kit reads (a full 32k-token chat is well under 1 MB).
READ_LIMIT = 20 * 1024 * 1024

#: What :func:`write_atomic` calls each kind of file it will not replace.
_NOT_REGULAR = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a device"),
                (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` (UTF-8 for text) so that readers see the old file or the new one.

    ``path`` must be new or a regular file (its permissions are kept); a new file gets the
    permissions any new file gets, 0666 less the umask, applied by the kernel (reading the umask
    would mean setting it, for every thread of the process).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise GemmaWidgetsError(f"Cannot save to {path}: the folder {path.parent} does not exist.")
    payload = data.encode("utf-8") if isinstance(data, str) else data  # before anything is touched
    try:
        old: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise GemmaWidgetsError(f"Cannot save to {path}: {exc.strerror or exc}.") from exc
    if old is not None and not stat.S_ISREG(old.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(old.st_mode)), "not a regular file")
        raise GemmaWidgetsError(f"Cannot save to {path}: it is {kind}, and saving would replace it. "
                                "Give the name of a new file or of a regular file.")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise GemmaWidgetsError(f"Cannot save to {path}: {exc.strerror or exc}.") from exc
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            if old is not None:
                os.fchmod(out.fileno(), stat.S_IMODE(old.st_mode) & 0o777)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise GemmaWidgetsError(f"Cannot save to {path}: {exc.strerror or exc}.") from exc
        raise
    return path


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


def parse_json(data: str | bytes, problem: str) -> Any:
    """``data`` parsed as JSON, else a clear error: ``problem`` (such as "That file is not a JSON
    transcript") and the reason, for bad UTF-8, bad JSON, or nesting so deep (200,000 ``[``) that
    the parser runs out of stack, which would otherwise raise RecursionError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise GemmaWidgetsError(f"{problem}: it nests lists or objects too deeply.") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise GemmaWidgetsError(f"{problem}: {exc}") from exc
