"""Two llama.cpp builds side by side: the kit's portable one (installed) against another, e.g. AVX-512.

The kit builds llama-cpp-python for x86-64-v3 (AVX2; ``tools/llamacpp_wheel.sh``) so that it runs on
any recent CPU. This measures what that costs on a CPU that has more (AVX-512): each round runs both
builds in fresh processes, in alternating order, on the bundled GGUF, and times whole
``generate`` calls of ``--new-tokens`` greedy tokens (prefill included, what a user waits for).
It prints each round's tok/s and the median ratio (other / installed). Make the other build with:

    PY=.venv/bin/python LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \\
        -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" \\
        bash tools/llamacpp_wheel.sh                               # prints the wheel's folder
    .venv/bin/python -m pip install --no-deps --target /tmp/llama-avx512 <folder>/llama_cpp_python-*.whl
    .venv/bin/python benchmarks/llamacpp_build.py --other /tmp/llama-avx512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from gemma_widgets.offline.bundled import bundled_gguf

#: One fresh process: load, one warm-up call, then ``repeats`` timed calls; prints JSON.
TIMED = """
import json, sys, time
import llama_cpp
from llama_cpp import Llama
path, new_tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=512, n_threads=len(__import__("os").sched_getaffinity(0)), verbose=False)
prompt = llm.tokenize(b"Write a short paragraph about the history of the bicycle.")

def call():
    llm.reset()
    start = time.perf_counter()
    for count, _ in enumerate(llm.generate(prompt, temp=0.0, top_k=1), start=1):
        if count == new_tokens:
            break
    return new_tokens / (time.perf_counter() - start)

call()
print(json.dumps({"file": llama_cpp.__file__, "tps": [call() for _ in range(repeats)]}))
"""


def measure(pythonpath: str | None, args: argparse.Namespace) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", TIMED, str(bundled_gguf()), str(args.new_tokens),
                           str(args.repeats)], env=env, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    return statistics.median(result["tps"]), result["file"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="a folder holding another llama_cpp package (pip --target)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ratios = []
    for round_ in range(args.rounds):
        order = [None, args.other] if round_ % 2 == 0 else [args.other, None]
        tps = {}
        for path in order:
            tps[path], where = measure(path, args)
            print(f"  round {round_ + 1}: {'other' if path else 'installed':9s} {tps[path]:6.1f} tok/s  ({where})")
        ratios.append(tps[args.other] / tps[None])
    print(f"other / installed, whole-call tok/s: median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
