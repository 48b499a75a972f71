"""The precision arena: one prompt, two precisions of one model, and where their replies part.

:func:`compare` generates a reply from each model with its engine's own stream (greedy by
default, so a difference is the precision's, not the dice's), one after the other so neither
shares the CPU with the other and each tok/s is its own (after a :func:`warm_up`). Then it scores
with the engines' own logits, never a second generation: the *reference's* reply is teacher-forced
through both models (prompt ids + reference reply ids, :meth:`~gemma_widgets.engines.base.Engine.score`),
and on the reply's positions only it computes

* ``kl``: KL(reference || challenger) of the two next-token distributions, in nats;
* ``agreement``: the share of positions where the challenger's most likely next token is the
  reference's (:func:`gemma_widgets.quality.top1_agreement`);
* ``challenger_probs``: the challenger's probability of each reference token.

The challenger's own reply is teacher-forced through the reference for ``reference_probs``: how
likely the reference found each token the challenger wrote (what the arena's view colours).
An engine that gives no logits leaves the figures that need it ``None``; ``unavailable`` says
which and why. :class:`ArenaRun` is the same in a background thread, for a view.

A reply is cut at ``max_new_tokens`` (a server may ignore the limit and send 100k characters),
Stop ends scoring between chunks of logits, and a run still going when Python exits is stopped
and waited for, so no thread is left inside torch while the interpreter shuts down.

>>> from gemma_widgets import load_model                                      # doctest: +SKIP
>>> ref, q4 = load_model("bundled", "bf16"), load_model("bundled", "ov-int4", engine="optimum")  # doctest: +SKIP
>>> result = compare(ref, q4, "Name three colours.")                         # doctest: +SKIP
>>> result.divergence, result.agreement, result.mean_kl                        # doctest: +SKIP
(5, 0.94, 0.031)
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from gemma_widgets.conversation import Conversation, PromptPlan
from gemma_widgets.divergence import ArenaResult, Stopped, first_difference, score
from gemma_widgets.engines.base import Delta, Engine, Prompt, SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError, GenerationError
from gemma_widgets.loading import LoadedModel
from gemma_widgets.session import Background, Generation

SIDES = ("reference", "challenger")

#: The arena's default: greedy, and short enough to read side by side.
DEFAULT_SETTINGS = SamplingSettings(temperature=0.0, max_new_tokens=32)

#: Characters a reply may reach per allowed token before the arena stops it: no token of Gemma's
#: vocabularies is longer than 31 characters, so a reply past twice that has passed its limit.
MAX_TOKEN_CHARS = 64

#: Seconds Python's exit waits for a run it stopped (a chunk of scoring to finish).
EXIT_WAIT_S = 10.0


def label(loaded: LoadedModel) -> str:
    """How the arena names a side: ``bf16 · transformers``."""
    return f"{loaded.precision} · {loaded.engine.name}"


_WARM: weakref.WeakSet[Engine] = weakref.WeakSet()


def warm_up(engine: Engine, ids: Sequence[int]) -> None:
    """Two greedy tokens, once per engine, before its first timed reply: a first call builds kernels
    and caches, and each side's tok/s should be its steady speed (the harness warms up too)."""
    if engine in _WARM or not engine.can_generate_exact or not ids:
        return
    engine.generate_exact(ids, 2)
    _WARM.add(engine)


