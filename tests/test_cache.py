"""The build cache: built once, atomically, rebuilt when damaged or outdated, safe across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gemma_widgets.cache import MANIFEST, build_once, cache_root, file_digest, is_complete, read_manifest


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
