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


def chat_ids(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
    """``messages`` through the tokenizer's chat template, as a list of token ids.

    transformers 4 returns a list of ids from ``apply_chat_template(tokenize=True)`` and
    transformers 5 a ``BatchEncoding``; with ``return_dict=True`` both return the latter.
    """
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                            tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


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
