"""The rollout-trainer mismatch correction (``policy_loss.importance_weights``, ``ImportanceCorrection``) by hand.

Two sequences of 3 positions, the last of sequence 1 padding (mask [[1, 1, 1], [1, 1, 0]]), with
rho = pi_old / q = exp(trainer_old - sampler) per token:

    sequence 0, A = +1:  rho = 3.0, 1.5, 0.25                    product 1.125
    sequence 1, A = -1:  rho = 0.8, 3.0, (padding: 0.5)          product 2.4 (1.2 if the padding counted)

With cap C = 2 (keep band [1/2, 2] for MIS):

    tis           w = [[2, 1.5, 0.25], [0.8, 2, 0]]   capped [[1, 0, 0], [0, 1, 0]]: 2 of 5 tokens
    mis_token     w = [[0, 1, 0], [1, 0, 0]]          masked: 3.0, 0.25 and 3.0, 3 of 5 tokens
    mis_sequence  w = [[1, 1, 1], [0, 0, 0]]          1.125 is inside the band, 2.4 is not: sequence 1 masked

The objective (grpo, clip 0.2) on the first pass, where the current log-probs are the trainer's old ones, so
every ratio r is 1: loss_t = -min(r A, clip(r) A) = -A, gradient in logp_t -r A = -A. The correction multiplies
each term by w_t, so with token_mean over the 5 tokens

    loss = sum_t w_t (-A) / 5,   d loss / d logp_t = -w_t A / 5:
    none          (-3 + 2) / 5 = -0.2                grad [[-0.2, -0.2, -0.2], [0.2, 0.2, 0]]
    tis           (-3.75 + 2.8) / 5 = -0.19          grad [[-0.4, -0.3, -0.05], [0.16, 0.4, 0]]
    mis_token     (-1 + 1) / 5 = 0                   grad [[0, -0.2, 0], [0.2, 0, 0]]
    mis_sequence  -3 / 5 = -0.6                      grad [[-0.2, -0.2, -0.2], [0, 0, 0]]
"""

from __future__ import annotations

import math

import pytest
import torch

from thinktune.config import load_config
from thinktune.errors import ConfigError
from thinktune.recipes import grpo
from thinktune.train.losses import aggregate, grpo_token_loss
from thinktune.train.policy_loss import ImportanceCorrection, importance_weights

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -1.0])
TRAINER_OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.25, -1.0]])
RHO = torch.tensor([[3.0, 1.5, 0.25], [0.8, 3.0, 0.5]])
SAMPLER = TRAINER_OLD - RHO.log()

WEIGHTS = {
    "none": [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]],
    "tis": [[2.0, 1.5, 0.25], [0.8, 2.0, 0.0]],
    "mis_token": [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
    "mis_sequence": [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]],
}
LOSS = {"none": -0.2, "tis": -0.19, "mis_token": 0.0, "mis_sequence": -0.6}
GRAD = {
    "none": [[-0.2, -0.2, -0.2], [0.2, 0.2, 0.0]],
    "tis": [[-0.4, -0.3, -0.05], [0.16, 0.4, 0.0]],
    "mis_token": [[0.0, -0.2, 0.0], [0.2, 0.0, 0.0]],
    "mis_sequence": [[-0.2, -0.2, -0.2], [0.0, 0.0, 0.0]],
}


