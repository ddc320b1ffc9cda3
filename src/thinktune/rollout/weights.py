"""How a sampler gets the policy's current weights, on one process and under FSDP.

On one process thinktune's sampler reads the policy's own tensors (and re-reads them at every call), so there
is nothing to move. Under FSDP the policy is sharded; thinktune's decoder reads whole weights (and on CUDA
replays graphs that captured their addresses), so it samples from a plain, unsharded copy made before sharding
(``rollout_copy``) and refreshed from the shards before every step (``sync_copy``). This costs one full copy of
the weights per rank in the compute dtype (as a colocated vLLM engine would) and keeps FSDP's resharding from
ever moving memory the decoder holds. (The alternative, ``unshard()`` around sampling, would hold the same full
weights while sampling, and the decoder would cache addresses that FSDP frees on ``reshard()``.) vLLM takes the
weights as ``(name, tensor)`` pairs, gathered one parameter at a time (``full_parameters``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch.distributed.tensor import DTensor

from thinktune.runtime import Runtime


def rollout_copy(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """What thinktune's sampler reads: the policy itself on one rank, a plain copy (made before sharding) on N.

    The copy is in the run's compute dtype: with bf16 it costs half an fp32 copy, and it samples in the
    precision the update computes in (the master weights stay fp32 in the sharded policy).
    """
    if rt.world_size == 1:
        return model
    return copy.deepcopy(model).to(rt.dtype).eval().requires_grad_(False)


@torch.no_grad()
def sync_copy(rollout_model: torch.nn.Module, model: torch.nn.Module, trainable_only: bool) -> None:
    """Copy the sharded policy's current weights into the rollout copy, one parameter at a time.

    All ranks call it together (each parameter is all-gathered); gathering one parameter at a time keeps
    the extra memory to the largest parameter. ``copy_`` writes in place, so the decoder's weight pointers
    stay valid and its version check sees the change. The first sync copies everything (rank 0's broadcast
    weights may differ from this rank's copy); later ones, ``trainable_only``, skip frozen weights (a LoRA
    base), which no step changes.
    """
    if rollout_model is model:
        return
    for (name, p), (copy_name, q) in zip(model.named_parameters(), rollout_model.named_parameters(), strict=True):
        assert name == copy_name, (name, copy_name)
        if p.requires_grad or not trainable_only:
            q.copy_(p.full_tensor() if isinstance(p, DTensor) else p)


def full_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) of every parameter, detached: under FSDP each is all-gathered when reached, so every
    rank must consume the iterator in step, and only one gathered parameter need exist at a time."""
    for name, p in model.named_parameters():
        yield name, (p.full_tensor() if isinstance(p, DTensor) else p).detach()
