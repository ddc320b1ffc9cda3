"""The one answer checker: think-block splitting, answer extraction and equivalence checks.

Every stage (curation filters, rollout DPO pairing, the GRPO reward, evaluation) calls ``is_correct`` from
here, so "correct" means the same thing everywhere. Phi-4-reasoning extracts the final answer (normally
from ``\\boxed{}``) and checks it against the ground truth with equivalence checks (docs/recipe.md §2.2).

Modes (``MODES``):
    - ``math``: plain integers/decimals are compared numerically in pure Python (fast path, in-process);
      anything else goes through math-verify, gold first, as math-verify intends, in a worker process
      under a hard time limit (``thinktune.rewards.pool``).
    - ``integer``: AIME-style; the prediction must be an integer equal to the gold ("033" == "33").
    - ``choice``: GPQA-style letter A-D.
    - ``exact``: stripped string equality.

What is and isn't covered:
    - Only the text after ``</think>`` counts; an answer written inside the thinking never does.
    - math-verify's own timeouts use ``signal.alarm``, which fails outside the main thread (and cannot
      interrupt a long C call anyway), so they are disabled. Time is bounded twice: ``_guard_reason``
      rejects long, deeply nested, unbalanced, binary or huge-power predictions in microseconds without
      reaching sympy; whatever passes runs in a worker process that is killed after ``timeout_s``
      seconds (``DEFAULT_TIMEOUT_S``). Guarded, timed-out and errored checks are incorrect and counted
      in ``verify_stats()``; ``check_answer`` also reports them per check (``Verdict.failure``).
    - ``timeout_s=0`` verifies in-process instead: guards only, no hard bound (for platforms without
      ``fork``/``pass_fds``, or debugging).
    - Verdicts of math-verify are cached per (gold, prediction, timeout): a GRPO group or an N-sample
      evaluation repeats the same final answers many times.
    - The gold answer is trusted data and is not guarded; a gold that breaks math-verify shows up in
      ``verify_stats()["errored"]``.
    - No LLM verifier fallback (the paper uses one when regex extraction fails).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from thinktune.errors import DataError
from thinktune.rewards.pool import MAX_WORKERS, get_pool, math_verify_equal, threaded_map

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
MODES = ("math", "integer", "choice", "exact")

# Predictions longer than this never reach math-verify: real final answers are short, and sympy's cost
# grows fast with expression size.
MAX_ANSWER_CHARS = 300
# Nested \\frac cost grows ~1.7x per level in math-verify (12 levels: 0.3 s, 20 levels: 40 s).
MAX_BRACE_DEPTH = 10
# A bare trailing line this short is taken as the answer when nothing else matches (e.g. a plain "42").
MAX_BARE_ANSWER_CHARS = 40
# Wall-clock limit of one math-verify check (math-verify's own default is 5 s per operation).
DEFAULT_TIMEOUT_S = 5.0

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_NOBRACE_RE = re.compile(r"\\boxed +([^\s$]+)")
_ANSWER_IS_RE = re.compile(r"(?:final\s+answer|answer)\s*(?:is\b\s*:?|:)\s*(.+)", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INTEGER_RE = re.compile(r"[+-]?\d+(?:\.0*)?")
_CHOICE_RE = re.compile(r"\(?([A-D])\)?(?:[\s.:)]|$)")
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
# Shapes that make sympy evaluate astronomically large numbers, found by probing math-verify 0.9: a power
# whose exponent holds a number raised to a number (10^{10^{10}}, 9**9**9, 2^{x+3^{40}}), a 5+ digit
# exponent (9**999999), a factorial of a 5+ digit number or of a power ((10^9)!), and binomials/Gamma
# with 5+ digit numbers or powers in them. A tower with a symbol in the inner power stays symbolic in sympy
# and passes (2^{2^n}, e^{-x^2}). Sums and products pass unless a rule above catches their bounds
# (\\sum_{k=1}^{10^9}): a symbolic one (\\sum_{k=1}^{n} k^2) is a real answer math-verify can check, and
# the worker's time limit still bounds the rest. Some legitimate but unusual answers are rejected (2^{3^2}).
_HUGE_PATTERNS = (
    # ^ or **, then (inside the exponent's bracket, if any) a number not part of a name or subscript,
    # then ^ or ** and a digit: the exponent holds number^number.
    re.compile(r"(?:\^|\*\*)\s*(?:\{[^{}]*?|\([^()]*?|)(?<![\w\\.])[\d.]+\s*(?:\^|\*\*)\s*[{(]?\s*[+-]?\d"),
    re.compile(r"(?:\^|\*\*)\s*[{(]?\s*[+-]?\d{5,}"),
    re.compile(r"\d{5,}\s*!(?!=)|(?:\^|\*\*)[^!]*[)}]\s*!(?!=)"),
    re.compile(r"\\(?:binom|[dt]binom|Gamma|gamma)(?![A-Za-z]).*(?:\d{5,}|\^|\*\*)"),
)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")

_stats_lock = threading.Lock()
_stats = {"checks": 0, "fast_path": 0, "math_verify": 0, "guarded": 0, "timed_out": 0, "errored": 0}


def _count(key: str) -> None:
    with _stats_lock:
        _stats[key] += 1


def verify_stats() -> dict[str, int]:
    """Counts since import (or the last reset) of ``math`` mode checks, by how they were decided.

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


