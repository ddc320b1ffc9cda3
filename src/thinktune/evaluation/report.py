"""Readable results: evaluation tables, stage-by-stage comparisons, and the run-accuracy plot.

A comparison puts each evaluated model (a pipeline stage or any checkpoint) in a row, with pass@1 mean +- std
overall and per group, and the change from the row before. A change is flagged as a drop when pass@1 falls
by more than the two rows' combined std (sqrt(std_a^2 + std_b^2)): small SFT sets can make a model worse,
and the table must say so rather than leave it to the reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from thinktune.errors import UserError  # noqa: E402
from thinktune.evaluation.effects import mean_change, over_seeds, paired_bootstrap, problem_accuracy  # noqa: E402
from thinktune.evaluation.metrics import MAJORITY_RULE, combined_std  # noqa: E402


def load_report(path: str | Path) -> dict:
    """An evaluation ``report.json``, given the file or the evaluation's output directory."""
    path = Path(path)
    path = path / "report.json" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path}: no evaluation report here; run `thinktune evaluate` with output_dir there")
    return json.loads(path.read_text())


def _at_n(m: dict, name: str) -> float:
    """``maj@N``, ``best@N`` or ``worst@N`` of a summary, whatever its N."""
    return m[f"{name}@{int(m['samples_per_problem'])}"]


def _cell(m: dict) -> str:
    return f"{m['pass@1']:.1f} ± {m['pass@1_std']:.1f}"


