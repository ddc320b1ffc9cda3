"""Evaluation statistics over N sampled runs per problem (docs/recipe.md §4).

Phi-4-reasoning reports pass@1 as the mean accuracy over N independent runs with the standard deviation
across runs as ±, plus best-of-N, majority-of-N and worst-of-N. A "run" j is sample j of every problem,
so ``correct[p][j]`` is sample j of problem p and every problem must have the same N.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence


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


def _normalize(answer: str) -> str:
    return "".join(answer.split())


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most common non-None answer after light normalization (whitespace removed).

    Args:
        answers: [N] extracted answers, None where nothing was extracted.

    Returns:
        The normalized majority answer; ties go to the answer seen first; None if all are None.
    """
    normalized = [_normalize(a) for a in answers if a is not None]
    if not normalized:
        return None
    counts = Counter(normalized)
    best = max(counts.values())
    # Counter keeps first-insertion order, so the first answer reaching the top count wins ties.
    return next(a for a, n in counts.items() if n == best)


def _majority_correct(correct: Sequence[bool], answers: Sequence[str | None]) -> bool:
    """Whether the majority answer belongs to a correct sample."""
    majority = majority_answer(answers)
    if majority is None:
        return False
    return any(
        ok for ok, a in zip(correct, answers, strict=True) if a is not None and _normalize(a) == majority
    )


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
) -> dict[str, float]:
    """Summary statistics of N samples for each of P problems.

    Args:
        correct: [P][N] whether sample j of problem p is correct.
        answers: [P][N] extracted answers (None where none was found).
        lengths: [P][N] completion lengths in tokens.
        well_formed: [P][N] whether the think format was valid.
        finished: [P][N] whether generation ended on its own (not cut at the token limit), or None.
        ks: the k values of pass@k to report; those above N are skipped.

    Returns:
        A flat dict; accuracies and shares are in percent:
        ``pass@1`` (mean of the N run accuracies), ``pass@1_std`` (sample std across runs, ddof=1; 0.0
        when N=1 because one run gives no spread estimate), ``maj@N``, ``best@N`` (any sample correct),
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
    flat_answers = [a for row in answers for a in row]
    total = problems * samples
    stats = {
        "pass@1": statistics.fmean(runs),
        "pass@1_std": statistics.stdev(runs) if samples > 1 else 0.0,
        f"maj@{samples}": 100.0
        * statistics.fmean(_majority_correct(c, a) for c, a in zip(correct, answers, strict=True)),
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
