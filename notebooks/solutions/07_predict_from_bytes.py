# Exercise 1 of notebook 07: if decoding only read the weights, speed would scale with 1 / bytes of weights.
# The reference run (shipped with the kit) has both the bytes and the measured speeds; fp32, four bytes a
# weight and the plainest arithmetic, is the base of the prediction.
from gemma_widgets import bench

run = {r.variant: r for r in bench.reference_run() if r.ok and r.decode_tps and r.weights_mb}
base = run["fp32"]
print(f"reference machine: {bench.describe_machine(base.machine)}")
share = {}
for variant, r in sorted(run.items(), key=lambda item: item[1].weights_mb):
    predicted = base.decode_tps * base.weights_mb / r.weights_mb
    share[variant] = r.decode_tps / predicted
    print(f"{variant:>12}: {r.weights_mb:5.0f} MB, predicted {predicted:5.1f} tok/s, measured {r.decode_tps:5.1f} "
          f"({share[variant]:.0%} of the prediction)")
near = [v for v, s in share.items() if v != "fp32" and 0.8 <= s <= 1.2]
above = [v for v, s in share.items() if s > 1.2]
short = [v for v, s in share.items() if s < 0.8]
print(f"near the prediction (reading the weights is what limits them): {', '.join(near) or 'none'}")
if short:
    print(f"short of it: {', '.join(short)}. Something besides reading the weights costs time per token: "
          "arithmetic the CPU has no fast instructions for (bf16 without native support, unpacking 4-bit "
          "weights), de-quantizing in kernels written for a GPU (bitsandbytes' 4-bit), or the generate loop's own "
          "per-token overhead, a larger share of each step as the weights shrink.")
if above:
    print(f"above it: {', '.join(above)}. fp32 itself is slower there than its bytes allow, so bytes alone "
          "underestimate the others.")
