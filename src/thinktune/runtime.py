"""Device, dtype and seeding: decided in one place, with the reason printed.

Device order is cuda > mps > cpu. ``dtype`` strings map to torch dtypes here and nowhere else; bf16 is
checked against the hardware, and fp16 is refused until a GradScaler exists.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

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


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map "fp32" | "bf16" to a torch dtype, refusing what the device cannot do."""
    if name not in DTYPES:
        hint = " (fp16 needs loss scaling, which thinktune does not do; use bf16)" if name == "fp16" else ""
        raise ConfigError(f"dtype {name!r} is not supported{hint}; choose one of {', '.join(DTYPES)}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("dtype bf16 requested but this GPU has no bf16 support; use model.dtype=fp32")
    return DTYPES[name]


def init(dtype: str = "fp32", seed: int = 0) -> Runtime:
    device = pick_device()
    rt = Runtime(device=device, dtype=resolve_dtype(dtype, device))
    seed_everything(seed + rt.rank)  # offset by rank so data-parallel ranks draw different samples
    return rt


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a run draws from, for checkpoints: restoring it makes a resumed run continue identically."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
