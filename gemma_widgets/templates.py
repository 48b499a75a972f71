"""Gemma's chat template and the helpers that fit a conversation to it.

Gemma 2 and Gemma 3 share one turn format::

    <bos><start_of_turn>user
    Hello<end_of_turn>
    <start_of_turn>model
    Hi!<end_of_turn>

The template has no ``system`` role: it raises if a conversation starts with one, so
:func:`fold_system_prompt` moves a system prompt into the first user turn, which is what
Google's own Gemma 2 template advises.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

#: The chat template of ``google/gemma-2-9b-it`` (tokenizer_config.json), verbatim.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

Message = dict[str, Any]


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` Gemma's chat template if it has none; return True if it was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return True


def fold_system_prompt(messages: list[Message], system: str | None = None) -> list[Message]:
    """Return ``messages`` with any system prompt folded into the first user turn.

    ``system`` (if given) and a leading ``{"role": "system"}`` message are both folded.
    The input list is not changed.

    >>> fold_system_prompt([{"role": "user", "content": "Hi"}], system="Be brief.")
    [{'role': 'user', 'content': 'Be brief.\\n\\nHi'}]
    """
    messages = [dict(m) for m in messages]
    parts = [system.strip()] if system and system.strip() else []
    while messages and messages[0]["role"] == "system":
        text = str(messages.pop(0)["content"]).strip()
        if text:
            parts.append(text)
    if not parts:
        return messages
    prefix = "\n\n".join(parts)
    if messages and messages[0]["role"] == "user":
        messages[0]["content"] = f"{prefix}\n\n{messages[0]['content']}"
    else:
        messages.insert(0, {"role": "user", "content": prefix})
    return messages


def chat_ids(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True,
             memo: dict[str, list[int]] | None = None) -> list[int]:
    """``messages`` through the tokenizer's chat template, as token ids; message text stays text.

    Tokenizing the rendered template whole would turn ``<start_of_turn>model`` typed in a message
    into the real control token, so a user could forge a model turn. So the template is rendered
    with a placeholder per message, its own markers are tokenized as usual, and each message's
    text with ``split_special_tokens=True``. For ordinary text the ids are the same as tokenizing
    the rendered template whole (a test checks it). ``memo`` keeps each text's ids across calls.
    (This also covers transformers 4 returning a list and 5 a ``BatchEncoding`` here.)
    """
    nonce = uuid.uuid4().hex
    marks = [f"\ue000{nonce}{i}\ue001" for i in range(len(messages))]
    masked = [{**message, "content": mark} for message, mark in zip(messages, marks, strict=True)]
    render = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    skeleton = tokenizer.apply_chat_template(masked, **render)
    rendered = tokenizer.apply_chat_template(messages, **render)
    pieces = re.split(f"\ue000{nonce}(\\d+)\ue001", skeleton)
    texts = [str(messages[int(i)]["content"]).strip() for i in pieces[1::2]]  # the template trims
    if "".join(p for pair in zip(pieces[::2], [*texts, ""], strict=True) for p in pair) != rendered:
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])  # an unknown template
    memo = {} if memo is None else memo
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            continue
        text = texts[i // 2]
        if text not in memo:
            memo[text] = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids += memo[text]
    return ids


def end_of_turn_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Token ids that end a model turn, read from the model's own files, never one family's numbers.

    ``<end_of_turn>`` as the tokenizer numbers it (107 in Gemma 2's vocabulary, 106 in Gemma 3's),
    the tokenizer's EOS, and every id in the model's ``generation_config.eos_token_id``.
    """
    ids = []
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids.append(eot)
    configured = getattr(generation_config, "eos_token_id", None)
    configured = [configured] if isinstance(configured, int) else list(configured or ())
    for token in (tokenizer.eos_token_id, *configured):
        if token is not None and token not in ids:
            ids.append(token)
    return ids
