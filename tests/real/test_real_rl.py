"""DPO and GRPO on SmolLM2: a few tiny steps each, on real weights, with the metrics and warnings a user sees.

DPO prefers the teacher's correct trace to one with a slip (a wrong boxed answer). GRPO samples SmolLM2 as
it comes: it has never produced <think>, so with the Phi-4 reward the run warns that the reward would pay
it for not stopping, both at the start (the tokens are new) and after the first step (no sample has a
valid think block).
"""

from __future__ import annotations

import math

import pytest
from safetensors import safe_open
from smollm2_data import metrics

from thinktune.config import load_config
from thinktune.recipes import dpo, grpo

pytestmark = pytest.mark.real


def overrides(**values) -> list[str]:
    return [f"{k}={v}" for k, v in {"log.log_every": 1, "log.save_every": 0, "log.progress": "false",
                                    **values}.items()]


def max_change(before_dir, after_dir, name: str) -> float:
    with safe_open(str(before_dir / "model.safetensors"), "pt") as a, \
            safe_open(str(after_dir / "model.safetensors"), "pt") as b:
        return (a.get_tensor(name) - b.get_tensor(name)).abs().max().item()


def test_dpo_prefers_correct_traces_and_moves_the_weights(smollm2_dir, data, tmp_path):
    out = tmp_path / "dpo"
    summary = dpo.run(load_config(dpo.DPOConfig, None, overrides(**{
        "model.path": smollm2_dir, "data.train": data / "pairs.jsonl", "data.max_seq_len": 128, "optim.lr": 1e-5,
        "beta": 0.1, "batch_size": 4, "micro_batch_size": 2, "max_steps": 3, "output_dir": out})))
    assert summary["steps"] == 3
    rows = [r for r in metrics(out) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isfinite(r["train/loss"]) and 0 <= r["train/rewards/accuracies"] <= 1
        assert math.isfinite(r["train/rewards/margins"])
    # Step 1 runs the policy at the reference: every implicit reward is 0, so the loss is exactly log 2.
    assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[0]["train/rewards/margins"] == pytest.approx(0, abs=1e-4)
    # After two updates on these preferences the policy favours the chosen traces over the reference's view.
    assert rows[-1]["train/rewards/margins"] > 0 and rows[-1]["train/loss"] < math.log(2)
    assert max_change(smollm2_dir, out / "final", "model.layers.0.self_attn.q_proj.weight") > 0


GRPO_TINY = {"prompts_per_step": 2, "sampling.n": 4, "sampling.max_new_tokens": 32, "micro_batch_size": 8,
             "optim.lr": 1e-5, "optim.warmup_steps": 1, "beta": 0.01, "max_steps": 2, "dump_every": 0,
             "scale_reward_to_context": "true"}
GRPO_METRICS = ("rollout/reward_mean", "rollout/accuracy", "rollout/length_mean", "update/kl", "update/entropy",
                "time/generate", "time/update", "train/lr")


@pytest.mark.parametrize("lora_r", [0, 8], ids=["full", "lora"])
def test_grpo_steps_log_and_warn_about_the_unformatted_model(smollm2_dir, data, tmp_path, capsys, lora_r):
    out = tmp_path / "grpo"
    grpo.run(load_config(grpo.GRPOConfig, None, overrides(**{
        "model.path": smollm2_dir, "model.lora.r": lora_r, "data.prompts": data / "prompts.jsonl",
        "output_dir": out, **GRPO_TINY})))
    printed = capsys.readouterr().out
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in GRPO_METRICS:
            assert math.isfinite(r[key]), (r["step"], key)
        assert 1 <= r["rollout/length_mean"] <= 32 and 0 <= r["rollout/accuracy"] <= 1
    # The reference is the starting model: step 1's update sees KL 0; step 2 samples a moved policy.
    assert rows[0]["update/kl"] == pytest.approx(0, abs=1e-6) and rows[1]["update/kl"] > 0
    assert "[grpo] warning: the model has never seen <think> (thinktune just added it)" in printed
    assert "[grpo] warning: only 0 of the first step's 8 samples have a valid think block" in printed
    assert max_change(smollm2_dir, out / "final", "model.layers.0.self_attn.q_proj.weight") > 0
    assert (out / "final" / "adapter").is_dir() == bool(lora_r)
    # A full run moves every weight, the norms too; LoRA moves only the adapted linears (merged in the export).
    norm_moved = max_change(smollm2_dir, out / "final", "model.layers.0.input_layernorm.weight")
    assert (norm_moved > 0) == (lora_r == 0), norm_moved
