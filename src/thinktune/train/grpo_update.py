"""One GRPO update from a step's kept samples: the rollouts, the passes over them, and their statistics.

``recipes/grpo.py`` runs the loop (sample, score, select, update); this module is the update it calls:
``build_rollouts`` turns the kept samples into flat tensors with their group advantages, and ``update`` runs
``updates_per_batch`` passes of the configured objective (``train.policy_loss``) with the KL and entropy terms,
logging the clip fractions, the KL, the entropy and, on its first pass, how far the sampler's log-probs are
from the training forward's (``train.mismatch``). ``cfg.correction`` (``policy_loss.ImportanceCorrection``)
can correct the update for that gap (TIS, MIS); ``update``'s docstring says which log-probs play which role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from thinktune import runtime
from thinktune.errors import ConfigError
from thinktune.rollout.sampler import Completion
from thinktune.train import distributed
from thinktune.train.advantages import group_advantages
from thinktune.train.logprobs import PromptCache, length_sorted_chunks, right_padded
from thinktune.train.losses import aggregate, grpo_token_loss
from thinktune.train.mismatch import abs_diff, k3
from thinktune.train.policy_loss import importance_weights

if TYPE_CHECKING:
    from thinktune.recipes.grpo import GRPOConfig


@dataclass
class Rollouts:
    """The samples of one step that enter the update, flattened: N completions of the step's prompts."""

    prompts: list[list[int]]  # the step's prompts, each once
    prompt_index: list[int]  # [N] which prompt each completion answers
    completions: list[list[int]]  # [N] completion tokens
    # [N] per completion token, under the sampling distribution; None when the sampler gives none (vLLM):
    # the update's first pass, which runs on the weights that sampled, then provides them.
    old_logps: list[list[float]] | None
    advantages: torch.Tensor  # [N]
    in_loss: list[bool] | None = None  # [N] False: out of the loss (mask_truncated); None: every completion in



def build_rollouts(prompts: list[list[int]], groups: list[list[Completion]], rewards: list[list[float]],
                   keep: list[tuple[int, int]], cfg: GRPOConfig) -> Rollouts:
    r = torch.tensor([rewards[p][j] for p, j in keep])  # [N]
    adv = group_advantages(r, torch.tensor([p for p, _ in keep]), cfg.advantage) if keep else torch.zeros(0)
    old = [groups[p][j].sampling_logprobs for p, j in keep]
    return Rollouts(prompts=prompts, prompt_index=[p for p, _ in keep],
                    completions=[groups[p][j].token_ids for p, j in keep],  # each ends with its EOS, so never empty
                    old_logps=None if any(x is None for x in old) else old, advantages=adv,
                    in_loss=[groups[p][j].finished or not cfg.mask_truncated for p, j in keep])


