"""Select teachable prompts: the student's pass rate over k samples, kept inside a band.

Run:
    thinktune select model.path=runs/base/final prompts=candidates.jsonl k=8 output_dir=runs/select
    thinktune select model.path=... prompts=... pass_rate_above=-1 pass_rate_at_most=0.25   # unsolved too

For each candidate prompt the student samples ``k`` completions, each verified against the prompt's
answer (``rewards.verify``); the pass rate is the share correct. Prompts with
``pass_rate_above < pass rate <= pass_rate_at_most`` are kept: by default those the student solves
sometimes but at most half the time. Estimates are saved in chunks of ``chunk_prompts`` as they finish
(``estimates_cache.jsonl``), so a killed run resumes with the next chunk.

Writes to ``output_dir``: ``selected.jsonl`` (the kept prompt rows with ``pass_rate`` and ``correct``,
the number of correct samples), ``estimates.jsonl`` (every candidate's estimate, to choose another band
without sampling again), ``summary.json``, ``report.md`` and ``plots/pass_rate.png`` (a histogram of
pass rates with the band marked).

Departures from the paper: Phi-4-reasoning estimated difficulty as the agreement of weaker models with a
strong model's plurality answer where no verified answer existed, plus LLM rubrics (docs/recipe.md §1.1); we
need a reference answer per prompt and use the student's own samples. Its thresholds are not published;
the band is a config.
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
from thinktune.curation.cache import ReplyCache, cache_key  # noqa: E402
from thinktune.curation.passrate import in_band, load_student, pass_rate, sample_rows, verify_groups  # noqa: E402
from thinktune.data.io import write_json, write_jsonl  # noqa: E402
from thinktune.errors import ConfigError  # noqa: E402
from thinktune.tasks.benchmarks import load_prompts  # noqa: E402
from thinktune.tracking import save_figure  # noqa: E402


@dataclass
class SelectConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the student
    prompts: str = ""  # candidate prompt JSONL: {"id", "prompt", "answer", "mode"?}
    difficulties: list[int] = field(default_factory=list)  # keep these levels only (empty: all)
    limit: int = 0  # first N candidates (0: all)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # n: samples per prompt
    pass_rate_above: float = 0.0  # keep pass rates > this (-1 also keeps never-solved prompts) ...
    pass_rate_at_most: float = 0.5  # ... and <= this
    chunk_prompts: int = 256  # prompts sampled between saves of the estimates
    output_dir: str = "runs/select"

    RENAMED: ClassVar[dict[str, str]] = SAMPLING_RENAMED | {"seed": "sampling.seed"}

    def __post_init__(self) -> None:
        self.model.check_sampling_only("select")
        if not self.prompts:
            raise ConfigError("prompts is empty; give the candidate prompt JSONL (prompts=FILE)")
        if not self.model.path:
            raise ConfigError("model.path is empty; set the student whose pass rates to estimate")
        if self.chunk_prompts < 1:
            raise ConfigError("chunk_prompts must be >= 1")
        if not self.pass_rate_above < self.pass_rate_at_most:
            raise ConfigError(f"the band pass_rate_above={self.pass_rate_above} < pass rate <= "
                              f"pass_rate_at_most={self.pass_rate_at_most} is empty; make the first smaller")


def estimate(cfg: SelectConfig, rows: list[dict], cache: ReplyCache, keys: list[str]) -> None:
    """Sample and verify the rows whose estimate is not cached, a chunk at a time, caching each chunk."""
    todo = [i for i, key in enumerate(keys) if key not in cache]
    if not todo:
        return
    sampler, tokenizer = load_student(cfg.model, cfg.sampling)
    params = cfg.sampling.params()
    for start in range(0, len(todo), cfg.chunk_prompts):
        chunk = [rows[i] for i in todo[start:start + cfg.chunk_prompts]]
        # The seed is the chunk's first row number, so a resumed run samples each chunk as the first did.
        groups = sample_rows(sampler, tokenizer, chunk, params, cfg.sampling.seed + todo[start])
        verdicts = verify_groups(chunk, [[c.text for c in g] for g in groups])
        for i, correct in zip(todo[start:start + cfg.chunk_prompts], verdicts, strict=True):
            cache.put(keys[i], {"id": rows[i]["id"], "correct": correct})
        tqdm.write(f"[select] estimated {min(start + cfg.chunk_prompts, len(todo))}/{len(todo)} prompts")


def plot_pass_rates(histogram: dict[str, int], kept: list[bool], out: Path) -> None:
    """Prompts per pass rate (one bar per number of correct samples), the bars inside the band in blue."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(histogram), list(histogram.values()), color=["#4477aa" if k else "#bbbbbb" for k in kept])
    ax.set_xlabel("pass rate (correct of k samples); blue: kept")
    ax.set_ylabel("prompts")
    save_figure(fig, out)


def run(cfg: SelectConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rows = load_prompts(cfg.prompts, limit=cfg.limit or None, difficulties=cfg.difficulties)
    cache = ReplyCache(out / "estimates_cache.jsonl")
    # The estimate depends on the student, the prompt and how it is sampled: all of them are in the key.
    s = cfg.sampling  # the knobs before top_k, min_new_tokens and stop join only when set: older caches stay valid
    how = [str(Path(cfg.model.path).resolve()), cfg.model.chat_template, cfg.model.system_prompt, s.n, s.temperature,
           s.top_p, s.max_new_tokens, s.seed, *([s.top_k, s.min_new_tokens, s.stop] if s.top_k or s.min_new_tokens
                                                  or s.stop else [])]
    keys = [cache_key(*how, r["id"], r["prompt"]) for r in rows]
    estimate(cfg, rows, cache, keys)
    estimates = [{**r, "pass_rate": pass_rate(cache.get(key)["correct"]), "correct": sum(cache.get(key)["correct"])}
                 for r, key in zip(rows, keys, strict=True)]
    kept = [e for e in estimates if in_band(e["pass_rate"], cfg.pass_rate_above, cfg.pass_rate_at_most)]
    write_jsonl(out / "estimates.jsonl", estimates)
    write_jsonl(out / "selected.jsonl", kept)
    rates = [e["pass_rate"] for e in estimates]
    histogram = {f"{j}/{cfg.sampling.n}": sum(e["correct"] == j for e in estimates) for j in range(cfg.sampling.n + 1)}
    summary = {"candidates": len(rows), "kept": len(kept), "k": cfg.sampling.n, "mean_pass_rate": sum(rates) / len(rates),
               "band": [cfg.pass_rate_above, cfg.pass_rate_at_most], "histogram": histogram}
    write_json(out / "summary.json", summary)
    lines = ["# Teachable prompts", "",
             f"{len(rows)} candidates, {cfg.sampling.n} samples each from {cfg.model.path}; kept {len(kept)} with "
             f"{cfg.pass_rate_above:g} < pass rate <= {cfg.pass_rate_at_most:g}.", "",
             "| correct of k | prompts | kept |", "|---|---|---|"]
    band = [in_band(j / cfg.sampling.n, cfg.pass_rate_above, cfg.pass_rate_at_most) for j in range(cfg.sampling.n + 1)]
    lines += [f"| {label} | {n} | {'yes' if inside else ''} |"
              for (label, n), inside in zip(histogram.items(), band, strict=True)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_pass_rates(histogram, band, out / "plots" / "pass_rate.png")
    tqdm.write("\n".join(lines[2:]))
    if not kept:
        tqdm.write("WARNING: no prompt is inside the band; widen it or choose other candidates")
    return summary
