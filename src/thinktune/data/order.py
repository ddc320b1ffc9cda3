"""Deterministic data order: which training units a step sees is a pure function of (seed, position).

Each epoch is a seeded permutation of the units; a step takes the next ``count`` positions, crossing into
the next epoch as needed. Resuming therefore needs only the position, and a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=4)
def epoch_order(num_units: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The shuffled order of one epoch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(num_units, generator=g).tolist())


def step_units(position: int, count: int, num_units: int, seed: int) -> list[int]:
    """Indices of the ``count`` units starting at global data ``position``."""
    out = []
    for p in range(position, position + count):
        epoch, i = divmod(p, num_units)
        out.append(epoch_order(num_units, seed, epoch)[i])
    return out
