"""The build cache: built once, atomically, rebuilt when damaged or outdated, safe across processes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gemma_widgets.cache import MANIFEST, build_once, cache_root, file_digest, is_complete, read_manifest
from gemma_widgets.errors import GemmaWidgetsError


def _writer(calls: list[Path], content: str = "weights"):
    def build(out: Path) -> dict:
        calls.append(out)
        (out / "model.bin").write_text(content)
        (out / "sub").mkdir()
        (out / "sub" / "tokenizer.json").write_text("{}")
        return {"content": content}

    return build


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMA_WIDGETS_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("GEMMA_WIDGETS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "gemma_widgets"


def test_builds_once_then_reuses(tmp_path):
    calls: list[Path] = []
    folder = tmp_path / "model"
    assert build_once(folder, _writer(calls)) == folder
    assert build_once(folder, _writer(calls)) == folder
    assert len(calls) == 1
    assert calls[0] != folder, "the build writes into a temporary folder, renamed into place"
    assert (folder / "model.bin").read_text() == "weights"
    assert read_manifest(folder) == {"content": "weights"}
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert files == {"model.bin": file_digest(folder / "model.bin"),
                     "sub/tokenizer.json": file_digest(folder / "sub" / "tokenizer.json")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.lock"], "no temporary left"


def test_a_failed_build_leaves_nothing_and_is_retried(tmp_path):
    folder = tmp_path / "model"

    def broken(out: Path) -> dict:
        (out / "half.bin").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(folder, broken)
    assert not folder.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.lock"]
    calls: list[Path] = []
    build_once(folder, _writer(calls))
    assert len(calls) == 1 and is_complete(folder)


@pytest.mark.parametrize("damage", ["manifest", "truncate", "delete", "no-manifest"])
def test_a_damaged_folder_is_rebuilt(tmp_path, damage):
    folder = tmp_path / "model"
    calls: list[Path] = []
    build_once(folder, _writer(calls, "old"))
    if damage == "manifest":
        (folder / MANIFEST).write_text("{not json")
    elif damage == "truncate":
        (folder / "model.bin").write_text("o")
    elif damage == "delete":
        (folder / "sub" / "tokenizer.json").unlink()
    else:
        (folder / MANIFEST).unlink()
    assert not is_complete(folder)
    build_once(folder, _writer(calls, "new"))
    assert len(calls) == 2 and is_complete(folder)
    assert (folder / "model.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.lock"]


def test_a_new_format_version_rebuilds(tmp_path):
    folder = tmp_path / "model"
    calls: list[Path] = []
    build_once(folder, _writer(calls, "v1"))
    assert is_complete(folder, 1) and not is_complete(folder, 2)
    build_once(folder, _writer(calls, "v2"), version=2)
    build_once(folder, _writer(calls, "v2"), version=2)
    assert len(calls) == 2 and (folder / "model.bin").read_text() == "v2"


def test_leftovers_of_a_killed_build_are_cleaned(tmp_path):
    stale = tmp_path / "model.tmp-abc123"
    stale.mkdir()
    (stale / "half.bin").write_text("half")
    build_once(tmp_path / "model", _writer([]))
    assert not stale.exists()


_BUILDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from gemma_widgets.cache import build_once

    def build(out):
        with open(sys.argv[2], "a") as log:
            log.write(f"{os.getpid()}\\n")
        time.sleep(1.5)  # long enough for the other process to arrive meanwhile
        (out / "model.bin").write_text(f"built by {os.getpid()}")
        return {}

    folder = build_once(Path(sys.argv[1]), build)
    print((folder / "model.bin").read_text())
""")


def test_two_processes_at_once_build_once(tmp_path):
    folder, log = tmp_path / "model", tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(folder), str(log)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    builders = log.read_text().split()
    assert len(builders) == 1, "only one process built"
    assert outputs == [f"built by {builders[0]}"] * 2, "both see the same, complete result"
    assert is_complete(folder)


