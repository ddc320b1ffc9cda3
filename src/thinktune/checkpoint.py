"""Checkpoints: HF-format weights plus everything needed to resume exactly, written atomically.

Layout of ``<output_dir>/checkpoints/step-N/``: the model and tokenizer as ``save_pretrained`` writes them
(so ``AutoModelForCausalLM.from_pretrained`` loads the directory as it is), and ``trainer_state.pt`` with
the optimizer, scheduler, RNG states, step and data position. A checkpoint is written to a temporary
directory and renamed into place, so a run killed mid-write leaves the previous checkpoint intact and never
a half-written one under a final name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from thinktune import runtime

STATE_FILE = "trainer_state.pt"


def step_dirs(output_dir: Path) -> list[Path]:
    """Finished checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [d for d in root.glob("step-*") if (d / STATE_FILE).is_file() and d.name[5:].isdigit()]
    return sorted(done, key=lambda d: int(d.name[5:]))


def latest(output_dir: Path) -> Path | None:
    dirs = step_dirs(output_dir)
    return dirs[-1] if dirs else None


def save_pretrained_atomic(model: torch.nn.Module, tokenizer: Any, path: Path,
                           extra: dict[str, Any] | None = None) -> None:
    """Save model + tokenizer (+ an optional trainer state) to ``path`` via a temporary sibling dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if extra is not None:
        torch.save(extra, tmp / STATE_FILE)
    if path.exists():  # only a finished checkpoint of the same step can be here; replace it whole
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def save(output_dir: Path, step: int, model: torch.nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer,
         scheduler: Any, data_state: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoints/step-{step}`` and delete all but the newest ``keep`` checkpoints."""
    path = Path(output_dir) / "checkpoints" / f"step-{step}"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": runtime.rng_state(), "data": data_state}
    save_pretrained_atomic(model, tokenizer, path, extra=state)
    for old in step_dirs(output_dir)[:-keep]:
        shutil.rmtree(old)
    return path


def load_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint: step, optimizer, scheduler, rng, data."""
    # weights_only=False: the state holds numpy RNG tuples; we only load files this run wrote itself.
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


def restore(state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    runtime.set_rng_state(state["rng"])


def resume(path: Path | None, optimizer: torch.optim.Optimizer, scheduler: Any, stage: str) -> int:
    """Restore optimizer, scheduler and RNG from checkpoint ``path`` (if any); returns the step to start at."""
    if path is None:
        return 0
    state = load_state(path)
    restore(state, optimizer, scheduler)
    print(f"[{stage}] resuming from {path} (step {state['step']})", flush=True)
    return state["step"]
