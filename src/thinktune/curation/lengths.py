"""Prompt selection for uniform response lengths (Phi-4-mini-reasoning's RL prompt optimisation).

Phi-4-mini's authors saw response lengths within a GRPO group range from ~12K to ~20K tokens and
destabilise training; they kept the RL prompts whose sampled responses had relatively uniform lengths
(docs/recipe.md section 3.4; the exact criterion is unreported). We measure uniformity by the coefficient of
variation of a prompt's k response lengths, std / mean (population std), and keep the lowest share.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def length_cv(lengths: Sequence[int]) -> float:
    """Coefficient of variation of one prompt's response lengths: pstdev / mean (0 for equal lengths)."""
    mean = statistics.fmean(lengths)
    return statistics.pstdev(lengths) / mean if mean > 0 else 0.0


def most_uniform(cvs: Sequence[float], keep_fraction: float) -> list[int]:
    """Indices of the ``keep_fraction`` share of prompts with the lowest CV (at least one), in input order."""
    n = max(1, round(keep_fraction * len(cvs)))
    ranked = sorted(range(len(cvs)), key=lambda i: (cvs[i], i))[:n]
    return sorted(ranked)


def spread(groups: Sequence[Sequence[int]]) -> dict[str, float]:
    """How much lengths vary within groups: mean CV, mean within-group std, mean max/min ratio."""
    return {"mean_cv": statistics.fmean(length_cv(g) for g in groups),
            "mean_std": statistics.fmean(statistics.pstdev(g) for g in groups),
            "mean_max_over_min": statistics.fmean(max(g) / max(min(g), 1) for g in groups)}
