"""User rewards for the GRPO tests, loaded by dotted path ("toy_rewards:ones_share").

``ones_share`` pays for the share of the character "1" in the completion: a random tiny model earns a little of it by
chance, so the policy gradient has a signal from the first step, and the mean reward can only rise if the
update's sign and masking are right. ``even_answers_uniform`` and ``zeros`` make groups of equal rewards
on purpose, for dynamic sampling.
"""

import zlib

from thinktune.rewards import RewardConfig, RewardResult


def ones_share(completion: str, answer: str, num_tokens: int, finished: bool, cfg: RewardConfig,
               mode: str) -> RewardResult:
    share = completion.count("1") / max(len(completion), 1)
    return RewardResult(share, share > 0.5, {"ones": share})


def even_answers_uniform(completion: str, answer: str, num_tokens: int, finished: bool, cfg: RewardConfig,
                         mode: str) -> RewardResult:
    """0 for every sample of a prompt whose answer is even (a uniform group: zero advantage); else a value spread
    by the completion's CRC, so a group's samples differ unless their texts do not."""
    if int(answer) % 2 == 0:
        return RewardResult(0.0, False, {})
    value = zlib.crc32(completion.encode()) / 2**32
    return RewardResult(value, value > 0.5, {})


def zeros(completion: str, answer: str, num_tokens: int, finished: bool, cfg: RewardConfig,
          mode: str) -> RewardResult:
    """0 for everything: every group uniform, nothing for a policy gradient to learn from."""
    return RewardResult(0.0, False, {})
