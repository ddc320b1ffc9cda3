"""Input guards: which predictions are too risky to hand to sympy, decided in microseconds.

math-verify parses with sympy, and some short strings make sympy evaluate astronomically large numbers or
grow exponentially slower with nesting. ``verify`` runs math-verify in a worker process killed at a time
limit (``thinktune.rewards.pool``), but a killed worker costs a restart and the full limit each time; these
checks reject the known-expensive shapes before any of that. They are pure string checks, kept apart so
the list of shapes (and why each is here) reads on its own. A guarded check is incorrect and counted in
``verify.verify_stats()["guarded"]``.
"""

from __future__ import annotations

import re

# Predictions longer than this never reach math-verify. Real final answers are short, but long correct ones
# exist (a matrix, a long polynomial); the worker's time limit bounds what the guards let through.
MAX_ANSWER_CHARS = 1000
# Nested \\frac cost grows ~1.7x per level in math-verify (12 levels: 0.3 s, 20 levels: 40 s).
MAX_BRACE_DEPTH = 10

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


def guard_reason(pred: str) -> str | None:
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
