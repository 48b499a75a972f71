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

**The quality gate.** Every quantized or exported variant the course shows must pass :func:`gate`
against its reference before its results are trusted: top-1 agreement of at least
:data:`MIN_AGREEMENT` (85%), or a scheme's lower floor where the scheme is lossy by design (marked,
with the reason), and bytes per weight inside the range its scheme's arithmetic allows
(:data:`SCHEMES`). A broken export (gibberish text, weights missing from the file, a compression
that did not happen) fails it with the figures that failed.

>>> result = gate(load_model("bundled", "ov-int4"), ref)              # doctest: +SKIP
>>> print(result)                                                      # doctest: +SKIP
ov-int4 passes the quality gate (top-1 agreement 67.0%, 0.831 bytes/weight, ...); marked: ...
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import torch

from gemma_widgets.engines.base import SCORE_CHUNK
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.loading import LoadedModel

#: Top-1 agreement with the reference a variant must reach (issue 28).
MIN_AGREEMENT = 0.85
#: The floor of a scheme that is lossy by design (data-free 4-bit): half the positions. A degraded
#: copy of the reference still agrees on most easy tokens; a broken one does not (zeroed or scrambled
#: weights agree at a few percent; int4 per row on every layer, embedding included, agreed at 25% on
#: the bundled base model, perplexity 229 against 29).
LOSSY_MIN_AGREEMENT = 0.5
#: The largest share of a Gemma's weights in its embedding (tied to the output layer), which several
#: schemes keep wider than the other layers: Gemma 3 270M's 262,144 x 640 rows are 63%, Gemma 2 9B's 10%.
MAX_EMBEDDING_SHARE = 2 / 3
#: Slack on both ends of a bytes range: a local folder's parameter count is estimated from its
#: config.json (about 3% high for Gemma 2 9B), and a footprint counts a few buffers besides weights.
BYTES_SLACK = 0.05


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


@dataclass(frozen=True)
class Scheme:
    """What a weight format promises: bytes per weight, and how closely it follows the reference.

    ``linear`` and ``embedding`` are the bytes per weight (scales and zero points included) the
    scheme stores for the Linear layers and for the embedding; the whole model lands between them,
    weighted by the embedding's share (0 to :data:`MAX_EMBEDDING_SHARE`). ``lossy`` says why the
    scheme may agree less than :data:`MIN_AGREEMENT`; such a scheme is held to
    :data:`LOSSY_MIN_AGREEMENT` and its results are marked.
    """

    linear: tuple[float, float]
    embedding: tuple[float, float]
    lossy: str = ""

    @property
    def min_agreement(self) -> float:
        return LOSSY_MIN_AGREEMENT if self.lossy else MIN_AGREEMENT

    @property
    def bytes_range(self) -> tuple[float, float]:
        """The bytes per weight a model in this scheme may take, :data:`BYTES_SLACK` included."""
        share = MAX_EMBEDDING_SHARE
        low = min(self.linear[0], (1 - share) * self.linear[0] + share * self.embedding[0])
        high = max(self.linear[1], (1 - share) * self.linear[1] + share * self.embedding[1])
        return low * (1 - BYTES_SLACK), high * (1 + BYTES_SLACK)


_FOUR_BITS = ("4-bit weights (16 levels a group) move many of a small model's top-1 predictions; "
              "notebook 07 measures how many")
_FULL, _HALF = Scheme((4, 4), (4, 4)), Scheme((2, 2), (2, 2))
#: Each precision's scheme (keys are :data:`gemma_widgets.precisions.PRECISIONS` names), with its arithmetic.
SCHEMES: dict[str, Scheme] = {
    "fp32": _FULL,
    "bf16": _HALF, "fp16": _HALF, "ov-fp16": _HALF,
    # bitsandbytes quantizes the Linear layers only and leaves the embedding in 16 bits. int8: one byte
    # and a float32 scale per row of at least ~40 weights.
    "bnb-int8": Scheme((1.0, 1.1), (2, 2)),
    # 4 bits and a float32 absmax per block of 64 (0.5625 bytes; less with double_quant's 8-bit absmax)
    "bnb-nf4": Scheme((0.5, 0.5625), (2, 2), _FOUR_BITS),
    "bnb-fp4": Scheme((0.5, 0.5625), (2, 2), _FOUR_BITS),
    # nncf: a byte per weight and a scale and zero point per output row; the embedding likewise
    "ov-int8": Scheme((1.0, 1.1), (1.0, 1.1)),
    # nncf int4: 4 bits and an fp16 scale (and a 4-bit zero point) per group of 32 or more (0.58 at
    # most); the embedding int8, or int4 with all_layers. int4 exports that fall back to int8 (a small
    # ratio) approach one byte and are judged as ov-int8.
    "ov-int4": Scheme((0.5, 0.6), (0.5, 1.1), _FOUR_BITS),
    # llama.cpp's Q4_K_M mix: Q4_K (4.5 bits) to Q6_K (6.56 bits) in the body, up to Q8_0 (8.5 bits)
    # for the embedding / output layer, plus the file's tokenizer and metadata; a chat LoRA adapter loaded
    # beside it adds float32 low-rank factors (r=16 on 640-wide matrices: ~3% as many weights, 0.13 bytes)
    "gguf-q4_k_m": Scheme((0.5625, 0.96), (0.5625, 1.0625)),
}