def _plans(reference: LoadedModel, challenger: LoadedModel, prompt: str,
           settings: SamplingSettings) -> tuple[PromptPlan, PromptPlan]:
    """Both sides' prompts, checked: not empty, inside the smaller context window, the same token ids."""
    settings.validate()
    if not isinstance(prompt, str) or not prompt.strip():
        raise GemmaWidgetsError("The prompt is empty: type something for both models to answer.")
    window = min(reference.context_window, challenger.context_window)
    plans = []
    for loaded in (reference, challenger):
        conversation = Conversation()
        conversation.add_user(prompt)  # an empty prompt is refused here, with the reason
        plans.append(conversation.plan(loaded.tokenizer, window, int(settings.max_new_tokens)))
    ref_plan, chal_plan = plans
    if reference.tokenizer is None:
        raise GemmaWidgetsError(f"The reference ({label(reference)}) has no local tokenizer: the arena needs "
                                "one to count and score tokens. Make a local model the reference.")
    if challenger.tokenizer is not None and list(ref_plan.input_ids) != list(chal_plan.input_ids):
        raise GemmaWidgetsError(
            f"The two models tokenize the prompt differently ({ref_plan.prompt_tokens} and "
            f"{chal_plan.prompt_tokens} tokens): the arena compares precisions of one model, which share a "
            "tokenizer. Load the same model in two precisions.")
    return ref_plan, chal_plan


class _Capped(Engine):
    """``engine``'s stream, stopped once it passes ``limit`` tokens or ``limit`` tokens' worth of
    characters: a server may ignore ``max_tokens``, and what comes after the limit is cut anyway."""

    def __init__(self, engine: Engine, limit: int):
        self.engine, self.limit = engine, limit
        self.name = engine.name  # type: ignore[misc]

    def stream(self, prompt: Prompt, settings: Any, stop: threading.Event) -> Iterator[Delta]:
        tokens = chars = 0
        for delta in self.engine.stream(prompt, settings, stop):
            yield delta
            tokens, chars = tokens + delta.tokens, chars + len(delta.text)
            if tokens > self.limit or chars > self.limit * MAX_TOKEN_CHARS:
                stop.set()  # the engine ends its reply as after Stop (a server's connection is closed)


