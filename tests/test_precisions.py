"""The precision registry: availability reasons, auto choices, and sane output from every variant."""

from __future__ import annotations

import pytest
import torch

from gemma_widgets import load_model
from gemma_widgets.engines import genai
from gemma_widgets.engines.hf import FP16_MAX, bnb_config, bnb_dtype
from gemma_widgets.engines.spec import Precision
from gemma_widgets.errors import PrecisionUnavailableError, UnknownPrecisionError
from gemma_widgets.host import packages
from gemma_widgets.host.hardware import Hardware
from gemma_widgets.precisions import PRECISIONS, auto_precision, available, resolve
from gemma_widgets.presets import PRESETS, resolve_preset

PROMPT = "The capital of France is"
NEW_TOKENS = 12
TINY = PRESETS["tiny-random-gemma2"]
NINE_B = PRESETS["google/gemma-2-9b-it"]
OV_HUB = PRESETS["fakezeta/gemma-2-9b-it-ov-int4"]
#: Made-up machines: the checks and the auto pick read a Hardware, so a test passes its own.
CPU_24GB = Hardware(None, 24 * 10**9, 2)
T4 = Hardware((7, 5), 15 * 10**9, 8)


def without(monkeypatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled (the others as they are)."""
    real = packages.installed
    monkeypatch.setattr(packages, "installed", lambda name: name not in modules and real(name))


def next_logits(lm, ids: list[int]) -> torch.Tensor:
    """Logits of ``lm`` over ``ids``, from its engine (an openvino-genai pipeline's are read from its IR)."""
    return torch.cat(list(lm.engine.score(ids))).float()


def greedy(lm, ids: list[int], n: int = NEW_TOKENS) -> list[int]:
    """``n`` greedy tokens after ``ids``, on any engine."""
    return lm.engine.generate_exact(ids, n)


def assert_sane(lm, strict: bool) -> None:
    """Finite logits; greedy output not all padding (and, ``strict``, not one token repeated)."""
    ids = lm.tokenizer(PROMPT).input_ids
    assert torch.isfinite(next_logits(lm, ids)).all(), f"{lm.precision}: non-finite logits"
    out = greedy(lm, ids)
    assert len(out) == NEW_TOKENS
    assert set(out) != {lm.tokenizer.pad_token_id}, f"{lm.precision}: every token is <pad>"
    if strict:
        assert len(set(out)) > 1, f"{lm.precision}: one token repeated: {lm.tokenizer.decode(out)!r}"


def skip_unless_here(name: str, preset) -> None:
    """Skip when precision ``name`` cannot run ``preset`` here. Asked when the test runs, not when it is
    collected: the answer for the bundled model converts its GGUF (make unit builds no model)."""
    reason = PRECISIONS[name].unavailable_reason(preset)
    if reason:
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRECISIONS))
def test_every_available_variant_gives_finite_logits_on_the_tiny_model(name):
    skip_unless_here(name, TINY)
    assert_sane(load_model("tiny-random-gemma2", precision=name), strict=False)


@pytest.mark.integration
@pytest.mark.parametrize("name", list(PRECISIONS))
def test_every_available_variant_gives_sane_text_on_the_bundled_model(name):
    skip_unless_here(name, PRESETS["bundled"])
    lm = load_model("bundled", precision=name)
    assert lm.precision == name
    assert_sane(lm, strict=True)


def test_available_lists_every_variant_with_a_reason_or_none():
    found = available(TINY)
    assert list(found) == list(PRECISIONS)
    assert all(reason is None or (isinstance(reason, str) and reason) for reason in found.values())
    assert found["fp32"] is None and found["bf16"] is None


@pytest.mark.slow
def test_fp16_is_decided_per_family_with_the_reason_shown(monkeypatch):
    """Gemma 3 (the bundled model) overflows float16, measured; Gemma 2 9B is documented to work in it (2B is
    allowed) and 27B to be erratic."""
    reason = PRECISIONS["fp16"].unavailable_reason(PRESETS["bundled"], CPU_24GB)
    assert reason and f"{FP16_MAX:.0f}" in reason and "bf16" in reason
    with pytest.raises(PrecisionUnavailableError, match="overflow float16"):
        load_model("bundled", precision="fp16")
    for allowed in (TINY, PRESETS["google/gemma-2-2b-it"], NINE_B):
        assert allowed.family == "gemma2" and PRECISIONS["fp16"].unavailable_reason(allowed, CPU_24GB) is None
    assert "erratic for 27B" in PRECISIONS["fp16"].unavailable_reason(resolve_preset("google/gemma-2-27b-it"),
                                                                       CPU_24GB)
    lm = load_model("tiny-random-gemma2", precision="fp16")
    assert lm.model.dtype == torch.float16 and "float16" in lm.notes[0]