def scheme_of(precision: str) -> Scheme | None:
    """The :class:`Scheme` of a precision name (``ov-int4-optimum`` is ``ov-int4``; ``bf16+compile``
    is ``bf16``), None for one without (``served``)."""
    return SCHEMES.get(precision.partition("+")[0].removesuffix("-optimum"))


@dataclass(frozen=True)
class GateResult:
    """The quality gate's verdict on one variant, with the figures it judged."""

    variant: str
    agreement: float | None  # top-1 agreement with the reference (None: not measured)
    bytes_per_weight: float | None  # None: unknown (a server's model)
    failures: tuple[str, ...] = ()  # what failed, each with its figure and bound
    mark: str = ""  # why a variant that passed agrees less than MIN_AGREEMENT ("" if it does not)
    perplexity: float | None = None
    reference_perplexity: float | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def status(self) -> str:
        """``passed``, ``marked`` (passed below :data:`MIN_AGREEMENT`, as its scheme allows) or ``failed``."""
        return "failed" if self.failures else "marked" if self.mark else "passed"

    def __str__(self) -> str:
        figures = []
        if self.agreement is not None:
            figures.append(f"top-1 agreement {self.agreement:.1%}")
        if self.bytes_per_weight is not None:
            figures.append(f"{self.bytes_per_weight:.3f} bytes/weight")
        if self.perplexity is not None and self.reference_perplexity is not None:
            figures.append(f"perplexity {self.perplexity:.4g} (reference {self.reference_perplexity:.4g})")
        head = f"{self.variant} {'FAILS' if self.failures else 'passes'} the quality gate ({', '.join(figures)})"
        if self.failures:
            return f"{head}: {'; '.join(self.failures)}"
        return f"{head}; marked: {self.mark}" if self.mark else head


def judge(variant: str, agreement: float | None, bytes_per_weight: float | None, scheme: Scheme | None = None,
          perplexity: float | None = None, reference_perplexity: float | None = None) -> GateResult:
    """The gate on figures already measured (a benchmark's row): ``agreement`` against the bar of
    ``variant``'s scheme, ``bytes_per_weight`` against its range. ``scheme`` overrides
    :func:`scheme_of`; without either, agreement is held to :data:`MIN_AGREEMENT` and bytes go
    unjudged. ``perplexity`` and ``reference_perplexity`` are kept for the message."""
    scheme = scheme or scheme_of(variant)
    floor = scheme.min_agreement if scheme else MIN_AGREEMENT
    failures, mark = [], ""
    if agreement is not None and agreement < floor:
        why = " (the floor of a scheme lossy by design)" if floor < MIN_AGREEMENT else ""
        failures.append(f"top-1 agreement {agreement:.1%} is under {floor:.0%}{why}")
    elif agreement is not None and agreement < MIN_AGREEMENT and scheme:
        mark = f"under {MIN_AGREEMENT:.0%} by design: {scheme.lossy}"
    if scheme and bytes_per_weight is not None:
        low, high = scheme.bytes_range
        if not low <= bytes_per_weight <= high:
            failures.append(f"{bytes_per_weight:.3f} bytes/weight is outside this scheme's {low:.3g}-{high:.3g}")
    return GateResult(variant, agreement, bytes_per_weight, tuple(failures), mark, perplexity,
                      reference_perplexity)


def gate(candidate: LoadedModel, reference: LoadedModel | PassageScores, scheme: str | None = None) -> GateResult:
    """Score ``candidate`` on the passage and judge it against ``reference`` (a model, or its scores
    from :func:`score_passage`, to score it once for several candidates) with :func:`judge`.

    Bytes per weight are the engine's weights (on disk for an IR or a GGUF file, in memory for torch)
    over the preset's parameter count. ``scheme`` names the precision to hold it to, if not the one it
    was loaded as (an IR folder loads as ``ov-int4`` whatever it holds).
    """
    if isinstance(reference, LoadedModel):
        reference = score_passage(reference)
    scores = score_passage(candidate)
    weights, params = candidate.engine.weights_bytes(), candidate.preset.params
    name = scheme or candidate.precision
    return judge(name, scores.agreement(reference), weights / params if weights and params else None,
                 scheme_of(name), perplexity=scores.perplexity, reference_perplexity=reference.perplexity)
