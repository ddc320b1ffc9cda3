"""Device, dtype, process group and seeding: decided in one place, with the reason printed.

Device order is cuda > mps > cpu, unless ``THINKTUNE_DEVICE`` (cpu | cuda | mps) names one. ``dtype`` strings
map to torch dtypes here and nowhere else; bf16 is checked against the hardware, and fp16 is refused until a
GradScaler exists. Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``init`` joins the process group:
NCCL on CUDA, gloo on CPU; the rank and world size come from torchrun's variables only, and every seed is
offset by the rank.
"""

from __future__ import annotations

import ctypes
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.distributed as dist

from thinktune.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


DEVICE_ENV = "THINKTUNE_DEVICE"


def pick_device() -> torch.device:
    """cuda (this rank's GPU) > mps > cpu, or the type ``THINKTUNE_DEVICE`` names (e.g. ``cpu`` to keep a run,
    or the test suite, off a machine's GPU).

    Raises:
        ConfigError: ``THINKTUNE_DEVICE`` names an unknown device type or one this machine lacks.
    """
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    chosen = os.environ.get(DEVICE_ENV, "").strip().lower() or next(k for k, ok in available.items() if ok)
    if chosen not in available:
        raise ConfigError(f"{DEVICE_ENV}={chosen!r}: choose one of {', '.join(available)}, or unset {DEVICE_ENV}")
    if not available[chosen]:
        raise ConfigError(f"{DEVICE_ENV}={chosen!r}: this machine has no {chosen} device; unset {DEVICE_ENV}")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if chosen == "cuda" else torch.device(chosen)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map "fp32" | "bf16" to a torch dtype, refusing what the device cannot do."""
    if name not in DTYPES:
        hint = " (fp16 needs loss scaling, which thinktune does not do; use bf16)" if name == "fp16" else ""
        raise ConfigError(f"dtype {name!r} is not supported{hint}; choose one of {', '.join(DTYPES)}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("dtype bf16 requested but this GPU has no bf16 support; use model.dtype=fp32")
    return DTYPES[name]


def init(dtype: str = "fp32", seed: int = 0) -> Runtime:
    return_freed_memory()
    device = pick_device()
    rank, world_size = init_process_group(device)
    rt = Runtime(device=device, dtype=resolve_dtype(dtype, device), rank=rank, world_size=world_size)
    seed_everything(seed + rt.rank)  # offset by rank so data-parallel ranks draw different samples
    return rt


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def return_freed_memory(threshold: int = 1 << 20) -> None:
    """Have glibc serve every allocation of ``threshold`` bytes or more from its own mmap, so freeing it gives the
    pages back to the OS at once.

    Why: glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), after which the
    activations of a CPU training step (4-12 MB tensors for a 135M model at 2k tokens) come from the heap, where
    freed blocks fragment and stay resident. Measured on SmolLM2-135M's shape (fp32 SFT, 4 x 500 tokens): 4.9 GB
    resident between steps instead of the 2.0 GB live, and a peak that grew by ~1 GB a step. A fixed threshold
    turns the adaptation off; the cost is fresh pages (zeroed by the kernel) for each large tensor, a few
    percent of a step's time. A no-op off glibc (macOS, musl).
    """
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold)
    except AttributeError:  # a C library without mallopt (musl)
        pass


def init_process_group(device: torch.device) -> tuple[int, int]:
    """Join torchrun's process group when there is one; returns (rank, world_size), (0, 1) without."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1
    if device.type == "mps":
        raise ConfigError("torchrun with more than one process needs CUDA GPUs or the CPU (gloo); MPS has no "
                          "collective backend. Run a single process on a Mac.")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size()


def cleanup() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """Print on the main rank only, so N processes do not print every line N times."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


def memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory since the start, in GiB (``perf/max_memory_gib``); empty off CUDA."""
    if device.type != "cuda":
        return {}
    return {"perf/max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: the GPU's free memory; on a Linux CPU the host's MemAvailable,
    or less where this process's cgroup (a container's memory limit) leaves less; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    host, limited = host_available_memory(), cgroup_free_memory()
    return host if limited is None or host is None else min(host, limited)


def host_available_memory() -> int | None:
    """The host's MemAvailable in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        return None


# Per cgroup version: the limit file, the usage file and memory.stat's inactive page cache counter.
CGROUP_FILES = {
    1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    2: ("memory.max", "memory.current", "inactive_file"),
}


def cgroup_free_memory(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Bytes left under the tightest memory limit on this process's cgroup path (from ``proc_cgroup``), checked
    at every level from its own cgroup up to the mount ``root`` (v2, or v1's ``memory/``): the limit less the
    usage, counting inactive page cache as free, since the kernel reclaims it first (as ``docker stats`` does).
    Levels or files that are missing are skipped. None when no level has a limit or nothing can be read."""
    own = _own_cgroup(proc_cgroup)
    if own is None:
        return None
    version, parts = own
    levels = [root / "memory" if version == 1 else root]
    for part in parts:
        levels.append(levels[-1] / part)
    free = [left for left in (_cgroup_level_free(level, version) for level in levels) if left is not None]
    return max(0, min(free)) if free else None


def _own_cgroup(proc_cgroup: Path) -> tuple[int, list[str]] | None:
    """(cgroup version, path parts below the mount) of this process's memory cgroup, from a
    ``/proc/self/cgroup`` file; None if it cannot be read or lists neither. A v1 line naming the ``memory``
    controller wins over v2's ``0::`` line: a hybrid host lists both, and its v2 hierarchy has no controllers."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            found = (1, path)
            break
        if hierarchy == "0" and not controllers:
            found = (2, path)
    if found is None:
        return None
    parts = list(PurePosixPath(found[1]).parts[1:])
    # A cgroup outside this cgroup namespace reads as "/../x"; only the mount root is visible from here then.
    return found[0], [] if ".." in parts else parts


def _cgroup_level_free(directory: Path, version: int) -> int | None:
    """limit - usage + inactive page cache of one cgroup directory; None without a limit or its files."""
    limit_file, usage_file, cache_key = CGROUP_FILES[version]
    try:
        limit_text = (directory / limit_file).read_text().strip()
        if limit_text == "max":
            return None
        limit = int(limit_text)
        if limit >= 1 << 60:  # v1 writes "no limit" as a page-rounded 2**63 - 1
            return None
        usage = int((directory / usage_file).read_text())
        cache = _stat(directory / "memory.stat", cache_key)
    except (OSError, ValueError):
        return None
    return limit - usage + cache


def _stat(path: Path, key: str) -> int:
    """One counter of a cgroup ``memory.stat`` file (0 if absent)."""
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a run draws from, for checkpoints: restoring it makes a resumed run continue identically."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # a run on the GPU (one kept on the CPU never starts CUDA)
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # on as many GPUs as both machines have
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
