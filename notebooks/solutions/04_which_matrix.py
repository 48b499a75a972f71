# Exercise 1 of notebook 04: which matrix is hardest to put in int4 (group 64, asymmetric)?
import os

import torch
from transformers import AutoModelForCausalLM

from gemma_widgets.course import weight_error
from gemma_widgets.presets import locate, resolve_preset

MODEL = os.environ.get("GEMMA_MODEL", "bundled")
model = AutoModelForCausalLM.from_pretrained(locate(resolve_preset(MODEL)), dtype=torch.bfloat16)
embedding = model.model.embed_tokens.weight.detach()
rows = torch.randperm(embedding.shape[0], generator=torch.Generator().manual_seed(0))[:8192]
matrices = {  # a sample of the embedding's rows: the whole of it would take GBs in float32
    "embedding (8192 random rows)": embedding[rows],
    "layer 0 down_proj": model.model.layers[0].mlp.down_proj.weight.detach(),
    "last layer down_proj": model.model.layers[-1].mlp.down_proj.weight.detach(),
}
errors = {name: weight_error.roundtrip(w, 4, 64, sym=False).error for name, w in matrices.items()}
for name, error in sorted(errors.items(), key=lambda item: item[1]):
    w = matrices[name].float()
    print(f"{name:30s} int4 g64 asym relative error {error:.4f}; largest |weight| / std {w.abs().max() / w.std():5.1f}")
print(f"hardest here: {max(errors, key=errors.get)}. One large weight stretches its group's grid, and every "
      "other weight of the group is rounded to that coarser grid: compare the last column.")
