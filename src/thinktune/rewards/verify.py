"""The one answer checker: verdicts against gold answers, the time bound on math-verify, and equivalence.

Every stage (curation filters, rollout DPO pairing, the GRPO reward, evaluation, maj@N) calls this module, so
"correct" and "the same answer" mean the same thing everywhere. Phi-4-reasoning extracts the final answer
(normally from ``\\boxed{}``) and checks it against the ground truth with equivalence checks (docs/recipe.md
§2.2). docs/grading.md lists every rule with a worked case, and where we differ from math-verify.

Finding and normalising the answer is pure string work and lives in ``thinktune.rewards.extract``
(``split_think``, ``extract_answer``, ``normalize_answer``); this module decides whether it is right. The
extraction names callers use are re-exported here, so the whole checker imports from one place.

Modes (``MODES``):
    - ``math``: plain integers/decimals are compared numerically in pure Python (fast path, in-process);
      anything else goes through math-verify, gold first, as math-verify intends, in a worker process
      under a hard time limit (``thinktune.rewards.pool``).
    - ``integer``: AIME-style; an integer answer equal to the gold ("033" == "33"), after normalisation; an
      expression (``10^3``) is checked by math-verify as in ``math`` mode; a non-integer number never passes.
    - ``choice``: GPQA-style letter A-D; a hedge (``A or B``, ``A, B``) is wrong.
    - ``exact``: stripped string equality.

What is and isn't covered:
    - Only the text after ``</think>`` counts (see ``extract``).
    - math-verify's own timeouts use ``signal.alarm``, which fails outside the main thread (and cannot
      interrupt a long C call anyway), so they are disabled. Time is bounded twice: the input guards
      (``thinktune.rewards.guards``) reject long, deeply nested, unbalanced, binary or huge-power
      predictions in microseconds without reaching sympy; whatever passes runs in a worker process that
      is killed after ``timeout_s`` seconds (``DEFAULT_TIMEOUT_S``). Guarded, timed-out and errored
      checks are incorrect and counted in ``verify_stats()``; ``check_answer`` also reports them per
      check (``Verdict.failure``).
    - ``timeout_s=0`` verifies in-process instead: guards only, no hard bound (for platforms without
      ``fork``/``pass_fds``, or debugging).
    - Verdicts of math-verify are cached per (gold, prediction, timeout): a GRPO group or an N-sample
      evaluation repeats the same final answers many times.
    - The gold answer is trusted data and is not guarded; a gold that breaks math-verify shows up in
      ``verify_stats()["errored"]``. In ``same_answer`` both sides are model answers and both are guarded.
    - No LLM verifier fallback (the paper uses one when regex extraction fails).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from thinktune.errors import DataError
from thinktune.rewards.extract import (  # noqa: F401  (THINK_*, split_think, has_valid_think: re-exported)
    THINK_CLOSE,
    THINK_OPEN,
    clean_number,
    extract_answer,
    has_valid_think,
    normalize_answer,
    parse_choice,
    parse_integer,
    split_think,
    strip_delimiters,
)
from thinktune.rewards.guards import guard_reason as _guard_reason  # its old name here; tests probe it
from thinktune.rewards.pool import MAX_WORKERS, get_pool, math_verify_equal, threaded_map

MODES = ("math", "integer", "choice", "exact")
# Wall-clock limit of one math-verify check (math-verify's own default is 5 s per operation).
DEFAULT_TIMEOUT_S = 5.0

_stats_lock = threading.Lock()
_stats = {"checks": 0, "fast_path": 0, "math_verify": 0, "guarded": 0, "timed_out": 0, "errored": 0}


def _count(key: str) -> None:
    with _stats_lock:
        _stats[key] += 1


def verify_stats() -> dict[str, int]:
    """Counts since import (or the last reset) of ``math`` mode checks (and of ``integer`` mode checks of an
    expression such as ``10^3``), by how they were decided.

    Returns:
        ``{"checks", "fast_path", "math_verify", "guarded", "timed_out", "errored"}``: all math-mode
        checks, those the numeric fast path decided, those sent to math-verify (cache hits included),
        those rejected by the input guards, and, among those sent to math-verify, those killed at the
        time limit and those where math-verify raised or its worker died. Guarded, timed-out and
        errored checks count as incorrect.
    """
    with _stats_lock:
        return dict(_stats)


def reset_verify_stats() -> None:
    """Zero the counters of ``verify_stats`` (e.g. at the start of an evaluation)."""
    with _stats_lock:
        for key in _stats:
            _stats[key] = 0


@dataclass(frozen=True)
class Verdict:
    """One answer check.

    Attributes:
        correct: the extracted answer matches the gold answer.
        answer: the extracted answer, or None when there was none.
        failure: why the check could not be completed, or None: ``"guarded"`` (rejected by the input
            guards), ``"timed_out"`` (math-verify killed at the limit) or ``"errored"`` (math-verify
            raised or its worker died). A failed check is incorrect.
    """

    correct: bool
    answer: str | None
    failure: str | None = None


@functools.lru_cache(maxsize=1 << 16)
def _math_verify_outcome(gold: str, pred: str, timeout_s: float) -> str:
    """One of ``pool.OUTCOMES``; cached, since groups of samples repeat the same answers."""
    if timeout_s > 0:
        return get_pool().run(gold, pred, timeout_s)
    try:
        return "true" if math_verify_equal(gold, pred) else "false"
    except Exception:  # any failure inside sympy/math-verify means "not verified"
        return "errored"


def _route(gold: str, pred: str) -> str:
    """How ``math`` mode decides a check: "fast_path" (both plain numbers), "guarded" (too risky for sympy)
    or "math_verify"."""
    if clean_number(gold) is not None and clean_number(pred) is not None:
        return "fast_path"
    return "guarded" if _guard_reason(pred) is not None else "math_verify"


def _math_equal(gold: str, pred: str, timeout_s: float) -> tuple[bool, str | None]:
    """(equal, failure) for ``math`` mode: fast path, then guards, then bounded math-verify."""
    _count("checks")
    route = _route(gold, pred)
    _count(route)
    if route == "fast_path":
        try:
            return Decimal(clean_number(gold)) == Decimal(clean_number(pred)), None
        except InvalidOperation:
            return False, None
    if route == "guarded":
        return False, "guarded"
    outcome = _math_verify_outcome(strip_delimiters(gold), pred, timeout_s)
    if outcome in ("timed_out", "errored"):
        _count(outcome)
        return False, outcome
    return outcome == "true", None


def _integer_equal(gold: int, pred: str, timeout_s: float) -> tuple[bool, str | None]:
    """(equal, failure) for ``integer`` mode: an integer answer is compared exactly, another number is
    wrong, an expression (``10^3``) goes to ``math`` mode's check."""
    value = parse_integer(pred)
    if value is not None:
        return value == gold, None
    text = normalize_answer(pred, "integer")
    if clean_number(text) is not None:
        return False, None  # 33.5: a number, and not an integer
    return _math_equal(str(gold), text, timeout_s)


