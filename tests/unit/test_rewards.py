"""The Phi-4 rewards, checked against their formula (docs/recipe.md 2.2, ``rewards/phi4.py`` docstring).

Hand-worked values with the paper's constants (L_max 31,744, L_pos 25,600, L_neg 3,702):
    correct:   L <= 25,600 -> 1.0;  L = 28,672 (cosine midpoint) -> 0.75;  L >= 31,744 -> 0.5
    incorrect: L = 0 -> -1.0;  L = 1,851 (midpoint) -> -0.75;  L >= 3,702 -> -0.5
    final reward without repetition = 8/13 of those.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import textwrap
import time
from pathlib import Path

import pytest

from thinktune.config import load_config
from thinktune.errors import ConfigError, DataError
from thinktune.rewards import (
    REWARDS,
    RewardConfig,
    RewardResult,
    StreamingScorer,
    check_reward,
    length_reward,
    load_reward_fn,
    phi4_reward,
    repetition_penalty,
    scale_to_context,
    score,
    score_batch,
)

CFG = RewardConfig()
GOOD = "<think>Add the numbers: 4+4=8.</think> The answer is \\boxed{8}."  # no 5-gram repeats
W_ACC, W_REP = 8 / 13, 1 / 13


@pytest.mark.parametrize("correct,length,expected", [
    (True, 0, 1.0), (True, 12_000, 1.0), (True, 25_600, 1.0), (True, 28_672, 0.75), (True, 31_744, 0.5),
    (True, 40_000, 0.5),  # beyond L_max: clamped, never wrapped around the cosine
    (False, 0, -1.0), (False, 1_851, -0.75), (False, 3_702, -0.5), (False, 20_000, -0.5), (False, 31_744, -0.5),
])
def test_length_reward_at_control_points_and_midpoints(correct: bool, length: int, expected: float) -> None:
    assert length_reward(correct, length, CFG) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("correct,length,expected", [
    (True, 100, 1.0), (True, 28_672, 0.75), (True, 31_744, 0.5), (False, 0, -1.0), (False, 1_851, -0.75),
    (False, 3_702, -0.5),
])
def test_final_reward_is_eight_thirteenths_of_r_acc(correct: bool, length: int, expected: float) -> None:
    result = score(GOOD, "8" if correct else "9", length, True, CFG)
    assert result.reward == pytest.approx(W_ACC * expected, abs=1e-12)
    assert result.components["r_acc"] == pytest.approx(expected, abs=1e-12)
    assert result.correct is correct and result.components["accuracy"] == float(correct)
    assert result.components["repetition"] == 0.0


def test_quarter_points_follow_the_cosine() -> None:
    # rho = 1/4: the value is end + (start - end) * (1 + cos(pi/4)) / 2
    quarter = (1 + math.cos(math.pi / 4)) / 2
    assert length_reward(True, 25_600 + 1_536, CFG) == pytest.approx(0.5 + 0.5 * quarter)
    assert length_reward(False, 3_702 / 4, CFG) == pytest.approx(-0.5 - 0.5 * quarter)


def test_monotone_and_bounded_over_random_lengths() -> None:
    rng = random.Random(0)
    lengths = sorted(rng.randint(0, 40_000) for _ in range(2_000))
    right = [length_reward(True, n, CFG) for n in lengths]
    wrong = [length_reward(False, n, CFG) for n in lengths]
    assert all(a >= b for a, b in zip(right, right[1:], strict=False))  # never rises with length
    assert all(a <= b for a, b in zip(wrong, wrong[1:], strict=False))  # never falls with length
    assert all(0.5 <= r <= 1.0 for r in right) and all(-1.0 <= r <= -0.5 for r in wrong)
    assert min(right) > max(wrong)  # any correct answer beats any wrong one


@pytest.mark.parametrize("completion,answer,finished,r_acc", [
    (GOOD, "8", False, -0.5),  # truncated, even though correct
    ("<think>4+4=8 and then the budget ran out", "8", False, -0.5),  # truncated wins over bad format
    ("The answer is \\boxed{8}.", "8", True, -1.0),  # no think block
    ("<think>a</think><think>b</think> \\boxed{8}", "8", True, -1.0),  # malformed think block
    ("x <think>a</think> \\boxed{8}", "8", True, -1.0),  # text before <think>
])
def test_format_overrides(completion: str, answer: str, finished: bool, r_acc: float) -> None:
    result = score(completion, answer, 50, finished, CFG)
    assert result.components["r_acc"] == r_acc
    assert result.reward == pytest.approx(W_ACC * r_acc + W_REP * result.components["repetition"])
    assert result.components["truncated"] == float(not finished)


def test_override_values_are_fields() -> None:
    cfg = dataclasses.replace(CFG, truncated_reward=-0.25, bad_format_reward=-0.75)
    assert score(GOOD, "8", 50, False, cfg).components["r_acc"] == -0.25
    assert score("\\boxed{8}", "8", 50, True, cfg).components["r_acc"] == -0.75


def test_repetition_penalty_hand_worked() -> None:
    assert repetition_penalty("") == 0.0 and repetition_penalty("a b c d") == 0.0
    assert repetition_penalty("a " * 9) == 0.0  # "a a a a a" occurs 5 times: not more than 5
    # "a a a a a" 6 times in 10 words: max(1/6, 6 / (10/5)) = 3, clipped to the cap
    assert repetition_penalty("a " * 10) == -1.0
    assert repetition_penalty("a " * 10, cap=math.inf) == pytest.approx(-3.0)
    # "a b c d e" 6 times then 20 distinct words: 50 words, 46 5-grams, one frequent (6 times)
    text = "a b c d e " * 6 + " ".join(f"w{i}" for i in range(20))
    assert repetition_penalty(text) == pytest.approx(-max(1 / 46, 6 / (50 / 5)))  # -0.6


def test_weights_combine_accuracy_and_repetition() -> None:
    body = "a b c d e " * 6 + " ".join(f"w{i}" for i in range(20))
    completion = f"<think> {body} </think> \\boxed{{8}}"  # 53 words, 49 5-grams, "a b c d e" 6 times
    result = score(completion, "8", 100, True, CFG)
    assert result.components["repetition"] == pytest.approx(-6 / (53 / 5))
    assert result.reward == pytest.approx(8 / 13 * 1.0 + 1 / 13 * (-30 / 53))
    heavy = dataclasses.replace(CFG, w_acc=0.0, w_rep=1.0)
    assert score(completion, "8", 100, True, heavy).reward == pytest.approx(-30 / 53)


def test_repetition_threshold_and_ngram_are_fields() -> None:
    text = "a b " * 8
    assert repetition_penalty(text, n=2, threshold=5) < 0.0
    assert repetition_penalty(text, n=2, threshold=8) == 0.0


def test_phi4_mini_is_plus_or_minus_one() -> None:
    cfg = RewardConfig(name="phi4-mini")
    assert score(GOOD, "8", 30_000, True, cfg).reward == 1.0
    assert score(GOOD, "9", 10, True, cfg).reward == -1.0
    assert score("\\boxed{8}", "8", 10, True, cfg).reward == 1.0  # no format term
    result = score(GOOD, "8", 10, False, cfg)
    assert set(result.components) == {"accuracy", "format", "truncated", "verify_failed"}


def test_components_are_floats_and_named() -> None:
    result = score(GOOD, "8", 10, True, CFG)
    assert set(result.components) == {"accuracy", "format", "truncated", "verify_failed", "length_reward",
                                      "r_acc", "repetition"}
    assert all(isinstance(v, float) for v in result.components.values())


def test_verify_failures_are_reported() -> None:
    result = score("<think>x</think>\\boxed{10^{10^{10}}}", "5", 10, True, CFG)
    assert result.components["verify_failed"] == 1.0 and result.components["accuracy"] == 0.0


def test_row_mode_overrides_config_mode() -> None:
    assert score("<think>x</think>\\boxed{B}", "B", 10, True, CFG, mode="choice").components["accuracy"] == 1.0
    with pytest.raises(DataError):
        score("<think>x</think>\\boxed{B}", "B", 10, True, CFG, mode="integer")


def test_scale_to_context_keeps_the_paper_ratios() -> None:
    assert scale_to_context(CFG, 31_744) == CFG
    small = scale_to_context(CFG, 512)
    assert (small.l_max, small.l_pos_control, small.l_neg_control) == (512, 413, 60)
    assert small.l_pos_control / small.l_max == pytest.approx(25_600 / 31_744, abs=1e-3)
    assert small.l_neg_control / small.l_max == pytest.approx(3_702 / 31_744, abs=2e-3)
    assert length_reward(True, 512, small) == 0.5 and length_reward(False, 60, small) == -0.5
    tiny = scale_to_context(CFG, 2)
    assert 0 <= tiny.l_pos_control < tiny.l_max and tiny.l_neg_control >= 1
    with pytest.raises(ConfigError):
        scale_to_context(CFG, 1)


@pytest.mark.parametrize("changes,match", [
    ({"l_pos_control": 40_000}, "l_pos_control"), ({"l_neg_control": 0}, "l_neg_control"),
    ({"correct_min": 2.0}, "correct_min"), ({"rep_ngram": 0}, "rep_ngram"), ({"w_acc": -1.0}, "w_acc"),
    ({"name": "phi5"}, "phi4-mini"),
])
def test_invalid_configs_say_how_to_fix(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(CFG, **changes)


def test_config_loads_with_overrides() -> None:
    cfg = load_config(RewardConfig, None, ["name=phi4-mini", "l_max=1000", "l_pos_control=800",
                                           "l_neg_control=100", "mode=integer"])
    assert (cfg.name, cfg.l_max, cfg.l_pos_control, cfg.mode) == ("phi4-mini", 1000, 800, "integer")
    with pytest.raises(ConfigError, match="mode"):
        load_config(RewardConfig, None, ["mode=fuzzy"])


def _write_module(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    sys.modules.pop(name, None)


def test_user_reward_by_dotted_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "my_rewards", """
        from thinktune.rewards import RewardResult

        def shortest(completion, answer, num_tokens, finished, cfg, mode):
            return RewardResult(-num_tokens / cfg.l_max, False, {"length": float(num_tokens)})

        def bad(completion, answer, num_tokens, finished, cfg, mode):
            return 1.0

        def old_contract(completion, answer, num_tokens, finished, cfg, mode):  # no `correct`
            return RewardResult(1.0, {"accuracy": 1.0})

        def two_arguments(completion, answer):
            return RewardResult(1.0, True)
    """)
    for name in ("my_rewards:shortest", "my_rewards.shortest"):
        result = score(GOOD, "8", 100, True, scale_to_context(RewardConfig(name=name), 1000))
        assert result == RewardResult(-0.1, False, {"length": 100.0})
        check_reward(RewardConfig(name=name))
    with pytest.raises(TypeError, match="RewardResult"):
        score(GOOD, "8", 100, True, RewardConfig(name="my_rewards:bad"))
    # what GRPO checks before it loads a model: each of these fails there, not at the first step's scoring
    for name, match in (("bad", "returned float"), ("old_contract", "correct a bool"),
                        ("two_arguments", "does not take")):
        with pytest.raises(ConfigError, match=match):
            check_reward(RewardConfig(name=f"my_rewards:{name}"))


@pytest.mark.parametrize("name,match", [
    ("no_such_module_xyz:fn", "cannot import"), ("thinktune.rewards.phi4:nothing", "no function"),
    ("thinktune.rewards.phi4:REWARDS", "no function"), ("phi5", "phi4-mini"),
])
def test_bad_reward_paths_are_config_errors(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_reward_fn(name)


def test_builtin_names_and_dotted_builtin() -> None:
    assert load_reward_fn("phi4") is REWARDS["phi4"] is phi4_reward
    assert load_reward_fn("thinktune.rewards.phi4:phi4_reward") is phi4_reward


def _batch(n: int) -> tuple[list[str], list[str], list[int], list[bool]]:
    rng = random.Random(1)
    answers = [str(rng.randint(0, 99)) for _ in range(n)]
    completions = [f"<think>{rng.randint(0, 9)}+{rng.randint(0, 9)}</think> \\boxed{{{rng.randint(0, 99)}}}"
                   for _ in range(n)]
    return completions, answers, [rng.randint(1, 5000) for _ in range(n)], [rng.random() > 0.1 for _ in range(n)]


def test_score_batch_matches_score_in_order() -> None:
    completions, answers, lengths, finished = _batch(64)
    expected = [score(c, a, n, f, CFG) for c, a, n, f in zip(completions, answers, lengths, finished, strict=True)]
    assert score_batch(completions, answers, lengths, finished, CFG, workers=1) == expected
    assert score_batch(completions, answers, lengths, finished, CFG, workers=4) == expected
    modes = ["integer"] * 64
    assert score_batch(completions, answers, lengths, finished, CFG, modes=modes) == expected


def test_streaming_scorer_returns_results_by_key_whatever_the_order_submitted() -> None:
    completions, answers, lengths, finished = _batch(32)
    expected = [score(c, a, n, f, CFG) for c, a, n, f in zip(completions, answers, lengths, finished, strict=True)]
    order = list(range(32))
    random.Random(2).shuffle(order)  # completions end in any order
    with StreamingScorer(CFG, workers=4) as scorer:
        for i in order:
            scorer.submit(("row", i), completions[i], answers[i], lengths[i], finished[i])
        with pytest.raises(ValueError, match="not collected"):
            scorer.submit(("row", order[0]), "x", "1", 1, True)
        assert scorer.results(("row", i) for i in range(32)) == expected
        with pytest.raises(KeyError):  # collected keys are forgotten
            scorer.results([("row", 0)])


def test_streaming_scorer_raises_a_reward_error_when_collected() -> None:
    with StreamingScorer(CFG, workers=2) as scorer:
        scorer.submit(0, "\\boxed{3}", "three", 10, True, mode="integer")  # not an integer gold: DataError
        scorer.submit(1, "\\boxed{3}", "3", 10, True, mode="integer")
        with pytest.raises(DataError, match="three"):
            scorer.results([0])
        assert scorer.results([1]) == [score("\\boxed{3}", "3", 10, True, CFG, "integer")]


def test_score_batch_checks_lengths() -> None:
    with pytest.raises(ValueError, match="one of each"):
        score_batch(["a", "b"], ["1", "2"], [1], [True, True], CFG)


def test_score_batch_is_fast_for_short_integer_completions() -> None:
    completions, answers, lengths, finished = _batch(2_000)
    start = time.perf_counter()
    score_batch(completions, answers, lengths, finished, CFG, workers=1)
    assert (time.perf_counter() - start) / 2_000 < 2e-4
