# The two Quickstart commands: `make lab` (open the course) and `make test` (run every test).
# Both create .venv on first use and reinstall only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test test-gemma2 test-colab notebooks install prepare chromium

# Jupyter refuses to run as root (a container, a cloud VM) unless asked.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

lab: prepare
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) notebooks/

test: prepare
	$(PY) -m pytest

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

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -e .
	touch $(STAMP)

# Converts the bundled Gemma 3 270M once (about a minute); later runs find it cached.
prepare: $(STAMP)
	$(PY) -m gemma_widgets prepare

# Debian's Chromium for the real-browser test (tests/test_browser.py drives it with Playwright;
# Playwright's own browser download is never used). .ci/run installs it before `make test`.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