@pytest.mark.model
@pytest.mark.skipif(bool(PRECISIONS["bnb-nf4"].unavailable_reason(TINY)), reason="bitsandbytes missing")
def test_bnb_without_dtype_is_float16_which_is_why_the_registry_gives_one():
    """The cause of the all-<pad> output: transformers 4's bitsandbytes default dtype is float16
    (transformers 5 takes the checkpoint's dtype); the registry always gives one."""
    import transformers
    from transformers import AutoModelForCausalLM

    from gemma_widgets.presets import locate

    path = locate(TINY)
    config = bnb_config(PRECISIONS["bnb-nf4"])
    default = AutoModelForCausalLM.from_pretrained(path, quantization_config=config).dtype
    assert default == (torch.float16 if transformers.__version__.startswith("4.") else torch.float32)
    lm = load_model("tiny-random-gemma2", precision="bnb-nf4")
    assert lm.model.model.embed_tokens.weight.dtype == bnb_dtype() != torch.float16


def test_too_little_memory_is_a_reason_before_any_load(monkeypatch):
    monkeypatch.setattr(packages, "installed", lambda name: True)
    monkeypatch.setattr(genai, "optimum_reason", lambda: None)
    small = Hardware(None, 5 * 10**9, 2)
    reason = PRECISIONS["bf16"].unavailable_reason(NINE_B, small)
    assert reason and "18.5 GB" in reason and "5.0 GB" in reason
    assert PRECISIONS["ov-int4"].unavailable_reason(NINE_B, small) is None  # 4.6 GB fits
    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls: small))
    with pytest.raises(PrecisionUnavailableError, match="bf16 is not available here: its weights need"):
        load_model("google/gemma-2-9b-it", "bf16")


def test_a_missing_package_is_a_reason(monkeypatch):
    without(monkeypatch, "bitsandbytes")
    assert "pip install bitsandbytes" in PRECISIONS["bnb-nf4"].unavailable_reason(TINY, CPU_24GB)
    assert available(TINY, CPU_24GB)["bf16"] is None


def test_llamacpp_missing_is_a_reason_naming_the_extra(monkeypatch):
    without(monkeypatch, "llama_cpp")
    reason = PRECISIONS["gguf-q4_k_m"].unavailable_reason(PRESETS["bundled"], CPU_24GB)
    assert "llama-cpp-python is not installed" in reason and "gemma_widgets[llamacpp]" in reason


def test_a_server_runs_as_served_only():
    served = resolve_preset("http://127.0.0.1:9/v1")
    assert served.fmt == "server" and auto_precision(served) == "served"
    assert "precision 'served'" in PRECISIONS["bf16"].unavailable_reason(served)
    assert "precision 'served'" in PRECISIONS["ov-int4"].unavailable_reason(served)
    assert "server's URL" in PRECISIONS["served"].unavailable_reason(TINY)
    secret = resolve_preset("http://learner:s3cret@127.0.0.1:9/v1")
    assert "s3cret" not in secret.name + secret.description and "s3cret" in secret.repo_id  # used, not shown


def test_openvino_exports_only_load_as_exported():
    assert PRECISIONS["bf16"].unavailable_reason(OV_HUB).startswith(f"{OV_HUB.name} is an OpenVINO export")
    assert "already an OpenVINO export" in PRECISIONS["ov-int8"].unavailable_reason(OV_HUB)
    assert auto_precision(OV_HUB) == "ov-int4"


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "bnb-nf4")])
def test_auto_on_a_gpu_follows_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(packages, "installed", lambda name: True)
    gpu = Hardware(capability, 40 * 10**9, 8)
    assert auto_precision(TINY, gpu) == expected
    expected_dtype = torch.float32 if capability < (8, 0) else torch.bfloat16
    assert bnb_dtype(gpu) == expected_dtype


def test_auto_on_a_t4_without_bitsandbytes_is_fp32(monkeypatch):
    without(monkeypatch, "bitsandbytes")
    assert auto_precision(TINY, T4) == "fp32"


def test_auto_on_a_cpu_keeps_transformers_and_fast_takes_openvino(monkeypatch):
    monkeypatch.setattr(packages, "installed", lambda name: True)
    monkeypatch.setattr(genai, "optimum_reason", lambda: None)
    assert resolve("auto", TINY, CPU_24GB).name == resolve(None, TINY, CPU_24GB).name == "bf16"
    assert resolve("fast", TINY, CPU_24GB).name == "ov-int8"
    assert resolve("fast", NINE_B, Hardware(None, 20 * 10**9)).name == "ov-int8"
    assert resolve("fast", NINE_B, Hardware(None, 6 * 10**9)).name == "ov-int4"  # int8 9B does not fit, int4 does
    monkeypatch.setattr(genai, "optimum_reason", lambda: "no exporter (Colab)")
    assert resolve("fast", TINY, CPU_24GB).name == "bf16"


