"""Experiment trackers beside metrics.jsonl: TensorBoard, Weights & Biases and Trackio (``log.report_to``).

metrics.jsonl stays the record of a run: every row is written there first, and a tracker only mirrors its
numeric values (a non-finite value, which the JSONL holds as the string "nan" or "inf", is not sent). Each
tracker is a small adapter with ``log(step, scalars)`` and ``close()``; ``open_trackers`` builds them on the
main rank only (``MetricsLogger`` with ``enabled=False`` opens none).

- A tracker asked for but not installed is a one-line ``ConfigError`` when the logger is built, before the
  first step, rather than a crash mid-run. One that cannot start is a ``UserError`` at the same point.
- A tracker that fails after that (a full disk, a dropped connection) is warned about once and switched off;
  training goes on and metrics.jsonl keeps every row.
- Resume: a recipe resumes at its checkpoint's step. TensorBoard drops the events past that step (the
  writer's ``purge_step``), as metrics.jsonl drops its lines. W&B and Trackio open a new run of the same name
  whose steps go on from the checkpoint's: W&B refuses steps below those it already holds, so resuming into
  the old run would lose the re-run steps.

W&B runs offline unless told otherwise (``wandb_mode``), so a node without network never waits on it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from thinktune.errors import ConfigError, UserError

PROJECT = "thinktune"  # the W&B and Trackio project; WANDB_PROJECT chooses another for W&B


@dataclass
class TrackerRun:
    """What every tracker is told about the run it mirrors."""

    out_dir: Path  # the recipe's output_dir; TensorBoard and W&B write under it
    name: str  # the run's name in W&B and Trackio
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, logged as hyper-parameters
    resume_step: int = 0  # the checkpoint's step; 0 for a fresh run


class Tracker(Protocol):
    """What MetricsLogger needs of a tracker: ``log`` one step's numeric scalars, ``close`` at the end."""

    name: str  # its log.report_to name, used in warnings

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files in ``<output_dir>/tensorboard/``, with the config as the run's hparams."""

    name = "tensorboard"

    def __init__(self, run: TrackerRun) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard's readers drop the events a crashed attempt wrote past the checkpoint, so a
        # resumed run shows each step once. flush_secs: a watched run shows each logged step within seconds.
        self.writer = SummaryWriter(log_dir=str(run.out_dir / "tensorboard"), purge_step=run.resume_step + 1,
                                    flush_secs=10)
        # The hparams plugin's session-start summary in this run's own directory: SummaryWriter.add_hparams
        # would open a new timestamped sub-run on every start, resumes included.
        self.writer.file_writer.add_summary(hparams_pb(flat_hparams(run.config)))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run under ``<output_dir>/wandb/``: offline unless ``wandb_mode`` says online."""

    name = "wandb"

    def __init__(self, run: TrackerRun) -> None:
        import wandb

        mode = wandb_mode()
        start = {"dir": str(run.out_dir), "project": os.environ.get("WANDB_PROJECT") or PROJECT,
                 "name": run.name, "config": run.config}
        try:
            self.run = wandb.init(mode=mode, **start)
        except Exception as e:  # no network, a bad key: the run still trains, logged offline
            if mode != "online":
                raise
            warn(f"wandb could not start online ({type(e).__name__}: {e}); logging offline instead, "
                 f"to upload later with: wandb sync {run.out_dir / 'wandb'}/offline-run-*")
            self.run = wandb.init(mode="offline", **start)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A Trackio run in Trackio's local store (``TRACKIO_DIR``; ``trackio show`` opens it)."""

    name = "trackio"

    def __init__(self, run: TrackerRun) -> None:
        import trackio

        # embed=False: no dashboard server is started from inside a training run.
        self.run = trackio.init(project=PROJECT, name=run.name, config=run.config, embed=False)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


