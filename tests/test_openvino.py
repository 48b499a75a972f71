"""OpenVINO exports: settings, the on-disk cache, both engines on one IR, loading an export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gemma_widgets import load_model
from gemma_widgets.cache import MANIFEST, read_manifest
from gemma_widgets.engines.genai import GenAIEngine, ir_engine
from gemma_widgets.engines.hf import OptimumEngine
from gemma_widgets.engines.openvino import (
    DETOKENIZER_XML,
    TOKENIZER_XML,
    ExportSettings,
    calibration_texts,
    compression_mode,
    cpu_properties,
    export,
    export_dir,
    optimum_model,
    with_ov_tokenizers,
)
from gemma_widgets.errors import PrecisionUnavailableError, UnknownPrecisionError
from gemma_widgets.precisions import PRECISIONS
from gemma_widgets.presets import PRESETS, locate, resolve_preset
from tests.test_native import HEAP_PROBE
from tests.test_precisions import greedy

pytestmark = pytest.mark.skipif(
    bool(PRECISIONS["ov-int4"].unavailable_reason(PRESETS["tiny-random-gemma2"])),
    reason="OpenVINO packages missing")


@pytest.fixture(scope="module")
def tiny_ir():
    return export(locate(PRESETS["tiny-random-gemma2"]), ExportSettings())


def test_every_setting_gets_its_own_folder():
    base = ExportSettings()
    variants = [base, ExportSettings(sym=True), ExportSettings(group_size=128), ExportSettings(ratio=0.8),
                ExportSettings(all_layers=True), ExportSettings(awq=True), ExportSettings("int8"),
                ExportSettings("fp16")]
    assert len({s.key for s in variants}) == len(variants)
    assert base.key == "int4-asym-g64-r1"
    assert len({export_dir("/some/model", s) for s in variants}) == len(variants)
    assert export_dir("/a/model", base) != export_dir("/b/model", base)


@pytest.mark.parametrize("bad", [dict(weight_format="int3"), dict(ratio=0), dict(ratio=1.5),
                                 dict(group_size=0), dict(group_size="64"), dict(sym="yes"),
                                 dict(weight_format="int8", awq=True)])
def test_bad_settings_are_refused_with_the_allowed_values(bad):
    with pytest.raises(UnknownPrecisionError):
        ExportSettings(**bad)


def test_quantization_config_carries_the_settings():
    config = ExportSettings(sym=True, group_size=32, ratio=0.5, all_layers=True).quantization_config()
    settings = (config.bits, config.sym, config.group_size, config.ratio, config.all_layers)
    assert settings == (4, True, 32, 0.5, True)
    assert ExportSettings("int8").quantization_config().bits == 8
    assert ExportSettings("fp16").quantization_config() is None
    awq = ExportSettings(awq=True).quantization_config("/models/gemma")
    assert (awq.quant_method.value, awq.scale_estimation, awq.tokenizer) == ("awq", True, "/models/gemma")
    assert awq.dataset == calibration_texts() and "lighthouse" not in " ".join(awq.dataset)  # not the passage


@pytest.mark.model
def test_an_export_is_complete_and_built_once(tiny_ir, monkeypatch):
    for name in ("openvino_model.xml", "openvino_model.bin", "config.json", "tokenizer.json",
                 TOKENIZER_XML, DETOKENIZER_XML):
        assert (tiny_ir / name).is_file(), name
    assert read_manifest(tiny_ir)["settings"]["group_size"] == 64
    stamp = (tiny_ir / MANIFEST).stat().st_mtime_ns
    import optimum.intel

    monkeypatch.setattr(optimum.intel.OVModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("exported again"))
    assert export(locate(PRESETS["tiny-random-gemma2"]), ExportSettings()) == tiny_ir
    assert (tiny_ir / MANIFEST).stat().st_mtime_ns == stamp


@pytest.mark.model
def test_both_engines_run_the_same_ir_and_agree(tiny_ir):
    genai = load_model("tiny-random-gemma2", "ov-int4")
    optimum = load_model("tiny-random-gemma2", "ov-int4", engine="optimum")
    assert (genai.engine.name, optimum.engine.name) == ("openvino-genai", "optimum-intel")
    assert genai.path == optimum.path == str(tiny_ir)
    assert type(genai.model).__name__ == "LLMPipeline"
    assert type(optimum.model).__name__ == "OVModelForCausalLM"
    assert callable(genai.tokenizer.apply_chat_template)  # the HF tokenizer in both
    assert genai.context_window == optimum.context_window == 1024  # genai: from the IR's config.json
    ids = genai.tokenizer("Hello there, how are").input_ids
    assert greedy(genai, ids, 8) == greedy(optimum, ids, 8)
    assert load_model("tiny-random-gemma2", "ov-int4-optimum").engine.name == "optimum-intel"


@pytest.mark.integration
def test_a_chats_next_turns_reuse_the_pipelines_cache_and_get_the_same_replies():
    """The chat default (``fast``) keeps the previous call's KV cache and prefills only what a new
    prompt adds to it (``benchmarks/chat_bench.py`` times it); on the bundled model each turn's
    greedy reply equals a fresh pipeline's. (The sum is not bit for bit the same: on the tiny random
    model, whose top logits nearly tie, one token in a few turns flips.)"""
    chat = load_model("bundled", "fast")
    assert chat.engine.name == "openvino-genai"
    messages = []
    for turn in range(3):
        messages.append({"role": "user", "content": f"Turn {turn + 1}: one more fact about lighthouses."})
        ids = chat.prompt(messages).input_ids
        reply = chat.engine.generate_exact(ids, 24)
        assert reply == GenAIEngine.from_ir(chat.path).generate_exact(ids, 24), f"turn {turn + 1}"
        messages.append({"role": "assistant", "content": chat.tokenizer.decode(reply, skip_special_tokens=True)})


def test_unknown_engine_names_the_two():
    assert ir_engine("genai") is ir_engine(None) is GenAIEngine
    assert ir_engine("Optimum") is ir_engine("optimum-intel") is OptimumEngine
    with pytest.raises(UnknownPrecisionError, match="'genai'.*'optimum'"):
        ir_engine("llama.cpp")


@pytest.mark.model
def test_loading_an_export_offline_writes_nothing_to_stderr(tiny_ir, monkeypatch, capfd):
    """Offline, optimum-intel looks for an IR folder in the hub cache and warns "Could not infer whether
    the model was already converted ... [Errno 2] ... refs/main" on stderr: a learner reads an error."""
    import optimum.intel.openvino.modeling_base as modeling_base

    monkeypatch.setattr(modeling_base, "is_offline_mode", lambda: True)  # as under HF_HUB_OFFLINE=1
    capfd.readouterr()
    model = optimum_model(str(tiny_ir))
    engine = GenAIEngine.from_ir(str(tiny_ir))
    logits = next(iter(engine.score([2, 3, 4])))
    assert model is not None and logits is not None
    err = capfd.readouterr().err
    assert "Could not infer" not in err and "refs/main" not in err, err


