"""Write the embedded world's prompt and SFT files.

Run:
    thinktune data synth --config configs/demo/synth.yaml [n_train=50000 ...]

Held-out prompts, train prompts, teacher CoT traces (some wrong on purpose, at ``slip_rate``) and
direct-answer rows, in docs/design.md's row schemas; see ``thinktune.tasks.synth``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from thinktune.config import save_config
from thinktune.data.io import write_json
from thinktune.errors import ConfigError
from thinktune.tasks.synth import synthesize
from thinktune.tasks.world import LEVELS


@dataclass
class SynthConfig:
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    n_train: int = 50_000  # training problems (one CoT and one direct SFT row each)
    n_heldout_per_level: int = 300
    slip_rate: float = 0.1  # share of teacher traces with a deliberate slip (wrong answer)
    rollout_prompts: int = 1000  # training problems with saved teacher samples (teacher_rollouts.jsonl)
    rollout_k: int = 4  # teacher samples per such problem
    seed: int = 0
    wording: Literal["expression", "words"] = "expression"  # words: word problems for a real chat model
    output_dir: str = "runs/data"

    def __post_init__(self) -> None:
        if unknown := [lv for lv in self.levels if lv not in LEVELS]:
            raise ConfigError(f"levels {unknown} do not exist; the world has levels {sorted(LEVELS)}")
        if not 0 <= self.slip_rate <= 1:
            raise ConfigError(f"slip_rate={self.slip_rate} must be in [0, 1]")
        if self.n_train < 1 or self.n_heldout_per_level < 1:
            raise ConfigError("n_train and n_heldout_per_level must be >= 1")


def run(cfg: SynthConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    summary = synthesize(out, levels=cfg.levels, n_train=cfg.n_train, n_heldout_per_level=cfg.n_heldout_per_level,
                         slip_rate=cfg.slip_rate, seed=cfg.seed, rollout_prompts=cfg.rollout_prompts,
                         rollout_k=cfg.rollout_k, wording=cfg.wording)
    write_json(out / "summary.json", summary)
    slips = sum(summary["slips"].values())
    tqdm.write(f"[data] {cfg.n_train} train problems ({slips} teacher slips), "
               f"{cfg.n_heldout_per_level * len(cfg.levels)} held-out, levels {cfg.levels} -> {out}")
    return summary
