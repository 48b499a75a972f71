"""Quality beside speed: perplexity on a fixed passage, and top-1 agreement between precisions.

The passage ships with the package (``gemma_widgets/data/passage.txt``, original prose in the
public domain). A variant's quality is two numbers over it:

* **perplexity**: ``exp`` of the mean negative log-likelihood of each passage token given the
  ones before it (lower is better; compare variants of one model, never across models);
* **top-1 agreement**: the share of passage positions where the variant's most likely next
  token equals the reference precision's (1.0 = it always picks the same token).

Both need logits, so they run on the ``transformers`` and ``optimum-intel`` engines. An
``openvino-genai`` pipeline exposes no logits: :func:`score_passage` scores it with the
optimum-intel model read from the same OpenVINO IR folder, i.e. the same weights.

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

from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.models import LoadedModel

#: Positions scored per chunk when turning logits into log-probabilities (bounds peak memory).
_CHUNK = 64


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
    return sum(a == b for a, b in zip(predicted, reference)) / len(reference)


def score_logits(logits: Any, ids: Sequence[int]) -> PassageScores:
    """Perplexity and top-1 predictions from ``logits`` (``[len(ids), vocab]``) for ``ids``."""
    return score_chunks((logits[i:i + _CHUNK] for i in range(0, len(ids) - 1, _CHUNK)), ids)


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

    Scoring never holds all ``len(ids) x 262k`` logits (390 MB in fp32 for the passage): a
    transformers model runs its decoder once and applies the output layer (with Gemma's final
    logit soft-capping) a chunk at a time; an OpenVINO model, whose output layer is inside its
    graph, reads the passage a chunk at a time through its KV cache, as generation does. So its
    score includes that cache's precision: OpenVINO's CPU plugin keeps it in u8 by default (for the
    bundled model's ov-int4 export here: perplexity 46.8 read in chunks, 46.2 in one pass).
    """
    import torch

    if loaded.engine == "openvino-genai":
        model = _optimum_twin(loaded)
    elif loaded.engine in ("transformers", "optimum-intel"):
        model = loaded.model
    else:
        raise GemmaWidgetsError(f"Cannot score engine {loaded.engine!r}: it gives no logits.")
    device = getattr(model, "device", torch.device("cpu"))
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "use_cache": False}
    head = model.get_output_embeddings() if loaded.engine == "transformers" else None
    decoder = getattr(model, "model", None)
    with torch.inference_mode():
        if head is None or decoder is None:
            past = None  # None starts a fresh sequence (a stateful OpenVINO model resets its cache)
            for start in range(0, len(ids), _CHUNK):
                end = min(start + _CHUNK, len(ids))
                out = model(input_ids=input_ids[:, start:end], past_key_values=past,
                            attention_mask=inputs["attention_mask"][:, :end])
                past = out.past_key_values
                yield out.logits[0].to("cpu", copy=True)  # the next call reuses the output buffer
            return
        hidden = decoder(**inputs).last_hidden_state[0]
        cap = getattr(model.config, "final_logit_softcapping", None)
        for start in range(0, len(ids), _CHUNK):
            logits = head(hidden[start:start + _CHUNK])
            if cap:
                logits = torch.tanh(logits / cap) * cap
            yield logits.to("cpu")


def _optimum_twin(loaded: LoadedModel) -> Any:
    """The optimum-intel model on the IR folder an openvino-genai pipeline runs."""
    from optimum.intel import OVModelForCausalLM

    return OVModelForCausalLM.from_pretrained(loaded.path)


def score_passage(loaded: LoadedModel, max_tokens: int | None = None) -> PassageScores:
    """Score ``loaded`` on the package's passage (see the module docstring)."""
    ids = passage_ids(loaded.tokenizer, max_tokens)
    return score_chunks(passage_logits(loaded, ids), ids)
