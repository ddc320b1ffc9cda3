"""Shared fixtures: a character tokenizer and a tiny random Phi3 model, built here rather than downloaded, and a
small synthetic world (prompts, SFT traces, pairs and a tiny model built by thinktune's own verbs) for recipe runs.

Both are session-scoped because building a model costs about a second; tests that mutate a tokenizer
(``chat_format.apply``) build their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinktune.data.synth import SynthConfig
from thinktune.data.synth import run as run_synth
from thinktune.modeling import build_model
from thinktune.modeling.models import train_char_tokenizer

# Every character the tests render (questions, answers, roles, think tags) appears here, so no test sees
# an <unk>; the role words become single word-level tokens.
CORPUS = [
    "user assistant system",
    "What is 2+3? 7*8 1+1 Be brief. Q A",
    "<think>2+3=5</think>\\boxed{5} 0123456789 =+-*/(){}?.,:!",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

TINY_PHI3 = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=64,
                 max_position_embeddings=128)


@pytest.fixture(autouse=True)
def cpu_unless_marked_gpu(request, monkeypatch):
    """Runs pick CPU in every test not marked ``gpu``, also on a machine with a GPU: the tests' numbers and
    tolerances are the CPU's (float32, deterministic kernels), and the 2-rank tests run gloo on CPU. Tests
    marked ``gpu`` pick the GPU, whatever the environment says."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("THINKTUNE_DEVICE", "cpu")
    else:  # a THINKTUNE_DEVICE=cpu exported for other runs would turn the GPU tests' CUDA away
        monkeypatch.delenv("THINKTUNE_DEVICE", raising=False)


@pytest.fixture(scope="session")
def char_tokenizer():
    return train_char_tokenizer(CORPUS)


@pytest.fixture(scope="session")
def tiny_phi3(char_tokenizer):
    from thinktune.modeling.models import build_tiny_model

    return build_tiny_model("phi3", char_tokenizer, **TINY_PHI3).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer, tiny_phi3) -> Path:
    """The tiny model and tokenizer saved as a thinktune checkpoint (plain HF layout)."""
    from thinktune.train.checkpoint import save_pretrained_atomic

    path = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained_atomic(tiny_phi3, char_tokenizer, path)
    return path


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """64 synthetic prompts with SFT traces, 16 preference pairs, and a tiny Phi3 model, built once."""
    root = tmp_path_factory.mktemp("small_world")
    run_synth(SynthConfig(n_train=64, n_heldout_per_level=2, rollout_prompts=0, output_dir=str(root / "data")))
    build_model.run(build_model.BuildModelConfig(
        corpus=str(root / "data" / "sft_cot.jsonl"), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_position_embeddings=160, output_dir=str(root / "model")))
    prompts = [json.loads(line) for line in (root / "data" / "train_prompts.jsonl").read_text().splitlines()]
    pairs = [{"id": p["id"], "prompt": p["prompt"], "chosen": f"<think>so</think>\\boxed{{{p['answer']}}}",
              "rejected": f"\\boxed{{{p['answer']}1}}"} for p in prompts[:16]]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root
