"""Quality measures: the shipped passage, perplexity and top-1 agreement."""

from __future__ import annotations

import math

import pytest
from fakes import NoLogits, fake_model

from gemma_widgets import quality
from gemma_widgets.engines.base import CapabilityError
from gemma_widgets.errors import GemmaWidgetsError


@pytest.mark.model
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


@pytest.mark.model
def test_score_passage_on_the_tiny_model_is_deterministic(tiny):
    first = quality.score_passage(tiny, max_tokens=64)
    second = quality.score_passage(tiny, max_tokens=64)
    assert math.isfinite(first.perplexity) and first.perplexity > 1
    assert len(first.top1) == 63 and first.tokens == 64
    assert first == second
    assert first.agreement(second) == 1.0


def test_an_engine_without_logits_is_refused():
    with pytest.raises(CapabilityError, match="no-logits cannot score text: a scripted fake gives no logits"):
        list(quality.passage_logits(fake_model(NoLogits()), [1, 2, 3]))


@pytest.mark.model
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


# -- the quality gate ---------------------------------------------------------------------------

def test_every_precision_that_stores_weights_has_a_scheme_whose_range_holds_its_nominal_bytes():
    from gemma_widgets.precisions import PRECISIONS

    for name, precision in PRECISIONS.items():
        scheme = quality.scheme_of(name)
        if name == "served":
            assert scheme is None
            continue
        low, high = scheme.bytes_range
        assert low <= precision.bytes_per_param <= high, name


def test_bytes_ranges_tell_the_schemes_apart_where_a_broken_export_would_hide():
    ranges = {name: quality.SCHEMES[name].bytes_range for name in ("ov-int4", "ov-int8", "bf16")}
    assert ranges["ov-int4"][1] < 1.0 < ranges["ov-int8"][1]  # an int4 export that stayed int8 fails
    assert ranges["ov-int8"][1] < 2.0  # an int8 export that stayed 16-bit fails
    assert ranges["ov-int4"][0] < 0.5 < ranges["ov-int4"][1]  # 4 bits, and a little slack for scales
    assert quality.scheme_of("ov-int4-optimum") is quality.scheme_of("ov-int4")
    assert quality.scheme_of("bf16+compile") is quality.scheme_of("bf16")


def test_the_gate_names_what_failed_with_its_figures():
    """Issue 28's export: an 18 MB .bin for 268 M weights, and gibberish."""
    result = quality.judge("ov-int4", agreement=0.03, bytes_per_weight=18e6 / 268e6)
    assert not result.passed and result.status == "failed"
    assert len(result.failures) == 2
    assert "top-1 agreement 3.0% is under 50%" in str(result)
    assert "0.067 bytes/weight is outside this scheme's 0.475-0.98" in str(result)


def test_a_lossy_scheme_passes_under_85_percent_only_marked_and_only_above_its_floor():
    marked = quality.judge("ov-int4", agreement=0.7, bytes_per_weight=0.83)
    assert marked.passed and marked.status == "marked" and "under 85% by design" in str(marked)
    assert quality.judge("ov-int4", agreement=0.9, bytes_per_weight=0.83).status == "passed"
    assert quality.judge("ov-int4", agreement=0.4, bytes_per_weight=0.83).status == "failed"
    # a scheme that is not lossy by design is held to 85%
    failed = quality.judge("ov-int8", agreement=0.7, bytes_per_weight=1.0)
    assert failed.failures == ("top-1 agreement 70.0% is under 85%",)


def test_the_gate_judges_what_it_is_given():
    assert quality.judge("bf16", agreement=None, bytes_per_weight=3.0).failures  # bytes alone
    assert quality.judge("served", agreement=0.9, bytes_per_weight=None).status == "passed"  # no scheme
    assert quality.judge("served", agreement=0.6, bytes_per_weight=None).status == "failed"
    as_int8 = quality.judge("ov-int4", 0.95, 1.005, scheme=quality.SCHEMES["ov-int8"])
    assert as_int8.passed


@pytest.mark.model
def test_gate_scores_the_candidate_against_a_reference_model(tiny):
    result = quality.gate(tiny, tiny, scheme="bf16")  # fp32 weights held to bf16's bytes
    assert result.agreement == 1.0 and result.perplexity == result.reference_perplexity > 1
    assert result.bytes_per_weight == pytest.approx(4.0, rel=0.01)
    assert result.failures == ("4.000 bytes/weight is outside this scheme's 1.9-2.1",)
    assert str(result).startswith("bf16 FAILS the quality gate (top-1 agreement 100.0%, 4.000 bytes/weight")
