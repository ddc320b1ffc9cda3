"""The programmatic teacher: short step-by-step traces for world problems, sometimes with a slip.

Trace formats (docs/calibration.md; every character is a token for the tiny model, so they stay terse):

- ``add``: digit by digit from the right, the carry written as ``+1``:
  964+498 -> ``4+8=12 6+9+1=16 9+4+1=14`` (answer 1462);
- ``mul``: one partial product per digit of the second operand, then their sum:
  63*15 -> ``63*5=315 63*10=630 315+630=945``;
- ``chain``: the ``mul`` trace, then `` 945+597=1542``;
- ``chain2``: the trace of ``a*b``, then of ``c*d``, then the final sum.

A slip is one plausible mistake at one step; every later step correctly builds on the wrong value, so
the trace is self-consistent and its final answer is wrong. That makes the teacher's errors look like a
real model's, which is what rejection sampling and DPO pairs need. Kinds:

- ``dropped_carry``: ``add`` forgets a ``+1`` carry (every equation stays true, the carry is missing);
  other families forget one column carry in the final addition (the sum is ``10**k`` too small);
- ``wrong_partial``: one digit of a partial product is wrong;
- ``wrong_sum``: one digit of the final addition is off by one (for ``add``, the last column's sum).

The kind is drawn uniformly among those that apply to the problem (``dropped_carry`` needs a carry).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from thinktune.tasks.world import Problem

SLIP_KINDS = ("dropped_carry", "wrong_partial", "wrong_sum")


@dataclass(frozen=True)
class Trace:
    """A worked solution.

    Attributes:
        reasoning: the steps, space-separated; the text inside ``<think>...</think>``.
        answer: the answer the trace arrives at (wrong when it slipped).
        slip: ``None``, or the kind of slip (one of ``SLIP_KINDS``).
    """

    reasoning: str
    answer: str
    slip: str | None


@dataclass(frozen=True)
class _Step:
    role: str  # "digit" (column of a digit-wise add), "partial" (partial product) or "sum"
    terms: tuple[int, ...]
    op: str  # "+" or "*"
    value: int

    def text(self) -> str:
        return self.op.join(map(str, self.terms)) + "=" + str(self.value)


@dataclass(frozen=True)
class _Fault:
    index: int  # step at which the slip happens
    delta: int = 0  # added to that step's value
    drop_carry: bool = False  # the step omits its carry term instead


@dataclass
class _Tape:
    """Records the steps of a solution, applying at most one fault; later steps use its wrong value."""

    fault: _Fault | None = None
    steps: list[_Step] = field(default_factory=list)

    def record(self, role: str, terms: tuple[int, ...], op: str) -> int:
        value = sum(terms) if op == "+" else math.prod(terms)
        if self.fault is not None and self.fault.index == len(self.steps):
            value += self.fault.delta
        self.steps.append(_Step(role, terms, op, value))
        return value

    def drops_carry_now(self) -> bool:
        return self.fault is not None and self.fault.drop_carry and self.fault.index == len(self.steps)


def _add_digits(tape: _Tape, a: int, b: int) -> int:
    """Column addition from the right; the last column's sum is written in full."""
    n = max(len(str(a)), len(str(b)))
    da, db = str(a).zfill(n)[::-1], str(b).zfill(n)[::-1]
    carry, low, s = 0, "", 0
    for i in range(n):
        terms = (int(da[i]), int(db[i]))
        if carry and not tape.drops_carry_now():
            terms += (carry,)
        s = tape.record("digit", terms, "+")
        if i < n - 1:
            low = str(s % 10) + low
            carry = s // 10
    return int(str(s) + low)


def _multiply(tape: _Tape, a: int, b: int) -> int:
    """Partial products over the digits of ``b`` from the right, then their running sum."""
    digits = str(b)[::-1]
    total = tape.record("partial", (a, int(digits[0])), "*")
    for k in range(1, len(digits)):
        partial = tape.record("partial", (a, int(digits[k]) * 10**k), "*")
        total = tape.record("sum", (total, partial), "+")
    return total


def _solve_add(tape: _Tape, o: tuple[int, ...]) -> int:
    return _add_digits(tape, o[0], o[1])


def _solve_mul(tape: _Tape, o: tuple[int, ...]) -> int:
    return _multiply(tape, o[0], o[1])


def _solve_chain(tape: _Tape, o: tuple[int, ...]) -> int:
    return tape.record("sum", (_multiply(tape, o[0], o[1]), o[2]), "+")


def _solve_chain2(tape: _Tape, o: tuple[int, ...]) -> int:
    first = _multiply(tape, o[0], o[1])
    return tape.record("sum", (first, _multiply(tape, o[2], o[3])), "+")


SOLVERS: dict[str, Callable[[_Tape, tuple[int, ...]], int]] = {
    "add": _solve_add,
    "mul": _solve_mul,
    "chain": _solve_chain,
    "chain2": _solve_chain2,
}