def _math_verify_pair(completion: str, answer: str, mode: str) -> tuple[str, str] | None:
    """The (gold, prediction) pair a check will send to math-verify, or None if it needs none."""
    pred = extract_answer(completion)
    if pred is None or mode not in ("math", "integer"):
        return None
    if mode == "integer":
        gold_int = parse_integer(answer)
        pred = normalize_answer(pred, "integer")
        if gold_int is None or parse_integer(pred) is not None or clean_number(pred) is not None:
            return None
        answer = str(gold_int)
    else:
        answer, pred = normalize_answer(answer), normalize_answer(pred)
    return (strip_delimiters(answer), pred) if _route(answer, pred) == "math_verify" else None


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown verify mode {mode!r}; valid modes are {', '.join(MODES)}")


def check_answer(
    completion: str, answer: str, mode: str = "math", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Verdict:
    """Check a completion's final answer against the gold answer, saying how the check went.

    Args:
        completion: the generated text (thinking included; only the solution part is read).
        answer: the gold answer.
        mode: one of ``MODES``.
        timeout_s: wall-clock limit of a math-verify check, in seconds; 0 runs it in-process with the
            input guards as the only bound.

    Returns:
        A ``Verdict``. Never raises on bad model output; malformed or adversarial predictions are
        simply incorrect, with ``failure`` set when the check was cut short.

    Raises:
        ValueError: ``mode`` is not one of ``MODES``.
        DataError: in ``integer``/``choice`` mode, the gold answer is not an integer / a letter A-D.
        RuntimeError: no math-verify worker process could be started (see ``thinktune.rewards.pool``).
    """
    _check_mode(mode)
    answer = str(answer)
    pred = extract_answer(completion)
    if mode == "integer":
        gold_int = parse_integer(answer)
        if gold_int is None:
            raise DataError(f"gold answer {answer[:80]!r} is not an integer; integer mode needs one")
        if pred is None:
            return Verdict(False, None)
        correct, failure = _integer_equal(gold_int, pred, timeout_s)
        return Verdict(correct, pred, failure)
    if mode == "choice":
        gold_letter = parse_choice(answer)
        if gold_letter is None:
            raise DataError(f"gold answer {answer[:80]!r} is not a letter A-D; choice mode needs one")
        return Verdict(pred is not None and parse_choice(pred) == gold_letter, pred)
    if pred is None:
        return Verdict(False, None)
    if mode == "exact":
        return Verdict(pred.strip() == answer.strip(), pred)
    correct, failure = _math_equal(normalize_answer(answer), normalize_answer(pred), timeout_s)
    return Verdict(correct, pred, failure)


def is_correct(completion: str, answer: str, mode: str = "math", timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a completion's final answer matches the gold answer (``check_answer(...).correct``).

    Args:
        completion: the generated text (thinking included; only the solution part is read).
        answer: the gold answer.
        mode: one of ``MODES``.
        timeout_s: wall-clock limit of a math-verify check (see ``check_answer``).

    Returns:
        True if the extracted answer is equivalent to ``answer`` under ``mode``. Never raises on bad
        model output; malformed or adversarial predictions are simply incorrect.

    Raises:
        ValueError: ``mode`` is not one of ``MODES``.
        DataError: in ``integer``/``choice`` mode, the gold answer is not an integer / a letter A-D.
    """
    return check_answer(completion, answer, mode, timeout_s).correct


def is_correct_batch(
    completions: Sequence[str],
    answers: Sequence[str],
    mode: str | Sequence[str] = "math",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    threads: int = MAX_WORKERS,
) -> list[bool]:
    """``is_correct`` over parallel lists, several checks at once.

    Args:
        completions: [N] generated texts.
        answers: [N] gold answers.
        mode: one mode for all, or [N] modes.
        timeout_s: wall-clock limit of each math-verify check.
        threads: checks in flight at once (math-verify runs in the pool's worker processes); 1 checks
            one at a time in the caller.

    Returns:
        [N] booleans, in order.

    Raises:
        ValueError: lengths differ or a mode is unknown.
        DataError: in ``integer``/``choice`` mode, a gold answer that does not fit the mode.
    """
    modes = [mode] * len(completions) if isinstance(mode, str) else list(mode)
    if not len(completions) == len(answers) == len(modes):
        raise ValueError(
            f"is_correct_batch: {len(completions)} completions, {len(answers)} answers and "
            f"{len(modes)} modes; pass one answer (and mode) per completion"
        )
    # Only math-verify checks are slow (milliseconds, in worker processes): run those several at a time
    # into the verdict cache, then decide everything here. Threads for the rest (microseconds each) would
    # cost more in hand-offs than the checks take.
    pairs = {pair for c, a, m in zip(completions, answers, modes, strict=True)
             if (pair := _math_verify_pair(c, str(a), m)) is not None}
    if len(pairs) > 1:
        pending = list(pairs)
        threaded_map(lambda i: _math_verify_outcome(*pending[i], timeout_s), len(pending), threads)
    return [is_correct(c, a, m, timeout_s) for c, a, m in zip(completions, answers, modes, strict=True)]


def is_correct_groups(
    groups: Sequence[Sequence[str]], answers: Sequence[str], modes: Sequence[str], threads: int = MAX_WORKERS
) -> list[list[bool]]:
    """``is_correct`` for every completion of every group (the N samples of one problem), checked together.

    Args:
        groups: [P] lists of completions, one list per problem.
        answers: [P] gold answers.
        modes: [P] verify modes.
        threads: see ``is_correct_batch``.

    Returns:
        ``out[p][j]``: completion ``j`` of problem ``p`` is correct.
    """
    if not len(groups) == len(answers) == len(modes):
        raise ValueError(f"is_correct_groups: {len(groups)} groups, {len(answers)} answers and {len(modes)} modes")
    flat = is_correct_batch([t for g in groups for t in g], [a for g, a in zip(groups, answers, strict=True) for _ in g],
                            [m for g, m in zip(groups, modes, strict=True) for _ in g], threads=threads)
    out, start = [], 0
    for g in groups:
        out.append(flat[start:start + len(g)])
        start += len(g)
    return out


def answer_key(answer: str, mode: str = "math") -> str:
    """A cheap canonical string of an answer: equal keys mean the same answer, without calling math-verify.

    ``choice``: the letter; ``integer``: the integer; ``math``: a plain number as its normalised decimal,
    else the normalised answer without whitespace; ``exact``: the stripped answer. An answer that does
    not parse in its mode keys by its normalised text.
    """
    _check_mode(mode)
    if mode == "choice" and (letter := parse_choice(answer)) is not None:
        return letter
    if mode == "integer" and (value := parse_integer(answer)) is not None:
        return str(value)
    text = normalize_answer(answer, mode)
    if mode == "math" and (number := clean_number(text)) is not None:
        try:
            return str(Decimal(number).normalize())
        except InvalidOperation:
            pass
    return text if mode == "exact" else "".join(text.split())


def same_answer(a: str, b: str, mode: str = "math", timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether two extracted answers are the same answer under ``mode`` (``a`` plays math-verify's gold).

    Equal ``answer_key``s are the same; in ``choice``/``exact`` mode nothing else is. Otherwise two plain
    numbers compare numerically and anything else goes to math-verify, with both sides guarded (both are
    model output) and the worker's time limit. A failed check means "not the same". Not counted in
    ``verify_stats``, which counts checks against gold answers.
    """
    if answer_key(a, mode) == answer_key(b, mode):
        return True
    if mode in ("choice", "exact"):
        return False
    if mode == "integer":
        a_int, b_int = parse_integer(a), parse_integer(b)
        if a_int is not None and b_int is not None:
            return False
    a, b = normalize_answer(a, mode), normalize_answer(b, mode)
    if clean_number(a) is not None and clean_number(b) is not None:
        return Decimal(clean_number(a)) == Decimal(clean_number(b))
    if _guard_reason(a) is not None or _guard_reason(b) is not None:
        return False
    return _math_verify_outcome(strip_delimiters(a), b, timeout_s) == "true"


def answer_classes(answers: Sequence[str | None], mode: str = "math",
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> list[int | None]:
    """Group the N answers of one problem into classes of the same answer (the classes of maj@N).

    Answers are first grouped by ``answer_key`` (cheap string equality); then, in order of first
    appearance, each group joins the first earlier class whose first answer it is ``same_answer`` as, or
    starts a class. Only class representatives are compared, so N=64 samples with K distinct answers cost
    at most K*(K-1)/2 checks, and none for answers equal as strings or as plain numbers.

    Args:
        answers: [N] extracted answers, None where none was found.
        mode: the problem's verify mode.
        timeout_s: wall-clock limit of each math-verify check.

    Returns:
        [N] class ids (None for a None answer); a class id is the index of the class's first group, so
        classes are numbered in order of first appearance.
    """
    _check_mode(mode)
    groups: dict[str, int] = {}
    group_of: list[int | None] = []
    reps: list[str] = []
    for answer in answers:
        if answer is None:
            group_of.append(None)
            continue
        group_of.append(groups.setdefault(answer_key(answer, mode), len(reps)))
        if group_of[-1] == len(reps):
            reps.append(answer)
    leader = list(range(len(reps)))
    leaders: list[int] = []
    for g, rep in enumerate(reps):
        leader[g] = next((lead for lead in leaders if same_answer(reps[lead], rep, mode, timeout_s)), g)
        if leader[g] == g:
            leaders.append(g)
    return [None if g is None else leader[g] for g in group_of]
