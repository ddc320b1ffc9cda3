"""Write the world's prompt and SFT files: held-out prompts, train prompts, CoT and direct SFT rows.

The CoT rows come from the teacher at ``slip_rate``, so some of them are wrong on purpose; nothing is
filtered here, because dropping wrong traces by verification is the rejection-sampling stage's job and
must be measurable there. The direct rows (the "base" format) are always correct.

Files in ``out_dir``:

- ``heldout_prompts.jsonl``: prompt rows of the held-out split;
- ``train_prompts.jsonl``: prompt rows of the training problems (for the RL stages);
- ``sft_cot.jsonl``: ``{"id", "messages", "answer", "difficulty", "teacher_slip"}`` per training problem;
- ``sft_direct.jsonl``: the same problems with ``\\boxed{answer}`` as the assistant turn;
- ``teacher_rollouts.jsonl``: ``rollout_k`` independent teacher samples for each of the first
  ``rollout_prompts`` training problems, as rollout records ``{"prompt_id", "completion", "finished"}``:
  a teacher's saved samples, from which rollout DPO can mine pairs as Phi-4-mini-reasoning did from
  DeepSeek-R1's (the slips make the outcomes mixed).

``wording="words"`` poses every problem as a word problem (``thinktune.tasks.words``) for a real pretrained
chat model: the prompts and user turns are the stories, the CoT traces open with the expression, and the
direct rows answer "The answer is \\boxed{...}.".
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from thinktune.data.io import write_jsonl
from thinktune.tasks import words
from thinktune.tasks.teacher import SLIP_KINDS, Trace, cot_completion, direct_completion, solve
from thinktune.tasks.world import Problem, heldout_split, prompt_row, train_problems

FILES = ("heldout_prompts.jsonl", "train_prompts.jsonl", "sft_cot.jsonl", "sft_direct.jsonl",
         "teacher_rollouts.jsonl")


class Wording:
    """How the problems read: ``expression`` (``63*15+597``, the tiny model's world) or ``words``."""

    def __init__(self, kind: str) -> None:
        if kind not in ("expression", "words"):
            raise ValueError(f"wording {kind!r}: choose expression or words")
        self.words = kind == "words"

    def question(self, p: Problem) -> str:
        return words.pose(p) if self.words else p.question

    def prompt_row(self, p: Problem) -> dict:
        return {**prompt_row(p), "prompt": self.question(p)}

    def cot(self, p: Problem, trace: Trace) -> str:
        return words.worded_completion(p, trace) if self.words else cot_completion(trace)

    def direct(self, p: Problem) -> str:
        return f"The answer is \\boxed{{{p.answer}}}." if self.words else direct_completion(p)


def sft_row(problem: Problem, completion: str, slip: str | None, question: str | None = None) -> dict:
    """One SFT row: the question (``problem.question`` unless given) as the user turn, ``completion`` as the
    assistant turn."""
    return {
        "id": problem.id,
        "messages": [
            {"role": "user", "content": problem.question if question is None else question},
            {"role": "assistant", "content": completion},
        ],
        "answer": problem.answer,
        "difficulty": problem.level,
        "teacher_slip": slip,
    }


def synthesize(
    out_dir: Path,
    *,
    levels: Sequence[int] = (1, 2, 3),
    n_train: int,
    n_heldout_per_level: int,
    slip_rate: float,
    seed: int,
    rollout_prompts: int = 0,
    rollout_k: int = 4,
    wording: str = "expression",
) -> dict:
    """Generate the world's data for ``seed`` and write the four JSONL files atomically.

    Args:
        out_dir: directory to write into (created if missing).
        levels: world levels to use, mixed round-robin in training.
        n_train: number of training problems (one CoT and one direct SFT row each).
        n_heldout_per_level: held-out problems per level; their questions never appear in training.
        slip_rate: probability that a teacher trace contains a slip.
        seed: seeds the held-out split, the training problems and the teacher's slips.
        rollout_prompts: training problems that get ``rollout_k`` saved teacher samples each.
        rollout_k: teacher samples per problem in ``teacher_rollouts.jsonl``.
        wording: "expression" or "words" (see the module docstring).

    Returns:
        ``{"files": {name: rows}, "slips": {kind: count}, "levels": [...], "seed", "slip_rate"}``.
    """
    out_dir = Path(out_dir)
    heldout = heldout_split(levels, n_heldout_per_level, seed)
    heldout_questions = {p.question for p in heldout}
    train = train_problems(levels, n_train, seed, exclude=heldout_questions)
    # Checked here too, not only in tests: a leak would inflate every held-out number downstream.
    overlap = sum(p.question in heldout_questions for p in train)
    if overlap:
        raise RuntimeError(f"{overlap} training problems are also held out; this is a bug in train_problems")
    teacher_rng = random.Random(f"thinktune-teacher:{seed}")
    traces: list[Trace] = [solve(p, teacher_rng, slip_rate) for p in train]

    w = Wording(wording)
    rows = {
        "heldout_prompts.jsonl": (w.prompt_row(p) for p in heldout),
        "train_prompts.jsonl": (w.prompt_row(p) for p in train),
        "sft_cot.jsonl": (sft_row(p, w.cot(p, t), t.slip, w.question(p)) for p, t in zip(train, traces, strict=True)),
        "sft_direct.jsonl": (sft_row(p, w.direct(p), None, w.question(p)) for p in train),
        "teacher_rollouts.jsonl": _teacher_rollouts(train[:rollout_prompts], rollout_k, slip_rate, seed, w),
    }
    counts = {name: write_jsonl(out_dir / name, rows[name]) for name in FILES}
    slips = Counter(t.slip for t in traces if t.slip is not None)
    return {
        "files": counts,
        "slips": {kind: slips.get(kind, 0) for kind in SLIP_KINDS},
        "levels": list(levels),
        "seed": seed,
        "slip_rate": slip_rate,
        "heldout_overlap": overlap,
    }


def _teacher_rollouts(problems: list[Problem], k: int, slip_rate: float, seed: int, wording: Wording
                      ) -> Iterator[dict]:
    rng = random.Random(f"thinktune-teacher-rollouts:{seed}")  # its own stream: the SFT traces stay the same
    for p in problems:
        for _ in range(k):
            yield {"prompt_id": p.id, "completion": wording.cot(p, solve(p, rng, slip_rate)), "finished": True}
