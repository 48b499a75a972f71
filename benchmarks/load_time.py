"""How long the cached bundled model takes to load, in fresh Python processes.

Each run is a new process (as a new notebook kernel is) that times two things apart:

* imports: ``torch`` and the transformers classes ``load_model`` needs (a fixed cost of any
  program that uses transformers; nothing of the kit's cache is read yet);
* load: ``load_model()`` itself, reading the converted folder from the cache (tokenizer and
  safetensors weights) and building the model.

Target (issue 2): the load from the cache in at most 5 s. Prepare the cache first
(``python -m gemma_widgets prepare``); the first run after a reboot also reads the files from disk.

    .venv/bin/python benchmarks/load_time.py                   # bundled, default precision, 5 runs
    .venv/bin/python benchmarks/load_time.py --precision ov-int4 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
start = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
imported = time.perf_counter()
from gemma_widgets import load_model
lm = load_model(sys.argv[1], sys.argv[2] or None)
loaded = time.perf_counter()
print(json.dumps({"imports_s": imported - start, "load_s": loaded - imported, "total_s": loaded - start,
                  "precision": lm.precision, "engine": lm.engine}))
"""


def run_once(model: str, precision: str | None) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, model, precision or ""], capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the child process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--precision", default=None, help="default: the kit's (auto)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--target", type=float, default=5.0, help="seconds allowed for the load")
    args = parser.parse_args(argv)

    runs = [run_once(args.model, args.precision) for _ in range(args.runs)]
    print(f"{args.model} ({runs[0]['precision']}, {runs[0]['engine']}), {args.runs} fresh processes:")
    for key, label in (("imports_s", "import torch + transformers"), ("load_s", "load_model() from the cache"),
                       ("total_s", "both")):
        values = [r[key] for r in runs]
        print(f"  {label:28s} median {statistics.median(values):5.2f} s  "
              f"(min {min(values):.2f}, max {max(values):.2f})")
    worst = max(r["load_s"] for r in runs)
    print(f"{'PASS' if worst <= args.target else 'MISS'}  load from the cache <= {args.target:.0f} s "
          f"in every run (slowest {worst:.2f} s)")
    return 0 if worst <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
