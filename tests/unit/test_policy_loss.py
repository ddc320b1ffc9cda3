"""The policy objectives (``train/policy_loss.py``) by hand: loss and gradient of each on two short sequences,
their defining properties, the presets in ``GRPOConfig``, and DAPO's overlong handling (reward term).

The shared batch, 2 sequences of 3 positions, the last of sequence 1 padding (mask [[1, 1, 1], [1, 1, 0]]):
    sequence 0, A = +1: token ratios r = pi/pi_old = 1.5, 0.9, 1.25
    sequence 1, A = -1: token ratios r = 0.5, 1.1, (padding: r = 3, must not count)
The per-token loss of the clipped surrogate is -min(r A, clip(r) A); where the min takes the unclipped branch its
gradient in logp is -r A (d r / d logp = r), else 0.
"""

from __future__ import annotations

import math

import pytest
import torch

from thinktune.config import load_config
from thinktune.errors import ConfigError
from thinktune.recipes import grpo
from thinktune.rewards import RewardConfig, scale_to_context, score
from thinktune.rewards.phi4 import overlong_reward
from thinktune.train.grpo_update import masked_stat_sums
from thinktune.train.losses import aggregate, grpo_token_loss, kl_k3
from thinktune.train.policy_loss import POLICY_LOSSES, PRESETS

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -1.0])
LOGPS = [[-1.0, -2.0, -0.5], [-1.5, -0.25, -1.0]]
RATIOS = [[1.5, 0.9, 1.25], [0.5, 1.1, 3.0]]


