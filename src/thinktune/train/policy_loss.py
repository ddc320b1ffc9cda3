"""The GRPO-family policy objectives, one pure function each, chosen by name (``GRPOConfig.loss``).

Every objective takes the same tensors and returns per-token loss terms to minimise, before aggregation
(``losses.aggregate``), with its statistics:

    fn(logps [B, T], old_logps [B, T], advantages [B], mask [B, T], clip_low, clip_high)
        -> (loss [B, T], {"ratio", "clipped_low", "clipped_high"} each [B, T], detached)

``clipped_low`` marks tokens held at the lower bound 1 - clip_low, ``clipped_high`` at the upper bound
1 + clip_high. For the clipped surrogates a token counts only where the clip cuts its gradient (A < 0 below
the band, A > 0 above it); CISPO cuts no gradient, so there a token counts wherever its weight was clamped,
whatever the sign of A. GSPO clips whole sequences, and marks every token of a clipped one, so the update's
``update/clip_fraction_*`` (a mean over tokens, ``grpo_update.UPDATE_STATS``) is for GSPO the share of the
loss's tokens that lie in clipped sequences: one denominator for every objective, a long sequence weighing more.

An objective is more than its per-token formula: the paper also fixes how tokens are averaged and, for
Dr. GRPO, the advantage. ``PRESETS`` holds those per objective; ``GRPOConfig`` fills unset fields from it
and rejects a set field that contradicts it. The KL (k3, beta) and entropy (gamma) terms are added on top
by ``losses.grpo_token_loss``, the same for every objective.

``ImportanceCorrection`` (``GRPOConfig.correction``) and ``importance_weights`` correct every objective for
the gap between the sampler's log-probs and the trainer's on the same weights (``train.mismatch`` measures
it): a per-token multiplier of the policy term, truncated (TIS) or masking (MIS).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from thinktune.errors import ConfigError

Stats = dict[str, torch.Tensor]


def _band_flags(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the PPO clip takes the gradient away: below the band with A < 0, above it with A > 0."""
    low = ((ratio < 1 - clip_low) & (adv < 0)).float()
    high = ((ratio > 1 + clip_high) & (adv > 0)).float()
    return low, high


def _surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A), elementwise."""
    return -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv)


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      clip_low: float, clip_high: float) -> tuple[torch.Tensor, Stats]:
    """PPO's clipped surrogate per token, with DAPO's separate low and high clip (clip-higher).

    GRPO (DeepSeekMath, arXiv 2402.03300), Dr. GRPO (arXiv 2503.20783) and DAPO (arXiv 2503.14476) share this
    per-token term; they differ in advantage, aggregation and clip range (``PRESETS``).
    loss_t = -min(r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A), r_t = exp(logp_t - old_logp_t).
    ``mask`` is unused: each token's term stands alone.
    """
    ratio = torch.exp(logps - old_logps)  # [B, T]
    adv = advantages[:, None].to(logps.dtype)  # [B, 1]
    low, high = _band_flags(ratio.detach(), adv, clip_low, clip_high)
    return _surrogate(ratio, adv, clip_low, clip_high), {"ratio": ratio.detach(), "clipped_low": low,
                                                         "clipped_high": high}


def sequence_log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = mean over the sequence's masked tokens of (logp - old_logp): [B, T] -> [B, 1]."""
    m = mask.to(logps.dtype)  # [B, T]
    return ((logps - old_logps) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]


def gspo(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
         clip_low: float, clip_high: float) -> tuple[torch.Tensor, Stats]:
    """GSPO (Zheng et al., arXiv 2507.18071): one importance ratio and one clip per sequence.

    s_i = exp(mean_t(logp_it - old_logp_it)); loss_i = -min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i),
    written to every token of sequence i, so that ``seq_mean`` aggregation gives the paper's (1/G) sum_i loss_i.
    The gradient of s_i is s_i times the mean of the sequence's token gradients.
    """
    ratio = torch.exp(sequence_log_ratio(logps, old_logps, mask))  # [B, 1]
    adv = advantages[:, None].to(logps.dtype)  # [B, 1]
    low, high = _band_flags(ratio.detach(), adv, clip_low, clip_high)
    loss = _surrogate(ratio, adv, clip_low, clip_high).expand_as(logps)  # [B, T]
    return loss, {"ratio": ratio.detach().expand_as(logps), "clipped_low": low.expand_as(logps),
                  "clipped_high": high.expand_as(logps)}


def gspo_token(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
               clip_low: float, clip_high: float) -> tuple[torch.Tensor, Stats]:
    """GSPO-token (arXiv 2507.18071, section 4.3): s_it = sg[s_i] * pi_t / sg[pi_t].

    Its value is s_i on every token, so clipping is still decided per sequence, but each token keeps its own
    gradient s_i * grad logp_it (which lets per-token advantages in; with one advantage per sequence, as
    here, it equals GSPO's gradient under ``seq_mean``).
    """
    log_s = sequence_log_ratio(logps, old_logps, mask).detach()  # [B, 1]
    ratio = torch.exp(log_s + logps - logps.detach())  # [B, T], value s_i
    adv = advantages[:, None].to(logps.dtype)  # [B, 1]
    low, high = _band_flags(ratio.detach(), adv, clip_low, clip_high)
    return _surrogate(ratio, adv, clip_low, clip_high), {"ratio": ratio.detach(), "clipped_low": low,
                                                         "clipped_high": high}


