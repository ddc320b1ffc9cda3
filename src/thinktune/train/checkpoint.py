"""Checkpoints: HF-format weights plus everything needed to resume exactly, written atomically.

Layout of ``<output_dir>/checkpoints/step-N/``: the model and tokenizer as ``save_pretrained`` writes them
(so ``AutoModelForCausalLM.from_pretrained`` loads the directory as it is), and ``trainer_state.pt`` with
the optimizer (keyed by parameter name, so it loads on any number of ranks), scheduler, RNG states (one
per rank), step, data position and the run's fingerprint (``thinktune.train.run_dir``). A checkpoint is
written to a temporary directory, fsynced and renamed into place, so a run killed mid-write (or a crashed
machine) leaves the previous checkpoint intact and never a half-written one under a final name; the temporary
directories of a writer that died are removed when the next run opens the directory (``remove_orphans``).

``latest`` returns the newest checkpoint that verifies (every weight file whole, the trainer state loadable),
falling back to an older one with a warning, so a damaged last checkpoint costs the steps since the one before
it, not the run. A full disk is one line naming the device and the step, and the checkpoints already written
stay as they were.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open

from thinktune import runtime
from thinktune.errors import UserError
from thinktune.modeling import lora, models
from thinktune.train import distributed

STATE_FILE = "trainer_state.pt"
# The names save_pretrained_atomic gives its work in progress: ".<name>.tmp-<pid>" and ".<name>.old-<pid>".
PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


class DiskFullError(UserError):
    """The disk filled while a checkpoint was written; the checkpoints before it are intact."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that verified: its directory and its loaded trainer state."""

    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return self.state["step"]


def step_dirs(output_dir: Path) -> list[Path]:
    """Finished checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [d for d in root.glob("step-*") if (d / STATE_FILE).is_file() and d.name[5:].isdigit()]
    return sorted(done, key=lambda d: int(d.name[5:]))


def latest(output_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; a damaged one is skipped with a warning naming what is wrong (it
    stays on disk; the next save of its step replaces it)."""
    for path in reversed(step_dirs(output_dir)):
        problem, state = verify(path)
        if problem is None:
            return Checkpoint(path, state)
        runtime.print0(f"warning: checkpoint {path} is damaged ({problem}); falling back to the one before it")
    return None


def verify(path: Path) -> tuple[str | None, dict[str, Any]]:
    """(None, trainer state) if checkpoint ``path`` is whole, else (what is wrong, {}).

    Whole: every ``*.safetensors`` file's header parses and its tensors cover the file exactly (safetensors checks
    this when it opens one: a truncated file fails), and the trainer state loads.
    """
    for weights in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(weights, "pt"):
                pass
        except Exception as e:  # noqa: BLE001 - any failure to open means the file is not whole
            return f"{weights.relative_to(path)}: {e}", {}
    try:
        state = load_state(path)
    except Exception as e:  # noqa: BLE001 - a torn or foreign trainer_state.pt fails in many ways
        return f"{STATE_FILE}: {type(e).__name__}: {e}", {}
    if not isinstance(state, dict) or "step" not in state:
        return f"{STATE_FILE} holds no trainer state", {}
    return None, state


def remove_orphans(output_dir: Path) -> None:
    """Remove what dead writers left half-done in ``output_dir`` and ``output_dir/checkpoints``.

    Call it only while holding the run directory's lock (``thinktune.train.run_dir``): then no other process
    writes here, and every temporary directory not of this process is an orphan. A ``.old-`` copy whose
    replacement never arrived is the only copy of that checkpoint, so it is renamed back instead.
    """
    for parent in (Path(output_dir), Path(output_dir) / "checkpoints"):
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            m = PARTIAL.match(entry.name)
            if m is None or int(m["pid"]) == os.getpid() or not entry.is_dir():
                continue
            target = parent / m["name"]
            if m["kind"] == "old" and not target.exists():
                entry.rename(target)
                runtime.print0(f"[run] restored {target} from a write that was interrupted")
            else:
                shutil.rmtree(entry, ignore_errors=True)
                runtime.print0(f"[run] removed {entry}, left by an interrupted write")


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
    try:
        tmp.mkdir(parents=True)
        if model is not None:
            model.save_pretrained(tmp, state_dict=state_dict)
        models.save_tokenizer(tokenizer, tmp)  # a tokenizer_config.json transformers 4.x loads too
        if also is not None:
            also(tmp)
        if extra is not None:
            torch.save(extra, tmp / STATE_FILE)
        fsync_tree(tmp)  # the data on disk before the name: a crash after the rename finds whole files
    except Exception as e:  # torch and safetensors report a failed write in their own exception types
        full = disk_full(e, tmp.parent)  # before the removal below frees the space again
        shutil.rmtree(tmp, ignore_errors=True)  # an orphan would keep the disk full for the rerun
        if full:
            raise DiskFullError(f"no space left on the device of {tmp.parent} while writing {path.parent.name}/"
                                f"{path.name}; the checkpoints written before it are intact: free space and rerun "
                                "to resume from the last one") from None
        raise
    if path.exists():  # only a finished checkpoint of the same step can be here; replace it whole
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    fsync_dir(path.parent)


def disk_full(error: BaseException, where: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC itself, or (torch.save and safetensors report their
    writers' failures in their own exception types, without the errno) a device with under 1 MiB left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(where).free < 1 << 20
    except OSError:
        return False


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then the directories, deepest first."""
    dirs = [root]
    for entry in root.rglob("*"):
        if entry.is_dir():
            dirs.append(entry)
        else:
            with open(entry, "rb") as f:
                os.fsync(f.fileno())
    for d in reversed(dirs):
        fsync_dir(d)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
         scheduler: Any, data_state: dict[str, Any], keep: int, lora_merged: bool = True,
         fingerprint: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoints/step-{step}`` and delete all but the newest ``keep`` checkpoints (every rank calls).

    ``fingerprint``: what determines the run (``thinktune.train.run_dir``), checked when a run resumes from it.

    ``lora_merged=False``: a LoRA policy's checkpoint holds its adapter, tokenizer and trainer state but no
    merged model (a resume loads the starting base and the adapter anyway; see ``thinktune.modeling.lora``).
    """
    path = Path(output_dir) / "checkpoints" / f"step-{step}"
    rng = distributed.gather_lists([runtime.rng_state()])  # one per rank: rank r resumes rank r's streams
    state = {"step": step, "optimizer": distributed.optimizer_state(model, optimizer),
             "scheduler": scheduler.state_dict(), "rng": rng[0], "rng_ranks": rng, "data": data_state,
             "fingerprint": fingerprint}
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


def resume(found: Checkpoint | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
           stage: str) -> int:
    """Restore optimizer, scheduler and RNG from checkpoint ``found`` (if any); returns the step to start at."""
    if found is None:
        return 0
    restore(found.state, model, optimizer, scheduler)
    runtime.print0(f"[{stage}] resuming from {found.path} (step {found.step})")
    return found.step
