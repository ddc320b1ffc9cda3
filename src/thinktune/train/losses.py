"""Loss math, once: pure functions of logits, log-probs and masks, used by every recipe.

Each function returns what the caller needs to aggregate correctly across micro-batches; none mutates its
inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from thinktune.data.chat import IGNORE_INDEX
from thinktune.modeling import onednn
from thinktune.train.policy_loss import POLICY_LOSSES

# The most float32 logits one chunk of ``chunked_score`` holds: 256 MiB, 670 tokens of Phi-4's vocabulary.
CHUNK_BYTES = 1 << 28


def score_tokens(logits: torch.Tensor, targets: torch.Tensor, temperature: float, need_entropy: bool | str
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets`` under ``logits / temperature`` ([..., V] -> [...]), and the entropy if asked.

    The entropy keeps its graph only for ``need_entropy="grad"``: with a real vocabulary its [..., V]
    intermediates are large, and logging needs the number alone.
    """
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    all_logps = torch.log_softmax(logits, dim=-1)  # [..., V], once for both
    entropy = None
    if need_entropy:
        with torch.set_grad_enabled(torch.is_grad_enabled() and need_entropy == "grad"):
            entropy = entropy_from_logprobs(all_logps)
    return all_logps.gather(-1, targets[..., None]).squeeze(-1), entropy


def _head_scores(x: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module | None, temperature: float,
                 need_entropy: bool | str) -> tuple[torch.Tensor, torch.Tensor | None]:
    return score_tokens(x if head is None else head(x), targets, temperature, need_entropy)


def chunked_score(x: torch.Tensor, targets: torch.Tensor, temperature: float, need_entropy: bool | str,
                  head: torch.nn.Module | None = None, chunk_bytes: int = CHUNK_BYTES
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``score_tokens`` of ``head(x)`` (or of ``x``, logits, with no head) over rows ``[N, ...]``, a chunk of rows
    at a time, so that no ``[N, V]`` float32 tensor ever exists.

    Why: at the Phi-4 budget one 31,744-token completion makes [N, V] logits of 31,744 x 100,352; their float32
    copy, log-softmax and exp are 12.7 GB each. Here each chunk of rows (float32 ``[rows, V]`` of at most
    ``chunk_bytes``) is computed under activation checkpointing: the forward keeps only the chunk's inputs,
    and the backward recomputes the chunk's logits before using them (one more head matmul per token, a few
    percent of the model's FLOPs). Batches that fit in one chunk (the demo's) run ``score_tokens`` as before.

    Args:
        x: [N, H] hidden states (with ``head``) or [N, V] logits (without).
        targets: [N] token ids.
        temperature: the logits are divided by it.
        need_entropy: as ``score_tokens``.
        head: the output projection (e.g. ``model.lm_head``), or None when ``x`` is already logits.
        chunk_bytes: the most float32 logits one chunk may hold.

    Returns:
        (log-probs [N], entropy [N] or None), equal to ``score_tokens(head(x), ...)`` to float rounding.
    """
    vocab = head.weight.shape[0] if head is not None else x.shape[-1]
    rows = max(1, chunk_bytes // (4 * vocab))
    if x.shape[0] <= rows:
        return _head_scores(x, targets, head, temperature, need_entropy)
    logps, entropy = [], []
    # split (not slicing in a loop): its backward writes every chunk's gradient into one [N, ...] tensor.
    for x_part, t_part in zip(x.split(rows), targets.split(rows), strict=True):
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_head_scores, x_part, t_part, head, temperature, need_entropy, use_reentrant=False,
                                 context_fn=onednn.checkpoint_contexts)
        else:
            lp, ent = _head_scores(x_part, t_part, head, temperature, need_entropy)
        logps.append(lp)
        entropy.append(ent)
    return torch.cat(logps), (torch.cat(entropy) if need_entropy else None)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned to next-token logits: position t predicts token t+1. [B, T] -> [B, T]."""
    shifted = torch.full_like(labels, IGNORE_INDEX)  # [B, T]
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def sft_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over the labelled tokens.

    The plain definition on logits: SFT computes the same without them (``logprobs.next_token_logps``), and
    the tests hold the two equal.

    Args:
        logits: [B, T, V] model outputs.
        labels: [B, T] token ids, IGNORE_INDEX where no loss is taken (prompt, padding).

    Returns:
        (sum of NLL over labelled tokens, number of labelled tokens). Dividing the summed NLL of every
        micro-batch by the step's total token count gives the same loss as one big batch, whatever the
        gradient-accumulation split (a per-micro-batch mean would weight short batches more).
    """
    target = shift_labels(labels)  # [B, T]
    nll = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="sum")
    return nll, int((target != IGNORE_INDEX).sum())


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token under the logits.

    Args:
        logits: [B, T, V] model outputs.
        input_ids: [B, T] the tokens.

    Returns:
        [B, T-1]: entry t is log p(input_ids[:, t+1] | input_ids[:, :t+1]).
    """
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, T-1, V]
    return logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, T-1]


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the completion tokens of each sequence.

    The plain definition on logits: DPO computes the same without them (``logprobs.next_token_logps``), and
    the tests hold the two equal.

    Args:
        logits: [B, T, V].
        input_ids: [B, T].
        completion_mask: [B, T], 1 on the tokens whose probability counts (the assistant part).

    Returns:
        [B] sums of log p over the masked tokens.
    """
    mask = completion_mask[:, 1:].to(torch.float32)  # [B, T-1]
    return (token_logps(logits, input_ids) * mask).sum(-1)  # [B]


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023), with conservative label smoothing (cDPO).

    With h = beta * [(pi_c - ref_c) - (pi_r - ref_r)] on summed sequence log-probs, the loss is
    -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h): eps > 0 treats each preference label as wrong
    with probability eps, which bounds how far the policy is pushed on noisy pairs.

    Args:
        policy_chosen_logps, policy_rejected_logps: [B] summed log-probs of the policy.
        ref_chosen_logps, ref_rejected_logps: [B] the same under the frozen reference.
        beta: strength of the implicit KL constraint.
        label_smoothing: eps in [0, 0.5).

    Returns:
        (losses [B], chosen_rewards [B], rejected_rewards [B]); the implicit rewards are
        beta * (pi - ref), detached.
    """
    chosen = policy_chosen_logps - ref_chosen_logps  # [B]
    rejected = policy_rejected_logps - ref_rejected_logps  # [B]
    h = beta * (chosen - rejected)  # [B]
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)  # [B]
    return losses, beta * chosen.detach(), beta * rejected.detach()


