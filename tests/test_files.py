"""Files the kit saves: atomically, with the permissions a user expects."""

from __future__ import annotations

import os

from gemma_widgets._files import read_limited, write_atomic


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
