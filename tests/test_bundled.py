"""The bundled Gemma 3 270M: its converted cache, its tokenizer, and real generation (integration)."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from gemma_widgets import load_model
from gemma_widgets.cache import folder_digest, is_complete, read_manifest
from gemma_widgets.offline import bundled as _bundled
from gemma_widgets.offline.bundled import (
    FORMAT_VERSION,
    TOKENIZER_PROBES,
    base_dir,
    bundled_dir,
    chat_adapter_dir,
    sentencepiece_ids,
)
from gemma_widgets.presets import PRESETS
from gemma_widgets.templates import END_OF_TURN, START_OF_TURN, end_of_turn_ids
from gemma_widgets.tokenizer import read_tokenizer

pytestmark = pytest.mark.integration

#: An ordinary English passage: a model reading correctly tokenized text predicts it well.
PASSAGE = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
           "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
           "from 1887 to 1889.")


def test_the_cache_is_complete_and_current(bundled):
    folder = bundled_dir()
    assert bundled.path == str(folder)
    assert is_complete(folder, FORMAT_VERSION) and is_complete(base_dir(), FORMAT_VERSION)
    assert read_manifest(base_dir())["sha256"]  # the base model: the package's GGUF, converted
    assert read_manifest(folder)["adapter"] == folder_digest(chat_adapter_dir())  # merged with this adapter
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "tokenizer.model", "config.json"} <= names
    assert "gguf_pieces.model" not in names
    assert (folder / "tokenizer.model").stat().st_size < 20_000_000, "a SentencePiece model, not the GGUF"


@pytest.mark.parametrize("text", TOKENIZER_PROBES)
def test_saved_tokenizer_splits_text_as_sentencepiece_does(bundled, text):
    plain = text.replace(START_OF_TURN, "").replace(END_OF_TURN, "")
    ids = bundled.tokenizer(plain, add_special_tokens=False).input_ids
    assert ids == sentencepiece_ids(bundled_dir(), plain)


def test_whole_words_are_single_tokens(bundled):
    tok = bundled.tokenizer
    ids = tok("What is the capital of France?", add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces == ["What", "▁is", "▁the", "▁capital", "▁of", "▁France", "?"]
    for marker in (START_OF_TURN, END_OF_TURN, "<bos>"):
        assert len(tok(marker, add_special_tokens=False).input_ids) == 1


def test_the_model_reads_its_tokenizer_well(bundled):
    """Loss per character on plain English: about 0.5 nats; with transformers' GGUF tokenizer, about 2.5."""
    ids = torch.tensor([bundled.tokenizer(PASSAGE).input_ids])
    with torch.no_grad():
        loss = bundled.model(ids, labels=ids).loss.item()
    nats_per_char = loss * (ids.shape[1] - 1) / len(PASSAGE)
    print(f"{nats_per_char:.3f} nats per character")
    assert nats_per_char < 1.0


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_loading_the_saved_tokenizer_is_quiet(bundled):
    import transformers
    from transformers import AutoTokenizer

    records, logger = _Records(), logging.getLogger("transformers")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    logger.addHandler(records)
    try:
        read_tokenizer(bundled_dir())
        quiet = list(records.messages)
        AutoTokenizer.from_pretrained(bundled_dir())  # without the kit's argument: the spurious warning
    finally:
        logger.removeHandler(records)
        transformers.logging.set_verbosity(verbosity)
    assert not [m for m in quiet if "fix_mistral_regex" in m], quiet
    if transformers.__version__.startswith("4.57."):  # the versions that warn spuriously
        assert [m for m in records.messages if "fix_mistral_regex" in m], "the control load warns"


def test_parameter_count_matches_the_preset(bundled):
    assert bundled.model.num_parameters() == PRESETS["bundled"].params == 268_098_176
    assert bundled.context_window == 32768


def test_greedy_chat_generation_is_real_text(bundled):
    tok, model = bundled.tokenizer, bundled.model
    assert tok.convert_tokens_to_ids(END_OF_TURN) in model.generation_config.eos_token_id
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**inputs, do_sample=False, max_new_tokens=24)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    print(repr(text))
    assert new and text.strip()
    assert set(new) != {tok.pad_token_id}, "all <pad>: the logits were NaN"
    assert len(set(new)) > 3, "one token repeated is a degenerate model"
    assert sum(c.isalpha() for c in text) > len(text) / 2, "mostly letters, not symbols"


