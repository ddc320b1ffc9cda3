"""Tests for thinktune.rollout.sampling: the token-selection math, on fixed logits, over many draws.

Frequencies are checked with a chi-square test at significance 1e-3. The critical value comes from the
Wilson-Hilferty approximation chi2_{df, 1-a} ~ df * (1 - 2/(9 df) + z * sqrt(2/(9 df)))^3 with z = 3.09
for a = 1e-3 (accurate to <1% for df >= 5), so no scipy is needed. Seeds are fixed: a test that passes
passes every time.
"""

from __future__ import annotations

import math

import pytest
import torch

from thinktune.rollout.sampling import select_tokens

Z_999 = 3.090232  # standard normal quantile at 0.999


def chi2_critical(df: int) -> float:
    c = 2 / (9 * df)
    return df * (1 - c + Z_999 * math.sqrt(c)) ** 3


def chi2_stat(tokens: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic of the token counts against ``probs`` [V], over the support of ``probs``."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()  # [V]
    expected = probs.double() * tokens.numel()  # [V]
    support = expected > 0
    assert counts[~support].sum() == 0, "drew a token of probability 0"
    stat = ((counts[support] - expected[support]) ** 2 / expected[support]).sum().item()
    return stat, int(support.sum()) - 1


def draw(logits: torch.Tensor, rows: int, seed: int = 0, **kw) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    opts = dict(greedy=False, temperature=1.0, top_k=0, top_p=1.0) | kw
    return select_tokens(logits.expand(rows, -1), generator=g, **opts)


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -3.0, 1.5, 0.2])  # [V=10], no ties


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_frequencies_match_softmax(temperature):
    tokens, _, _ = draw(LOGITS, 40_000, temperature=temperature)
    stat, df = chi2_stat(tokens, torch.softmax(LOGITS / temperature, dim=-1))
    assert stat < chi2_critical(df), (stat, chi2_critical(df))


def test_the_chi2_test_rejects_a_wrong_distribution():
    tokens, _, _ = draw(LOGITS, 40_000, temperature=1.0)
    stat, df = chi2_stat(tokens, torch.softmax(LOGITS / 1.1, dim=-1))  # a 10% temperature error
    assert stat > chi2_critical(df)


def nucleus(logits: torch.Tensor, top_p: float) -> set[int]:
    """Reference: the most likely tokens, in order, until their mass reaches top_p (a plain loop)."""
    probs = torch.softmax(logits, dim=-1).tolist()
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= top_p:
            break
        kept.add(i)
        mass += probs[i]
    return kept


def test_top_p_never_leaves_the_nucleus_and_renormalises():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(100, 12, generator=g) * 2  # [B, V] different rows
    for top_p in (0.3, 0.6, 0.9):
        tokens, _, _ = select_tokens(logits, greedy=False, temperature=1.0, top_k=0, top_p=top_p,
                                     generator=torch.Generator().manual_seed(2))
        for row, tok in zip(logits, tokens.tolist(), strict=True):
            assert tok in nucleus(row, top_p)
    kept = sorted(nucleus(LOGITS, 0.6))
    tokens, _, slogps = draw(LOGITS, 20_000, top_p=0.6)
    probs = torch.zeros_like(LOGITS)
    probs[kept] = torch.softmax(LOGITS[kept], dim=-1)
    stat, df = chi2_stat(tokens, probs)
    assert stat < chi2_critical(df)
    torch.testing.assert_close(slogps, probs.log()[tokens])


def test_top_k_keeps_the_k_largest_and_reports_the_renormalised_logprob():
    tokens, logps, slogps = draw(LOGITS, 5000, top_k=3, temperature=0.5)
    top3 = set(torch.topk(LOGITS, 3).indices.tolist())
    assert set(tokens.tolist()) == top3
    torch.testing.assert_close(logps, torch.log_softmax(LOGITS, -1)[tokens])
    kept = sorted(top3)
    expected = torch.log_softmax(LOGITS[kept] / 0.5, -1)
    lookup = dict(zip(kept, expected.tolist(), strict=True))
    torch.testing.assert_close(slogps, torch.tensor([lookup[t] for t in tokens.tolist()]))


def test_greedy_is_argmax_and_logps_are_the_models():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 50, generator=g)
    tokens, logps, slogps = select_tokens(logits, greedy=True, temperature=1.0, top_k=0, top_p=1.0,
                                          generator=None)
    assert torch.equal(tokens, logits.argmax(-1))
    torch.testing.assert_close(logps, torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1))
    assert torch.all(slogps == 0)


def test_banned_tokens_are_never_drawn_and_temperature_one_logps_agree():
    banned = torch.tensor([0, 8])  # the two most likely tokens
    tokens, logps, slogps = draw(LOGITS, 5000, banned=banned)
    assert not torch.isin(tokens, banned).any()
    torch.testing.assert_close(logps, torch.log_softmax(LOGITS, -1)[tokens])
    allowed = LOGITS.index_fill(0, banned, float("-inf"))
    torch.testing.assert_close(slogps, torch.log_softmax(allowed, -1)[tokens])
    tokens, logps, slogps = draw(LOGITS, 100)  # T=1, no filter: the sampled distribution is the model's
    assert torch.equal(logps, slogps)


def test_same_seed_same_draws():
    a, _, _ = draw(LOGITS, 200, seed=7)
    b, _, _ = draw(LOGITS, 200, seed=7)
    c, _, _ = draw(LOGITS, 200, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
