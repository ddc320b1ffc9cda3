"""Evaluation the way Phi-4-reasoning reports it: N samples per problem, pass@1 mean +- std across runs.

Run:
    thinktune evaluate --config configs/demo/eval.yaml model.path=runs/demo/sft/final
    thinktune evaluate model.path=DIR data.benchmark=aime25 data.path=aime25.jsonl samples=50

Run j is the j-th sample of every problem; pass@1 is the mean of the N run accuracies and the std is taken
across them (the paper's "mean +- std over 50 runs" for AIME 2025). Also maj@N, best-of-N, worst-of-N,
unbiased pass@k, mean response length, and the share of responses with a well-formed think block and an
answer. Writes ``report.json``, ``report.md``, ``samples.jsonl`` and ``plots/runs.png`` (the distribution
of run accuracies).

Sampling runs on vLLM where it is installed and a GPU exists (``rollout_backend=auto``; the paper's 32k-token
budget needs its paged cache on real models), else on thinktune's sampler.

Departures from the paper: the paper samples Phi models at temperature 0.8 with a top-p it does not state
(RECIPE.md section 4.1); we default to 0.8 and top-p 0.95, the values of the model card's example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from thinktune import runtime
from thinktune.config import ModelConfig, save_config
from thinktune.data.chat import prompt_messages, render_prompt
from thinktune.data.io import write_json, write_jsonl
from thinktune.errors import ConfigError
from thinktune.evaluation.metrics import per_run_accuracy, summarize
from thinktune.evaluation.report import eval_markdown, plot_run_accuracies
from thinktune.modeling import models
from thinktune.rewards.verify import extract_answer, has_valid_think, is_correct_groups
from thinktune.rollout.sampler import SamplingParams, sample
from thinktune.rollout.vllm_backend import check_backend, check_vocab, engine_for, resolve_backend
from thinktune.tasks.benchmarks import load_benchmark, load_prompts


@dataclass
class EvalDataConfig:
    prompts: str = ""  # a prompt JSONL: {"id", "prompt", "answer", "difficulty"?, "mode"?}
    benchmark: str = ""  # or a named benchmark: aime24, aime25, math500, gsm8k, gpqa-diamond
    path: str = ""  # local file of the named benchmark (else it is loaded by hub id)
    limit: int = 0  # first N problems only (0: all)
    group_by: str = "difficulty"  # a row field to break results down by ("" for none)


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    samples: int = 5  # N samples per problem = N runs
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    greedy: bool = False
    max_new_tokens: int = 32768
    batch_size: int = 64  # sequences per generation batch (thinktune's sampler; vLLM schedules its own)
    rollout_backend: str = "auto"  # auto: vLLM where it is installed and a GPU exists, else thinktune's sampler
    vllm_gpu_memory_utilization: float = 0.9  # vLLM's share of the GPU (nothing else runs beside it here)
    ks: list[int] = field(default_factory=lambda: [1])  # unbiased pass@k values to report
    seed: int = 0
    label: str = ""  # the name of this model in comparison tables (default: the output dir's name)
    output_dir: str = "runs/eval"

    def __post_init__(self) -> None:
        self.model.check_sampling_only("evaluate")
        if bool(self.data.prompts) == bool(self.data.benchmark):
            raise ConfigError("set exactly one of data.prompts (a prompt JSONL) or data.benchmark (a name)")
        if self.samples < 1:
            raise ConfigError(f"samples={self.samples} must be >= 1")
        if bad := [k for k in self.ks if not 1 <= k <= self.samples]:
            raise ConfigError(f"ks={bad} must lie in [1, samples={self.samples}]")
        SamplingParams(n=self.samples, temperature=self.temperature, top_p=self.top_p, greedy=self.greedy)
        check_backend(self.rollout_backend)


def load_rows(cfg: EvalConfig) -> list[dict]:
    limit = cfg.data.limit or None
    if cfg.data.prompts:
        return load_prompts(cfg.data.prompts, limit=limit)
    return load_benchmark(cfg.data.benchmark, path=cfg.data.path or None, limit=limit)


def score(rows: list[dict], completions: list[list], tokenizer, prompts: list[list[int]]) -> tuple[dict, list[dict]]:
    """Verify every completion; returns the per-problem matrices for ``summarize`` and rollout records (with
    each prompt as the model saw it, chat template and system prompt included)."""
    mats: dict[str, list[list]] = {"correct": [], "answers": [], "lengths": [], "well_formed": [], "finished": []}
    records = []
    verdicts = is_correct_groups([[c.text for c in outs] for outs in completions], [str(r["answer"]) for r in rows],
                                 [r.get("mode", "math") for r in rows])
    for row, outs, correct, prompt in zip(rows, completions, verdicts, prompts, strict=True):
        rendered = tokenizer.decode(prompt)
        mats["correct"].append(correct)
        mats["answers"].append([extract_answer(c.text) for c in outs])
        mats["lengths"].append([len(c.token_ids) for c in outs])
        mats["well_formed"].append([has_valid_think(c.text) for c in outs])
        mats["finished"].append([c.finished for c in outs])
        records += [{"prompt_id": row["id"], "sample": j, "prompt": rendered, "completion": c.text, "num_tokens": len(c.token_ids),
                     "finished": c.finished, "correct": ok, "answer": row["answer"]}
                    for j, (c, ok) in enumerate(zip(outs, correct, strict=True))]
    return mats, records


def summarize_groups(rows: list[dict], mats: dict, cfg: EvalConfig) -> dict[str, dict]:
    """Overall metrics plus one entry per value of ``data.group_by`` (e.g. per difficulty level)."""
    groups = {"all": list(range(len(rows)))}
    if cfg.data.group_by:
        for i, row in enumerate(rows):
            if cfg.data.group_by in row:
                groups.setdefault(f"{cfg.data.group_by}={row[cfg.data.group_by]}", []).append(i)
    return {name: summarize(**{k: [v[i] for i in idx] for k, v in mats.items()}, ks=cfg.ks)
            for name, idx in sorted(groups.items(), key=lambda kv: (kv[0] != "all", kv[0]))}


def run(cfg: EvalConfig) -> dict:
    rt = runtime.init(cfg.model.dtype, cfg.seed)
    backend = resolve_backend(cfg.rollout_backend)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tokenizer = models.load_tokenizer(cfg.model)
    rows = load_rows(cfg)
    prompts = [render_prompt(tokenizer, prompt_messages(r["prompt"])) for r in rows]
    params = SamplingParams(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy)
    label = cfg.label or out.name
    tqdm.write(f"[eval] {label}: {len(rows)} problems x {cfg.samples} samples from {cfg.model.path} on {backend}")
    if backend == "vllm":  # the engine loads the weights itself: no HF copy beside it
        check_vocab(cfg.model.path, len(tokenizer), exact=False)
        engine = engine_for(cfg.model.path, tokenizer, cfg.model.dtype, cfg.vllm_gpu_memory_utilization,
                            max(map(len, prompts)) + cfg.max_new_tokens)
        completions = engine.sample(prompts, params, seed=cfg.seed)
    else:
        model = models.load_model(cfg.model, tokenizer, rt.device, rt.dtype)
        with torch.inference_mode():
            completions = sample(model, tokenizer, prompts, params, seed=cfg.seed, batch_size=cfg.batch_size)
    mats, records = score(rows, completions, tokenizer, prompts)
    groups = summarize_groups(rows, mats, cfg)
    report = {"label": label, "model": cfg.model.path, "source": cfg.data.prompts or cfg.data.benchmark,
              "sampling": vars(params), "problem_ids": [r["id"] for r in rows], "groups": groups,
              "run_accuracies": per_run_accuracy(mats["correct"])}
    write_jsonl(out / "samples.jsonl", records)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(eval_markdown(report))
    plot_run_accuracies(report, out / "plots" / "runs.png")
    a = groups["all"]
    tqdm.write(f"[eval] {label}: pass@1 {a['pass@1']:.1f} +- {a['pass@1_std']:.1f}  "
               f"maj@{cfg.samples} {a[f'maj@{cfg.samples}']:.1f}  "
               f"format ok {a['format_ok']:.1f}%  mean length {a['mean_length']:.0f}")
    return report

