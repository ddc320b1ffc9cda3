"""torchrun with two CPU processes (gloo, FSDP2) against one process: same losses, portable checkpoints.

Each two-rank run is a real ``torchrun --standalone --nproc_per_node=2`` of the CLI; the one-process runs
are in-process calls of the same recipe. Tolerances: the two runs add the same fp32 numbers in a different
order (per-rank partial sums, FSDP's gradient reduce-scatter), which measured about 1e-8 relative on these
models; 1e-6 leaves room for that while any normalisation error (a per-rank mean instead of the global
one, a missing world-size factor) moves the loss by 1e-2 or more.

GRPO's whole-recipe losses cannot be compared this way: the sampler's random draws depend on which rows
share a decode batch, so two ranks sample different completions than one. The two-rank GRPO run is checked
for what it must do (every rank's samples counted, the rollout copy in step with the policy, a portable
checkpoint), and the update itself is compared on fixed rollouts (``grpo_update_worker.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import thinktune
from thinktune.config import load_config
from thinktune.recipes import dpo, grpo, sft

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
REL = 1e-6


def torchrun(nproc: int, *args: str) -> str:
    """Run ``torchrun --standalone`` with the code under test on the path; returns its stdout."""
    src = Path(thinktune.__file__).parents[1]
    path = os.pathsep.join(p for p in (str(src), str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def sft_args(root: Path, out: Path) -> list[str]:
    args = {"model.path": root / "model", "model.system_prompt": "", "data.train": root / "data" / "sft_cot.jsonl",
            "data.max_seq_len": 160, "optim.lr": 3e-3, "optim.warmup_steps": 2, "batch_size": 8,
            "micro_batch_size": 2, "max_steps": 4, "log.log_every": 1, "log.save_every": 2,
            "log.progress": "false", "output_dir": out, "data.eval": root / "sft_eval.jsonl", "eval_every": 2}
    return [f"{k}={v}" for k, v in args.items()]


def test_sft_on_two_ranks_matches_one_and_resumes_on_one(small_world, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    # 5 validation rows in micro-batches of 2: rank 0 forwards two of the three, rank 1 one and a filler.
    rows = (small_world / "data" / "sft_cot.jsonl").read_text().splitlines()[:5]
    (small_world / "sft_eval.jsonl").write_text("".join(line + "\n" for line in rows))
    sft.run(load_config(sft.SFTConfig, None, sft_args(small_world, one)))
    torchrun(2, "-m", "thinktune.cli", "sft", *sft_args(small_world, two))
    want = [(r["step"], r["train/loss"]) for r in metrics(one) if "train/loss" in r]
    got = [(r["step"], r["train/loss"]) for r in metrics(two) if "train/loss" in r]
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4]  # rank 0 alone wrote the metrics
    for (step, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=REL), f"step {step}: 2 ranks {a} vs 1 rank {b}"
    # The validation loss, each rank forwarding its share of the batches, is the one-process loss.
    want_eval = [(r["step"], r["eval/loss"]) for r in metrics(one) if "eval/loss" in r]
    got_eval = [(r["step"], r["eval/loss"]) for r in metrics(two) if "eval/loss" in r]
    assert [s for s, _ in got_eval] == [s for s, _ in want_eval] and len(want_eval) >= 2
    for (step, a), (_, b) in zip(got_eval, want_eval, strict=True):
        assert a == pytest.approx(b, rel=REL), f"eval at step {step}: 2 ranks {a} vs 1 rank {b}"

    # The two-rank checkpoint is one plain HF model, and gives the one-process model's logits.
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    two_ranks = AutoModelForCausalLM.from_pretrained(two / "final")(ids).logits
    one_rank = AutoModelForCausalLM.from_pretrained(one / "final")(ids).logits
    torch.testing.assert_close(two_ranks, one_rank, rtol=1e-4, atol=1e-5)

    # Saved by two ranks at step 2, resumed by one: steps 3 and 4 repeat the two-rank losses.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "final")
    capsys.readouterr()
    sft.run(load_config(sft.SFTConfig, None, sft_args(small_world, resumed)))
    assert f"resuming from {resumed / 'checkpoints' / 'step-2'} (step 2)" in capsys.readouterr().out
    again = {r["step"]: r["train/loss"] for r in metrics(resumed) if "train/loss" in r}
    for step, loss in got:
        assert again[step] == pytest.approx(loss, rel=REL), step


def grpo_args(root: Path, out: Path) -> list[str]:
    args = {"model.path": root / "model", "model.system_prompt": "",
            "data.prompts": root / "data" / "train_prompts.jsonl", "prompts_per_step": 4, "sampling.n": 4,
            "sampling.max_new_tokens": 12, "scale_reward_to_context": "true", "optim.lr": 1e-3, "optim.warmup_steps": 1,
            "beta": 0.05, "gamma": 0.01, "max_steps": 3, "micro_batch_size": 3, "log.log_every": 1,
            "log.save_every": 1, "log.progress": "false", "dump_every": 1, "output_dir": out}
    return [f"{k}={v}" for k, v in args.items()]


def test_grpo_on_two_ranks_samples_every_prompt_and_resumes_on_one(small_world, tmp_path, capsys):
    two = tmp_path / "two"
    torchrun(2, "-m", "thinktune.cli", "grpo", *grpo_args(small_world, two))
    rows = metrics(two)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        # Both ranks' samples are counted (2 prompts x 4 samples each), and the importance ratio is 1 at
        # the first pass: the rollout copy holds exactly the weights being trained (a stale copy, not
        # refreshed after step 1, would put it off 1 from step 2 on).
        assert r["select/samples_kept"] == 16
        assert r["update/ratio"] == pytest.approx(1.0, abs=1e-5), r["step"]
        # tokens/s counts both ranks' 16 samples over rank 0's clock, the whole job's rate
        assert r["time/tokens_per_s"] * r["time/step"] == pytest.approx(16 * r["rollout/length_mean"]), r["step"]
    dumped = [json.loads(line) for line in (two / "samples" / "step-2.jsonl").read_text().splitlines()]
    assert len(dumped) == 16 and len({d["prompt_id"] for d in dumped}) == 4
    AutoModelForCausalLM.from_pretrained(two / "final")

    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-2")
    capsys.readouterr()
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(small_world, resumed)))
    assert f"resuming from {resumed / 'checkpoints' / 'step-1'} (step 1)" in capsys.readouterr().out
    assert [r["step"] for r in metrics(resumed)] == [1, 2, 3]
    assert metrics(resumed)[0] == rows[0]


def test_grpo_update_on_two_ranks_matches_one(small_world, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    import grpo_update_worker

    torchrun(2, str(HERE / "grpo_update_worker.py"), str(small_world / "model"), str(tmp_path / "two.pt"))
    grpo_update_worker.main(str(small_world / "model"), str(tmp_path / "one.pt"))
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert one["metrics"]["update/kl"] > 0 and one["metrics"]["update/clip_fraction"] > 0  # terms are live
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=REL, abs=1e-9), key
    start = AutoModelForCausalLM.from_pretrained(small_world / "model").state_dict()
    for name, weight in one["state"].items():
        assert not torch.equal(weight, start[name]), f"{name} did not move; the test would prove nothing"
        torch.testing.assert_close(two["state"][name], weight, rtol=1e-5, atol=1e-7, msg=name)


def test_dpo_with_lora_on_two_ranks_matches_one(small_world, tmp_path):
    """LoRA under FSDP: the adapters' random init must be rank 0's on every rank, and the reference is the
    sharded policy with its adapters disabled."""
    def dpo_args(out: Path) -> list[str]:
        args = {"model.path": small_world / "model", "model.system_prompt": "", "data.train": small_world / "pairs.jsonl",
                "data.eval": small_world / "pairs_eval.jsonl",  # 5 pairs: micro-batches 2, 2, 1 over 2 ranks
                "model.lora.r": 4, "optim.lr": 3e-2, "beta": 0.5, "batch_size": 8, "micro_batch_size": 2,
                "max_steps": 3, "log.log_every": 1, "log.save_every": 0, "log.progress": "false", "output_dir": out}
        return [f"{k}={v}" for k, v in args.items()]

    pairs = (small_world / "pairs.jsonl").read_text().splitlines()[-5:]
    (small_world / "pairs_eval.jsonl").write_text("".join(line + "\n" for line in pairs))
    dpo.run(load_config(dpo.DPOConfig, None, dpo_args(tmp_path / "one")))
    torchrun(2, "-m", "thinktune.cli", "dpo", *dpo_args(tmp_path / "two"))
    one, two = ([r for r in metrics(tmp_path / run) if "train/loss" in r] for run in ("one", "two"))
    assert [r["step"] for r in two] == [1, 2, 3] and one[-1]["train/loss"] < one[0]["train/loss"]
    for a, b in zip(two, one, strict=True):
        # DPO's per-pair losses are fp32 means (not float64 sums as in SFT): measured 3e-7 apart.
        for key in ("train/loss", "train/rewards/margins", "train/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    # Held-out metrics before and after training, each rank scoring its share of the pairs.
    one_sum, two_sum = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two"))
    assert one_sum["heldout_pairs"] == two_sum["heldout_pairs"] == 5
    assert one_sum["eval_after"]["eval/loss"] != one_sum["eval_before"]["eval/loss"]
    for when in ("eval_before", "eval_after"):
        for key, value in one_sum[when].items():
            assert two_sum[when][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (when, key)
