"""The bundled model's fast conversion, piece by piece, on small inputs: the GGUF reader against
``gguf.GGUFReader`` and the LoRA merge against peft's ``merge_and_unload`` (the whole conversion
against transformers and peft is ``test_bundled.py``'s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gemma_widgets.offline.bundled import merge_lora
from gemma_widgets.offline.gguf_reader import GGUFFile


@pytest.fixture
def small_gguf(tmp_path):
    """A GGUF with every kind of field the bundled one has and F32, F16, Q8_0 and Q4_K tensors."""
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    rng = np.random.default_rng(0)
    path = tmp_path / "small.gguf"
    writer = GGUFWriter(path, "gemma3")
    writer.add_name("Small")
    writer.add_uint32("gemma3.block_count", 2)
    writer.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_token_list(["<pad>", "<eos>", "▁the", "  ", "東京", "👋🏽"])
    writer.add_token_scores([0.0, 0.0, -1.5, -2.0, -3.25, -4.0])
    writer.add_token_types([3, 3, 1, 4, 1, 1])
    writer.add_array("general.tags", ["a", "b"])
    writer.add_tensor("norm.weight", rng.standard_normal(64).astype(np.float32))
    writer.add_tensor("half.weight", rng.standard_normal((3, 32)).astype(np.float16))
    q8 = quants.quantize(rng.standard_normal((4, 256)).astype(np.float32), GGMLQuantizationType.Q8_0)
    writer.add_tensor("q8.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    q4k = rng.integers(0, 256, (4, 144), dtype=np.uint8)  # gguf cannot quantize to Q4_K: random blocks
    q4k[:, :4] = np.array([0.01, 0.002], dtype=np.float16).view(np.uint8)  # finite scales
    writer.add_tensor("q4k.weight", q4k, raw_dtype=GGMLQuantizationType.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_reader_gives_what_gguf_reader_gives(small_gguf):
    from gguf import GGUFReader, quants

    reference, fast = GGUFReader(small_gguf), GGUFFile(small_gguf)
    expected = {k: f.contents() for k, f in reference.fields.items() if not k.startswith("GGUF.")}
    assert fast.fields.keys() == expected.keys()
    for key, value in expected.items():
        assert fast.fields[key] == pytest.approx(value) if isinstance(value, float) else fast.fields[key] == value
    assert fast.fields["tokenizer.ggml.tokens"][4:] == ["東京", "👋🏽"]
    assert [t.name for t in fast.tensors] == [t.name for t in reference.tensors]
    for mine, theirs in zip(fast.tensors, reference.tensors, strict=True):
        assert mine.data.dtype == theirs.data.dtype and np.array_equal(mine.data, theirs.data), mine.name
        assert mine.shape == tuple(int(n) for n in reversed(theirs.shape))
        assert np.array_equal(mine.dequantize(), quants.dequantize(theirs.data, theirs.tensor_type).reshape(mine.shape))


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="not a GGUF file"):
        GGUFFile(path)


def _tiny_gemma():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    return Gemma2ForCausalLM(config).to(torch.bfloat16)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_merging_a_lora_gives_what_peft_merge_and_unload_gives(tmp_path, use_rslora):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False, use_rslora=use_rslora)
    get_peft_model(_tiny_gemma().float(), config).save_pretrained(tmp_path / "adapter")
    base = {k: v.clone() for k, v in _tiny_gemma().state_dict().items()}

    from peft import PeftModel

    model = _tiny_gemma().float()  # as the old conversion merged: bf16 weights loaded in float32
    reference = PeftModel.from_pretrained(model, tmp_path / "adapter").merge_and_unload().to(torch.bfloat16)
    merged = merge_lora(base, tmp_path / "adapter")
    changed = 0
    for name, weight in reference.state_dict().items():
        assert merged[name].dtype == torch.bfloat16 and torch.equal(merged[name], weight), name
        changed += not torch.equal(merged[name], base[name])
    assert changed == 2 * len(targets), "every targeted weight of both layers moved"


def test_an_adapter_peft_alone_can_merge_is_refused(tmp_path):
    import json

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                              "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        merge_lora({}, tmp_path)
