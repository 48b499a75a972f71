"""Model resolution (argument > $GEMMA_MODEL > bundled), presets, and every loading error."""

from __future__ import annotations

import json

import pytest
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

from gemma_widgets import load_model, presets
from gemma_widgets.errors import GatedModelError, GemmaWidgetsError, OfflineModelError, UnknownModelError
from gemma_widgets.presets import PRESETS, hub_errors, locate, resolve_preset

SECRET = "hf_ThisIsNotARealTokenButMustNeverBePrinted"


def test_argument_beats_environment_beats_default(monkeypatch):
    monkeypatch.delenv("GEMMA_MODEL", raising=False)
    assert resolve_preset().name == "bundled"
    monkeypatch.setenv("GEMMA_MODEL", "tiny-random-gemma2")
    assert resolve_preset().name == "tiny-random-gemma2"
    assert resolve_preset("google/gemma-2-2b-it").name == "google/gemma-2-2b-it"


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves_to_itself(name):
    assert resolve_preset(name) is PRESETS[name]


def test_unknown_name_lists_the_presets(monkeypatch):
    with pytest.raises(UnknownModelError) as info:
        resolve_preset("bundeld")
    message = str(info.value)
    assert all(name in message for name in PRESETS)
    assert "Did you mean 'bundled'?" in message
    monkeypatch.setenv("GEMMA_MODEL", "no-such-model")
    with pytest.raises(UnknownModelError, match="no-such-model"):
        load_model()


def test_any_hub_id_is_accepted():
    preset = resolve_preset("someone/some-gemma")
    assert (preset.source, preset.repo_id, preset.fmt) == ("hub", "someone/some-gemma", "transformers")


def test_a_local_folder_is_accepted(tmp_path):
    config = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000, "intermediate_size": 128}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    preset = resolve_preset(str(tmp_path))
    assert (preset.source, preset.repo_id, preset.fmt) == ("local", str(tmp_path), "transformers")
    assert preset.params > 1000 * 64
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    assert resolve_preset(str(tmp_path)).fmt == "openvino"
    assert locate(resolve_preset(str(tmp_path))) == str(tmp_path)


@pytest.mark.model
def test_load_model_from_a_local_folder(tiny):
    loaded = load_model(tiny.path, precision="fp32")
    assert loaded.preset.source == "local"
    assert loaded.model.num_parameters() == tiny.model.num_parameters()
    assert loaded.tokenizer.chat_template


@pytest.mark.model
def test_loaded_model_records_how_it_was_loaded(tiny):
    assert (tiny.preset.name, tiny.precision, tiny.engine.name) == ("tiny-random-gemma2", "fp32", "transformers")
    assert tiny.context_window == 1024
    assert "tiny-random-gemma2" in repr(tiny) and tiny.load_seconds > 0


@pytest.mark.model
def test_tiny_parameter_count_matches_its_preset(tiny):
    assert tiny.model.num_parameters() == PRESETS["tiny-random-gemma2"].params == 16_851_520
    assert type(tiny.model).__name__ == "Gemma2ForCausalLM"


def test_weights_bytes_arithmetic():
    assert PRESETS["google/gemma-2-9b-it"].weights_bytes(2) == 2 * 9_241_705_984
    assert PRESETS["google/gemma-2-9b-it"].weights_bytes(0.5) == 9_241_705_984 // 2


@pytest.fixture
def online_without_token(monkeypatch):
    """The hub looks reachable, no token is configured, and nothing is cached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(presets, "get_token", lambda: None)
    monkeypatch.setattr(presets, "try_to_load_from_cache", lambda *a, **k: None)


@pytest.mark.parametrize("name", ["google/gemma-2-2b-it", "google/gemma-2-9b-it"])
def test_gated_model_without_token_says_how_to_set_one(online_without_token, name):
    with pytest.raises(GatedModelError) as info:
        load_model(name)
    message = str(info.value)
    assert name in message and "HF_TOKEN" in message and "login" in message and "bundled" in message


def hub_error(kind: type[Exception], message: str) -> Exception:
    """An instance of a hub error class without a server response (huggingface_hub 0.x and 1.x+
    construct them from a requests or an httpx response, respectively)."""
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    return error


def test_gated_errors_never_show_the_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(GatedModelError) as info, hub_errors("google/gemma-2-9b-it"):
        raise hub_error(GatedRepoError, f"403 Forbidden for token {SECRET}: access to the repo is restricted")
    assert SECRET not in str(info.value)
    assert "HF_TOKEN" in str(info.value)


def test_offline_uncached_hub_model_suggests_bundled(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineModelError, match=r"load_model\('bundled'\)") as info:
        load_model("google/gemma-2-9b-it")
    assert "HF_HUB_OFFLINE" in str(info.value)
    with pytest.raises(OfflineModelError):
        locate(resolve_preset("someone/not-cached"))


def test_hub_download_failures_become_clear_errors():
    with pytest.raises(UnknownModelError, match="not found on the hub"), hub_errors("someone/missing"):
        raise hub_error(RepositoryNotFoundError, "404 Client Error")
    with pytest.raises(OfflineModelError, match="bundled"), hub_errors("someone/model"):
        raise LocalEntryNotFoundError("cannot reach the hub")
    with pytest.raises(FileNotFoundError), hub_errors("someone/model"):
        raise FileNotFoundError("an unrelated missing file is not turned into a hub error")


def test_every_error_is_a_gemma_widgets_error():
    for error in (UnknownModelError, GatedModelError, OfflineModelError):
        assert issubclass(error, GemmaWidgetsError)


@pytest.mark.model
@pytest.mark.parametrize("name", ["tiny-random-gemma2", "random-gemma2-2b"])
def test_random_gemma2_presets_have_the_parameters_they_announce(name, tiny):
    """Built on the meta device (no memory): the 2B shape's count is what memory estimates use."""
    import torch
    from transformers import Gemma2ForCausalLM

    from gemma_widgets.presets import random_gemma2_config

    config = random_gemma2_config(name, tiny.tokenizer)
    with torch.device("meta"):
        model = Gemma2ForCausalLM(config)
    assert model.num_parameters() == PRESETS[name].params
    assert PRESETS[name].family == "gemma2" and config.attn_logit_softcapping == 50.0