def test_loading_from_the_cache_does_not_convert_or_merge_again(bundled, monkeypatch):
    def convert(out):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(_bundled, "_convert", convert)
    monkeypatch.setattr(_bundled, "_merge", convert)
    start = time.perf_counter()
    loaded = load_model("bundled", precision="bf16")
    seconds = time.perf_counter() - start
    print(f"load from cache: {seconds:.1f} s (load_seconds={loaded.load_seconds:.1f})")
    assert loaded.model.num_parameters() == bundled.model.num_parameters()
    assert seconds < 60, "a generous bound: converting takes minutes, loading seconds"


#: The first build of the tiny random Gemma 2: assembling the GGUF, converting the bundled tokenizer,
#: building the model, each with build_once as the bundled model's conversion.
CONVERT = "from gemma_widgets.presets import PRESETS, locate; locate(PRESETS['tiny-random-gemma2'])"


def test_an_interrupted_first_conversion_never_blocks_the_next(tmp_path, monkeypatch):
    """Kill the first build at random points (assembling the GGUF, converting the tokenizer...)
    five times; then the next load works with no hand-made step."""
    import random
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("GEMMA_WIDGETS_CACHE", str(tmp_path))
    rng = random.Random(15)
    for _ in range(5):
        process = subprocess.Popen([sys.executable, "-c", CONVERT], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 12.0))  # imports take ~4 s, assembling ~1 s, the tokenizer ~20 s
        process.send_signal(rng.choice([signal.SIGKILL, signal.SIGINT]))
        process.wait(timeout=60)
    lm = load_model("tiny-random-gemma2", "fp32")
    assert lm.path == str(tmp_path / "tiny-random-gemma2")
    assert not list(tmp_path.glob("*.tmp-*")), "the next build cleared what the killed ones left"


def test_the_tokenizer_gives_what_generate_takes(bundled):
    """Gemma's tokenizers return no ``token_type_ids``, which ``generate(**inputs)`` would refuse."""
    inputs = bundled.tokenizer("The capital of France is", return_tensors="pt")
    assert sorted(inputs) == ["attention_mask", "input_ids"]
    assert bundled.model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs.input_ids.shape[1] + 2


def _transformers_conversion(gguf, out):
    """The bundled model as the kit converted it before its own reader: transformers' GGUF loader
    (de-quantizing; on transformers 5 copied into a plain model) and peft's merge_and_unload."""
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    options = {}
    if hasattr(transformers, "GgufConfig"):  # transformers 5
        options["quantization_config"] = transformers.GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, **options)
    if getattr(model, "hf_quantizer", None) is not None:
        config = model.config
        del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        plain.load_state_dict(model.state_dict())
        plain.generation_config, model = model.generation_config, plain
    model.save_pretrained(out / "base")
    merged = PeftModel.from_pretrained(model.float(), chat_adapter_dir()).merge_and_unload()
    return {k: v.to(torch.bfloat16) for k, v in merged.state_dict().items()}


@pytest.mark.slow
def test_the_fast_conversion_gives_what_transformers_and_peft_gave(bundled, tmp_path):
    """Every tensor of the base and chat folders bitwise equal to transformers' conversion and peft's merge
    (about a minute: transformers reads the GGUF's vocabulary several times)."""
    import json

    from safetensors.torch import load_file

    merged = _transformers_conversion(_bundled.bundled_gguf(), tmp_path)
    for folder, expected in ((base_dir(), load_file(tmp_path / "base" / "model.safetensors")),
                             (bundled_dir(), merged)):
        tensors = load_file(folder / "model.safetensors")
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}  # tied to the embedding
        assert tensors.keys() == expected.keys()
        differ = [k for k, v in tensors.items() if v.dtype != expected[k].dtype or not torch.equal(v, expected[k])]
        assert not differ, differ
        saved = json.loads((folder / "config.json").read_text())
        reference = json.loads((tmp_path / "base" / "config.json").read_text())
        assert saved == reference, {k for k in saved.keys() | reference.keys() if saved.get(k) != reference.get(k)}
    generation = json.loads((tmp_path / "base" / "generation_config.json").read_text())
    generation["eos_token_id"] = end_of_turn_ids(bundled.tokenizer)  # what the conversion sets
    assert json.loads((bundled_dir() / "generation_config.json").read_text()) == generation
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           load_file(base_dir() / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"])
