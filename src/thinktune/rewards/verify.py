"""The one answer checker: think-block splitting, answer extraction and equivalence checks.

Every stage (curation filters, rollout DPO pairing, the GRPO reward, evaluation, maj@N) calls this module, so
"correct" and "the same answer" mean the same thing everywhere. Phi-4-reasoning extracts the final answer
(normally from ``\\boxed{}``) and checks it against the ground truth with equivalence checks (docs/recipe.md
§2.2). docs/grading.md lists every rule below with a worked case, and where we differ from math-verify.

Extraction (``extract_answer``), from the solution part only (after the last ``</think>``):
    1. the last non-empty ``\\boxed{…}``/``\\fbox{…}`` (an empty box is skipped, never an answer);
    2. else the value after the last "final answer is" / "answer is" / "answer:" (the first math span of
       that sentence, or the sentence up to a trailing clause);
    3. else, from the last sentence (unless it is a question): the value after its last ``=``, or its last
       number when that number is not an operand (``51\\times 35`` gives nothing). A repeated question is
       therefore never an answer, and an unevaluated expression is never taken without a box or an anchor.
    Markdown bold (``**``) is dropped first.

Normalisation (``normalize_answer``, every mode): math delimiters, ``\\$``, degree signs, thin-space and
backslash-space thousands separators (``1\\,000``), a trailing unit in ``\\text{…}`` or as bare words
(``18 dollars``). Integer mode also drops ``%`` and takes the value of ``name = value``.

Modes (``MODES``):
    - ``math``: plain integers/decimals are compared numerically in pure Python (fast path, in-process);
      anything else goes through math-verify, gold first, as math-verify intends, in a worker process
      under a hard time limit (``thinktune.rewards.pool``).
    - ``integer``: AIME-style; an integer answer equal to the gold ("033" == "33"), after normalisation; an
      expression (``10^3``) is checked by math-verify as in ``math`` mode; a non-integer number never passes.
    - ``choice``: GPQA-style letter A-D; a hedge (``A or B``, ``A, B``) is wrong.
    - ``exact``: stripped string equality.

What is and isn't covered:
    - Only the text after ``</think>`` counts; an answer written inside the thinking never does, and a
      completion whose ``<think>`` never closes has no answer.
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
      ``verify_stats()["errored"]``. In ``same_answer`` both sides are model answers and both are guarded.
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

# Predictions longer than this never reach math-verify. Real final answers are short, but long correct ones
# exist (a matrix, a long polynomial); the worker's time limit bounds what the guards let through.
MAX_ANSWER_CHARS = 1000
# Nested \\frac cost grows ~1.7x per level in math-verify (12 levels: 0.3 s, 20 levels: 40 s).
MAX_BRACE_DEPTH = 10
# The longest "= value" the unboxed fallback takes from a last sentence.
MAX_BARE_ANSWER_CHARS = 40
# Wall-clock limit of one math-verify check (math-verify's own default is 5 s per operation).
DEFAULT_TIMEOUT_S = 5.0

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_NOBRACE_RE = re.compile(r"\\boxed +([^\s$]+)")
_ANSWER_IS_RE = re.compile(r"(?:final\s+answer|answer)\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]")
# ** is markdown bold unless it sits between two operands (2**10 is a Python-style power).
_BOLD_RE = re.compile(r"(?<![\w)}\]])\*\*|\*\*(?![\w({\[])")
# ", which John spent" after an anchored answer; ", or 6" stays (a hedge must stay visible).
_CLAUSE_RE = re.compile(r",\s+(?!(?:and|or)\b)[A-Za-z]{3,}.*$")
_LONE_LETTER_RE = re.compile(r"\(?[A-D]\)?\.?")
_LAST_EQ_RE = re.compile(r"(?<![<>!\\])=(?!=)")
# A final number of a sentence: integer, decimal, thousands-separated, optional percent, or \frac{a}{b}.
_FINAL_NUMBER_RE = re.compile(
    r"(?<![\w.^_\\])(?:-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*\\?%)?|-?\\[dt]?frac\{-?\d+\}\{\d+\})")
_OPERATOR_BEFORE_RE = re.compile(r"(?:[-+*/^×÷·]|\\times|\\cdot|\\div|\b(?:times|plus|minus|over|by|of))[\s${]*$")
_OPERAND_END_RE = re.compile(r"[\w)}]\s*\$?\s*$")
_CALL_OPEN_RE = re.compile(r"[A-Za-z]\($")
_MATH_CLOSE_RE = re.compile(r"\$|\\\)|\\\]")
_OPERATOR_AFTER_RE = re.compile(r"^[\s$}]*(?:[-+*/^×÷·!]|\\times|\\cdot|\\div|\b(?:times|plus|minus)\b)")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INTEGER_RE = re.compile(r"[+-]?\d+(?:\.0*)?")
_CHOICE_RE = re.compile(r"\(?([A-D])\)?(?:[.:)]?(?:\s+(.*))?)?", re.DOTALL)
_HEDGE_RE = re.compile(r"(?:or|and|/|&)\s*\(?[A-D]\b", re.IGNORECASE)
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
# Thousands separators that are spacing commands or thin spaces: 1\,000, 1\ 000, 1{,}000, 1 000 (U+2009).
_SEPARATOR_RE = re.compile(r"(?<=\d)(?:\\[,;: ]|\{,\}|~|[\u2009\u202f\u00a0])(?=\d{3}(?!\d))")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b")
# A unit after a number or a closing brace: "\text{ ways}", "\mathrm{cm}^2", "dollars", "square units".
_TEXT_UNIT_RE = re.compile(
    r"(?<=[\d}%])\s*\\(?:text|textbf|textrm|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?\s*$")
_WORD_UNIT_RE = re.compile(r"(?<=[\d}%])\s+(?!(?:or|and|pi)\b)[A-Za-z]{2,}(?:\s+[A-Za-z]{2,}){0,3}\.?\s*$")
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
    """Content of the last non-empty ``\\boxed{…}``/``\\fbox{…}`` with balanced braces, or None."""
    for match in reversed(list(_BOX_RE.finditer(text))):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and (content := text[match.end() : i - 1].strip()):
            return content
    bare = _BOX_NOBRACE_RE.findall(text)
    return bare[-1] if bare else None


def _strip_delimiters(answer: str) -> str:
    """Drop math delimiters and a trailing period around an answer: ``$5$.`` → ``5``."""
    answer = answer.strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right) - 1:
            answer = answer[len(left) : len(answer) - len(right)].strip()
    return answer


def _first_math_span(text: str) -> str | None:
    match = _MATH_SPAN_RE.search(text)
    return next(g for g in match.groups() if g is not None) if match else None


def _anchored_value(tail: str) -> str:
    """The value after "answer is": the first math span of its sentence, else the sentence without a
    trailing clause (``18 dollars, which John spent`` → ``18 dollars``)."""
    sentence = _SENTENCE_END_RE.split(tail, maxsplit=1)[0]
    span = _first_math_span(sentence)
    return span if span is not None else _CLAUSE_RE.sub("", sentence)


def _final_value(solution: str) -> str | None:
    """The unboxed, unanchored fallback: from the last sentence (never a question), the value after its
    last ``=``, else its last number unless that number is an operand (``51\\times 35``, ``f(2)``); a lone
    choice letter (``(B)``) is taken as it is."""
    # A line holding only delimiters (the $$ or \\] closing display math) ends no sentence of its own.
    sentences = [s.strip() for s in _SENTENCE_SPLIT_RE.split(solution) if s.strip(" \t$.\\[]")]
    if not sentences or sentences[-1].endswith("?") or _BOX_RE.search(sentences[-1]):
        return None  # a question (an echoed prompt), or an unclosed box (a cut-off answer)
    last = sentences[-1]
    if _LONE_LETTER_RE.fullmatch(last):
        return last  # a bare choice letter, "(B)"
    equals = list(_LAST_EQ_RE.finditer(last))
    if equals:
        value = _MATH_CLOSE_RE.split(last[equals[-1].end() :], maxsplit=1)[0].strip().rstrip(".").strip()
        return value if 0 < len(value) <= MAX_BARE_ANSWER_CHARS else None
    numbers = list(_FINAL_NUMBER_RE.finditer(last))
    if not numbers:
        return None
    number = numbers[-1]
    before, after = last[: number.start()], last[number.end() :]
    if number.group().startswith("-") and _OPERAND_END_RE.search(before):
        return None  # "5 -3": a subtraction, not a negative number
    if _OPERATOR_BEFORE_RE.search(before) or _OPERATOR_AFTER_RE.search(after) or _CALL_OPEN_RE.search(before):
        return None  # an operand (51\times 35) or an argument (f(2)), not a final value
    return number.group()


def extract_answer(completion: str) -> str | None:
    """Extract the final answer from the solution part (after ``</think>``) of a completion.

    Order: the last non-empty ``\\boxed{…}``/``\\fbox{…}`` (nested braces allowed); else the value after
    the last "final answer is X" / "answer is X" / "answer: X" (the first math span of X's sentence, or
    the sentence up to a trailing clause); else, from the solution's last sentence unless it is a
    question, the value after its last ``=`` or its last number that is not an operand. Markdown bold is
    dropped first. Text inside the think block never counts.

    Args:
        completion: the generated text.

    Returns:
        The answer string with math delimiters removed (not otherwise normalised; see
        ``normalize_answer``), or None if nothing was found.
    """
    _, solution = split_think(completion)
    solution = _BOLD_RE.sub("", solution)
    boxed = _last_boxed(solution)
    if boxed is not None:
        return _strip_delimiters(boxed) or None
    anchors = list(_ANSWER_IS_RE.finditer(solution))
    if anchors:  # the last anchor, even when one line holds two ("the answer is 3, no, the answer is 4")
        tail = solution[anchors[-1].end() :].split("\n", 1)[0]
        return _strip_delimiters(_anchored_value(tail)) or None
    value = _final_value(solution)
    return None if value is None else _strip_delimiters(value) or None


def normalize_answer(answer: str, mode: str = "math") -> str:
    """The answer as the checks compare it: surface forms that never change its value removed.

    Every mode: math delimiters, ``\\$``/``$``, ``\\!``, degree signs, spacing-command and thin-space
    thousands separators (``1\\,000`` → ``1000``), and a trailing unit (``5\\text{ cm}^2``, ``18 dollars``)
    after a number or brace. ``integer`` mode also drops ``%`` and keeps the value of ``name = value``
    (``m+n=33`` → ``33``). Percent signs stay in ``math`` mode (50\\% equals 0.5 there), and equations are
    left to math-verify, which compares ``x=3`` with ``3`` itself.

    Args:
        answer: an extracted answer (or a gold answer).
        mode: one of ``MODES``.

    Returns:
        The normalised answer (``exact`` mode: only stripped).
    """
    if mode == "exact":
        return answer.strip()
    text = _strip_delimiters(answer).replace("\\$", "").replace("$", "").replace("\\!", "")
    text = _DEGREE_RE.sub("", _SEPARATOR_RE.sub("", text)).strip()
    for pattern in (_TEXT_UNIT_RE, _WORD_UNIT_RE):
        text = pattern.sub("", text).strip() or text
    if mode == "integer":
        text = text.replace("\\%", "").replace("%", "").strip()
        name, equals, value = text.rpartition("=")
        if equals and value.strip() and "," not in text and re.search(r"[A-Za-z]", name):
            text = value.strip()  # m+n=33, and the last value of a chain m+n = 15+18 = 33
    return text


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
    """The integer an answer states after ``integer``-mode normalisation (``33^\\circ``, ``m+n=33``,
    ``033``, ``1,000``, ``33 \\text{ ways}``), or None."""
    text = _WRAPPER_RE.sub(r"\1", normalize_answer(text, "integer").replace("{,}", ","))
    text = "".join(text.split())
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if len(text) > 50 or not _INTEGER_RE.fullmatch(text):
        return None
    return int(text.split(".")[0])


def _parse_choice(text: str) -> str | None:
    """The letter A-D an answer commits to (``(B)``, ``\\textbf{C}``, ``B) 42 m/s``), or None; a hedge
    (``A or B``, ``A, B``, ``A/B``) commits to none."""
    text = text.replace("$", "")
    while (unwrapped := _WRAPPER_RE.sub(r"\1", text)) != text:
        text = unwrapped
    match = _CHOICE_RE.fullmatch(_strip_delimiters(_BOLD_RE.sub("", text)))
    if match is None or (match.group(2) and _HEDGE_RE.match(match.group(2))):
        return None
    return match.group(1)


def _integer_equal(gold: int, pred: str, timeout_s: float) -> tuple[bool, str | None]:
    """(equal, failure) for ``integer`` mode: an integer answer is compared exactly, another number is
    wrong, an expression (``10^3``) goes to ``math`` mode's check."""
    value = _parse_integer(pred)
    if value is not None:
        return value == gold, None
    text = normalize_answer(pred, "integer")
    if _clean_number(text) is not None:
        return False, None  # 33.5: a number, and not an integer
    return _math_equal(str(gold), text, timeout_s)


