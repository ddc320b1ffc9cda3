"""Shared fixtures: a character tokenizer and a tiny random Phi3 model, built here rather than downloaded.

Both are session-scoped because building a model costs about a second; tests that mutate a tokenizer
(``chat_format.apply``) build their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
