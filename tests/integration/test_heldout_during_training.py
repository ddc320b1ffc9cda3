"""Held-out accuracy during sft, dpo and grpo: a curve at step 0, every ``heldout.every`` steps and the last step,
which leaves training untouched and survives a resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from thinktune.config import load_config
from thinktune.recipes import dpo, grpo, sft
from thinktune.tracking import read_metrics

pytestmark = pytest.mark.integration


def heldout_args(world: Path, out: Path, **extra) -> list[str]:
    """The settings every recipe here shares: the world's 6 held-out problems, 2 samples of up to 24 tokens."""
    args = {"model.path": world / "model", "model.system_prompt": "", "log.log_every": 1, "log.progress": "false",
            "output_dir": out, "heldout.prompts": world / "data" / "heldout_prompts.jsonl", "heldout.every": 2,
            "heldout.sampling.n": 2, "heldout.sampling.max_new_tokens": 24, "heldout.sampling.temperature": 1.0}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def sft_args(world: Path, out: Path, **extra) -> list[str]:
    # data.verify=false: rejection sampling is not what these tests check, and its worker processes cost seconds
    return heldout_args(world, out, **{"data.train": world / "data" / "sft_cot.jsonl", "data.max_seq_len": 160,
                                       "data.verify": "false",
                                       "optim.lr": 3e-3, "optim.warmup_steps": 2, "batch_size": 8,
                                       "micro_batch_size": 8, "max_steps": 5, "log.save_every": 2, **extra})


def curve(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(out / "metrics.jsonl") if "heldout/pass@1" in r}


def check_curve(out: Path, steps: list[int]) -> dict[int, dict]:
    rows = curve(out)
    assert sorted(rows) == steps
    for r in rows.values():
        assert 0 <= r["heldout/pass@1"] <= 100 and r["heldout/pass@1_std"] >= 0, r
        assert r["heldout/maj@2"] >= 0 and r["time/heldout"] > 0, r
        # the world's held-out split has every level, so each gets its own pass@1 ± std
        assert {f"heldout/pass@1/difficulty={d}" for d in (1, 2, 3)} <= r.keys(), r
    return rows


def test_sft_logs_the_curve_without_changing_training_and_resumes_it(small_world, tmp_path):
    out = tmp_path / "sft"
    summary = sft.run(load_config(sft.SFTConfig, None, sft_args(small_world, out)))
    rows = check_curve(out, [0, 2, 4, 5])  # step 0, every 2 steps, and the last
    assert summary["heldout"] == {
        "first": {"step": 0, "pass@1": rows[0]["heldout/pass@1"], "pass@1_std": rows[0]["heldout/pass@1_std"]},
        "last": {"step": 5, "pass@1": rows[5]["heldout/pass@1"], "pass@1_std": rows[5]["heldout/pass@1_std"]}}

    # Sampling draws from its own generator and leaves the model as it found it: the same losses as without.
    plain = tmp_path / "plain"
    sft.run(load_config(sft.SFTConfig, None, sft_args(small_world, plain, **{"heldout.every": 0,
                                                                             "heldout.prompts": ""})))
    losses = [(r["step"], r["train/loss"]) for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert losses == [(r["step"], r["train/loss"]) for r in read_metrics(plain / "metrics.jsonl") if "train/loss" in r]

    # Killed after the step-2 checkpoint: the resumed run keeps step 2's evaluation (made before that checkpoint),
    # does not repeat it, and its later ones match the uninterrupted run's (the same seed at every evaluation).
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    again = sft.run(load_config(sft.SFTConfig, None, sft_args(small_world, resumed)))
    assert [r["step"] for r in read_metrics(resumed / "metrics.jsonl") if "heldout/pass@1" in r] == [0, 2, 4, 5]
    for step in (4, 5):  # the untrained model is never right, so the lengths tell whether the samples are the same
        for key in ("heldout/pass@1", "heldout/mean_length", "heldout/format_ok"):
            assert curve(resumed)[step][key] == rows[step][key], (step, key)
    assert again["heldout"] == summary["heldout"]


def grpo_args(world: Path, out: Path, **extra) -> list[str]:
    return heldout_args(world, out, **{
        "data.prompts": world / "data" / "train_prompts.jsonl", "prompts_per_step": 2, "sampling.n": 2,
        "sampling.max_new_tokens": 12, "scale_reward_to_context": "true", "optim.lr": 1e-3, "max_steps": 4,
        "micro_batch_size": 4, "log.save_every": 0, "dump_every": 0, **extra})


def test_grpo_evaluates_on_its_policys_sampler_without_changing_its_rollouts(small_world, tmp_path):
    out = tmp_path / "grpo"
    summary = grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(small_world, out)))
    rows = check_curve(out, [0, 2, 4])
    assert summary["heldout"]["last"]["pass@1"] == rows[4]["heldout/pass@1"]
    # The lent sampler grows its cache for the held-out budget (24 tokens, rollouts 12) and draws from its own
    # generator: the rollouts, hence the updates, are those of a run without held-out evaluation.
    plain = tmp_path / "plain"
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(small_world, plain, **{"heldout.every": 0,
                                                                                 "heldout.prompts": ""})))

    def rollouts(path: Path) -> list[tuple]:
        return [(r["step"], r["rollout/reward_mean"], r["rollout/length_mean"], r.get("update/kl"))
                for r in read_metrics(path / "metrics.jsonl") if "rollout/reward_mean" in r]

    assert rollouts(out) == rollouts(plain) and len(rollouts(plain)) == 4


def test_dpo_evaluates_before_and_after(small_world, tmp_path):
    out = tmp_path / "dpo"
    summary = dpo.run(load_config(dpo.DPOConfig, None, heldout_args(small_world, out, **{
        "data.train": small_world / "pairs.jsonl", "data.max_seq_len": 160, "batch_size": 8, "micro_batch_size": 8,
        "max_steps": 2, "log.save_every": 0})))
    check_curve(out, [0, 2])
    assert summary["heldout"]["first"]["step"] == 0 and summary["heldout"]["last"]["step"] == 2
