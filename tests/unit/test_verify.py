"""Table-driven tests for the answer checker, including adversarial predictions and threads.

The math-verify worker pool is started once per module (``warm_pool``), so no single test pays for it;
``test_rewards_pool.py`` covers the hard time limit itself.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from math_verify import parse, verify

from thinktune.errors import DataError
from thinktune.rewards import verify as verify_module
from thinktune.rewards.pool import get_pool, threaded_map
from thinktune.rewards.verify import (
    MODES,
    Verdict,
    answer_classes,
    check_answer,
    extract_answer,
    has_valid_think,
    is_correct,
    is_correct_batch,
    is_correct_groups,
    normalize_answer,
    reset_verify_stats,
    same_answer,
    split_think,
    verify_stats,
)


@pytest.fixture(scope="module", autouse=True)
def warm_pool() -> None:
    get_pool().warm_up(2)

SPLIT_CASES = [
    ("<think>r</think>s", ("r", "s")),
    ("  \n<think>r</think>\ns", ("r", "\ns")),
    ("plain answer", (None, "plain answer")),
    ("<think>still going", ("still going", "")),
    ("r</think>s", ("r", "s")),  # template opened the block in the prompt
    ("<think>a</think>b</think>c", ("a</think>b", "c")),  # split at the last close tag
]


@pytest.mark.parametrize("text,expected", SPLIT_CASES)
def test_split_think(text: str, expected: tuple[str | None, str]) -> None:
    assert split_think(text) == expected


VALID_THINK_CASES = [
    ("<think>r</think>s", True),
    ("\n <think>r</think>s", True),
    ("<think>r</think>", True),
    ("x<think>r</think>s", False),  # text before the open tag
    ("<think>r", False),  # never closes
    ("<think><think>r</think>s", False),
    ("<think>r</think>s</think>", False),
    ("<think>r</think>s<think>", False),
    ("</think><think>r", False),
    ("plain", False),
]


@pytest.mark.parametrize("text,expected", VALID_THINK_CASES)
def test_has_valid_think(text: str, expected: bool) -> None:
    assert has_valid_think(text) is expected


EXTRACT_CASES = [
    ("So \\boxed{5}.", "5"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\fbox{7}", "7"),
    ("$\\boxed{x^{2}}$", "x^{2}"),
    ("\\boxed 9", "9"),
    ("The final answer is $42$. I hope it is correct.", "42"),
    ("Answer: 3.5", "3.5"),
    ("so the answer is (B).", "(B)"),
    ("42", "42"),
    ("<think>\\boxed{1}</think> The answer: 2", "2"),
    ("<think>\\boxed{1}</think> no idea, long prose that is clearly not an answer at all here", None),
    ("<think>\\boxed{1}", None),
    ("\\boxed{unclosed", None),
    ("", None),
    # echoed questions and unevaluated expressions are never answers without a box or an anchor
    ("What is $51\\times 35$?", None),
    ("Compute $51 \\times 35$.", None),
    ("We need 6 times 7", None),
    ("So there are 42 ways.", "42"),  # a final number that is not an operand
    ("Therefore,\n$$\nx = 5\n$$", "5"),  # a final "= value" in display math
    ("**Answer: 18**", "18"),  # markdown bold
    ("\\boxed{**18**}", "18"),
    ("\\boxed{2**10}", "2**10"),  # ** between operands is a power, not bold
    ("\\boxed{} so the answer is 18.", "18"),  # an empty box hides nothing
    ("\\boxed{7} and \\boxed{ }", "7"),
    ("The answer is 18 dollars, which John spent.", "18 dollars"),  # the value, not the sentence
    ("The answer is 3, no, the answer is 4.", "4"),  # the last anchor on a line
    ("the answer is $5$ apples", "5"),  # the math span after the anchor
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


NORMALIZE_CASES = [
    ("1\\,000", "math", "1000"), ("1\\ 000", "math", "1000"), ("$\\$18$", "math", "18"),
    ("33^\\circ", "integer", "33"), ("60^{\\circ}", "math", "60"), ("45°", "math", "45"),
    ("18 dollars", "math", "18"), ("5\\text{ cm}^2", "math", "5"), ("\\frac{1}{2} cup", "math", "\\frac{1}{2}"),
    ("m+n=33", "integer", "33"), ("m+n = 15+18 = 33", "integer", "33"), ("x=3", "math", "x=3"),
    ("50\\%", "math", "50\\%"), ("50\\%", "integer", "50"),
    ("5 or 6", "math", "5 or 6"), ("5 \\text{ or } 6", "math", "5 \\text{ or } 6"),  # hedges stay visible
    ("x^2 + 1", "math", "x^2 + 1"), (" Yes ", "exact", "Yes"),
]


@pytest.mark.parametrize("answer,mode,expected", NORMALIZE_CASES)
def test_normalize_answer(answer: str, mode: str, expected: str) -> None:
    assert normalize_answer(answer, mode) == expected


SAME_ANSWER_CASES = [
    ("\\frac{1}{2}", "0.5", "math", True), ("1/2", "\\dfrac{1}{2}", "math", True), ("1{,}000", "1000.0", "math", True),
    ("x+1", "1+x", "math", True), ("3", "4", "math", False), ("\\frac{1}{2}", "\\frac{1}{3}", "math", False),
    ("(B)", "\\textbf{B}", "choice", True), ("A or B", "A", "choice", False), ("A", "B", "choice", False),
    ("33^\\circ", "033", "integer", True), ("10^3", "1000", "integer", True), ("33", "34", "integer", False),
    ("yes", "Yes", "exact", False),
    ("10^{10^{10}}", "10^{10^{10}}", "math", True),  # equal strings need no check
    ("10^{10^{10}}", "5", "math", False),  # a guarded side is never the same as anything else
]


@pytest.mark.parametrize("a,b,mode,expected", SAME_ANSWER_CASES)
def test_same_answer(a: str, b: str, mode: str, expected: bool) -> None:
    assert same_answer(a, b, mode) is expected
    assert same_answer(b, a, mode) is expected


def test_answer_classes_merge_equivalent_forms_in_first_seen_order() -> None:
    answers = ["3", None, "\\frac{1}{2}", "0.5", "3", "1/2", "x", "3.0"]
    assert answer_classes(answers) == [0, None, 1, 1, 0, 1, 4, 0]  # ids: first group of each class
    assert answer_classes(["(B)", "A", "B", "A or B"], "choice") == [0, 1, 0, 2]
    with ThreadPoolExecutor(max_workers=4) as pool:  # safe from threads, same classes
        assert all(f.result(timeout=30) == [0, None, 1, 1, 0, 1, 4, 0]
                   for f in [pool.submit(answer_classes, answers) for _ in range(4)])


CORRECT_CASES = [
    # think handling
    ("<think>the answer is \\boxed{5}</think> I am not sure.", "5", "math", False),
    ("<think>try 4</think>So \\boxed{5}", "5", "math", True),
    ("<think>long thought \\boxed{5} and then the budget ran out", "5", "math", False),
    ("\\boxed{5}", "5", "math", True),  # no think block: whole text is the answer
    # math equivalence
    ("\\boxed{\\frac{1}{2}}", "0.5", "math", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", "math", True),
    ("\\boxed{1/2}", "\\frac12", "math", True),
    ("\\boxed{\\frac{1}{3}}", "0.5", "math", False),
    ("\\boxed{1,234}", "1234", "math", True),
    ("\\boxed{\\$1,234}", "1234", "math", True),
    ("\\boxed{12.50}", "12.5", "math", True),
    ("\\boxed{-3}", "3", "math", False),
    ("\\boxed{\\{3,2,1\\}}", "\\{1,2,3\\}", "math", True),
    ("\\boxed{(0, 1]}", "(0,1]", "math", True),
    ("\\boxed{[0, 1]}", "(0,1]", "math", False),
    ("\\boxed{50\\%}", "0.5", "math", True),
    ("\\boxed{50\\%}", "50", "math", True),
    ("\\boxed{1+x^2}", "x^2+1", "math", True),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2", "math", True),
    ("\\boxed{x = 3}", "3", "math", True),
    ("\\boxed{2^{2024}}", "2^{2024}", "math", True),
    # towers with a symbol in the inner power stay symbolic: checked, not guarded
    ("\\boxed{2^{2^{n}}+1}", "2^{2^n}+1", "math", True),
    ("\\boxed{2^{2^{n}}}", "2^{2n}", "math", False),
    ("\\boxed{e^{-x^{2}}}", "e^{-x^2}", "math", True),
    ("The final answer is $\\frac{3}{4}$.", "0.75", "math", True),
    # integer (AIME)
    ("\\boxed{033}", "33", "integer", True),
    ("\\boxed{33}", "033", "integer", True),
    ("\\boxed{34}", "33", "integer", False),
    ("\\boxed{33.5}", "33", "integer", False),
    ("\\boxed{x}", "33", "integer", False),
    ("no answer here at all, just a long rambling paragraph of prose", "33", "integer", False),
    # choice (GPQA)
    ("\\boxed{B}", "B", "choice", True),
    ("(B)", "B", "choice", True),
    ("B", "B", "choice", True),
    ("The answer is B.", "B", "choice", True),
    ("\\boxed{\\text{(C)}}", "C", "choice", True),
    ("\\boxed{A}", "B", "choice", False),
    ("Because it is hot, the answer is: D", "D", "choice", True),
    # exact
    ("\\boxed{yes}", "yes", "exact", True),
    ("\\boxed{Yes}", "yes", "exact", False),
]


@pytest.mark.parametrize("completion,answer,mode,expected", CORRECT_CASES)
def test_is_correct(completion: str, answer: str, mode: str, expected: bool) -> None:
    assert is_correct(completion, answer, mode) is expected


ADVERSARIAL = [
    "\\boxed{" + "1" * 100_000 + "}",
    "\\boxed{" + "x+" * 50_000 + "1}",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "\\boxed{" + "\\frac{" * 30 + "1" + "}{2}" * 30 + "}",
    "\\boxed{{{1}",
    "\\boxed{1}}}} and }{",
    "\\boxed{\x00\xff\x00\xfe}",
    "\x00\xff" * 1000,
    "\\boxed{10^{10^{10}}}",
    "\\boxed{9**999999}",
    "\\boxed{9**9**9**9}",
    "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "\\boxed{2^{2^{100}}}",
    "\\boxed{2**(3**99)}",
    "\\boxed{2^{x+10^{10}}}",
    "\\boxed{(10^9)!}",
    "\\boxed{1000000000!}",
    "\\boxed{\\binom{10^{9}}{500000}}",
    "\\boxed{\\sum_{k=1}^{10^{9}} k}",
    "\\boxed{1e999999999}",
    "\\boxed{" + "\\sqrt{" * 200 + "2" + "}" * 200 + "}",
]


@pytest.mark.parametrize("completion", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_predictions_are_incorrect_and_fast(completion: str) -> None:
    start = time.perf_counter()
    assert is_correct(completion, "5", "math") is False
    assert is_correct(completion, "5", "integer") is False
    assert is_correct(completion, "B", "choice") is False
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("pred,guarded", [
    ("10^{10^{10}}", True), ("9**9**9", True), ("2^{ 10 ^ 10 }", True), ("2^{-10^{10}}", True),
    ("2^{2^n}", False), ("2^{2^{n}}", False), ("x^{y^2}", False), ("e^{-x^{2}}", False),
    ("2^{x_2^3}", False),  # the 2 before ^3 is a subscript, not a base
    ("2^n + 3^4", False),  # two powers side by side, neither in the other's exponent
    # binomials and Gamma of huge numbers; symbolic sums and products pass, whichever bound comes first
    ("\\binom{10^{9}}{5}", True), ("\\dbinom{99999}{2}", True), ("\\Gamma(10^{9})", True), ("\\binom{5}{2}", False),
    ("\\sum_{k=1}^{n} k^2", False), ("\\sum^{n}_{k=1} k", False), ("\\prod_{k=1}^{n} k", False),
    ("\\sum_{k=1}^{10^{9}} k", True), ("\\prod_{k=1}^{123456} k", True),  # caught by the tower and digit rules
])
def test_guard_rejects_numeric_towers_only(pred: str, guarded: bool) -> None:
    assert (verify_module._guard_reason(pred) == "huge power or factorial") is guarded


def test_guarded_checks_are_counted() -> None:
    reset_verify_stats()
    is_correct("\\boxed{10^{10^{10}}}", "5")
    is_correct("\\boxed{12}", "12")
    stats = verify_stats()
    assert stats["guarded"] == 1 and stats["fast_path"] == 1 and stats["checks"] == 2


def test_math_verify_exception_counts_as_errored_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(gold: str, pred: str) -> bool:
        raise RecursionError("sympy blew up")

    monkeypatch.setattr(verify_module, "math_verify_equal", boom)
    verify_module._math_verify_outcome.cache_clear()
    reset_verify_stats()
    assert check_answer("\\boxed{x+1}", "x+1", timeout_s=0) == Verdict(False, "x+1", "errored")
    assert verify_stats()["errored"] == 1
    verify_module._math_verify_outcome.cache_clear()


def test_in_process_mode_agrees_with_workers() -> None:
    for gold, pred in (("x^2+1", "1+x^2"), ("(0,1]", "[0,1]"), ("\\frac{1}{2}", "0.5")):
        completion = f"\\boxed{{{pred}}}"
        assert is_correct(completion, gold, timeout_s=0) == is_correct(completion, gold)


def test_check_answer_reports_answer_and_failure() -> None:
    assert check_answer("<think>x</think>\\boxed{7}", "7") == Verdict(True, "7", None)
    assert check_answer("no answer, just a long paragraph of prose with no final line", "7") == Verdict(False, None)
    assert check_answer("\\boxed{10^{10^{10}}}", "5").failure == "guarded"
    assert check_answer("\\boxed{B}", "B", "choice") == Verdict(True, "B", None)


def test_repeated_answers_are_cached() -> None:
    verify_module._math_verify_outcome.cache_clear()
    for _ in range(5):
        assert is_correct("\\boxed{\\frac{2}{4}}", "1/2")
    info = verify_module._math_verify_outcome.cache_info()
    assert (info.misses, info.hits) == (1, 4)


# (gold, prediction, mathematically equivalent): hand-written; the checker and math-verify called directly
# must both give the label. Two labels record math-verify's own limits (it does not simplify e^{i pi} or
# sqrt(-1)); the checker follows math-verify there, as it should.
AGREEMENT_CASES = [
    ("\\frac{1}{2}", "0.5", True), ("0.5", "\\frac{1}{2}", True), ("\\frac{1}{2}", "1/2", True),
    ("\\frac12", "\\dfrac{1}{2}", True), ("\\tfrac{5}{6}", "5/6", True), ("2", "2.0", True), ("-3", "-3", True),
    ("12", "12.00", True), ("1000", "1,000", True), ("\\frac{3}{4}", "0.75", True), ("1.5", "\\frac{3}{2}", True),
    ("\\frac{7}{2}", "3.5", True), ("3.5", "7/2", True), ("0.1", "\\frac{1}{10}", True),
    ("-\\frac{1}{3}", "\\frac{-1}{3}", True), ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True), ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("x^2+1", "1+x^2", True), ("2x+3", "3+2x", True), ("(x+1)^2", "x^2+2x+1", True), ("x^2", "x\\cdot x", True),
    ("\\sqrt{x^2}", "|x|", True), ("\\frac{a}{b}", "a/b", True), ("a+b", "b+a", True), ("\\pi", "\\pi", True),
    ("2\\pi", "\\pi \\cdot 2", True), ("\\frac{\\pi}{4}", "\\pi/4", True), ("\\infty", "\\infty", True),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True), ("(0,1]", "(0, 1]", True), ("[2, \\infty)", "[2,\\infty)", True),
    ("x \\in [1,2]", "[1,2]", True), ("(1,2)", "(1, 2)", True), ("1,2,3", "1,2,3", True), ("2,3", "3,2", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("x=3", "3", True), ("3", "x=3", True), ("y = 2x + 1", "y=1+2x", True), ("50\\%", "0.5", True),
    ("0.5", "50\\%", True), ("100\\%", "1", True), ("45^\\circ", "45", True), ("\\log_2 8", "3", True),
    ("10", "\\binom{5}{2}", True), ("2^{10}", "1024", True), ("1024", "2^{10}", True),
    ("e^{i\\pi}", "-1", False), ("i", "\\sqrt{-1}", False),  # equal in math; math-verify says no
    ("\\frac{1}{3}", "0.5", False), ("2", "3", False), ("-3", "3", False), ("12", "1.2", False),
    ("1000", "100", False), ("0.5", "5", False), ("1/3", "0.33", False), ("\\frac{1}{9}", "0.111", False),
    ("\\frac{3}{4}", "\\frac{4}{3}", False), ("\\sqrt{2}", "2", False), ("\\pi", "3.14", False),
    ("e", "2.718", False), ("x^2+1", "x^2-1", False), ("2x+3", "2x+4", False), ("a+b", "a-b", False),
    ("\\{1,2\\}", "\\{1,2,3\\}", False), ("[0,1]", "(0,1]", False), ("(1,2)", "(2,1)", False),
    ("x=3", "x=4", False), ("1024", "2^{11}", False), ("10", "\\binom{5}{1}", False),
]


@pytest.mark.parametrize("gold,pred,label", AGREEMENT_CASES)
def test_agrees_with_math_verify_directly(gold: str, pred: str, label: bool) -> None:
    completion = f"<think>Let me check.</think>The answer is $\\boxed{{{pred}}}$."
    direct = verify(parse(f"${gold}$"), parse(completion))  # math-verify's documented use, main thread
    assert direct is label
    assert is_correct(completion, gold) is label


def test_agreement_table_is_large_enough() -> None:
    assert len(AGREEMENT_CASES) >= 50
    assert sum(label for *_, label in AGREEMENT_CASES) >= 20 <= sum(not label for *_, label in AGREEMENT_CASES)


def test_adversarial_predictions_finish_from_a_worker_thread() -> None:
    reset_verify_stats()
    elapsed: list[float] = []
    verdicts: list[Verdict] = []

    def run() -> None:
        for completion in ADVERSARIAL:
            start = time.perf_counter()
            verdicts.append(check_answer(completion, "5"))
            elapsed.append(time.perf_counter() - start)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert len(elapsed) == len(ADVERSARIAL) and max(elapsed) < 2.0  # seconds; unguarded, these run for minutes
    assert not any(v.correct for v in verdicts)
    failures = [v.failure for v in verdicts if v.failure]
    assert len(failures) >= 10 and verify_stats()["guarded"] == failures.count("guarded")


def _mixed_checks() -> list[bool]:
    return [
        is_correct("<think>hm</think>\\boxed{\\frac{1}{2}}", "0.5"),
        is_correct("\\boxed{(0,1]}", "(0, 1]"),
        is_correct("\\boxed{x^2+1}", "1+x^2"),
        is_correct("\\boxed{3}", "4"),
    ]


def test_works_in_a_thread() -> None:
    results: list[list[bool]] = []
    thread = threading.Thread(target=lambda: results.append(_mixed_checks()))
    thread.start()
    thread.join(timeout=30)
    assert results == [[True, True, True, False]]


def test_works_in_a_thread_pool() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_mixed_checks) for _ in range(8)]
        assert all(f.result(timeout=30) == [True, True, True, False] for f in futures)


def test_integer_fast_path_is_fast() -> None:
    completions = [f"<think>work</think>The answer is \\boxed{{{i}}}." for i in range(2000)]
    start = time.perf_counter()
    results = is_correct_batch(completions, [str(i) for i in range(2000)])
    per_check = (time.perf_counter() - start) / len(completions)
    assert all(results)
    assert per_check < 1e-3


def test_batch_modes_and_length_check() -> None:
    assert is_correct_batch(["\\boxed{B}", "\\boxed{7}"], ["B", "7"], ["choice", "integer"]) == [True, True]
    with pytest.raises(ValueError, match="one answer"):
        is_correct_batch(["a", "b"], ["a"])


def test_batch_in_threads_matches_one_at_a_time() -> None:
    # math-verify cases (they go through the worker processes) mixed with fast-path and other modes
    completions = ["\\boxed{\\frac{1}{2}}", "\\boxed{0.25}", "\\boxed{x^2+1}", "\\boxed{12}", "\\boxed{B}", "no answer"] * 3
    answers = ["0.5", "1/2", "1+x^2", "12", "B", "3"] * 3
    modes = ["math", "math", "math", "integer", "choice", "math"] * 3
    expected = [is_correct(c, a, m) for c, a, m in zip(completions, answers, modes, strict=True)]
    assert expected == [True, False, True, True, True, False] * 3
    assert is_correct_batch(completions, answers, modes, threads=4) == expected
    assert is_correct_batch(completions, answers, modes, threads=1) == expected


def test_batch_sends_only_distinct_math_verify_checks_to_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []

    def record(fn, n, threads):
        sent.append(n)
        return [fn(i) for i in range(n)]

    monkeypatch.setattr(verify_module, "threaded_map", record)
    verify_module._math_verify_outcome.cache_clear()
    # 2 distinct math-verify pairs (one repeated), plus fast-path numbers, a guarded tower and a choice
    completions = ["\\boxed{\\frac{1}{2}}", "\\boxed{\\frac{1}{2}}", "\\boxed{x+1}", "\\boxed{7}", "\\boxed{10^{10^{10}}}",
                   "\\boxed{B}"]
    answers = ["0.5", "0.5", "1+x", "7", "5", "B"]
    modes = ["math"] * 5 + ["choice"]
    assert is_correct_batch(completions, answers, modes, threads=4) == [True, True, True, True, False, True]
    assert sent == [2]
    assert is_correct_batch(["\\boxed{1}", "\\boxed{2}"], ["1", "3"], threads=4) == [True, False]
    assert sent == [2]  # numbers alone: nothing for the threads


def test_groups_keep_their_shape_and_order() -> None:
    groups = [["\\boxed{1}", "\\boxed{2}"], [], ["\\boxed{\\frac{2}{4}}", "\\boxed{0.5}", "\\boxed{C}"], ["\\boxed{A}"]]
    answers, modes = ["2", "7", "1/2", "A"], ["math", "integer", "math", "choice"]
    assert is_correct_groups(groups, answers, modes) == [[False, True], [], [True, True, False], [True]]
    with pytest.raises(ValueError, match="2 groups, 1 answers"):
        is_correct_groups([["a"], ["b"]], ["a"], ["math", "math"])


def test_batch_raises_a_bad_gold_from_its_threads() -> None:
    with pytest.raises(DataError, match="not an integer"):
        is_correct_batch(["\\boxed{1}"] * 4, ["1", "1", "x+1", "1"], "integer", threads=4)


def test_threaded_map_runs_calls_at_once() -> None:
    # Each call waits until 3 calls have arrived: this finishes only if 3 run at the same time.
    barrier = threading.Barrier(3, timeout=10)
    assert threaded_map(lambda i: (barrier.wait(), i * i)[1], 6, threads=3) == [0, 1, 4, 9, 16, 25]
    assert threaded_map(lambda i: i + 1, 3, threads=1) == [1, 2, 3]


def test_unknown_mode_names_valid_modes() -> None:
    with pytest.raises(ValueError, match=", ".join(MODES)):
        is_correct("\\boxed{1}", "1", mode="fuzzy")


@pytest.mark.parametrize("mode,gold", [("integer", "x+1"), ("choice", "E")])
def test_bad_gold_is_a_data_error(mode: str, gold: str) -> None:
    with pytest.raises(DataError):
        is_correct("\\boxed{1}", gold, mode)
