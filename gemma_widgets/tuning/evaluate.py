"""How well a model chats: held-out questions, greedy replies, three shares.

``data/chat/eval.jsonl`` holds questions that share none (and no fact) with the training set, each
with the answers that count as right. Each reply is read three ways:

* **answered**: it contains one of the expected answers (case-insensitive);
* **stopped**: the model ended its turn (``<end_of_turn>``) before the token limit;
* **echoed**: it repeats the question (what the base model does instead of answering).

::

    python -m gemma_widgets eval-chat --model bundled --model bundled-base
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from gemma_widgets.engines.base import Finish, SamplingSettings
from gemma_widgets.loading import LoadedModel, load_model
from gemma_widgets.tuning.train import read_jsonl

#: The targets the shipped chat model must meet (``tests/test_chat_eval.py``).
TARGETS = {"answered": 0.60, "stopped": 0.90, "echoed": 0.10}


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def echoes(question: str, reply: str) -> bool:
    """True if ``reply`` repeats ``question`` (its words, in order, ignoring case and punctuation)."""
    asked = _words(question)
    return bool(asked) and asked in _words(reply)


def answers(expected: list[str], reply: str) -> bool:
    """True if ``reply`` contains one of the ``expected`` answers as whole words (ignoring case)."""
    said = f" {_words(reply)} "
    return any(f" {_words(e)} " in said for e in expected if _words(e))


@dataclass
class ChatEval:
    """One model's replies to the held-out questions, and the three shares."""

    model: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def share(self, key: str) -> float:
        return sum(bool(r[key]) for r in self.rows) / len(self.rows) if self.rows else 0.0

    def summary(self) -> str:
        return (f"{self.model}: answered {self.share('answered'):.0%}, stopped {self.share('stopped'):.0%}, "
                f"echoed {self.share('echoed'):.0%} of {len(self.rows)} held-out questions")

    def misses(self, key: str) -> list[dict[str, Any]]:
        """The rows that fail ``key``'s target (not answered, not stopped, or echoed)."""
        bad = key == "echoed"
        return [r for r in self.rows if bool(r[key]) == bad]


def reply(loaded: LoadedModel, question: str, max_new_tokens: int) -> tuple[str, str | None]:
    """The greedy reply to ``question`` and why it ended (``end_of_turn``, ``max_new_tokens``...)."""
    prompt = loaded.prompt(question)
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0)
    text, finish = [], None
    for delta in loaded.engine.stream(prompt, settings, threading.Event()):
        text.append(delta.text)
        finish = delta.finish or finish
    return "".join(text), finish


def evaluate(loaded: LoadedModel, max_new_tokens: int = 48, limit: int | None = None,
             progress: bool = True) -> ChatEval:
    """Ask ``loaded`` every held-out question (the first ``limit``) and score the replies."""
    questions = read_jsonl("eval")[:limit]
    result = ChatEval(loaded.preset.name)
    for item in tqdm(questions, desc=f"eval {loaded.preset.name}", disable=not progress):
        text, finish = reply(loaded, item["question"], max_new_tokens)
        result.rows.append({"question": item["question"], "reply": text, "finish": finish,
                            "answered": answers(item["expected"], text), "stopped": finish == Finish.END_OF_TURN,
                            "echoed": echoes(item["question"], text)})
    return result


def add_arguments(parser: Any) -> None:
    parser.add_argument("--model", action="append", help="preset to evaluate (repeatable; default: bundled)")
    parser.add_argument("--precision", default="bf16", help="precision to load each model in (default: bf16)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--show", type=int, default=5, help="print this many replies that miss each target")


def main(args: Any) -> int:
    """``python -m gemma_widgets eval-chat``: print each model's shares and some misses; 1 if the
    chat model misses a target."""
    failed = False
    for name in args.model or ["bundled"]:
        result = evaluate(load_model(name, args.precision), args.max_new_tokens)
        print(result.summary())
        for key in TARGETS:
            for row in result.misses(key)[:args.show]:
                label = key if key == "echoed" else f"not {key}"
                print(f"  {label}: {row['question']!r} -> {row['reply']!r}")  # repr escapes control characters
        if name == "bundled":
            failed = any(result.share(k) < t if k != "echoed" else result.share(k) > t
                         for k, t in TARGETS.items())
    return 1 if failed else 0
