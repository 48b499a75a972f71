# Exercise 2 of notebook 04: nf4 with the embedding in 4 bits too, for Gemma 2 9B and for this model.
import json
import os
from pathlib import Path

from gemma_widgets.course import check
from gemma_widgets.presets import locate, resolve_preset

NF4_BITS = 4.127  # 4 bits plus double-quantized scales per block of 64


def nf4_share(embedding, total, embedding_bits):
    linear = total - embedding
    return (embedding * embedding_bits + linear * NF4_BITS) / (total * 16)


g2_embedding, g2_total = 256_000 * 3_584, 9.24e9
kept, quantized = nf4_share(g2_embedding, g2_total, 16), nf4_share(g2_embedding, g2_total, NF4_BITS)
print(f"Gemma 2 9B: nf4 is {kept:.0%} of bf16 with a 16-bit embedding, {quantized:.0%} with a 4-bit one")

preset = resolve_preset(os.environ.get("GEMMA_MODEL", "bundled"))
config = json.loads((Path(locate(preset)) / "config.json").read_text())
config = config.get("text_config", config)
embedding, total = config["vocab_size"] * config["hidden_size"], preset.params
here_kept, here_quantized = nf4_share(embedding, total, 16), nf4_share(embedding, total, NF4_BITS)
print(f"{preset.name}: the embedding is {embedding / total:.0%} of the weights; nf4 is {here_kept:.0%} of bf16 "
      f"with a 16-bit embedding, {here_quantized:.0%} with a 4-bit one")
check("quantizing the embedding saves more where the embedding is a larger share",
      (here_kept - here_quantized) > (kept - quantized) or embedding / total < g2_embedding / g2_total)
