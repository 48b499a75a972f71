"""A peft LoRA adapter as a llama.cpp LoRA GGUF (gemma_widgets.offline.gguf_lora): the file, then llama.cpp on it.

The fast tests write a tiny adapter for a tiny stand-in base file and read the result back: names,
orientation, values, metadata, the cache, and the adapters it refuses. The integration tests make a
random adapter on the bundled model and hold llama.cpp with it (the package's Q4_K_M file plus the
adapter GGUF) to transformers with the same adapter merged, on the passage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.offline import gguf_lora as _gguf_lora
from gemma_widgets.offline.gguf_lora import base_tensors, lora_gguf, write_lora_gguf

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: A stand-in for Gemma 3's shapes: hidden 8, 2 query heads and 1 kv head of 4, feed-forward 12.
HIDDEN, Q, KV, FFN, LAYERS, RANK = 8, 8, 4, 12, 2, 2
#: (in, out) of each projection, as torch's Linear has them (weight is [out, in]).
IN_OUT = {"q_proj": (HIDDEN, Q), "k_proj": (HIDDEN, KV), "v_proj": (HIDDEN, KV), "o_proj": (Q, HIDDEN),
          "gate_proj": (HIDDEN, FFN), "up_proj": (HIDDEN, FFN), "down_proj": (FFN, HIDDEN)}
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def _module(name: str) -> str:
    return f"{'self_attn' if name.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{name}"


@pytest.fixture
def base_file(tmp_path) -> Path:
    """A gemma3 GGUF with the projections' shapes (weights as torch stores them: [out, in])."""
    path = tmp_path / "base.gguf"
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_block_count(LAYERS)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])  # arrays are skipped by the header reader
    writer.add_tensor("token_embd.weight", np.zeros((3, HIDDEN), np.float32))
    for layer in range(LAYERS):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        for name, (n_in, n_out) in IN_OUT.items():
            writer.add_tensor(f"blk.{layer}.{GGUF_NAMES[name]}.weight", np.zeros((n_out, n_in), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _adapter(folder: Path, dtype=None, seed: int = 0, **config) -> Path:
    """A peft-style adapter folder: lora_A [r, in], lora_B [out, r] for every projection of every layer."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.float32
    tensors = {}
    for layer in range(LAYERS):
        for name, (n_in, n_out) in IN_OUT.items():
            prefix = f"base_model.model.model.layers.{layer}.{_module(name)}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, n_in, generator=generator).to(dtype)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(n_out, RANK, generator=generator).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    settings = {"peft_type": "LORA", "r": RANK, "lora_alpha": 4, "target_modules": TARGETS, "bias": "none",
                "use_dora": False, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, **config}
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return folder


def test_the_header_reader_gives_gguf_shapes(base_file):
    arch, blocks, shapes = base_tensors(base_file)
    assert (arch, blocks) == ("gemma3", LAYERS)
    assert shapes["blk.1.attn_q.weight"] == (HIDDEN, Q)  # ne: [in, out], torch's [out, in] reversed
    assert shapes["blk.0.ffn_down.weight"] == (FFN, HIDDEN) and shapes["blk.0.attn_norm.weight"] == (HIDDEN,)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_file_is_what_convert_lora_to_gguf_writes(tmp_path, base_file, dtype):
    """llama.cpp's metadata, its names (blk.N.<base tensor>.lora_a/b), peft's arrays unchanged (GGUF
    reverses the dimensions: lora_a ne = [in, r], lora_b ne = [r, out]) and float32 values (bf16 widened)."""
    from safetensors.torch import load_file

    adapter = _adapter(tmp_path / "adapter", getattr(torch, dtype))
    out = tmp_path / "lora.gguf"
    info = write_lora_gguf(adapter, base_file, out)
    assert info == {"architecture": "gemma3", "rank": RANK, "alpha": 4.0, "tensors": 2 * 7 * LAYERS}

    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 4.0
    written = {t.name: t for t in reader.tensors}
    assert len(written) == 2 * 7 * LAYERS
    peft = load_file(adapter / "adapter_model.safetensors")
    for layer in range(LAYERS):
        for name, (n_in, n_out) in IN_OUT.items():
            base = f"blk.{layer}.{GGUF_NAMES[name]}.weight"
            prefix = f"base_model.model.model.layers.{layer}.{_module(name)}"
            a, b = written[f"{base}.lora_a"], written[f"{base}.lora_b"]
            assert a.tensor_type == b.tensor_type == gguf.GGMLQuantizationType.F32
            assert a.shape.tolist() == [n_in, RANK] and b.shape.tolist() == [RANK, n_out]
            assert np.array_equal(a.data, peft[f"{prefix}.lora_A.weight"].float().numpy())
            assert np.array_equal(b.data, peft[f"{prefix}.lora_B.weight"].float().numpy())
            # B @ A is the update of the [out, in] weight, as peft merges it
            assert (b.data @ a.data).shape == (n_out, n_in)


def test_it_is_built_once_and_keyed_on_content(tmp_path, base_file, monkeypatch):
    monkeypatch.setenv("GEMMA_WIDGETS_CACHE", str(tmp_path / "cache"))
    adapter = _adapter(tmp_path / "adapter")
    first = lora_gguf(adapter, base_file)
    assert first.is_file() and first.parent.parent == tmp_path / "cache"
    stamp = first.stat().st_mtime_ns
    assert lora_gguf(adapter, base_file) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    _adapter(adapter, seed=1)  # retrained: same names, same sizes, other values
    second = lora_gguf(adapter, base_file)
    assert second != first and second.is_file()
    assert not np.array_equal(gguf.GGUFReader(first).tensors[0].data, gguf.GGUFReader(second).tensors[0].data)


@pytest.mark.parametrize(("config", "words"), [
    ({"use_dora": True}, "use_dora"), ({"use_rslora": True}, "use_rslora"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"), ({"bias": "all"}, "bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"peft_type": "IA3"}, "not a peft LoRA"),
])
def test_adapters_llamacpp_cannot_express_are_refused(tmp_path, base_file, config, words):
    with pytest.raises(GemmaWidgetsError, match=words):
        write_lora_gguf(_adapter(tmp_path / "adapter", **config), base_file, tmp_path / "out.gguf")


def test_an_adapter_for_another_model_is_a_clear_error(tmp_path, base_file):
    from safetensors.torch import save_file

    adapter = _adapter(tmp_path / "adapter", r=RANK)
    wrong = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(RANK, HIDDEN + 1),
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(Q, RANK)}
    save_file(wrong, adapter / "adapter_model.safetensors")
    with pytest.raises(GemmaWidgetsError, match="made for another model"):
        write_lora_gguf(adapter, base_file, tmp_path / "out.gguf")
    save_file({"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight": torch.zeros(RANK, HIDDEN),
               "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight": torch.zeros(Q, RANK)},
              adapter / "adapter_model.safetensors")
    with pytest.raises(GemmaWidgetsError, match="no matching tensor"):  # layer 7 of a 2-layer model
        write_lora_gguf(adapter, base_file, tmp_path / "out.gguf")
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(RANK, HIDDEN)},
              adapter / "adapter_model.safetensors")
    with pytest.raises(GemmaWidgetsError, match="cannot take"):
        write_lora_gguf(adapter, base_file, tmp_path / "out.gguf")
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(RANK, HIDDEN)},
              adapter / "adapter_model.safetensors")
    with pytest.raises(GemmaWidgetsError, match="lacks one factor"):
        write_lora_gguf(adapter, base_file, tmp_path / "out.gguf")
    with pytest.raises(GemmaWidgetsError, match="No peft LoRA adapter"):
        lora_gguf(tmp_path / "nothing", base_file)


# --- llama.cpp on the bundled model with a random adapter ----------------------------------------------
#: Standard deviation of the random lora_B entries (peft starts B at zero, which would hide a wrong
#: orientation or scale): enough to change the top-1 token at ~17% of the passage's positions.
B_STD = 0.01


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory):
    """A peft adapter on the bundled base model (the kit's config: r 16, alpha 32, every projection),
    random B, with transformers' passage scores of the base and of the merged model (fp32)."""
    pytest.importorskip("llama_cpp")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from gemma_widgets.offline.bundled import prepare_bundled_base
    from gemma_widgets.quality import passage_ids, score_logits
    from gemma_widgets.tokenizer import read_tokenizer

    folder = prepare_bundled_base()
    tokenizer = read_tokenizer(folder)
    ids = passage_ids(tokenizer)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        base = score_logits(model(torch.tensor([ids])).logits[0], ids)
        tuned = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
        for name, parameter in tuned.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, B_STD)
        adapter = tmp_path_factory.mktemp("adapter")
        tuned.save_pretrained(adapter)
        merged = tuned.merge_and_unload().eval()
        chat = score_logits(merged(torch.tensor([ids])).logits[0], ids)
    return adapter, tokenizer, ids, base, chat


@pytest.mark.integration
def test_llamacpp_with_the_adapter_agrees_with_the_merged_model(random_adapter, tmp_path):
    """llama.cpp's Q4_K_M file plus the adapter GGUF predicts the passage as transformers' merged model
    does, about as closely as the file alone matches the base model (measured: 0.968 and 0.965 top-1
    agreement); without the adapter it matches the merged model far less (0.82), so this can fail."""
    from gemma_widgets.engines.llamacpp import LlamaCppEngine
    from gemma_widgets.offline.bundled import bundled_gguf
    from gemma_widgets.quality import score_chunks

    adapter, tokenizer, ids, hf_base, hf_chat = random_adapter
    lora = tmp_path / "lora.gguf"
    write_lora_gguf(adapter, bundled_gguf(), lora)

    def llamacpp(lora_path):
        engine = LlamaCppEngine.from_gguf(str(bundled_gguf()), tokenizer, n_ctx=64, lora=lora_path)
        return score_chunks(engine.score(ids, keep_generator=False), ids)

    plain, tuned = llamacpp(None), llamacpp(str(lora))
    baseline = plain.agreement(hf_base)
    assert baseline >= 0.93
    assert tuned.agreement(hf_chat) >= baseline - 0.02
    assert plain.agreement(hf_chat) <= tuned.agreement(hf_chat) - 0.08  # the adapter is what makes it agree
    # perplexity: llama.cpp's file is as close to transformers with the adapter as without it (0.7%, 1.0%)
    assert abs(tuned.perplexity / hf_chat.perplexity - 1) < 0.03
    assert tuned.perplexity > 1.04 * plain.perplexity  # a random adapter makes the passage less likely


def _write_bad_adapter(path: Path) -> Path:
    """What an adapter for another Gemma 3 size looks like to llama.cpp: attn_q factors of other shapes."""
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 32.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((16, 1152), np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((1024, 16), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.integration
def test_an_adapter_llamacpp_refuses_is_a_reason_never_a_crash(random_adapter, tmp_path, monkeypatch):
    """llama-cpp-python 0.3.36 misses llama.cpp's refusal of an adapter (a NULL pointer that is not None)
    and the first decode dies with SIGSEGV. The kit refuses such a file before loading it, in the probe
    and in process, naming it (not "rebuild llama-cpp-python"); and should its own check miss one, the
    refusal is caught after loading, in the child probe as in process."""
    from gemma_widgets.engines import llamacpp
    from gemma_widgets.errors import PrecisionUnavailableError
    from gemma_widgets.host.probe import probe
    from gemma_widgets.offline.bundled import bundled_gguf

    base = str(bundled_gguf())
    good = tmp_path / "good.gguf"
    write_lora_gguf(random_adapter[0], bundled_gguf(), good)
    assert _gguf_lora.lora_mismatch(base, good) is None
    assert llamacpp.unavailable_reason(base, str(good)) is None
    bad = str(_write_bad_adapter(tmp_path / "bad.gguf"))
    assert "for a [640, 1024] matrix" in _gguf_lora.lora_mismatch(base, bad)
    reason = llamacpp.unavailable_reason(base, bad)
    assert reason and "bad.gguf" in reason and llamacpp.REBUILD not in reason
    with pytest.raises(PrecisionUnavailableError, match=r"cannot apply the LoRA adapter bad.gguf.*\[640, 1024\]"):
        llamacpp.LlamaCppEngine.from_gguf(base, random_adapter[1], n_ctx=64, lora=bad)

    reason = probe("llama-cpp-python", "llama_cpp", llamacpp._PROBE, base, bad)  # without the kit's check
    assert reason and "refused the LoRA adapter" in reason and "SIGSEGV" not in reason
    monkeypatch.setattr(llamacpp, "lora_mismatch", lambda *paths: None)
    with pytest.raises(PrecisionUnavailableError, match="bad.gguf.*llama.cpp refused it"):
        llamacpp.LlamaCppEngine.from_gguf(base, random_adapter[1], n_ctx=64, lora=bad)


def test_the_bundled_adapter_is_the_kits_chat_adapter(monkeypatch, tmp_path):
    """bundled_lora converts the folder bundled.chat_adapter_dir names, for the bundled file."""
    seen = []
    monkeypatch.setattr(_gguf_lora, "chat_adapter_dir", lambda: tmp_path / "chat-adapter")
    monkeypatch.setattr(_gguf_lora, "lora_gguf", lambda folder, base=None: seen.append(folder) or tmp_path)
    assert _gguf_lora.bundled_lora() == tmp_path and seen == [tmp_path / "chat-adapter"]
