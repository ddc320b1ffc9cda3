"""The grading table: thinktune's verdict and math-verify's on the same cases, side by side.

Each row is (id, completion, gold, mode, thinktune's verdict, math-verify's verdict), with a comment that
justifies the expected verdict. math-verify's column is not pasted: ``test_math_verify_column`` recomputes it
with ``verify(parse(f"${gold}$"), parse(completion))``, math-verify's documented use (and TRL's/open-r1's),
default extraction configs, main thread. Every row where the two columns differ must be listed, with the
reason, in docs/grading.md (``test_disagreements_are_documented``), and nothing else may be listed there.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from math_verify import parse, verify

from thinktune.rewards.pool import get_pool
from thinktune.rewards.verify import is_correct

GRADING_DOC = Path(__file__).resolve().parents[2] / "docs" / "grading.md"
T = "<think>Let me work it out.</think>"
LONG_POLY = "+".join(f"{k}x^{{{k}}}" for k in range(1, 41))  # 40 terms, about 330 characters
LONG_POLY_REVERSED = "+".join(f"{k}x^{{{k}}}" for k in range(40, 0, -1))
ONES = "+".join(["1"] * 600)  # 1199 characters, equal to 600
PROSE = "We consider the cases carefully and keep going without ever committing to anything. " * 25

# id, completion, gold, mode, thinktune, math-verify
CASES = [
    # fractions
    ("frac-decimal", T + r"\boxed{\frac{1}{2}}", "0.5", "math", True, True),  # 1/2 = 0.5
    ("frac-slash", T + r"\boxed{1/2}", r"\frac{1}{2}", "math", True, True),  # same number, other notation
    ("frac-dfrac", T + r"\boxed{\dfrac{3}{4}}", "0.75", "math", True, True),  # \dfrac is \frac
    ("frac-rounded", T + r"\boxed{0.33}", r"\frac{1}{3}", "math", False, False),  # a rounding is not 1/3
    ("frac-sign", T + r"\boxed{-\frac{1}{2}}", r"\frac{-1}{2}", "math", True, True),  # sign placement only
    ("frac-unreduced", T + r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", "math", True, True),  # equal value
    ("frac-improper", T + r"\boxed{\frac{7}{2}}", "3.5", "math", True, True),  # 7/2 = 3.5
    ("frac-wrong", T + r"\boxed{\frac{3}{4}}", r"\frac{4}{3}", "math", False, False),  # inverted
    # units
    ("unit-text", T + r"\boxed{18 \text{ dollars}}", "18", "math", True, True),  # a unit is not part of the value
    ("unit-bare-word", T + r"\boxed{18 dollars}", "18", "math", True, False),  # same answer, unit as a bare word
    ("unit-anchored", T + "The answer is 18 dollars.", "18", "math", True, True),  # unit after "answer is"
    ("unit-squared", T + r"\boxed{5\text{ cm}^2}", "5", "math", True, True),  # unit with an exponent
    ("unit-integer-text", T + r"\boxed{33 \text{ ways}}", "33", "integer", True, True),  # AIME answer with a unit
    ("unit-integer-words", T + r"\boxed{33 ways}", "33", "integer", True, True),  # bare-word unit in integer mode
    ("unit-mathrm", T + r"\boxed{12\mathrm{cm}}", "12", "integer", True, True),  # \mathrm unit
    ("unit-dollar-sign", T + r"\boxed{\$18}", "18", "math", True, True),  # currency sign
    ("unit-wrong-value", T + r"\boxed{19 \text{ dollars}}", "18", "math", False, False),  # the unit hides nothing
    # degrees
    ("deg-integer", T + r"\boxed{33^\circ}", "33", "integer", True, True),  # AIME angle with a degree sign
    ("deg-braces", T + r"\boxed{60^{\circ}}", "60", "math", True, True),  # braced degree sign
    ("deg-unicode", T + r"\boxed{45°}", "45", "integer", True, False),  # the ° character is a degree sign too
    ("deg-vs-radians", T + r"\boxed{60^\circ}", r"\frac{\pi}{3}", "math", False, False),  # no unit conversion
    # percents
    ("pct-decimal", T + r"\boxed{50\%}", "0.5", "math", True, True),  # 50% = 0.5
    ("pct-number", T + r"\boxed{50\%}", "50", "math", True, True),  # gold written without the sign
    ("pct-integer", T + r"\boxed{25\%}", "25", "integer", True, True),  # integer mode ignores the sign
    ("pct-word", T + "The answer is 30 percent.", "30", "math", True, True),  # "percent" as a word
    ("pct-wrong", T + r"\boxed{40\%}", "0.5", "math", False, False),  # 0.4 is not 0.5
    # intervals
    ("interval-same", T + r"\boxed{(0, 1]}", "(0,1]", "math", True, True),  # spacing only
    ("interval-closed", T + r"\boxed{[0, 1]}", "(0,1]", "math", False, False),  # other endpoint
    ("interval-infinity", T + r"\boxed{[2,\infty)}", r"[2, \infty)", "math", True, True),  # unbounded
    ("interval-membership", T + r"\boxed{x \in (1,2)}", "(1,2)", "math", True, True),  # x \in I names I
    ("interval-union", T + r"\boxed{(-\infty,0)\cup(1,\infty)}", r"(-\infty, 0) \cup (1, \infty)", "math",
     True, True),  # same union
    # sets and tuples
    ("set-order", T + r"\boxed{\{3,2,1\}}", r"\{1,2,3\}", "math", True, True),  # sets are unordered
    ("set-missing", T + r"\boxed{\{1,2\}}", r"\{1,2,3\}", "math", False, False),  # an element short
    ("tuple-same", T + r"\boxed{(1, 2, 3)}", "(1,2,3)", "math", True, True),  # spacing only
    ("tuple-order", T + r"\boxed{(3,2,1)}", "(1,2,3)", "math", False, False),  # tuples are ordered
    ("list-unordered", T + r"\boxed{3, 2}", "2,3", "math", True, True),  # a list of solutions
    ("list-not-number", T + r"\boxed{1,2}", "12", "math", False, False),  # 1,2 is a list, not 12
    # multiple boxes
    ("boxes-last", T + r"First \boxed{4}, but after checking, the answer is \boxed{5}", "5", "math", True, False),
    # ^ the paper's convention: the last box is the answer (math-verify joins the two into {4, 5})
    ("boxes-last-wrong", T + r"\boxed{5} Wait, that is wrong; it is \boxed{4}", "5", "math", False, False),  # last
    ("boxes-two-parts", T + r"$x = \boxed{1}$ and $x = \boxed{2}$", "1,2", "math", False, True),
    # ^ last box only: 2 is not the set {1, 2}; box the whole answer once
    ("boxes-empty-then-anchor", T + r"\boxed{} so the answer is 18.", "18", "math", True, True),  # empty box skipped
    ("boxes-empty-last", T + r"\boxed{7} and then \boxed{}", "7", "math", True, False),  # an empty box is no answer
    ("box-fbox", T + r"\fbox{7}", "7", "math", True, False),  # \fbox is a box
    ("box-nested", T + r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", "math", True, True),  # nested braces
    ("box-unclosed", T + r"So the answer is \boxed{5", "5", "math", False, False),
    # ^ a box cut off before its brace closes is a truncated answer, not an answer
    # think placement and truncation
    ("think-inside-only", r"<think>so \boxed{5}</think> I am not sure.", "5", "math", False, True),
    # ^ only the text after </think> counts (the paper's format); the box is in the thinking
    ("think-inside-then-other", r"<think>\boxed{5}</think>\boxed{6}", "5", "math", False, False),  # answer is 6
    ("think-after", r"<think>try 4</think>So \boxed{5}", "5", "math", True, True),  # answer after the thinking
    ("think-open-in-prompt", r"reasoning</think>\boxed{5}", "5", "math", True, True),  # template opened <think>
    ("think-truncated", r"<think>long thought \boxed{5} and then the budget ran", "5", "math", False, True),
    # ^ no </think>: cut at the token limit, there is no answer yet
    ("truncated-solution", T + "Let me compute the", "5", "math", False, False),  # no answer at all
    ("no-think-box", r"\boxed{5}", "5", "math", True, True),  # no think block: all of it is the answer
    # bold
    ("bold-answer", T + "**Answer: 18**", "18", "math", True, True),  # markdown bold around the anchor
    ("bold-value", T + "The final answer is **18**.", "18", "math", True, True),  # bold value
    ("bold-choice", T + "**Answer: C**", "C", "choice", True, False),  # bold in choice mode
    ("bold-in-box", T + r"\boxed{**18**}", "18", "math", True, False),  # bold inside a box
    ("python-power", T + r"\boxed{2**10}", "1024", "math", False, False),  # Python syntax is not LaTeX: unread
    ("python-power-not-bold", T + r"\boxed{2**10}", "210", "math", False, False),  # ** there is not bold: not 210
    # thousands separators
    ("sep-thin-space", T + r"\boxed{1\,000}", "1000", "math", True, False),  # \, is a thousands separator
    ("sep-backslash-space", T + r"\boxed{1\ 000}", "1000", "math", True, False),  # so is "\ "
    ("sep-brace-comma", T + r"\boxed{1{,}000}", "1000", "math", True, True),  # {,} is a comma
    ("sep-commas", T + r"\boxed{1,000,000}", "1000000", "math", True, True),  # comma groups
    ("sep-integer", T + r"\boxed{10\,080}", "10080", "integer", True, False),  # integer mode too
    ("sep-unicode-thin", T + "\\boxed{1\u2009000}", "1000", "math", True, False),  # U+2009 thin space
    # letters (choice)
    ("choice-box", T + r"\boxed{B}", "B", "choice", True, True),  # the letter
    ("choice-paren", T + "(B)", "B", "choice", True, False),  # a lone "(B)" line
    ("choice-anchor", T + "The answer is B.", "B", "choice", True, False),  # "answer is B"
    ("choice-textbf", T + r"\boxed{\textbf{(C)}}", "C", "choice", True, True),  # wrapped letter
    ("choice-with-text", T + r"\boxed{(B) 42 m/s}", "B", "choice", True, False),  # letter then its option text
    ("choice-wrong", T + r"\boxed{A}", "B", "choice", False, False),  # other letter
    # hedges
    ("hedge-or", T + r"\boxed{A or B}", "A", "choice", False, False),  # two letters: no commitment
    ("hedge-comma", T + r"\boxed{A, B}", "A", "choice", False, False),  # two letters
    ("hedge-and", T + "The answer is (A) and (C).", "A", "choice", False, False),  # two letters
    ("hedge-slash", T + r"\boxed{A/B}", "B", "choice", False, False),  # two letters
    ("hedge-math", T + r"\boxed{5 \text{ or } 6}", "5", "math", False, False),  # two values
    ("hedge-integer", T + r"\boxed{33 or 34}", "33", "integer", False, False),  # two values
    # long answers
    ("long-correct", T + f"\\boxed{{{LONG_POLY_REVERSED}}}", LONG_POLY, "math", True, True),  # 330 chars, checked
    ("long-prose", T + PROSE, "5", "math", False, False),  # 2,000 characters of prose, no answer
    ("long-over-limit", T + f"\\boxed{{{ONES}}}", "600", "math", False, True),
    # ^ 1,199 characters is past MAX_ANSWER_CHARS (1,000): never handed to sympy, scored wrong
    # echoed questions and the unboxed fallback
    ("echo-question", "What is $51\\times 35$?", "1785", "math", False, True),  # the prompt repeated
    ("echo-after-think", T + "What is $51\\times 35$?", "1785", "math", False, True),  # same, after thinking
    ("echo-imperative", T + "Compute $51 \\times 35$.", "1785", "integer", False, True),  # an operand is no answer
    ("echo-with-equation", T + "If $2x = 10$, what is $x$?", "5", "math", False, False),  # a question
    ("unboxed-expression", T + "We need $6 \\times 7$", "42", "math", False, True),  # unevaluated product
    ("final-number", T + "So there are 42 ways in total.", "42", "math", True, True),  # a final number
    ("final-equals", T + r"Therefore $x = \frac{3}{4}$.", "0.75", "math", True, True),  # a final "= value"
    ("final-number-wrong", T + "So there are 41 ways in total.", "42", "math", False, False),  # wrong number
    ("bare-number", "42", "42", "math", True, True),  # a bare number is a final number
    # equations
    ("eq-integer", T + r"\boxed{m+n=33}", "33", "integer", True, True),  # name = value
    ("eq-math", T + r"\boxed{x = 3}", "3", "math", True, True),  # math-verify reads assignments
    ("eq-chain", T + r"\boxed{m+n = 15+18 = 33}", "33", "integer", True, True),  # the last value of a chain
    ("eq-wrong", T + r"\boxed{x=4}", "x=3", "math", False, False),  # other value
    ("eq-both-sides", T + r"\boxed{y = 2x + 1}", "y=1+2x", "math", True, True),  # same line
    # powers
    ("power-integer", T + r"\boxed{10^3}", "1000", "integer", True, True),  # evaluated power
    ("power-math", T + r"\boxed{2^{10}}", "1024", "math", True, True),  # evaluated power
    ("power-wrong", T + r"\boxed{2^{11}}", "1024", "integer", False, False),  # 2048
    ("power-tower", T + r"\boxed{10^{10^{10}}}", "5", "math", False, False),  # guarded, never evaluated
    # integer mode
    ("int-leading-zero", T + r"\boxed{033}", "33", "integer", True, True),  # AIME pads to three digits
    ("int-decimal", T + r"\boxed{33.5}", "33", "integer", False, False),  # not an integer
    ("int-point-zero", T + r"\boxed{33.0}", "33", "integer", True, True),  # the integer 33
    ("int-fraction", T + r"\boxed{\frac{66}{2}}", "33", "integer", True, True),  # an expression equal to 33
    # anchors
    ("anchor-clause", T + "The answer is 18, which is what John spent.", "18", "math", True, True),  # clause cut
    ("anchor-math-span", T + r"The final answer is $\frac{3}{4}$. I hope it is correct.", "0.75", "math",
     True, True),  # the math span after the anchor
    ("anchor-last", T + "Answer: 3. Wait, no.\nAnswer: 4", "4", "math", True, True),  # the last anchor counts
    # exact
    ("exact-same", T + r"\boxed{yes}", "yes", "exact", True, True),  # the same string
    ("exact-case", T + r"\boxed{Yes}", "yes", "exact", False, True),  # exact mode is case-sensitive by contract
]

IDS = [case[0] for case in CASES]


@pytest.fixture(scope="module", autouse=True)
def warm_pool() -> None:
    get_pool().warm_up(2)
    logging.getLogger("math_verify").setLevel(logging.ERROR)


@pytest.mark.parametrize("case_id,completion,gold,mode,ours,_mv", CASES, ids=IDS)
def test_thinktune_verdict(case_id: str, completion: str, gold: str, mode: str, ours: bool, _mv: bool) -> None:
    assert is_correct(completion, gold, mode) is ours


@pytest.mark.parametrize("case_id,completion,gold,mode,_ours,mv", CASES, ids=IDS)
def test_math_verify_column(case_id: str, completion: str, gold: str, mode: str, _ours: bool, mv: bool) -> None:
    assert verify(parse(f"${gold}$"), parse(completion)) is mv


def test_table_is_large_and_covers_every_mode() -> None:
    assert len(CASES) >= 80 and len(set(IDS)) == len(IDS)
    modes = {case[3] for case in CASES}
    assert modes == {"math", "integer", "choice", "exact"}
    assert sum(case[4] for case in CASES) >= 30 <= sum(not case[4] for case in CASES)


def _documented_ids() -> set[str]:
    """Case ids in the first column of docs/grading.md's disagreement table."""
    text = GRADING_DOC.read_text()
    section = text.split("## Where thinktune and math-verify disagree", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE))


def test_disagreements_are_documented() -> None:
    disagreeing = {case[0] for case in CASES if case[4] != case[5]}
    assert disagreeing == _documented_ids()
