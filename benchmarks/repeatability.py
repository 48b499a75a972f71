"""Repeatability: the spread of decode tok/s across repeats, per variant, against its median.

Target (issue 6): on an idle machine, ``(p90 - p10) / median`` of decode tok/s within 5% for
every variant. Run it on an idle machine (or pass a saved results file):

    .venv/bin/python benchmarks/repeatability.py                               # every variant here
    .venv/bin/python benchmarks/repeatability.py --precisions bf16,ov-int4 --repeats 10
    .venv/bin/python benchmarks/repeatability.py --results results.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from gemma_widgets import bench

TARGET = 0.05


def machine_noise(runs: int = 10, seconds: float = 0.5) -> float:
    """The p10-p90 spread of a fixed torch workload timed ``runs`` times: this machine's own floor.

    One run is a fixed number of (1 x 640) @ (640 x 65536) float32 products, the shape of a
    quarter of the bundled model's output layer, sized to take about ``seconds``. No harness can
    report a decode speed steadier than the machine runs the same arithmetic.
    """
    import torch

    x, w = torch.randn(1, 640), torch.randn(640, 65536)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        x @ w
        calls += 1
    speeds = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            x @ w
        speeds.append(calls / (time.perf_counter() - start))
    deciles = statistics.quantiles(speeds, n=10, method="inclusive")
    return (deciles[-1] - deciles[0]) / statistics.median(speeds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default=None, help="comma-separated (default: all that run here)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--results", default=None, help="a saved bench results file instead of a run")
    parser.add_argument("--out", default=None, help="save the run's results (.csv/.json)")
    args = parser.parse_args()

    if args.results:
        results = bench.load(args.results)
    else:
        variants = [v.strip() for v in args.precisions.split(",")] if args.precisions else None
        results = bench.run("bundled", variants, new_tokens=args.new_tokens, repeats=args.repeats,
                            quality=False, progress_bar=True)
        if args.out:
            bench.save(results, args.out)
    print(bench.format_table(results))
    runs = 10
    print(f"this machine's own floor: a fixed matrix-vector workload timed {runs} times spreads "
          f"{machine_noise(runs):.1%} (p10-p90)")
    passed = True
    for r in results:
        if not r.ok or r.decode_spread is None:
            print(f"{r.variant:>32}: no figures ({r.status}: {r.error})")
            continue
        verdict = "PASS" if r.decode_spread <= TARGET else "FAIL"
        passed &= verdict == "PASS"
        print(f"{r.variant:>32}: median {r.decode_tps:6.1f} tok/s, p10-p90 {r.decode_tps_p10:.1f}-"
              f"{r.decode_tps_p90:.1f}, spread {r.decode_spread:5.1%} -> {verdict} (target <= {TARGET:.0%})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
