"""Fake models for the chat tests: they speak ``model.generate``'s streamer protocol exactly."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import torch

from gemma_widgets.engines.hf import TransformersEngine
from gemma_widgets.loading import LoadedModel


class ScriptedModel:
    """Replies with ``reply``'s tokens, one per step, then ``<end_of_turn>``.

    ``delay`` seconds pass per step; ``forever=True`` repeats the reply until stopped (or
    ``max_new_tokens``); ``fail_after`` raises ``RuntimeError`` after that many tokens.
    Every call's keyword arguments are kept in ``calls``.
    """

    device = torch.device("cpu")

    def __init__(self, tokenizer: Any, reply: str = "Hello **world**.", *, delay: float = 0.0,
                 forever: bool = False, fail_after: int | None = None, context_window: int = 1024):
        self.tokenizer = tokenizer
        self.reply_ids = tokenizer(reply, add_special_tokens=False).input_ids
        self.delay, self.forever, self.fail_after = delay, forever, fail_after
        self.config = SimpleNamespace(max_position_embeddings=context_window)
        self.calls: list[dict[str, Any]] = []
        self.steps = 0
        self.started = threading.Event()

    def generate(self, input_ids: torch.Tensor, streamer: Any, stopping_criteria: Any,
                 eos_token_id: list[int], max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
        self.calls.append({"input_ids": input_ids[0].tolist(), "max_new_tokens": max_new_tokens,
                           "eos_token_id": eos_token_id, **kwargs})
        streamer.put(input_ids)  # generate hands the prompt to the streamer first
        ids = input_ids
        script = self.reply_ids if not self.forever else self.reply_ids * 10_000
        script = [*script, eos_token_id[0]]
        try:
            for step, token in enumerate(script[:max_new_tokens]):
                if self.fail_after is not None and step == self.fail_after:
                    raise RuntimeError("the fake model failed on purpose")
                if self.delay:
                    time.sleep(self.delay)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
                streamer.put(torch.tensor([token]))
                self.steps += 1
                self.started.set()
                if token in eos_token_id or any(bool(c(ids, None).all()) for c in stopping_criteria):
                    break
        finally:
            self.started.set()
        streamer.end()
        return ids


def fake_loaded(tiny: LoadedModel, model: Any) -> LoadedModel:
    """A LoadedModel around a fake model, with the tiny model's tokenizer (a scripted generate keeps no cache)."""
    engine = TransformersEngine(model, tiny.tokenizer, tiny.path)
    engine.reuses_prefix = False
    return LoadedModel(engine, tiny.preset, "fp32")


class Scorer(TransformersEngine):
    """The tiny model's engine, scoring one row at a time: ``delay`` seconds a row (a long scoring to
    stop, ``scoring`` set at its first row), and refusing more than ``limit`` positions (a reply
    that was never cut)."""

    def __init__(self, tiny: LoadedModel, delay: float = 0.0, limit: int | None = None):
        super().__init__(tiny.model, tiny.tokenizer, tiny.path)
        self.delay, self.limit = delay, limit
        self.scoring = threading.Event()

    def score(self, ids: Any, keep_generator: bool = True) -> Any:
        if self.limit is not None and len(ids) > self.limit:
            raise AssertionError(f"asked to score {len(ids)} positions, more than the {self.limit} a reply allows")
        for chunk in super().score(ids, keep_generator):
            for row in chunk.split(1):
                self.scoring.set()
                time.sleep(self.delay)
                yield row
