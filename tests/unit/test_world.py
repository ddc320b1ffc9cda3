"""Tests for the embedded math world: answers, digit counts, split disjointness, reproducibility."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import pytest

from thinktune.tasks.world import (
    LEVELS,
    generate_problem,
    heldout_split,
    level_size,
    prompt_row,
    train_problems,
)

# Independent of world.FAMILIES: the question text itself must encode the problem.
QUESTION = {
    "add": re.compile(r"^(\d+)\+(\d+)$"),
    "mul": re.compile(r"^(\d+)\*(\d+)$"),
    "chain": re.compile(r"^(\d+)\*(\d+)\+(\d+)$"),
    "chain2": re.compile(r"^(\d+)\*(\d+)\+(\d+)\*(\d+)$"),
}


def exact(family: str, o: tuple[int, ...]) -> int:
    """Reference answer by plain int arithmetic."""
    if family == "add":
        return o[0] + o[1]
    if family == "mul":
        return o[0] * o[1]
    if family == "chain":
        return o[0] * o[1] + o[2]
    return o[0] * o[1] + o[2] * o[3]


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_generated_answers_are_exact_and_digits_match_level(level: int) -> None:
    rng = random.Random(7)
    spec = LEVELS[level]
    for i in range(500):
        p = generate_problem(level, rng, f"p{i}")
        m = QUESTION[spec.family].match(p.question)
        assert m, p.question
        parsed = tuple(int(g) for g in m.groups())
        assert parsed == p.operands
        assert [len(str(x)) for x in p.operands] == list(spec.digits)
        assert p.answer == str(exact(spec.family, p.operands))
        assert (p.level, p.family, p.id) == (level, spec.family, f"p{i}")


def test_calibration_levels() -> None:
    assert {k: (v.family, v.digits) for k, v in LEVELS.items()} == {
        1: ("add", (3, 3)),
        2: ("mul", (2, 2)),
        3: ("chain", (2, 2, 3)),
        4: ("chain2", (2, 2, 2, 2)),
    }
    assert level_size(2) == 90 * 90


def test_unknown_or_repeated_level_raises() -> None:
    with pytest.raises(ValueError, match="unknown level"):
        generate_problem(9, random.Random(0), "x")
    with pytest.raises(ValueError, match="repeats"):
        heldout_split([1, 1], 3, seed=0)
    with pytest.raises(ValueError, match="more than half"):
        heldout_split([2], 5000, seed=0)


def test_heldout_split_ids_counts_and_distinct() -> None:
    held = heldout_split([1, 2, 3, 4], 50, seed=3)
    assert len(held) == 200
    for level in (1, 2, 3, 4):
        rows = [p for p in held if p.level == level]
        assert [p.id for p in rows] == [f"heldout-L{level}-{i:05d}" for i in range(50)]
    assert len({p.question for p in held}) == len(held)


def test_heldout_level_does_not_depend_on_other_levels() -> None:
    alone = heldout_split([3], 20, seed=5)
    mixed = [p for p in heldout_split([1, 2, 3], 20, seed=5) if p.level == 3]
    assert alone == mixed


def test_train_round_robin_ids_and_distinct() -> None:
    train = train_problems([1, 2, 3], 300, seed=1)
    assert [p.level for p in train] == [1, 2, 3] * 100
    assert [p.id for p in train] == [f"train-{i:06d}" for i in range(300)]
    assert len({p.question for p in train}) == 300


def test_heldout_and_train_share_no_question() -> None:
    held = heldout_split([1, 2, 3], 300, seed=0)
    excluded = {p.question for p in held}
    train = train_problems([1, 2, 3], 6000, seed=0, exclude=excluded)
    assert not excluded & {p.question for p in train}


def test_train_avoids_adversarial_exclude_from_its_own_stream() -> None:
    # Exclude exactly what this seed would have drawn first: every one of them must be replaced.
    first = train_problems([2], 40, seed=11)
    excluded = {p.question for p in first}
    again = train_problems([2], 40, seed=11, exclude=excluded)
    assert not excluded & {p.question for p in again}


def test_train_with_almost_everything_excluded_uses_the_rest_then_repeats() -> None:
    every = [f"{a}*{b}" for a in range(10, 100) for b in range(10, 100)]
    allowed = {"10*10", "55*23", "99*99", "42*17", "67*80"}
    excluded = [q for q in every if q not in allowed]
    train = train_problems([2], 12, seed=2, exclude=excluded)
    questions = [p.question for p in train]
    assert set(questions) == allowed
    assert len(set(questions[:5])) == 5  # distinct first, repeats only once nothing fresh is left
    for p in train:
        assert p.answer == str(exact("mul", p.operands))


def test_train_fully_excluded_level_raises() -> None:
    every = [f"{a}*{b}" for a in range(10, 100) for b in range(10, 100)]
    with pytest.raises(ValueError, match="every question is excluded"):
        train_problems([2], 3, seed=0, exclude=every)


def test_train_exhausting_a_level_uses_every_allowed_question() -> None:
    held = heldout_split([2], 300, seed=0)
    train = train_problems([2], 8000, seed=0, exclude={p.question for p in held})
    questions = {p.question for p in train}
    assert len(questions) == level_size(2) - 300
    assert not questions & {p.question for p in held}


def test_same_seed_same_output_different_seed_different() -> None:
    assert heldout_split([1, 2, 3], 30, seed=4) == heldout_split([1, 2, 3], 30, seed=4)
    assert train_problems([1, 2, 3, 4], 60, seed=4) == train_problems([1, 2, 3, 4], 60, seed=4)
    a = [p.question for p in heldout_split([1, 2, 3], 30, seed=4)]
    b = [p.question for p in heldout_split([1, 2, 3], 30, seed=5)]
    assert a != b
    a = [p.question for p in train_problems([1, 2, 3], 60, seed=4)]
    b = [p.question for p in train_problems([1, 2, 3], 60, seed=5)]
    assert a != b


def test_reproducible_across_processes_with_different_hash_seeds() -> None:
    code = (
        "from thinktune.tasks.world import heldout_split, train_problems\n"
        "h = heldout_split([1, 2, 3, 4], 5, seed=9)\n"
        "t = train_problems([1, 2, 3], 9, seed=9, exclude={p.question for p in h})\n"
        "print(','.join(p.question for p in h + t))\n"
    )
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.append(run.stdout)
    assert outs[0] == outs[1]
    h = heldout_split([1, 2, 3, 4], 5, seed=9)
    t = train_problems([1, 2, 3], 9, seed=9, exclude={p.question for p in h})
    assert outs[0].strip() == ",".join(p.question for p in h + t)


def test_prompt_row_schema() -> None:
    p = generate_problem(3, random.Random(0), "heldout-L3-00000")
    assert prompt_row(p) == {
        "id": "heldout-L3-00000",
        "prompt": p.question,
        "answer": p.answer,
        "source": "world",
        "difficulty": 3,
        "family": "chain",
    }
