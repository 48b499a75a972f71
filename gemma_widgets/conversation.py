"""Conversation state: the transcript, the system prompt, and the prompt that fits the context.

A :class:`Conversation` keeps every message (a transcript is never lost) and builds the
prompt for the next reply: the system prompt folded into the first user turn (Gemma has no
system role), the oldest user/model pairs left out when the conversation would overflow the
model's context window, and a :class:`PromptPlan` that says how many were left out so a view
can show a notice.

>>> conv = Conversation(system="Answer in French.")
>>> conv.add_user("Hello")
>>> conv.history
[{'role': 'system', 'content': 'Answer in French.'}, {'role': 'user', 'content': 'Hello'}]
"""

from __future__ import annotations

import html
import json
import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gemma_widgets.errors import GemmaWidgetsError, GenerationError
from gemma_widgets.host.files import parse_json, read_limited, write_atomic
from gemma_widgets.templates import chat_ids, ensure_chat_template, fold_system_prompt

TRANSCRIPT_FORMAT = "gemma_widgets.transcript/1"
ROLES = ("user", "assistant")


@dataclass
class Message:
    """One turn of the transcript, with what happened while it was generated."""

    role: str  # "user" or "assistant"
    content: str
    stopped: bool = False  # the user pressed Stop: the reply is partial
    error: str | None = None  # the generation raised; ``content`` holds what came before
    stats: dict[str, Any] | None = None  # GenerationStats as a dict, for replies

    def as_chat(self) -> dict[str, str]:
        """The message in transformers' messages format."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class PromptPlan:
    """The prompt for the next reply and how the conversation was fitted into the context."""

    input_ids: list[int]
    first_kept: int  # index in ``Conversation.messages`` of the first message the model sees
    dropped: int  # messages left out because the context window is full
    context_window: int
    max_new_tokens: int
    messages: list[dict[str, str]] = field(default_factory=list)  # the same prompt as chat messages

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    def notice(self) -> str | None:
        """A sentence for the view when older turns were left out, else None."""
        if not self.dropped:
            return None
        turns = self.dropped // 2
        return (f"The conversation no longer fits the {self.context_window}-token context window "
                f"(with {self.max_new_tokens} tokens kept for the reply): the oldest {turns} "
                f"exchange{'s' if turns != 1 else ''} ({self.dropped} messages) are left out of the "
                "prompt. They stay in the transcript.")


@dataclass
class Conversation:
    """A chat transcript plus the system prompt, fitted to a tokenizer's chat template."""

    system: str = ""
    messages: list[Message] = field(default_factory=list)
    _first_kept: int = field(default=0, repr=False)  # lower bound for the next fit

    @property
    def history(self) -> list[dict[str, str]]:
        """The transcript in transformers' messages format (a leading system message if set)."""
        chat = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return chat + [m.as_chat() for m in self.messages]

    @property
    def last(self) -> Message | None:
        return self.messages[-1] if self.messages else None

    def add_user(self, text: str) -> None:
        """Append a user message; it must not be empty and must follow a reply."""
        if not isinstance(text, str) or not text.strip():
            raise GemmaWidgetsError("The message is empty: type something to send.")
        _text(text, "the message")
        if self.last is not None and self.last.role == "user":
            raise GemmaWidgetsError("The last user message has no reply yet: regenerate or remove it.")
        self.messages.append(Message("user", text))

    def add_reply(self, reply: Message) -> None:
        """Append a model reply (after a user message)."""
        if self.last is None or self.last.role != "user":
            raise GemmaWidgetsError("A reply must follow a user message.")
        self.messages.append(reply)

    def pop_reply(self) -> Message | None:
        """Remove and return the last reply (to regenerate it), or None if there is none."""
        if self.last is None or self.last.role != "assistant":
            return None
        self._first_kept = 0
        return self.messages.pop()

    def pop_user(self) -> str:
        """Remove the last user message (and its reply) and return its text, to edit and resend."""
        self.pop_reply()
        if self.last is None or self.last.role != "user":
            raise GemmaWidgetsError("There is no user message to edit.")
        self._first_kept = 0
        return self.messages.pop().content

    def clear(self) -> None:
        """Forget every message (the system prompt stays)."""
        self.messages.clear()
        self._first_kept = 0

    def _prompt_messages(self, start: int) -> list[dict[str, str]]:
        """Messages from ``start`` the model should see: failed empty exchanges are skipped."""
        chat: list[dict[str, str]] = []
        kept = self.messages[start:]
        for i, message in enumerate(kept):
            nxt = kept[i + 1] if i + 1 < len(kept) else None
            failed_pair = message.role == "user" and nxt is not None and nxt.error and not nxt.content
            failed_reply = message.role == "assistant" and message.error and not message.content
            if failed_pair or failed_reply:
                continue
            chat.append(message.as_chat())
        return fold_system_prompt(chat, system=self.system)

    def count_tokens(self, tokenizer: Any, *, generation_prompt: bool = False, start: int = 0) -> int:
        """Tokens of the conversation from message ``start`` as the chat template writes it."""
        chat = self._prompt_messages(start)
        if not chat:
            return 0
        ensure_chat_template(tokenizer)
        return len(chat_ids(tokenizer, chat, generation_prompt))

    def plan(self, tokenizer: Any, context_window: int, max_new_tokens: int) -> PromptPlan:
        """The prompt for a reply to the last user message, fitted into ``context_window``.

        The oldest user/model pairs are left out until prompt plus ``max_new_tokens`` fits.
        Raises :class:`GenerationError` when even the last message alone does not fit. Without a
        ``tokenizer`` (a server that counts for itself) every message is sent as is.
        """
        if self.last is None or self.last.role != "user":
            raise GemmaWidgetsError("There is no user message to reply to.")
        if tokenizer is None:
            return PromptPlan([], 0, 0, context_window, max_new_tokens, self._prompt_messages(0))
        ensure_chat_template(tokenizer)
        budget = context_window - max_new_tokens
        last_user = len(self.messages) - 1
        memo: dict[str, list[int]] = {}  # each message's ids, tokenized once for the whole search

        def prompt(start: int) -> list[int]:
            return chat_ids(tokenizer, self._prompt_messages(start), True, memo)

        # Fewer messages never make a longer prompt, so binary-search the first user turn to keep
        # (user turns sit at even indices): a few renders, not one per exchange left out.
        low = min(self._first_kept, last_user)
        low -= low % 2
        high = last_user
        ids = prompt(high)
        if len(ids) > budget:
            raise GenerationError(
                f"This message needs {len(ids)} prompt tokens (with the system prompt), and "
                f"{max_new_tokens} more are kept for the reply: more than the model's "
                f"{context_window}-token context window. Shorten the message or the system "
                "prompt, or lower max new tokens."
            )
        while low < high:  # prompt(high) fits; the answer is in [low, high]
            middle = (low + high) // 2
            middle -= middle % 2
            candidate = prompt(middle)
            if len(candidate) <= budget:
                high, ids = middle, candidate
            else:
                low = middle + 2
        self._first_kept = high
        return PromptPlan(ids, high, high, context_window, max_new_tokens, self._prompt_messages(high))

    # --- transcripts -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The transcript as plain data (what :meth:`save` writes as JSON)."""
        return {"format": TRANSCRIPT_FORMAT, "system": self.system,
                "messages": [{k: v for k, v in asdict(m).items() if v not in (None, False)}
                             for m in self.messages]}

    def to_json(self) -> str:
        """The transcript as JSON text (what :meth:`save` writes)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_markdown(self) -> str:
        """The transcript as Markdown: one heading per turn, replies' notes in italics.

        Each message is a block quote with HTML escaped, so no message can forge a turn heading
        (``## User``, or a line underlined with ``---``) or carry raw HTML into a Markdown viewer.
        """
        lines = ["# Chat transcript", ""]
        if self.system.strip():
            lines += ["## System", "", _quoted(self.system.strip()), ""]
        for m in self.messages:
            lines += [f"## {'User' if m.role == 'user' else 'Gemma'}", "", _quoted(m.content), ""]
            if m.stopped:
                lines += ["*(stopped by the user)*", ""]
            if m.error:
                lines += [f"*(error: {html.escape(m.error)})*", ""]
        return "\n".join(lines).rstrip() + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the transcript to ``path`` atomically: Markdown if it ends in ``.md``, else JSON."""
        path = Path(path)
        markdown = path.suffix.lower() in (".md", ".markdown")
        return write_atomic(path, self.to_markdown() if markdown else self.to_json())

    @classmethod
    def from_data(cls, data: Any) -> Conversation:
        """A conversation from :meth:`to_dict`'s data or a plain transformers messages list."""
        if isinstance(data, dict):
            system, raw = _text(data.get("system") or "", "the system prompt"), data.get("messages")
        else:
            system, raw = "", data
        if not isinstance(raw, list):
            raise GemmaWidgetsError("A transcript is a list of messages or a dict with 'messages'.")
        conv = cls(system=system)
        for item in raw:
            if not isinstance(item, dict) or "role" not in item or "content" not in item:
                # reprlib: a short repr at any depth (repr() of deeply nested data raises RecursionError)
                raise GemmaWidgetsError(f"Not a chat message (needs 'role' and 'content'): {reprlib.repr(item)}")
            content = _text(item["content"], f"message {len(conv.messages) + 1}")
            role = "assistant" if item["role"] == "model" else item["role"]
            if role == "system" and not conv.messages:
                conv.system = "\n\n".join(p for p in (conv.system, content) if p.strip())
                continue
            if role not in ROLES:
                raise GemmaWidgetsError(f"Unknown role {reprlib.repr(item['role'])}: use 'user' or 'assistant'.")
            expected = ROLES[len(conv.messages) % 2]
            if role != expected:
                raise GemmaWidgetsError(
                    f"Message {len(conv.messages) + 1} is from {role!r} but {expected!r} was expected: "
                    "Gemma needs turns that alternate user, assistant, user...")
            error = item.get("error")
            conv.messages.append(Message(role, content, bool(item.get("stopped")),
                                         None if error is None else _text(error, "an error note"),
                                         _stats(item.get("stats"), len(conv.messages) + 1)))
        return conv

    @classmethod
    def load(cls, path: str | Path) -> Conversation:
        """Read a transcript written by :meth:`save` (JSON) or a JSON messages list.

        Everything is checked before a conversation is returned, so a bad file replaces nothing.
        """
        path = Path(path)
        return cls.from_data(parse_json(read_limited(path), f"Could not read a JSON transcript from {path}"))


def _text(value: Any, what: str) -> str:
    """``value`` if it is text that can be written back as UTF-8 (JSON allows lone surrogates)."""
    if not isinstance(value, str):
        raise GemmaWidgetsError(f"In a transcript, {what} must be text, not {type(value).__name__}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GemmaWidgetsError(f"In a transcript, {what} holds text that is not valid Unicode "
                                f"({exc.reason} at character {exc.start}).") from None
    return value


def _stats(value: Any, number: int) -> dict[str, Any] | None:
    """A reply's stats as saved (:meth:`GenerationStats.as_dict`): a flat dict of numbers and text.

    Anything nested is refused: a dict 5,000 levels deep would raise RecursionError at the next save.
    """
    if not isinstance(value, dict):
        return None
    what = f"the stats of message {number}"
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool, type(None))):
            raise GemmaWidgetsError(f"In a transcript, {what} must map names to numbers or text, with nothing nested.")
        _text(key, what)
        if isinstance(item, str):
            _text(item, what)
    return value


def _quoted(text: str) -> str:
    """``text`` as a Markdown block quote with HTML escaped: it renders as text, inside the turn."""
    return "\n".join(f"> {line}" if line else ">" for line in html.escape(text, quote=False).split("\n"))

