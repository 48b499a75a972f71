# Exercise 2 of notebook 06: a prompt about ten times longer. The first token waits for the prefill of
# the whole prompt; each later token is one decode step, whose cost barely depends on the prompt here.
import os
import time

from gemma_widgets import load_model

lm = load_model(os.environ.get("GEMMA_MODEL", "bundled"), precision="bf16")
lm.generate("Hello", max_new_tokens=2, temperature=0)  # warm-up: the first call pays one-off costs
short = "Name three colours."
long = "Here is some context. " + "Lighthouses guide ships along dangerous coasts at night. " * 30 + short


def timeline(prompt):
    start, arrivals = time.perf_counter(), []
    for _ in lm.stream(prompt, max_new_tokens=24, temperature=0):
        arrivals.append(time.perf_counter() - start)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return arrivals[0], sorted(gaps)[len(gaps) // 2] if gaps else float("nan")


for name, prompt in (("short", short), ("long", long)):
    tokens = len(lm.tokenizer(prompt).input_ids)
    first, gap = timeline(prompt)
    print(f"{name:5s} prompt, {tokens:3d} tokens: first text after {first:.3f} s, median gap {1000 * gap:.1f} ms")
print("Expect the first text to come later with the long prompt (a longer prefill) and the gaps to move "
      "far less: each decode step reads the same weights, plus a little more cache.")
