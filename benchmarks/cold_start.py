"""A Colab notebook's cold start: how long from an empty kit cache to notebook 01's first token.

Colab gives each notebook a fresh runtime, so every notebook pays its set-up cell (pip install of the
kit) and the conversion of the bundled model. Two fresh processes, each with its own empty
``GEMMA_WIDGETS_CACHE``, time:

* prepare: ``python -m gemma_widgets prepare``'s work, step by step (assemble the GGUF from the
  package's chunks, build the tokenizer, de-quantize and save the base model, merge the chat adapter);
* notebook 01: its first cells as they run once pip is done (``setup()``, ``load_model("bundled")``,
  which converts on the way, and ``pipeline(...)`` with 01's messages) up to the first generated token.

Each figure counts from the moment the process was started. pip's own time (download and install)
is the caller's to measure: pass it as ``--pip-seconds`` or ``$COLD_START_PIP_SECONDS`` and the table
adds it. Target (issue 29): the conversion at most 15 s, 01's first token at most 60 s after the
set-up cell starts, pip's download apart.

    .venv/bin/python benchmarks/cold_start.py
    .venv/bin/python benchmarks/cold_start.py --pip-seconds 41 --json artifacts/cold_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PREPARE = """
import json, time
stamps = {"started": time.time()}
from gemma_widgets.offline import bundled
import transformers
stamps["imports"] = time.time()
bundled.bundled_gguf()
stamps["assemble GGUF"] = time.time()
bundled.prepare_tokenizer()
stamps["tokenizer"] = time.time()
bundled.prepare_bundled_base()
stamps["de-quantize and save weights"] = time.time()
bundled.prepare_bundled()
stamps["merge chat adapter"] = time.time()
print("STAMPS" + json.dumps(stamps))
"""

NOTEBOOK_01 = """
import json, time
stamps = {"started": time.time()}
from gemma_widgets.course.environment import setup
env = setup()
stamps["setup()"] = time.time()
from gemma_widgets import load_model
lm = load_model("bundled")
stamps["load_model('bundled')"] = time.time()
from transformers import pipeline
from transformers.generation.streamers import BaseStreamer

class FirstToken(BaseStreamer):
    calls = 0
    def put(self, value):
        self.calls += 1
        if self.calls == 2:  # the first call hands over the prompt
            stamps["first generated token"] = time.time()
    def end(self):
        pass

pipe = pipeline("text-generation", model=lm.model, tokenizer=lm.tokenizer)
messages = [{"role": "user", "content": "Who are you? Please, answer in pirate-speak."}]
pipe(messages, max_new_tokens=8, do_sample=False, streamer=FirstToken())
print("STAMPS" + json.dumps(stamps))
"""


def timed_child(code: str, cache: str) -> dict[str, float]:
    """Seconds from the child's start to each of its stamps (in order), its interpreter's start included."""
    env = dict(os.environ, GEMMA_WIDGETS_CACHE=cache, HF_HUB_OFFLINE="1")
    start = time.time()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    end = time.time()
    lines = [line for line in done.stdout.splitlines() if line.startswith("STAMPS")]
    if done.returncode or not lines:
        sys.exit(f"child failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    stamps = json.loads(lines[-1][len("STAMPS"):])
    figures = {name: stamp - start for name, stamp in stamps.items()}
    figures["process exit"] = end - start
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pip-seconds", type=float, default=float(os.environ.get("COLD_START_PIP_SECONDS") or 0),
                        help="the set-up cell's pip install, timed by the caller (default: $COLD_START_PIP_SECONDS)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cold-start-") as prepare_cache:
        prepare = timed_child(PREPARE, prepare_cache)
    with tempfile.TemporaryDirectory(prefix="cold-start-") as notebook_cache:
        notebook = timed_child(NOTEBOOK_01, notebook_cache)

    rows: list[tuple[str, float]] = []
    previous = 0.0
    for name, seconds in prepare.items():
        if name in ("started", "process exit"):
            continue
        rows.append((f"prepare: {name}", seconds - previous))
        previous = seconds
    conversion = prepare["merge chat adapter"] - prepare["imports"]
    rows += [("prepare: conversion (all steps, imports apart)", conversion),
             ("prepare: whole process", prepare["process exit"])]
    rows += [(f"01: {name} (from process start)", notebook[name])
             for name in ("setup()", "load_model('bundled')", "first generated token")]
    if args.pip_seconds:
        rows += [("01: pip install of the kit (set-up cell, timed by the caller)", args.pip_seconds),
                 ("01: first generated token, set-up cell's pip included", args.pip_seconds
                  + notebook["first generated token"])]
    width = max(len(name) for name, _ in rows)
    print(f"{'cold start, empty kit cache, fresh processes':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"prepare": prepare, "notebook_01": notebook, "pip_seconds": args.pip_seconds,
                       "conversion_seconds": conversion}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
