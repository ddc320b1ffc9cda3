"""Loss math, once: pure functions of logits, log-probs and masks, used by every recipe.

Each function returns what the caller needs to aggregate correctly across micro-batches; none mutates its
inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from thinktune.data.chat import IGNORE_INDEX


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned to next-token logits: position t predicts token t+1. [B, T] -> [B, T]."""
    shifted = torch.full_like(labels, IGNORE_INDEX)  # [B, T]
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def sft_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood over the labelled tokens.

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
