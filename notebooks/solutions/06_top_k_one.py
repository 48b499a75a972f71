# Exercise 1 of notebook 06: top_k=1 at temperature 1.5. Sampling from a shortlist of one is greedy.
import os

import torch

from gemma_widgets import load_model
from gemma_widgets.course import check

# In the notebook this reuses the panel's model, turned to fp32 in place (one copy of the weights:
# Binder gives 2 GB) and back to bf16 at the end; run on its own, it loads the model in fp32.
if "panel" in globals():
    lm = panel.session.loaded  # noqa: F821 (the notebook's panel)
else:
    lm = load_model(os.environ.get("GEMMA_MODEL", "bundled"), precision="fp32")
dtype = lm.model.dtype
lm.model.to(torch.float32)  # fp32: see the note at the end
try:
    question = "Name three colours."
    greedy = lm.generate(question, max_new_tokens=24, temperature=0)
    sampled = [lm.generate(question, max_new_tokens=24, temperature=1.5, top_k=1) for _ in range(2)]
finally:
    lm.model.to(dtype)
print("greedy: ", repr(greedy))
for text in sampled:
    print("sampled:", repr(text))
check("top_k=1 leaves one candidate per step, so any temperature gives the greedy reply",
      all(text == greedy for text in sampled))
print("Note: transformers' top-k filter keeps every token whose logit equals the k-th largest. In bf16 the "
      "logits are coarse enough to tie, and then top_k=1 can leave two candidates: run this with "
      'precision="bf16" a few times to see it.')
