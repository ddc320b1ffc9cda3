"""Metrics JSONL, progress bars and plots.

Every recipe appends one JSON line per logged step to ``metrics.jsonl`` with namespaced keys
(``train/loss``, ``eval/pass@1``). On resume the lines past the checkpoint's step are dropped first, so the
file reads as if the run had never stopped. The same rows can go to TensorBoard, W&B or Trackio as well
(``log.report_to``; ``thinktune.trackers``).

    with MetricsLogger(out / "metrics.jsonl", report_to=["tensorboard"], config=to_dict(cfg)) as logger:
        logger.log(10, {"train/loss": 0.52})
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from thinktune.data.io import atomic_write  # noqa: E402
from thinktune.trackers import (  # noqa: E402
    Tracker,
    TrackerRun,
    close_trackers,
    log_to_trackers,
    numeric_scalars,
    open_trackers,
)


class MetricsLogger:
    """Append-only metrics JSONL, truncated to ``resume_step`` when a run resumes, mirrored to trackers.

    ``enabled=False`` (every rank but the main one under torchrun) makes it a null logger that opens no
    tracker, so the recipes log without asking which rank they are on.

    Args:
        path: the metrics JSONL; its directory (the recipe's output_dir) also holds the trackers' files.
        resume_step: the checkpoint's step; rows (and TensorBoard events) past it are dropped.
        enabled: false on every rank but the main one.
        report_to: tracker names from ``log.report_to`` (``thinktune.trackers``); ``jsonl`` is always on.
        config: the resolved config (``to_dict(cfg)``), logged as the trackers' hyper-parameters.
        name: the run's name in W&B and Trackio; "" takes the output directory's name.

    Raises:
        ConfigError: a tracker in ``report_to`` is unknown or not installed.
        UserError: a tracker is installed but cannot start.
    """

    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True, report_to: Iterable[str] = (),
                 config: dict[str, Any] | None = None, name: str = "") -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.trackers: list[Tracker] = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            with atomic_write(self.path) as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
        out_dir = self.path.parent.resolve()
        self.trackers = open_trackers(report_to, TrackerRun(out_dir, name or out_dir.name, config or {},
                                                            resume_step))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.trackers:  # after the JSONL line, so a failing tracker never costs a row
            self.trackers = log_to_trackers(self.trackers, step, numeric_scalars(row))

    def close(self) -> None:
        """Finish the trackers (flush TensorBoard's files, end the W&B run). Safe to call twice."""
        trackers, self.trackers = self.trackers, []
        close_trackers(trackers)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics JSONL. A line that is not a JSON object (the torn last line of a run killed
    mid-write) is dropped with a warning naming it, since a run must resume past it."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            print(f"warning: {path}:{lineno} is not a metrics row (a write cut short?); dropping it: {line[:80]!r}",
                  file=sys.stderr)
            continue
        rows.append(row)
    return rows


def progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr; disabled bars still count, so callers need no branches."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, leave=False)


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with the start-up bias removed (TensorBoard's smoothing): early points are
    not pulled towards zero. ``weight`` 0 returns the values; 0.9 averages over roughly the last ten."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_curves(metrics_path: Path, keys: list[str], out: Path, title: str = "", smoothing: float = 0.8) -> Path | None:
    """Plot the given metric keys against step from a metrics JSONL, one panel per key, so a trend reads at a
    glance: the raw points faint, their EMA (``smoothing``) drawn over them. A key with a ``<key>_std`` companion
    (held-out pass@1) is drawn as its points with a ± std band, unsmoothed: each point is a whole evaluation."""
    rows = read_metrics(metrics_path)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r["step"], r[key], r.get(f"{key}_std")) for r in rows if isinstance(r.get(key), int | float)]
        steps, values = [p[0] for p in pts], [p[1] for p in pts]
        stds = [p[2] for p in pts]
        if all(isinstance(sd, int | float) for sd in stds):
            ax.fill_between(steps, [v - sd for v, sd in zip(values, stds, strict=True)],
                            [v + sd for v, sd in zip(values, stds, strict=True)], color="C0", alpha=0.2,
                            label="± std")
            ax.plot(steps, values, "o-", color="C0", lw=1.4, ms=3)
        elif len(values) > 5 and smoothing > 0:
            ax.plot(steps, values, color="C0", lw=0.8, alpha=0.3)
            ax.plot(steps, ema(values, smoothing), color="C0", lw=1.6, label=f"EMA {smoothing}")
        else:
            ax.plot(steps, values, "o-", color="C0", lw=1.2, ms=3)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def save_figure(fig: plt.Figure, out: Path) -> Path:
    """Lay out, write ``out`` (PNG, its directory made if missing) and close the figure."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
