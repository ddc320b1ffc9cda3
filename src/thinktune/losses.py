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
