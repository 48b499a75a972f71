"""Quality beside speed: perplexity on a fixed passage, and top-1 agreement between precisions.

The passage ships with the package (``gemma_widgets/data/passage.txt``, original prose in the
public domain). A variant's quality is two numbers over it:

* **perplexity**: ``exp`` of the mean negative log-likelihood of each passage token given the
  ones before it (lower is better; compare variants of one model, never across models);
* **top-1 agreement**: the share of passage positions where the variant's most likely next
  token equals the reference precision's (1.0 = it always picks the same token).

Both need logits, which each engine gives as it can (``Engine.can_score``): an openvino-genai
pipeline exposes none, so it is scored by optimum-intel's model read from the same OpenVINO IR
folder (the same weights); llama.cpp gives them from its own evaluation of the passage.

>>> from gemma_widgets import load_model                              # doctest: +SKIP
>>> ref = score_passage(load_model("bundled", "fp32"))                # doctest: +SKIP
>>> q4 = score_passage(load_model("bundled", "ov-int4"))              # doctest: +SKIP
>>> q4.perplexity / ref.perplexity, top1_agreement(q4.top1, ref.top1)  # doctest: +SKIP
(1.08, 0.91)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from gemma_widgets.engines.base import SCORE_CHUNK
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.models import LoadedModel


@cache
def passage() -> str:
    """The fixed passage every variant is scored on."""
    return resources.files("gemma_widgets").joinpath("data/passage.txt").read_text(encoding="utf-8")


def passage_ids(tokenizer: Any, max_tokens: int | None = None) -> list[int]:
    """The passage's token ids (with the tokenizer's BOS), cut to ``max_tokens`` if given."""
    ids = list(tokenizer(passage()).input_ids)
    return ids[:max_tokens] if max_tokens else ids


@dataclass(frozen=True)
class PassageScores:
    """How one variant predicts the passage."""

    perplexity: float
    top1: list[int]  # the predicted next token at every position but the last
    tokens: int  # passage length in tokens

    def agreement(self, reference: PassageScores) -> float:
        """Top-1 agreement with ``reference`` (see :func:`top1_agreement`)."""
        return top1_agreement(self.top1, reference.top1)


def top1_agreement(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """Share of positions where ``predicted`` equals ``reference`` (same passage, same length)."""
    if len(predicted) != len(reference) or not reference:
        raise GemmaWidgetsError(
            f"Top-1 agreement needs two predictions over the same passage; got {len(predicted)} "
            f"and {len(reference)} positions. Score both variants with the same tokenizer."
        )
    return sum(a == b for a, b in zip(predicted, reference, strict=True)) / len(reference)


def score_logits(logits: Any, ids: Sequence[int]) -> PassageScores:
    """Perplexity and top-1 predictions from ``logits`` (``[len(ids), vocab]``) for ``ids``."""
    return score_chunks((logits[i:i + SCORE_CHUNK] for i in range(0, len(ids) - 1, SCORE_CHUNK)), ids)


def score_chunks(chunks: Iterable[Any], ids: Sequence[int]) -> PassageScores:
    """:func:`score_logits` over consecutive row chunks of the logits (bounded memory)."""
    import torch

    target = torch.as_tensor(ids[1:], dtype=torch.long)
    nll = 0.0
    top1: list[int] = []
    for chunk in chunks:
        chunk = chunk[: len(target) - len(top1)].float()  # the last position predicts past the passage
        labels = target[len(top1):len(top1) + len(chunk)]
        nll += torch.nn.functional.cross_entropy(chunk, labels, reduction="sum").item()
        top1 += chunk.argmax(-1).tolist()
    if len(top1) != len(target):
        raise GemmaWidgetsError(f"Got logits for {len(top1)} positions, expected {len(target)}.")
    return PassageScores(math.exp(nll / len(target)), top1, len(ids))


def passage_logits(loaded: LoadedModel, ids: Sequence[int]) -> Iterator[Any]:
    """Next-token logits of ``loaded`` over ``ids``, in CPU chunks of rows (``[<=64, vocab]``).

    The engine computes them (:meth:`~gemma_widgets.engines.base.Engine.score`) without holding
    all ``len(ids) x 262k`` logits at once; an engine that gives none raises
    :class:`~gemma_widgets.engines.base.CapabilityError` saying why.
    """
    return loaded.engine.score(ids)


def score_passage(loaded: LoadedModel, max_tokens: int | None = None, keep_generator: bool = True) -> PassageScores:
    """Score ``loaded`` on the package's passage (see the module docstring).

    ``keep_generator=False`` lets the engine free its generating copy of the weights first (an
    openvino-genai pipeline scores through optimum-intel's model on the same IR).
    """
    ids = passage_ids(loaded.tokenizer, max_tokens)
    return score_chunks(loaded.engine.score(ids, keep_generator=keep_generator), ids)
