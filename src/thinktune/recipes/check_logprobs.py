"""Check that the sampler's token log-probs agree with the training forward's, before an RL run trusts them.

Run:
    thinktune check-logprobs model.path=runs/demo/sft/final
    thinktune check-logprobs model.path=DIR model.dtype=bf16 sampling.backend=vllm data.prompts=rl.jsonl
    thinktune check-logprobs model.path=DIR threshold=0.05 sampling.n=4 sampling.max_new_tokens=256

GRPO takes the sampler's log-probs as the old policy's (``recipes/grpo.py``, ``build_rollouts``). Where the
sampler's numerics differ from the update's (bf16, fused decode kernels, CUDA graphs, vLLM), the first pass's
importance ratio is not 1 and the update clips or pushes tokens for that reason alone, with nothing in the
logs to say so. This verb builds what GRPO builds, on one process, and measures the gap:

1. the model as GRPO's policy (fp32 master weights, train mode) and the sampler from ``make_sampler`` on it
   (``sampling.*``: backend, decoder, temperature, ...), synced, then ``sampling.n`` completions of each prompt
   (``data.prompts``, a prompt JSONL, else ``PROMPTS`` below);
2. the same tokens scored by the update's forward, ``PromptCache.logps`` with ``share_prompt``, the run's
   autocast (``model.dtype``), ``model.compile`` and ``micro_batch_size`` as GRPO passes them, at the
   temperature the sampler's log-probs are under;
3. ``train.mismatch.mismatch_figures``: mean and max per-token |delta log-prob| and the k3 estimate of
   KL(sampler || trainer), printed as a table with a verdict on ``mismatch/abs_max`` against ``threshold``,
   and written to ``output_dir/report.json`` with the worst token.

Which sampler log-probs: ``Completion.sampling_logprobs`` (what GRPO uses) at ``sampling.temperature``, where the
backend gives them and sampling is not greedy; else ``Completion.logprobs``, the raw ones, at temperature 1
(vLLM, whose sampling log-probs GRPO then recomputes; greedy, whose sampling log-probs are 0). With top-p < 1,
top-k > 0 or min_new_tokens > 0 the sampling log-probs are renormalised after the filter, so part of the gap is
the filter, not numerics; GRPO's ratio sees that part too, and the verb says so when it applies.

Thresholds (on ``mismatch/abs_max``; ``threshold=`` overrides), ``DEFAULT_THRESHOLDS``:

- fp32: 1e-3. Both sides run the same float32 math in different orders (fused decode step against the
  unpadded training forward), so they differ by rounding: float32's epsilon (1.2e-7) times the logits'
  size and the depth, about 1e-6 on the tiny test models and 1e-5 on real ones. 1e-3 leaves a wide margin and
  is still far below a gap that moves a clipped ratio (exp(1e-3) = 1.001). A gap past it in fp32 is a bug (a
  wrong temperature, misaligned tokens, different weights), not rounding.
- bf16: log(1.2) = 0.18. A bf16 logit carries a relative error of 2^-9, so a logit of 20 is off by ~0.04
  before any layer's error adds to it: per-token gaps of 1e-2 are ordinary and their tail is wide. The line
  that matters to GRPO is its clip: with clip_low = 0.2 (GRPO's default), a token whose log-prob differs by more
  than log(1.2) has a first-pass ratio outside [0.8, 1.2], so the clip acts on numerics rather than learning.

Exit code: past the threshold the verb writes its report and then raises ``MismatchError``, a ``UserError``, so
the CLI prints one line and exits with code 2 like any other error the user can act on (a different dtype,
backend or decoder). ``report.json``'s ``passed`` tells a mismatch from a bad invocation, which also exits 2.

Departures from GRPO: one process, so the sampler reads the fp32 policy itself, as GRPO does on one rank (on N
ranks GRPO samples from a copy in the run's dtype: not checked here). LoRA and gradient checkpointing are
refused (see ``CheckLogprobsConfig``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from thinktune import runtime
from thinktune.config import SAMPLING_RENAMED, ModelConfig, SamplingConfig, save_config
from thinktune.data.chat import prompt_messages, render_prompt
from thinktune.data.io import write_json
from thinktune.errors import ConfigError, UserError
from thinktune.modeling import models
from thinktune.rollout.sampler import Completion
from thinktune.rollout.service import check_sampling, make_sampler
from thinktune.tasks.benchmarks import load_prompts
from thinktune.train.logprobs import PromptCache, length_sorted_chunks, right_padded
from thinktune.train.mismatch import FIGURES, mismatch_figures, worst_token

DEFAULT_THRESHOLDS = {"fp32": 1e-3, "bf16": math.log(1.2)}  # on mismatch/abs_max; the module docstring says why
VERDICT_FIGURE = "mismatch/abs_max"
# Without data.prompts: short prompts of the kind GRPO trains on, a math question and a word problem, so the
# completions cover digits, operators and prose.
PROMPTS = [
    "What is 2+3? Be brief.",
    "What is 7*8? Think step by step, then give the answer in \\boxed{}.",
    "A box holds 12 apples and 5 are eaten. How many are left?",
    "Solve for x: 3x + 4 = 19.",
]


class MismatchError(UserError):
    """The sampler's log-probs are past the threshold: one line from the CLI, exit code 2."""