def batch(log_ratios: list[list[float]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logps with grad, old logps) with logp - old = log_ratios (default: log of RATIOS)."""
    d = torch.tensor(log_ratios) if log_ratios is not None else torch.tensor(RATIOS).log()
    logps = torch.tensor(LOGPS, requires_grad=True)
    return logps, (logps - d).detach()


def close(got, want: list[list[float]]) -> None:
    torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float32), torch.tensor(want), rtol=0, atol=1e-6)


def loss_and_grad(objective: str, clip_low: float, clip_high: float, agg: str, log_ratios=None, max_len: int = 0
                  ) -> tuple[float, list[list[float]], dict]:
    logps, old = batch(log_ratios)
    loss_t, stats = grpo_token_loss(logps, old, ADV, clip_low, clip_high, objective=objective, mask=MASK)
    loss = aggregate(loss_t, MASK, agg, num_tokens=5, num_seqs=2, max_len=max_len)
    loss.backward()
    return loss.item(), logps.grad.tolist(), stats


def test_dapo_by_hand():
    # clip band [0.8, 1.28]. Seq 0 (A = +1): 1.5 -> clipped high, -1.28, no grad; 0.9 -> -0.9; 1.25 -> -1.25 (inside
    # DAPO's band, clipped under a symmetric 0.2). Seq 1 (A = -1): 0.5 -> min(-0.5, -0.8) = -0.8, loss 0.8, clipped
    # low, no grad; 1.1 -> loss 1.1, grad -r A = +1.1.
    # token_mean over the batch's 5 tokens: (-1.28 - 0.9 - 1.25 + 0.8 + 1.1) / 5 = -1.53 / 5 = -0.306.
    loss, grad, stats = loss_and_grad("dapo", 0.2, 0.28, "token_mean")
    assert loss == pytest.approx(-0.306, abs=1e-6)
    close(grad, [[0.0, -0.18, -0.25], [0.0, 0.22, 0.0]])
    assert stats["clipped_high"].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert stats["clipped_low"].tolist() == [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_dapo_clip_higher_bounds():
    # A > 0: the ratio is held at 1 + 0.28 = 1.28, above GRPO's 1.2; A < 0: at 1 - 0.2 = 0.8, as GRPO.
    def one(d: float, a: float) -> float:
        return grpo_token_loss(torch.tensor([[d]]), torch.tensor([[0.0]]), torch.tensor([a]), *(
            PRESETS["dapo"].clip_low, PRESETS["dapo"].clip_high), objective="dapo")[0].item()

    assert one(math.log(2.0), 1.0) == pytest.approx(-1.28)
    assert one(math.log(1.25), 1.0) == pytest.approx(-1.25)  # inside [0.8, 1.28]: not clipped
    assert one(math.log(0.5), -1.0) == pytest.approx(0.8)
    assert one(math.log(1.5), -1.0) == pytest.approx(1.5)  # A < 0 above the band: pessimistic, unclipped


def test_drgrpo_by_hand():
    # Symmetric 0.2 (band [0.8, 1.2]): seq 0: -1.2 (clipped), -0.9, -1.2 (1.25 clipped); seq 1: 0.8 (clipped), 1.1.
    # Sum -1.4 over num_seqs * max_len = 2 * 4: -0.175. Gradients: -0.9 / 8 = -0.1125 and +1.1 / 8 = 0.1375.
    loss, grad, _ = loss_and_grad("drgrpo", 0.2, 0.2, "token_sum_norm", max_len=4)
    assert loss == pytest.approx(-0.175, abs=1e-6)
    close(grad, [[0.0, -0.1125, 0.0], [0.0, 0.1375, 0.0]])


# GSPO's batch: log ratios chosen so each sequence's mean is round. Seq 0: (0.3 - 0.1 + 0.1) / 3 = 0.1, s_0 = e^0.1;
# seq 1: (-0.2 + 0.0) / 2 = -0.1 over its 2 real tokens, s_1 = e^-0.1 (the padding's 5.0 must not enter).
GSPO_D = [[0.3, -0.1, 0.1], [-0.2, 0.0, 5.0]]
S0, S1 = math.exp(0.1), math.exp(-0.1)  # 1.105171, 0.904837


@pytest.mark.parametrize("objective", ["gspo", "gspo_token"])
def test_gspo_by_hand(objective):
    # With a 0.2 band neither ratio clips: loss_0 = -s_0 A_0 = -1.105171, loss_1 = -s_1 A_1 = +0.904837, seq_mean
    # (1/G) sum_i: (-1.105171 + 0.904837) / 2 = -0.100167.
    # GSPO: d loss / d logp_0t = (1/2) * -A_0 * s_0 * (1/3) = -s_0 / 6 on each of seq 0's tokens; on seq 1's real
    # tokens (1/2) * s_1 * (1/2) = s_1 / 4; 0 on the padding. GSPO-token: token t's loss is -s_it A with
    # d s_it / d logp_it = s_i, averaged by seq_mean with 1/|y_i| * 1/G: the same numbers.
    loss, grad, stats = loss_and_grad(objective, 0.2, 0.2, "seq_mean", GSPO_D)
    assert loss == pytest.approx((-S0 + S1) / 2, abs=1e-6)
    close(grad, [[-S0 / 6] * 3, [S1 / 4, S1 / 4, 0.0]])
    close(stats["ratio"], [[S0] * 3, [S1] * 3])  # one ratio per sequence


@pytest.mark.parametrize("objective", ["gspo", "gspo_token"])
def test_gspo_clips_whole_sequences(objective):
    # The paper's band [1 - 3e-4, 1 + 4e-4]: s_0 = 1.105 > 1.0004 with A > 0 and s_1 = 0.905 < 0.9997 with A < 0,
    # so both sequences clip as a whole: every token flagged, no gradient, loss (-1.0004 + 0.9997) / 2.
    p = PRESETS[objective]
    loss, grad, stats = loss_and_grad(objective, p.clip_low, p.clip_high, "seq_mean", GSPO_D)
    assert loss == pytest.approx((-(1 + 4e-4) + (1 - 3e-4)) / 2, abs=1e-7)
    assert grad == [[0.0] * 3, [0.0] * 3]
    assert stats["clipped_high"].tolist() == [[1.0] * 3, [0.0] * 3]
    assert stats["clipped_low"].tolist() == [[0.0] * 3, [1.0] * 3]
    # A sequence whose tokens' ratios are e^0.5 and e^-0.5 has s = 1: nothing clips, though a token-level clip would.
    logps = torch.tensor([[0.5, -0.5]], requires_grad=True)
    loss_t, stats = grpo_token_loss(logps, torch.zeros(1, 2), torch.tensor([1.0]), p.clip_low, p.clip_high,
                                    objective=objective)
    aggregate(loss_t, torch.ones(1, 2), "seq_mean", 2, 1).backward()
    assert stats["clipped"].sum() == 0 and close(logps.grad, [[-0.5, -0.5]]) is None


def test_cispo_by_hand_and_no_token_loses_its_gradient():
    # Weights sg[clip(r, 0, 1.28)]: 1.28 (1.5 clamped), 0.9, 1.25; 0.5, 1.1. loss_t = -w A logp:
    # seq 0 (A = +1, logp -1, -2, -0.5): 1.28, 1.8, 0.625; seq 1 (A = -1, logp -1.5, -0.25): -0.75, -0.275.
    # token_mean: (1.28 + 1.8 + 0.625 - 0.75 - 0.275) / 5 = 2.68 / 5 = 0.536; gradient -w A / 5.
    p = PRESETS["cispo"]
    loss, grad, stats = loss_and_grad("cispo", p.clip_low, p.clip_high, "token_mean")
    assert loss == pytest.approx(0.536, abs=1e-6)
    close(grad, [[-0.256, -0.18, -0.25], [0.1, 0.22, 0.0]])
    # The stats cover every position; the caller masks them (the padding's ratio 3 clamps too).
    assert (stats["clipped_high"] * MASK).tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    # The tokens DAPO drops (ratio 1.5 with A > 0, ratio 0.5 with A < 0) keep a gradient here.
    _, dapo_grad, _ = loss_and_grad("dapo", 0.2, 0.28, "token_mean")
    assert dapo_grad[0][0] == 0.0 and dapo_grad[1][0] == 0.0 and grad[0][0] != 0.0 and grad[1][0] != 0.0
    assert all(g != 0.0 for row, m in zip(grad, MASK.tolist(), strict=True) for g, x in zip(row, m, strict=True) if x)


# The clip-fraction batch: the shared MASK and ADV, ratios [[1.5, 0.7, 1.25], [0.5, 2.0, (padding) 3.0]]. Seq 0
# (A = +1) has a ratio under every band (0.7) and seq 1 (A = -1) one over it (2.0): there a PPO clip never binds
# (the min keeps the unclipped term), CISPO's weight clamps all the same.
CLIP_D = [[math.log(1.5), math.log(0.7), math.log(1.25)], [math.log(0.5), math.log(2.0), math.log(3.0)]]


@pytest.mark.parametrize(("objective", "clip_low", "clip_high", "log_ratios", "low", "high"), [
    # band [0.8, 1.2]: low 0.5 (A < 0); high 1.5 and 1.25 (A > 0): 1/5 and 2/5 of the 5 tokens
    ("grpo", 0.2, 0.2, CLIP_D, 0.2, 0.4),
    # clip-higher, band [0.8, 1.28]: 1.25 now inside, so high is 1.5 alone
    ("dapo", 0.2, 0.28, CLIP_D, 0.2, 0.2),
    # the weight clamps to [0.8, 1.28] whatever A: low 0.7 and 0.5, high 1.5 and 2.0 (the padding's 3.0 masked)
    ("cispo", 0.2, 0.28, CLIP_D, 0.4, 0.4),
    # CISPO's preset has no floor (clip_low 1.0: weight >= 0), so nothing clamps low
    ("cispo", PRESETS["cispo"].clip_low, PRESETS["cispo"].clip_high, CLIP_D, 0.0, 0.4),
    # GSPO's preset on GSPO_D: seq 0 (3 tokens) clips high, seq 1 (2 real tokens) low, counted over tokens
    ("gspo", PRESETS["gspo"].clip_low, PRESETS["gspo"].clip_high, GSPO_D, 0.4, 0.6),
])
def test_clip_fractions_split_low_and_high(objective, clip_low, clip_high, log_ratios, low, high):
    logps, old = batch(log_ratios)
    _, stats = grpo_token_loss(logps, old, ADV, clip_low, clip_high, objective=objective, mask=MASK)
    sums = masked_stat_sums(stats, MASK)  # what update() sums per micro-batch, then divides by the tokens (5)
    got = {k: float(v) / 5 for k, v in sums.items()}
    assert got["clip_fraction_low"] == pytest.approx(low) and got["clip_fraction_high"] == pytest.approx(high)
    assert got["clip_fraction"] == pytest.approx(low + high)
    assert "kl" not in got  # no reference: no KL statistic, rather than a zero one


@pytest.mark.parametrize("objective", sorted(POLICY_LOSSES))
def test_kl_and_entropy_compose_with_every_objective(objective):
    logps, old = batch()
    ref = logps.detach() - 0.5
    entropy = torch.full((2, 3), 2.0)
    plain, _ = grpo_token_loss(logps, old, ADV, 0.2, 0.28, objective=objective, mask=MASK)
    full, stats = grpo_token_loss(logps, old, ADV, 0.2, 0.28, ref, 0.1, entropy, 0.01, objective=objective,
                                  mask=MASK)
    torch.testing.assert_close(full, plain + 0.1 * kl_k3(logps, ref) - 0.01 * entropy)
    assert {"ratio", "clipped", "clipped_low", "clipped_high", "kl", "entropy"} <= stats.keys()


def test_unknown_objective_and_aggregation_need_their_inputs():
    with pytest.raises(ValueError, match="policy loss 'ppo'"):
        grpo_token_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), 0.2, 0.2, objective="ppo")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "token_sum_norm", 1, 1)


# ---------------------------------------------------------------------------------------------------------
# GRPOConfig: presets, today's defaults, contradictions


def config(*overrides: str) -> grpo.GRPOConfig:
    return load_config(grpo.GRPOConfig, None, ["data.prompts=unused.jsonl", *overrides])


def test_default_config_is_todays_grpo():
    cfg = config()
    assert (cfg.loss, cfg.advantage, cfg.loss_agg, cfg.clip_low, cfg.clip_high) == ("grpo", "grpo", "token_mean",
                                                                                    0.2, 0.2)
    assert config("advantage=drgrpo", "loss_agg=seq_mean").advantage == "drgrpo"  # grpo takes any setting


@pytest.mark.parametrize("loss, want", [
    ("drgrpo", ("drgrpo", "token_sum_norm", 0.2, 0.2)),
    ("dapo", ("grpo", "token_mean", 0.2, 0.28)),
    ("gspo", ("grpo", "seq_mean", 3e-4, 4e-4)),
    ("gspo_token", ("grpo", "seq_mean", 3e-4, 4e-4)),
    ("cispo", ("grpo", "token_mean", 1.0, 0.28)),
])
def test_presets_fill_unset_fields(loss, want):
    cfg = config(f"loss={loss}")
    assert (cfg.advantage, cfg.loss_agg, cfg.clip_low, cfg.clip_high) == want
    assert config(f"loss={loss}", "clip_high=0.5").clip_high == 0.5  # a set clip is kept
    assert config(f"loss={loss}", f"loss_agg={want[1]}").loss_agg == want[1]  # agreeing is fine


@pytest.mark.parametrize("overrides, match", [
    (["loss=drgrpo", "advantage=grpo"], "loss=drgrpo is defined with advantage=drgrpo"),
    (["loss=drgrpo", "loss_agg=token_mean"], "loss_agg=token_sum_norm"),
    (["loss=dapo", "loss_agg=seq_mean"], "use loss=grpo"),
    (["loss=gspo", "loss_agg=token_mean"], "loss_agg=seq_mean"),
    (["loss=ppo"], "choose one of grpo, drgrpo"),
])
def test_contradictions_are_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        config(*overrides)


# ---------------------------------------------------------------------------------------------------------
# DAPO's overlong handling: the soft punishment (Eq. 13) as a reward term

GOOD = "<think>Add the numbers: 4+4=8.</think> The answer is \\boxed{8}."


def test_overlong_reward_by_hand():
    # l_max 100, buffer 20: 0 up to 80 tokens, then (80 - L) / 20: -0.25 at 85, -0.5 at 90, -1 at 100 and beyond.
    assert [overlong_reward(n, 100, 20) for n in (10, 80, 85, 90, 100, 130)] == pytest.approx(
        [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])


def test_overlong_term_adds_to_the_phi4_rewards():
    # phi4-mini, correct at 90 of 100 tokens with buffer 20 and factor 0.5: 1 + 0.5 * -0.5 = 0.75.
    mini = RewardConfig(name="phi4-mini", l_max=100, l_pos_control=50, l_neg_control=10, overlong_buffer=20,
                        overlong_penalty=0.5)
    result = score(GOOD, "8", 90, True, mini)
    assert result.reward == pytest.approx(0.75) and result.components["overlong"] == pytest.approx(-0.5)
    # phi4, correct at 85 tokens: cosine rho = (85 - 50) / 50 = 0.7, R = 0.5 + 0.25 (1 + cos 0.7 pi) = 0.603054;
    # final 8/13 * 0.603054 + 1 * (-0.25) (no repetition).
    phi4 = RewardConfig(l_max=100, l_pos_control=50, l_neg_control=10, overlong_buffer=20)
    length = 0.5 + 0.25 * (1 + math.cos(0.7 * math.pi))
    assert score(GOOD, "8", 85, True, phi4).reward == pytest.approx(8 / 13 * length - 0.25)
    assert "overlong" not in score(GOOD, "8", 85, True, RewardConfig()).components  # off by default


def test_overlong_buffer_scales_and_is_checked():
    # DAPO's 4,096 of 20,480 is a fifth; here 6,349 of 31,744, scaled to 512 tokens: round(512 * 6349 / 31744) = 102.
    assert scale_to_context(RewardConfig(overlong_buffer=6349), 512).overlong_buffer == 102
    assert scale_to_context(RewardConfig(), 512).overlong_buffer == 0
    with pytest.raises(ConfigError, match="overlong_buffer"):
        RewardConfig(overlong_buffer=40_000)
    with pytest.raises(ConfigError, match="built-in rewards"):
        RewardConfig(name="my_pkg.rewards:mine", overlong_buffer=10)
