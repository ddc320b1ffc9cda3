"""Held-out accuracy during training: N samples per held-out problem, graded as ``thinktune evaluate`` grades them.

sft, dpo and grpo share a ``heldout:`` block (``HeldoutConfig``). With ``heldout.every > 0`` a recipe evaluates
its policy before the first update (unless it resumes past it), every ``every`` optimizer steps and after the last
step, and logs ``heldout/pass@1`` with ``heldout/pass@1_std`` (the std across the N runs, as ``evaluate`` reports
it), ``heldout/maj@N``, the format and length figures, and pass@1 ± std per ``difficulty`` level
(``heldout/pass@1/difficulty=2``), plus ``time/heldout``.

Every evaluation draws with the same seed (``heldout.sampling.seed``), so two points of the curve differ by what
the model learned, not by which samples were drawn; the ± band is the spread across the N runs of one evaluation.

Sampling goes through the project's ``Sampler`` (``rollout/service.py``), built from the unsharded policy before
FSDP shards it, as GRPO builds its rollout sampler; GRPO lends its own. Under torchrun each rank samples a
contiguous share of the problems, every rank takes part in the weight sync, and the grades are gathered, so
every rank returns the same metrics (the shares change the batches, so another world size draws other samples).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinktune import runtime
from thinktune.config import ModelConfig, SamplingConfig, VLLMOptions
from thinktune.data.chat import prompt_messages, render_prompt
from thinktune.errors import ConfigError, DataError
from thinktune.evaluation.scoring import score, summarize_groups
from thinktune.rollout.service import Sampler, check_sampling, make_sampler
from thinktune.tasks.benchmarks import load_prompts
from thinktune.tracking import MetricsLogger, read_metrics
from thinktune.train import distributed

GROUP_FIELDS = ("difficulty",)  # what ``thinktune evaluate`` groups a prompt JSONL by
# Figures of the whole set logged besides pass@1 and its std (maj@N is added under its own N).
OVERALL = ("format_ok", "mean_length", "truncated")


@dataclass
class HeldoutConfig:
    """Held-out generation accuracy during training; unrelated to ``eval_every``/``data.eval`` (a loss)."""

    prompts: str = ""  # prompt JSONL as `thinktune evaluate` reads it: {"id", "prompt", "answer", "difficulty"?}
    every: int = 0  # optimizer steps between evaluations, plus one before the first and one after the last; 0: off
    limit: int = 0  # first N problems only (0: all)
    # evaluate's temperature and top-p with 4 runs; vLLM takes 0.4 of the GPU and sleeps between evaluations.
    # Under grpo the policy's sampler is lent: backend, decoder and vllm.* are then sampling's.
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        n=4, temperature=0.8, top_p=0.95, max_new_tokens=32768,
        vllm=VLLMOptions(gpu_memory_utilization=0.4, sleep=True)))

    def __post_init__(self) -> None:
        if self.every < 0 or self.limit < 0:
            raise ConfigError(f"heldout.every={self.every} and heldout.limit={self.limit} must be >= 0 (0: off, all)")
        if self.every and not self.prompts:
            raise ConfigError(f"heldout.every={self.every} needs heldout.prompts: set it to a prompt JSONL "
                              "(heldout.prompts=FILE), or heldout.every=0 to train without held-out evaluation")
        if self.prompts and not self.every:
            raise ConfigError(f"heldout.prompts={self.prompts} is set but heldout.every=0 turns held-out evaluation "
                              "off: set heldout.every=N (optimizer steps between evaluations) or clear heldout.prompts")


def heldout_metrics(rows: list[dict], mats: dict) -> dict[str, float]:
    """The logged figures of one evaluation, in percent, from ``scoring.score``'s matrices of all ``rows``.

    Returns:
        ``heldout/pass@1``, ``heldout/pass@1_std``, ``heldout/maj@N``, ``heldout/format_ok``,
        ``heldout/mean_length``, ``heldout/truncated``, and ``heldout/pass@1/difficulty=L`` with its
        ``heldout/pass@1_std/difficulty=L`` for each level L the rows name.
    """
    groups = summarize_groups(rows, mats, GROUP_FIELDS)
    everything = groups.pop("all")
    n = int(everything["samples_per_problem"])
    out = {f"heldout/{k}": everything[k] for k in ("pass@1", "pass@1_std", f"maj@{n}", *OVERALL)}
    for name, g in groups.items():
        out[f"heldout/pass@1/{name}"] = g["pass@1"]
        out[f"heldout/pass@1_std/{name}"] = g["pass@1_std"]
    return out


class HeldoutEval:
    """The held-out problems of one run, rendered once, and the sampler that answers them."""

    def __init__(self, cfg: HeldoutConfig, model_cfg: ModelConfig, tokenizer, rt: runtime.Runtime, stage: str):
        try:
            check_sampling(cfg.sampling, model_cfg)
        except ConfigError as e:
            raise ConfigError(f"heldout: {e}") from None
        self.rows = load_prompts(cfg.prompts, limit=cfg.limit or None)
        if not self.rows:
            raise DataError(f"heldout.prompts={cfg.prompts} holds no prompt rows; give a prompt JSONL with some")
        self.prompts = [render_prompt(tokenizer, prompt_messages(r["prompt"])) for r in self.rows]
        self.cfg, self.model_cfg, self.tokenizer, self.rt, self.stage = cfg, model_cfg, tokenizer, rt, stage
        self.params = cfg.sampling.params()
        n = len(self.rows)  # each rank's contiguous share; a rank may get none when ranks outnumber problems
        self.mine = range(n * rt.rank // rt.world_size, n * (rt.rank + 1) // rt.world_size)
        self.sampler: Sampler | None = None

    @property
    def context(self) -> int:
        """Tokens the longest held-out prompt and its completion need."""
        return max(map(len, self.prompts)) + self.cfg.sampling.max_new_tokens

    def build_sampler(self, model: torch.nn.Module) -> None:
        """A sampler of ``model``, which must not be sharded yet (thinktune's sampler reads whole weights)."""
        self.sampler = make_sampler(self.cfg.sampling, self.model_cfg, self.tokenizer, self.rt, model=model,
                                    longest_prompt=max(map(len, self.prompts)))

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the evaluation after optimizer step ``step`` is one of the schedule's."""
        return step % self.cfg.every == 0 or step == total_steps

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Sample, grade and summarize the held-out set on ``model``'s current weights; every rank calls it.

        Returns:
            ``heldout_metrics`` plus ``time/heldout`` (seconds), the same on every rank.
        """
        assert self.sampler is not None, "build_sampler (or a lent sampler) comes first"
        start, was_training = time.perf_counter(), model.training
        self.sampler.sync_weights(model)  # collective under FSDP: every rank, even one without problems
        rows, prompts = [self.rows[i] for i in self.mine], [self.prompts[i] for i in self.mine]
        completions = self.sampler.sample(prompts, self.params, seed=self.cfg.sampling.seed,
                                          batch_size=self.cfg.sampling.batch_size, show_progress=False)
        self.sampler.release()
        model.train(was_training)
        mats = score(rows, completions, self.tokenizer, prompts)[0]
        parts = distributed.gather_lists([mats])  # rank order is problem order: the shares are contiguous
        mats = {k: [x for part in parts for x in part[k]] for k in mats}
        metrics = heldout_metrics(self.rows, mats) | {"time/heldout": time.perf_counter() - start}
        self.report(step, metrics)
        return metrics

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """One line per evaluation, so a user watching the run sees the curve grow."""
        levels = "".join(f", {k.split('/')[-1]} {v:.1f}" for k, v in metrics.items()
                         if k.startswith("heldout/pass@1/"))
        runtime.print0(f"[{self.stage}] held-out at step {step}: pass@1 {metrics['heldout/pass@1']:.1f} ± "
                       f"{metrics['heldout/pass@1_std']:.1f}{levels} ({len(self.rows)} problems x {self.params.n}, "
                       f"{metrics['time/heldout']:.1f} s)")


def load_heldout(cfg: HeldoutConfig, model_cfg: ModelConfig, tokenizer, rt: runtime.Runtime,
                 stage: str) -> HeldoutEval | None:
    """The run's held-out evaluation, its prompts read and rendered; None when ``heldout.every`` is 0."""
    return HeldoutEval(cfg, model_cfg, tokenizer, rt, stage) if cfg.every else None


# What the recipes call: each does nothing when held-out evaluation is off (``heldout_eval`` None).


def log_before_training(heldout_eval: HeldoutEval | None, model: torch.nn.Module, start: int,
                        logger: MetricsLogger) -> None:
    """Evaluate and log step 0, unless the run resumes past it (``start`` > 0: its line is already logged)."""
    if heldout_eval and start == 0:
        logger.log(0, heldout_eval.evaluate(model, 0))


def log_if_due(heldout_eval: HeldoutEval | None, model: torch.nn.Module, step: int, total_steps: int,
               logger: MetricsLogger) -> None:
    """Evaluate and log after optimizer step ``step`` if the schedule says so. Called before that step's checkpoint
    is saved, so a run resumed from the checkpoint keeps the line and does not evaluate twice."""
    if heldout_eval and heldout_eval.due(step, total_steps):
        logger.log(step, heldout_eval.evaluate(model, step))


def summary_of(heldout_eval: HeldoutEval | None, metrics_path: Path) -> dict[str, dict]:
    """``{"heldout": {"first": {"step", "pass@1", "pass@1_std"}, "last": {...}}}`` from the run's whole
    ``metrics.jsonl`` (the first evaluation may predate a resume); {} when off or where the file is not (another
    machine's rank)."""
    rows = [r for r in read_metrics(metrics_path) if "heldout/pass@1" in r] if heldout_eval else []
    if not rows:
        return {}
    return {"heldout": {name: {"step": r["step"], "pass@1": r["heldout/pass@1"], "pass@1_std": r["heldout/pass@1_std"]}
                        for name, r in (("first", rows[0]), ("last", rows[-1]))}}
