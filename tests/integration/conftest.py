"""Fixtures shared by the scale-out tests (distributed, LoRA, GPU options)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinktune.data.synth import SynthConfig
from thinktune.data.synth import run as run_synth
from thinktune.modeling import build_model


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
