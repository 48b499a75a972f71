#!/usr/bin/env bash
# Colab, imitated (make test-colab): a second environment with Colab's stack, set up exactly as every
# notebook's set-up cell sets up Colab, then all seven notebooks under nbval there (on a Gemma 2
# architecture) and the tests of what the stack changes.
#
# Colab (late 2026) runs Python 3.12/3.13, torch 2.11 CUDA, transformers 5, huggingface_hub 2 and
# ipywidgets 7.7.1. This package index has no CPU torch for 3.12+, so: Python 3.11, the CPU torch
# 2.13.0 from this machine's disk, and Colab's transformers/hub/tokenizers/ipywidgets releases (the
# newest 5.x here). numpy is whatever transformers takes (numpy 2.5 has no Python 3.11 build).
# A stand-in google.colab module and COLAB_RELEASE_TAG make the kit and the set-up cell see Colab.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VENV=${COLAB_VENV:-.venv-colab}
OUT=artifacts/colab
COLAB_STACK=(torch==2.13.0 transformers==5.24.0 huggingface_hub==2.4.0 tokenizers==0.23.3
             ipywidgets==7.7.1 ipykernel)
HARNESS=(pytest==9.2.0 nbval==0.11.0 hypothesis==6.170.15)
mkdir -p "$OUT"

# 1. Colab's own packages, and the test harness (Colab has pytest too), in a venv made once.
stamp="$VENV/.colab-stack"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${COLAB_STACK[*]} ${HARNESS[*]}" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "${COLAB_STACK[@]}" "${HARNESS[@]}"
    echo "${COLAB_STACK[*]} ${HARNESS[*]}" > "$stamp"
fi
PY=$VENV/bin/python
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$ROOT/tests/colab_standin" > "$site/google_colab_standin.pth"
export COLAB_RELEASE_TAG=release-colab-imitation
export GEMMA_WIDGETS_SOURCE=$ROOT        # the set-up cell installs this checkout, not the repository
export GEMMA_WIDGETS_CACHE=${GEMMA_WIDGETS_CACHE_COLAB:-$HOME/.cache/gemma_widgets-colab}  # converted by transformers 5

# 2. What the set-up cells do on Colab: notebook 01's set-up cell, then the extras 04 and 07 install.
"$PY" -m pip uninstall -q -y gemma_widgets bitsandbytes openvino openvino-genai openvino-tokenizers \
    2>/dev/null || true
"$PY" -m pip freeze --exclude-editable | sort > "$OUT/freeze-before.txt"
"$PY" - "$OUT/pip-seconds.txt" <<'PY'
import subprocess, sys, time
import nbformat
cell = next(c for c in nbformat.read("notebooks/01_pipeline.ipynb", 4).cells if c.cell_type == "code")
pip_seconds, run = 0.0, subprocess.run
def timed(*args, **kwargs):  # the set-up cell's pip install, timed apart for benchmarks/cold_start.py
    global pip_seconds
    start = time.perf_counter()
    try:
        return run(*args, **kwargs)
    finally:
        pip_seconds += time.perf_counter() - start
subprocess.run = timed
exec(compile(cell.source, "set-up cell", "exec"))
subprocess.run = run
open(sys.argv[1], "w").write(f"{pip_seconds:.1f}")
from gemma_widgets.course.environment import install_extras
assert not any(install_extras("openvino", "bnb").values()), "an extra could not be installed"
PY
"$PY" -m pip freeze --exclude-editable | sort > "$OUT/freeze-after.txt"
diff "$OUT/freeze-before.txt" "$OUT/freeze-after.txt" > "$OUT/freeze.diff" || true
echo "== what the set-up changed (pip freeze before -> after):"
cat "$OUT/freeze.diff"
kept() {  # fails if a Colab package differs between two freezes
    "$PY" - "$1" "$2" <<'PY'
import sys
from gemma_widgets.course.environment import COLAB_PACKAGES
def pins(path):
    lines = [line.strip() for line in open(path) if "==" in line]
    return {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in lines}
before, after = pins(sys.argv[1]), pins(sys.argv[2])
replaced = [f"{p} {before.get(p)} -> {after.get(p)}" for p in COLAB_PACKAGES if before.get(p) != after.get(p)]
assert not replaced, f"Colab's packages were replaced: {replaced}"
print("Colab's packages kept:", ", ".join(f"{p} {before[p]}" for p in COLAB_PACKAGES))
PY
}
kept "$OUT/freeze-before.txt" "$OUT/freeze-after.txt"

# 3. What the stack changes, on Colab's stack: every notebook on a Gemma 2 architecture (the tiny random
# one: a Colab GPU learner's gemma-2-2b-it takes the same code paths, HybridCache's replacement and
# soft-capping included), and the tests of the code that touches transformers or ipywidgets, with the
# bundled model's conversion by transformers 5 (test_bundled: the first thing a Colab learner runs).
# Not here: tests of plain-Python code (files, transcripts, servers, terminal), which no release of
# these packages changes, the browser test and the Binder checks; `make test` runs them all.
STACK_TESTS=(tests/test_bundled.py tests/test_templates.py tests/test_models.py tests/test_precisions.py
             tests/test_engines.py tests/test_generation.py tests/test_gemma2.py tests/test_compile.py
             tests/test_chat.py tests/test_arena.py tests/test_dashboard.py tests/test_environment.py
             tests/test_quality.py)
status=0
# A Colab notebook's cold start (issue 29: 01's first token within a minute of the set-up cell): conversion
# steps and first token from empty caches, in fresh processes (~40 s), with the set-up cell's pip time above.
echo "== cold start (the set-up cell's pip install of the kit took $(cat "$OUT/pip-seconds.txt") s):"
"$PY" benchmarks/cold_start.py --pip-seconds "$(cat "$OUT/pip-seconds.txt")" --json "$OUT/cold_start.json" || status=$?
# The bundled models converted (and merged) by transformers 5 first, in a process of their own: 02 asks the
# base and the chat model the same question whatever GEMMA_MODEL is, and converting inside a kernel held to
# Binder's 2 GB peaks over it (2.1 GB); test_bundled below needs them anyway. On Colab itself (12 GB) 01 converts.
"$PY" -m gemma_widgets prepare >/dev/null || status=$?
GEMMA_MODEL=${COLAB_NOTEBOOK_MODEL:-tiny-random-gemma2} "$PY" -m pytest -p no:cacheprovider notebooks \
    "$@" || status=$?
"$PY" -m pytest -p no:cacheprovider "${STACK_TESTS[@]}" -m "not browser" --durations=10 "$@" || status=$?
"$PY" -m pip freeze --exclude-editable | sort > "$OUT/freeze-end.txt"
kept "$OUT/freeze-before.txt" "$OUT/freeze-end.txt"   # the notebooks' own installs kept them too
exit $status
