"""Sample a model on prompt rows and measure how often it is right: the pieces that pair mining
(``dpo-pairs``), length-uniformity selection (``select-prompts``) and teachable-prompt selection
(``select``) share.

Phi-4-reasoning kept seeds "at the edge of the student's ability" (docs/recipe.md §1.1): prompts the student
sometimes but not usually solves. ``in_band`` is that test on a pass rate estimated from k samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from thinktune import runtime
from thinktune.config import ModelConfig, SamplingConfig
from thinktune.data.chat import prompt_messages, render_prompt
from thinktune.modeling import models
from thinktune.rewards.verify import is_correct_groups
from thinktune.rollout.sampler import Completion, SamplingParams
from thinktune.rollout.service import Sampler, make_sampler


def load_student(cfg: ModelConfig, sampling: SamplingConfig) -> tuple[Sampler, PreTrainedTokenizerBase]:
    """A sampler for the model of ``cfg`` (``make_sampler``: thinktune's on the best device, or vLLM, which
    loads the weights itself) and its tokenizer, with the run's seeds set from ``sampling.seed``."""
    rt = runtime.init(cfg.dtype, sampling.seed)
    tokenizer = models.load_tokenizer(cfg)
    return make_sampler(sampling, cfg, tokenizer, rt), tokenizer


def sample_rows(sampler: Sampler, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], params: SamplingParams,
                seed: int) -> list[list[Completion]]:
    """``params.n`` completions for each prompt row, rendered with the chat template (and its system prompt)."""
    prompts = [render_prompt(tokenizer, prompt_messages(r["prompt"])) for r in rows]
    return sampler.sample(prompts, params, seed=seed)


def verify_groups(rows: Sequence[dict], texts: Sequence[Sequence[str]]) -> list[list[bool]]:
    """Whether each completion of each row is correct (``rewards.verify.is_correct`` in the row's mode),
    several checks at once."""
    if len(rows) != len(texts):
        raise ValueError(f"verify_groups: {len(rows)} rows and {len(texts)} groups of completions")
    return is_correct_groups(texts, [str(r["answer"]) for r in rows], [r.get("mode", "math") for r in rows])


def pass_rate(correct: Sequence[bool]) -> float:
    """The share of correct samples; a truncated or unanswered sample counts as wrong."""
    return sum(correct) / len(correct) if correct else 0.0


def in_band(rate: float, above: float, at_most: float) -> bool:
    """``above < rate <= at_most``: the default (0, 0.5] keeps prompts solved sometimes, at most half the time."""
    return above < rate <= at_most
