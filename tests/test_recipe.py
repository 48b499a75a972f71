"""Recipes: which weights a variant keeps at which precision, read from the weights themselves."""

from __future__ import annotations

import doctest

import pytest

from gemma_widgets import load_model, recipe
from gemma_widgets.engines.openvino import ExportSettings, export
from gemma_widgets.offline.bundled import bundled_gguf
from gemma_widgets.precisions import PRECISIONS
from gemma_widgets.presets import PRESETS, locate

TINY = "tiny-random-gemma2"


def test_the_description_reads_as_its_docstring_says():
    assert doctest.testmod(recipe).failed == 0


@pytest.mark.model
def test_a_gguf_header_gives_every_matrix_and_the_tied_output():
    rows = recipe.gguf_rows(bundled_gguf())
    body = [precision for part, _, precision in rows if part == "body"]
    assert len(body) == 18 * 7  # Gemma 3 270M: 18 layers of q, k, v, o, gate, up, down
    assert ("embedding", "token_embd", "Q8_0") in rows
    assert not any(part == "output" for part, _, _ in rows)  # tied to the embedding
    text = recipe.describe(rows)
    assert text.startswith("embedding Q8_0 (also the output layer); body: ")
    assert "Q4_K" in text and "Q5_0" in text


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ValueError, match="not a GGUF file"):
        recipe.gguf_rows(path)


@pytest.mark.model
def test_a_transformers_model_lists_its_linear_layers_and_embedding():
    model = load_model(TINY, "bf16").engine
    assert model.recipe() == "embedding bf16, output bf16; body: 14 bf16"


@pytest.mark.slow
@pytest.mark.skipif(bool(PRECISIONS["ov-int4"].unavailable_reason(PRESETS[TINY])), reason="OpenVINO missing")
def test_an_openvino_ir_shows_its_compressed_layers_and_nncf_settings():
    source = locate(PRESETS[TINY])
    int4 = export(source, ExportSettings())
    int8 = export(source, ExportSettings("int8"))
    assert recipe.describe(recipe.openvino_rows(int4)) == "embedding int8, output int8; body: 14 int4"
    assert recipe.describe(recipe.openvino_rows(int8)) == "embedding int8, output int8; body: 14 int8"
    assert recipe.nncf_settings(int4) == "int4_asym g64"
    assert load_model(TINY, "ov-int4").engine.recipe() == "embedding int8, output int8; body: 14 int4 (int4_asym g64)"