def _column_carries(x: int, y: int) -> list[int]:
    """Powers ``k`` such that adding ``x + y`` column-wise carries into the ``10**k`` column."""
    out, carry, k = [], 0, 0
    while x or y:
        carry = (x % 10 + y % 10 + carry) // 10
        x, y, k = x // 10, y // 10, k + 1
        if carry:
            out.append(k)
    return out


def _slip_sites(family: str, steps: list[_Step]) -> dict[str, list[int]]:
    """Step indices where each slip kind can happen, for a correct solution's steps."""
    last = len(steps) - 1
    if family == "add":
        dropped = [i for i, s in enumerate(steps) if len(s.terms) == 3]
    else:
        dropped = [last] if _column_carries(*steps[last].terms) else []
    sites = {
        "dropped_carry": dropped,
        "wrong_partial": [i for i, s in enumerate(steps) if s.role == "partial" and s.terms[1] != 0],
        "wrong_sum": [last],
    }
    return {kind: idx for kind, idx in sites.items() if idx}


def _change_digit(value: int, rng: random.Random, off_by_one: bool) -> int:
    """``value`` with one decimal digit changed (to a neighbour when ``off_by_one``), no leading zero."""
    s = str(value)
    while True:
        k = rng.randrange(len(s))
        old = int(s[k])
        if off_by_one:
            new = old + rng.choice((-1, 1))
        else:
            new = rng.choice([d for d in range(10) if d != old])
        if 0 <= new <= 9 and not (k == 0 and new == 0 and len(s) > 1):
            return int(s[:k] + str(new) + s[k + 1 :])


def _draw_fault(kind: str, family: str, step: _Step, index: int, rng: random.Random) -> _Fault:
    if kind == "dropped_carry":
        if family == "add":
            return _Fault(index, drop_carry=True)
        return _Fault(index, delta=-(10 ** rng.choice(_column_carries(*step.terms))))
    if kind == "wrong_partial":
        a, multiplier = step.terms
        place = 10 ** (len(str(multiplier)) - 1)  # the multiplier is one nonzero digit times 10**k
        small = a * (multiplier // place)
        return _Fault(index, delta=(_change_digit(small, rng, off_by_one=False) - small) * place)
    if step.role == "digit":
        # A column sum like 9+4+1 is misremembered as 13 or 15, not 24: off by one in its units.
        return _Fault(index, delta=rng.choice((-1, 1)) if step.value > 0 else 1)
    return _Fault(index, delta=_change_digit(step.value, rng, off_by_one=True) - step.value)


def _run(problem: Problem, fault: _Fault | None) -> tuple[list[_Step], int]:
    tape = _Tape(fault)
    return tape.steps, SOLVERS[problem.family](tape, problem.operands)


def solve(problem: Problem, rng: random.Random | None = None, slip_rate: float = 0.0) -> Trace:
    """Work ``problem`` step by step; with probability ``slip_rate``, make one plausible slip.

    Args:
        problem: a world problem.
        rng: source of the slip draws; may be ``None`` only when ``slip_rate`` is 0 (then it is unused).
        slip_rate: probability in [0, 1] that the trace contains a slip.

    Returns:
        The trace; a slipped trace's answer is always wrong and consistent with its steps.

    Raises:
        ValueError: ``slip_rate`` outside [0, 1], ``rng`` missing while ``slip_rate > 0``, or a problem
            whose stored answer does not match its operands.
    """
    if not 0.0 <= slip_rate <= 1.0:
        raise ValueError(f"slip_rate={slip_rate} must be in [0, 1]")
    if slip_rate > 0 and rng is None:
        raise ValueError("slip_rate > 0 needs an rng; pass random.Random(seed)")
    steps, value = _run(problem, None)
    if str(value) != problem.answer:
        raise ValueError(f"{problem.id}: answer {problem.answer} does not match {problem.question}={value}")
    if slip_rate == 0 or rng is None or rng.random() >= slip_rate:
        return Trace(" ".join(s.text() for s in steps), problem.answer, None)
    sites = _slip_sites(problem.family, steps)
    kind = rng.choice(sorted(sites))
    # Every fault changes a value that flows linearly into the answer, so this loop exits on the first
    # pass; it is a guard, not a search.
    for _ in range(100):
        index = rng.choice(sites[kind])
        slipped, wrong = _run(problem, _draw_fault(kind, problem.family, steps[index], index, rng))
        if str(wrong) != problem.answer:
            return Trace(" ".join(s.text() for s in slipped), str(wrong), kind)
    raise RuntimeError(f"{problem.id}: could not make a {kind} slip that changes the answer")


def cot_completion(trace: Trace) -> str:
    """The reasoning-format assistant text: ``<think>steps</think>\\boxed{answer}``."""
    return "<think>" + trace.reasoning + "</think>" + "\\boxed{" + trace.answer + "}"


def direct_completion(problem: Problem) -> str:
    """The non-reasoning ("base") assistant text: ``\\boxed{answer}``, always correct."""
    return "\\boxed{" + problem.answer + "}"
