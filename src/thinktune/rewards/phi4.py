"""The Phi-4-reasoning reward (length-aware accuracy, format overrides, repetition) and the Phi-4-mini one.

Phi-4-reasoning-plus (docs/recipe.md section 2.2), with L the number of generated tokens:

    R_acc_scaled = cosine of L, by correctness:
        correct:   rho = clip((L - L_pos_control) / (L_max - L_pos_control), 0, 1)
                   R = correct_min + (correct_max - correct_min) * (1 + cos(pi * rho)) / 2
                   -> 1.0 up to L_pos_control = 25,600, down to 0.5 at L_max = 31,744
        incorrect: rho = clip(L / L_neg_control, 0, 1)
                   R = wrong_max + (wrong_min - wrong_max) * (1 + cos(pi * rho)) / 2
                   -> -1.0 at L = 0, up to -0.5 at L_neg_control = 3,702, flat after
    overrides: no EOS (truncated) -> R_acc_scaled = -0.5; otherwise a missing or malformed think block
               (``verify.has_valid_think``) -> -1.0
    R_rep     = -min(rep_cap, max(#frequent / #ngrams, max_count / (#words / n)))   (0 if none frequent)
    R_final   = w_acc * R_acc_scaled + w_rep * R_rep,   w_acc = 8/13, w_rep = 1/13
    (+ overlong_penalty * R_overlong, DAPO's soft overlong punishment, only with reward.overlong_buffer > 0;
     also for Phi-4-mini's reward; logged as the ``overlong`` component)

Choices where docs/recipe.md marks the paper unconfirmed (each one a ``RewardConfig`` field):
    - The cosine formula is S6's reconstruction [S]; its behaviour (flat/decay points, ranges) is [C].
      Lengths beyond L_max are clamped (rho <= 1), as TRL does, never wrapped around as open-r1 does.
    - R_rep follows S6 [S]: word 5-grams of ``completion.split()`` (case kept), an n-gram is "frequent"
      when it occurs more than ``rep_threshold`` = 5 times, and the penalty is the larger of the share of
      distinct frequent n-grams among all n-grams and the most frequent one's count per n words.
      Words, not tokens: ``score`` gets text, and word n-grams give the same penalty under any
      tokenizer (the demo's character-level tokenizer would make every arithmetic trace repetitive).
      The second term can exceed 1 (a single word repeated gives about n), so R_rep is clipped to
      [-rep_cap, 0] with ``rep_cap = 1``; that clip is ours (set ``rep_cap=inf`` for S6's raw value).
    - The repetition penalty applies to every completion (thinking included, overrides or not).
    - When both overrides apply, truncation wins: nearly every truncated completion stops inside its
      think block, so "malformed think first" would leave -0.5 unreachable, against the paper's intent
      of a milder penalty for running out of budget than for a broken format.

Phi-4-mini-reasoning (docs/recipe.md section 3.3): ``correct_max`` (+1) if correct, else ``wrong_min`` (-1),
with no length, truncation, format or repetition terms (format and truncation are still reported).

Every reward returns a ``RewardResult``: the ``reward``, whether the answer was ``correct`` (what GRPO's
accuracy and Phi-4-mini balancing read), and ``components``, all floats, for logging: ``accuracy`` (R_acc_raw, 0/1),
``length_reward`` (the cosine value before overrides), ``r_acc`` (after overrides), ``format`` (1 if the
think block is valid), ``truncated`` (1 if no EOS), ``repetition`` (R_rep), ``verify_failed`` (1 if the
answer check was guarded, timed out or errored).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from thinktune.errors import ConfigError
from thinktune.rewards.verify import DEFAULT_TIMEOUT_S, check_answer, has_valid_think


@dataclass
class RewardConfig:
    """Which reward, and every constant of the Phi-4 rewards (defaults: the paper, docs/recipe.md 2.2).

    ``name`` is ``"phi4"``, ``"phi4-mini"`` or a user function ``"package.module:function"`` with the
    signature of ``phi4_reward``. Nested in the GRPO config as ``reward``; use ``scale_to_context`` for a
    shorter generation budget than the paper's 31,744 tokens.
    """

    name: str = "phi4"
    mode: Literal["math", "integer", "choice", "exact"] = "math"  # verify mode when a row gives none
    l_max: int = 31744  # generation budget in tokens (32K context minus 1,024 for the prompt)
    l_pos_control: int = 25600  # a correct answer earns correct_max up to this length
    l_neg_control: int = 3702  # a wrong answer reaches wrong_max at this length
    correct_max: float = 1.0
    correct_min: float = 0.5
    wrong_min: float = -1.0
    wrong_max: float = -0.5
    truncated_reward: float = -0.5  # R_acc_scaled when the completion has no EOS
    bad_format_reward: float = -1.0  # R_acc_scaled when the think block is missing or malformed
    rep_ngram: int = 5  # n of the repetition penalty's word n-grams [C]
    rep_threshold: int = 5  # an n-gram is frequent when it occurs more than this many times [S: S6]
    rep_cap: float = 1.0  # R_rep is clipped to [-rep_cap, 0] (our choice; inf = S6's raw value)
    w_acc: float = 8 / 13
    w_rep: float = 1 / 13
    verify_timeout_s: float = DEFAULT_TIMEOUT_S  # hard limit per math-verify check; 0 = in-process, unbounded
    # DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13), added to phi4 and phi4-mini as
    # overlong_penalty * R_overlong: 0 up to l_max - overlong_buffer tokens, then linear down to -1 at l_max.
    overlong_buffer: int = 0  # L_cache, in tokens of l_max (scale_to_context scales it); 0: off
    overlong_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in REWARDS and not any(sep in self.name for sep in ".:"):
            raise ConfigError(f"reward.name={self.name!r}: use one of {', '.join(REWARDS)} or a "
                              "function path like 'my_pkg.rewards:my_reward'")
        if not 0 <= self.l_pos_control < self.l_max or not 0 < self.l_neg_control <= self.l_max:
            raise ConfigError(f"reward lengths need 0 <= l_pos_control < l_max and 0 < l_neg_control <= l_max; "
                              f"got l_pos_control={self.l_pos_control}, l_neg_control={self.l_neg_control}, "
                              f"l_max={self.l_max} (scale_to_context keeps the paper's ratios)")
        if self.correct_min > self.correct_max or self.wrong_min > self.wrong_max:
            raise ConfigError("reward ranges need correct_min <= correct_max and wrong_min <= wrong_max")
        if self.rep_ngram < 1 or self.rep_threshold < 1 or self.rep_cap < 0:
            raise ConfigError("reward.rep_ngram and reward.rep_threshold must be >= 1, reward.rep_cap >= 0")
        if self.w_acc < 0 or self.w_rep < 0 or self.verify_timeout_s < 0:
            raise ConfigError("reward.w_acc, reward.w_rep and reward.verify_timeout_s must be >= 0")
        if not 0 <= self.overlong_buffer <= self.l_max or self.overlong_penalty < 0:
            raise ConfigError(f"reward.overlong_buffer must be in [0, l_max={self.l_max}] and reward.overlong_penalty "
                              ">= 0")
        if self.overlong_buffer and self.name not in REWARDS:
            raise ConfigError(f"reward.overlong_buffer applies to the built-in rewards ({', '.join(REWARDS)}), not "
                              f"{self.name!r}; add the term in that function (phi4.overlong_reward) or set it to 0")


@dataclass(frozen=True)
class RewardResult:
    """What every reward returns: the scalar GRPO optimises, whether the answer is right, and the terms the
    reward was made of (logged as ``reward/<name>``; see the module docstring for the built-in names)."""

    reward: float
    correct: bool  # the final answer checked correct: rollout accuracy, Phi-4-mini balancing, DPO pairs
    components: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.reward, int | float) or not isinstance(self.correct, bool):
            raise TypeError(f"RewardResult(reward={self.reward!r}, correct={self.correct!r}, ...): reward must be a "
                            "number and correct a bool; a reward returns RewardResult(reward, correct, components)")


def scale_to_context(cfg: RewardConfig, max_len: int) -> RewardConfig:
    """A copy of ``cfg`` for a generation budget of ``max_len`` tokens, keeping the ratios of the length
    constants to ``l_max`` (the paper's 25,600/31,744 and 3,702/31,744 with the defaults).

    Raises:
        ConfigError: ``max_len`` < 2.
    """
    if max_len < 2:
        raise ConfigError(f"scale_to_context: max_len={max_len} must be at least 2 tokens")
    pos = min(max_len - 1, round(max_len * cfg.l_pos_control / cfg.l_max))
    neg = max(1, round(max_len * cfg.l_neg_control / cfg.l_max))
    buffer = min(max_len, max(1, round(max_len * cfg.overlong_buffer / cfg.l_max))) if cfg.overlong_buffer else 0
    return dataclasses.replace(cfg, l_max=max_len, l_pos_control=pos, l_neg_control=neg, overlong_buffer=buffer)


def _cosine(rho: float, start: float, end: float) -> float:
    """``start`` at rho = 0, ``end`` at rho = 1, along half a cosine."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * rho))


def length_reward(correct: bool, num_tokens: int, cfg: RewardConfig) -> float:
    """R_acc_scaled before the format overrides: the cosine length scaling of the module docstring.

    Args:
        correct: the answer is right.
        num_tokens: L, the number of generated tokens.
        cfg: the constants.

    Returns:
        A value in [correct_min, correct_max] if correct, else in [wrong_min, wrong_max].
    """
    if correct:
        rho = (num_tokens - cfg.l_pos_control) / (cfg.l_max - cfg.l_pos_control)
        return _cosine(min(1.0, max(0.0, rho)), cfg.correct_max, cfg.correct_min)
    rho = num_tokens / cfg.l_neg_control
    return _cosine(min(1.0, max(0.0, rho)), cfg.wrong_min, cfg.wrong_max)


def repetition_penalty(text: str, n: int = 5, threshold: int = 5, cap: float = 1.0) -> float:
    """R_rep of the module docstring: 0, or minus the larger of the share of distinct frequent word
    n-grams and the most frequent n-gram's count per ``n`` words, clipped to ``-cap``.

    Args:
        text: the completion.
        n: n-gram size (words).
        threshold: an n-gram is frequent when it occurs more than this many times.
        cap: the largest penalty magnitude.

    Returns:
        A value in [-cap, 0].
    """
    words = text.split()
    total = len(words) - n + 1
    if total < 1:
        return 0.0
    counts = Counter(zip(*(words[i:] for i in range(n)), strict=False))
    frequent = [c for c in counts.values() if c > threshold]
    if not frequent:
        return 0.0
    return -min(cap, max(len(frequent) / total, max(frequent) / (len(words) / n)))


def overlong_reward(num_tokens: int, l_max: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13), R_length of a completion of L tokens.

    0 for L <= l_max - buffer; ((l_max - buffer) - L) / buffer above it, reaching -1 at l_max; -1 beyond.

    Args:
        num_tokens: L.
        l_max: the generation budget.
        buffer: L_cache, the punished span before l_max (> 0).

    Returns:
        A value in [-1, 0].
    """
    return max(-1.0, min(0.0, (l_max - buffer - num_tokens) / buffer))


def _with_overlong(result: RewardResult, num_tokens: int, cfg: RewardConfig) -> RewardResult:
    """``result`` plus ``overlong_penalty * R_overlong`` and its ``overlong`` component, when the term is on."""
    if not cfg.overlong_buffer:
        return result
    term = overlong_reward(num_tokens, cfg.l_max, cfg.overlong_buffer)
    return RewardResult(result.reward + cfg.overlong_penalty * term, result.correct,
                        result.components | {"overlong": term})


def _base_components(completion: str, answer: str, finished: bool, cfg: RewardConfig,
                     mode: str) -> dict[str, float]:
    verdict = check_answer(completion, answer, mode, cfg.verify_timeout_s)
    return {
        "accuracy": float(verdict.correct),
        "format": float(has_valid_think(completion)),
        "truncated": float(not finished),
        "verify_failed": float(verdict.failure is not None),
    }


def phi4_reward(completion: str, answer: str, num_tokens: int, finished: bool, cfg: RewardConfig,
                mode: str) -> RewardResult:
    """The Phi-4-reasoning-plus reward: w_acc * R_acc_scaled + w_rep * R_rep (module docstring).

    Args:
        completion: generated text with its think tags (decode without dropping them), EOS optional.
        answer: the gold answer.
        num_tokens: generated tokens, L.
        finished: the completion ended with EOS (False: cut at the length budget).
        cfg: the constants.
        mode: verify mode (``verify.MODES``).

    Returns:
        The reward with components ``accuracy, format, truncated, verify_failed, length_reward, r_acc,
        repetition`` (and ``overlong`` with reward.overlong_buffer > 0).
    """
    comp = _base_components(completion, answer, finished, cfg, mode)
    comp["length_reward"] = length_reward(comp["accuracy"] == 1.0, num_tokens, cfg)
    if not finished:
        comp["r_acc"] = cfg.truncated_reward
    elif not comp["format"]:
        comp["r_acc"] = cfg.bad_format_reward
    else:
        comp["r_acc"] = comp["length_reward"]
    comp["repetition"] = repetition_penalty(completion, cfg.rep_ngram, cfg.rep_threshold, cfg.rep_cap)
    result = RewardResult(cfg.w_acc * comp["r_acc"] + cfg.w_rep * comp["repetition"], comp["accuracy"] == 1.0, comp)
    return _with_overlong(result, num_tokens, cfg)


def phi4_mini_reward(completion: str, answer: str, num_tokens: int, finished: bool, cfg: RewardConfig,
                     mode: str) -> RewardResult:
    """The Phi-4-mini-reasoning RLVR reward: ``correct_max`` (+1) if correct, else ``wrong_min`` (-1).

    Same arguments as ``phi4_reward``; ``num_tokens`` serves only the overlong term. Components: ``accuracy, format,
    truncated, verify_failed``.
    """
    comp = _base_components(completion, answer, finished, cfg, mode)
    correct = comp["accuracy"] == 1.0
    return _with_overlong(RewardResult(cfg.correct_max if correct else cfg.wrong_min, correct, comp), num_tokens, cfg)


# The built-in rewards, by the name a config gives (reward.name); any other name is a "package.module:function".
REWARDS = {"phi4": phi4_reward, "phi4-mini": phi4_mini_reward}
