"""Answer extraction and normalisation: finding the final answer in a completion and removing surface forms.

Pure string work (no sympy, no math-verify, no processes), split out of ``verify`` so the rules that decide
*what* the answer is read apart from the machinery that decides *whether it is right*. ``verify`` is the
one entry point callers use and re-exports the names they import. docs/grading.md lists every rule with a
worked case.

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
(``18 dollars``). Integer mode also drops ``%`` and takes the value of ``name = value``. ``parse_integer``
and ``parse_choice`` read the value an answer commits to in ``integer`` and ``choice`` mode;
``clean_number`` recognises the plain numbers that ``verify`` compares without math-verify.

Only the text after ``</think>`` counts; an answer written inside the thinking never does, and a
completion whose ``<think>`` never closes has no answer.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# The longest "= value" the unboxed fallback takes from a last sentence.
MAX_BARE_ANSWER_CHARS = 40

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


def strip_delimiters(answer: str) -> str:
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
        return strip_delimiters(boxed) or None
    anchors = list(_ANSWER_IS_RE.finditer(solution))
    if anchors:  # the last anchor, even when one line holds two ("the answer is 3, no, the answer is 4")
        tail = solution[anchors[-1].end() :].split("\n", 1)[0]
        return strip_delimiters(_anchored_value(tail)) or None
    value = _final_value(solution)
    return None if value is None else strip_delimiters(value) or None


def normalize_answer(answer: str, mode: str = "math") -> str:
    """The answer as the checks compare it: surface forms that never change its value removed.

    Every mode: math delimiters, ``\\$``/``$``, ``\\!``, degree signs, spacing-command and thin-space
    thousands separators (``1\\,000`` → ``1000``), and a trailing unit (``5\\text{ cm}^2``, ``18 dollars``)
    after a number or brace. ``integer`` mode also drops ``%`` and keeps the value of ``name = value``
    (``m+n=33`` → ``33``). Percent signs stay in ``math`` mode (50\\% equals 0.5 there), and equations are
    left to math-verify, which compares ``x=3`` with ``3`` itself.

    Args:
        answer: an extracted answer (or a gold answer).
        mode: one of ``verify.MODES``.

    Returns:
        The normalised answer (``exact`` mode: only stripped).
    """
    if mode == "exact":
        return answer.strip()
    text = strip_delimiters(answer).replace("\\$", "").replace("$", "").replace("\\!", "")
    text = _DEGREE_RE.sub("", _SEPARATOR_RE.sub("", text)).strip()
    for pattern in (_TEXT_UNIT_RE, _WORD_UNIT_RE):
        text = pattern.sub("", text).strip() or text
    if mode == "integer":
        text = text.replace("\\%", "").replace("%", "").strip()
        name, equals, value = text.rpartition("=")
        if equals and value.strip() and "," not in text and re.search(r"[A-Za-z]", name):
            text = value.strip()  # m+n=33, and the last value of a chain m+n = 15+18 = 33
    return text


def clean_number(text: str) -> str | None:
    """``" $1,234 "`` → ``"1234"`` if the text is a plain integer/decimal, else None."""
    text = text.replace("$", "").replace("{,}", ",").replace("\\!", "")
    text = "".join(text.split())
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    return text if _NUMBER_RE.fullmatch(text) else None


def parse_integer(text: str) -> int | None:
    """The integer an answer states after ``integer``-mode normalisation (``33^\\circ``, ``m+n=33``,
    ``033``, ``1,000``, ``33 \\text{ ways}``), or None."""
    text = _WRAPPER_RE.sub(r"\1", normalize_answer(text, "integer").replace("{,}", ","))
    text = "".join(text.split())
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if len(text) > 50 or not _INTEGER_RE.fullmatch(text):
        return None
    return int(text.split(".")[0])


def parse_choice(text: str) -> str | None:
    """The letter A-D an answer commits to (``(B)``, ``\\textbf{C}``, ``B) 42 m/s``), or None; a hedge
    (``A or B``, ``A, B``, ``A/B``) commits to none."""
    text = text.replace("$", "")
    while (unwrapped := _WRAPPER_RE.sub(r"\1", text)) != text:
        text = unwrapped
    match = _CHOICE_RE.fullmatch(strip_delimiters(_BOLD_RE.sub("", text)))
    if match is None or (match.group(2) and _HEDGE_RE.match(match.group(2))):
        return None
    return match.group(1)
