# thinktune: the two commands a new user runs. Each creates .venv when missing and installs what it needs.
#   make demo   the whole recipe on the embedded math world (CPU, no downloads)
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and on its own so that a CPU machine gets the CPU build; on a GPU machine use
# e.g. `make TORCH=torch` (torch >= 2.8; CI runs 2.13.0).
TORCH ?= torch==2.13.0

.PHONY: demo demo-quick test lint clean bench-grpo

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

# GRPO step time against TRL's GRPOTrainer; trl is installed only in this benchmark's own environment.
.venv-bench/.installed: pyproject.toml
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -c "import torch" 2>/dev/null || .venv-bench/bin/pip install --quiet "$(TORCH)"
	.venv-bench/bin/pip install --quiet -e . trl
	touch $@

bench-grpo: .venv-bench/.installed
	.venv-bench/bin/python benchmarks/grpo_step.py