def test_unknown_precision_lists_the_known_ones():
    with pytest.raises(UnknownPrecisionError, match="Known: auto, fast, fp32, bf16"):
        resolve("int3", resolve_preset("tiny-random-gemma2"))


@pytest.mark.model
def test_models_with_the_same_tokenizer_files_share_one_tokenizer(tiny):
    """Gemma's 262k vocabulary costs 300-400 MB: a second precision must not load it again."""
    from gemma_widgets import load_model

    other = load_model("tiny-random-gemma2", precision="bf16")
    assert other.tokenizer is tiny.tokenizer
    assert callable(other.tokenizer.apply_chat_template)


def test_optimum_intel_beside_a_transformers_it_does_not_accept_is_named(monkeypatch):
    """Colab's case: optimum-intel imports lazily, so an installed but incompatible one looked available."""
    from importlib import metadata


    installed = {"optimum-intel": "1.27.0", "transformers": "5.24.0"}
    monkeypatch.setattr(metadata, "requires", lambda dist: ["transformers<4.58,>=4.45", "tests; extra == 'x'"])
    monkeypatch.setattr(metadata, "version", lambda dist: installed[dist])
    packages.unmet_requirement.cache_clear()
    try:
        reason = packages.unmet_requirement("optimum-intel")
    finally:
        packages.unmet_requirement.cache_clear()
    assert reason == "optimum-intel 1.27.0 needs transformers<4.58,>=4.45 and 5.24.0 is installed"


def test_an_exported_ir_needs_no_optimum_but_an_export_does(monkeypatch):
    monkeypatch.setattr(genai, "optimum_reason", lambda: "no optimum-intel here")
    monkeypatch.setattr(packages, "installed", lambda name: True)
    exported = PRESETS["fakezeta/gemma-2-9b-it-ov-int4"]
    assert PRECISIONS["ov-int4"].unavailable_reason(exported, CPU_24GB) is None
    assert PRECISIONS["ov-int4-optimum"].unavailable_reason(exported, CPU_24GB) == "no optimum-intel here"
    assert PRECISIONS["ov-int4"].unavailable_reason(PRESETS["bundled"], CPU_24GB) == "no optimum-intel here"


@pytest.mark.model
def test_a_precision_is_one_row(monkeypatch):
    """Adding a precision is adding a row: a made-up one loads through its backend, with its typed options."""
    row = Precision("bf16-eager", "bfloat16, eager attention set by the row", 2,
                    "gemma_widgets.engines.hf:TorchBackend", dtype="bfloat16",
                    defaults={"attn_implementation": "eager"})
    monkeypatch.setitem(PRECISIONS, row.name, row)
    lm = load_model("tiny-random-gemma2", "bf16-eager")
    assert lm.precision == "bf16-eager" and lm.model.dtype == torch.bfloat16
    assert lm.model.config._attn_implementation == "eager"
    assert available(TINY, CPU_24GB)["bf16-eager"] is None


@pytest.mark.parametrize("precision, options, message", [
    ("bf16", {"group_size": 32}, "bf16 takes no option 'group_size'; it takes attn_implementation"),
    ("bnb-nf4", {"n_ctx": 8}, "bnb-nf4 takes no option 'n_ctx'; it takes attn_implementation, revision, "
                              "low_cpu_mem_usage, double_quant"),
    ("ov-int4", {"group_size": "64"}, "group_size must be a whole number"),
    ("ov-int4", {"ratio": 2.0}, "ratio must be in"),
    ("ov-int8", {"engine": "llama.cpp"}, "Unknown OpenVINO engine"),
    ("gguf-q4_k_m", {"model": "x"}, "gguf-q4_k_m takes no option 'model'; it takes n_threads, n_ctx"),
])
def test_each_backend_refuses_options_its_type_does_not_take(precision, options, message):
    with pytest.raises(UnknownPrecisionError, match=message):
        PRECISIONS[precision].parse_options(options)


def test_options_are_typed_and_rows_set_their_defaults():
    parsed = PRECISIONS["ov-int4-optimum"].parse_options({"group_size": 128})
    assert (parsed.engine, parsed.group_size, parsed.export_settings("int4").group_size) == ("optimum", 128, 128)
    assert PRECISIONS["bnb-nf4"].parse_options({"double_quant": True}).double_quant is True
