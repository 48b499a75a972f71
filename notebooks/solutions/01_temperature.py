"""Exercise 01.2: a low temperature sharpens the distribution (fewer distinct replies), a high one flattens it."""
import os

from transformers import pipeline, set_seed

from gemma_widgets import load_model
from gemma_widgets.course.environment import quiet

quiet()
lm = load_model(os.environ.get("GEMMA_MODEL", "bundled"))
pipe = pipeline("text-generation", model=lm.model, tokenizer=lm.tokenizer)
messages = [{"role": "user", "content": "Who are you? Please, answer in pirate-speak."}]

for temperature in (0.2, 1.5):
    replies = []
    for seed in range(4):
        set_seed(seed)
        out = pipe(messages, max_new_tokens=12, do_sample=True, temperature=temperature)
        replies.append(out[0]["generated_text"][-1]["content"])
    print(f"temperature {temperature}: {len(set(replies))} different replies of 4")
    for reply in replies:
        print(f"    {reply!r}")
print("Logits are divided by the temperature before the softmax: below 1 the top token dominates (draws"
      " look alike, near greedy); above 1 unlikely tokens gain weight (draws differ more, and ramble).")