class ArenaRun(Background):
    """One comparison in a background thread: the reference streams, then the challenger, then scoring.

    Making a run checks the prompt (and raises, starting nothing); :meth:`start` starts it.

    ``on_text(side, text_so_far)`` is called as each reply grows and ``on_finish(run)`` once at the
    end (from the thread). Then ``result`` holds the :class:`ArenaResult`, or ``error`` the
    exception (a model raised), or ``stopped`` is True (:meth:`stop`, while generating or scoring:
    nothing is scored). ``done`` is set in every case, so :meth:`wait` never hangs. A reply that
    goes past ``max_new_tokens`` (a server that ignores it) is stopped there and cut to it.
    """

    def __init__(self, reference: LoadedModel, challenger: LoadedModel, prompt: str,
                 settings: SamplingSettings | None = None, *,
                 on_text: Callable[[str, str], None] | None = None,
                 on_finish: Callable[[ArenaRun], None] | None = None):
        self.settings = SamplingSettings(**vars(settings or DEFAULT_SETTINGS))
        self.plans = _plans(reference, challenger, prompt, self.settings)
        self.models = {"reference": reference, "challenger": challenger}
        self.prompt = prompt
        self.texts = dict.fromkeys(SIDES, "")
        self.result: ArenaResult | None = None
        self.error: BaseException | None = None
        self.generation: Generation | None = None
        super().__init__()
        self._on_text, self._on_finish = on_text, on_finish
        self._thread = threading.Thread(target=self._run, daemon=True, name="gemma-widgets-arena")

    def start(self) -> ArenaRun:
        """Start the comparison in its thread (the prompt was checked when the run was made)."""
        _RUNNING.add(self)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the reply that is streaming after its current step; the other side does not start."""
        super().stop()
        if self.generation is not None:
            self.generation.stop()

    def _generate(self, side: str, plan: PromptPlan) -> Generation:
        warm_up(self.models[side].engine, plan.input_ids)
        def on_text(text: str) -> None:
            self.texts[side] = text
            if self._on_text is not None:
                self._on_text(side, text)

        engine = _Capped(self.models[side].engine, int(self.settings.max_new_tokens))
        self.generation = Generation(engine, plan, self.settings, on_text=on_text)
        if self._stop.is_set():
            self.generation.stop()
        self.generation.wait()
        if self.generation.error is not None:
            error = self.generation.error
            raise GenerationError(f"The {side} ({label(self.models[side])}) raised {type(error).__name__}: "
                                  f"{error}") from error
        return self.generation

    def _reply(self, side: str, generation: Generation) -> tuple[str, tuple[int, ...], str | None]:
        """The reply's text and ids, cut at ``max_new_tokens``, and a note on how they were had (or None)."""
        notes = []
        ids = tuple(generation.token_ids)
        text = generation.text
        tokenizer = self.models["reference"].tokenizer
        if text and not ids:  # a server streams text only: count its tokens with the reference's tokenizer
            ids = tuple(tokenizer(text, add_special_tokens=False).input_ids)
            notes.append("re-tokenized from its text (the engine streams text, not token ids)")
        limit = int(self.settings.max_new_tokens)
        if len(ids) > limit:
            notes.append(f"cut at max_new_tokens={limit}: the engine sent {len(ids)} tokens or more")
            ids = ids[:limit]
            text = self.texts[side] = tokenizer.decode(list(ids))
        return text, ids, "; ".join(notes) or None

    def _run(self) -> None:
        try:
            done: dict[str, Generation] = {}
            for side, plan in zip(SIDES, self.plans, strict=True):
                if self._stop.is_set():
                    return
                done[side] = self._generate(side, plan)
            if self._stop.is_set():
                return
            ref, chal = done["reference"], done["challenger"]
            (ref_text, ref_ids, ref_note), (chal_text, chal_ids, chal_note) = (
                self._reply("reference", ref), self._reply("challenger", chal))
            notes = {f"{side}_ids": note for side, note in (("reference", ref_note), ("challenger", chal_note))
                     if note}
            assert ref.stats is not None and chal.stats is not None  # set before a Generation is done
            unscored = ArenaResult(
                self.prompt, label(self.models["reference"]), label(self.models["challenger"]),
                ref_text, chal_text, ref_ids, chal_ids, first_difference(ref_ids, chal_ids),
                ref.stats.tokens_per_second, chal.stats.tokens_per_second)
            result = score(unscored, self.models["reference"].engine, self.models["challenger"].engine,
                           self.plans[0].input_ids, self._stop)
            if notes:
                result = replace(result, unavailable=MappingProxyType({**result.unavailable, **notes}))
            self.result = result
        except Stopped:  # Stop while scoring: like a Stop while generating, nothing is compared
            pass
        except BaseException as exc:  # shown by the view; compare() raises it
            self.error = exc
        finally:
            try:
                if self._on_finish is not None:
                    self._on_finish(self)
            finally:
                _RUNNING.discard(self)
                self._done.set()


#: Runs started and not yet done, stopped and waited for when Python exits.
_RUNNING: weakref.WeakSet[ArenaRun] = weakref.WeakSet()


@atexit.register
def _stop_running() -> None:
    """Stop every run still going and wait for it (at most :data:`EXIT_WAIT_S` in all): a thread left
    inside torch while the interpreter shuts down ends the process with "terminate called without an
    active exception"."""
    runs = list(_RUNNING)
    for run in runs:
        run.stop()
    deadline = time.monotonic() + EXIT_WAIT_S
    for run in runs:
        run.wait(max(0.0, deadline - time.monotonic()))


def compare(reference: LoadedModel, challenger: LoadedModel, prompt: str,
            settings: SamplingSettings | None = None) -> ArenaResult:
    """Both replies to ``prompt`` and how they differ (see the module docstring); blocks until done.

    ``settings`` are shared by both sides (default :data:`DEFAULT_SETTINGS`: greedy, 32 new tokens).
    Raises :class:`GemmaWidgetsError` for an empty or too long prompt, or two tokenizers that
    disagree, and :class:`GenerationError` when a model raises.
    """
    run = ArenaRun(reference, challenger, prompt, settings).start()
    run.wait()
    if run.error is not None:
        raise run.error
    assert run.result is not None
    return run.result