def eval_markdown(report: dict) -> str:
    """One evaluation as a markdown table: one row per group."""
    s = report["sampling"]
    decoding = "greedy" if s["greedy"] else f"T={s['temperature']}, top-p={s['top_p']}"
    lines = [f"# {report['label']}", "",
             f"Model `{report['model']}` on `{report['source']}`: {s['n']} samples per problem, {decoding}, "
             f"max {s['max_new_tokens']} new tokens.", "",
             f"| group | problems | pass@1 (mean ± std over runs) | maj@{s['n']} | best@{s['n']} | worst@{s['n']} "
             "| format ok % "
             "| answered % | truncated % | mean length |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["groups"].items():
        lines.append(f"| {name} | {int(m['num_problems'])} | {_cell(m)} | {_at_n(m, 'maj'):.1f} | "
                     f"{_at_n(m, 'best'):.1f} | {_at_n(m, 'worst'):.1f} | {m['format_ok']:.1f} | {m['answered']:.1f} | "
                     f"{m.get('truncated', 0.0):.1f} | {m['mean_length']:.1f} |")
    extra = [k for k in report["groups"]["all"] if k.startswith("pass@") and k not in ("pass@1", "pass@1_std")]
    if extra:
        lines += ["", "Unbiased pass@k (all): " + ", ".join(f"{k} {report['groups']['all'][k]:.1f}" for k in extra)]
    lines += ["", f"maj@{s['n']}: {MAJORITY_RULE}."]
    return "\n".join(lines) + "\n"


def compare(reports: list[dict], baselines: list[int | None] | None = None) -> tuple[str, list[str]]:
    """A markdown table comparing evaluations in order, and the list of flagged drops.

    Each row after the first shows its change against the row before (or row ``baselines[i]``, which names it),
    per group; a fall larger than the combined std of the two is marked and listed. Rows evaluated on different
    problems are not compared.
    """
    baselines = baselines or [i - 1 if i else None for i in range(len(reports))]
    groups = list(reports[0]["groups"])
    head = "| model | " + " | ".join(f"{g} pass@1" for g in groups) + " | maj@N (all) | format ok % | mean length |"
    lines = [head, "|" + "---|" * (len(groups) + 4)]
    drops: list[str] = []
    for i, (rep, b) in enumerate(zip(reports, baselines, strict=True)):
        prev = None if b is None else reports[b]
        comparable = prev is not None and prev.get("problem_ids") == rep.get("problem_ids")
        cells = []
        for g in groups:
            m = rep["groups"].get(g)
            if m is None:
                cells.append("–")
                continue
            cell = _cell(m)
            if comparable and g in prev["groups"]:
                p = prev["groups"][g]
                delta = m["pass@1"] - p["pass@1"]
                limit = combined_std(m["pass@1_std"], p["pass@1_std"])
                cell += f" ({delta:+.1f})"
                if delta < -limit:
                    cell += " **drop**"
                    drops.append(f"{rep['label']} vs {prev['label']} on {g}: {delta:+.1f} points, "
                                 f"beyond the combined std {limit:.1f}")
            elif prev is not None and not comparable:
                cell += " (other problems)"
            cells.append(cell)
        a = rep["groups"]["all"]
        label = rep["label"] if b in (None, i - 1) else f"{rep['label']} (vs {prev['label']})"
        lines.append(f"| {label} | " + " | ".join(cells) +
                     f" | {_at_n(a, 'maj'):.1f} | {a['format_ok']:.1f} | {a['mean_length']:.1f} |")
    return "\n".join(lines) + "\n", drops


def majority_table(reports: list[dict]) -> str:
    """A markdown table of maj@N per model and group (N: each evaluation's samples per problem), with its rule."""
    groups = list(reports[0]["groups"])
    lines = ["| model | N | " + " | ".join(f"{g} maj@N" for g in groups) + " |", "|" + "---|" * (len(groups) + 2)]
    for rep in reports:
        n = int(rep["groups"]["all"]["samples_per_problem"])
        cells = [f"{_at_n(rep['groups'][g], 'maj'):.1f}" if g in rep["groups"] else "–" for g in groups]
        lines.append(f"| {rep['label']} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nmaj@N: {MAJORITY_RULE}.\n"


def effects_table(run_dir: Path, pairs: list[tuple[str, str]], seed_copies: dict[int, dict[str, str]]) -> str:
    """Each (before, after) pair of evaluation stages: the change in pass@1, with 95% intervals (``thinktune.evaluation.effects``):
    over problems (paired bootstrap, the stages as written) and, where the stage was repeated over training seeds,
    over seeds. An interval that holds zero is marked as noise."""
    if not pairs:
        return ""
    lines = ["Each stage's effect: change in pass@1 (points) from the row before, with its 95% interval. Over "
             "problems: a paired bootstrap of the held-out problems (one training run). Over seeds: the stage "
             "trained once per seed (Student t). '(noise)': the interval holds zero.", "",
             "| stage | change, interval over problems | change per seed | mean change, interval over seeds |",
             "|---|---|---|---|"]
    for before, after in pairs:
        boot = paired_bootstrap(problem_accuracy(run_dir / before), problem_accuracy(run_dir / after))
        per_seed, seeds_cell = [boot.mean], "–"
        for names in seed_copies.values():
            if after in names:
                per_seed.append(mean_change(problem_accuracy(run_dir / names.get(before, before)),
                                            problem_accuracy(run_dir / names[after])))
        if len(per_seed) > 1:
            seeds_cell = over_seeds(per_seed).cell()
        label = " → ".join(load_report(run_dir / stage)["label"] for stage in (before, after))
        lines.append(f"| {label} | {boot.cell()} | {', '.join(f'{e:+.1f}' for e in per_seed)} "
                     f"| {seeds_cell} |")
    return "\n".join(lines) + "\n"


def plot_run_accuracies(report: dict, out: Path) -> Path:
    """Histogram of run accuracies (the paper's AIME accuracy distribution across runs)."""
    accs = report["run_accuracies"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(accs, bins=min(20, max(5, len(accs))), color="#4477aa", alpha=0.8)
    mean = sum(accs) / len(accs)
    ax.axvline(mean, color="k", ls="--", lw=1, label=f"mean {mean:.1f}")
    ax.set_xlabel("run accuracy (%)")
    ax.set_ylabel("runs")
    ax.set_title(f"{report['label']}: {len(accs)} runs")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_comparison(reports: list[dict], out: Path) -> Path:
    """Bar chart of pass@1 +- std per model and group."""
    groups = list(reports[0]["groups"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(groups) * max(1, len(reports)) / 2, 3.4))
    width = 0.8 / len(reports)
    for i, rep in enumerate(reports):
        xs = [j + i * width for j in range(len(groups))]
        ys = [rep["groups"].get(g, {}).get("pass@1", 0.0) for g in groups]
        es = [rep["groups"].get(g, {}).get("pass@1_std", 0.0) for g in groups]
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=rep["label"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups)
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
