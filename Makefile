# The two Quickstart commands: `make lab` (open the course) and `make test` (run every test).
# Both create .venv on first use and reinstall only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test unit lint test-gemma2 test-colab notebooks outputs book install install-llamacpp prepare chromium

# Jupyter refuses to run as root (a container, a cloud VM) unless asked.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

lab: prepare
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) notebooks/

test: prepare
	$(PY) -m pytest

# The fast tests only (under two minutes): the kit's logic on fake engines (tests/fakes.py); no model is
# loaded (not even the tiny random Gemma 2), no compile or export, no notebooks, no browser.
unit: $(STAMP)
	$(PY) -m pytest -m "not integration and not browser and not slow and not model" tests

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade) on everything, mypy on the package, and
# import-linter's contracts (pyproject.toml): the package's layers, and no widget toolkit below the views.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

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

# The course as a website in build/book/ (open build/book/index.html), in seconds and offline: the README's
# course map, every notebook with its stored outputs (no cell runs), the cheat sheet, the instructor guide and
# the solutions. nbconvert, already installed, rather than jupyter-book 2, which needs Node (mystmd) and fetches
# its theme from the network; the pages carry no JavaScript and load nothing remote (see tools/build_book.py).
book: $(STAMP)
	$(PY) tools/build_book.py

install: $(STAMP)

# llama-cpp-python builds llama.cpp from source (about 4 minutes on two cores, once per machine):
# tools/llamacpp_wheel.sh builds a portable x86-64-v3 wheel (AVX2, no AVX-512, no AMX: it runs on any
# CPU of the last decade, and one it does not run on is reported by the kit's child-process probe)
# into the kit's own wheel folder, never into pip's shared cache (see the script for why).
LLAMA_PIN := $(shell grep -E '^llama-cpp-python' requirements.txt)
LLAMA_WHEELS = PY=$(PY) bash tools/llamacpp_wheel.sh

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	wheels=$$($(LLAMA_WHEELS)) && $(PY) -m pip install --quiet --find-links "$$wheels" -r requirements.txt -e .
	touch $(STAMP)

# Rebuild llama.cpp for this machine (the kit's message when its probe finds a llama-cpp-python that
# dies here, for example one built elsewhere for AVX-512) and install it in .venv.
install-llamacpp: $(STAMP)
	wheels=$$($(LLAMA_WHEELS)) && $(PY) -m pip install --quiet --force-reinstall --no-deps --no-index \
		--find-links "$$wheels" '$(LLAMA_PIN)'

# Converts the bundled Gemma 3 270M once (about 15 s), and compiles what notebook 05 compiles
# into the kit's inductor cache, as Binder's postBuild does (minutes, once); later runs find both cached.
prepare: $(STAMP)
	$(PY) -m gemma_widgets prepare --compile

# Debian's Chromium for the real-browser test (tests/test_browser.py drives it with Playwright;
# Playwright's own browser download is never used). .ci/run installs it before `make test`.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
