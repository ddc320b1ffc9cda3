"""Select RL prompts whose responses have uniform lengths (Phi-4-mini-reasoning's prompt optimisation).

Run:
    thinktune select-prompts --config configs/demo/select_prompts.yaml model.path=runs/demo/dpo/final prompts=train.jsonl

Samples k responses per candidate prompt with the current model, measures the coefficient of variation of
their lengths (``thinktune.curation.lengths``), keeps the ``keep_fraction`` of prompts that vary least,
and writes ``selected.jsonl`` (the kept prompt rows, with their length statistics and sampled pass rate),
``report.md`` with the length spread before and after, and ``plots/length_cv.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from thinktune.config import SAMPLING_RENAMED, ModelConfig, SamplingConfig, save_config  # noqa: E402
from thinktune.curation.lengths import length_cv, most_uniform, spread  # noqa: E402
from thinktune.curation.passrate import load_student, pass_rate, sample_rows, verify_groups  # noqa: E402
from thinktune.data.io import write_json, write_jsonl  # noqa: E402
from thinktune.errors import ConfigError  # noqa: E402
from thinktune.tasks.benchmarks import load_prompts  # noqa: E402
from thinktune.tracking import save_figure  # noqa: E402


@dataclass
class SelectPromptsConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: str = ""  # candidate prompt JSONL
    difficulties: list[int] = field(default_factory=list)  # keep these levels only (empty: all)
    limit: int = 0  # first N candidates (0: all)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # n: responses sampled per prompt
    keep_fraction: float = 0.5  # share of candidates kept, most uniform first
    output_dir: str = "runs/select-prompts"

    RENAMED: ClassVar[dict[str, str]] = SAMPLING_RENAMED | {"seed": "sampling.seed"}

    def __post_init__(self) -> None:
        self.model.check_sampling_only("select-prompts")
        if not self.prompts:
            raise ConfigError("prompts is empty; give the candidate prompt JSONL (prompts=FILE)")
        if self.sampling.n < 2:
            raise ConfigError("sampling.n must be >= 2: a length spread needs two responses")
        if not 0 < self.keep_fraction <= 1:
            raise ConfigError(f"keep_fraction={self.keep_fraction} must be in (0, 1]")


def plot_cv(cvs: list[float], kept: list[int], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = 30
    ax.hist(cvs, bins=bins, color="#bbbbbb", label=f"all ({len(cvs)})")
    ax.hist([cvs[i] for i in kept], bins=bins, range=(min(cvs), max(cvs)), color="#4477aa",
            label=f"kept ({len(kept)})")
    ax.set_xlabel("coefficient of variation of response length")
    ax.set_ylabel("prompts")
    ax.legend()
    save_figure(fig, out)


def run(cfg: SelectPromptsConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rows = load_prompts(cfg.prompts, limit=cfg.limit or None, difficulties=cfg.difficulties)
    sampler, tokenizer = load_student(cfg.model, cfg.sampling)
    groups = sample_rows(sampler, tokenizer, rows, cfg.sampling.params(), cfg.sampling.seed)

    lengths = [[len(c.token_ids) for c in g] for g in groups]
    cvs = [length_cv(g) for g in lengths]
    kept = most_uniform(cvs, cfg.keep_fraction)
    pass_rates = [pass_rate(c) for c in verify_groups(rows, [[c.text for c in g] for g in groups])]
    write_jsonl(out / "selected.jsonl", (
        {**rows[i], "length_mean": sum(lengths[i]) / cfg.sampling.n, "length_cv": cvs[i], "pass_rate": pass_rates[i]}
        for i in kept))
    before, after = spread(lengths), spread([lengths[i] for i in kept])
    summary = {"candidates": len(rows), "kept": len(kept), "before": before, "after": after,
               "pass_rate_before": sum(pass_rates) / len(rows),
               "pass_rate_after": sum(pass_rates[i] for i in kept) / len(kept)}
    write_json(out / "summary.json", summary)
    lines = ["# Prompt selection for uniform response lengths", "",
             f"{len(rows)} candidates, {cfg.sampling.n} responses each; kept {len(kept)} ({cfg.keep_fraction:.0%}) with "
             "the lowest coefficient of variation (CV) of response length.", "",
             "| | prompts | mean CV | mean std (tokens) | mean max/min | mean pass rate |", "|---|---|---|---|---|---|"]
    for name, n, s, pr in (("before", len(rows), before, summary["pass_rate_before"]),
                           ("after", len(kept), after, summary["pass_rate_after"])):
        lines.append(f"| {name} | {n} | {s['mean_cv']:.3f} | {s['mean_std']:.1f} | {s['mean_max_over_min']:.2f} | "
                     f"{pr:.2f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_cv(cvs, kept, out / "plots" / "length_cv.png")
    tqdm.write("\n".join(lines[-4:]))
    return summary