@dataclass
class CheckDataConfig:
    prompts: str = ""  # a prompt JSONL ({"id", "prompt", ...}); "": the built-in PROMPTS
    limit: int = 0  # first N prompts only (0: all)


@dataclass
class CheckLogprobsConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: CheckDataConfig = field(default_factory=CheckDataConfig)
    # A few short completions per prompt: enough tokens (hundreds) for the max to reach the tail, seconds on a CPU.
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=2, max_new_tokens=64))
    threshold: float | None = None  # on mismatch/abs_max; None: DEFAULT_THRESHOLDS[model.dtype]
    micro_batch_size: int = 8  # completions per training forward, as GRPO's (padding changes the sums a little)
    share_prompt: bool = True  # as GRPO's: each prompt forwarded once (False: every prompt + completion whole)
    output_dir: str = "runs/check-logprobs"

    RENAMED: ClassVar[dict[str, str]] = SAMPLING_RENAMED | {"seed": "sampling.seed"}

    def __post_init__(self) -> None:
        if not self.model.path:
            raise ConfigError("model.path is empty; set it to the model to check (model.path=DIR)")
        # A fresh adapter adds nothing (B = 0) and a trained one is merged in a run's final/; checkpointing sends
        # GRPO's forward through the whole-sequence path, which share_prompt=false checks.
        if self.model.lora.r:
            raise ConfigError("model.lora.r > 0: check the merged checkpoint (a LoRA run's final/) instead")
        if self.model.gradient_checkpointing:
            raise ConfigError("model.gradient_checkpointing: GRPO then scores every prompt + completion whole; "
                              "check that path with share_prompt=false instead")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ConfigError(f"threshold={self.threshold} must be a finite number >= 0 (unset: the dtype's default)")
        if self.micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size={self.micro_batch_size} must be >= 1")
        if self.data.limit < 0:
            raise ConfigError(f"data.limit={self.data.limit} must be >= 0 (0: all)")

    def resolved_threshold(self) -> tuple[float, str]:
        """(the threshold, where it comes from: "given" or "default for <dtype>")."""
        if self.threshold is not None:
            return self.threshold, "given"
        return DEFAULT_THRESHOLDS[self.model.dtype], f"default for {self.model.dtype}"


def prompt_texts(cfg: CheckLogprobsConfig) -> list[str | list[dict]]:
    """The prompts to sample: ``data.prompts``' rows, else the built-in ones, the first ``data.limit``."""
    rows = [r["prompt"] for r in load_prompts(cfg.data.prompts)] if cfg.data.prompts else list(PROMPTS)
    return rows[:cfg.data.limit or None]


def sampler_side(flat: list[Completion], sampling: SamplingConfig) -> tuple[str, list[list[float]], float]:
    """Which of the sampler's log-probs to compare, their values per completion, and the temperature the trainer
    scores at to match them: ``sampling_logprobs`` at the sampling temperature where every completion has them
    and sampling is not greedy (what GRPO uses), else the raw ``logprobs`` at 1."""
    if not sampling.greedy and all(c.sampling_logprobs is not None for c in flat):
        return "sampling_logprobs", [list(c.sampling_logprobs) for c in flat], sampling.temperature
    return "logprobs", [list(c.logprobs) for c in flat], 1.0


@torch.no_grad()
def trainer_logps(model: torch.nn.Module, prompts: list[list[int]], prompt_index: list[int],
                  completions: list[list[int]], temperature: float, cfg: CheckLogprobsConfig, rt: runtime.Runtime,
                  pad_id: int) -> list[list[float]]:
    """Per completion, the log-probs of its tokens under GRPO's update forward: ``PromptCache`` built as
    ``recipes/grpo.py`` builds it (share_prompt, autocast to the run's dtype unless fp32, compile), completions in
    length-sorted micro-batches."""
    autocast = rt.dtype if rt.dtype != torch.float32 else None
    cache = PromptCache(model, prompts, pad_id, cfg.share_prompt, autocast, compile=cfg.model.compile)
    out: list[list[float]] = [[] for _ in completions]
    for idx in length_sorted_chunks([len(c) for c in completions], cfg.micro_batch_size):
        logps, _, _ = cache.logps([prompt_index[i] for i in idx], [completions[i] for i in idx],
                                  temperature)  # [B, T]
        rows = logps.float().cpu()
        for b, i in enumerate(idx):
            out[i] = rows[b, :len(completions[i])].tolist()
    return out


def compare(sampler: list[list[float]], trainer: list[list[float]]) -> tuple[dict[str, float], tuple[int, int]]:
    """The mismatch figures over every completion token, and (completion, position) of the worst one."""
    cpu = torch.device("cpu")
    s, mask = right_padded(sampler, 0.0, cpu, torch.float64)  # [N, T]
    t, _ = right_padded(trainer, 0.0, cpu, torch.float64)  # [N, T]
    return mismatch_figures(s, t, mask), worst_token(s, t, mask)


