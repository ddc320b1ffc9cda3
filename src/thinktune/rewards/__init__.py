"""Rewards for RL: pick one by name, score completions one at a time or in a batch.

    from thinktune.rewards import RewardConfig, scale_to_context, score_batch
    cfg = scale_to_context(RewardConfig(), max_len=256)             # the demo's budget, paper's ratios
    results = score_batch(texts, answers, num_tokens, finished, cfg)  # [P*G] RewardResult
    rewards = [r.reward for r in results]; metrics from r.components

    scorer = StreamingScorer(cfg)        # or score while sampling: submit each completion as it ends
    scorer.submit(key, text, answer, num_tokens, finished)  # e.g. from RolloutEngine.sample's on_complete
    results = scorer.results(keys)       # waits only for the checks still running

``RewardConfig.name`` chooses the function (a dict literal below, plus a dotted-path escape hatch for
user rewards, as TRL's grpo script allows). Every reward has the signature of ``phi4.phi4_reward``:
``fn(completion, answer, num_tokens, finished, cfg, mode) -> RewardResult``.

Answer checking lives in ``verify`` (``is_correct`` and friends); math-verify's hard time limit in ``pool``;
the reward-vs-length plot in ``curve`` (not imported here: it needs matplotlib).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from thinktune.errors import ConfigError
from thinktune.rewards.phi4 import (
    REWARDS,
    RewardConfig,
    RewardResult,
    length_reward,
    phi4_mini_reward,
    phi4_reward,
    repetition_penalty,
    scale_to_context,
)
from thinktune.rewards.pool import MAX_WORKERS, threaded_map

RewardFn = Callable[[str, str, int, bool, RewardConfig, str], RewardResult]

__all__ = [
    "REWARDS", "RewardConfig", "RewardResult", "StreamingScorer", "check_reward", "length_reward", "load_reward_fn",
    "phi4_mini_reward", "phi4_reward", "repetition_penalty", "scale_to_context", "score", "score_batch",
]


@functools.lru_cache(maxsize=32)
def load_reward_fn(name: str) -> RewardFn:
    """The reward function called ``name``: a key of ``REWARDS`` or ``"package.module:function"``
    (``"package.module.function"`` also works).

    Raises:
        ConfigError: the module cannot be imported, has no such attribute, or it is not callable.
    """
    if name in REWARDS:
        return REWARDS[name]
    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward {name!r}: use one of {', '.join(REWARDS)} or 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"reward {name!r}: cannot import module {module_name!r} ({e}); is it installed "
                          "or on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward {name!r}: module {module_name!r} has no function {attr!r}")
    return fn


def score(completion: str, answer: str, num_tokens: int, finished: bool, cfg: RewardConfig,
          mode: str | None = None) -> RewardResult:
    """Score one completion with the reward named by ``cfg.name``.

    Args:
        completion: generated text, think tags kept.
        answer: the gold answer.
        num_tokens: generated tokens.
        finished: the completion ended with EOS.
        cfg: reward config.
        mode: verify mode of this row; None uses ``cfg.mode``.

    Returns:
        The reward and its components.

    Raises:
        ConfigError: ``cfg.name`` does not load.
        TypeError: a user reward returned something other than a ``RewardResult``.
        DataError: the gold answer does not fit the mode (e.g. not an integer in integer mode).
    """
    fn = load_reward_fn(cfg.name)
    result = fn(completion, str(answer), num_tokens, finished, cfg, mode or cfg.mode)
    if not isinstance(result, RewardResult):
        raise TypeError(f"reward {cfg.name!r} returned {type(result).__name__}; return "
                        "thinktune.rewards.RewardResult(reward, correct, components)")
    return result


def check_reward(cfg: RewardConfig) -> None:
    """Fail at the start of a run, not at its first scoring, on a reward that cannot serve: one that does not
    load, does not take ``fn(completion, answer, num_tokens, finished, cfg, mode)``, or does not return a
    ``RewardResult`` (with ``correct``) for a well-formed correct reply to a toy problem.

    Raises:
        ConfigError: naming the reward and what to change.
    """
    fn = load_reward_fn(cfg.name)
    probe = ("<think>1 + 1 = 2</think>\nThe answer is \\boxed{2}.", "2", 16, True, cfg, cfg.mode)
    try:
        inspect.signature(fn).bind(*probe)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"reward {cfg.name!r} does not take (completion, answer, num_tokens, finished, cfg, "
                          f"mode): {e}") from None
    try:
        score(*probe[:5], mode=probe[5])
    except TypeError as e:
        raise ConfigError(f"reward {cfg.name!r}: {e}") from None


def score_batch(completions: Sequence[str], answers: Sequence[str], num_tokens: Sequence[int],
                finished: Sequence[bool], cfg: RewardConfig, modes: Sequence[str | None] | None = None,
                workers: int = MAX_WORKERS) -> list[RewardResult]:
    """``score`` over parallel lists (e.g. the P*G rollouts of a GRPO step), in order.

    Args:
        completions: [N] generated texts.
        answers: [N] gold answers.
        num_tokens: [N] generated token counts.
        finished: [N] EOS flags.
        cfg: reward config.
        modes: [N] verify modes (None entries use ``cfg.mode``), or None for all.
        workers: checks in flight at once (default: the worker pool's size, 2-8 by core count); math-verify
            runs in worker processes, so threads overlap them. 1 scores in the calling thread.

    Returns:
        [N] results.

    Raises:
        ValueError: the lists differ in length.
    """
    n = len(completions)
    mode_list = [None] * n if modes is None else list(modes)
    if not n == len(answers) == len(num_tokens) == len(finished) == len(mode_list):
        raise ValueError(f"score_batch: got {n} completions, {len(answers)} answers, {len(num_tokens)} "
                         f"num_tokens, {len(finished)} finished flags and {len(mode_list)} modes; pass one "
                         "of each per completion")

    def one(i: int) -> RewardResult:
        return score(completions[i], answers[i], num_tokens[i], finished[i], cfg, mode_list[i])

    return threaded_map(one, n, workers)


class StreamingScorer:
    """``score`` for completions handed in one at a time while the rest are still being sampled, so that the
    answer checks run behind the decode loop instead of after it (GRPO's ``on_complete``).

    ``submit`` starts scoring at once, in one of ``workers`` threads (math-verify runs in the worker pool's
    processes, so threads overlap the checks); ``results`` returns the results of the given keys in that
    order, waiting only for those still running. Results equal ``score_batch``'s. An exception from a
    reward is raised by ``results``. Call ``close`` (or use ``with``) to stop the threads.
    """

    def __init__(self, cfg: RewardConfig, workers: int = MAX_WORKERS) -> None:
        self.cfg = cfg
        self.executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="score")
        self.pending: dict[Hashable, Future[RewardResult]] = {}

    def submit(self, key: Hashable, completion: str, answer: str, num_tokens: int, finished: bool,
               mode: str | None = None) -> None:
        """Start scoring one completion (arguments as for ``score``) under ``key``, unique until collected."""
        if key in self.pending:
            raise ValueError(f"StreamingScorer.submit: key {key!r} was submitted and not collected yet")
        self.pending[key] = self.executor.submit(score, completion, answer, num_tokens, finished, self.cfg, mode)

    def results(self, keys: Iterable[Hashable]) -> list[RewardResult]:
        """The results for ``keys``, in order; each key is forgotten once collected.

        Raises:
            KeyError: a key that was never submitted (or was collected already).
        """
        futures = [self.pending.pop(k) for k in keys]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()

    def __enter__(self) -> StreamingScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
