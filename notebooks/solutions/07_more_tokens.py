# Exercise 2 of notebook 07: bf16 with 8 and then 24 new tokens, nothing else changed.
# The prefill (the first token) sees the same prompt; each later token is one decode step.
import os

from gemma_widgets import bench

model = os.environ.get("GEMMA_MODEL", "bundled")
for new_tokens in (8, 24):
    (r,) = bench.run(model, ["bf16"], new_tokens=new_tokens, repeats=1, quality=False)
    whole = r.ttft_ms / 1000 + (new_tokens - 1) / r.decode_tps
    print(f"{new_tokens:2d} new tokens: first token {r.ttft_ms:6.1f} ms, decode {r.decode_tps:5.1f} tok/s, "
          f"whole call about {whole:.1f} s")
print("Expect the first token and the decode speed to stay about the same (the same prompt, the same "
      "weights read per step; the cache grows a little) and the whole call to grow with the tokens asked for.")
