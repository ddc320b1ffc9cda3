"""Is a stage's effect real? Intervals on the change in held-out pass@1 from one evaluated model to the next.

A report's ``pass@1 ± std`` is the spread across the N sampled runs of one trained model. It says nothing of
the two other things that move a stage's measured effect: which problems the held-out set happens to hold, and
the training run itself (its seed: data order, initial draws, rollouts). Two intervals cover them:

- ``paired_bootstrap``: both models answered the same problems; resample the problems with replacement and
  take the change in mean per-problem accuracy each time. The 2.5th and 97.5th percentiles bound the effect
  against the choice of problems and each problem's sampling noise (Efron & Tibshirani 1993, ch. 13; the paired
  form is what Dror et al. 2018 recommend for comparing two systems on one test set).
- ``over_seeds``: the stage was trained once per seed and each copy evaluated on the same problems; the per-seed
  effects give a mean and a Student-t 95% interval (df = seeds - 1), which is wide with few seeds, as it should be.

An effect whose interval holds zero is not distinguishable from noise, and the report says so.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thinktune.data.io import read_jsonl

# Two-sided 95% quantiles of Student's t (t_0.975) for df = 1..30; past 30 the normal's 1.96 is within 0.05.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Effect:
    """A change in pass@1 (points) with a 95% interval and how the interval was made."""

    mean: float
    low: float
    high: float
    method: str  # "bootstrap over N problems" or "t over S seeds"

    @property
    def distinguishable(self) -> bool:
        """Whether the interval excludes zero."""
        return self.low > 0 or self.high < 0

    def cell(self) -> str:
        text = f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"
        return text if self.distinguishable else text + " (noise)"


def problem_accuracy(eval_dir: str | Path) -> dict[str, float]:
    """Each problem's accuracy (percent of its samples correct) from an evaluation's ``samples.jsonl``."""
    path = Path(eval_dir) / "samples.jsonl"
    right: dict[str, list[bool]] = defaultdict(list)
    for record in read_jsonl(path):
        right[str(record["prompt_id"])].append(bool(record["correct"]))
    if not right:
        raise ValueError(f"{path}: no samples; rerun the evaluation that wrote it")
    return {pid: 100.0 * sum(v) / len(v) for pid, v in right.items()}


def mean_change(before: dict[str, float], after: dict[str, float]) -> float:
    """The change in mean accuracy (points) over the problems both evaluations answered."""
    common = before.keys() & after.keys()
    if not common:
        raise ValueError("the two evaluations share no problem")
    return statistics.fmean(after[p] - before[p] for p in common)


def paired_bootstrap(before: dict[str, float], after: dict[str, float], resamples: int = 4000,
                     seed: int = 0) -> Effect:
    """The change in mean accuracy from ``before`` to ``after`` over their common problems, with the 95%
    percentile interval of ``resamples`` paired bootstrap draws of those problems."""
    common = sorted(before.keys() & after.keys())
    if not common:
        raise ValueError("paired_bootstrap: the two evaluations share no problem")
    diffs = np.array([after[p] - before[p] for p in common])
    rng = np.random.default_rng(seed)
    draws = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Effect(float(diffs.mean()), float(low), float(high), f"bootstrap over {len(common)} problems")


def over_seeds(effects: Sequence[float]) -> Effect:
    """Mean of per-seed effects with its Student-t 95% interval; one seed gives no interval (±inf)."""
    n = len(effects)
    if n == 0:
        raise ValueError("over_seeds: no effects")
    mean = statistics.fmean(effects)
    if n == 1:
        return Effect(mean, -math.inf, math.inf, "1 seed")
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * statistics.stdev(effects) / math.sqrt(n)
    return Effect(mean, mean - half, mean + half, f"t over {n} seeds")
