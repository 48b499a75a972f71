"""``python -m gemma_widgets prepare``: prints where the model is; bad input exits 2 with a clear message."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from gemma_widgets import presets as models
from gemma_widgets.cli import main
from gemma_widgets.offline.bundled import bundled_dir
from gemma_widgets.presets import PRESETS


@pytest.mark.integration
def test_prepare_prints_the_bundled_folder(monkeypatch, capsys):
    monkeypatch.delenv("GEMMA_MODEL", raising=False)
    assert main(["prepare"]) == 0
    assert capsys.readouterr().out.strip() == str(bundled_dir())


@pytest.mark.model
def test_prepare_a_preset(tiny, capsys):
    assert main(["prepare", "--model", "tiny-random-gemma2"]) == 0
    assert capsys.readouterr().out.strip() == tiny.path


def test_unknown_model_exits_2_listing_the_presets(capsys):
    assert main(["prepare", "--model", "gemma-9000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown model 'gemma-9000'")
    assert all(name in err for name in PRESETS)


def test_offline_hub_model_exits_2_suggesting_bundled(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["prepare", "--model", "google/gemma-2-9b-it"]) == 2
    err = capsys.readouterr().err
    assert "not in the local Hugging Face cache" in err and "load_model('bundled')" in err


def test_the_module_runs_as_a_command():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "gemma_widgets", "prepare", "--model", "nope"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error: Unknown model 'nope'") and "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("url", ["https://[bad", "http://user:secret@host:port/v1", "http:///v1"])
def test_a_model_url_that_does_not_parse_exits_2_without_showing_it(monkeypatch, capsys, url):
    monkeypatch.setenv("GEMMA_MODEL", url)
    assert main(["prepare"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The model name starts with http(s):// but is not a valid URL")
    assert "secret" not in err and "http://localhost:8080/v1" in err


def test_a_file_where_the_cache_should_be_exits_2(monkeypatch, capsys, tmp_path):
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("GEMMA_WIDGETS_CACHE", str(tmp_path / "cache"))
    assert main(["prepare", "--model", "tiny-random-gemma2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot write in the cache folder") and "a file stands where" in err


def test_a_full_disk_while_building_exits_2(monkeypatch, capsys, tmp_path):
    def full(name, out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "model.safetensors"))

    monkeypatch.setenv("GEMMA_WIDGETS_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_build_random", full)
    assert main(["prepare", "--model", "tiny-random-gemma2"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "free some space there" in err
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-random-gemma2.lock"]
