"""The engine protocol's shared parts: threaded generation, finish reasons, capabilities."""

from __future__ import annotations

import threading

import pytest
from fakes import ScriptedEngine

from gemma_widgets.engines.base import CapabilityError, Engine, Finish, Prompt, SamplingSettings, threaded


def test_threaded_hands_ids_over_in_order_and_reraises_a_failure():
    def run(put):
        put([1])
        put([2, 3])

    assert list(threaded(run)) == [[1], [2, 3]]

    def broken(put):
        put([7])
        raise RuntimeError("the runtime failed")

    seen = []
    with pytest.raises(RuntimeError, match="the runtime failed"):
        for ids in threaded(broken):
            seen.append(ids)
    assert seen == [[7]]  # what came before the failure was delivered


def _finish(engine, stop=None, max_new_tokens=8):
    deltas = list(engine.stream(Prompt([2]), SamplingSettings(max_new_tokens=max_new_tokens),
                                stop or threading.Event()))
    assert all(d.finish is None for d in deltas[:-1]) and deltas[-1].text == ""
    return "".join(d.text for d in deltas), sum(d.tokens for d in deltas), deltas[-1].finish


def test_finish_reasons():
    words = ["one", " two", " three"]
    assert _finish(ScriptedEngine(words)) == ("one two three", len(words) + 1, "end_of_turn")
    endless = ScriptedEngine(words, finish=Finish.MAX_NEW_TOKENS)
    assert _finish(endless, max_new_tokens=4)[1:] == (4, "max_new_tokens")
    stop = threading.Event()
    stop.set()
    assert _finish(endless, stop=stop)[1:] == (1, "stopped")


def test_a_missing_capability_names_the_engine():
    class Plain(Engine):
        name = "plain"

    with pytest.raises(CapabilityError, match="plain cannot score text: it gives no logits"):
        Plain().score([1, 2])
    with pytest.raises(CapabilityError, match="plain cannot make an exact number of tokens"):
        Plain().generate_exact([1], 3)