def test_damage_at_the_same_size_is_found_and_rebuilt(tmp_path):
    """Garbage where the header was, or random bytes inside the weights, at the file's own size.

    The digest samples the file, so it finds spread damage (random bytes), not every byte changed.
    """
    import random

    folder = tmp_path / "model"
    calls: list[Path] = []

    def build(out: Path) -> dict:
        calls.append(out)
        (out / "model.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
        return {}

    build_once(folder, build)
    weights = folder / "model.bin"
    rng = random.Random(14)
    for damage in ("header", "random bytes"):
        data = bytearray(weights.read_bytes())
        if damage == "header":
            data[:4096] = b"\xff" * 4096
        else:
            for position in rng.sample(range(len(data)), 2000):
                data[position] ^= 0xFF
        weights.write_bytes(bytes(data))
        assert weights.stat().st_size == 2**20 and not is_complete(folder)
        build_once(folder, build)
        assert is_complete(folder) and weights.read_bytes() == bytes(range(256)) * 4096
    assert len(calls) == 3


def test_a_folders_content_key_follows_its_content_not_its_name(two_ir_folders):
    from gemma_widgets.cache import folder_digest

    first, second = two_ir_folders
    assert folder_digest(first) != folder_digest(second)
    (second / "openvino_model.bin").write_bytes(b"one" * 1000)
    assert folder_digest(first) == folder_digest(second)


def _private_writer(out: Path) -> dict:
    """What safetensors does: the weights as a 0600 file (a temporary file renamed), in a 0700 folder."""
    (out / "model.safetensors").write_text("weights")
    os.chmod(out / "model.safetensors", 0o600)
    (out / "tools").mkdir(mode=0o700)
    (out / "tools" / "run").write_text("#!/bin/sh\n")
    os.chmod(out / "tools" / "run", 0o700)
    (out / "config.json").write_text("{}")
    return {}


@pytest.mark.parametrize("umask, file_mode, exec_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                          (0o077, 0o600, 0o700)])
def test_a_built_folder_is_as_readable_as_the_umask_allows(tmp_path, umask, file_mode, exec_mode):
    """A cache built by root had model.safetensors at 0600, and every other user's load took the
    folder for incomplete. Every file and folder now gets what the umask gives a new one."""
    old = os.umask(umask)
    try:
        folder = build_once(tmp_path / "model", _private_writer)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}
    assert modes == {".": exec_mode, "model.safetensors": file_mode, "tools": exec_mode, "tools/run": exec_mode,
                     "config.json": file_mode, MANIFEST: file_mode}


NOBODY = 65534


@pytest.fixture
def shared_dir():
    """A folder every user can enter (pytest's tmp_path is root's alone), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="gemma-widgets-shared-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


def _as_nobody(check: Callable[[], object]) -> str:
    """``check()``'s result, or the exception it raised, run in a forked child as the user nobody
    (root reads and writes anything, so permissions only show as another user)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        try:
            signal.alarm(30)  # a child stuck on a lock dies instead of hanging the test
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                outcome = f"ok {check()}"
            except BaseException as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            os.write(write, outcome.encode()[:60000])
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    return outcome


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to build a cache as one user and "
                             "read it as another (nobody)")


@as_root
def test_another_user_loads_a_complete_cache_it_cannot_write(shared_dir):
    """A cache root built (umask 022) serves other users: reading needs no write access, not even to
    the lock file."""
    old = os.umask(0o022)
    try:
        folder = build_once(shared_dir / "model", _private_writer)
    finally:
        os.umask(old)

    def load() -> str:
        def never(out: Path) -> dict:
            raise AssertionError("rebuilt")

        return (build_once(folder, never) / "model.safetensors").read_text()

    assert _as_nobody(load) == "ok weights"


@as_root
def test_another_user_cannot_build_in_a_cache_it_cannot_write_and_is_told_what_to_do(shared_dir):
    outcome = _as_nobody(lambda: build_once(shared_dir / "cache" / "model", _private_writer))
    assert outcome.startswith("GemmaWidgetsError: Cannot write in the cache folder"), outcome
    assert "GEMMA_WIDGETS_CACHE" in outcome and "prepare" in outcome


@as_root
def test_a_read_only_inductor_cache_is_a_clear_error_before_anything_compiles(shared_dir, monkeypatch):
    from gemma_widgets import compilation

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_COMPILE_THREADS"):  # what it sets is undone after
        monkeypatch.delenv(name, raising=False)
    compilation.use_inductor_cache(shared_dir / "inductor")  # root can: and nobody's child needs no new import
    outcome = _as_nobody(lambda: compilation.use_inductor_cache(shared_dir / "inductor"))
    assert outcome.startswith("GemmaWidgetsError: Cannot write in the cache folder"), outcome


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_during_a_build_says_so_and_leaves_nothing(tmp_path, code):
    def build(out: Path) -> dict:
        (out / "half.bin").write_text("half")
        raise OSError(code, os.strerror(code), str(out / "model.safetensors"))

    with pytest.raises(GemmaWidgetsError, match="free some space there, or set GEMMA_WIDGETS_CACHE"):
        build_once(tmp_path / "model", build)
    assert [p.name for p in tmp_path.iterdir()] == ["model.lock"]


def test_a_file_where_the_cache_folder_should_be_is_named(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    for root in (tmp_path / "cache", tmp_path / "cache" / "deeper"):
        with pytest.raises(GemmaWidgetsError, match="a file stands where the cache needs a folder"):
            build_once(root / "model", _private_writer)