def update(model, reference, optimizer, ro: Rollouts, cfg: GRPOConfig, temperature: float, pad_id: int,
           rt: runtime.Runtime) -> dict[str, float]:
    """``updates_per_batch`` passes of the GRPO objective over the step's rollouts; returns update stats.

    Log-probs come from ``PromptCache``: each prompt forwarded once per pass, completions in micro-batches
    of similar length (see ``thinktune.train.logprobs``). Without the sampler's log-probs (``ro.old_logps`` None),
    the old policy's are the first pass's own, detached: that pass runs before any optimizer step, on the
    weights that sampled, so its ratio is exactly 1 (what TRL does for one pass, and verl's recomputation).

    Which log-probs play which role, per sampled token x_t (``cfg.correction``, ``policy_loss.ImportanceCorrection``):

    - the sampler's, log q(x_t): ``ro.old_logps``, under the distribution the tokens were drawn from (None with
      vLLM). The ``mismatch/*`` figures compare them with the first pass's log-probs, whatever the correction.
    - the trainer's old ones, log pi_old(x_t): the training forward on the weights that sampled, before any
      optimizer step. With ``correction.recompute_old_logps`` a no-grad pass over the rollouts computes them
      before the first pass; without it the first pass computes the same numbers along the way.
    - the PPO ratio's old log-probs, r_t = exp(logp_t - old_t): the trainer's old ones with
      ``recompute_old_logps``; else the sampler's when given (the default: the update as before the
      correction existed); else the first pass's own.
    - the correction's weight (``correction.mode`` tis, mis_token, mis_sequence, which need
      ``recompute_old_logps``): from rho_t = pi_old(x_t) / q(x_t), trainer old against sampler
      (``policy_loss.importance_weights``); fixed for the step, without gradient, it multiplies each token's
      policy term in every pass. The KL and entropy terms are not weighted, and the loss keeps its
      denominators (a masked token counts as a zero term).
    - the current ones, log pi_theta(x_t): each pass's forward, with gradient.

    Raises:
        ConfigError: a correction mode without the sampler's log-probs (vLLM gives none), before the update's
            passes.
    """
    corr = cfg.correction
    n = len(ro.completions)
    micro = length_sorted_chunks([len(c) for c in ro.completions], cfg.micro_batch_size)
    micro = distributed.pad_passes(micro)  # FSDP: every rank runs as many passes as the busiest one
    in_loss = ro.in_loss or [True] * n  # the advantages saw every completion; the loss sees these
    num_tokens, n = sum(len(c) for c, x in zip(ro.completions, in_loss, strict=True) if x), sum(in_loss)
    # The loss is normalised by the counts over all ranks, so N ranks make the one-process loss.
    num_tokens, n = (int(v) for v in distributed.all_sum(num_tokens, n))
    autocast = rt.dtype if rt.dtype != torch.float32 else None

    def new_cache(m) -> PromptCache:
        return PromptCache(m, ro.prompts, pad_id, cfg.share_prompt, autocast, compile=cfg.model.compile)

    def forward(cache: PromptCache, idx: list[int], need_entropy: bool | str):
        if not idx:  # a filler pass (distributed.pad_passes): run the model so FSDP's collectives match
            logps, entropy, mask = cache.logps([0], [[pad_id]], temperature, need_entropy)
            return logps, entropy, mask * 0
        return cache.logps([ro.prompt_index[i] for i in idx], [ro.completions[i] for i in idx], temperature,
                           need_entropy)

    ref_logps = []
    if cfg.beta and reference is not None:
        with torch.no_grad():
            ref_cache = new_cache(reference)
            ref_logps = [forward(ref_cache, idx, False)[0] for idx in micro]
        distributed.reshard(reference)  # FSDP leaves a root's weights gathered after a forward with no backward
    trainer_old: list[torch.Tensor] = []  # per micro-batch, with recompute_old_logps: log pi_old [B, T]
    weights: list[torch.Tensor] = []  # per micro-batch, with a correction mode: w [B, T]
    corrected = torch.zeros(3, dtype=torch.float64)  # [capped, masked, sum of w] over the tokens in the loss
    if corr.recompute_old_logps:
        with torch.no_grad():
            trainer_old, weights, corrected = old_and_weights(new_cache(model), forward, micro, ro, in_loss, cfg)
        distributed.reshard(model)
    # Statistics stay on the device until the update ends: reading each one as it comes would make the CPU
    # wait for the GPU after every micro-batch.
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in UPDATE_STATS}
    grad_norms = []
    first_pass: list[torch.Tensor] = []  # per micro-batch, the old policy's log-probs when nothing else gives them
    # Per micro-batch of the first pass (the weights that sampled): [sum |Δ|, max |Δ|, sum k3, tokens] between the
    # sampler's log-probs and the training forward's, which agree up to rounding unless kernels or dtypes differ.
    drift: list[torch.Tensor] = []
    for u in range(cfg.updates_per_batch):
        cache = new_cache(model)
        for k, idx in enumerate(micro):
            logps, entropy, mask = forward(cache, idx, need_entropy="grad" if cfg.gamma else True)  # [B, T] each
            sampler = padded_sampler_logps(ro, idx, logps.shape[1], rt.device)  # [B, T] or None
            if sampler is not None and u == 0 and idx:
                gap = abs_diff(sampler, logps.detach(), mask)
                drift.append(torch.stack([gap.sum(), gap.max(), k3(sampler, logps.detach(), mask).sum(),
                                          mask.sum().double()]))
            old = ppo_old_logps(k, logps, sampler, trainer_old, first_pass)  # [B, T]
            advantages = ro.advantages[idx] if idx else torch.zeros(1)
            mask = loss_mask(mask, idx, in_loss)  # [B, T]
            loss_t, stats = grpo_token_loss(logps, old, advantages.to(rt.device), cfg.clip_low, cfg.clip_high,
                                            ref_logps[k] if ref_logps else None, cfg.beta if ref_logps else 0.0,
                                            entropy, cfg.gamma, objective=cfg.loss, mask=mask,
                                            weights=weights[k] if weights else None)
            (aggregate(loss_t, mask, cfg.loss_agg, num_tokens, n, cfg.sampling.max_new_tokens)
             * distributed.loss_scale(rt)).backward()
            for key, total in masked_stat_sums(stats, mask).items():
                parts[key].append(total)
        cache.backward_prompts()
        grad_norms.append(distributed.clip_grad_norm(model, cfg.optim.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sums = {k: float(torch.stack(v).cpu().double().sum()) if v else 0.0 for k, v in parts.items()}
    sums = dict(zip(sums, distributed.all_sum(*sums.values()), strict=True))
    denom = max(num_tokens * cfg.updates_per_batch, 1)
    # clip_grad_norm_ returns the global norm before it clips, the same on every rank: the mean over the passes
    # says how large the step's gradients were, not the ceiling grad_clip put on them.
    grad_norm = float(torch.stack(grad_norms).cpu().double().mean())
    return ({f"update/{k}": v / denom for k, v in sums.items()} | {"update/grad_norm": grad_norm}
            | (sampler_drift(drift) if ro.old_logps is not None else {})
            | (correction_stats(corrected, num_tokens) if corr.mode != "none" else {}))


# update/<key> <- grpo_token_loss's stat <name>, each a mean over the loss's tokens and the passes. clip_fraction
# is the share of tokens whose gradient the clip cut (TRL's clip_ratio/region_mean, verl's pg_clipfrac), split
# into its two sides: clip_fraction_low (ratio under 1 - clip_low with A < 0), clip_fraction_high (over
# 1 + clip_high with A > 0); policy_loss says how GSPO and CISPO flag theirs.
UPDATE_STATS = {"kl": "kl", "entropy": "entropy", "ratio": "ratio", "clip_fraction": "clipped",
                "clip_fraction_low": "clipped_low", "clip_fraction_high": "clipped_high"}


def masked_stat_sums(stats: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each ``UPDATE_STATS`` statistic of ``grpo_token_loss`` ([B, T] each) summed over the tokens of ``mask``
    [B, T]: 0-dim tensors, left on the device, keyed by the metric's name; a statistic the loss did not compute
    (kl without a reference) is absent."""
    return {key: (stats[name].detach() * mask).sum() for key, name in UPDATE_STATS.items() if name in stats}


def padded_sampler_logps(ro: Rollouts, idx: list[int], width: int, device: torch.device) -> torch.Tensor | None:
    """The sampler's log-probs of micro-batch ``idx``, right padded with 0 to ``width``: [B, width] float32, or
    None when the sampler gave none."""
    if ro.old_logps is None:
        return None
    return right_padded([ro.old_logps[i] for i in idx] or [[]], 0.0, device, torch.float32, width=width)[0]


def ppo_old_logps(k: int, logps: torch.Tensor, sampler: torch.Tensor | None, trainer_old: list[torch.Tensor],
                  first_pass: list[torch.Tensor]) -> torch.Tensor:
    """The PPO ratio's old log-probs for micro-batch ``k`` (see ``update``): the trainer's recomputed ones, else the
    sampler's, else the first pass's own, detached (kept in ``first_pass`` for the later passes)."""
    if trainer_old:
        return trainer_old[k]
    if sampler is not None:
        return sampler
    if len(first_pass) == k:
        first_pass.append(logps.detach().float())
    return first_pass[k]


def loss_mask(mask: torch.Tensor, idx: list[int], in_loss: list[bool]) -> torch.Tensor:
    """``mask`` [B, T] with the rows of completions out of the loss (``Rollouts.in_loss``) zeroed; a new tensor."""
    return mask * torch.tensor([in_loss[i] for i in idx] or [0], device=mask.device)[:, None]  # [B, T]


def old_and_weights(cache: PromptCache, forward, micro: list[list[int]], ro: Rollouts, in_loss: list[bool],
                    cfg: GRPOConfig) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The trainer's old log-probs per micro-batch, from ``cache`` (call it without gradients, on the weights
    that sampled), and the correction's weights against the sampler's log-probs.

    Returns:
        (log pi_old [B, T] float32 per micro-batch; w [B, T] per micro-batch, none for mode none; [3] float64:
        the capped tokens, the masked tokens and the sum of w, over the tokens in the loss).

    Raises:
        ConfigError: a correction mode without the sampler's log-probs (vLLM gives none).
    """
    if cfg.correction.mode != "none" and ro.old_logps is None:
        raise ConfigError(f"correction.mode={cfg.correction.mode} weighs the sampler's log-probs against the "
                          "trainer's, and this sampler gives none (vLLM); set correction.mode=none, or "
                          "sampling.backend=thinktune")
    olds, weights = [], []
    sums = torch.zeros(3, dtype=torch.float64)
    for idx in micro:
        logps, _, mask = forward(cache, idx, False)  # [B, T] each
        olds.append(logps.float())
        if cfg.correction.mode == "none":
            continue
        sampler = padded_sampler_logps(ro, idx, logps.shape[1], logps.device)  # [B, T]
        w, flags = importance_weights(logps, sampler, mask, cfg.correction.mode, cfg.correction.cap)  # [B, T] each
        weights.append(w)
        m = loss_mask(mask, idx, in_loss).double()  # [B, T]
        sums += torch.stack([(flags["capped"] * m).sum(), (flags["masked"] * m).sum(), (w * m).sum()]).cpu()
    return olds, weights, sums


def correction_stats(sums: torch.Tensor, num_tokens: int) -> dict[str, float]:
    """The step's correction figures over every rank's tokens in the loss (every rank calls it): the share of
    tokens whose weight was capped (tis) or that were masked (mis), and the mean weight."""
    capped, masked, weight = distributed.all_sum(*(float(v) for v in sums))
    count = max(num_tokens, 1)
    return {"correction/capped_fraction": capped / count, "correction/masked_fraction": masked / count,
            "correction/weight_mean": weight / count}


def sampler_drift(drift: list[torch.Tensor]) -> dict[str, float]:
    """The step's ``thinktune.train.mismatch`` figures over every rank's first-pass micro-batches (every rank
    calls it: a rank without samples adds zeros)."""
    local = torch.stack(drift).cpu() if drift else torch.zeros(1, 4, dtype=torch.float64)
    abs_sum, k3_sum, count = distributed.all_sum(*(float(local[:, i].sum()) for i in (0, 2, 3)))
    worst = max(distributed.gather_lists([float(local[:, 1].max())]))
    count = max(count, 1.0)
    return {"mismatch/abs_mean": abs_sum / count, "mismatch/abs_max": worst, "mismatch/kl_k3": k3_sum / count}
