"""Evaluation statistics over N sampled runs per problem (docs/recipe.md §4).

Phi-4-reasoning reports pass@1 as the mean accuracy over N independent runs with the standard deviation
across runs as ±, plus best-of-N, majority-of-N and worst-of-N. A "run" j is sample j of every problem,
so ``correct[p][j]`` is sample j of problem p and every problem must have the same N.

maj@N votes over equivalence classes of answers, as the papers do: the verifier decides whether two
answers are the same (``verify.answer_classes``), so ``\\frac{1}{2}``, ``0.5`` and ``1/2`` are one vote
block. ``MAJORITY_RULE`` states the tie rule; the evaluation report prints it.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence

from thinktune.rewards.pool import MAX_WORKERS, threaded_map
from thinktune.rewards.verify import DEFAULT_TIMEOUT_S, answer_classes

MAJORITY_RULE = ("majority over equivalence classes of answers (the verifier decides which answers are the same); "
                 "the largest class wins, a tie goes to the class whose first answer came first, and maj@N is "
                 "correct when that first answer is")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al. (2021): ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so that large n never forms huge binomials.

    Args:
        n: samples drawn for the problem.
        c: correct samples among them.
        k: the k of pass@k (1 ≤ k ≤ n).

    Returns:
        The probability, in [0, 1], that at least one of k samples drawn without replacement is correct.

    Raises:
        ValueError: unless 0 ≤ c ≤ n and 1 ≤ k ≤ n.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_index(answers: Sequence[str | None], mode: str = "math",
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> int | None:
    """Index of the sample whose answer represents the majority (``MAJORITY_RULE``).

    Args:
        answers: [N] extracted answers, None where nothing was extracted.
        mode: the problem's verify mode; it decides which answers are the same.
        timeout_s: wall-clock limit of each math-verify check.

    Returns:
        The first sample of the largest class of equivalent answers (ties: the class seen first), or
        None if every answer is None.
    """
    classes = answer_classes(answers, mode, timeout_s)
    counts = Counter(c for c in classes if c is not None)
    if not counts:
        return None
    # Class ids number classes in order of first appearance, so the smallest id among the largest wins.
    best = min(counts, key=lambda c: (-counts[c], c))
    return classes.index(best)


def majority_answer(answers: Sequence[str | None], mode: str = "math") -> str | None:
    """The majority answer (``MAJORITY_RULE``), as its first sample wrote it, whitespace removed.

    Args:
        answers: [N] extracted answers, None where nothing was extracted.
        mode: the problem's verify mode.

    Returns:
        The majority answer, or None if all are None.
    """
    index = majority_index(answers, mode)
    return None if index is None else "".join(answers[index].split())


def _majority_correct(correct: Sequence[bool], answers: Sequence[str | None], mode: str) -> bool:
    """Whether the majority answer is correct: the verdict of the majority class's first sample."""
    index = majority_index(answers, mode)
    return index is not None and bool(correct[index])


def _check_shape(name: str, table: Sequence[Sequence[object]], problems: int, samples: int) -> None:
    if len(table) != problems or any(len(row) != samples for row in table):
        raise ValueError(
            f"summarize: '{name}' must be [{problems} problems][{samples} samples] like 'correct'"
        )


def per_run_accuracy(correct: Sequence[Sequence[bool]]) -> list[float]:
    """Accuracy (percent) of each run j, where run j is sample j of every problem.

    Args:
        correct: [P][N] booleans.

    Returns:
        [N] accuracies in percent.

    Raises:
        ValueError: no problems, or problems with different sample counts.
    """
    if not correct or not correct[0]:
        raise ValueError("per_run_accuracy: need at least one problem with at least one sample")
    samples = len(correct[0])
    _check_shape("correct", correct, len(correct), samples)
    return [100.0 * sum(row[j] for row in correct) / len(correct) for j in range(samples)]


def combined_std(a_std: float, b_std: float) -> float:
    """Standard deviation of a difference of two independent means: ``sqrt(a² + b²)``.

    Used to flag a drop between stages only when it exceeds the noise of both evaluations.
    """
    return math.hypot(a_std, b_std)


def summarize(
    correct: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[str | None]],
    lengths: Sequence[Sequence[int]],
    well_formed: Sequence[Sequence[bool]],
    finished: Sequence[Sequence[bool]] | None = None,
    ks: Sequence[int] = (1,),
    modes: Sequence[str] | None = None,
    threads: int = MAX_WORKERS,
) -> dict[str, float]:
    """Summary statistics of N samples for each of P problems.

    Args:
        correct: [P][N] whether sample j of problem p is correct.
        answers: [P][N] extracted answers (None where none was found).
        lengths: [P][N] completion lengths in tokens.
        well_formed: [P][N] whether the think format was valid.
        finished: [P][N] whether generation ended on its own (not cut at the token limit), or None.
        ks: the k values of pass@k to report; those above N are skipped.
        modes: [P] verify modes, which decide which answers maj@N counts as the same; None: all ``math``.
        threads: problems whose maj@N classes are computed at once (math-verify runs in worker processes).

    Returns:
        A flat dict; accuracies and shares are in percent:
        ``pass@1`` (mean of the N run accuracies), ``pass@1_std`` (sample std across runs, ddof=1; 0.0
        when N=1 because one run gives no spread estimate), ``maj@N`` (``MAJORITY_RULE``), ``best@N`` (any sample correct),
        ``worst@N`` (all correct), ``pass@k`` per k (unbiased, averaged over problems), ``mean_length``,
        ``format_ok``, ``answered``, ``truncated`` (only when ``finished`` is given), ``num_problems``
        and ``samples_per_problem``.

    Raises:
        ValueError: empty input or tables whose shapes differ from ``correct``.
    """
    runs = per_run_accuracy(correct)
    problems, samples = len(correct), len(runs)
    for name, table in (("answers", answers), ("lengths", lengths), ("well_formed", well_formed)):
        _check_shape(name, table, problems, samples)
    modes = ["math"] * problems if modes is None else list(modes)
    if len(modes) != problems:
        raise ValueError(f"summarize: 'modes' must have one mode per problem ({problems}), got {len(modes)}")
    majority = threaded_map(lambda p: _majority_correct(correct[p], answers[p], modes[p]), problems, threads)
    flat_answers = [a for row in answers for a in row]
    total = problems * samples
    stats = {
        "pass@1": statistics.fmean(runs),
        "pass@1_std": statistics.stdev(runs) if samples > 1 else 0.0,
        f"maj@{samples}": 100.0 * statistics.fmean(majority),
        f"best@{samples}": 100.0 * statistics.fmean(any(row) for row in correct),
        f"worst@{samples}": 100.0 * statistics.fmean(all(row) for row in correct),
    }
    for k in ks:
        # k=1 is already "pass@1": the unbiased estimator at k=1 is c/n, whose mean is the mean run accuracy.
        if 1 < k <= samples:
            stats[f"pass@{k}"] = 100.0 * statistics.fmean(pass_at_k(samples, sum(row), k) for row in correct)
    stats["mean_length"] = statistics.fmean(n for row in lengths for n in row)
    stats["format_ok"] = 100.0 * sum(ok for row in well_formed for ok in row) / total
    stats["answered"] = 100.0 * sum(a is not None for a in flat_answers) / total
    if finished is not None:
        _check_shape("finished", finished, problems, samples)
        stats["truncated"] = 100.0 * sum(not f for row in finished for f in row) / total
    stats["num_problems"] = float(problems)
    stats["samples_per_problem"] = float(samples)
    return stats
