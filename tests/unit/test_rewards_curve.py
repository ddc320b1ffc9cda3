"""``thinktune reward-curve``: the CSV holds the formula's values, the PNG is written."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from thinktune.cli import main
from thinktune.rewards import RewardConfig
from thinktune.rewards.curve import curve_lengths


def _read(path: Path) -> dict[tuple[int, int], float]:
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["length", "correct", "reward"]
    return {(int(n), int(c)): float(r) for n, c, r in rows[1:]}


def test_reward_curve_verb_writes_csv_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, table = tmp_path / "plots" / "curve.png", tmp_path / "curve.csv"
    assert main(["reward-curve", "--out", str(png), "--csv", str(table), "--max-len", "512"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = _read(table)
    w = 8 / 13  # l_max 512 -> l_pos_control 413, l_neg_control 60; the CSV has 6 decimals

    def near(x: float) -> object:
        return pytest.approx(x, abs=1e-6)

    assert values[(0, 1)] == near(w) and values[(413, 1)] == near(w) and values[(512, 1)] == near(0.5 * w)
    assert values[(0, 0)] == near(-w) and values[(30, 0)] == near(-0.75 * w)
    assert values[(60, 0)] == near(-0.5 * w) and values[(512, 0)] == near(-0.5 * w)
    assert values[(462, 1)] == pytest.approx(0.75 * w, abs=5e-3)  # the midpoint is 462.5
    assert "l_pos_control=413" in capsys.readouterr().out


def test_curve_lengths_hit_the_paper_points() -> None:
    lengths = curve_lengths(RewardConfig())
    assert {0, 1851, 3702, 25600, 28672, 31744} <= set(lengths) and lengths == sorted(set(lengths))


def test_reward_curve_overrides_and_bad_keys(tmp_path: Path) -> None:
    table = tmp_path / "c.csv"
    assert main(["reward-curve", "--out", str(tmp_path / "c.png"), "--csv", str(table), "name=phi4-mini"]) == 0
    assert set(_read(table).values()) == {1.0, -1.0}
    assert main(["reward-curve", "--out", str(tmp_path / "c.png"), "--csv", str(table), "l_maxx=5"]) == 2
