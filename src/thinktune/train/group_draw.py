"""Which groups of a GRPO step enter its update: Phi-4-mini's balance and DAPO's dynamic sampling.

``draw`` takes the step's prompts from the data order, has them sampled and scored (by the caller's
``sample_round``), and chooses the samples that enter the update: ``select`` applies the balance mode (keep the
positives and as many negatives, drop groups that are too easy or have no positive); with dynamic sampling,
groups whose kept rewards are all equal (zero advantage, no gradient) leave the step and further rounds refill
it. ``check_fill`` acts on a step that ran out of rounds. The recipe (``recipes/grpo.py``) calls ``draw`` once a
step.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from thinktune import runtime
from thinktune.data.order import step_units
from thinktune.errors import ConfigError
from thinktune.rollout.sampler import Completion
from thinktune.train import distributed
from thinktune.train.advantages import balance_group

if TYPE_CHECKING:
    from thinktune.recipes.grpo import GRPOConfig


def select(groups: list[list[Completion]], correct: list[list[bool]], cfg: GRPOConfig,
           rng: random.Random) -> tuple[list[tuple[int, int]], dict]:
    """Which (prompt, sample) pairs enter the update, and counts of what was dropped and why."""
    keep: list[tuple[int, int]] = []
    counts = {"prompts_too_easy": 0, "prompts_no_positive": 0}
    for p, group in enumerate(groups):
        if not cfg.balance:
            keep += [(p, j) for j in range(len(group))]
            continue
        decision = balance_group(correct[p], cfg.max_group_accuracy, rng)
        if decision.reason != "kept":
            counts[f"prompts_{decision.reason}"] += 1
        keep += [(p, j) for j in decision.keep]
    counts["samples_kept"] = len(keep)
    counts["samples_dropped"] = sum(len(g) for g in groups) - len(keep)
    return keep, counts


def drop_uniform(keep: list[tuple[int, int]], rewards: list[list[float]]) -> tuple[list[int], int]:
    """The groups among ``keep`` whose kept samples' rewards differ, in order, and how many groups were dropped
    because theirs are all equal: every advantage zero, so no policy gradient (DAPO's dynamic sampling)."""
    kept: dict[int, list[float]] = {}
    for p, j in keep:
        kept.setdefault(p, []).append(rewards[p][j])
    usable = [p for p, rs in kept.items() if max(rs) > min(rs)]
    return usable, len(kept) - len(usable)


def fill_share(count: int, need: int, rt: runtime.Runtime) -> tuple[int, int]:
    """How many of this rank's ``count`` usable groups go into the step, and how many all ranks' do: the first
    ``need`` in rank order (collective: every rank calls, so every rank sees the same total)."""
    counts = distributed.gather_lists([count])
    mine = max(0, min(count, need - sum(counts[:rt.rank])))
    return mine, min(sum(counts), need)


@dataclass
class StepDraw:
    """What this rank sampled in one step, over all its rounds, and the samples that enter the update."""

    position: int  # the data position after the step's rounds
    rows: list[dict] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    groups: list[list[Completion]] = field(default_factory=list)
    results: list[list] = field(default_factory=list)
    keep: list[tuple[int, int]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # this rank's; the caller sums them over ranks
    rounds: int = 0
    groups_kept: int = 0  # with dynamic_sampling: over all ranks

    def rewards(self) -> list[list[float]]:
        return [[r.reward for r in rs] for rs in self.results]

    def correct(self) -> list[list[bool]]:
        return [[r.correct for r in rs] for rs in self.results]

    def update_batch(self) -> tuple[list[list[int]], list[list[Completion]], list[list[float]], list[tuple[int, int]]]:
        """Prompts, groups, rewards and kept pairs of the groups with kept samples only, renumbered: the update
        forwards every prompt it is given, and dynamic sampling draws several times the prompts it keeps."""
        used = sorted({p for p, _ in self.keep})
        new = {p: i for i, p in enumerate(used)}
        rewards = self.rewards()
        return ([self.prompts[p] for p in used], [self.groups[p] for p in used], [rewards[p] for p in used],
                [(new[p], j) for p, j in self.keep])


def draw(step: int, position: int, rows: list[dict], prompt_ids: list[list[int]], cfg: GRPOConfig,
         rt: runtime.Runtime, sample_round: Callable, rng: random.Random) -> StepDraw:
    """Draw, sample and score the step's prompts from data ``position`` and choose the samples that enter the update.

    Without ``dynamic_sampling``: one round of ``prompts_per_step`` prompts, ``select`` as before. With it (DAPO):
    rounds of ``prompts_per_step`` prompts, each taken from the data order where the last one ended; a round's
    groups go through ``select`` (balance, where on), then those whose kept rewards are all equal are dropped,
    and the survivors fill the step up to ``prompts_per_step`` groups (the rest of the round that fills it is
    dropped as surplus). The rounds stop when the step is full or after ``max_sampling_rounds``; every rank runs
    the same rounds, since the fill is summed over ranks. The position moves past every prompt drawn.

    ``sample_round(rows, prompts, seed)`` samples and scores this rank's share of a round: (groups, results).
    """
    d = StepDraw(position)
    d.counts = {"prompts_too_easy": 0, "prompts_no_positive": 0}
    if cfg.dynamic_sampling:
        d.counts |= {"prompts_drawn": 0, "groups_uniform_dropped": 0, "groups_surplus_dropped": 0, "groups_kept": 0}
    for r in range(cfg.max_sampling_rounds if cfg.dynamic_sampling else 1):
        idx = distributed.shard(step_units(d.position, cfg.prompts_per_step, len(rows), cfg.seed), rt)
        d.position += cfg.prompts_per_step
        # round 0 keeps the one-round seed (on 1 rank, the one-process one); later rounds sit far from any step's
        seed = (cfg.sampling.seed * 1_000_003 + step) * rt.world_size + rt.rank + r * 1_000_003 ** 2
        round_rows, round_prompts = [rows[i] for i in idx], [prompt_ids[i] for i in idx]
        groups, results = sample_round(round_rows, round_prompts, seed)
        keep, counts = select(groups, [[x.correct for x in rs] for rs in results], cfg, rng)
        base, d.rounds = len(d.groups), r + 1
        d.rows += round_rows
        d.prompts += round_prompts
        d.groups += groups
        d.results += results
        for k in ("prompts_too_easy", "prompts_no_positive"):
            d.counts[k] += counts[k]
        if not cfg.dynamic_sampling:
            d.keep = keep
            break
        usable, uniform = drop_uniform(keep, [[x.reward for x in rs] for rs in results])
        mine, filled = fill_share(len(usable), cfg.prompts_per_step - d.groups_kept, rt)
        taken = set(usable[:mine])
        d.keep += [(base + p, j) for p, j in keep if p in taken]
        d.groups_kept += filled
        d.counts["prompts_drawn"] += len(idx)
        d.counts["groups_uniform_dropped"] += uniform
        d.counts["groups_surplus_dropped"] += len(usable) - mine
        d.counts["groups_kept"] += mine
        if d.groups_kept == cfg.prompts_per_step:
            break
    d.counts["samples_kept"] = len(d.keep)
    d.counts["samples_dropped"] = sum(map(len, d.groups)) - len(d.keep)
    return d


def check_fill(counts: dict[str, float], cfg: GRPOConfig, step: int, warned: bool) -> bool:
    """Act on a dynamic-sampling step that ran out of rounds (``counts`` summed over ranks); returns ``warned``.

    Some groups kept, fewer than ``prompts_per_step``: the step trains on those; ``select/groups_short`` logs the
    gap every step, and the first such step prints a line. None kept: every group drawn in ``max_sampling_rounds``
    rounds had equal rewards (or balance dropped it), so the run would train on nothing; it stops (every rank
    decides alike, from the summed counts).

    Raises:
        ConfigError: no group was kept.
    """
    if not counts["groups_kept"]:
        why = f"{int(counts['groups_uniform_dropped'])} with equal rewards"
        if cfg.balance:
            why += (f", {int(counts['prompts_too_easy'])} above max_group_accuracy and "
                    f"{int(counts['prompts_no_positive'])} without a correct sample")
        raise ConfigError(f"dynamic_sampling: step {step + 1} kept no group of the {int(counts['prompts_drawn'])} "
                          f"prompts drawn in max_sampling_rounds={cfg.max_sampling_rounds} rounds ({why}); raise "
                          "max_sampling_rounds (a rerun with it resumes this run) or give prompts the model "
                          "sometimes solves (data.prompts, data.difficulties)")
    if counts["groups_short"] and not warned:
        runtime.print0(f"[grpo] dynamic_sampling: step {step + 1} kept {int(counts['groups_kept'])} of "
                       f"prompts_per_step={cfg.prompts_per_step} groups in max_sampling_rounds="
                       f"{cfg.max_sampling_rounds} rounds and trains on those; select/groups_short logs each step's gap")
        return True
    return warned
