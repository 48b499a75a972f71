# Exercise 3 of notebook 07 (capstone): a precision for two machines, chosen from the dashboard's figures:
# this notebook's run where there is one (`results`), else the run shipped with the kit.
from gemma_widgets import bench
from gemma_widgets.course import check
from gemma_widgets.quality import MIN_AGREEMENT

run = results if "results" in globals() else bench.reference_run()  # noqa: F821 (the notebook's run)
ok = {r.variant: r for r in run if r.ok and r.decode_tps}
ref = ok[next(iter(ok.values())).reference]
good = {v: r for v, r in ok.items() if bench.within_quality_bound(r, ref)}
print(f"quality reference {ref.variant}; within the bound (perplexity <= {bench.MAX_PERPLEXITY_RATIO:g}x, top-1 "
      f"agreement >= {MIN_AGREEMENT:.0%}): {', '.join(good)}; outside it: {', '.join(v for v in ok if v not in good) or 'none'}")

# 1. A laptop, 8 GB, no GPU. The OS, a browser and Jupyter keep about half, so a variant's peak must stay under
#    4 GB. Every figure here is a CPU figure, so they carry over (scaled by the laptop's memory bandwidth).
budget_mb = 4000
fits = {v: r for v, r in good.items() if r.peak_rss_mb <= budget_mb}
laptop = max(fits.values(), key=lambda r: r.decode_tps)
print(f"laptop: {laptop.variant}, the fastest within the quality bound: {laptop.decode_tps:.1f} tok/s = "
      f"{laptop.decode_tps / ref.decode_tps:.1f}x {ref.variant}'s, peak {laptop.peak_rss_mb:.0f} MB of a {budget_mb} MB "
      f"budget, perplexity x{laptop.perplexity / ref.perplexity:.2f} of {ref.variant}'s")
check("the laptop's pick fits its budget and keeps the quality bound",
      laptop.peak_rss_mb <= budget_mb and laptop.variant in good)

# 2. A T4: 16 GB of GPU memory, compute capability 7.5. These speeds do not carry over (another processor),
#    and OpenVINO and llama.cpp rows are CPU engines. What carries over: the weights' bytes, and quality,
#    which comes from the weights, not the machine. A T4 has no fast bf16, and float16 overflows this model's
#    activations (notebook 03), so the candidates are fp32 and bitsandbytes.
fp32_mb = ok["fp32"].weights_mb if "fp32" in ok else 2 * ok["bf16"].weights_mb  # 4 bytes a weight, bf16's 2
print(f"T4: fp32, exact and {fp32_mb:.0f} MB of weights, {fp32_mb / 16000:.0%} of the T4's 16 GB")
if "bnb-nf4" in ok:
    nf4 = ok["bnb-nf4"]
    print(f"    bnb-nf4 would save {fp32_mb - nf4.weights_mb:.0f} MB at perplexity x{nf4.perplexity / ref.perplexity:.2f} "
          f"and {nf4.top1_agreement:.0%} top-1 agreement: not worth it where fp32 fits. The kit's auto_precision "
          "picks bnb-nf4 on any T4 so that a 9B model fits too; this 270M model fits in fp32 with room to spare.")
check("fp32's weights take under a tenth of a T4's memory", fp32_mb < 1600)
