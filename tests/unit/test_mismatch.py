"""The sampler-vs-trainer mismatch figures (``thinktune.train.mismatch``) on hand-worked values.

Case A, one row of three real tokens and one padding column, r = trainer - sampler:

    sampler   -1.0  -2.0  -0.5  | nan   (padding: never read)
    trainer   -1.0  -1.5  -1.5  | inf
    r          0.0   0.5  -1.0
    |r|        0.0   0.5   1.0      abs_mean = 1.5 / 3 = 0.5, abs_max = 1.0
    k3         0     e^0.5 - 1.5    e^-1 + 1 - 1 = e^-1
               kl_k3 = (e^0.5 - 1.5 + e^-1) / 3
"""

from __future__ import annotations

import math

import pytest
import torch

from thinktune.train.mismatch import FIGURES, abs_diff, k3, mismatch_figures, worst_token

SAMPLER = torch.tensor([[-1.0, -2.0, -0.5, float("nan")]])  # [1, 4]
TRAINER = torch.tensor([[-1.0, -1.5, -1.5, float("inf")]])  # [1, 4]
MASK = torch.tensor([[1, 1, 1, 0]])  # [1, 4]


def test_hand_worked_figures():
    figs = mismatch_figures(SAMPLER, TRAINER, MASK)
    assert list(figs) == list(FIGURES)
    assert figs["mismatch/abs_mean"] == pytest.approx(0.5)
    assert figs["mismatch/abs_max"] == pytest.approx(1.0)
    assert figs["mismatch/kl_k3"] == pytest.approx((math.exp(0.5) - 1.5 + math.exp(-1)) / 3)


def test_per_token_values_and_padding_is_zero():
    assert abs_diff(SAMPLER, TRAINER, MASK).tolist() == [[0.0, 0.5, 1.0, 0.0]]
    assert k3(SAMPLER, TRAINER, MASK)[0].tolist() == pytest.approx([0.0, math.exp(0.5) - 1.5, math.exp(-1), 0.0])


def test_k3_direction_is_kl_sampler_to_trainer():
    """Tokens drawn from the sampler q in exactly q's proportions: the mean k3 over them is E_q[k3], which for
    r = log p - log q is KL(q || p) exactly (E_q[p/q] = 1), and not KL(p || q)."""
    q = [0.5, 0.25, 0.25]
    p = [0.05, 0.15, 0.8]
    drawn = [0, 0, 1, 2]  # token 0 twice, 1 and 2 once each: q's proportions
    sampler = torch.tensor([[math.log(q[x]) for x in drawn]])  # [1, 4]
    trainer = torch.tensor([[math.log(p[x]) for x in drawn]])  # [1, 4]
    kl_q_p = sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
    kl_p_q = sum(pi * math.log(pi / qi) for qi, pi in zip(q, p, strict=True))
    got = mismatch_figures(sampler, trainer, torch.ones(1, 4))["mismatch/kl_k3"]
    assert got == pytest.approx(kl_q_p, rel=1e-6)
    assert got != pytest.approx(kl_p_q, rel=0.1)  # 0.99 against 0.74: the test tells the directions apart


def test_equal_logps_give_zeros_and_mean_counts_every_token_once():
    a = torch.tensor([[-0.3, -2.0, 0.0], [-1.0, 0.0, 0.0]])  # [2, 3]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert mismatch_figures(a, a, mask) == dict.fromkeys(FIGURES, 0.0)
    # One row of two tokens off by 0.3 and one of one token off by 0.9: 3 tokens, not 2 rows, in the mean.
    b = a + torch.tensor([[0.3, 0.3, 5.0], [0.9, 5.0, 5.0]])
    figs = mismatch_figures(a, b, mask)
    assert figs["mismatch/abs_mean"] == pytest.approx((0.3 + 0.3 + 0.9) / 3)
    assert figs["mismatch/abs_max"] == pytest.approx(0.9)
    assert worst_token(a, b, mask) == (1, 0)


def test_inputs_are_not_changed():
    s, t = SAMPLER.clone(), TRAINER.clone()
    mismatch_figures(s, t, MASK)
    assert torch.equal(s[:, :3], SAMPLER[:, :3]) and torch.equal(t, TRAINER)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        mismatch_figures(SAMPLER, TRAINER[:, :3], MASK)
    with pytest.raises(ValueError, match="no token"):
        mismatch_figures(SAMPLER, TRAINER, torch.zeros_like(MASK))
