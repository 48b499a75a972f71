"""Loading Gemma's tokenizer from a saved folder, once per set of files.

:func:`load_tokenizer` is the one way the kit (and the notebooks) read a tokenizer: with
Gemma's chat template, and shared between models whose folders hold the same tokenizer files.
"""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from gemma_widgets.templates import ensure_chat_template

#: Tokenizers in use, by the digest of their files: see :func:`load_tokenizer`.
_TOKENIZERS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def read_tokenizer(path: str | Path, **kwargs: Any) -> Any:
    """The tokenizer saved in ``path``, as saved, without transformers 4.57's spurious Mistral-regex warning.

    transformers 4.57.3-4.57.6 flag every local tokenizer whose config was saved by those
    versions as a Mistral tokenizer with a bad regex. Passing ``fix_mistral_regex=False`` keeps
    the tokenizer as saved (Gemma's has no such regex); ``tests/test_bundled.py`` checks that it
    splits text exactly as SentencePiece does and that it loads without the warning.
    """
    return AutoTokenizer.from_pretrained(path, fix_mistral_regex=False, **kwargs)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in ``path`` (a folder or hub id), with Gemma's chat template.

    Models loaded from folders with the same tokenizer files share one tokenizer object while
    any of them is alive: Gemma's 262k-token vocabulary takes 300-400 MB of memory, and a
    notebook that holds two precisions (or the tiny test model beside the bundled one) needs it once.
    """
    folder = Path(path)
    key = None
    if (folder / "tokenizer.json").is_file():
        digest = hashlib.sha256()
        for name in _FILES:
            if (folder / name).is_file():
                digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
        key = digest.hexdigest()
    tokenizer = _TOKENIZERS.get(key) if key else None
    if tokenizer is None:
        tokenizer = read_tokenizer(path)
        ensure_chat_template(tokenizer)
        if key:
            _TOKENIZERS[key] = tokenizer
    return tokenizer