def format_table(report: dict) -> str:
    """The figures, the threshold on the verdict figure, and the verdict, as lines to print."""
    figs, limit = report["figures"], report["threshold"]
    lines = [f"{'figure':<20} {'value':>10}  threshold", f"{'-' * 20} {'-' * 10}  {'-' * 9}"]
    for name in FIGURES:
        bound = f"{limit:.3g} ({report['threshold_source']})" if name == VERDICT_FIGURE else ""
        lines.append(f"{name:<20} {figs[name]:>10.3g}  {bound}".rstrip())
    w = report["worst"]
    lines.append(f"worst token: prompt {w['prompt']} sample {w['sample']} position {w['position']} "
                 f"{w['token']!r}: sampler {w['sampler_logp']:.6g}, trainer {w['trainer_logp']:.6g}")
    verdict = "PASS" if report["passed"] else "FAIL"
    sign = "<=" if report["passed"] else ">"
    lines.append(f"verdict: {verdict} ({VERDICT_FIGURE} {figs[VERDICT_FIGURE]:.3g} {sign} {limit:.3g})")
    return "\n".join(lines)


def filter_note(source: str, sampling: SamplingConfig) -> str:
    """A warning where the sampler's log-probs are renormalised after a filter (part of the gap is the filter)."""
    filters = [f"{k}={v}" for k, v, on in (("top_p", sampling.top_p, sampling.top_p < 1),
                                           ("top_k", sampling.top_k, sampling.top_k > 0),
                                           ("min_new_tokens", sampling.min_new_tokens, sampling.min_new_tokens > 0))
               if on]
    if source != "sampling_logprobs" or not filters:
        return ""
    return (f"[check-logprobs] note: with {', '.join(filters)} the sampler's log-probs are renormalised after the "
            "filter; the trainer scores the unfiltered distribution, so part of the gap is the filter (GRPO's "
            "ratio sees it too)")


def run(cfg: CheckLogprobsConfig) -> dict:
    rt = runtime.init(cfg.model.dtype, cfg.sampling.seed)
    check_sampling(cfg.sampling, cfg.model)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tokenizer, _ = models.load_chat(cfg.model)
    pad_id = tokenizer.pad_token_id
    prompts = [render_prompt(tokenizer, prompt_messages(p)) for p in prompt_texts(cfg)]
    # GRPO's policy: fp32 master weights in train mode (lora.load_policy without LoRA); the update autocasts.
    model = models.load_model(cfg.model, tokenizer, rt.device, torch.float32).train()
    sampler = make_sampler(cfg.sampling, cfg.model, tokenizer, rt, model=model, longest_prompt=max(map(len, prompts)))
    sampler.sync_weights(model)
    groups = sampler.sample(prompts, cfg.sampling.params(), seed=cfg.sampling.seed, show_progress=False)
    sampler.release()
    pairs = [(p, j) for p, group in enumerate(groups) for j, c in enumerate(group) if c.token_ids]
    flat = [groups[p][j] for p, j in pairs]
    source, sampled, temperature = sampler_side(flat, cfg.sampling)
    scored = trainer_logps(model, prompts, [p for p, _ in pairs], [c.token_ids for c in flat], temperature, cfg,
                           rt, pad_id)
    figures, (row, col) = compare(sampled, scored)
    limit, limit_source = cfg.resolved_threshold()
    passed = figures[VERDICT_FIGURE] <= limit
    token = flat[row].token_ids[col]
    report = {"model": cfg.model.path, "dtype": cfg.model.dtype, "device": str(rt.device),
              "backend": sampler.backend, "compared": source, "temperature": temperature,
              "num_completions": len(flat), "num_tokens": sum(len(c.token_ids) for c in flat),
              "figures": figures, "threshold": limit, "threshold_source": limit_source,
              "verdict_figure": VERDICT_FIGURE, "passed": passed,
              "worst": {"prompt": pairs[row][0], "sample": pairs[row][1], "position": col, "token_id": token,
                        "token": tokenizer.decode([token]), "sampler_logp": sampled[row][col],
                        "trainer_logp": scored[row][col]}}
    write_json(out / "report.json", report)
    runtime.print0(f"[check-logprobs] {report['num_completions']} completions, {report['num_tokens']} tokens from "
                   f"{cfg.model.path}: {sampler.backend} sampler's {source} vs the training forward "
                   f"(PromptCache, {cfg.model.dtype}) at temperature {temperature:g}")
    if note := filter_note(source, cfg.sampling):
        runtime.print0(note)
    runtime.print0(format_table(report))
    runtime.print0(f"[check-logprobs] report: {out / 'report.json'}")
    if not passed:
        raise MismatchError(f"check-logprobs: {VERDICT_FIGURE} {figures[VERDICT_FIGURE]:.3g} is past the threshold "
                            f"{limit:.3g} ({limit_source}); the sampler's log-probs disagree with the training "
                            f"forward's (details: {out / 'report.json'})")
    return report
