"""Evaluation the way Phi-4-reasoning reports it: N samples per problem, pass@1 mean +- std across runs.

Run:
    thinktune evaluate --config configs/demo/eval.yaml model.path=runs/demo/sft/final
    thinktune evaluate model.path=DIR data.benchmark=aime25 data.path=aime25.jsonl sampling.n=50

Run j is the j-th sample of every problem; pass@1 is the mean of the N run accuracies and the std is taken
across them (the paper's "mean +- std over 50 runs" for AIME 2025). Also maj@N, best-of-N, worst-of-N,
unbiased pass@k, mean response length, and the share of responses with a well-formed think block and an
answer. Writes ``report.json``, ``report.md``, ``samples.jsonl`` and ``plots/runs.png`` (the distribution
of run accuracies).

Sampling runs on vLLM where it is installed and a GPU exists (``sampling.backend=auto``; the paper's 32k-token
budget needs its paged cache on real models), else on thinktune's sampler (``thinktune.rollout.service``).

Each problem is wrapped in a prompt template (``data.template``; ``tasks/benchmarks.py`` PROMPT_TEMPLATES) before
the chat format adds the system prompt. Results are broken down by the benchmark's own fields (MATH-500: level and
subject) or ``data.group_by``.

Departures from the paper: the paper samples Phi models at temperature 0.8 with a top-p it does not state
(docs/recipe.md section 4.1); we default to 0.8 and top-p 0.95, the values of the model card's example. Neither
Phi report prints its evaluation prompt in the sources we read: AIME defaults to the AIME template of Eureka ML
Insights (the harness the Phi-4-reasoning report names), MATH-500 and GSM8K to DeepSeek-R1's boxed directive
(docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tqdm import tqdm

from thinktune import runtime
from thinktune.config import SAMPLING_RENAMED, ModelConfig, SamplingConfig, save_config
from thinktune.data.chat import prompt_messages, render_prompt
from thinktune.data.io import write_json, write_jsonl
from thinktune.errors import ConfigError
from thinktune.evaluation import scoring
from thinktune.evaluation.metrics import per_run_accuracy
from thinktune.evaluation.report import eval_markdown, plot_run_accuracies
from thinktune.evaluation.scoring import score
from thinktune.modeling import models
from thinktune.rollout.service import check_sampling, make_sampler
from thinktune.tasks.benchmarks import (
    BENCHMARKS,
    apply_template,
    load_benchmark,
    load_prompts,
    resolve_template,
)


@dataclass
class EvalDataConfig:
    prompts: str = ""  # a prompt JSONL: {"id", "prompt", "answer", "difficulty"?, "mode"?}
    benchmark: str = ""  # or a named benchmark: aime24, aime25, math500, gsm8k, gpqa-diamond
    path: str = ""  # local file of the named benchmark (else it is loaded by hub id)
    limit: int = 0  # first N problems only (0: all)
    # The user turn around each problem: "" for the benchmark's default (none for a prompt JSONL), a name in
    # tasks/benchmarks.py PROMPT_TEMPLATES (e.g. qwen-boxed, eureka-aime, lighteval-math), or a custom string
    # holding {problem}. docs/evaluation.md lists them with their sources.
    template: str = ""
    # Row fields to break results down by, e.g. [level] or level,subject ([] for none). Unset: the benchmark's
    # own (math500: level and subject), difficulty for a prompt JSONL.
    group_by: list[str] | None = None


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    # n: N samples per problem = N runs; the paper's temperature 0.8, and the model card's top-p 0.95
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(
        n=5, temperature=0.8, top_p=0.95, max_new_tokens=32768))
    ks: list[int] = field(default_factory=lambda: [1])  # unbiased pass@k values to report
    label: str = ""  # the name of this model in comparison tables (default: the output dir's name)
    output_dir: str = "runs/eval"

    RENAMED: ClassVar[dict[str, str]] = SAMPLING_RENAMED | {"seed": "sampling.seed"}

    def __post_init__(self) -> None:
        self.model.check_sampling_only("evaluate")
        if bool(self.data.prompts) == bool(self.data.benchmark):
            raise ConfigError("set exactly one of data.prompts (a prompt JSONL) or data.benchmark (a name)")
        if bad := [k for k in self.ks if not 1 <= k <= self.sampling.n]:
            raise ConfigError(f"ks={bad} must lie in [1, sampling.n={self.sampling.n}]")
        resolve_template(self.data.template, self.data.benchmark)  # an unknown name fails here, before loading


def group_fields(cfg: EvalConfig) -> list[str]:
    """The row fields results are broken down by: ``data.group_by`` if set, else the source's own."""
    if cfg.data.group_by is not None:
        return cfg.data.group_by
    return list(BENCHMARKS[cfg.data.benchmark].group_by) if cfg.data.benchmark else ["difficulty"]


def load_rows(cfg: EvalConfig) -> list[dict]:
    limit = cfg.data.limit or None
    if cfg.data.prompts:
        return load_prompts(cfg.data.prompts, limit=limit)
    return load_benchmark(cfg.data.benchmark, path=cfg.data.path or None, limit=limit)


def summarize_groups(rows: list[dict], mats: dict, cfg: EvalConfig) -> dict[str, dict]:
    """Overall metrics plus one entry per value of each field of ``group_fields`` ("level=3", ...)."""
    return scoring.summarize_groups(rows, mats, group_fields(cfg), cfg.ks)


def run(cfg: EvalConfig) -> dict:
    rt = runtime.init(cfg.model.dtype, cfg.sampling.seed)
    check_sampling(cfg.sampling, cfg.model)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tokenizer = models.load_tokenizer(cfg.model)
    rows = load_rows(cfg)
    template_name, template = resolve_template(cfg.data.template, cfg.data.benchmark)
    tqdm.write(f"[eval] prompt template {template_name}: {template!r}")
    prompts = [render_prompt(tokenizer, prompt_messages(apply_template(r["prompt"], template))) for r in rows]
    params = cfg.sampling.params()
    label = cfg.label or out.name
    sampler = make_sampler(cfg.sampling, cfg.model, tokenizer, rt, longest_prompt=max(map(len, prompts)))
    tqdm.write(f"[eval] {label}: {len(rows)} problems x {params.n} samples from {cfg.model.path} on "
               f"{sampler.backend}")
    completions = sampler.sample(prompts, params, seed=cfg.sampling.seed)
    mats, records = score(rows, completions, tokenizer, prompts)
    groups = summarize_groups(rows, mats, cfg)
    report = {"label": label, "model": cfg.model.path, "source": cfg.data.prompts or cfg.data.benchmark,
              "template": {"name": template_name, "text": template}, "sampling": vars(params),
              "problem_ids": [r["id"] for r in rows], "groups": groups,
              "run_accuracies": per_run_accuracy(mats["correct"])}
    write_jsonl(out / "samples.jsonl", records)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(eval_markdown(report))
    plot_run_accuracies(report, out / "plots" / "runs.png")
    a = groups["all"]
    tqdm.write(f"[eval] {label}: pass@1 {a['pass@1']:.1f} +- {a['pass@1_std']:.1f}  "
               f"maj@{params.n} {a[f'maj@{params.n}']:.1f}  "
               f"format ok {a['format_ok']:.1f}%  mean length {a['mean_length']:.0f}")
    return report

