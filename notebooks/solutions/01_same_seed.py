"""Exercise 01.1: the same seed gives the same sampled reply; no new seed, a new draw."""
import os

from transformers import pipeline, set_seed

from gemma_widgets import load_model
from gemma_widgets.course import check
from gemma_widgets.course.environment import quiet

quiet()
lm = load_model(os.environ.get("GEMMA_MODEL", "bundled"))
pipe = pipeline("text-generation", model=lm.model, tokenizer=lm.tokenizer)
messages = [{"role": "user", "content": "Who are you? Please, answer in pirate-speak."}]


def sample() -> str:
    return pipe(messages, max_new_tokens=12, do_sample=True, temperature=1.0)[0]["generated_text"][-1]["content"]


set_seed(7)
first = sample()
set_seed(7)
second = sample()
third = sample()  # no new seed: the generator has moved on
print(f"seed 7: {first!r}\nseed 7 again: {second!r}\nno new seed: {third!r}")
check("the same seed repeats the same draw", first == second)
print("Without a new seed the random generator continues where it was, so the third draw is a new one"
      f" ({'it differs' if third != first else 'it happens to match this time'}).")