@pytest.mark.model
def test_an_export_folder_loads_as_exported_and_refuses_other_settings(tiny_ir):
    preset = resolve_preset(str(tiny_ir))
    assert preset.fmt == "openvino"
    assert "already an OpenVINO export" in PRECISIONS["ov-int8"].unavailable_reason(preset)
    lm = load_model(str(tiny_ir), "auto")
    assert lm.precision == "ov-int4" and lm.path == str(tiny_ir) and "loaded as exported" in lm.notes
    with pytest.raises(PrecisionUnavailableError, match="do not apply"):
        load_model(str(tiny_ir), "ov-int4", group_size=32)


@pytest.mark.slow
def test_a_folder_without_ov_tokenizers_gets_a_twin_that_has_them(tiny_ir, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_WIDGETS_CACHE", str(tmp_path / "cache"))
    bare = tmp_path / "bare-ir"
    bare.mkdir()
    for item in tiny_ir.iterdir():
        if item.name not in (TOKENIZER_XML, DETOKENIZER_XML, MANIFEST):
            (bare / item.name).symlink_to(item)
    twin = with_ov_tokenizers(str(bare))
    assert twin != bare and (twin / TOKENIZER_XML).is_file() and (twin / "openvino_model.xml").exists()
    assert with_ov_tokenizers(str(tiny_ir)) == tiny_ir
    assert json.loads((twin / MANIFEST).read_text())["info"]["source"] == str(bare)


#: In a fresh process (so no other test's threads or garbage move the figures): heap bytes left
#: in use after 40 new prompt lengths, by the kit's pipeline and by one with OpenVINO's defaults.
NEW_LENGTHS_SCRIPT = HEAP_PROBE + """
import sys
import numpy as np, openvino as ov, openvino_genai
from gemma_widgets.engines.genai import genai_pipeline
from gemma_widgets.engines.openvino import with_ov_tokenizers

config = openvino_genai.GenerationConfig()
config.max_new_tokens = config.min_new_tokens = 2
config.ignore_eos = True

def heap_left_by_new_lengths(pipe):
    def generate(length):
        ids = np.arange(10, 10 + length, dtype=np.int64)[None]
        pipe.generate(openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config)

    generate(100)
    before = heap_in_use()
    for length in range(10, 50):
        generate(length)
    return heap_in_use() - before

kit = genai_pipeline(sys.argv[1])
default = openvino_genai.LLMPipeline(str(with_ov_tokenizers(sys.argv[1])), "CPU")  # both alive
print(heap_left_by_new_lengths(kit), heap_left_by_new_lengths(default))
"""


@pytest.mark.model
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads glibc's heap figures")
def test_the_kits_pipeline_keeps_no_kernels_for_each_new_prompt_length(tiny_ir):
    done = subprocess.run([sys.executable, "-c", NEW_LENGTHS_SCRIPT, str(tiny_ir)], capture_output=True,
                          text=True, timeout=300, check=True)
    kit, default = (int(x) for x in done.stdout.split()[-2:])
    assert kit < 2 * 2**20
    assert default > 10 * 2**20  # OpenVINO's own default: ~0.7 MB per new length on this tiny model


@pytest.mark.slow
def test_int8_weights_compile_with_activation_groups_of_128(tiny_ir):
    int8_ir = export(locate(PRESETS["tiny-random-gemma2"]), ExportSettings("int8"))
    assert (compression_mode(tiny_ir), compression_mode(int8_ir)) == ("int4_asym", "int8_asym")
    assert "DYNAMIC_QUANTIZATION_GROUP_SIZE" not in cpu_properties(tiny_ir)
    model = optimum_model(str(int8_ir))
    model.compile()
    assert model.request.get_compiled_model().get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 128


def test_caches_of_a_folder_follow_its_content(two_ir_folders):
    """Two IR folders with one base name get two tokenizer twins; changed weights get a new export."""
    from gemma_widgets.engines.openvino import ExportSettings, export_dir, tokenizer_twin_dir

    first, second = two_ir_folders
    assert tokenizer_twin_dir(first) != tokenizer_twin_dir(second)
    before = export_dir(str(first), ExportSettings())
    (first / "openvino_model.bin").write_bytes(b"new" * 1000)
    assert export_dir(str(first), ExportSettings()) != before
