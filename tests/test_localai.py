"""LocalAI model definitions: the seed's fields, a round trip through YAML, every check, loading."""

from __future__ import annotations

import pytest
import yaml

from gemma_widgets import localai
from gemma_widgets.engines.openvino import ExportSettings, export
from gemma_widgets.localai import LocalAIDefinitionError, LocalAIModel
from gemma_widgets.precisions import PRECISIONS
from gemma_widgets.presets import PRESETS, locate

SEED_KEYS = ["name", "backend", "parameters", "context_size", "type", "template"]


@pytest.fixture(scope="module")
def tiny_ir():
    if PRECISIONS["ov-int4"].unavailable_reason(PRESETS["tiny-random-gemma2"]):
        pytest.skip("OpenVINO packages missing")
    return export(locate(PRESETS["tiny-random-gemma2"]), ExportSettings())


def test_the_hub_definition_has_the_seed_fields():
    spec = LocalAIModel("gemma-2-9b-it-ov", "fakezeta/gemma-2-9b-it-ov-int4", 8192)
    data = yaml.safe_load(spec.to_yaml())
    assert list(data)[:6] == SEED_KEYS
    assert data["backend"] == "transformers" and data["type"] == "OVModelForCausalLM"
    assert data["parameters"] == {"model": "fakezeta/gemma-2-9b-it-ov-int4"}
    assert data["template"] == {"use_tokenizer_template": True}
    assert data["context_size"] == 8192 and data["stopwords"] == ["<end_of_turn>"]


@pytest.mark.slow
def test_an_export_round_trips_through_a_file(tiny_ir, tmp_path):
    spec = LocalAIModel.for_export("tiny-ov", tiny_ir)
    assert spec.model == str(tiny_ir) and spec.context_size == 1024  # the tiny config's positions
    path = spec.write(tmp_path / "models" / "tiny-ov.yaml")
    assert localai.read(path) == spec


@pytest.mark.parametrize("change, problem", [
    ({"name": ""}, "name:"),
    ({"name": "has space"}, "name:"),
    ({"backend": "llama-cpp"}, "backend:"),
    ({"parameters": {}}, "parameters.model"),
    ({"parameters": "x"}, "parameters.model"),
    ({"context_size": 0}, "context_size"),
    ({"context_size": "8k"}, "context_size"),
    ({"type": "AutoModelForCausalLM"}, "type:"),
    ({"template": {"use_tokenizer_template": False}}, "use_tokenizer_template"),
    ({"stopwords": "<end_of_turn>"}, "stopwords"),
])
def test_every_wrong_field_is_named(change, problem):
    data = {**LocalAIModel("m", "owner/model", 4096).to_dict(), **change}
    with pytest.raises(LocalAIDefinitionError, match=problem):
        localai.from_dict(data)


def test_all_problems_come_in_one_message_and_bad_files_are_clear(tmp_path):
    with pytest.raises(LocalAIDefinitionError) as info:
        localai.from_dict({"name": "m"})
    assert str(info.value).count("\n  ") == 5
    with pytest.raises(LocalAIDefinitionError, match="mapping"):
        localai.from_dict(["a list"])
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(LocalAIDefinitionError, match="not valid YAML"):
        localai.read(tmp_path / "bad.yaml")
    with pytest.raises(LocalAIDefinitionError, match="Could not read"):
        localai.read(tmp_path / "missing.yaml")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(LocalAIDefinitionError, match="not a text file"):
        localai.read(tmp_path / "binary.yaml")


def test_a_folder_that_is_not_an_export_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LocalAIDefinitionError, match="openvino_model.xml"):
        LocalAIModel.for_export("x", tmp_path)
    with pytest.raises(LocalAIDefinitionError, match="config.json"):
        LocalAIModel.for_export("x", tmp_path / "nowhere")


@pytest.mark.model
def test_loading_a_definition_loads_its_model_like_localai(tiny_ir):
    lm = localai.load(LocalAIModel.for_export("tiny-ov", tiny_ir))
    assert lm.engine.name == "optimum-intel" and lm.path == str(tiny_ir)
    out = lm.model.generate(**lm.tokenizer("Hi", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1
