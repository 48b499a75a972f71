# Exercise 1 of notebook 05: a static cache's size at 4096 tokens, by arithmetic, checked on a real one.
import os

from gemma_widgets import compilation, load_model
from gemma_widgets.course import check

TOKENS = 4096
lm = load_model(os.environ.get("GEMMA_MODEL", "bundled"), precision="bf16")
config = lm.model.config
per_slot = 2 * config.num_key_value_heads * config.head_dim * 2  # keys + values, 2 bytes each in bf16
kinds = config.layer_types
every_layer_full = len(kinds) * TOKENS * per_slot
windowed = sum((min(config.sliding_window, TOKENS) if k == "sliding_attention" else TOKENS) * per_slot
               for k in kinds)
print(f"{lm.preset.name}: {every_layer_full / 1e6:.0f} MB if every layer kept {TOKENS} tokens, "
      f"{windowed / 1e6:.0f} MB with window-sized sliding layers")
cache = compilation.static_cache(lm.model, max_cache_len=TOKENS)
real = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
check("the arithmetic is the size of transformers' StaticCache", real == windowed,
      f"{real / 1e6:.0f} MB allocated")
