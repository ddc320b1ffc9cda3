"""Group advantages, the Phi-4-mini reward rebalancing, and the sampling-temperature schedule.

GRPO scores each of a prompt's G samples against its own group: A_i = (r_i - mean(r)) / (std(r) + eps),
or (r_i - mean(r)) alone in Dr. GRPO (Liu et al. 2025), which drops the std because dividing by it
over-weights groups whose rewards barely differ.

Phi-4-mini-reasoning's stabilisers (docs/recipe.md section 3.4):

- rebalancing: oversample each prompt, keep every positive (correct) sample and an equal number of
  randomly chosen negatives, and drop the rest; prompts whose group accuracy exceeds a threshold (50% in
  the paper) are dropped, and so are prompts with no positive sample (their group carries no signal);
- temperature annealing: 1.0 falling linearly to 0.6 over the first half of training, then 0.6.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

ADVANTAGE_MODES = ("grpo", "drgrpo")


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, mode: str = "grpo",
                     eps: float = 1e-6) -> torch.Tensor:
    """Advantages of samples against the other samples of their group (groups may differ in size).

    Args:
        rewards: [N] scalar rewards.
        group_ids: [N] integer id of each sample's group (prompt).
        mode: "grpo" (mean and std) or "drgrpo" (mean only).
        eps: added to the std, so a group of equal rewards gets zero advantages rather than NaN.

    Returns:
        [N] advantages. The std is the population std of the group (ddof=0), as in DeepSeekMath's GRPO.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage mode {mode!r}; choose one of {', '.join(ADVANTAGE_MODES)}")
    rewards = rewards.float()
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [N] group index 0..K-1
    k = int(inverse.max()) + 1
    count = torch.zeros(k).index_add_(0, inverse, torch.ones_like(rewards))  # [K]
    mean = torch.zeros(k).index_add_(0, inverse, rewards) / count  # [K]
    centred = rewards - mean[inverse]  # [N]
    if mode == "drgrpo":
        return centred
    var = torch.zeros(k).index_add_(0, inverse, centred**2) / count  # [K]
    return centred / (var.sqrt()[inverse] + eps)


@dataclass(frozen=True)
class GroupDecision:
    keep: list[int]  # indices (into the group) of the samples kept for the update
    reason: str  # "kept", "too_easy" (accuracy above the threshold) or "no_positive"


def balance_group(correct: list[bool], max_accuracy: float, rng: random.Random) -> GroupDecision:
    """Phi-4-mini rebalancing of one prompt's samples: all positives and as many random negatives.

    A group whose accuracy exceeds ``max_accuracy`` is dropped (too easy to teach much), as is one with no
    positive sample. With fewer negatives than positives, every negative is kept.
    """
    positives = [i for i, c in enumerate(correct) if c]
    negatives = [i for i, c in enumerate(correct) if not c]
    if not positives:
        return GroupDecision([], "no_positive")
    if len(positives) / len(correct) > max_accuracy:
        return GroupDecision([], "too_easy")
    chosen_negatives = rng.sample(negatives, min(len(positives), len(negatives)))
    return GroupDecision(sorted(positives + chosen_negatives), "kept")


def annealed_temperature(step: int, total_steps: int, start: float = 1.0, end: float = 0.6,
                         anneal_fraction: float = 0.5) -> float:
    """Linear from ``start`` at step 0 to ``end`` at ``anneal_fraction * total_steps``, then ``end``."""
    span = anneal_fraction * total_steps
    if span <= 0 or step >= span:
        return end
    return start + (end - start) * step / span