def _math_verify_pair(completion: str, answer: str, mode: str) -> tuple[str, str] | None:
    """The (gold, prediction) pair a check will send to math-verify, or None if it needs none."""
    pred = extract_answer(completion)
    if pred is None or mode not in ("math", "integer"):
        return None
    if mode == "integer":
        gold_int = _parse_integer(answer)
        pred = normalize_answer(pred, "integer")
        if gold_int is None or _parse_integer(pred) is not None or _clean_number(pred) is not None:
            return None
        answer = str(gold_int)
    else:
        answer, pred = normalize_answer(answer), normalize_answer(pred)
    return (_strip_delimiters(answer), pred) if _route(answer, pred) == "math_verify" else None


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
        if pred is None:
            return Verdict(False, None)
        correct, failure = _integer_equal(gold_int, pred, timeout_s)
        return Verdict(correct, pred, failure)
    if mode == "choice":
        gold_letter = _parse_choice(answer)
        if gold_letter is None:
            raise DataError(f"gold answer {answer[:80]!r} is not a letter A-D; choice mode needs one")
        return Verdict(pred is not None and _parse_choice(pred) == gold_letter, pred)
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
    if mode == "choice" and (letter := _parse_choice(answer)) is not None:
        return letter
    if mode == "integer" and (value := _parse_integer(answer)) is not None:
        return str(value)
    text = normalize_answer(answer, mode)
    if mode == "math" and (number := _clean_number(text)) is not None:
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
        a_int, b_int = _parse_integer(a), _parse_integer(b)
        if a_int is not None and b_int is not None:
            return False
    a, b = normalize_answer(a, mode), normalize_answer(b, mode)
    if _clean_number(a) is not None and _clean_number(b) is not None:
        return Decimal(_clean_number(a)) == Decimal(_clean_number(b))
    if _guard_reason(a) is not None or _guard_reason(b) is not None:
        return False
    return _math_verify_outcome(_strip_delimiters(a), b, timeout_s) == "true"


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
