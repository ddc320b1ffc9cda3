"""Mine rollout DPO pairs: sample k completions per prompt, verify them, pair correct with incorrect.

Run:
    thinktune dpo-pairs --config configs/demo/dpo_pairs.yaml model.path=runs/demo/sft/final prompts=train.jsonl
    thinktune dpo-pairs prompts=train.jsonl samples=teacher_rollouts.jsonl      # a teacher's saved samples

Writes ``pairs.jsonl`` and ``heldout_pairs.jsonl`` (preference rows, split by prompt so that no held-out
prompt is trained on), ``samples.jsonl`` (every rollout with its verdict) and ``summary.json`` with the
prompts that had no mixed outcome. Saved samples are rollout records ``{"prompt_id", "completion",
"num_tokens"?, "finished"?}`` (length in characters when num_tokens is absent); they are verified again
against the prompt file's answers. Unfinished samples (cut at the length limit) are never paired; they are
counted, kept in ``samples.jsonl`` with ``finished: false``, and when no pair can be mined the error says
whether truncation, all-wrong or all-correct samples are why.

Departures from the paper: Phi-4-mini-reasoning mined pairs from DeepSeek-R1 rollouts of its training
prompts; with ``model.path`` set, we sample the policy itself (the SFT model), which the issue that added
this stage asks for as the default; ``samples`` gives the paper's variant.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tqdm import tqdm

from thinktune.config import SAMPLING_RENAMED, ModelConfig, SamplingConfig, save_config
from thinktune.curation.pairs import Scored, mine
from thinktune.curation.passrate import load_student, sample_rows
from thinktune.data.chat import prompt_messages, render_prompt
from thinktune.data.io import read_jsonl_lines, write_json, write_jsonl
from thinktune.errors import ConfigError, DataError
from thinktune.rewards.verify import is_correct_groups
from thinktune.tasks.benchmarks import load_prompts


@dataclass
class DPOPairsConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy to sample (unused with `samples`)
    prompts: str = ""  # prompt JSONL
    samples: str = ""  # saved rollout records to pair instead of sampling
    difficulties: list[int] = field(default_factory=list)  # keep prompts of these levels only (empty: all)
    limit: int = 0  # first N prompts after the difficulty filter (0: all)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=2048))  # n per prompt
    pairs_per_prompt: int = 1
    length_match: bool = True
    heldout_fraction: float = 0.1  # share of prompts whose pairs go to heldout_pairs.jsonl
    seed: int = 0  # the pairing and the held-out split; the draws take sampling.seed
    output_dir: str = "runs/dpo-pairs"

    # ``samples`` here is the file of saved rollout records, not a count
    RENAMED: ClassVar[dict[str, str]] = {k: v for k, v in SAMPLING_RENAMED.items() if k != "samples"}

    def __post_init__(self) -> None:
        self.model.check_sampling_only("dpo-pairs")
        if not self.prompts:
            raise ConfigError("prompts is empty; give the prompt JSONL to mine pairs for (prompts=FILE)")
        if not self.samples and not self.model.path:
            raise ConfigError("set model.path (a policy to sample) or samples (saved rollout records)")
        if self.sampling.n < 2 or self.pairs_per_prompt < 1:
            raise ConfigError("sampling.n must be >= 2 (a pair needs two samples) and pairs_per_prompt >= 1")
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction={self.heldout_fraction} must be in [0, 1)")


def select_prompts(cfg: DPOPairsConfig) -> list[dict]:
    return load_prompts(cfg.prompts, limit=cfg.limit or None, difficulties=cfg.difficulties)


# A sample: its text, its length in tokens (characters for saved records without a count), whether it ended.
Sample = tuple[str, int, bool]


def sample_policy(cfg: DPOPairsConfig, rows: list[dict]) -> tuple[list[list[Sample]], list[str]]:
    """``sampling.n`` samples per prompt from the policy, and each prompt as the policy saw it (rendered)."""
    sampler, tokenizer = load_student(cfg.model, cfg.sampling)
    outs = sample_rows(sampler, tokenizer, rows, cfg.sampling.params(), cfg.sampling.seed)
    rendered = [tokenizer.decode(render_prompt(tokenizer, prompt_messages(r["prompt"]))) for r in rows]
    return [[(c.text, len(c.token_ids), c.finished) for c in group] for group in outs], rendered


def saved_samples(cfg: DPOPairsConfig, rows: list[dict]) -> list[list[Sample]]:
    by_prompt: dict[str, list[Sample]] = defaultdict(list)
    for lineno, rec in read_jsonl_lines(cfg.samples):
        if "prompt_id" not in rec or not isinstance(rec.get("completion"), str):
            raise DataError(f"{cfg.samples}:{lineno}: a rollout record needs 'prompt_id' and a string 'completion'")
        # Without a token count, length matching falls back to characters.
        n = int(rec.get("num_tokens") or len(rec["completion"]))
        by_prompt[str(rec["prompt_id"])].append((rec["completion"], n, bool(rec.get("finished", True))))
    return [by_prompt.get(str(r["id"]), []) for r in rows]


def advice(summary: dict, max_new_tokens: int | None) -> str:
    """What to change when no prompt had both a correct and an incorrect finished sample."""
    if summary["truncated"] * 2 >= summary["samples"]:
        cut = f"max_new_tokens={max_new_tokens}" if max_new_tokens else "the sampler's length limit"
        return (f"{summary['truncated']} of {summary['samples']} samples were cut at {cut} before they ended: "
                "raise max_new_tokens, or train the model to finish first (sft)")
    if summary["correct"] == 0:
        return "every sample is wrong: choose easier prompts, or train the model first (sft on verified traces)"
    if summary["correct"] == summary["finished"]:
        return "every finished sample is correct: choose harder prompts"
    return "raise k or the temperature"


def run(cfg: DPOPairsConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rows = select_prompts(cfg)
    completions, rendered = (saved_samples(cfg, rows), None) if cfg.samples else sample_policy(cfg, rows)
    verdicts = is_correct_groups([[text for text, _, _ in group] for group in completions],
                                 [str(r["answer"]) for r in rows], [r.get("mode", "math") for r in rows])
    write_jsonl(out / "samples.jsonl", (
        {"prompt_id": r["id"], **({"prompt": rendered[i]} if rendered else {}), "completion": text,
         "num_tokens": n, "finished": finished, "correct": ok}
        for i, (r, group, oks) in enumerate(zip(rows, completions, verdicts, strict=True))
        for (text, n, finished), ok in zip(group, oks, strict=True)))
    # An unfinished completion was cut mid-thought: never use it as either side of a pair.
    scored = [[Scored(text, ok, n) for (text, n, finished), ok in zip(group, oks, strict=True) if finished]
              for group, oks in zip(completions, verdicts, strict=True)]

    # Split by prompt before pairing, so held-out pairs measure preferences on prompts never trained on.
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    n_held = round(cfg.heldout_fraction * len(rows))
    held = set(order[:n_held])
    parts = {}
    for name, keep in (("train", lambda i: i not in held), ("heldout", lambda i: i in held)):
        idx = [i for i in range(len(rows)) if keep(i)]
        parts[name] = mine([rows[i] for i in idx], [scored[i] for i in idx], cfg.pairs_per_prompt,
                           cfg.length_match, cfg.seed)
    write_jsonl(out / "pairs.jsonl", parts["train"][0])
    write_jsonl(out / "heldout_pairs.jsonl", parts["heldout"][0])
    total = sum(len(g) for g in completions)
    finished = sum(len(g) for g in scored)
    summary = {"samples": total, "finished": finished, "truncated": total - finished,
               "correct": sum(s.correct for g in scored for s in g),
               "train": parts["train"][1], "heldout": parts["heldout"][1]}
    write_json(out / "summary.json", summary)
    t, h = parts["train"][1], parts["heldout"][1]
    tqdm.write(f"[dpo-pairs] {len(rows)} prompts: {total} samples, {summary['truncated']} cut at the length limit "
               f"(not paired); {summary['correct']}/{finished} finished ones correct; "
               f"{t['pairs']} train pairs, {h['pairs']} held-out pairs; no mixed outcome: "
               f"{t['all_correct'] + h['all_correct']} all correct, {t['all_wrong'] + h['all_wrong']} all wrong")
    if not t["pairs"]:
        limit = None if cfg.samples else cfg.sampling.max_new_tokens
        raise DataError(f"no prompt in {cfg.prompts} had both a correct and an incorrect finished sample: "
                        f"{advice(summary, limit)}")
    return summary
