"""Data for the real-model tier, written from the embedded arithmetic world (``thinktune.tasks``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from thinktune.tasks import teacher, world

# A system prompt no template writes by itself, so a render that carries it can only come from thinktune.
CUSTOM_SYSTEM = "You add numbers column by column and box the sum."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """SFT rows of level-1 (3-digit addition) problems with the teacher's correct column-by-column trace."""
    return [{"id": p.id, "answer": p.answer,
             "messages": [{"role": "user", "content": p.question},
                          {"role": "assistant", "content": teacher.cot_completion(teacher.solve(p))}]}
            for p in world.train_problems([1], n, seed)]


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Preference pairs: the correct trace against one with a slip (so a wrong boxed answer)."""
    rng = random.Random(seed)
    return [{"id": p.id, "prompt": p.question, "chosen": teacher.cot_completion(teacher.solve(p)),
             "rejected": teacher.cot_completion(teacher.solve(p, rng, slip_rate=1.0))}
            for p in world.train_problems([1], n, seed)]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
