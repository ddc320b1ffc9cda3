"""Checkpoints: HF-format weights plus everything needed to resume exactly, written atomically.

Layout of ``<output_dir>/checkpoints/step-N/``: the model and tokenizer as ``save_pretrained`` writes them
(so ``AutoModelForCausalLM.from_pretrained`` loads the directory as it is), and ``trainer_state.pt`` with
the optimizer (keyed by parameter name, so it loads on any number of ranks), scheduler, RNG states (one
per rank), step and data position. A checkpoint is written to a temporary
directory and renamed into place, so a run killed mid-write leaves the previous checkpoint intact and never
a half-written one under a final name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from thinktune import runtime
from thinktune.modeling import lora
from thinktune.train import distributed

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


def save_pretrained_atomic(model: torch.nn.Module | None, tokenizer: Any, path: Path,
                           extra: dict[str, Any] | None = None, state_dict: dict[str, torch.Tensor] | None = None,
                           also: Callable[[Path], None] | None = None) -> None:
    """Save model + tokenizer (+ an optional trainer state) to ``path`` via a temporary sibling dir.

    ``state_dict`` replaces the model's own tensors (gathered FSDP shards); ``also`` writes more files
    into the temporary directory before it is renamed into place. ``model=None`` writes no model (a LoRA
    checkpoint that holds its adapter only, through ``also``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if model is not None:
        model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if also is not None:
        also(tmp)
    if extra is not None:
        torch.save(extra, tmp / STATE_FILE)
    if path.exists():  # only a finished checkpoint of the same step can be here; replace it whole
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def export(model: torch.nn.Module, tokenizer: Any, path: Path, extra: dict[str, Any] | None = None,
           lora_merged: bool = True) -> None:
    """Write the model as one plain HF checkpoint, whatever the training setup. Every rank must call it.

    FSDP shards are gathered onto rank 0, which alone writes; a LoRA policy is written merged, with its
    adapter beside it in ``adapter/`` (see ``thinktune.modeling.lora``), or with the adapter alone when
    ``lora_merged`` is False. The other ranks wait until the files exist.
    """
    state = distributed.full_state_dict(model)
    if distributed.is_main():
        path = Path(path)
        if lora.enabled(model):
            save_pretrained_atomic(lora.merged(model, state) if lora_merged else None, tokenizer, path, extra,
                                   also=lambda tmp: lora.save_adapter(model, state, tmp))
        else:
            save_pretrained_atomic(model, tokenizer, path, extra, state_dict=state)
    distributed.barrier()


def save(output_dir: Path, step: int, model: torch.nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer,
         scheduler: Any, data_state: dict[str, Any], keep: int, lora_merged: bool = True) -> Path:
    """Write ``checkpoints/step-{step}`` and delete all but the newest ``keep`` checkpoints (every rank calls).

    ``lora_merged=False``: a LoRA policy's checkpoint holds its adapter, tokenizer and trainer state but no
    merged model (a resume loads the starting base and the adapter anyway; see ``thinktune.modeling.lora``).
    """
    path = Path(output_dir) / "checkpoints" / f"step-{step}"
    rng = distributed.gather_lists([runtime.rng_state()])  # one per rank: rank r resumes rank r's streams
    state = {"step": step, "optimizer": distributed.optimizer_state(model, optimizer),
             "scheduler": scheduler.state_dict(), "rng": rng[0], "rng_ranks": rng, "data": data_state}
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
    export(model, tokenizer, path, extra=state, lora_merged=lora_merged)
    if distributed.is_main():
        for old in step_dirs(output_dir)[:-keep]:
            shutil.rmtree(old)
    distributed.barrier()
    return path


def load_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint: step, optimizer, scheduler, rng, data."""
    # weights_only=False: the state holds numpy RNG tuples; we only load files this run wrote itself.
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


def restore(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Load optimizer (re-sharded to this run's ranks), scheduler and RNG.

    On the same number of ranks each rank takes its own RNG state back; on a different number, rank 0
    takes rank 0's and the others keep their fresh rank-offset seeds (their streams cannot continue).
    """
    if all(isinstance(k, int) for k in state["optimizer"]["state"]):
        optimizer.load_state_dict(state["optimizer"])  # written before checkpoints keyed state by name
    else:
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ranks = state.get("rng_ranks", [state["rng"]])
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed.active() else (0, 1)
    if len(ranks) == world or rank == 0:
        runtime.set_rng_state(ranks[rank] if len(ranks) == world else state["rng"])


def resume(path: Path | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
           stage: str) -> int:
    """Restore optimizer, scheduler and RNG from checkpoint ``path`` (if any); returns the step to start at."""
    if path is None:
        return 0
    state = load_state(path)
    restore(state, model, optimizer, scheduler)
    runtime.print0(f"[{stage}] resuming from {path} (step {state['step']})")
    return state["step"]
