"""Curves a person reads at a glance: bias-corrected EMA over faint raw points, held-out points with a band."""

import json

import matplotlib.pyplot as plt
import pytest

from thinktune import tracking
from thinktune.tracking import ema, plot_curves


def test_ema_removes_the_start_up_bias():
    assert ema([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])  # a constant stays put from the first point
    # weight 0.5 on [0, 2]: raw averages 0 and 0.5 * 0 + 0.5 * 2 = 1; corrected by 1 - 0.5^i: 0 / 0.5, 1 / 0.75
    assert ema([0.0, 2.0], 0.5) == pytest.approx([0.0, 4 / 3])
    assert ema([1.0, 5.0], 0.0) == [1.0, 5.0]


def test_plot_draws_smoothed_curves_and_held_out_bands(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "rollout/reward_mean": float(s % 3)} for s in range(1, 21)]
    rows += [{"step": s, "heldout/pass@1": 50.0 + s, "heldout/pass@1_std": 2.0} for s in (0, 10, 20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    monkeypatch.setattr(tracking, "save_figure", lambda fig, out: figures.append(fig) or out)
    plot_curves(path, ["rollout/reward_mean", "heldout/pass@1", "absent"], tmp_path / "p.png")
    reward_ax, heldout_ax = figures[0].axes
    raw, smooth = reward_ax.get_lines()
    assert list(raw.get_ydata()) == [float(s % 3) for s in range(1, 21)] and raw.get_alpha() == 0.3
    assert list(smooth.get_ydata()) == pytest.approx(ema([float(s % 3) for s in range(1, 21)], 0.8))
    (band,) = heldout_ax.collections  # the ± std band around 50 + step
    low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    assert (low, high) == (48.0, 72.0)
    assert list(heldout_ax.get_lines()[0].get_ydata()) == [50.0, 60.0, 70.0]
    plt.close("all")
