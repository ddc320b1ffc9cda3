"""GRPO on the embedded world: steps, rebalancing, dumps, exact resume, and a learning test."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from thinktune.config import load_config
from thinktune.data.order import step_units
from thinktune.data.synth import SynthConfig
from thinktune.data.synth import run as run_synth
from thinktune.errors import ConfigError
from thinktune.modeling import build_model
from thinktune.recipes import grpo
from thinktune.train import checkpoint

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
    for r in rows:  # the metrics RL users read (docs/design.md section 4.1), every logged step, finite
        for key in ("rollout/reward_std", "rollout/length_min", "rollout/length_max", "rollout/groups_all_equal",
                    "rollout/groups_all_correct", "rollout/groups_all_wrong", "update/clip_fraction_low",
                    "update/clip_fraction_high", "update/grad_norm", "train/lr", "time/tokens_per_s",
                    "time/generate_tokens_per_s"):
            assert math.isfinite(r[key]), (key, r)
        assert r["rollout/length_min"] <= r["rollout/length_mean"] <= r["rollout/length_max"] <= 12, r
        assert r["update/clip_fraction"] == pytest.approx(r["update/clip_fraction_low"] + r["update/clip_fraction_high"])
        assert r["time/generate_tokens_per_s"] >= r["time/tokens_per_s"] > 0, r  # sampling is part of the step
        # 16 samples a step: the step's tokens are its mean length times 16, over the step's seconds
        assert r["time/tokens_per_s"] == pytest.approx(16 * r["rollout/length_mean"] / r["time/step"], rel=1e-9)
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
        for key in ("update/kl", "update/entropy", "update/clip_fraction", "update/clip_fraction_low",
                    "update/clip_fraction_high", "update/ratio", "update/grad_norm"):
            assert math.isfinite(r[key]), (key, r)
        assert r["update/clip_fraction"] == pytest.approx(r["update/clip_fraction_low"] + r["update/clip_fraction_high"])
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


def expected_draws(cfg: grpo.GRPOConfig, steps: int) -> tuple[list[dict], int]:
    """The select/ counts dynamic sampling must log under toy_rewards:even_answers_uniform, derived from the reward's
    construction (a prompt with an even answer gives a uniform group, any other a spread one) and the data order,
    and the data position after ``steps`` steps."""
    rows, pps = grpo.load_rows(cfg), cfg.prompts_per_step
    position, out = 0, []
    for _ in range(steps):
        e = dict.fromkeys(("rounds", "prompts_drawn", "groups_uniform_dropped", "groups_surplus_dropped",
                           "groups_kept"), 0)
        while e["rounds"] < cfg.max_sampling_rounds and e["groups_kept"] < pps:
            idx = step_units(position, pps, len(rows), cfg.seed)
            position += pps
            usable = sum(int(rows[i]["answer"]) % 2 != 0 for i in idx)
            take = min(usable, pps - e["groups_kept"])
            e["rounds"] += 1
            e["prompts_drawn"] += pps
            e["groups_uniform_dropped"] += pps - usable
            e["groups_surplus_dropped"] += usable - take
            e["groups_kept"] += take
        e["groups_short"] = pps - e["groups_kept"]
        out.append(e)
    return out, position


def dynamic_args(root: Path, out: Path, **extra) -> list[str]:
    return grpo_args(root, out, **{"reward.name": "toy_rewards:even_answers_uniform", "dynamic_sampling": "true",
                                   "max_sampling_rounds": 4, **extra})


def test_dynamic_sampling_refills_the_batch_logs_the_draws_and_resumes_exactly(world, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ASSETS))
    out = tmp_path / "dynamic"
    cfg = load_config(grpo.GRPOConfig, None, dynamic_args(world, out))
    want, position = expected_draws(cfg, 4)
    # The data makes the case: some step needs more than one round, and every step fills in four.
    assert any(e["rounds"] > 1 and e["groups_uniform_dropped"] for e in want) and not any(e["groups_short"] for e in want)
    grpo.run(cfg)
    rows = metrics(out)
    for r, e in zip(rows, want, strict=True):
        assert {k: r[f"select/{k}"] for k in e} == e, r["step"]
        # Full batch: prompts_per_step groups of sampling.n samples, every sample drawn counted once.
        assert r["select/samples_kept"] == 16, r["step"]
        assert r["select/samples_kept"] + r["select/samples_dropped"] == 4 * r["select/prompts_drawn"], r["step"]
        assert math.isfinite(r["update/kl"]), r["step"]
    # The checkpoint holds the position past every prompt drawn, not steps x prompts_per_step.
    state = checkpoint.load_state(out / "checkpoints" / "step-2")
    assert state["data"]["position"] == sum(e["prompts_drawn"] for e in want[:2]) > 2 * 4
    assert position == sum(e["prompts_drawn"] for e in want)

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "final")
    grpo.run(load_config(grpo.GRPOConfig, None, dynamic_args(world, resumed)))
    for a, b in zip(rows, metrics(resumed), strict=True):
        assert {k: v for k, v in a.items() if k.startswith("select/")} == \
               {k: v for k, v in b.items() if k.startswith("select/")}, a["step"]
        assert a["rollout/reward_mean"] == pytest.approx(b["rollout/reward_mean"], abs=1e-9), a["step"]
        assert a["update/kl"] == pytest.approx(b["update/kl"], rel=1e-5, abs=1e-9), a["step"]


def test_dynamic_sampling_out_of_rounds_trains_on_what_it_kept(world, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ASSETS))
    out = tmp_path / "short"
    cfg = load_config(grpo.GRPOConfig, None, dynamic_args(world, out, max_sampling_rounds=1, max_steps=1,
                                                          **{"log.save_every": 0}))
    (want,), _ = expected_draws(cfg, 1)
    assert 0 < want["groups_kept"] < 4  # the first four prompts mix even and odd answers
    grpo.run(cfg)
    (r,) = metrics(out)
    assert {k: r[f"select/{k}"] for k in want} == want
    assert r["select/samples_kept"] == 4 * want["groups_kept"] and "update/kl" in r
    assert f"kept {want['groups_kept']} of prompts_per_step=4 groups in max_sampling_rounds=1" in capsys.readouterr().out


def test_dynamic_sampling_stops_when_no_round_finds_a_usable_group(world, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ASSETS))
    cfg = load_config(grpo.GRPOConfig, None, grpo_args(world, tmp_path / "zeros", **{
        "reward.name": "toy_rewards:zeros", "dynamic_sampling": "true", "max_sampling_rounds": 2}))
    with pytest.raises(ConfigError, match=r"step 1 kept no group of the 8 prompts drawn in max_sampling_rounds=2 "
                                          r"rounds \(8 with equal rewards\); raise max_sampling_rounds") as e:
        grpo.run(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "zeros" / "metrics.jsonl").exists() or not metrics(tmp_path / "zeros")


def test_dynamic_sampling_refills_with_the_groups_balance_keeps(world, tmp_path, monkeypatch):
    # Under balance an even answer's group has no positive; an odd one's is kept or dropped by its samples' luck.
    # Whatever the luck, every group drawn is accounted for once, and what balance drops is not in the batch.
    monkeypatch.syspath_prepend(str(ASSETS))
    out = tmp_path / "balanced"
    grpo.run(load_config(grpo.GRPOConfig, None, dynamic_args(world, out, balance="true", max_steps=2,
                                                             **{"log.save_every": 0})))
    for r in metrics(out):
        s = {k.removeprefix("select/"): v for k, v in r.items() if k.startswith("select/")}
        assert s["prompts_drawn"] == 4 * s["rounds"] and s["groups_kept"] + s["groups_short"] == 4
        assert s["prompts_too_easy"] + s["prompts_no_positive"] + s["groups_uniform_dropped"] + \
            s["groups_surplus_dropped"] + s["groups_kept"] == s["prompts_drawn"], s
        assert s["rounds"] == 4 or s["groups_kept"] == 4, s
        assert s["prompts_no_positive"] >= 1 and s["samples_kept"] <= 4 * s["groups_kept"], s


# --- rollout-trainer mismatch correction (train/policy_loss.py ImportanceCorrection, train/grpo_update.py) ---


def test_mismatch_correction_gives_each_log_prob_its_role(world, monkeypatch):
    # The sampler's log-probs are the exact teacher-forced ones shifted by known offsets d_t = trainer - sampler.
    # mode=none puts them in the PPO ratio (its mean on the one pass is the mean of exp(d_t)); recompute_old_logps
    # replaces them there by the trainer's own, so the update equals the one handed exact log-probs; tis then
    # weights each token by min(exp(d_t), 2) and mis_token keeps the tokens with |d_t| <= log 2.
    import copy

    import torch

    from thinktune import runtime
    from thinktune.errors import ConfigError
    from thinktune.modeling import models
    from thinktune.train import grpo_update
    from thinktune.train.logprobs import length_sorted_chunks

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import grpo_update_worker

    base = [f"model.path={world / 'model'}", "model.system_prompt=", "data.prompts=unused.jsonl", "beta=0",
            "gamma=0.01", "micro_batch_size=3", "updates_per_batch=1"]
    rt = runtime.init("fp32", 0)
    cfg = load_config(grpo.GRPOConfig, None, base)
    tokenizer = models.load_tokenizer(cfg.model)
    start = models.load_model(cfg.model, tokenizer, rt.device, torch.float32).train()
    ro = grpo_update_worker.fixed_rollouts(len(tokenizer))
    temperature = 0.7
    with torch.no_grad():  # the trainer's old log-probs: one plain forward per sequence, no prompt cache
        exact = []
        for p, c in zip(ro.prompts, ro.completions, strict=True):
            logits = start(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1] / temperature
            exact.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None]).squeeze(1).tolist())
    # log 2 = 0.693: 0.9 and 0.8 are capped by tis; 0.9, -1.2, 0.8 and -0.75 are outside mis's band [1/2, 2]
    offsets = [0.9, -0.5, 0.3, -1.2, 0.05, 0.0, 0.8, -0.75]
    d = [[offsets[(i + t) % len(offsets)] for t in range(len(c))] for i, c in enumerate(ro.completions)]
    sampler = [[e - x for e, x in zip(row, dr, strict=True)] for row, dr in zip(exact, d, strict=True)]
    flat = [x for row in d for x in row]
    log2 = math.log(2.0)

    weights_seen = []
    real_loss = grpo_update.grpo_token_loss

    def spy(*args, **kwargs):
        weights_seen.append(kwargs["weights"])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(grpo_update, "grpo_token_loss", spy)

    def updated(old_logps, *correction: str):
        weights_seen.clear()
        c = load_config(grpo.GRPOConfig, None, [*base, *correction])
        model = copy.deepcopy(start)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        stats = grpo.update(model, None, optimizer, grpo.Rollouts(ro.prompts, ro.prompt_index, ro.completions,
                                                                  old_logps, ro.advantages),
                            c, temperature, tokenizer.pad_token_id, rt)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), stats, list(weights_seen)

    given, given_stats, _ = updated(exact)
    shifted, shifted_stats, shifted_weights = updated(sampler)
    # mode=none: the sampler's (shifted) log-probs are the ratio's old ones, and nothing weights the loss
    assert shifted_weights == [None] * 3 and not any(k.startswith("correction/") for k in shifted_stats)
    assert given_stats["update/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert shifted_stats["update/ratio"] == pytest.approx(sum(math.exp(x) for x in flat) / len(flat), rel=1e-5)
    assert shifted_stats["mismatch/abs_max"] == pytest.approx(1.2, rel=1e-5)
    assert (shifted - given).abs().max() > 1e-3  # the old log-probs matter here

    recomputed, recomputed_stats, _ = updated(sampler, "correction.recompute_old_logps=true")
    torch.testing.assert_close(recomputed, given, rtol=0, atol=1e-6)
    assert recomputed_stats["update/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert recomputed_stats["mismatch/abs_max"] == pytest.approx(1.2, rel=1e-5)  # still sampler vs trainer

    micro = length_sorted_chunks([len(c) for c in ro.completions], 3)  # the update's micro-batches, in order
    for mode, want in (("tis", lambda x: min(math.exp(x), 2.0)), ("mis_token", lambda x: float(abs(x) <= log2))):
        moved, stats, seen = updated(sampler, f"correction.mode={mode}", "correction.recompute_old_logps=true")
        assert len(seen) == len(micro)
        for w, idx in zip(seen, micro, strict=True):
            expect = torch.zeros_like(w)
            for row, i in enumerate(idx):
                expect[row, :len(d[i])] = torch.tensor([want(x) for x in d[i]])
            torch.testing.assert_close(w, expect, rtol=1e-5, atol=1e-6)
        assert stats["correction/weight_mean"] == pytest.approx(sum(map(want, flat)) / len(flat), rel=1e-5)
        capped = sum(x > log2 for x in flat) / len(flat) if mode == "tis" else 0.0
        masked = sum(abs(x) > log2 for x in flat) / len(flat) if mode == "mis_token" else 0.0
        assert stats["correction/capped_fraction"] == pytest.approx(capped)
        assert stats["correction/masked_fraction"] == pytest.approx(masked)
        assert capped + masked > 0.2 and (moved - recomputed).abs().max() > 1e-4  # the weights change the update

    with pytest.raises(ConfigError, match="correction.mode=tis .* gives none"):
        updated(None, "correction.mode=tis", "correction.recompute_old_logps=true")
