# Exercise 1 of notebook 07: if decoding only read the weights, speed would scale with 1 / bytes of weights.
# The reference run (shipped with the kit) has both the bytes and the measured speeds.
from gemma_widgets import bench

run = {r.variant: r for r in bench.reference_run() if r.ok and r.decode_tps and r.weights_mb}
bf16 = run["bf16"]
print(f"reference machine: {bench.describe_machine(bf16.machine)}")
share = {}
for variant, r in sorted(run.items(), key=lambda item: item[1].weights_mb):
    predicted = bf16.decode_tps * bf16.weights_mb / r.weights_mb
    share[variant] = r.decode_tps / predicted
    print(f"{variant:>12}: {r.weights_mb:5.0f} MB, predicted {predicted:5.1f} tok/s, measured {r.decode_tps:5.1f} "
          f"({share[variant]:.0%} of the prediction)")
above = [v for v, s in share.items() if s > 1.2]
near = [v for v, s in share.items() if v != "bf16" and 0.8 <= s <= 1.2]
short = [v for v, s in share.items() if s < 0.8]
print(f"near the prediction: {', '.join(near) or 'none'}")
if above:
    print(f"above it: {', '.join(above)}. The prediction takes bf16 to be limited by reading its weights; on "
          "that machine bf16 is slower than its bytes allow (its arithmetic costs more than its reads, as "
          "where the CPU has no bf16 instructions), so bytes alone underestimate the others.")
if short:
    print(f"short of it: {', '.join(short)}. Something besides reading the weights costs time per token there: "
          "de-quantizing in kernels written for a GPU (bitsandbytes on a CPU), or the generate loop's own "
          "per-token overhead, a larger share of each step as the weights shrink.")
