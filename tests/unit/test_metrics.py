"""Tests for evaluation statistics: pass@k against brute force, summarize on a hand-worked example."""

from __future__ import annotations

import itertools
import math

import pytest

from thinktune.evaluation import metrics
from thinktune.evaluation.metrics import (
    MAJORITY_RULE,
    combined_std,
    majority_answer,
    majority_index,
    pass_at_k,
    per_run_accuracy,
    summarize,
)
from thinktune.rewards import verify as verify_module


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) that hold at least one correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable() -> None:
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(10_000, 5000, 100) == pytest.approx(1.0)
    assert 0.0 <= pass_at_k(5000, 3, 10) <= 1.0


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, 2, 0), (4, 2, 5), (4, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


MAJORITY_CASES = [
    (["5", " 5", "6"], "5"),
    (["x + 1", "x+1", "2", "2"], "x+1"),  # tie 2-2: the earliest answer wins
    (["2", "3", "3", None, None, None], "3"),  # None never wins
    ([None, None], None),
    ([], None),
]


@pytest.mark.parametrize("answers,expected", MAJORITY_CASES)
def test_majority_answer(answers: list[str | None], expected: str | None) -> None:
    assert majority_answer(answers) == expected


def test_summarize_hand_worked_3x4() -> None:
    # correct                 c   answers               majority
    # p0: T T T T             4   5, 5, " 5", 5        "5"  (correct sample)   -> maj ok
    # p1: F F F F             0   2, 3, 3, None        "3"  (no correct)       -> maj wrong
    # p2: T F F F             1   7, 8, 8, 9           "8"  (only "7" correct) -> maj wrong
    # runs: run0 = T,F,T = 66.67; run1..3 = T,F,F = 33.33 each
    # pass@1 = (66.67 + 3 * 33.33) / 4 = 41.67 (= 5/12 correct samples)
    # pass@1_std: deviations 25, -8.33 x3 -> (625 + 3 * 69.44) / 3 = 277.78 -> sqrt = 16.67
    # maj@4 = 1/3 = 33.33; best@4 = p0, p2 = 66.67; worst@4 = p0 = 33.33
    # pass@2: p0 = 1, p1 = 0, p2 = 1 - C(3,2)/C(4,2) = 0.5 -> 50.0; pass@4 = 2/3 = 66.67; pass@8 skipped
    # mean_length = (100 + 400 + 10) / 12 = 42.5; format_ok = 9/12 = 75; answered = 11/12 = 91.67
    # truncated = 2/12 = 16.67
    correct = [[True] * 4, [False] * 4, [True, False, False, False]]
    answers = [["5", "5", " 5", "5"], ["2", "3", "3", None], ["7", "8", "8", "9"]]
    lengths = [[10, 20, 30, 40], [100] * 4, [1, 2, 3, 4]]
    well_formed = [[True] * 4, [True, False, True, True], [False, False, True, True]]
    finished = [[True] * 4, [False, False, True, True], [True] * 4]
    stats = summarize(correct, answers, lengths, well_formed, finished, ks=(1, 2, 4, 8))
    expected = {
        "pass@1": 500 / 12,
        "pass@1_std": 50 / 3,
        "maj@4": 100 / 3,
        "best@4": 200 / 3,
        "worst@4": 100 / 3,
        "pass@2": 50.0,
        "pass@4": 200 / 3,
        "mean_length": 42.5,
        "format_ok": 75.0,
        "answered": 1100 / 12,
        "truncated": 200 / 12,
        "num_problems": 3.0,
        "samples_per_problem": 4.0,
    }
    assert stats == pytest.approx(expected)


def test_summarize_single_run_has_zero_std_and_no_truncation_key() -> None:
    stats = summarize([[True], [False]], [["1"], [None]], [[5], [7]], [[True], [True]])
    assert stats["pass@1"] == 50.0 and stats["pass@1_std"] == 0.0 and stats["maj@1"] == 50.0
    assert "truncated" not in stats


def test_summarize_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="lengths"):
        summarize([[True, False]], [["1", "2"]], [[1]], [[True, True]])
    with pytest.raises(ValueError):
        per_run_accuracy([[True, False], [True]])


def test_per_run_accuracy_and_combined_std() -> None:
    assert per_run_accuracy([[True, False], [True, True]]) == [100.0, 50.0]
    assert combined_std(3.0, 4.0) == 5.0
    assert math.isclose(combined_std(0.0, 2.5), 2.5)


def test_majority_counts_equivalent_answers_as_one() -> None:
    # 1/2 written three ways is one class of 3; "3" twice is a class of 2: the old string vote chose "3".
    answers = ["\\frac{1}{2}", "0.5", "1/2", "3", "3"]
    assert majority_answer(answers) == "\\frac{1}{2}"
    assert majority_index(answers) == 0
    correct = [True, True, True, False, False]  # gold 0.5
    stats = summarize([correct], [answers], [[1] * 5], [[True] * 5])
    assert stats["maj@5"] == 100.0


@pytest.mark.parametrize("answers,mode,expected", [
    (["3", "\\frac{1}{2}", "0.5", "3"], "math", 0),  # 2-2 tie: the class whose first answer came first
    (["0.5", "3", "3", "1/2"], "math", 0),  # 2-2 tie again; 0.5 came first
    (["x+1", "1+x", "2", "2", "2"], "math", 2),  # the larger class wins, wherever it starts
    (["(B)", "A", "\\textbf{B}", "A", "B"], "choice", 0),  # letters, however written
    (["A or B", "B", "A", "A"], "choice", 2),  # a hedge joins neither letter's class
    (["33^\\circ", "034", "33", "34"], "integer", 0),  # 2-2 tie between 33 and 34: 33 came first
    ([None, None, "7", None], "math", 2),  # None never votes
])
def test_majority_tie_rule(answers: list[str], mode: str, expected: int) -> None:
    assert majority_index(answers, mode) == expected


def test_majority_compares_only_class_representatives(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 samples over 8 distinct plain numbers (written with and without separators and zeros): string keys
    # and numeric comparison decide everything, so math-verify is never called.
    def boom(*args: object) -> str:
        raise AssertionError("math-verify called for plain numbers")

    monkeypatch.setattr(verify_module, "_math_verify_outcome", boom)
    answers = [f"{1000 * (i % 8)}" if i % 3 else f"{i % 8}{{,}}000.0" for i in range(64)]
    assert majority_index(answers) == 0  # 0 and 0{,}000.0 are one class of 8, tied with the others: first wins


def test_summarize_takes_one_mode_per_problem() -> None:
    answers = [["(B)", "B", "A"], ["x+1", "1+x", "2"]]
    correct = [[True, True, False], [True, True, False]]
    stats = summarize(correct, answers, [[1] * 3] * 2, [[True] * 3] * 2, modes=["choice", "math"])
    assert stats["maj@3"] == 100.0
    with pytest.raises(ValueError, match="one mode per problem"):
        summarize(correct, answers, [[1] * 3] * 2, [[True] * 3] * 2, modes=["math"])


def test_majority_rule_is_stated() -> None:
    assert "equivalence classes" in MAJORITY_RULE and "first" in MAJORITY_RULE
    assert metrics.MAJORITY_RULE is MAJORITY_RULE
