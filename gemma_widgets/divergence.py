"""Where two replies part: :class:`ArenaResult` (two replies to one prompt), the first token where they
differ, and the figures both engines' logits give (:func:`score`, explained in :mod:`gemma_widgets.arena`).

Log-probabilities are read in blocks of :data:`~gemma_widgets.engines.base.SCORE_CHUNK` rows, so memory
stays at a block per side; an engine that gives no logits leaves the figures that need it ``None`` and
says why in ``unavailable``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from gemma_widgets.engines.base import SCORE_CHUNK, CapabilityError, Engine
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.quality import top1_agreement


class Stopped(GemmaWidgetsError):
    """Stop was pressed while the replies were scored: nothing is scored."""



@dataclass(frozen=True)
class ArenaResult:
    """Two replies to one prompt and how they differ. Token positions count from the reply's first token.

    ``divergence`` is the first position where the token ids differ (a reply that ended, or was
    stopped, while the other went on differs there too); None when the replies are identical.
    Figures that need logits are None when an engine gives none, and ``unavailable`` maps each
    such figure's name to the reason.
    """

    prompt: str
    reference: str  # label() of each side
    challenger: str
    reference_text: str
    challenger_text: str
    reference_ids: tuple[int, ...]
    challenger_ids: tuple[int, ...]
    divergence: int | None
    reference_tps: float
    challenger_tps: float
    #: Share of reference-reply positions where argmax(challenger) == argmax(reference), teacher-forced.
    agreement: float | None = None
    #: KL(reference || challenger) in nats at each position of the reference's reply.
    kl: tuple[float, ...] | None = None
    #: P_challenger(reference token j | prompt + reference tokens before j).
    challenger_probs: tuple[float, ...] | None = None
    #: P_reference(challenger token j | prompt + challenger tokens before j): how likely the reference
    #: found each token the challenger wrote.
    reference_probs: tuple[float, ...] | None = None
    #: At the divergence, each side's probability of the token it chose there (same context on both sides).
    reference_sure: float | None = None
    challenger_sure: float | None = None
    unavailable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def identical_tokens(self) -> int:
        """Tokens the replies share before they part (all of them when identical)."""
        return len(self.reference_ids) if self.divergence is None else self.divergence

    @property
    def mean_kl(self) -> float | None:
        """Mean of :attr:`kl` over the reference's reply (nats); None when unavailable."""
        return sum(self.kl) / len(self.kl) if self.kl else None

    def summary(self) -> str:
        """One line: where they part, agreement, mean KL, each side's speed."""
        if self.divergence is None:
            parts = [f"identical: all {len(self.reference_ids)} tokens"]
        else:
            sure = ""
            if self.reference_sure is not None and self.challenger_sure is not None:
                sure = f" (reference {self.reference_sure:.0%} sure there, challenger {self.challenger_sure:.0%})"
            parts = [f"{self.divergence} identical tokens, then they part at token {self.divergence + 1}{sure}"]
        if self.agreement is not None:
            parts.append(f"top-1 agreement {self.agreement:.1%} over the reference's {len(self.reference_ids)} tokens")
        if self.mean_kl is not None:
            parts.append(f"mean KL {self.mean_kl:.4f} nats")
        parts.append(f"{self.reference} {self.reference_tps:.1f} tok/s")
        parts.append(f"{self.challenger} {self.challenger_tps:.1f} tok/s")
        line = " · ".join(parts)
        if self.unavailable:
            reasons = sorted(set(self.unavailable.values()))
            line += f" · unavailable: {', '.join(self.unavailable)} ({'; '.join(reasons)})"
        return line


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where ``a`` and ``b`` differ (the shorter one's length if one is a prefix); None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def log_prob_blocks(engine: Engine, ids: Sequence[int], start: int,
                    stop: threading.Event | None = None) -> Iterator[Any]:
    """Log-softmax of ``engine``'s next-token logits over ``ids`` from row ``start`` on, in float32
    blocks of :data:`SCORE_CHUNK` rows (the last may be shorter), whatever chunks the engine gives.

    Memory stays at a block per side (a 512-token reply's logits whole would be 0.5 GB on a
    262k vocabulary: too much beside two models on Binder). Raises :class:`Stopped` after the
    engine's current chunk once ``stop`` is set.
    """
    pending: list[Any] = []
    held = seen = 0
    for chunk in engine.score(ids):
        if stop is not None and stop.is_set():
            raise Stopped("Stopped while scoring: nothing was scored.")
        if seen + len(chunk) > start:
            pending.append(chunk[max(0, start - seen):])
            held += len(pending[-1])
        seen += len(chunk)
        while held >= SCORE_CHUNK or (held and seen == len(ids)):
            rows = torch.cat(pending)
            yield torch.log_softmax(rows[:SCORE_CHUNK].float(), dim=-1)
            pending, held = [rows[SCORE_CHUNK:]], max(0, held - SCORE_CHUNK)
    if seen != len(ids):
        raise GemmaWidgetsError(f"{engine.name} gave logits for {seen} positions, expected {len(ids)}.")