def split_think(completion: str) -> tuple[str | None, str]:
    """Split a completion into (reasoning, solution).

    Rules:
        - ``<think>R</think>S`` (optionally after whitespace or other text) → ``(R, S)``. With several
          ``</think>``, the split is at the last one, so nothing that might be thinking counts as answer.
        - no tags at all → ``(None, completion)``: a non-reasoning model's answer is its whole text.
        - ``<think>`` that never closes (truncated) → ``(reasoning so far, "")``.
        - ``</think>`` without ``<think>`` (a chat template that opens the block in the prompt) → text
          before it is reasoning, text after it is the solution.

    Args:
        completion: the generated text.

    Returns:
        (reasoning or None, solution).
    """
    start = completion.find(THINK_OPEN)
    body_start = start + len(THINK_OPEN) if start >= 0 else 0
    end = completion.rfind(THINK_CLOSE)
    if end >= body_start:
        return completion[body_start:end], completion[end + len(THINK_CLOSE) :]
    if start >= 0:
        return completion[body_start:], ""
    return None, completion


def has_valid_think(completion: str) -> bool:
    """True if the completion is exactly ``<think>…</think>…``: one open tag at the start (after
    whitespace), one close tag after it, and no other think tags."""
    text = completion.lstrip()
    return (
        text.startswith(THINK_OPEN)
        and text.count(THINK_OPEN) == 1
        and text.count(THINK_CLOSE) == 1
        and text.find(THINK_CLOSE) > 0
    )


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}``/``\\fbox{…}`` with balanced braces, or None."""
    matches = list(_BOX_RE.finditer(text))
    for match in reversed(matches):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[match.end() : i - 1].strip()
    bare = _BOX_NOBRACE_RE.findall(text)
    return bare[-1] if bare else None


def _strip_delimiters(answer: str) -> str:
    """Drop math delimiters and a trailing period around an answer: ``$5$.`` → ``5``."""
    answer = answer.strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right) - 1:
            answer = answer[len(left) : len(answer) - len(right)].strip()
    return answer


def extract_answer(completion: str) -> str | None:
    """Extract the final answer from the solution part (after ``</think>``) of a completion.

    Order: the last ``\\boxed{…}``/``\\fbox{…}`` (nested braces allowed); else the last "final answer
    is X" / "answer is X" / "answer: X" (X up to the end of its sentence or line); else, if the solution
    is a single short line (≤ ``MAX_BARE_ANSWER_CHARS``) with no unclosed box, that line. Text inside
    the think block never counts.

    Args:
        completion: the generated text.

    Returns:
        The answer string with math delimiters removed, or None if nothing was found.
    """
    _, solution = split_think(completion)
    boxed = _last_boxed(solution)
    if boxed is not None:
        return _strip_delimiters(boxed) or None
    matches = _ANSWER_IS_RE.findall(solution)
    if matches:
        answer = _SENTENCE_END_RE.split(matches[-1], maxsplit=1)[0]
        return _strip_delimiters(answer) or None
    bare = solution.strip()
    # An unclosed \boxed{ means a cut-off answer, not a bare one.
    if bare and "\n" not in bare and len(bare) <= MAX_BARE_ANSWER_CHARS and not _BOX_RE.search(bare):
        return _strip_delimiters(bare) or None
    return None


def _clean_number(text: str) -> str | None:
    """``" $1,234 "`` → ``"1234"`` if the text is a plain integer/decimal, else None."""
    text = text.replace("$", "").replace("{,}", ",").replace("\\!", "")
    text = "".join(text.split())
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    return text if _NUMBER_RE.fullmatch(text) else None


def _guard_reason(pred: str) -> str | None:
    """Why a prediction is too risky to hand to sympy, or None if it is fine."""
    if len(pred) > MAX_ANSWER_CHARS:
        return "too long"
    if _CONTROL_RE.search(pred):
        return "control or invalid characters"
    depth = 0
    for char in pred:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0 or depth > MAX_BRACE_DEPTH:
            return "unbalanced or deeply nested braces"
    if depth:
        return "unbalanced braces"
    if any(pattern.search(pred) for pattern in _HUGE_PATTERNS):
        return "huge power or factorial"
    return None


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
    if _clean_number(gold) is not None and _clean_number(pred) is not None:
        return "fast_path"
    return "guarded" if _guard_reason(pred) is not None else "math_verify"


def _math_equal(gold: str, pred: str, timeout_s: float) -> tuple[bool, str | None]:
    """(equal, failure) for ``math`` mode: fast path, then guards, then bounded math-verify."""
    _count("checks")
    route = _route(gold, pred)
    _count(route)
    if route == "fast_path":
        try:
            return Decimal(_clean_number(gold)) == Decimal(_clean_number(pred)), None
        except InvalidOperation:
            return False, None
    if route == "guarded":
        return False, "guarded"
    outcome = _math_verify_outcome(_strip_delimiters(gold), pred, timeout_s)
    if outcome in ("timed_out", "errored"):
        _count(outcome)
        return False, outcome
    return outcome == "true", None


def _parse_integer(text: str) -> int | None:
    text = _WRAPPER_RE.sub(r"\1", text.replace("$", "").replace("{,}", ","))
    text = "".join(text.split())
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if len(text) > 50 or not _INTEGER_RE.fullmatch(text):
        return None
    return int(text.split(".")[0])


def _parse_choice(text: str) -> str | None:
    text = _WRAPPER_RE.sub(r"\1", text.replace("$", "")).strip()
    match = _CHOICE_RE.match(text)
    return match.group(1) if match else None


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
        gold_int = _parse_integer(answer)
        if gold_int is None:
            raise DataError(f"gold answer {answer[:80]!r} is not an integer; integer mode needs one")
        return Verdict(pred is not None and _parse_integer(pred) == gold_int, pred)
    if mode == "choice":
        gold_letter = _parse_choice(answer)
        if gold_letter is None:
            raise DataError(f"gold answer {answer[:80]!r} is not a letter A-D; choice mode needs one")
        return Verdict(pred is not None and _parse_choice(pred) == gold_letter, pred)
    if pred is None:
        return Verdict(False, None)
    if mode == "exact":
        return Verdict(pred.strip() == answer.strip(), pred)
    correct, failure = _math_equal(answer, pred, timeout_s)
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
    pairs = {(_strip_delimiters(str(a)), pred) for c, a, m in zip(completions, answers, modes, strict=True)
             if m == "math" and (pred := extract_answer(c)) is not None and _route(str(a), pred) == "math_verify"}
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
