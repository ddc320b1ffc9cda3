"""DPO math and pair mining, against hand-worked values."""

from __future__ import annotations

import math
import random

import pytest
import torch

from thinktune.curation.pairs import Scored, make_pairs, mine, outcome
from thinktune.recipes import dpo
from thinktune.train.losses import chosen_nll, dpo_loss, sequence_logps


def test_dpo_loss_matches_the_formula_by_hand():
    # pi_c - ref_c = -1 - (-1.5) = 0.5; pi_r - ref_r = -2 - (-1.5) = -0.5; h = beta * (0.5 + 0.5) = 0.5.
    # -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077; -log sigmoid(-0.5) = log(1 + e^0.5) = 0.974077.
    args = [torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5])]
    losses, chosen, rejected = dpo_loss(*args, beta=0.5)
    assert losses.item() == pytest.approx(0.474077, abs=1e-6)
    assert chosen.item() == pytest.approx(0.25) and rejected.item() == pytest.approx(-0.25)  # beta * (pi - ref)
    # Label smoothing 0.1: 0.9 * 0.474077 + 0.1 * 0.974077 = 0.524077.
    smoothed, _, _ = dpo_loss(*args, beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.524077, abs=1e-6)


def test_dpo_loss_is_log2_at_the_reference_and_falls_with_the_margin():
    zero = torch.zeros(3)
    losses, _, _ = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert torch.allclose(losses, torch.full((3,), math.log(2)))
    margins = torch.tensor([-2.0, 0.0, 2.0])
    losses, _, _ = dpo_loss(margins, zero, zero, zero, beta=1.0)
    assert losses[0] > losses[1] > losses[2]


def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-3.0], requires_grad=True)
    rejected = torch.tensor([-3.0], requires_grad=True)
    losses, _, _ = dpo_loss(chosen, rejected, torch.tensor([-3.0]), torch.tensor([-3.0]), beta=0.2)
    losses.sum().backward()
    # d/dpi_c of -log sigmoid(beta (pi_c - pi_r)) at h = 0 is -beta * sigmoid(0) = -0.1.
    assert chosen.grad.item() == pytest.approx(-0.1) and rejected.grad.item() == pytest.approx(0.1)


def test_reward_metrics_by_hand_under_trls_names():
    # Implicit rewards (chosen, rejected): (0.3, 0.1) right, (-0.1, 0.2) wrong, (0.2, 0.2) a tie, half right.
    # Means: chosen 0.4 / 3, rejected 0.5 / 3, margins (0.2 - 0.3 + 0) / 3, accuracy (1 + 0 + 0.5) / 3 = 0.5.
    got = dpo.reward_metrics("eval", torch.tensor([0.5, 0.7, 0.6]), torch.tensor([0.3, -0.1, 0.2]),
                             torch.tensor([0.1, 0.2, 0.2]))
    assert got == pytest.approx({"eval/loss": 0.6, "eval/rewards/chosen": 0.4 / 3, "eval/rewards/rejected": 0.5 / 3,
                                 "eval/rewards/margins": -0.1 / 3, "eval/rewards/accuracies": 0.5}, abs=1e-6)


def test_chosen_nll_is_per_token():
    assert torch.allclose(chosen_nll(torch.tensor([-6.0, -1.0]), torch.tensor([3, 2])), torch.tensor([2.0, 0.5]))


def test_sequence_logps_sums_only_masked_next_tokens():
    # Vocabulary 2, uniform logits: every next token has log-prob log(1/2).
    logits = torch.zeros(1, 4, 2)
    ids = torch.tensor([[0, 1, 1, 0]])
    mask = torch.tensor([[0, 0, 1, 1]])  # tokens 2 and 3 count
    assert sequence_logps(logits, ids, mask).item() == pytest.approx(2 * math.log(0.5))


def s(text: str, correct: bool, n: int) -> Scored:
    return Scored(text, correct, n)


def test_make_pairs_length_matches_and_uses_each_completion_once():
    samples = [s("c10", True, 10), s("c50", True, 50), s("r12", False, 12), s("r48", False, 48), s("r90", False, 90)]
    pairs = make_pairs("p", "q", samples, pairs_per_prompt=2, length_match=True, rng=random.Random(0))
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("c10", "r12"), ("c50", "r48")}
    assert [p["id"] for p in pairs] == ["p-0", "p-1"]


def test_make_pairs_dedupes_and_needs_both_outcomes():
    same = [s("a", True, 5), s("a", True, 5), s("b", False, 5)]
    pairs = make_pairs("p", "q", same, pairs_per_prompt=3, length_match=False, rng=random.Random(0))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b")]
    assert make_pairs("p", "q", [s("a", True, 1), s("b", True, 2)], 2, True, random.Random(0)) == []


def test_mine_counts_outcomes():
    prompts = [{"id": i, "prompt": f"q{i}"} for i in range(3)]
    groups = [[s("a", True, 1), s("b", False, 1)], [s("a", True, 1)] * 2, [s("x", False, 1)] * 2]
    rows, stats = mine(prompts, groups, pairs_per_prompt=1, length_match=True, seed=0)
    assert stats == {"prompts": 3, "mixed": 1, "all_correct": 1, "all_wrong": 1, "pairs": 1}
    assert rows[0]["prompt"] == "q0" and outcome(groups[0]) == "mixed"