def cispo(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
          clip_low: float, clip_high: float) -> tuple[torch.Tensor, Stats]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): REINFORCE weighted by the clipped, stop-gradient ratio.

    loss_t = -sg[clip(r_t, 1 - clip_low, 1 + clip_high)] A logp_t. The clip bounds the weight, never the
    gradient's support: every token with A != 0 gets gradient -w_t A grad logp_t. The loss value is not the
    surrogate's (it carries logp_t itself); only its gradient is meaningful.
    """
    ratio = torch.exp(logps - old_logps).detach()  # [B, T]
    weight = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)  # [B, T], no graph
    adv = advantages[:, None].to(logps.dtype)  # [B, 1]
    stats = {"ratio": ratio, "clipped_low": (ratio < 1 - clip_low).float(),
             "clipped_high": (ratio > 1 + clip_high).float()}
    return -weight * adv * logps, stats


PolicyLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float],
                      tuple[torch.Tensor, Stats]]

POLICY_LOSSES: dict[str, PolicyLoss] = {
    "grpo": clipped_surrogate,  # DeepSeekMath, arXiv 2402.03300
    "drgrpo": clipped_surrogate,  # Dr. GRPO, "Understanding R1-Zero-Like Training", arXiv 2503.20783
    "dapo": clipped_surrogate,  # DAPO, arXiv 2503.14476
    "gspo": gspo,  # GSPO, arXiv 2507.18071
    "gspo_token": gspo_token,  # GSPO-token, arXiv 2507.18071 section 4.3
    "cispo": cispo,  # CISPO, MiniMax-M1, arXiv 2506.13585
}


@dataclass(frozen=True)
class Preset:
    """What an objective's paper fixes beside the per-token term. ``advantage``/``loss_agg`` None: free
    (``GRPOConfig`` then takes ``default_*``); a value: a set config field must equal it."""

    advantage: str | None
    loss_agg: str | None
    clip_low: float
    clip_high: float
    default_advantage: str = "grpo"
    default_loss_agg: str = "token_mean"


PRESETS: dict[str, Preset] = {
    # Today's behaviour, unchanged: advantage and aggregation free, token_mean and a symmetric 0.2 by default.
    "grpo": Preset(None, None, 0.2, 0.2),
    # No std division and no 1/|o_i|: a constant normaliser (the generation budget), both are the point.
    "drgrpo": Preset("drgrpo", "token_sum_norm", 0.2, 0.2),
    # Token-level normalisation over the batch and clip-higher (paper: eps_low 0.2, eps_high 0.28).
    "dapo": Preset(None, "token_mean", 0.2, 0.28),
    # One term per sequence, (1/G) sum_i; the paper's clip range, 3e-4 / 4e-4.
    "gspo": Preset(None, "seq_mean", 3e-4, 4e-4),
    "gspo_token": Preset(None, "seq_mean", 3e-4, 4e-4),
    # Normalised by the batch's tokens; no lower bound on the weight (the paper sets eps_low large). The paper
    # tunes eps_high without reporting it: 0.28 is our choice, DAPO's upper clip.
    "cispo": Preset(None, "token_mean", 1.0, 0.28),
}


def resolve(loss: str, advantage: str, loss_agg: str, clip_low: float | None, clip_high: float | None
            ) -> tuple[str, str, float, float]:
    """The objective's settings with the unset ones ("" or None) taken from its preset.

    Returns:
        (advantage, loss_agg, clip_low, clip_high).

    Raises:
        ValueError: an unknown objective, or a set advantage or aggregation its paper contradicts.
    """
    if loss not in PRESETS:
        raise ValueError(f"loss={loss!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[loss]
    for key, fixed, given in (("advantage", p.advantage, advantage), ("loss_agg", p.loss_agg, loss_agg)):
        if fixed is not None and given and given != fixed:
            raise ValueError(f"loss={loss} is defined with {key}={fixed}, but {key}={given} is set; drop the {key} "
                             f"setting, or use loss=grpo, which takes any {key}")
    return (advantage or p.advantage or p.default_advantage, loss_agg or p.loss_agg or p.default_loss_agg,
            p.clip_low if clip_low is None else clip_low, p.clip_high if clip_high is None else clip_high)


# ---------------------------------------------------------------------------------------------------------
# Rollout-trainer mismatch correction

CORRECTION_MODES = ("none", "tis", "mis_token", "mis_sequence")


@dataclass(frozen=True)
class ImportanceCorrection:
    """How the update corrects for the sampler's log-probs differing from the trainer's (``GRPOConfig.correction``).

    With rho_t = pi_old(x_t) / q(x_t), the trainer's old log-prob against the sampler's (``importance_weights``):
    ``mode`` none: no correction, today's update exactly; tis: each token's policy term times min(rho_t, cap);
    mis_token / mis_sequence: tokens / whole sequences whose ratio lies outside [1/cap, cap] leave the policy term.
    ``recompute_old_logps``: a no-grad forward before the first pass gives pi_old, and the PPO ratio takes it
    in place of the sampler's log-probs (``grpo_update.update`` lists every role).

    Raises:
        ConfigError: an unknown mode, a cap that is not a finite number > 1, or a correction without
            ``recompute_old_logps``.
    """

    mode: str = "none"  # none | tis | mis_token | mis_sequence
    cap: float = 2.0  # C: tis caps the weight at C; mis keeps ratios in [1/C, C]
    recompute_old_logps: bool = False  # the PPO ratio's old log-probs: the trainer's (a no-grad pass), not the sampler's

    def __post_init__(self) -> None:
        if self.mode not in CORRECTION_MODES:
            raise ConfigError(f"correction.mode={self.mode!r}; choose one of {', '.join(CORRECTION_MODES)}")
        if not (math.isfinite(self.cap) and self.cap > 1):
            raise ConfigError(f"correction.cap={self.cap} must be a finite number > 1 (the weight's ceiling; "
                              f"mis keeps ratios in [1/cap, cap]); the usual value is 2")
        if self.mode != "none" and not self.recompute_old_logps:
            # Against the sampler's log-probs the PPO ratio pi/q already holds the gap pi_old/q, and the weight
            # would count it a second time (verl's "bypass" mode, likewise, applies no weight to a PPO loss).
            raise ConfigError(f"correction.mode={self.mode} weights the PPO ratio against the trainer's own old "
                              "log-probs, so it needs correction.recompute_old_logps=true")


def importance_weights(trainer_old_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, mode: str,
                       cap: float) -> tuple[torch.Tensor, Stats]:
    """The per-token multiplier of the policy term that corrects for the sampler-trainer gap, with its flags.

    rho_t = exp(trainer_old_logp_t - sampler_logp_t) = pi_old(x_t) / q(x_t): x_t was drawn from q (the sampler's
    kernels), the update's objective is under pi_old (the trainer's forward on the same weights).

    - "none": w_t = 1.
    - "tis": w_t = min(rho_t, cap), truncated importance sampling (Yao et al. 2025, "Your efficient RL framework
      secretly brings you off-policy RL training"; verl's token-level rollout IS in truncate mode, TRL's
      ``vllm_importance_sampling_correction``). Flag "capped": rho_t > cap.
    - "mis_token": w_t = 1 if 1/cap <= rho_t <= cap, else 0: verl's rollout-correction rejection sampling,
      ``rollout_rs="token"`` with ``rollout_rs_threshold=cap`` and its default lower bound 1/cap, without IS
      weights. Not IcePop (Ring-1T), which keeps rho_t as the weight inside its band [0.5, 5].
    - "mis_sequence": the same test on the sequence's ratio prod_t rho_t (the exp of the sum of log rho_t over
      its masked tokens), keeping or dropping all its tokens together: verl's ``rollout_rs="sequence"``.
    Flag "masked": w_t = 0 on a real token (mis).

    Args:
        trainer_old_logps: [B, T] log pi_old of the sampled tokens (no gradient is taken through it).
        sampler_logps: [B, T] log q, what the sampler gave for the same tokens.
        mask: [B, T] 1 on real tokens; the values elsewhere are never read.
        mode: one of ``CORRECTION_MODES``.
        cap: C > 1.

    Returns:
        (weights [B, T] float32, 0 off the mask, no graph; {"capped", "masked"} each [B, T], 0/1 float32).
    """
    keep = mask.bool()  # [B, T]
    # float64: rho of a float32 pair near 1 keeps its digits, and the clamp below keeps exp finite.
    log_rho = torch.where(keep, trainer_old_logps.detach().double() - sampler_logps.double(), 0.0)  # [B, T]
    log_cap = math.log(cap)
    none = torch.zeros_like(keep)  # [B, T] bool
    if mode == "none":
        weights, capped, masked = keep.double(), none, none
    elif mode == "tis":
        weights, capped, masked = torch.exp(log_rho.clamp(max=log_cap)), log_rho > log_cap, none
    elif mode == "mis_token":
        inside = log_rho.abs() <= log_cap  # [B, T]
        weights, capped, masked = inside.double(), none, keep & ~inside
    elif mode == "mis_sequence":
        inside = (log_rho.sum(-1, keepdim=True).abs() <= log_cap).expand_as(keep)  # [B, T], one value per row
        weights, capped, masked = inside.double(), none, keep & ~inside
    else:
        raise ValueError(f"correction mode {mode!r}; choose one of {', '.join(CORRECTION_MODES)}")
    weights = (weights * keep).float()  # [B, T]
    return weights, {"capped": (capped & keep).float(), "masked": masked.float()}
