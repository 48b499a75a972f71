# Exercise 2 of notebook 05: an eager static cache with 8x the slots it needs. Each decode step attends
# over every slot (empty ones are masked, not skipped), so it reads the whole cache plus every weight.
import os

from gemma_widgets import compilation, load_model
from gemma_widgets.course import check

lm = load_model(os.environ.get("GEMMA_MODEL", "bundled"), precision="bf16")
weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
read = {}
for slots in (64, 512):
    cache = compilation.static_cache(lm.model, max_cache_len=slots)
    cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    read[slots] = weights + cache_bytes
    print(f"{slots:3d} slots: cache {cache_bytes / 1e6:6.1f} MB; a decode step reads about "
          f"{read[slots] / 1e6:.0f} MB (weights {weights / 1e6:.0f} MB)")
print(f"8x the slots reads {read[512] / read[64]:.3f}x the bytes per step: decode speed follows the bytes read, "
      "so expect about that slow-down (time it with bench_compile.measure(..., cache_multiple=512)).")
check("the cache grows with its slots, the weights do not", read[512] > read[64])
