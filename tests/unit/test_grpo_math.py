"""GRPO math: advantages against a looped reference, the clipped surrogate and KL by hand, the
Phi-4-mini rebalancing, the temperature schedule and the step's rollout metrics by hand."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from reference import entropy_from_logits
from thinktune.recipes import grpo
from thinktune.rewards import RewardResult
from thinktune.train.advantages import annealed_temperature, balance_group, group_advantages
from thinktune.train.losses import aggregate, grpo_token_loss, kl_k3


def looped_advantages(rewards: list[float], groups: list[int], mode: str, eps: float = 1e-6) -> list[float]:
    out = []
    for r, g in zip(rewards, groups, strict=True):
        members = [x for x, h in zip(rewards, groups, strict=True) if h == g]
        mean = sum(members) / len(members)
        std = statistics.pstdev(members)
        out.append(r - mean if mode == "drgrpo" else (r - mean) / (std + eps))
    return out


@pytest.mark.parametrize("mode", ["grpo", "drgrpo"])
def test_group_advantages_match_a_looped_reference(mode):
    rng = random.Random(0)
    groups = [rng.randrange(7) for _ in range(60)]  # uneven group sizes, interleaved
    rewards = [rng.choice([-1.0, -0.5, 0.5, 1.0]) + rng.random() * 0.1 for _ in groups]
    got = group_advantages(torch.tensor(rewards), torch.tensor(groups), mode)
    want = looped_advantages(rewards, groups, mode)
    assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_equal_rewards_give_zero_advantage():
    assert group_advantages(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([3, 3, 3])).tolist() == [0.0, 0.0, 0.0]


def test_clipped_surrogate_by_hand():
    # Token 1: ratio e^0.5 = 1.6487 with A = +1 and clip_high 0.2: min(1.6487, 1.2) = 1.2 -> loss -1.2, clipped.
    # Token 2: ratio e^-0.5 = 0.6065 with A = +1, clip_low 0.2: min(0.6065, 0.8) = 0.6065 -> loss -0.6065.
    # Sequence 2 has A = -1: token ratio e^0.5: min(-1.6487, -1.2) = -1.6487 -> loss +1.6487, not clipped;
    # its second token has ratio 1: loss -(1 * -1) = 1.
    logps = torch.tensor([[0.0, -1.0], [0.0, 0.0]])
    old = torch.tensor([[-0.5, -0.5], [-0.5, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_token_loss(logps, old, adv, clip_low=0.2, clip_high=0.2)
    e = math.exp(0.5)
    assert loss.flatten().tolist() == pytest.approx([-1.2, -1 / e, e, 1.0], abs=1e-6)
    assert stats["clipped"].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_clip_low_and_high_are_separate():
    # A = -1, ratio e^-0.5 = 0.6065: with clip_low 0.2 the clipped term is -0.8 and min(-0.6065, -0.8) = -0.8.
    loss, _ = grpo_token_loss(torch.tensor([[-0.5]]), torch.tensor([[0.0]]), torch.tensor([-1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(0.8)
    # The same ratio above 1 is clipped at 1 + 0.28 for A > 0: min(1.6487, 1.28) = 1.28.
    loss, _ = grpo_token_loss(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.28)


def test_kl_k3_by_hand_and_in_the_loss():
    # d = ref - pi = -1 - (-2) = 1: e^1 - 1 - 1 = 0.718282; zero where the two agree.
    assert kl_k3(torch.tensor([-2.0, -1.0]), torch.tensor([-1.0, -1.0])).tolist() == pytest.approx([math.e - 2, 0.0])
    logps = torch.tensor([[-2.0]])
    loss, stats = grpo_token_loss(logps, logps, torch.tensor([0.0]), 0.2, 0.2, ref_logps=torch.tensor([[-1.0]]),
                                  beta=0.5)
    assert loss.item() == pytest.approx(0.5 * (math.e - 2))  # A = 0 leaves only the KL term


def test_entropy_bonus_lowers_the_loss():
    logits = torch.zeros(1, 1, 4)  # uniform over 4: entropy log 4
    h = entropy_from_logits(logits)
    assert h.item() == pytest.approx(math.log(4))
    loss, _ = grpo_token_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([0.0]), 0.2, 0.2, entropy=h, gamma=0.1)
    assert loss.item() == pytest.approx(-0.1 * math.log(4))


def test_aggregation_modes_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # the third position of row 0 is padding and must not count
    values = torch.tensor([[1.0, 5.0, 0.0], [2.0, 0.0, 0.0]])
    # token_mean: 8 / 3; seq_mean: (3 + 2) / 2 = 2.5.
    assert aggregate(values, mask, "token_mean", 3, 2).item() == pytest.approx(8 / 3)
    assert aggregate(values, mask, "seq_mean", 3, 2).item() == pytest.approx(2.5)
    # Split into two micro-batches with the global counts: the sum is the whole batch's loss.
    parts = [aggregate(values[i:i + 1], mask[i:i + 1], "seq_mean", 3, 2) for i in range(2)]
    assert sum(parts).item() == pytest.approx(2.5)


def test_balance_group_keeps_all_positives_and_as_many_negatives():
    rng = random.Random(0)
    correct = [True, False, False, True, False, False, False, False]  # 2 of 8 correct, accuracy 25%
    decision = balance_group(correct, max_accuracy=0.5, rng=rng)
    kept = [correct[i] for i in decision.keep]
    assert decision.reason == "kept" and kept.count(True) == 2 and kept.count(False) == 2
    assert {0, 3} <= set(decision.keep)
    # Over many draws every negative is chosen sometimes: the negatives are sampled, not the first ones.
    seen = set()
    for seed in range(50):
        seen |= set(balance_group(correct, 0.5, random.Random(seed)).keep)
    assert seen == set(range(8))


def test_balance_group_drops_easy_and_hopeless_prompts():
    assert balance_group([True] * 5 + [False] * 3, 0.5, random.Random(0)).reason == "too_easy"  # 62.5% > 50%
    assert balance_group([True] * 4 + [False] * 4, 0.5, random.Random(0)).reason == "kept"  # exactly 50% stays
    assert balance_group([False] * 8, 0.5, random.Random(0)).reason == "no_positive"


def test_temperature_schedule():
    # 1.0 -> 0.6 over the first half of 100 steps: step 25 is halfway, 0.8; from step 50 on, 0.6.
    assert annealed_temperature(0, 100) == pytest.approx(1.0)
    assert annealed_temperature(25, 100) == pytest.approx(0.8)
    assert annealed_temperature(50, 100) == pytest.approx(0.6)
    assert annealed_temperature(99, 100) == pytest.approx(0.6)
    assert annealed_temperature(10, 40, start=0.9, end=0.7, anneal_fraction=1.0) == pytest.approx(0.85)


def test_rollout_metrics_by_hand():
    # Four groups of two, as (tokens, finished, reward, correct):
    #   A: (4, yes, 1, T), (12, cut, 1, T)      all equal, all correct
    #   B: (7, yes, 0, F), (3, yes, 0, F)       all equal, all wrong
    #   C: (9, yes, 1, T), (2, yes, -1, F)      mixed
    #   D: (5, yes, 0.5, T), (6, yes, 1.5, T)   all correct, rewards differ (a length-aware reward)
    # Rewards sum to 4 over 8 samples, mean 0.5; deviations .5 .5 -.5 -.5 .5 -1.5 0 1, squares summing to 4.5:
    # population std sqrt(4.5 / 8) = 0.75. Lengths sorted 2 3 4 5 6 7 9 12: mean 48 / 8 = 6, p90 the 8th (12).
    rows = [[(4, True, 1.0, True), (12, False, 1.0, True)], [(7, True, 0.0, False), (3, True, 0.0, False)],
            [(9, True, 1.0, True), (2, True, -1.0, False)], [(5, True, 0.5, True), (6, True, 1.5, True)]]
    groups = [[grpo.Sample(n, done) for n, done, _, _ in g] for g in rows]
    results = [[RewardResult(r, ok, {"answer": float(ok)}) for _, _, r, ok in g] for g in rows]
    correct = [[ok for *_, ok in g] for g in rows]
    got = grpo.rollout_metrics(groups, results, correct)
    assert got == pytest.approx({
        "rollout/reward_mean": 0.5, "rollout/reward_std": 0.75, "rollout/accuracy": 5 / 8,
        "rollout/length_mean": 6.0, "rollout/length_min": 2.0, "rollout/length_max": 12.0,
        "rollout/length_p90": 12.0, "rollout/truncated": 1 / 8, "rollout/groups_all_equal": 2 / 4,
        "rollout/groups_all_correct": 2 / 4, "rollout/groups_all_wrong": 1 / 4, "reward/answer": 5 / 8})


def test_groups_all_equal_counts_the_groups_before_selection():
    # Equal rewards with differing verdicts (a reward blind to the answer) are all equal yet neither all correct
    # nor all wrong; a single differing sample makes a group unequal.
    results = [[RewardResult(0.2, True), RewardResult(0.2, False), RewardResult(0.2, True)],
               [RewardResult(0.2, True), RewardResult(0.2, True), RewardResult(0.3, True)]]
    correct = [[r.correct for r in g] for g in results]
    assert grpo.group_shares(results, correct) == {"rollout/groups_all_equal": 0.5, "rollout/groups_all_correct": 0.5,
                                                    "rollout/groups_all_wrong": 0.0}


def test_throughput_divides_the_step_tokens_by_its_times():
    # 48 sampled tokens in a 4 s step of which 2 s sampling: 12 tokens/s overall, 24 while sampling.
    assert grpo.throughput(48, {"time/step": 4.0, "time/generate": 2.0}) == {
        "time/tokens_per_s": 12.0, "time/generate_tokens_per_s": 24.0}