# log.report_to's names (config.REPORT_TO, less jsonl) -> adapter, and how to install what each imports.
ADAPTERS: dict[str, Callable[[TrackerRun], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "trackio": TrackioTracker,
}
INSTALL = {
    "tensorboard": "pip install 'thinktune[tracking]' (or pip install tensorboard)",
    "wandb": "pip install 'thinktune[tracking]' (or pip install wandb)",
    "trackio": "pip install trackio (thinktune[tracking] leaves it out: it brings a web server)",
}


def wandb_mode() -> str:
    """WANDB_MODE when set; else online where WANDB_API_KEY is set, offline where it is not.

    Offline by default because a training node often has no network, and an online start there waits
    minutes before failing; ``wandb sync`` uploads an offline run later. After ``wandb login`` (a key in
    ~/.netrc, no environment variable) set WANDB_MODE=online.
    """
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def open_trackers(report_to: Iterable[str], run: TrackerRun) -> list[Tracker]:
    """Start the trackers ``report_to`` names (``jsonl`` is metrics.jsonl itself and needs none).

    Raises:
        ConfigError: a name is unknown, or its package is not installed (the message says what to install).
        UserError: a tracker is installed but cannot start; those already started are closed first.
    """
    names = [name for name in dict.fromkeys(report_to) if name != "jsonl"]
    for name in names:  # every package first, so that a missing one starts nothing
        require_package(name)
    trackers: list[Tracker] = []
    for name in names:
        try:
            trackers.append(ADAPTERS[name](run))
        except Exception as e:
            close_trackers(trackers)
            raise UserError(f"log.report_to: {name} could not start ({type(e).__name__}: {e}); fix that or "
                            f"take {name} out of log.report_to") from e
    return trackers


def require_package(name: str) -> None:
    """Import the package tracker ``name`` needs (each is named like its tracker), or say how to install it."""
    if name not in ADAPTERS:
        raise ConfigError(f"log.report_to lists {name!r}; choose from jsonl, {', '.join(ADAPTERS)}")
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:  # the package is there, one of its own dependencies is not
            raise ConfigError(f"log.report_to lists {name!r}, whose package fails to import ({e}); "
                              f"reinstall it: {INSTALL[name]}") from None
        raise ConfigError(f"log.report_to lists {name!r}, which is not installed; {INSTALL[name]}") from None
    except ImportError as e:
        raise ConfigError(f"log.report_to lists {name!r}, whose package fails to import ({e}); "
                          f"reinstall it: {INSTALL[name]}") from None


def log_to_trackers(trackers: list[Tracker], step: int, scalars: dict[str, float]) -> list[Tracker]:
    """Send one step's scalars to each tracker; returns those still working (a failing one is closed)."""
    working = []
    for tracker in trackers:
        try:
            tracker.log(step, scalars)
        except Exception as e:  # a tracker must never stop training
            switch_off(tracker, f"failed at step {step}", e)
            continue
        working.append(tracker)
    return working


def close_trackers(trackers: list[Tracker]) -> None:
    """Finish each tracker (flush event files, end the W&B run); one that fails is warned about."""
    for tracker in trackers:
        try:
            tracker.close()
        except Exception as e:  # the run is done; its JSONL is complete either way
            warn(f"{tracker.name} failed to close ({type(e).__name__}: {e}); metrics.jsonl has every row")


def switch_off(tracker: Tracker, what: str, error: Exception) -> None:
    warn(f"{tracker.name} {what} ({type(error).__name__}: {error}); it is off for the rest of the run, and "
         "metrics.jsonl keeps every row")
    with contextlib.suppress(Exception):  # a tracker that just failed may fail to close too: reported above
        tracker.close()  # frees its files and threads


def numeric_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The values of a metrics row a tracker can plot: numbers, not the step, bools, or strings ("nan")."""
    return {k: v for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as the flat ``section.key`` -> scalar map the TensorBoard hparams plugin takes.

    Values it cannot hold (lists, None) become their JSON text, e.g. ``optim.betas`` -> ``"[0.9, 0.999]"``.
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flat_hparams(value, f"{prefix}{key}.")
        elif isinstance(value, bool | int | float | str):
            flat[prefix + key] = value
        else:
            flat[prefix + key] = json.dumps(value, default=str)
    return flat


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
