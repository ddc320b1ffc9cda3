"""LoRA (``model.lora.r > 0``) for every stage: only adapters train, the export is merged, resume is exact.

"Only adapters train" is checked on the exported model: every weight equals the starting base exactly,
except the adapted linears, which equal base + (alpha / r) * B @ A with the saved adapter's A and B (to
1e-6, fp32 rounding of one matmul), and B is non-zero, so the adapters did train.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from thinktune.config import load_config
from thinktune.recipes import dpo, grpo, sft

pytestmark = pytest.mark.integration
LORA = {"model.lora.r": 4, "model.lora.alpha": 8}


def args(**values) -> list[str]:
    common = {"model.system_prompt": "", "log.log_every": 1, "log.progress": "false", **LORA}
    return [f"{k}={v}" for k, v in {**common, **values}.items()]


def assert_only_adapters_changed(base_dir: Path, out: Path) -> None:
    base = load_file(base_dir / "model.safetensors")
    merged = load_file(out / "model.safetensors")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert merged.keys() == base.keys() and all("lora_" in k for k in adapter)
    scale = LORA["model.lora.alpha"] / LORA["model.lora.r"]
    adapted = 0
    for name, weight in base.items():
        prefix = "base_model.model." + name.removesuffix(".weight")
        if f"{prefix}.lora_A.weight" not in adapter:
            assert torch.equal(merged[name], weight), f"{name} is not an adapted weight, yet it changed"
            continue
        a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
        assert b.abs().max() > 0, f"{name}: the adapter never trained"
        torch.testing.assert_close(merged[name], weight + scale * b @ a, rtol=0, atol=1e-6, msg=name)
        adapted += 1
    assert adapted == 8  # qkv, o, gate_up and down in both layers: all-linear minus the head


@pytest.mark.parametrize("merged", [True, False], ids=["merged-checkpoints", "adapter-only-checkpoints"])
def test_lora_sft_trains_only_adapters_and_resumes_exactly(small_world, tmp_path, capsys, merged):
    out = tmp_path / "sft"
    run_args = args(**{"model.path": small_world / "model", "data.train": small_world / "data" / "sft_cot.jsonl",
                       "data.max_seq_len": 160, "optim.lr": 3e-2, "optim.warmup_steps": 1, "batch_size": 8,
                       "micro_batch_size": 4, "max_steps": 4, "log.save_every": 2,
                       "log.lora_merged_checkpoints": str(merged).lower(), "output_dir": out})
    sft.run(load_config(sft.SFTConfig, None, run_args))
    assert_only_adapters_changed(small_world / "model", out / "final")  # the final model is merged either way
    step2 = out / "checkpoints" / "step-2"
    assert (step2 / "adapter" / "adapter_model.safetensors").is_file()
    if merged:
        AutoModelForCausalLM.from_pretrained(step2)  # intermediate ones are plain HF too
    else:
        assert not (step2 / "model.safetensors").exists() and not (step2 / "config.json").exists()

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "final")
    capsys.readouterr()
    sft.run(load_config(sft.SFTConfig, None, [*run_args[:-1], f"output_dir={resumed}"]))
    assert "(step 2)" in capsys.readouterr().out
    losses = [[r["train/loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
              for d in (out, resumed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert losses[0][-1] != losses[0][1]  # steps 3-4 trained on, so the comparison covers updates


def test_lora_dpo_trains_only_adapters_against_the_disabled_adapter_reference(small_world, tmp_path):
    out = tmp_path / "dpo"
    summary = dpo.run(load_config(dpo.DPOConfig, None, args(**{
        "model.path": small_world / "model", "data.train": small_world / "pairs.jsonl", "optim.lr": 3e-2, "beta": 0.5,
        "batch_size": 8, "micro_batch_size": 4, "max_steps": 3, "log.save_every": 0, "output_dir": out})))
    assert summary["steps"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The reference is the base: before any update the policy equals it, so step 1's margin is exactly 0.
    assert rows[0]["train/rewards/margins"] == 0 and rows[-1]["train/rewards/margins"] > 0
    assert_only_adapters_changed(small_world / "model", out / "final")


def test_lora_grpo_trains_only_adapters(small_world, tmp_path):
    out = tmp_path / "grpo"
    grpo.run(load_config(grpo.GRPOConfig, None, args(**{
        "model.path": small_world / "model", "data.prompts": small_world / "data" / "train_prompts.jsonl",
        "prompts_per_step": 4, "sampling.n": 4, "sampling.max_new_tokens": 8, "optim.lr": 3e-2,
        "optim.warmup_steps": 1, "beta": 0.05, "gamma": 0.01, "max_steps": 2, "log.save_every": 0,
        "dump_every": 0, "output_dir": out})))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["update/kl"] == pytest.approx(0, abs=1e-9) and rows[1]["update/kl"] > 0  # ref = base
    assert_only_adapters_changed(small_world / "model", out / "final")
