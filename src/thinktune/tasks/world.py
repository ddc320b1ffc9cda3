"""The embedded math world: procedurally generated integer problems at graded difficulty.

Four levels, each a fixed family of expressions over operands with fixed digit counts (sized in
docs/calibration.md for a 1M-parameter model with a 128-token context):

- L1 ``add``: 3-digit + 3-digit, e.g. ``964+498``;
- L2 ``mul``: 2-digit * 2-digit, e.g. ``63*15``;
- L3 ``chain``: 2-digit * 2-digit + 3-digit, e.g. ``63*15+597``;
- L4 ``chain2``: ``a*b+c*d`` with 2-digit operands, e.g. ``63*15+27*34``.

Every answer is exact Python integer arithmetic over the operands. Randomness comes only from
``random.Random`` instances seeded with an int or a string (strings are seeded through SHA-512, so they
are stable across processes, unlike ``hash()``), so a seed reproduces the same problems anywhere.

The held-out split and the training problems use separate random streams per level, and training
never emits a question from ``exclude``. L2 has only 8,100 distinct questions, so a large training set
can exhaust it; the sampler then switches to an enumerated pool of what is left and allows repeats only
once every allowed question has been used.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One world problem.

    Attributes:
        id: stable id, e.g. ``"heldout-L3-00042"`` or ``"train-000123"``.
        level: difficulty level, a key of ``LEVELS``.
        family: ``"add"``, ``"mul"``, ``"chain"`` or ``"chain2"``.
        question: the expression in plain ASCII, e.g. ``"63*15+597"``.
        answer: the exact integer answer as a decimal string.
        operands: the integers in the order they appear in ``question``.
    """

    id: str
    level: int
    family: str
    question: str
    answer: str
    operands: tuple[int, ...]


@dataclass(frozen=True)
class LevelSpec:
    """A level: its expression family and the digit count of each operand."""

    family: str
    digits: tuple[int, ...]


LEVELS: dict[int, LevelSpec] = {
    1: LevelSpec("add", (3, 3)),
    2: LevelSpec("mul", (2, 2)),
    3: LevelSpec("chain", (2, 2, 3)),
    4: LevelSpec("chain2", (2, 2, 2, 2)),
}

# family -> (question template, exact value of the operands)
FAMILIES: dict[str, tuple[str, Callable[[tuple[int, ...]], int]]] = {
    "add": ("{}+{}", lambda o: o[0] + o[1]),
    "mul": ("{}*{}", lambda o: o[0] * o[1]),
    "chain": ("{}*{}+{}", lambda o: o[0] * o[1] + o[2]),
    "chain2": ("{}*{}+{}*{}", lambda o: o[0] * o[1] + o[2] * o[3]),
}

# Rejection-sampling tries for a fresh question before a level counts as (nearly) exhausted.
_FRESH_TRIES = 64
# Largest question space we are willing to enumerate when rejection sampling fails (L1 is 810,000).
_MAX_ENUMERATE = 1_000_000


def _spec(level: int) -> LevelSpec:
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}; the world has levels {sorted(LEVELS)}")
    return LEVELS[level]


def _digit_range(d: int) -> range:
    return range(10 ** (d - 1), 10**d)


def make_problem(level: int, operands: tuple[int, ...], id: str) -> Problem:
    """Build the ``Problem`` of ``level`` over the given operands, computing its exact answer.

    Args:
        level: a key of ``LEVELS``.
        operands: one integer per operand of the level's family.
        id: the problem id.

    Returns:
        The problem with its rendered question and answer.
    """
    family = _spec(level).family
    template, value = FAMILIES[family]
    return Problem(id, level, family, template.format(*operands), str(value(operands)), operands)


def generate_problem(level: int, rng: random.Random, id: str) -> Problem:
    """Draw one problem of ``level``, each operand uniform over its digit count.

    Args:
        level: a key of ``LEVELS``.
        rng: the only source of randomness.
        id: the problem id.

    Returns:
        The drawn problem.

    Raises:
        ValueError: ``level`` is not a key of ``LEVELS``.
    """
    r = [_digit_range(d) for d in _spec(level).digits]
    return make_problem(level, tuple(rng.randint(x.start, x.stop - 1) for x in r), id)


def level_size(level: int) -> int:
    """Number of distinct questions at ``level``."""
    n = 1
    for d in _spec(level).digits:
        n *= len(_digit_range(d))
    return n


def _all_operands(level: int) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(_digit_range(d) for d in _spec(level).digits))


def _check_levels(levels: Sequence[int]) -> None:
    if not levels:
        raise ValueError("levels is empty; pass at least one of " + str(sorted(LEVELS)))
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels {list(levels)} repeats a level; list each level once")
    for level in levels:
        _spec(level)


