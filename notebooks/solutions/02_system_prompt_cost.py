"""Exercise 02.2: a folded system prompt costs its own tokens plus a blank line, inside the first user turn."""
import os

from gemma_widgets import load_model
from gemma_widgets.course import check
from gemma_widgets.course.environment import quiet
from gemma_widgets.templates import chat_ids, fold_system_prompt

quiet()
tok = load_model(os.environ.get("GEMMA_MODEL", "bundled")).tokenizer
messages = [{"role": "user", "content": "What is the capital of France?"}]
system = "You are a pirate. Answer in one short sentence."
folded = fold_system_prompt([{"role": "system", "content": system}] + messages)
before, after = len(chat_ids(tok, messages)), len(chat_ids(tok, folded))
alone = len(tok(system, add_special_tokens=False).input_ids)
print(f"prompt without the system prompt: {before} tokens; with it: {after} (+{after - before});"
      f" the system text alone: {alone} tokens")
check("the system prompt adds at least its own tokens", after - before >= alone)
print(tok.apply_chat_template(folded, tokenize=False, add_generation_prompt=True))
