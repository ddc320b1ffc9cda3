"""Rollout preference pairs: a correct completion (chosen) against an incorrect one (rejected), same prompt.

Phi-4-mini-reasoning's rollout DPO (docs/recipe.md section 3.3) builds its preference set this way from
DeepSeek-R1 rollouts. A prompt yields pairs only when its samples have a mixed outcome; prompts whose
samples are all correct or all wrong are counted, since they say how well the sampling budget matched the
prompts' difficulty.

Length matching pairs each chosen completion with the unused rejected one closest to it in length, so the
preference signal is about correctness rather than length (DPO otherwise learns "shorter is better" when
wrong answers are systematically longer).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Scored:
    completion: str
    correct: bool
    num_tokens: int


def make_pairs(prompt_id: str, prompt: str | list, samples: list[Scored], pairs_per_prompt: int,
               length_match: bool, rng: random.Random) -> list[dict]:
    """Up to ``pairs_per_prompt`` preference rows for one prompt; each completion is used at most once.

    Duplicate completions count once, so a pair never has the same text on both sides or twice over.
    """
    chosen = _unique([s for s in samples if s.correct])
    rejected = _unique([s for s in samples if not s.correct])
    rng.shuffle(chosen)
    rng.shuffle(rejected)
    pairs = []
    for c in chosen[:pairs_per_prompt]:
        if not rejected:
            break
        pick = min(range(len(rejected)), key=lambda i: abs(rejected[i].num_tokens - c.num_tokens)) \
            if length_match else 0
        r = rejected.pop(pick)
        pairs.append({"id": f"{prompt_id}-{len(pairs)}", "prompt": prompt, "chosen": c.completion,
                      "rejected": r.completion, "prompt_id": prompt_id,
                      "chosen_tokens": c.num_tokens, "rejected_tokens": r.num_tokens})
    return pairs


def _unique(samples: list[Scored]) -> list[Scored]:
    seen: dict[str, Scored] = {}
    for s in samples:
        seen.setdefault(s.completion, s)
    return list(seen.values())


def outcome(samples: list[Scored]) -> str:
    """"mixed", "all_correct" or "all_wrong": whether a prompt can give pairs at all."""
    n = sum(s.correct for s in samples)
    return "all_wrong" if n == 0 else "all_correct" if n == len(samples) else "mixed"


def mine(prompts: list[dict], samples: list[list[Scored]], pairs_per_prompt: int, length_match: bool,
         seed: int) -> tuple[list[dict], dict[str, int]]:
    """Pairs for every prompt, and counts: prompts by outcome and pairs made."""
    rng = random.Random(seed)
    rows: list[dict] = []
    outcomes: Counter[str] = Counter()
    for prompt, group in zip(prompts, samples, strict=True):
        outcomes[outcome(group)] += 1
        rows += make_pairs(str(prompt["id"]), prompt["prompt"], group, pairs_per_prompt, length_match, rng)
    stats = {"prompts": len(prompts), "mixed": outcomes["mixed"], "all_correct": outcomes["all_correct"],
             "all_wrong": outcomes["all_wrong"], "pairs": len(rows)}
    return rows, stats
