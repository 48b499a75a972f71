"""How close does decoding come to the memory-bandwidth limit?

Decoding one token reads every weight once (for the bundled Gemma 3 270M the tied
262k x 640 embedding, which is also the output layer, dominates), so
``bytes read per token x tok/s`` cannot exceed the machine's read bandwidth.

The bandwidth: sum a 1 GiB float32 array (far larger than any cache) with numpy, split in
as many slices as there are cores, one thread per slice (numpy releases the GIL while it
sums), best of ``--repeats``; one thread alone is printed too. Bytes read per token: the
variant's weights footprint as the harness reports it (the IR's weight file for OpenVINO,
the tensors for torch); the KV cache of a short prompt is a few MB and is left out.

    .venv/bin/python benchmarks/bandwidth.py                 # two ov-int4 settings
    .venv/bin/python benchmarks/bandwidth.py --variants ov-int4,bf16 --new-tokens 64
    .venv/bin/python benchmarks/bandwidth.py --results results.json       # reuse a bench run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gemma_widgets import bench

GIB = 1024**3


def read_bandwidth(size_bytes: int = GIB, threads: int | None = None, repeats: int = 7) -> float:
    """Best-of-``repeats`` bytes/s for summing a ``size_bytes`` float32 array on ``threads``."""
    threads = threads or len(os.sched_getaffinity(0))
    data = np.ones(size_bytes // 4, dtype=np.float32)  # written once, so every page is resident
    slices = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            sum(pool.map(np.sum, slices))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="ov-int4+group_size=32+all_layers,ov-int4")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default=None, help="a saved bench results file instead of a run")
    args = parser.parse_args()

    if args.results:
        results = bench.load(args.results)
    else:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        results = bench.run("bundled", variants, new_tokens=args.new_tokens, repeats=args.repeats,
                            quality=False, progress_bar=True)
    one = read_bandwidth(threads=1)
    full = read_bandwidth()
    bandwidth = max(one, full)
    print(f"read bandwidth: {full / 1e9:.1f} GB/s on {len(os.sched_getaffinity(0))} threads, "
          f"{one / 1e9:.1f} GB/s on one (numpy sum over 1 GiB, best of 7)")
    ok = [r for r in results if r.ok and r.decode_tps and r.weights_mb]
    for r in sorted(ok, key=lambda r: -r.decode_tps):
        per_token = r.weights_mb * 1e6
        achieved = per_token * r.decode_tps
        print(f"{r.variant:>12} ({r.engine}): {r.decode_tps:6.1f} tok/s x {per_token / 1e6:6.0f} MB/token "
              f"= {achieved / 1e9:5.1f} GB/s = {achieved / bandwidth:4.0%} of the measured bandwidth "
              f"(limit {bandwidth / per_token:.0f} tok/s)")
    for r in results:
        if not r.ok:
            print(f"{r.variant:>12}: {r.status}: {r.error}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