def close(got, want) -> None:
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float32), torch.as_tensor(want, dtype=torch.float32),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", list(WEIGHTS))
def test_weights_by_hand(mode):
    w, flags = importance_weights(TRAINER_OLD, SAMPLER, MASK, mode, 2.0)
    close(w, WEIGHTS[mode])
    assert w.dtype == torch.float32
    want_capped = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] if mode == "tis" else [[0.0] * 3] * 2
    want_masked = {"mis_token": [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
                   "mis_sequence": [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]}.get(mode, [[0.0] * 3] * 2)
    assert flags["capped"].tolist() == want_capped
    assert flags["masked"].tolist() == want_masked


def test_the_cap_moves_the_bounds():
    # C = 4 (no ratio on a bound; floats decide ties there): tis caps nothing and leaves w = rho on the mask;
    # mis_token with C = 5, band [0.2, 5], keeps every token.
    w, flags = importance_weights(TRAINER_OLD, SAMPLER, MASK, "tis", 4.0)
    close(w, (RHO * MASK).tolist())
    assert flags["capped"].sum() == 0
    w, _ = importance_weights(TRAINER_OLD, SAMPLER, MASK, "mis_token", 5.0)
    close(w, WEIGHTS["none"])
    # C = 3: the sequence band [1/3, 3] takes sequence 1's 2.4 in.
    w, _ = importance_weights(TRAINER_OLD, SAMPLER, MASK, "mis_sequence", 3.0)
    close(w, WEIGHTS["none"])


def test_padding_is_never_read_and_no_gradient_flows():
    trainer = TRAINER_OLD.clone().requires_grad_(True)
    sampler = SAMPLER.clone()
    sampler[1, 2] = float("nan")  # padding: any value
    for mode in WEIGHTS:
        w, flags = importance_weights(trainer, sampler, MASK, mode, 2.0)
        close(w, WEIGHTS[mode])
        assert not w.requires_grad and torch.isfinite(flags["capped"]).all()


@pytest.mark.parametrize("mode", list(WEIGHTS))
def test_effect_on_loss_and_gradient(mode):
    w, _ = importance_weights(TRAINER_OLD, SAMPLER, MASK, mode, 2.0)
    logps = TRAINER_OLD.clone().requires_grad_(True)  # the first pass: current = trainer old, every ratio 1
    loss_t, stats = grpo_token_loss(logps, TRAINER_OLD, ADV, 0.2, 0.2, mask=MASK, weights=w)
    loss = aggregate(loss_t, MASK, "token_mean", num_tokens=5, num_seqs=2)
    loss.backward()
    assert loss.item() == pytest.approx(LOSS[mode], abs=1e-6)
    close(logps.grad, GRAD[mode])
    close(stats["ratio"], [[1.0] * 3] * 2)  # the weight leaves the ratio and its statistics alone


def test_mode_none_leaves_the_loss_identical():
    # Exactly today's loss: no weights at all, and the weights of mode none (1.0 on the mask) change no bit on it.
    logps = TRAINER_OLD + torch.tensor([[0.3, -0.1, 0.05], [0.2, -0.4, 0.0]])
    ref = TRAINER_OLD - 0.2
    entropy = torch.full_like(logps, 0.7)
    plain, _ = grpo_token_loss(logps, SAMPLER, ADV, 0.2, 0.28, ref, 0.1, entropy, 0.01, mask=MASK)
    unweighted, _ = grpo_token_loss(logps, SAMPLER, ADV, 0.2, 0.28, ref, 0.1, entropy, 0.01, mask=MASK, weights=None)
    ones, _ = importance_weights(TRAINER_OLD, SAMPLER, MASK, "none", 2.0)
    weighted, _ = grpo_token_loss(logps, SAMPLER, ADV, 0.2, 0.28, ref, 0.1, entropy, 0.01, mask=MASK, weights=ones)
    assert torch.equal(plain, unweighted)
    assert torch.equal(plain * MASK, weighted * MASK)


def test_only_the_policy_term_is_weighted():
    # With KL (beta) and entropy (gamma) terms, the weighted loss differs from the plain one by (w - 1) policy_t:
    # on the first pass policy_t = -A, so by -(w - 1) A, and the KL and entropy terms are the same in both.
    w, _ = importance_weights(TRAINER_OLD, SAMPLER, MASK, "tis", 2.0)
    ref, entropy = TRAINER_OLD - 0.2, torch.full_like(TRAINER_OLD, 0.7)
    args = (TRAINER_OLD, TRAINER_OLD, ADV, 0.2, 0.2, ref, 0.1, entropy, 0.01)
    plain, _ = grpo_token_loss(*args, mask=MASK)
    weighted, _ = grpo_token_loss(*args, mask=MASK, weights=w)
    close((weighted - plain) * MASK, -(w - 1) * ADV[:, None] * MASK)


def test_config_defaults_and_overrides():
    assert ImportanceCorrection() == ImportanceCorrection(mode="none", cap=2.0, recompute_old_logps=False)
    cfg = load_config(grpo.GRPOConfig, None, ["data.prompts=unused.jsonl"])
    assert cfg.correction == ImportanceCorrection()
    cfg = load_config(grpo.GRPOConfig, None, ["data.prompts=unused.jsonl", "correction.mode=mis_sequence",
                                              "correction.cap=3", "correction.recompute_old_logps=true"])
    assert cfg.correction == ImportanceCorrection("mis_sequence", 3.0, True)
    # recompute_old_logps alone is a setting of its own: the PPO ratio against the trainer's old log-probs
    assert load_config(grpo.GRPOConfig, None, ["data.prompts=unused.jsonl", "correction.recompute_old_logps=true"]
                       ).correction.mode == "none"


@pytest.mark.parametrize(("overrides", "match"), [
    (["correction.mode=is"], r"correction\.mode='is'; choose one of none, tis, mis_token, mis_sequence"),
    (["correction.cap=1"], r"correction\.cap=1\.0 must be a finite number > 1"),
    (["correction.cap=0.5"], r"correction\.cap=0\.5"),
    (["correction.cap=inf"], r"correction\.cap=inf"),
    (["correction.mode=tis"], r"correction\.mode=tis .* needs correction\.recompute_old_logps=true"),
    (["correction.mode=mis_token", "correction.recompute_old_logps=false"], r"correction\.recompute_old_logps"),
    (["correction.capp=3"], r"unknown key 'correction\.capp'; did you mean 'correction\.cap'"),
])
def test_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(grpo.GRPOConfig, None, ["data.prompts=unused.jsonl", *overrides])


def test_nan_cap_is_refused():
    with pytest.raises(ConfigError, match="correction.cap=nan"):
        ImportanceCorrection(cap=math.nan)
