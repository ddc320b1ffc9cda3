"""Length-uniformity prompt selection, by hand."""

from __future__ import annotations

import math

import pytest

from thinktune.curation.lengths import length_cv, most_uniform, spread


def test_length_cv_by_hand():
    assert length_cv([10, 10, 10]) == 0.0
    # mean 20, population std 10 -> CV 0.5
    assert length_cv([10, 30]) == pytest.approx(0.5)
    # mean 4, deviations -2, 0, 2 -> pstdev sqrt(8/3)
    assert length_cv([2, 4, 6]) == pytest.approx(math.sqrt(8 / 3) / 4)


def test_most_uniform_keeps_the_lowest_cv_share_in_input_order():
    cvs = [0.5, 0.1, 0.3, 0.0, 0.9]
    assert most_uniform(cvs, 0.4) == [1, 3]  # round(0.4 * 5) = 2 lowest: 0.0 (index 3), 0.1 (index 1)
    assert most_uniform(cvs, 0.01) == [3]  # never fewer than one
    assert most_uniform(cvs, 1.0) == [0, 1, 2, 3, 4]


def test_spread_before_and_after():
    groups = [[10, 30], [20, 20]]
    s = spread(groups)
    # CVs 0.5 and 0; stds 10 and 0; max/min 3 and 1.
    assert s == pytest.approx({"mean_cv": 0.25, "mean_std": 5.0, "mean_max_over_min": 2.0})