def heldout_split(levels: Sequence[int], n_per_level: int, seed: int) -> list[Problem]:
    """The held-out problems: ``n_per_level`` distinct questions per level.

    Each level has its own random stream, so a level's held-out problems do not depend on which other
    levels are asked for.

    Args:
        levels: distinct keys of ``LEVELS``.
        n_per_level: problems per level.
        seed: the split's seed.

    Returns:
        Problems grouped by level in the order of ``levels``, ids ``"heldout-L{level}-{i:05d}"``.

    Raises:
        ValueError: an unknown or repeated level, or ``n_per_level`` above half a level's question
            space (the rest must stay available for training).
    """
    _check_levels(levels)
    out: list[Problem] = []
    for level in levels:
        if n_per_level > level_size(level) // 2:
            raise ValueError(
                f"n_per_level={n_per_level} is more than half of level {level}'s "
                f"{level_size(level)} questions; lower it so training keeps enough problems"
            )
        rng = random.Random(f"thinktune-heldout:{seed}:L{level}")
        seen: set[str] = set()
        while len(seen) < n_per_level:
            p = generate_problem(level, rng, f"heldout-L{level}-{len(seen):05d}")
            if p.question not in seen:
                seen.add(p.question)
                out.append(p)
    return out


class _LevelSampler:
    """Draws training problems of one level: fresh questions first, never an excluded one."""

    def __init__(self, level: int, seed: int, exclude: frozenset[str]) -> None:
        self.level = level
        self.rng = random.Random(f"thinktune-train:{seed}:L{level}")
        self.exclude = exclude
        self.seen: set[str] = set()
        self.pool: list[tuple[int, ...]] | None = None  # set once rejection sampling stops finding fresh ones
        self.cursor = 0

    def draw(self, id: str) -> Problem:
        if self.pool is None:
            for _ in range(_FRESH_TRIES):
                p = generate_problem(self.level, self.rng, id)
                if p.question not in self.exclude and p.question not in self.seen:
                    self.seen.add(p.question)
                    return p
            self.pool = self._enumerate_pool()
        return self._draw_from_pool(id)

    def _enumerate_pool(self) -> list[tuple[int, ...]]:
        if level_size(self.level) > _MAX_ENUMERATE:
            raise ValueError(
                f"level {self.level}: {_FRESH_TRIES} draws in a row were excluded or repeated; "
                "the exclude set covers too much of the level's question space"
            )
        template = FAMILIES[_spec(self.level).family][0]
        pool = [o for o in _all_operands(self.level) if template.format(*o) not in self.exclude]
        if not pool:
            raise ValueError(f"level {self.level}: every question is excluded; nothing left to train on")
        # Shuffle once so the fresh-first walk below is a seeded random order, not lexicographic.
        self.rng.shuffle(pool)
        return pool

    def _draw_from_pool(self, id: str) -> Problem:
        assert self.pool is not None
        while self.cursor < len(self.pool):
            p = make_problem(self.level, self.pool[self.cursor], id)
            self.cursor += 1
            if p.question not in self.seen:
                self.seen.add(p.question)
                return p
        # Every allowed question has been used: repeats are now unavoidable.
        return make_problem(self.level, self.rng.choice(self.pool), id)


def train_problems(levels: Sequence[int], n: int, seed: int, exclude: Collection[str] = ()) -> list[Problem]:
    """Training problems, levels mixed round-robin (exactly 1:1:... up to the remainder).

    Args:
        levels: distinct keys of ``LEVELS``.
        n: number of problems.
        seed: the sampler's seed (its streams differ from ``heldout_split``'s for the same seed).
        exclude: questions never to emit, normally the held-out questions.

    Returns:
        ``n`` problems with ids ``"train-{i:06d}"``; questions are distinct unless a level's allowed
        questions run out, and never in ``exclude``.

    Raises:
        ValueError: an unknown or repeated level, or ``exclude`` covering a whole level.
    """
    _check_levels(levels)
    excluded = frozenset(exclude)
    samplers = [_LevelSampler(level, seed, excluded) for level in levels]
    return [samplers[i % len(samplers)].draw(f"train-{i:06d}") for i in range(n)]


def prompt_row(p: Problem) -> dict:
    """The prompt row (docs/design.md schema) of a problem.

    Returns:
        ``{"id", "prompt", "answer", "source": "world", "difficulty", "family"}``.
    """
    return {
        "id": p.id,
        "prompt": p.question,
        "answer": p.answer,
        "source": "world",
        "difficulty": p.level,
        "family": p.family,
    }
