"""Tests for evaluation statistics: pass@k against brute force, summarize on a hand-worked example."""

from __future__ import annotations

import itertools
import math

import pytest

from thinktune.evaluation.metrics import combined_std, majority_answer, pass_at_k, per_run_accuracy, summarize


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
