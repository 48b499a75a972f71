"""The chat adapter: its data, its training step, its merge into `bundled`, and how well `bundled` chats."""

from __future__ import annotations

import json

import pytest
import torch

from gemma_widgets.templates import END_OF_TURN, chat_ids
from gemma_widgets.tuning import evaluate as chat_eval
from gemma_widgets.tuning import train as chat_tuning


def test_the_evaluation_shares_no_question_with_training():
    train = {chat_eval._words(r["question"]) for r in chat_tuning.read_jsonl("train")}
    held_out = [chat_eval._words(r["question"]) for r in chat_tuning.read_jsonl("eval")]
    assert len(held_out) >= 50 and len(train) >= 300
    assert not train & set(held_out)
    assert all(r["expected"] for r in chat_tuning.read_jsonl("eval"))


@pytest.mark.model
def test_a_training_example_is_the_generation_prompt_then_the_reply_and_end_of_turn(tiny):
    tok = tiny.tokenizer
    ids, start = chat_tuning.encode(tok, "What is 2 plus 2?", "2 plus 2 is 4.")
    assert ids[:start] == chat_ids(tok, [{"role": "user", "content": "What is 2 plus 2?"}])
    assert tok.decode(ids[start:]) == "2 plus 2 is 4." + END_OF_TURN


@pytest.mark.model
def test_the_loss_scores_only_the_reply_as_the_full_logits_would(tiny):
    """The cheap loss (output layer at reply positions only) equals cross-entropy over the full logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok = tiny.tokenizer
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny.path, dtype=torch.float32),
                           LoraConfig(r=4, target_modules=list(chat_tuning.TARGET_MODULES)))
    model.eval()
    examples = [chat_tuning.encode(tok, "Name a colour.", "Blue."),
                chat_tuning.encode(tok, "What is the opposite of hot?", "The opposite of hot is cold.")]
    with torch.no_grad():
        cheap = chat_tuning._batch_loss(model, examples, tok.pad_token_id)
        losses, count = 0.0, 0
        for ids, start in examples:
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            target = torch.tensor(ids[start:])
            losses += torch.nn.functional.cross_entropy(logits[start - 1:-1], target, reduction="sum")
            count += len(target)
    assert cheap.item() == pytest.approx(float(losses) / count, rel=1e-4)


@pytest.mark.slow
def test_training_lowers_the_loss_and_saves_a_small_adapter(tiny, tmp_path):
    record = chat_tuning.train(tmp_path, chat_tuning.TrainSettings(epochs=3, batch_size=4, warmup_steps=1,
                                                                   learning_rate=3e-3),
                               base_dir=tiny.path, limit=8, log=lambda *_: None)
    assert record["losses"][-1] < record["losses"][0]
    assert json.loads((tmp_path / "training.json").read_text())["examples"] == 8
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 2_000_000


def test_echo_and_answer_are_read_by_words():
    assert chat_eval.echoes("What is the capital of Japan?", "what is the capital of japan? mendatang")
    assert not chat_eval.echoes("What is the capital of Japan?", "The capital of Japan is Tokyo.")
    assert chat_eval.answers(["Tokyo"], "The capital of Japan is Tokyo.")
    assert chat_eval.answers(["eight", "8"], "A spider has 8 legs.")
    assert not chat_eval.answers(["art"], "It is part of the body.")  # whole words only


def test_the_shipped_adapter_is_small_and_says_how_it_was_made():
    from gemma_widgets.offline.bundled import chat_adapter_dir

    folder = chat_adapter_dir()
    assert (folder / "adapter_model.safetensors").stat().st_size < 20_000_000
    config = json.loads((folder / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == set(chat_tuning.TARGET_MODULES)
    losses = json.loads((folder / "training.json").read_text())["losses"]
    assert sum(losses[-10:]) < sum(losses[:10]) / 3  # it learned (the record is the shipped adapter's)


@pytest.mark.integration
def test_bundled_chats_and_the_base_model_does_not():
    """The issue's targets on the held-out set: bundled answers, stops and does not echo."""
    from gemma_widgets import load_model

    chat = chat_eval.evaluate(load_model("bundled", "bf16"), progress=False)
    print(chat.summary())
    assert chat.share("answered") >= chat_eval.TARGETS["answered"], chat.misses("answered")[:5]
    assert chat.share("stopped") >= chat_eval.TARGETS["stopped"], chat.misses("stopped")[:5]
    assert chat.share("echoed") <= chat_eval.TARGETS["echoed"], chat.misses("echoed")[:5]
    base = chat_eval.evaluate(load_model("bundled-base", "bf16"), max_new_tokens=16, limit=10, progress=False)
    assert base.share("stopped") < 0.5  # the difference the adapter makes
