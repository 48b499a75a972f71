"""Fake engines for the tests of the kit's own logic (chat, session, arena, terminal): no model is loaded.

* :class:`FakeTokenizer`: words (with the spaces before them) as tokens, numbered as first seen, and
  Gemma's turn format as its chat template; enough for the conversation to count and fit tokens.
* :class:`ScriptedEngine`: a local engine replying a script one token a step (with a delay, a failure
  at a step, Stop honoured), counting its calls, and giving deterministic logits to score.
* :class:`NoLogits`: the same without logits (``can_score = False``).
* :class:`TextEngine`: like a server: messages in, text out, no token ids, no tokenizer.

:func:`fake_model` wraps an engine in a :class:`~gemma_widgets.loading.LoadedModel`.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gemma_widgets.engines.base import SCORE_CHUNK, Delta, Engine, Finish, LocalEngine, Prompt, SamplingSettings
from gemma_widgets.engines.spec import Preset, Source
from gemma_widgets.loading import LoadedModel
from gemma_widgets.templates import GEMMA_CHAT_TEMPLATE

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
SPECIAL = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")
PIECE = re.compile(r"\s*\S+|\s+")  # a word with the spaces before it, or spaces at the end

#: Logits per scored position; a scored reply must use fewer distinct words than this.
VOCAB = 1024

PRESET = Preset("fake-gemma", Source.RANDOM, "a scripted fake (tests)", 1_000)


class Encoding(dict):
    """What a tokenizer call returns: ``["input_ids"]`` and ``.input_ids``, as transformers' BatchEncoding."""

    @property
    def input_ids(self) -> list[int]:
        return self["input_ids"]


class FakeTokenizer:
    """A deterministic word tokenizer with Gemma's special tokens and turn format."""

    pad_token_id, eos_token_id, bos_token_id, unk_token_id = 0, 1, 2, 3
    chat_template = GEMMA_CHAT_TEMPLATE  # apply_chat_template writes this format in plain Python

    def __init__(self) -> None:
        self.pieces = list(SPECIALS)
        self.numbers = {piece: i for i, piece in enumerate(SPECIALS)}

    @property
    def all_special_ids(self) -> list[int]:
        return list(range(len(SPECIALS)))

    def piece_id(self, piece: str) -> int:
        """The id of ``piece``, numbering it if it is new."""
        if piece not in self.numbers:
            self.numbers[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.numbers[piece]

    def __call__(self, text: str, add_special_tokens: bool = True, split_special_tokens: bool = False) -> Encoding:
        parts = [text] if split_special_tokens else SPECIAL.split(text)
        ids = [self.bos_token_id] if add_special_tokens else []
        for i, part in enumerate(parts):
            if i % 2 and not split_special_tokens:
                ids.append(self.numbers[part])
            else:
                ids += [self.piece_id(piece) for piece in PIECE.findall(part)]
        return Encoding(input_ids=ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i < len(SPECIALS)))

    def convert_ids_to_tokens(self, token: int) -> str:
        return self.pieces[token]

    def convert_tokens_to_ids(self, piece: str) -> int:
        return self.numbers.get(piece, self.unk_token_id)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        assert not tokenize, "the kit renders the template as text and tokenizes it itself"
        roles = [m["role"] for m in messages]
        if roles[:1] == ["system"] or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles)):
            raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
        turns = "".join(f"<start_of_turn>{'model' if m['role'] == 'assistant' else m['role']}\n"
                        f"{str(m['content']).strip()}<end_of_turn>\n" for m in messages)
        return "<bos>" + turns + ("<start_of_turn>model\n" if add_generation_prompt else "")


@dataclass(frozen=True)
class Call:
    """One reply an engine was asked for."""

    input_ids: list[int]
    settings: SamplingSettings


