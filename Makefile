# thinktune: the two commands a new user runs. Each creates .venv when missing and installs what it needs.
#   make demo   the whole recipe on the embedded math world (CPU, no downloads)
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and on its own so that a CPU machine gets the CPU build; on a GPU machine use
# e.g. `make TORCH=torch` (any torch >= 2.4 works).
TORCH ?= torch==2.13.0

.PHONY: demo demo-quick test test-all lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/thinktune demo

demo-quick: $(VENV)/.installed
	$(VENV)/bin/thinktune demo --quick

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf runs/demo-quick .pytest_cache
