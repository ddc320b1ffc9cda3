"""A thinktune checkpoint under transformers 4.x, which many vLLM and lm-eval installs still pin (docs/interop.md).

The test makes a throwaway virtual environment, installs ``transformers<5``, ``tokenizers`` and ``jinja2`` (for
chat templates) into it with pip, and in a subprocess there loads the tokenizer of two checkpoints with
``AutoTokenizer``: the demo's model as ``thinktune build-model`` writes it, and a tokenizer saved the way
every training run saves it, with a system prompt written into its template. Under 4.x each must load, encode
``<think>``/``</think>`` as the single ids thinktune uses, keep them under ``decode(skip_special_tokens=True)``,
and render a question exactly as thinktune's ``evaluate`` does. Without a route to the package registry the test
is skipped with pip's reason. About 15 s with a warm pip cache, most of it the install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from thinktune.config import ModelConfig
from thinktune.data.chat import render_prompt
from thinktune.modeling import models
from thinktune.train.checkpoint import save_pretrained_atomic

pytestmark = [pytest.mark.slow, pytest.mark.integration]

QUESTION = [{"role": "user", "content": "What is 2+3?"}]
REPLY = "<think>2+3=5</think>\\boxed{5}"
# Runs under transformers 4.x: what it makes of a checkpoint's tokenizer, as one JSON line.
PROBE = """
import json, sys
import transformers
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(sys.argv[1])
question, reply = json.loads(sys.argv[2]), sys.argv[3]
ids = tok(reply, add_special_tokens=False).input_ids
prompt = tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
print(json.dumps({"version": transformers.__version__, "class": type(tok).__name__, "ids": ids,
                  "think_ids": tok.convert_tokens_to_ids(["<think>", "</think>"]),
                  "decoded": tok.decode(ids, skip_special_tokens=True), "prompt": prompt,
                  "prompt_ids": tok(prompt, add_special_tokens=False).input_ids}))
"""
# What pip prints when it cannot reach the registry (then the test skips; any other failure fails it).
UNREACHABLE = ("No matching distribution", "NewConnectionError", "Network is unreachable", "Name or service not known",
               "Temporary failure in name resolution", "ProxyError", "ConnectTimeout", "Max retries exceeded")


@pytest.fixture(scope="module")
def python4(tmp_path_factory) -> Path:
    """The interpreter of a fresh virtual environment with transformers 4.x; skips where pip cannot get it."""
    venv = tmp_path_factory.mktemp("transformers4") / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"python -m venv cannot make a virtual environment here: {made.stderr.strip()[-300:]}")
    python = venv / "bin" / "python"
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "transformers<5",
           "tokenizers", "jinja2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode:
        why = done.stderr.strip()[-500:]
        if any(s in done.stderr for s in UNREACHABLE):
            pytest.skip(f"pip cannot reach the package registry to install transformers<5: {why}")
        pytest.fail(f"pip install transformers<5 failed: {why}")
    return python


def probe(python: Path, path: Path) -> dict:
    done = subprocess.run([str(python), "-c", PROBE, str(path), json.dumps(QUESTION), REPLY],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def briefed(small_world, tmp_path_factory) -> Path:
    """The demo model's tokenizer as a training run with model.system_prompt="Be brief." saves it (with the
    model's config beside it, so that thinktune takes the directory for a model; no weights)."""
    tok = models.load_tokenizer(ModelConfig(path=str(small_world / "model"), system_prompt="Be brief."))
    path = tmp_path_factory.mktemp("briefed") / "final"
    save_pretrained_atomic(None, tok, path)
    shutil.copy2(small_world / "model" / "config.json", path / "config.json")
    return path


@pytest.mark.parametrize("which", ["build-model", "trained"])
def test_a_checkpoints_tokenizer_loads_encodes_and_decodes_think_under_transformers_4(
        python4, small_world, briefed, which: str) -> None:
    path = small_world / "model" if which == "build-model" else briefed
    got = probe(python4, path)
    assert got["version"].startswith("4.") and got["class"] == "PreTrainedTokenizerFast"
    ours = AutoTokenizer.from_pretrained(path)  # transformers 5, as thinktune runs
    think_ids = ours.convert_tokens_to_ids(["<think>", "</think>"])
    assert got["think_ids"] == think_ids and got["ids"] == ours(REPLY, add_special_tokens=False).input_ids
    assert got["ids"][0] == think_ids[0] and got["ids"].count(think_ids[1]) == 1  # one id each
    assert got["decoded"] == REPLY  # skip_special_tokens=True keeps the think tags
    tok = models.load_tokenizer(ModelConfig(path=str(path)))  # evaluate's and serve's defaults
    assert got["prompt"] == tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert got["prompt_ids"] == render_prompt(tok, QUESTION)
    if which == "trained":
        assert got["prompt"].startswith("<|im_start|>system<|im_sep|>Be brief.<|im_end|>")