def _scored(engine: Engine, ids: Sequence[int], start: int, unavailable: dict[str, str],
            figures: Sequence[str], stop: threading.Event | None) -> Iterator[Any] | None:
    """:func:`log_prob_blocks`, or None when ``engine`` gives no logits (``figures`` get its reason)."""
    blocks = log_prob_blocks(engine, ids, start, stop)
    try:
        first = next(blocks)
    except CapabilityError as exc:
        unavailable.update(dict.fromkeys(figures, str(exc)))
        return None
    return itertools.chain([first], blocks)


def _picked(log_probs: Any, tokens: Sequence[int]) -> list[float]:
    """The probability of ``tokens[j]`` in row ``j`` of ``log_probs``."""
    index = torch.as_tensor(list(tokens), dtype=torch.long)
    return log_probs[torch.arange(len(index)), index].exp().tolist()


def score(result: ArenaResult, reference: Engine, challenger: Engine, prompt_ids: Sequence[int],
          stop: threading.Event | None = None) -> ArenaResult:
    """``result`` with the figures from both engines' logits (see the module docstring); raises
    :class:`Stopped` when ``stop`` is set before it is done."""
    ref_ids, chal_ids = list(result.reference_ids), list(result.challenger_ids)
    n, d = len(ref_ids), result.divergence
    start = len(prompt_ids) - 1  # the row that predicts the reply's first token
    forced = [*prompt_ids, *ref_ids]  # n + 1 rows from start: the last predicts past the reply
    unavailable: dict[str, str] = {}
    ref_blocks = _scored(reference, forced, start, unavailable, ("agreement", "kl", "reference_probs",
                                                                  "reference_sure"), stop)
    chal_blocks = _scored(challenger, forced, start, unavailable, ("agreement", "kl", "challenger_probs",
                                                                    "challenger_sure"), stop)
    top1: dict[str, list[int]] = {"reference": [], "challenger": []}
    kl: list[float] = []
    picked: dict[str, list[float]] = {"reference": [], "challenger": []}  # P(reference token j)
    sure: dict[str, float] = {}
    row = 0
    for lp, lq in itertools.zip_longest(ref_blocks or (), chal_blocks or ()):
        block = lp if lp is not None else lq
        k = max(0, min(len(block), n - row))  # rows with a reference token to predict
        targets = ref_ids[row:row + k]
        for side, lx, chosen in (("reference", lp, ref_ids), ("challenger", lq, chal_ids)):
            if lx is None:
                continue
            top1[side] += lx[:k].argmax(-1).tolist()
            picked[side] += _picked(lx[:k], targets)
            if d is not None and row <= d < row + len(block) and d < len(chosen):  # row d: the same context
                sure[side] = _picked(lx[d - row:d - row + 1], chosen[d:d + 1])[0]
        if lp is not None and lq is not None:
            kl += torch.nn.functional.kl_div(lq[:k], lp[:k], log_target=True, reduction="none").sum(-1).tolist()
        row += len(block)
    figures: dict[str, Any] = {f"{side}_sure": value for side, value in sure.items()}
    if not ref_ids:
        unavailable.update(agreement="the reference's reply is empty", kl="the reference's reply is empty")
    elif ref_blocks is not None and chal_blocks is not None:
        figures.update(agreement=top1_agreement(top1["challenger"], top1["reference"]), kl=tuple(kl))
    if chal_blocks is not None:
        figures["challenger_probs"] = tuple(picked["challenger"])
    if ref_blocks is not None:
        figures["reference_probs"] = tuple(picked["reference"])
        if d is not None:  # the challenger's own reply through the reference
            own: list[float] = []
            for block in log_prob_blocks(reference, [*prompt_ids, *chal_ids], start, stop):
                own += _picked(block[:len(chal_ids) - len(own)], chal_ids[len(own):len(own) + len(block)])
            figures["reference_probs"] = tuple(own)
    return replace(result, **figures, unavailable=MappingProxyType(unavailable))
