"""Shared fixtures: the tiny random Gemma 2 (fast) and the bundled Gemma 3 270M (real)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer Gemma2ForCausalLM with random weights and the bundled tokenizer (fp32)."""
    from gemma_widgets import load_model

    return load_model("tiny-random-gemma2", precision="fp32")


@pytest.fixture(scope="session")
def bundled():
    """The real bundled Gemma 3 270M in bf16."""
    from gemma_widgets import load_model

    return load_model("bundled", precision="bf16")


@pytest.fixture
def two_ir_folders(tmp_path):
    """Two folders named ``ov_model`` in different places, holding different weights."""
    folders = tmp_path / "a" / "ov_model", tmp_path / "b" / "ov_model"
    for folder, weights in zip(folders, (b"one", b"two"), strict=True):
        folder.mkdir(parents=True)
        (folder / "openvino_model.bin").write_bytes(weights * 1000)
    return folders
