"""Quality measures: the shipped passage, perplexity and top-1 agreement."""

from __future__ import annotations

import math

import pytest

from gemma_widgets import quality
from gemma_widgets.errors import GemmaWidgetsError


def test_passage_ships_with_the_package_and_is_a_few_hundred_tokens(tiny):
    text = quality.passage()
    assert text.startswith("The lighthouse") and text.endswith("museum.\n")
    ids = quality.passage_ids(tiny.tokenizer)
    assert ids[0] == tiny.tokenizer.bos_token_id
    assert 200 <= len(ids) <= 1000
    assert quality.passage_ids(tiny.tokenizer, max_tokens=50) == ids[:50]


def test_top1_agreement_counts_equal_positions():
    assert quality.top1_agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert quality.top1_agreement([5], [5]) == 1.0
    with pytest.raises(GemmaWidgetsError, match="same passage"):
        quality.top1_agreement([1, 2], [1, 2, 3])
    with pytest.raises(GemmaWidgetsError):
        quality.top1_agreement([], [])


def test_perplexity_of_a_sure_model_is_one_and_of_a_uniform_model_is_the_vocabulary():
    import torch

    ids = [0, 3, 1, 4, 1, 5, 2] * 30  # longer than one scoring chunk
    vocab = 8
    sure = torch.full((len(ids), vocab), -1e4)
    sure[torch.arange(len(ids) - 1), torch.tensor(ids[1:])] = 1e4
    scores = quality.score_logits(sure, ids)
    assert scores.perplexity == pytest.approx(1.0)
    assert scores.top1 == ids[1:]
    assert scores.tokens == len(ids)
    uniform = quality.score_logits(torch.zeros(len(ids), vocab), ids)
    assert uniform.perplexity == pytest.approx(vocab)


def test_score_passage_on_the_tiny_model_is_deterministic(tiny):
    first = quality.score_passage(tiny, max_tokens=64)
    second = quality.score_passage(tiny, max_tokens=64)
    assert math.isfinite(first.perplexity) and first.perplexity > 1
    assert len(first.top1) == 63 and first.tokens == 64
    assert first == second
    assert first.agreement(second) == 1.0


def test_an_engine_without_logits_is_refused(tiny):
    from dataclasses import replace

    from gemma_widgets.engines import CapabilityError, Engine

    with pytest.raises(CapabilityError, match="cannot score text: it gives no logits"):
        list(quality.passage_logits(replace(tiny, engine=Engine()), [1, 2, 3]))


def test_chunked_scoring_equals_the_full_forward_pass_with_soft_capping(tiny):
    import torch

    assert tiny.model.config.final_logit_softcapping  # Gemma 2 caps its logits: the chunks must too
    ids = quality.passage_ids(tiny.tokenizer, max_tokens=150)  # three chunks
    with torch.inference_mode():
        full = tiny.model(input_ids=torch.tensor([ids])).logits[0]
    chunked = torch.cat(list(quality.passage_logits(tiny, ids)))
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-4)
    chunked_scores = quality.score_chunks(quality.passage_logits(tiny, ids), ids)
    full_scores = quality.score_logits(full, ids)
    assert chunked_scores.perplexity == pytest.approx(full_scores.perplexity, rel=1e-5)
    assert chunked_scores.top1 == full_scores.top1


@pytest.mark.integration
def test_the_bundled_model_predicts_the_passage_far_better_than_chance(bundled):
    scores = quality.score_passage(bundled)
    vocab = bundled.model.config.vocab_size
    assert scores.perplexity < vocab / 1000, scores.perplexity
    assert len(scores.top1) == scores.tokens - 1
