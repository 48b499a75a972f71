"""Files the kit saves: atomically, with the permissions a user expects."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from gemma_widgets.cache import build_once
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.files import read_limited, write_atomic


def test_a_new_file_gets_the_umask_permissions_and_a_replaced_one_keeps_its_own(tmp_path):
    old = os.umask(0o022)
    try:
        new = write_atomic(tmp_path / "results.json", "{}")
        assert new.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: shareable like any saved file
        os.chmod(new, 0o600)
        write_atomic(new, "[]")
        assert new.stat().st_mode & 0o777 == 0o600 and read_limited(new) == b"[]"
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


@pytest.fixture
def special_files(tmp_path):
    """A path of each kind a save must not replace: name -> path."""
    paths = {"symlink to the terminal": tmp_path / "out.json", "named pipe": tmp_path / "fifo.json",
             "socket": tmp_path / "sock.json", "folder": tmp_path / "dir.json",
             "dangling symlink": tmp_path / "dangling.json"}
    paths["symlink to the terminal"].symlink_to("/proc/self/fd/1")
    paths["dangling symlink"].symlink_to(tmp_path / "nowhere.json")
    os.mkfifo(paths["named pipe"])
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(paths["socket"]))
    paths["folder"].mkdir()
    try:
        os.mknod(tmp_path / "null.json", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
        paths["character device"] = tmp_path / "null.json"
    except PermissionError:  # not root (or no CAP_MKNOD): the other kinds still run
        pass
    return paths


def test_a_save_never_replaces_a_device_a_pipe_a_socket_a_folder_or_a_symlink(special_files):
    """As root, ``/save /dev/null`` renamed a plain file over the real /dev/null; a symlink was replaced
    (and its target's permissions copied). Each is refused with what to do, and left as it was."""
    before = {name: os.lstat(path) for name, path in special_files.items()}
    for name, path in special_files.items():
        with pytest.raises(GemmaWidgetsError, match="Give the name of a new file or of a regular file"):
            write_atomic(path, "{}")
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino, after.st_rdev) == \
            (before[name].st_mode, before[name].st_ino, before[name].st_rdev), name
    folder = next(iter(special_files.values())).parent
    assert not list(folder.glob(".*.tmp")), "no temporary file left behind"


def test_a_save_through_a_conversation_refuses_a_symlink(tmp_path):
    from gemma_widgets.conversation import Conversation

    link = tmp_path / "chat.json"
    link.symlink_to("/proc/self/fd/1")
    with pytest.raises(GemmaWidgetsError, match="it is a symbolic link"):
        Conversation(system="S").save(link)
    assert link.is_symlink()


def test_saving_never_touches_the_process_umask(tmp_path, monkeypatch):
    """``os.umask`` both reads and sets the umask: for a moment it was 0, and a file another thread
    created then was world-writable. Saves and cache builds read what the kernel applies instead."""
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    def build(out):
        (out / "model.bin").write_text("weights")
        return {}

    write_atomic(tmp_path / "new.json", "{}")
    write_atomic(tmp_path / "new.json", "[]")
    build_once(tmp_path / "built", build)
    assert calls == []
