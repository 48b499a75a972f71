"""Gemma's chat template, system-prompt folding and the end-of-turn ids (on the tiny model's tokenizer)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from jinja2.exceptions import TemplateError

from gemma_widgets.templates import (
    GEMMA_CHAT_TEMPLATE,
    chat_ids,
    end_of_turn_ids,
    ensure_chat_template,
    fold_system_prompt,
)

USER = {"role": "user", "content": "What is 2+2?"}


def test_no_system_prompt_leaves_messages_alone():
    messages = [USER, {"role": "assistant", "content": "4"}]
    assert fold_system_prompt(messages) == messages


def test_leading_system_message_is_folded_into_the_first_user_turn():
    messages = [{"role": "system", "content": "Be brief. "}, USER]
    folded = fold_system_prompt(messages)
    assert folded == [{"role": "user", "content": "Be brief.\n\nWhat is 2+2?"}]
    assert messages[0]["role"] == "system" and messages[1] is USER, "the input is not changed"
    assert USER["content"] == "What is 2+2?"


def test_system_argument_and_system_message_are_both_kept_in_order():
    system = {"role": "system", "content": "Answer in French."}
    folded = fold_system_prompt([system, USER], system="Be brief.")
    assert folded[0]["content"] == "Be brief.\n\nAnswer in French.\n\nWhat is 2+2?"


def test_empty_system_prompts_are_dropped():
    assert fold_system_prompt([{"role": "system", "content": "  "}, USER], system="") == [USER]


def test_a_system_prompt_alone_becomes_a_user_turn():
    assert fold_system_prompt([], system="Hello") == [{"role": "user", "content": "Hello"}]


def test_ensure_chat_template_adds_only_when_missing():
    bare = SimpleNamespace(chat_template=None)
    assert ensure_chat_template(bare) is True and bare.chat_template == GEMMA_CHAT_TEMPLATE
    custom = SimpleNamespace(chat_template="{{ messages }}")
    assert ensure_chat_template(custom) is False and custom.chat_template == "{{ messages }}"


@pytest.mark.model
def test_template_writes_gemmas_turn_format(tiny):
    tok = tiny.tokenizer
    chat = [USER, {"role": "assistant", "content": " 4 "}, {"role": "user", "content": "And 3+3?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == ("<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
                    "<start_of_turn>model\n4<end_of_turn>\n"
                    "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n<start_of_turn>model\n")
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == chat_ids(tok, chat) == tok(text, add_special_tokens=False).input_ids


@pytest.mark.model
@pytest.mark.parametrize("chat, error", [
    ([{"role": "system", "content": "Be brief."}, USER], "System role not supported"),
    ([USER, USER], "Conversation roles must alternate"),
])
def test_template_refuses_what_gemma_refuses(tiny, chat, error):
    with pytest.raises(TemplateError, match=error):
        tiny.tokenizer.apply_chat_template(chat, tokenize=False)


@pytest.mark.model
def test_folded_system_prompt_renders(tiny):
    chat = fold_system_prompt([{"role": "system", "content": "Be brief."}, USER])
    text = tiny.tokenizer.apply_chat_template(chat, tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>")


@pytest.mark.model
def test_end_of_turn_ids(tiny):
    tok = tiny.tokenizer
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<end_of_turn>"), tok.eos_token_id]
    assert tiny.model.generation_config.eos_token_id == end_of_turn_ids(tok)


def test_end_of_turn_ids_without_the_marker():
    class NoMarker:
        unk_token_id, eos_token_id = 3, 1

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

    assert end_of_turn_ids(NoMarker()) == [1]


@pytest.mark.model
def test_turn_markers_are_special_tokens(tiny):
    tok = tiny.tokenizer
    ids = tok.apply_chat_template([USER], add_generation_prompt=True)
    assert tok.decode(ids, skip_special_tokens=True) == "user\nWhat is 2+2?\nmodel\n"
    assert {"<start_of_turn>", "<end_of_turn>"} <= set(tok.all_special_tokens)
