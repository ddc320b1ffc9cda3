"""Held-out evaluation during training: the logged figures of hand-graded completions, the config's checks, and
the schedule's place in a resumed run's fingerprint."""

from __future__ import annotations

import math

import pytest

from thinktune.config import load_config
from thinktune.errors import ConfigError
from thinktune.evaluation.scoring import score
from thinktune.recipes import dpo, grpo, sft
from thinktune.rollout.sampler import Completion
from thinktune.train.heldout import HeldoutConfig, heldout_metrics
from thinktune.train.run_dir import fingerprint_of


def done(text: str, tokens: int = 3, finished: bool = True) -> Completion:
    return Completion(token_ids=list(range(tokens)), text=text, finished=finished)


def test_metrics_of_three_problems_two_runs_worked_by_hand(char_tokenizer):
    rows = [{"id": "a", "answer": "5", "difficulty": 1}, {"id": "b", "answer": "7", "difficulty": 1},
            {"id": "c", "answer": "9", "difficulty": 2}]
    completions = [
        [done("<think>x</think>\\boxed{5}"), done("<think>y</think>\\boxed{5}")],  # right, right
        [done("<think>x</think>\\boxed{6}"), done("<think>y</think>\\boxed{7}")],  # wrong, right
        [done("<think>x</think>\\boxed{8}"), done("no idea", tokens=9, finished=False)],  # wrong, wrong
    ]
    mats, _ = score(rows, completions, char_tokenizer, [[0], [0], [0]])
    m = heldout_metrics(rows, mats)
    # Run 0 solves a of a, b, c (1/3), run 1 solves a and b (2/3): pass@1 = 50; the runs' sample std (ddof=1) is
    # |66.7 - 33.3| / sqrt(2) = 100 / (3 sqrt 2) = 23.57.
    assert m["heldout/pass@1"] == pytest.approx(50.0)
    assert m["heldout/pass@1_std"] == pytest.approx(100 / (3 * math.sqrt(2)))
    # Level 1 (a, b): run 0 1/2, run 1 2/2 -> 75 ± 50/sqrt(2); level 2 (c): never solved -> 0 ± 0.
    assert m["heldout/pass@1/difficulty=1"] == pytest.approx(75.0)
    assert m["heldout/pass@1_std/difficulty=1"] == pytest.approx(50 / math.sqrt(2))
    assert m["heldout/pass@1/difficulty=2"] == 0.0 and m["heldout/pass@1_std/difficulty=2"] == 0.0
    # maj@2: a's vote is 5 (right); b's 6-7 tie goes to the first answer, 6 (wrong); c's only answer 8 (wrong).
    assert m["heldout/maj@2"] == pytest.approx(100 / 3)
    # One of six has no think block and was cut at the budget; lengths 3 x 5 and 9 average 4.
    assert m["heldout/format_ok"] == pytest.approx(500 / 6)
    assert m["heldout/truncated"] == pytest.approx(100 / 6)
    assert m["heldout/mean_length"] == pytest.approx(4.0)
    assert len(m) == 10  # nothing beyond the documented figures


SFT_ARGS = ["model.path=m", "data.train=t.jsonl"]


def test_every_without_prompts_names_the_field():
    with pytest.raises(ConfigError, match=r"heldout\.every=5 needs heldout\.prompts"):
        load_config(sft.SFTConfig, None, [*SFT_ARGS, "heldout.every=5"])
    with pytest.raises(ConfigError, match=r"heldout\.every=0 turns held-out evaluation off"):
        load_config(dpo.DPOConfig, None, [*SFT_ARGS, "heldout.prompts=p.jsonl"])
    with pytest.raises(ConfigError, match=r"n=0: must be >= 1"):
        load_config(sft.SFTConfig, None, [*SFT_ARGS, "heldout.every=5", "heldout.prompts=p.jsonl",
                                          "heldout.sampling.n=0"])
    with pytest.raises(ConfigError, match="must be >= 0"):
        HeldoutConfig(every=-1)


def test_grpo_refuses_a_held_out_engine_other_than_its_policys():
    args = ["model.path=m", "data.prompts=p.jsonl", "heldout.every=5", "heldout.prompts=h.jsonl"]
    with pytest.raises(ConfigError, match=r"heldout\.sampling\.backend=auto and decoder=hf"):
        load_config(grpo.GRPOConfig, None, [*args, "heldout.sampling.decoder=hf"])
    cfg = load_config(grpo.GRPOConfig, None, [*args, "heldout.sampling.decoder=hf", "sampling.decoder=hf"])
    assert cfg.heldout.sampling.top_p == 0.95  # evaluate's top-p is fine here; only the rollouts need 1


def test_heldout_settings_leave_the_fingerprint_alone():
    # They only sample the policy, so a resumed run may turn them on, off or change them.
    off = load_config(sft.SFTConfig, None, SFT_ARGS)
    on = load_config(sft.SFTConfig, None, [*SFT_ARGS, "heldout.every=5", "heldout.prompts=p.jsonl",
                                           "heldout.sampling.n=8"])
    assert fingerprint_of(on) == fingerprint_of(off)
    assert not [k for k in fingerprint_of(on)["config"] if k.startswith("heldout")]
