"""One training run per output directory: claimed after its inputs are checked, locked while it runs, and
resumed only by the run that started it.

``claim`` is what sft, dpo and grpo call once their data has loaded (so a failed invocation writes nothing):

1. ``resume=false`` and a directory that already holds a run: this fresh run goes to ``<output_dir>-2`` (or the
   next free number) instead; nothing of the old run is touched.
2. An exclusive lock on ``<output_dir>/.lock`` (``flock``: the OS releases it when the process dies, however it
   dies), so a second run into the same directory stops with the holder's PID instead of interleaving with it.
3. Half-written checkpoints of dead writers are cleaned up (``checkpoint.remove_orphans``).
4. The run's fingerprint (below) is compared with the one stored in the latest checkpoint (or, for a run that
   has none yet, in ``fingerprint.json``). A difference refuses, naming each changed field, unless
   ``resume=force``; then the old ``config.yaml`` is kept beside the new one.
5. Only now are ``config.yaml`` and ``fingerprint.json`` written.

The fingerprint is what determines the run: the resolved config less the fields a resume may change
(``RESUMABLE``: the step budget, logging and held-out evaluation, and memory or speed knobs such as the
micro-batch size, which a run that ran out of memory must be able to lower), a digest of each data file, and a
digest of the starting model.
The model's digest reads its config and a fixed sample of blocks of each weight file (not every byte: a
14B model would take a minute to hash), which any retraining changes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from thinktune import runtime
from thinktune.config import save_config
from thinktune.data.io import write_json
from thinktune.errors import ConfigError, UserError
from thinktune.train import checkpoint, distributed

LOCK_FILE = ".lock"
FINGERPRINT_FILE = "fingerprint.json"
# Config fields a resumed run may change: how long it runs, what it logs and where, and how it fits in memory
# (same updates, other batching or placement). Dotted names; a section name covers its fields.
RESUMABLE = ("output_dir", "resume", "max_steps", "log", "eval_every", "dump_every", "micro_batch_size",
             "model.gradient_checkpointing", "model.compile", "model.attn_implementation", "sampling.batch_size",
             "sampling.backend", "sampling.decoder", "sampling.vllm", "score_behind_decode",
             "max_sampling_rounds",  # GRPO's dynamic-sampling bound: the fix its error suggests
             "heldout")  # held-out evaluation only samples the policy: no update depends on it
# The digest of a large file reads this many blocks of BLOCK bytes, spread evenly over it.
BLOCKS, BLOCK = 32, 1 << 16

_held: dict[Path, IO] = {}  # this process's locks, by resolved directory


class RunDirError(UserError):
    """The output directory holds another run, or is in use."""


@dataclasses.dataclass(frozen=True)
class Run:
    """A claimed run directory: where it is, what determines the run, and the checkpoint to resume from."""

    out: Path
    fingerprint: dict[str, Any]
    resume_from: checkpoint.Checkpoint | None

    @property
    def digest(self) -> str:
        """A short key of the fingerprint, for caches derived from the run (DPO's reference log-probs)."""
        return hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def claim(cfg: Any, stage: str, rt: runtime.Runtime) -> Run:
    """Lock ``cfg.output_dir`` for this run, check that a resume continues the same run, then write the config.

    Sets ``cfg.output_dir`` to the directory actually used (it differs with ``resume=false``).

    Raises:
        RunDirError: another process holds the directory.
        ConfigError: the directory holds a run with another fingerprint (and ``resume`` is not ``force``).
    """
    out = fresh_directory(Path(cfg.output_dir)) if cfg.resume == "false" else Path(cfg.output_dir)
    distributed.barrier()  # every rank has chosen the same directory before the main rank creates it
    if out != Path(cfg.output_dir):
        runtime.print0(f"[{stage}] resume=false: {cfg.output_dir} holds a run; this fresh run writes to {out}")
        cfg.output_dir = str(out)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        lock(out)
        checkpoint.remove_orphans(out)
    distributed.barrier()
    fingerprint = fingerprint_of(cfg)
    found = checkpoint.latest(out) if cfg.resume != "false" else None
    before = found.state.get("fingerprint") if found else stored_fingerprint(out)
    if before is not None and (changes := differences(before, fingerprint)):
        if cfg.resume != "force":
            raise ConfigError(
                f"{out} holds a {stage} run that {'is at step ' + str(found.step) if found else 'started'} with "
                f"other settings: {'; '.join(changes)}. Rerun with the old settings to continue it, resume=false to "
                f"start a fresh run in a new directory, or resume=force to continue it with the new settings")
        runtime.print0(f"[{stage}] warning: resume=force: continuing {out} with changed settings: {'; '.join(changes)}")
        if rt.is_main and (out / "config.yaml").exists():
            kept = out / f"config.before-step-{found.step if found else 0}.yaml"
            shutil.copyfile(out / "config.yaml", kept)
    if rt.is_main:
        save_config(cfg, out / "config.yaml")
        write_json(out / FINGERPRINT_FILE, fingerprint)
    return Run(out, fingerprint, found)


def release(out: Path) -> None:
    """Give up this process's lock on ``out`` (a no-op if it holds none). The OS releases it at exit anyway;
    this is for processes that run several stages, one after another (the pipeline, tests)."""
    f = _held.pop(Path(out).resolve(), None)
    if f is not None:
        f.close()


def lock(out: Path) -> None:
    """Take ``out``'s exclusive lock, or raise naming the process that holds it."""
    key = out.resolve()
    if key in _held:  # this process already holds it (an earlier stage run that failed before release)
        return
    f = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run; closed by release()
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunDirError(f"{out} is in use by another thinktune run (pid {holder}); wait for it to finish, stop "
                          "it, or choose another output_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[key] = f


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in ("config.yaml", "checkpoints", "final", "metrics.jsonl"))


def fresh_directory(out: Path) -> Path:
    """``out`` if it holds no run, else the first of ``out-2``, ``out-3``, ... that does not exist."""
    if not holds_run(out):
        return out
    n = 2
    while out.with_name(f"{out.name}-{n}").exists():
        n += 1
    return out.with_name(f"{out.name}-{n}")


def stored_fingerprint(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None  # no run yet, or one written before fingerprints: nothing to compare


def fingerprint_of(cfg: Any) -> dict[str, Any]:
    """{"config": the determining fields, dotted; "data": field -> file digest; "model": start model digest}."""
    flat = flatten(dataclasses.asdict(cfg))
    config = {k: v for k, v in flat.items() if not any(k == r or k.startswith(r + ".") for r in RESUMABLE)}
    data = {k: file_digest(Path(v)) for k, v in flat.items()
            if k.startswith("data.") and isinstance(v, str) and v and Path(v).is_file()}
    return {"config": config, "data": data, "model": model_digest(Path(cfg.model.path))}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints, one readable item per field."""
    changes = []
    old, new = before.get("config", {}), now.get("config", {})
    # A key on one side only is an option that one thinktune version has and the other lacks, not a change
    # the user made: a run must resume across an upgrade that adds an option (at its default behaviour).
    for key in sorted(set(old) & set(new)):
        if old[key] != new[key]:
            changes.append(f"{key} {old[key]!r} -> {new[key]!r}")
    old, new = before.get("data", {}), now.get("data", {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) and key in old and key in new:
            changes.append(f"{key}: the file's contents changed")
    if before.get("model") != now.get("model"):
        changes.append("model.path: the starting model's weights changed")
    return changes


def file_digest(path: Path) -> str:
    """sha256 of a data file's bytes (JSONL files hash at hundreds of MB a second)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_digest(path: Path) -> str | None:
    """A digest of a local model (a directory or a .gguf file): its config, each weight file's size and header,
    and ``BLOCKS`` blocks spread over each weight file; None for a hub id or a missing path (the path itself is in
    the config)."""
    if path.is_file():
        return sampled_digest(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin", ".gguf")
                                                                   or p.name == "config.json")):
        h.update(f.name.encode() + sampled_digest(f).encode())
    return h.hexdigest()


def sampled_digest(path: Path) -> str:
    """sha256 of a file's size, its first block and ``BLOCKS`` blocks at evenly spaced offsets (the whole file
    when it is small)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= BLOCKS * BLOCK:
            h.update(f.read())
        else:
            for i in range(BLOCKS + 1):
                f.seek((size - BLOCK) * i // BLOCKS)
                h.update(f.read(BLOCK))
    return h.hexdigest()