def chosen_nll(policy_chosen_logps: torch.Tensor, chosen_num_tokens: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the chosen completions, [B] -> [B].

    Added to the DPO loss with a weight (``nll_weight``), this is RPO (Pang et al. 2024, "Iterative
    Reasoning Preference Optimization"): on pairs that differ in a few tokens, plain DPO lowers the
    likelihood of the chosen answer along with the rejected one, and the NLL term holds it up.
    """
    return -policy_chosen_logps / chosen_num_tokens.clamp(min=1)


# ---------------------------------------------------------------------------------------------------------
# GRPO

LOSS_AGGREGATIONS = ("token_mean", "seq_mean", "token_sum_norm")


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, num_tokens: int, num_seqs: int,
              max_len: int = 0) -> torch.Tensor:
    """Reduce per-token losses to the batch loss, so that summing over micro-batches gives the whole batch's.

    Args:
        values: [B, T] per-token losses.
        mask: [B, T] 1 on completion tokens.
        mode: "token_mean": every token of the batch weighs the same (DAPO; long answers count more);
            "seq_mean": the mean over sequences of each sequence's token mean (the original GRPO; each
            answer counts the same, so tokens of long answers count less);
            "token_sum_norm": the token sum over num_seqs * max_len (Dr. GRPO: a constant normaliser, so
            neither the answer's length nor the batch's token count rescales a token's gradient).
        num_tokens: completion tokens in the whole batch (all micro-batches), for "token_mean".
        num_seqs: sequences in the whole batch, for "seq_mean" and "token_sum_norm".
        max_len: the generation budget, for "token_sum_norm".
    """
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        return (values * mask).sum() / max(num_tokens, 1)
    if mode == "seq_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
        return per_seq.sum() / max(num_seqs, 1)
    if mode == "token_sum_norm":
        if max_len < 1:
            raise ValueError("loss aggregation 'token_sum_norm' needs max_len, the generation budget")
        return (values * mask).sum() / (max(num_seqs, 1) * max_len)
    raise ValueError(f"loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref) (Schulman 2020): exp(d) - d - 1 with d = ref - pi; >= 0."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Per-position entropy from log-probabilities already normalised over the last dim: [..., V] -> [...]."""
    return -(logp.exp() * logp).sum(-1)


def grpo_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                    clip_high: float, ref_logps: torch.Tensor | None = None, beta: float = 0.0,
                    entropy: torch.Tensor | None = None, gamma: float = 0.0, *, objective: str = "grpo",
                    mask: torch.Tensor | None = None, weights: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-token loss of a GRPO-family objective to minimise, before aggregation.

    loss_t = w_t policy_t + beta KL_k3(pi || ref)_t - gamma H_t, with policy_t the objective's term
    (``policy_loss.POLICY_LOSSES``). The default, "grpo", is -min(rho_t A, clip(rho_t, 1 - clip_low,
    1 + clip_high) A) with rho_t = exp(logp_t - old_logp_t); separate low and high clips are DAPO's
    "clip-higher".

    Args:
        logps, old_logps: [B, T] log-probs of the sampled tokens under the current and the sampling policy.
        advantages: [B] one advantage per sequence, broadcast over its tokens.
        ref_logps: [B, T] under the frozen reference, needed when beta > 0.
        entropy: [B, T] policy entropy per position, needed when gamma > 0.
        objective: a key of ``POLICY_LOSSES``.
        mask: [B, T] 1 on completion tokens; the sequence-level objectives (GSPO) average over it. None: all.
        weights: [B, T] w_t, the mismatch correction's multiplier of the policy term alone
            (``policy_loss.importance_weights``; constant, no gradient). None: 1, the same tensors as without it.

    Returns:
        (loss [B, T], stats [B, T] each: ratio, clipped_low, clipped_high, clipped (their sum), kl, entropy).

    Raises:
        ValueError: an unknown objective.
    """
    if objective not in POLICY_LOSSES:
        raise ValueError(f"policy loss {objective!r}; choose one of {', '.join(POLICY_LOSSES)}")
    mask = torch.ones_like(logps) if mask is None else mask
    loss, stats = POLICY_LOSSES[objective](logps, old_logps, advantages, mask, clip_low, clip_high)  # [B, T]
    stats["clipped"] = stats["clipped_low"] + stats["clipped_high"]
    if weights is not None:
        loss = loss * weights.detach()
    if beta:
        kl = kl_k3(logps, ref_logps)
        loss = loss + beta * kl
        stats["kl"] = kl.detach()
    if gamma:
        loss = loss - gamma * entropy
    if entropy is not None:
        stats["entropy"] = entropy.detach()
    return loss, stats
