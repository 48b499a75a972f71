#!/usr/bin/env bash
# Builds llama-cpp-python once per (version, build flags, Python, machine type) into the kit's own wheel
# folder and prints that folder; `pip install --find-links <folder>` then takes the wheel from there.
#
# Why a folder of its own: pip caches a wheel it built from source by package and version, not by
# CMAKE_ARGS, so a build with special flags in pip's shared cache is reused by every later plain
# `pip install llama-cpp-python` on the machine, in any environment. This build runs with
# --no-cache-dir and never reaches that cache.
#
# Why these flags (the default LLAMA_CMAKE_ARGS): a portable x86-64-v3 build (AVX2, FMA, F16C, BMI2; no AVX-512,
# no AMX). A native build uses what the build machine reports, AMX included, which a VM may report
# and refuse (SIGILL); an AVX-512 build dies on every CPU without it (Intel client chips since 12th
# gen, AMD before Zen 4). ggml's runtime dispatch (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS) would pick
# kernels by cpuid, but compiles the CPU backend once per variant (about ten on x86), several times
# the build on two cores. Decoding this model is bound by memory bandwidth, so AVX-512 buys little
# (benchmarks/llamacpp_build.py measures it). A CPU without AVX2 is caught by the kit's probe
# (gemma_widgets' llama.cpp check runs a decode in a child process first) and reported unavailable.
#
# Used by `make install` / `make install-llamacpp` and by Binder's postBuild:
#   PY=.venv/bin/python bash tools/llamacpp_wheel.sh   # prints the folder holding the wheel
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:?set PY to the python of the environment to build for}
PIN=${LLAMA_PIN:-$(grep -E '^llama-cpp-python' requirements.txt)}
ARGS=${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF}
ROOT=${GEMMA_WIDGETS_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma_widgets/wheels}
tag=$("$PY" -c 'import sys, platform; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')
key=$(printf '%s\n%s\n%s\n' "$PIN" "$ARGS" "$tag" | sha256sum | cut -c1-16)
dest="$ROOT/llama-cpp-$key"
if ! ls "$dest"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    mkdir -p "$ROOT"
    work=$(mktemp -d "$ROOT/.build-XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "building $PIN for $tag with: $ARGS (about 8 minutes on two cores, once)" >&2
    start=$SECONDS
    CMAKE_ARGS="$ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$PY" -m pip wheel --quiet --no-cache-dir --no-deps --wheel-dir "$work" "$PIN" >&2
    printf '%s\n%s\n%s\n' "$PIN" "$ARGS" "$tag" > "$work/BUILD-FLAGS.txt"
    echo "built in $((SECONDS - start)) s" >&2
    rm -rf "$dest"
    mv "$work" "$dest"   # atomic: an interrupted build leaves only a .build-* folder behind
    trap - EXIT
fi
echo "$dest"
