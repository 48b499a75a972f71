"""Exercise 03.2: the residual stream's peaks, for a short prompt and for the package's long passage."""
import os

import torch

from gemma_widgets import load_model
from gemma_widgets.course.environment import quiet
from gemma_widgets.course.residuals import residual_peaks
from gemma_widgets.engines.hf import FP16_MAX
from gemma_widgets.quality import passage_ids

quiet()
lm = load_model(os.environ.get("GEMMA_MODEL", "bundled"), "bf16")
short = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
long = torch.tensor([passage_ids(lm.tokenizer, max_tokens=256)])
largest = {}
for name, ids in (("short prompt", short), ("long passage", long)):
    peaks = residual_peaks(lm.model, ids.to(lm.model.device))
    largest[name] = max(peaks)
    print(f"{name} ({ids.shape[-1]} tokens): largest {max(peaks):,.0f}, "
          f"{sum(p > FP16_MAX for p in peaks)} of {len(peaks)} layers over float16's 65,504")
ratio = largest["long passage"] / largest["short prompt"]
print(f"The long passage's largest activation is {ratio:.2f}x the short prompt's. A ratio near 1 says the"
      " overflow comes from the weights (a few huge channels), not from the length of the context.")
