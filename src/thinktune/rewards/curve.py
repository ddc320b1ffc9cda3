"""``thinktune reward-curve``: the reward against generation length, for a correct and a wrong answer.

    thinktune reward-curve --out curve.png --csv curve.csv [--max-len N] [key=value ...]

The values come from the real reward (``score``) on a finished, well-formed, non-repetitive completion
whose answer is right or wrong, so the curve is exactly what training sees: with the paper's defaults,
``w_acc * R_acc_scaled`` (8/13 of the cosine shape). ``--max-len N`` shows ``scale_to_context(cfg, N)``;
``key=value`` overrides any ``RewardConfig`` field (e.g. ``name=phi4-mini``). The CSV has the columns
``length,correct,reward``; the plot also marks the control lengths and the two format overrides.
"""

from __future__ import annotations

import csv
from pathlib import Path

from thinktune.config import load_config
from thinktune.rewards import RewardConfig, scale_to_context, score

_COMPLETION = "<think>Add the two numbers.</think> The answer is \\boxed{1}."
POINTS = 512  # evenly spaced lengths, plus the control points and their midpoints


def curve_lengths(cfg: RewardConfig, points: int = POINTS) -> list[int]:
    """Sorted token lengths from 0 to ``l_max``: an even grid plus the control points and the cosine
    midpoints, so the plot and CSV hit every exact value."""
    marks = {0, cfg.l_neg_control // 2, cfg.l_neg_control, cfg.l_pos_control,
             (cfg.l_pos_control + cfg.l_max) // 2, cfg.l_max}
    grid = {round(i * cfg.l_max / points) for i in range(points + 1)}
    return sorted(grid | marks)


def curve_rows(cfg: RewardConfig, points: int = POINTS) -> list[tuple[int, bool, float]]:
    """``(length, correct, reward)`` for every length of ``curve_lengths``, correct answers first."""
    rows = []
    for correct in (True, False):
        answer = "1" if correct else "2"
        for length in curve_lengths(cfg, points):
            result = score(_COMPLETION, answer, length, True, cfg, mode="integer")
            rows.append((length, correct, result.reward))
    return rows


def write_csv(rows: list[tuple[int, bool, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["length", "correct", "reward"])
        writer.writerows((length, int(correct), f"{reward:.6f}") for length, correct, reward in rows)


def plot(rows: list[tuple[int, bool, float]], cfg: RewardConfig, path: Path) -> None:
    """Draw the two curves, the control lengths, and the override levels (times ``w_acc``)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for correct, color in ((True, "tab:green"), (False, "tab:red")):
        xs = [length for length, c, _ in rows if c is correct]
        ys = [reward for _, c, reward in rows if c is correct]
        ax.plot(xs, ys, color=color, label="correct" if correct else "incorrect")
    for x, text in ((cfg.l_neg_control, "L_neg_control"), (cfg.l_pos_control, "L_pos_control")):
        ax.axvline(x, color="gray", linestyle="--", linewidth=0.8)
        ax.annotate(f"{text}={x}", (x, 0.0), xytext=(3, 3), textcoords="offset points", fontsize=8)
    if cfg.name == "phi4":
        for value, text in ((cfg.truncated_reward, "truncated (no EOS)"), (cfg.bad_format_reward, "bad <think>")):
            ax.axhline(cfg.w_acc * value, color="gray", linestyle=":", linewidth=0.8)
            ax.annotate(text, (0, cfg.w_acc * value), xytext=(3, 3), textcoords="offset points", fontsize=8)
        if cfg.w_acc > 0:
            right = ax.secondary_yaxis("right", functions=(lambda y: y / cfg.w_acc, lambda r: r * cfg.w_acc))
            right.set_ylabel("R_acc_scaled")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("generated tokens L")
    ax.set_ylabel("reward (no repetition)")
    ax.set_title(f"reward '{cfg.name}' vs length, L_max={cfg.l_max}, w_acc={cfg.w_acc:.4g}")
    ax.legend(loc="center")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(out: str, csv_path: str, max_len: int | None = None, overrides: list[str] | None = None) -> int:
    """The ``reward-curve`` verb: write the CSV and the PNG, print where they went."""
    cfg = load_config(RewardConfig, None, overrides or [])
    if max_len is not None:
        cfg = scale_to_context(cfg, max_len)
    rows = curve_rows(cfg)
    write_csv(rows, Path(csv_path))
    plot(rows, cfg, Path(out))
    print(f"reward-curve: {cfg.name}, l_max={cfg.l_max}, l_pos_control={cfg.l_pos_control}, "
          f"l_neg_control={cfg.l_neg_control}; wrote {csv_path} and {out}")
    return 0
