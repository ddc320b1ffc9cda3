"""A user reward for the GRPO tests, loaded by dotted path ("toy_rewards:ones_share").

It pays for the share of the character "1" in the completion: a random tiny model earns a little of it by
chance, so the policy gradient has a signal from the first step, and the mean reward can only rise if the
update's sign and masking are right.
"""

from thinktune.rewards import RewardConfig, RewardResult


def ones_share(completion: str, answer: str, num_tokens: int, finished: bool, cfg: RewardConfig,
               mode: str) -> RewardResult:
    share = completion.count("1") / max(len(completion), 1)
    return RewardResult(share, share > 0.5, {"ones": share})
