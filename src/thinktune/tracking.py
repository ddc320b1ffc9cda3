"""Metrics JSONL, progress bars and plots.

Every recipe appends one JSON line per logged step to ``metrics.jsonl`` with namespaced keys
(``train/loss``, ``eval/pass@1``). On resume the lines past the checkpoint's step are dropped first, so the
file reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from thinktune.data.io import atomic_write  # noqa: E402


class MetricsLogger:
    """Append-only metrics JSONL, truncated to ``resume_step`` when a run resumes.

    ``enabled=False`` (every rank but the main one under torchrun) makes it a null logger, so the
    recipes log without asking which rank they are on.
    """

    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            with atomic_write(self.path) as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


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


def plot_curves(metrics_path: Path, keys: list[str], out: Path, title: str = "") -> Path | None:
    """Plot the given metric keys against step from a metrics JSONL; one panel per key."""
    rows = read_metrics(metrics_path)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
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
