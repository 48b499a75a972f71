# The two Quickstart commands: `make lab` (open the course) and `make test` (run every test).
# Both create .venv on first use and reinstall only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test unit lint test-gemma2 test-colab notebooks outputs install prepare chromium

# Jupyter refuses to run as root (a container, a cloud VM) unless asked.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

lab: prepare
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) notebooks/

test: prepare
	$(PY) -m pytest

# The fast tests only: fakes and the tiny random Gemma 2, no bundled model, no notebooks, no browser.
unit: $(STAMP)
	$(PY) -m pytest -m "not integration and not browser" tests

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade) on everything, mypy on the package.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The course a second time on a Gemma 2 architecture (the tiny random one), and bench on it: the
# CPU run of benchmarks/gpu_course.sh, which on a GPU runs Gemma 2 2B's shape.
test-gemma2: prepare
	PY=$(PY) bash benchmarks/gpu_course.sh --device cpu

# The same tests and every notebook on Colab's stack (transformers 5, ipywidgets 7.7.1), in
# .venv-colab, after doing what each notebook's set-up cell does on Colab (tools/colab_imitation.sh).
test-colab:
	PYTHON=$(PYTHON) bash tools/colab_imitation.sh

# Rewrite every notebook's set-up cell and the badges from pyproject.toml's Repository URL.
notebooks: $(STAMP)
	$(PY) tools/sync_notebooks.py

# Store every notebook with the outputs of a run on the bundled model, as Binder runs it (after
# `prepare`, as after Binder's postBuild), then write each notebook's time budget from it.
outputs: prepare
	$(PY) tools/store_outputs.py
	$(PY) benchmarks/course_budget.py --write

install: $(STAMP)

# llama-cpp-python builds llama.cpp from source (about 8 minutes on two cores; pip caches the wheel).
# A native build uses every instruction the CPU reports, AMX included, and a VM may report AMX yet not
# grant it (this kind of machine: "Illegal instruction" at the first decode), so build for AVX-512 and
# AVX2 without AMX.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -r requirements.txt -e .
	touch $(STAMP)

# Converts the bundled Gemma 3 270M once (about a minute), and compiles what notebook 05 compiles
# into the kit's inductor cache, as Binder's postBuild does (minutes, once); later runs find both cached.
prepare: $(STAMP)
	$(PY) -m gemma_widgets prepare --compile

# Debian's Chromium for the real-browser test (tests/test_browser.py drives it with Playwright;
# Playwright's own browser download is never used). .ci/run installs it before `make test`.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