class ScriptedEngine(LocalEngine):
    """Replies ``reply`` one token a step: text (cut into words) or a list of token pieces.

    ``finish`` says how a script ends: ``END_OF_TURN`` (the end-of-turn token follows it) or
    ``MAX_NEW_TOKENS`` (it repeats until ``max_new_tokens`` or Stop). Each step sleeps ``delay``
    seconds; step ``fail_at`` raises ``RuntimeError``; ``stop`` ends it after the step it is set in.
    ``calls`` keeps each request, ``steps`` counts the tokens made, ``started`` is set at the first.
    :meth:`score` sleeps ``score_delay`` a row (``scoring`` is set at the first) and keeps each
    scored length in ``scored``.
    """

    name = "scripted"
    can_score = True

    def __init__(self, reply: str | Sequence[str] = "Hello **world**.", *, tokenizer: FakeTokenizer | None = None,
                 delay: float = 0.0, fail_at: int | None = None, finish: Finish = Finish.END_OF_TURN,
                 context_window: int = 1024, score_delay: float = 0.0):
        if finish not in (Finish.END_OF_TURN, Finish.MAX_NEW_TOKENS):
            raise ValueError(f"a script ends with end_of_turn or repeats to max_new_tokens, not {finish}")
        self.tokenizer = tokenizer or FakeTokenizer()
        self.reply, self.delay, self.fail_at, self.finish = reply, delay, fail_at, finish
        self.context_window, self.score_delay = context_window, score_delay
        self.stop_ids = (self.tokenizer.convert_tokens_to_ids("<end_of_turn>"), self.tokenizer.eos_token_id)
        self.calls: list[Call] = []
        self.steps = 0
        self.started, self.scoring = threading.Event(), threading.Event()
        self.scored: list[int] = []

    def script(self) -> list[int]:
        """The reply's token ids, without the end of turn."""
        if isinstance(self.reply, str):
            return self.tokenizer(self.reply, add_special_tokens=False).input_ids
        return [self.tokenizer.piece_id(piece) for piece in self.reply]

    def token_stream(self, ids: Sequence[int], settings: Any, stop: threading.Event) -> Iterator[list[int]]:
        self.calls.append(Call(list(ids), settings))
        if self.finish == Finish.END_OF_TURN:
            tokens: Iterator[int] = iter([*self.script(), self.stop_ids[0]])
        else:
            tokens = itertools.cycle(self.script())
        try:
            for step, token in enumerate(itertools.islice(tokens, int(settings.max_new_tokens))):
                if step == self.fail_at:
                    raise RuntimeError("the fake engine failed on purpose")
                time.sleep(self.delay)
                self.steps += 1
                self.started.set()
                yield [token]
                if stop.is_set():
                    return
        finally:
            self.started.set()  # a test waiting for the first token never hangs on a failure

    def generate_exact(self, ids: Sequence[int], n: int) -> list[int]:
        return list(itertools.islice(itertools.cycle(self.script()), n))

    def score(self, ids: Sequence[int], keep_generator: bool = True) -> Iterator[Any]:
        """Logits that depend on the current token only: a fixed bigram table, peaked at one next token."""
        self.scored.append(len(ids))
        assert max(ids, default=0) < VOCAB, f"a scored text needs fewer than {VOCAB} distinct words"
        for start in range(0, len(ids), SCORE_CHUNK):
            rows = torch.tensor(list(ids[start:start + SCORE_CHUNK]))
            logits = torch.zeros(len(rows), VOCAB)
            logits[torch.arange(len(rows)), (rows * 31 + 7) % VOCAB] = 4.0
            for row in logits.split(1):
                self.scoring.set()
                time.sleep(self.score_delay)
                yield row


class NoLogits(ScriptedEngine):
    """A scripted engine that, like a server, gives no logits."""

    name = "no-logits"
    can_score = False
    why_no_scores = "a scripted fake gives no logits"
    score = Engine.score


class TextEngine(Engine):
    """Like a server: streams ``pieces`` of text (a token each) to the messages, with no ids and no tokenizer.

    Stop ends it before the next piece; ``seen`` keeps each request's messages, ``sent`` counts pieces.
    """

    name = "text-only"
    context_window = 1024

    def __init__(self, pieces: Sequence[str] = ("Hello", " there.")):
        self.pieces = pieces
        self.seen: list[list[dict[str, str]]] = []
        self.sent = 0

    def stream(self, prompt: Prompt, settings: Any, stop: threading.Event) -> Iterator[Delta]:
        self.seen.append(list(prompt.messages))
        for piece in self.pieces:
            if stop.is_set():
                yield Delta(finish=Finish.STOPPED)
                return
            self.sent += 1
            yield Delta(piece, 1)
        yield Delta(finish=Finish.END_OF_TURN)


def fake_model(engine: Engine, precision: str = "fake") -> LoadedModel:
    """``engine`` as a loaded model of the made-up preset."""
    return LoadedModel(engine, PRESET, precision)


def scripted(reply: str | Sequence[str] = "Hello **world**.", **options: Any) -> LoadedModel:
    """A loaded :class:`ScriptedEngine` (``options`` are its own)."""
    return fake_model(ScriptedEngine(reply, **options))
