"""GRPO on the embedded world: steps, rebalancing, dumps, exact resume, and a learning test."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from thinktune.config import load_config
from thinktune.data.synth import SynthConfig
from thinktune.data.synth import run as run_synth
from thinktune.modeling import build_model
from thinktune.recipes import grpo

pytestmark = pytest.mark.integration
ASSETS = Path(__file__).parents[1] / "assets"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grpo")
    run_synth(SynthConfig(n_train=64, n_heldout_per_level=2, rollout_prompts=0, output_dir=str(root / "data")))
    build_model.run(build_model.BuildModelConfig(
        corpus=str(root / "data" / "sft_cot.jsonl"), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_position_embeddings=96, output_dir=str(root / "model")))
    return root


def grpo_args(root: Path, out: Path, **extra) -> list[str]:
    args = {"model.path": root / "model", "model.system_prompt": "", "data.prompts": root / "data" / "train_prompts.jsonl",
            "prompts_per_step": 4, "sampling.n": 4, "sampling.max_new_tokens": 12, "scale_reward_to_context": "true",
            "optim.lr": 1e-3, "optim.warmup_steps": 1, "beta": 0.05, "gamma": 0.01, "max_steps": 4,
            "micro_batch_size": 8, "log.log_every": 1, "log.save_every": 2, "log.progress": "false",
            "dump_every": 2, "output_dir": out}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_steps_log_dump_and_resume_exactly(world, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ASSETS))
    out = tmp_path / "grpo"
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(world, out, **{"reward.name": "toy_rewards:ones_share"})))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("rollout/reward_mean", "rollout/accuracy", "rollout/length_mean", "rollout/length_p90",
                "rollout/truncated", "reward/ones", "update/kl", "update/entropy", "update/clip_fraction",
                "select/samples_kept", "select/samples_dropped", "rollout/temperature", "time/generate",
                "time/score", "time/update", "time/step"):
        assert key in rows[-1], key
    for r in rows:  # the whole step holds its three phases
        assert r["time/step"] >= r["time/generate"] + r["time/score"] + r["time/update"], r
        # fp32 on the CPU: the sampler's log-probs and the training forward's are the same float32 math in another
        # order, a few rounding steps (1.2e-7 relative) of log-probs under ~10 apart: far below 1e-4.
        assert 0 <= r["mismatch/abs_mean"] <= r["mismatch/abs_max"] < 1e-4, r
        assert 0 <= r["mismatch/kl_k3"] < 1e-8, r
    assert rows[-1]["select/samples_kept"] == 16 and rows[-1]["update/kl"] > 0  # the policy moved off the reference
    dumped = [json.loads(line) for line in (out / "samples" / "step-2.jsonl").read_text().splitlines()]
    assert len(dumped) == 16 and {"prompt_id", "completion", "reward", "components", "correct"} <= dumped[0].keys()

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "final")
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(world, resumed, **{"reward.name": "toy_rewards:ones_share"})))
    again = metrics(resumed)
    for a, b in zip(rows, again, strict=True):
        assert a["rollout/reward_mean"] == pytest.approx(b["rollout/reward_mean"], abs=1e-9), a["step"]
        assert a["update/kl"] == pytest.approx(b["update/kl"], rel=1e-5, abs=1e-9), a["step"]


def test_scoring_behind_the_decode_gives_the_same_run(world, tmp_path, monkeypatch):
    # On a GPU each completion is scored from the sampler's on_complete while others still decode; here on the
    # CPU scoring waits for the decode. Both must give the same rewards, hence the same updates.
    monkeypatch.syspath_prepend(str(ASSETS))
    args = {"reward.name": "toy_rewards:ones_share", "max_steps": 2, "log.save_every": 0, "dump_every": 0}
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(world, tmp_path / "after", **args)))
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(world, tmp_path / "behind", score_behind_decode="true",
                                                          **args)))
    for a, b in zip(metrics(tmp_path / "after"), metrics(tmp_path / "behind"), strict=True):
        for key in ("rollout/reward_mean", "reward/ones", "rollout/length_mean", "update/kl", "update/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)


def test_balance_drops_groups_without_a_positive(world, tmp_path):
    # A random model never answers right: with rebalancing every prompt has no positive and is dropped.
    out = tmp_path / "balanced"
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(world, out, balance="true", max_steps=1)))
    row = metrics(out)[-1]
    assert row["select/prompts_no_positive"] == 4 and row["select/samples_kept"] == 0
    assert row["select/samples_dropped"] == 16 and "update/kl" not in row


@pytest.mark.slow
def test_grpo_raises_mean_reward(world, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ASSETS))
    out = tmp_path / "learn"
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(world, out, **{
        "reward.name": "toy_rewards:ones_share", "prompts_per_step": 8, "sampling.n": 8,
        "sampling.max_new_tokens": 16, "optim.lr": 3e-3, "beta": 0.0, "gamma": 0.0, "max_steps": 30, "log.save_every": 0,
        "dump_every": 0, "micro_batch_size": 64})))
    rewards = [r["rollout/reward_mean"] for r in metrics(out)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > 2 * first and last > first + 0.1, rewards


def test_update_without_sampler_log_probs_takes_the_old_policy_from_its_first_pass(world, monkeypatch):
    # vLLM returns no sampling log-probs. Then the update's first pass, on the weights that sampled, must give
    # the old policy: the same update as one handed exact teacher-forced log-probs, over two passes.
    import copy

    import torch

    from thinktune import runtime
    from thinktune.modeling import models

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import grpo_update_worker

    cfg = load_config(grpo.GRPOConfig, None, [f"model.path={world / 'model'}", "model.system_prompt=",
                                              "data.prompts=unused.jsonl", "beta=0", "gamma=0.01",
                                              "micro_batch_size=3", "updates_per_batch=2"])
    rt = runtime.init("fp32", 0)
    tokenizer = models.load_tokenizer(cfg.model)
    start = models.load_model(cfg.model, tokenizer, rt.device, torch.float32).train()
    ro = grpo_update_worker.fixed_rollouts(len(tokenizer))  # its old log-probs are made up
    temperature = 0.7
    with torch.no_grad():  # the reference: one plain forward per sequence, no prompt cache
        exact = []
        for p, c in zip(ro.prompts, ro.completions, strict=True):
            logits = start(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1] / temperature
            exact.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None]).squeeze(1).tolist())

    def updated(old_logps):
        model = copy.deepcopy(start)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        stats = grpo.update(model, None, optimizer, grpo.Rollouts(ro.prompts, ro.prompt_index, ro.completions,
                                                                  old_logps, ro.advantages),
                            cfg, temperature, tokenizer.pad_token_id, rt)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), stats

    given, given_stats = updated(exact)
    first_pass, first_pass_stats = updated(None)
    made_up, made_up_stats = updated(ro.old_logps)
    # The step's sampler-trainer mismatch: ~0 against exact log-probs; against made-up ones, their largest gap.
    assert given_stats["mismatch/abs_max"] < 1e-5 and "mismatch/abs_max" not in first_pass_stats
    gaps = [abs(a - b) for old, new in zip(ro.old_logps, exact, strict=True) for a, b in zip(old, new, strict=True)]
    assert made_up_stats["mismatch/abs_max"] == pytest.approx(max(gaps), rel=1e-5)
    assert made_up_stats["mismatch/abs_mean"] == pytest.approx(sum(gaps) / len(gaps), rel=1e-5)
    torch.testing.assert_close(first_pass, given, rtol=0, atol=1e-6)
    assert first_pass_stats["update/ratio"] == pytest.approx(given_stats["update/ratio"], abs=1e-6)
    # the old log-probs matter here, so the match above means something
    assert (made_up - given).abs().max() > 1e-3


def test_build_rollouts_without_sampler_log_probs(world):
    from thinktune.rollout.sampler import Completion

    cfg = load_config(grpo.GRPOConfig, None, [f"model.path={world / 'model'}", "data.prompts=unused.jsonl"])
    with_logps = Completion(token_ids=[5, 4], text="a", finished=True, logprobs=[-1.0, -2.0],
                            sampling_logprobs=[-1.0, -2.0])
    without = Completion(token_ids=[6, 4], text="b", finished=True, logprobs=[-1.0, -2.0],
                         sampling_logprobs=None)
    keep = [(0, 0), (0, 1)]
    both = grpo.build_rollouts([[1]], [[with_logps, with_logps]], [[1.0, 0.0]], keep, cfg)
    assert both.old_logps == [[-1.0, -2.0]] * 2
    assert grpo.build_rollouts([[1]], [[with_logps, without]], [[1.0, 0.0]], keep, cfg).old_logps is None


def test_sampling_backend_is_checked_before_loading(world, tmp_path):
    from thinktune.errors import ConfigError

    with pytest.raises(ConfigError, match="'sampling.backend' is 'nope'"):
        load_config(grpo.GRPOConfig, None, grpo_args(world, tmp_path / "x", **{"sampling.backend": "nope"}))
    with pytest.raises(ConfigError, match="vllm"):
        grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(world, tmp_path / "y", **{"sampling.backend": "vllm"})))
    assert not (tmp_path / "y" / "metrics.jsonl").exists()


def test_vllm_refuses_token_ids_the_saved_model_cannot_take(world):
    import torch

    from thinktune.errors import ConfigError
    from thinktune.modeling import models
    from thinktune.rollout.vllm_backend import check_vocab

    cfg = load_config(grpo.GRPOConfig, None, [f"model.path={world / 'model'}", "data.prompts=unused.jsonl"])
    tokenizer = models.load_tokenizer(cfg.model)
    model = models.load_model(cfg.model, tokenizer, torch.device("cpu"), torch.float32)
    rows = model.get_input_embeddings().num_embeddings
    check_vocab(str(world / "model"), rows, exact=True)  # as saved: fine
    check_vocab(str(world / "model"), rows - 1, exact=False)  # a tokenizer may use fewer ids than there are rows
    with pytest.raises(ConfigError, match="sampling.backend=thinktune"):
        check_vocab(str(world / "model"), rows + 2, exact=True)  # a policy whose vocabulary grew since
    with pytest.raises(ConfigError, match="vocabulary of"):
        check_vocab(str(world / "model"), rows - 1, exact=True)  # pushed weights must match exactly
    with pytest.raises(ConfigError, match="vocabulary of"):
        check_vocab(str(world / "model"), rows + 1, exact=False)


@pytest.mark.parametrize("loss", ["drgrpo", "dapo", "gspo", "gspo_token", "cispo"])
def test_each_policy_objective_trains(world, tmp_path, monkeypatch, loss):
    # Two steps of each objective with its preset; cispo also with DAPO's overlong handling (masking the cut
    # completions out of the loss, and the soft punishment as a reward term). The 0.2 clip for GSPO lets its
    # ratios move within two steps; the preset's 3e-4 is checked by hand in tests/unit/test_policy_loss.py.
    monkeypatch.syspath_prepend(str(ASSETS))
    out = tmp_path / loss
    extra = {"loss": loss, "max_steps": 2, "log.save_every": 0, "dump_every": 0, "updates_per_batch": 2,
             "reward.name": "phi4-mini" if loss == "cispo" else "toy_rewards:ones_share"}
    if loss.startswith("gspo"):
        extra |= {"clip_low": 0.2, "clip_high": 0.2}
    if loss == "cispo":
        extra |= {"mask_truncated": "true", "reward.overlong_buffer": 8000}
    grpo.run(load_config(grpo.GRPOConfig, None, grpo_args(world, out, **extra)))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("update/kl", "update/entropy", "update/clip_fraction", "update/clip_low", "update/clip_high",
                    "update/ratio", "update/grad_norm"):
            assert math.isfinite(r[key]), (key, r)
        assert r["update/clip_fraction"] == pytest.approx(r["update/clip_low"] + r["update/clip_high"])
    assert rows[-1]["update/kl"] > 0  # the policy moved
    if loss == "cispo":
        assert "reward/overlong" in rows[-1] and rows[-1]["reward/overlong"] <= 0


def test_mask_truncated_takes_cut_completions_out_of_the_loss(world, monkeypatch):
    # Every completion cut: nothing is left in the loss, so an update (no KL, an entropy term) changes no weight.
    # With mask_truncated off the same rollouts move them.
    import torch

    from thinktune import runtime
    from thinktune.modeling import models

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import grpo_update_worker

    cfg = load_config(grpo.GRPOConfig, None, [f"model.path={world / 'model'}", "model.system_prompt=",
                                              "data.prompts=unused.jsonl", "beta=0", "gamma=0.01", "loss=dapo"])
    rt = runtime.init("fp32", 0)
    tokenizer = models.load_tokenizer(cfg.model)
    ro = grpo_update_worker.fixed_rollouts(len(tokenizer))

    def moved(in_loss):
        model = models.load_model(cfg.model, tokenizer, rt.device, torch.float32).train()
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        grpo.update(model, None, optimizer, grpo.Rollouts(ro.prompts, ro.prompt_index, ro.completions, ro.old_logps,
                                                          ro.advantages, in_loss), cfg, 1.0, tokenizer.pad_token_id, rt)
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).abs().max().item()

    assert moved([False] * len(ro.completions)) == 0.0
    assert moved(None) > 1e-4


def test_build_rollouts_marks_cut_completions_with_mask_truncated(world):
    from thinktune.rollout.sampler import Completion

    done = Completion(token_ids=[5, 4], text="a", finished=True, logprobs=[-1.0, -2.0], sampling_logprobs=[-1.0, -2.0])
    cut = Completion(token_ids=[6, 7], text="b", finished=False, logprobs=[-1.0, -2.0], sampling_logprobs=[-1.0, -2.0])
    for flag, want in (("true", [True, False]), ("false", [True, True])):
        cfg = load_config(grpo.GRPOConfig, None, [f"model.path={world / 'model'}", "data.prompts=unused.jsonl",
                                                  f"mask_truncated={flag}"])
        ro = grpo.build_rollouts([[1]], [[done, cut]], [[1.0, 0.0]], [(0, 0), (0, 1)], cfg)
        assert ro.in_loss == want
        assert ro.advantages[0] > 0 > ro.advantages[1]  # the cut one still counts in its group's advantage
