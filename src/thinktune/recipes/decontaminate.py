"""Drop training rows that overlap an evaluation set (word n-grams), and report which matched which.

Run:
    thinktune decontaminate data=runs/distill/sft.jsonl \\
        eval_sets=[aime24=aime24.jsonl,math500=math500.jsonl,gsm8k=gsm8k_test.jsonl,heldout.jsonl]

``data`` is a JSONL of prompt rows (``prompt``) or SFT rows (``messages``); every text field of a row is
checked. Each entry of ``eval_sets`` is ``BENCHMARK=FILE``, a local file in that benchmark's Hugging Face
schema (``aime24``, ``aime25``, ``math500``, ``gsm8k``, ``gpqa-diamond``; see ``tasks/benchmarks.py``),
or just ``FILE``, a thinktune prompt JSONL. A row is dropped when ``ngram`` consecutive normalised words
(lowercase, punctuation removed, whitespace collapsed: ``curation/decontam.py``) also occur in an
evaluation item, or, for an item shorter than ``ngram`` words, when the row contains the item's whole
normalised text. Benchmark items are the problems alone, without the evaluation prompt template.

Writes to ``output_dir``: ``clean.jsonl`` (the rows kept, unchanged), ``removed.jsonl`` (the rows
dropped), ``matches.jsonl`` (one line per (row, evaluation item) pair: the row's number and id, the
evaluation set and item id, and the first shared n-gram, or the whole short item), ``report.md`` and
``summary.json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from thinktune.config import save_config
from thinktune.curation.decontam import EvalItem, NgramIndex, row_text
from thinktune.data.chat import prompt_messages
from thinktune.data.io import read_jsonl, write_json, write_jsonl
from thinktune.errors import ConfigError, DataError
from thinktune.tasks.benchmarks import BENCHMARKS, load_benchmark, load_prompts
from thinktune.tracking import progress

REPORT_ROWS = 200  # matches listed in report.md; matches.jsonl has them all


@dataclass
class DecontaminateConfig:
    data: str = ""  # training JSONL: prompt rows or SFT rows
    eval_sets: list[str] = field(default_factory=list)  # "BENCHMARK=FILE" or "FILE" (thinktune prompt JSONL)
    ngram: int = 13  # words in a shared run that count as contamination
    output_dir: str = "runs/decontaminate"

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data is empty; give the training JSONL to clean (data=FILE)")
        if not self.eval_sets:
            raise ConfigError("eval_sets is empty; give evaluation files, e.g. eval_sets=[math500=math500.jsonl]")
        if self.ngram < 1:
            raise ConfigError(f"ngram={self.ngram} must be >= 1 (13 is the usual choice)")


def load_eval_items(spec: str) -> list[EvalItem]:
    """The items of one ``eval_sets`` entry: ``BENCHMARK=FILE`` or a thinktune prompt JSONL ``FILE``."""
    name, sep, path = spec.partition("=")
    if sep:
        if name not in BENCHMARKS:
            raise ConfigError(f"eval_sets entry {spec!r}: unknown benchmark {name!r}; use one of "
                              f"{', '.join(BENCHMARKS)}, or give a thinktune prompt JSONL without a name")
        rows = load_benchmark(name, path)
    else:
        rows, name = load_prompts(spec), Path(spec).stem
    return [EvalItem(name, r["id"], "\n".join(m["content"] for m in prompt_messages(r["prompt"]))) for r in rows]


def find_matches(rows: list[dict], index: NgramIndex, path: str) -> list[dict]:
    """One record per (training row, evaluation item) that share an n-gram."""
    matches = []
    bar = progress(len(rows), desc="decontaminate")
    for i, row in enumerate(rows, start=1):
        bar.update(1)
        text = row_text(row)
        if text is None:
            raise DataError(f"{path}: row {i}: no 'prompt' or 'messages' field to check")
        for m in index.matches(text):
            matches.append({"row": i, "id": row.get("id"), "eval_set": m.source, "eval_id": m.eval_id,
                            "ngram": m.ngram})
    bar.close()
    return matches


def report(cfg: DecontaminateConfig, summary: dict, matches: list[dict]) -> str:
    lines = [f"# Decontamination of {cfg.data}", "",
             f"{summary['rows']} rows; {summary['removed']} removed for sharing a {cfg.ngram}-word run with an "
             f"evaluation item (or holding the whole of an item shorter than {cfg.ngram} words), "
             f"{summary['kept']} kept. Words are lowercased, with punctuation removed and whitespace collapsed.", "",
             f"| evaluation set | items | under {cfg.ngram} words (checked whole) | rows matching |",
             "|---|---|---|---|"]
    for name, s in summary["eval_sets"].items():
        lines.append(f"| {name} | {s['items']} | {s['short']} | {s['rows_matching']} |")
    if matches:
        lines += ["", "## Matches", "", "| row | id | evaluation set | item | first shared n-gram |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m['row']} | {m['id']} | {m['eval_set']} | {m['eval_id']} | {m['ngram']} |"
                  for m in matches[:REPORT_ROWS]]
        if len(matches) > REPORT_ROWS:
            lines.append(f"\n{len(matches) - REPORT_ROWS} more in matches.jsonl")
    return "\n".join(lines) + "\n"


def run(cfg: DecontaminateConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    items = [item for spec in cfg.eval_sets for item in load_eval_items(spec)]
    index = NgramIndex(items, cfg.ngram)
    rows = read_jsonl(cfg.data)
    matches = find_matches(rows, index, cfg.data)
    dirty = {m["row"] for m in matches}
    write_jsonl(out / "clean.jsonl", (r for i, r in enumerate(rows, start=1) if i not in dirty))
    write_jsonl(out / "removed.jsonl", (r for i, r in enumerate(rows, start=1) if i in dirty))
    write_jsonl(out / "matches.jsonl", matches)
    per_set = Counter(item.source for item in items)
    short = Counter(item.source for item in index.short)
    matching = {name: len({m["row"] for m in matches if m["eval_set"] == name}) for name in per_set}
    summary = {"rows": len(rows), "kept": len(rows) - len(dirty), "removed": len(dirty), "ngram": cfg.ngram,
               "eval_sets": {name: {"items": n, "short": short[name], "rows_matching": matching[name]}
                             for name, n in per_set.items()}}
    write_json(out / "summary.json", summary)
    text = report(cfg, summary, matches)
    (out / "report.md").write_text(text)
    tqdm.write("\n".join(text.splitlines()[2:6 + len(per_set)]))
    if index.short:
        tqdm.write(f"{len(index.short)} evaluation items have fewer than {cfg.ngram} words: a row holding the "
                   "whole of one counts as a match (see the matches in report.md)")
    return summary
