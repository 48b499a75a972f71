"""Gemma 2 specifics on a real Gemma 2 architecture (the tiny random one): soft-capping and stop ids.

Gemma 2 caps attention scores at 50 (``50 * tanh(s / 50)``) and final logits at 30; transformers'
SDPA attention drops the first cap, so the kit loads Gemma 2 with eager attention. The turn ends at
``<end_of_turn>``, whose id differs between Gemma 2 (107) and Gemma 3 (106): the kit reads it from the
model's own tokenizer and generation config.
"""

from __future__ import annotations

import pytest
import torch

from gemma_widgets import load_model
from gemma_widgets.templates import END_OF_TURN, end_of_turn_ids

pytestmark = pytest.mark.model  # every test here runs the tiny random Gemma 2


@pytest.fixture(scope="module")
def gemma2():
    """The tiny Gemma 2 loaded by the kit, with weights scaled so both caps are exceeded."""
    lm = load_model("tiny-random-gemma2", precision="fp32")
    with torch.no_grad():
        attention = lm.model.model.layers[0].self_attn
        attention.q_proj.weight.mul_(100)  # raw attention scores past 50
        attention.k_proj.weight.mul_(100)
        lm.model.model.norm.weight.fill_(300)  # raw final logits past 30
    return lm


def test_gemma2_loads_with_eager_attention_which_keeps_the_attention_cap(gemma2):
    config = gemma2.model.config
    assert config.model_type == "gemma2" and config._attn_implementation == "eager"
    assert (config.attn_logit_softcapping, config.final_logit_softcapping) == (50.0, 30.0)


def test_final_logits_are_capped_at_30(gemma2):
    ids = gemma2.tokenizer("The capital of France is", return_tensors="pt").to(gemma2.model.device)
    with torch.inference_mode():
        logits = gemma2.model(**ids).logits
    assert 29.0 < logits.abs().max() <= 30.0  # the cap was reached, and holds


def test_attention_scores_are_capped_as_a_hand_computation_says(gemma2):
    from transformers.models.gemma2.modeling_gemma2 import apply_rotary_pos_emb, repeat_kv

    attention = gemma2.model.model.layers[0].self_attn
    seen = {}

    def capture_inputs(module, args, kwargs):
        seen["hidden"] = kwargs.get("hidden_states", args[0] if args else None)
        seen["rope"] = kwargs["position_embeddings"]

    def capture_weights(module, args, kwargs, output):
        seen["weights"] = output[1]

    hooks = [attention.register_forward_pre_hook(capture_inputs, with_kwargs=True),
             attention.register_forward_hook(capture_weights, with_kwargs=True)]
    ids = gemma2.tokenizer("One two three four five six seven", return_tensors="pt")
    try:
        with torch.inference_mode():
            gemma2.model(**ids)
    finally:
        for hook in hooks:
            hook.remove()

    hidden, (cos, sin) = seen["hidden"], seen["rope"]
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    with torch.inference_mode():
        q = attention.q_proj(hidden).view(shape).transpose(1, 2)
        k = attention.k_proj(hidden).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        raw = q @ repeat_kv(k, attention.num_key_value_groups).transpose(2, 3) * attention.scaling
    capped = 50.0 * torch.tanh(raw / 50.0)
    n = raw.shape[-1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    expected = torch.softmax(capped + causal, dim=-1)
    assert raw.abs().max() > 50 >= capped.abs().max()  # this input needs the cap
    torch.testing.assert_close(seen["weights"], expected, atol=1e-5, rtol=1e-4)
    uncapped = torch.softmax(raw + causal, dim=-1)
    assert not torch.allclose(seen["weights"], uncapped, atol=1e-3)  # ...and the model applied it


def _gemma2_numbered_tokenizer():
    """A tokenizer numbered like Gemma 2's (``<start_of_turn>`` 106, ``<end_of_turn>`` 107)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 106, END_OF_TURN: 107}
    vocab.update({f"<unused{i}>": i for i in range(4, 106) if i not in vocab.values()})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")


@pytest.mark.integration
def test_stop_ids_are_read_per_family_not_hard_coded(tiny, bundled):
    from types import SimpleNamespace

    gemma2_numbers = end_of_turn_ids(_gemma2_numbered_tokenizer(), SimpleNamespace(eos_token_id=[1, 107]))
    assert gemma2_numbers == [107, 1]  # Gemma 2's generation_config.eos_token_id is [1, 107]
    for lm in (tiny, bundled):  # Gemma 2 architecture and Gemma 3, both with Gemma 3's vocabulary
        stop = end_of_turn_ids(lm.tokenizer, lm.model.generation_config)
        assert stop[0] == lm.tokenizer.convert_tokens_to_ids(END_OF_TURN) == 106
        assert set(lm.model.generation_config.eos_token_id) <= set(stop)
        assert list(lm.engine.stop_ids) == stop  # what the chat stops on

