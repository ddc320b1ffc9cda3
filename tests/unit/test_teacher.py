"""Tests for the programmatic teacher, checked by an independent trace auditor.

``audit`` re-derives what every step of a trace must be from the problem and the trace's own earlier
values, so it checks both that correct traces are right and that a slipped trace is wrong at exactly
one step with every later step built consistently on the wrong value.
"""

from __future__ import annotations

import math
import random
import re

import pytest

from thinktune.tasks.teacher import SLIP_KINDS, Trace, cot_completion, direct_completion, solve
from thinktune.tasks.world import LEVELS, Problem, generate_problem, make_problem

STEP = re.compile(r"^(\d+(?:[+*]\d+)+)=(\d+)$")


def parse(reasoning: str) -> list[tuple[tuple[int, ...], str, int]]:
    """Split ``"a+b=c x*y=z ..."`` into (terms, op, value) triples."""
    steps = []
    for text in reasoning.split(" "):
        m = STEP.match(text)
        assert m, f"unparsable step {text!r} in {reasoning!r}"
        op = "*" if "*" in m.group(1) else "+"
        steps.append((tuple(int(t) for t in m.group(1).split(op)), op, int(m.group(2))))
    return steps


def audit_add(p: Problem, steps: list) -> tuple[list[tuple[int, str]], int]:
    """Column addition: digits from the right, carry ``+c`` exactly when the previous sum was >= 10."""
    a, b = (str(x)[::-1] for x in p.operands)
    assert len(steps) == len(a)
    bad: list[tuple[int, str]] = []
    prev = 0
    for i, (terms, op, value) in enumerate(steps):
        assert op == "+" and terms[:2] == (int(a[i]), int(b[i])), (i, steps)
        due = (prev // 10,) if prev >= 10 else ()
        if terms[2:] != due:
            bad.append((i, "carry"))
        if sum(terms) != value:
            bad.append((i, "arith"))
        prev = value
    derived = str(steps[-1][2]) + "".join(str(s[2] % 10) for s in reversed(steps[:-1]))
    return bad, int(derived)


def audit_product(a: int, b: int, steps: list, at: int, bad: list) -> tuple[int, int]:
    """``a*units a*tens p0+p1``: structure must hold; a false equation is recorded in ``bad``."""
    (t0, op0, v0), (t1, op1, v1), (t2, op2, v2) = steps[at : at + 3]
    assert (t0, op0) == ((a, b % 10), "*") and (t1, op1) == ((a, b // 10 * 10), "*")
    assert (t2, op2) == ((v0, v1), "+"), "the partial sum must add the written partials"
    for i, (terms, _, value) in enumerate(steps[at : at + 3]):
        if (math.prod(terms) if i < 2 else sum(terms)) != value:
            bad.append((at + i, "arith"))
    return v2, at + 3


def audit(p: Problem, reasoning: str) -> tuple[list[tuple[int, str]], int, list]:
    """Return (false steps as (index, "arith"|"carry"), the answer the steps lead to, parsed steps)."""
    steps = parse(reasoning)
    if p.family == "add":
        bad, derived = audit_add(p, steps)
        return bad, derived, steps
    o, bad = p.operands, []
    value, at = audit_product(o[0], o[1], steps, 0, bad)
    if p.family in ("chain", "chain2"):
        if p.family == "chain":
            addend = o[2]
        else:
            addend, at = audit_product(o[2], o[3], steps, at, bad)
        terms, op, final = steps[at]
        assert (terms, op) == ((value, addend), "+")
        if sum(terms) != final:
            bad.append((at, "arith"))
        value, at = final, at + 1
    assert at == len(steps)
    return bad, value, steps


def problems(level: int, n: int, seed: int = 0) -> list[Problem]:
    rng = random.Random(seed)
    return [generate_problem(level, rng, f"p{i}") for i in range(n)]


def test_calibration_examples() -> None:
    assert solve(make_problem(1, (964, 498), "a")).reasoning == "4+8=12 6+9+1=16 9+4+1=14"
    assert solve(make_problem(1, (964, 494), "a")).reasoning == "4+4=8 6+9=15 9+4+1=14"
    assert solve(make_problem(2, (63, 15), "a")) == Trace("63*5=315 63*10=630 315+630=945", "945", None)
    t = solve(make_problem(3, (63, 15, 597), "a"))
    assert t.reasoning == "63*5=315 63*10=630 315+630=945 945+597=1542" and t.answer == "1542"
    t = solve(make_problem(4, (63, 15, 27, 34), "a"))
    assert t.reasoning == "63*5=315 63*10=630 315+630=945 27*4=108 27*30=810 108+810=918 945+918=1863"


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_correct_traces_are_true_step_by_step(level: int) -> None:
    for p in problems(level, 400):
        t = solve(p)
        bad, derived, _ = audit(p, t.reasoning)
        assert bad == [], (p.question, t.reasoning)
        assert t.slip is None and t.answer == p.answer == str(derived)
        assert int(t.answer) == reference_value(p)


def reference_value(p: Problem) -> int:
    o = p.operands
    return {
        "add": lambda: o[0] + o[1],
        "mul": lambda: o[0] * o[1],
        "chain": lambda: o[0] * o[1] + o[2],
        "chain2": lambda: o[0] * o[1] + o[2] * o[3],
    }[p.family]()


def is_power_of_ten(x: int) -> bool:
    return x > 0 and str(x) == "1" + "0" * (len(str(x)) - 1)


def check_slip_location(p: Problem, t: Trace, bad: list, steps: list) -> None:
    """The one false step is where its kind says, and looks like that mistake."""
    (i, why), last = bad[0], len(steps) - 1
    terms, op, value = steps[i]
    if t.slip == "dropped_carry" and p.family == "add":
        assert why == "carry" and len(terms) == 2 and sum(terms) == value
    elif t.slip == "dropped_carry":
        assert (i, why) == (last, "arith") and is_power_of_ten(sum(terms) - value)
    elif t.slip == "wrong_partial":
        assert why == "arith" and op == "*"
        place = 10 ** (len(str(terms[1])) - 1)
        right, wrong = str(terms[0] * terms[1] // place), str(value // place)
        assert value % place == 0 and len(right) == len(wrong)
        assert sum(x != y for x, y in zip(right, wrong, strict=True)) == 1
    else:
        assert t.slip == "wrong_sum" and (i, why) == (last, "arith")
        off = abs(sum(terms) - value)
        assert off == 1 if p.family == "add" else is_power_of_ten(off)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_slipped_traces_are_wrong_at_exactly_one_step_and_consistent(level: int) -> None:
    rng = random.Random(level)
    kinds = set()
    for p in problems(level, 400, seed=level):
        t = solve(p, rng, slip_rate=1.0)
        bad, derived, steps = audit(p, t.reasoning)
        assert t.slip in SLIP_KINDS
        assert len(bad) == 1, (p.question, t)
        assert t.answer == str(derived) != p.answer
        check_slip_location(p, t, bad, steps)
        kinds.add(t.slip)
    expected = {"dropped_carry", "wrong_sum"} if level == 1 else set(SLIP_KINDS)
    assert kinds == expected


def test_slip_rate_zero_never_slips() -> None:
    rng = random.Random(0)
    for level in LEVELS:
        for p in problems(level, 200):
            assert solve(p, rng, 0.0).slip is None
            assert solve(p).answer == p.answer


def test_slip_frequency_matches_rate() -> None:
    # n=4000, rate 0.25: sd = sqrt(n p (1-p)) ~ 27.4; 5 sd (~137) bounds a false failure by ~6e-7.
    n, rate = 4000, 0.25
    rng = random.Random(123)
    ps = [p for level in sorted(LEVELS) for p in problems(level, n // len(LEVELS), seed=level)]
    assert len(ps) == n
    slipped = sum(solve(p, rng, rate).slip is not None for p in ps)
    assert abs(slipped - n * rate) < 5 * math.sqrt(n * rate * (1 - rate))


def test_slips_are_reproducible_for_a_seed() -> None:
    ps = problems(3, 100)
    a = [solve(p, random.Random(9), 0.5) for p in ps]
    b = [solve(p, random.Random(9), 0.5) for p in ps]
    assert a == b


def test_bad_arguments_raise() -> None:
    p = make_problem(2, (63, 15), "a")
    with pytest.raises(ValueError, match="needs an rng"):
        solve(p, None, 0.1)
    with pytest.raises(ValueError, match="must be in"):
        solve(p, random.Random(0), 1.5)
    broken = Problem("b", 2, "mul", "63*15", "946", (63, 15))
    with pytest.raises(ValueError, match="does not match"):
        solve(broken)


def test_completion_formats_and_length_budget() -> None:
    p = make_problem(2, (63, 15), "a")
    t = solve(p)
    assert cot_completion(t) == "<think>63*5=315 63*10=630 315+630=945</think>\\boxed{945}"
    assert direct_completion(p) == "\\boxed{945}"
    # Char-level tokens: chat specials (~9), <think>, </think>, \boxed count 1 each; 128-token context.
    worst = make_problem(4, (99, 99, 99, 99), "w")
    tokens = 9 + len(worst.question) + 3 + len(solve(worst).reasoning) + len(worst.answer) + 2
    assert tokens <= 128
