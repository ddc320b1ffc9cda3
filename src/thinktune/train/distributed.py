"""Data parallelism with FSDP2: shard the model, split each step's batch over ranks, add results back up.

Under ``torchrun --nproc_per_node=N`` every training recipe runs its usual loop on every rank; this module
holds what differs from one process, and each function is a no-op (or the identity) when there is only
one. How the pieces fit:

- ``prepare`` shards the policy (and a frozen reference) with ``fully_shard``: each decoder block is its
  own FSDP unit, so only one block's full weights live on a rank at a time, then the root (embeddings,
  final norm, head). With bf16 the policy computes in bf16 and reduces gradients in fp32 while the
  optimizer keeps fp32 master weights (``MixedPrecisionPolicy``).
- A step's global batch is split into contiguous per-rank shares (``shard``). Each recipe normalises its
  loss by a *global* count (the step's tokens, pairs or sequences), so the per-rank losses add up to the
  one-process loss. FSDP averages gradients over ranks, so each rank's loss is multiplied by the world
  size (``loss_scale``) to turn that average into the sum. (``set_gradient_divide_factor(1.0)`` says the
  same, but its PREMUL_SUM reduction does not exist in gloo, which the CPU tests use.)
- Every forward pass of a sharded model gathers weights collectively, so every rank must run the same
  number of passes; ``pad_passes`` pads a rank with fewer micro-batches with empty ones.
- Rollouts: how a sampler gets the sharded policy's weights is ``thinktune.rollout.weights``.
- Checkpoints gather full weights and optimizer state onto rank 0 (``get_model_state_dict`` /
  ``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``), keyed by parameter name,
  so a checkpoint saved by N ranks is a plain HF model and resumes on any other N.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from thinktune.config import ModelConfig
from thinktune.errors import ConfigError
from thinktune.modeling import hf_compat
from thinktune.runtime import Runtime

T = TypeVar("T")
GATHER_TO_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    return not active() or dist.get_rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


# --------------------------------------------------------------------------------------------------------
# Models


def prepare(model: torch.nn.Module, cfg: ModelConfig, rt: Runtime, trainable: bool = True) -> torch.nn.Module:
    """Gradient checkpointing and compilation (if asked, for a trained model), then FSDP2 sharding on N ranks.

    Blocks are compiled one by one (as torchtune does) rather than the whole model: the graphs stay small,
    identical blocks share compiled code, and FSDP's per-block hooks stay outside the graphs.

    Raises:
        ConfigError: the model has no decoder blocks to shard or compile one by one.
    """
    if trainable and cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and with FSDP's hooks.
        hf_compat.enable_activation_checkpointing(model, {"use_reentrant": False})
        model.config.use_cache = False
    if trainable and cfg.compile:
        for block in decoder_blocks(model):
            block.compile()
    if rt.world_size == 1:
        return model
    blocks = decoder_blocks(model)
    broadcast_from_rank0(model)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if rt.dtype == torch.bfloat16 else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


@torch.no_grad()
def broadcast_from_rank0(model: torch.nn.Module) -> None:
    """Give every rank rank 0's weights before sharding.

    Whatever a rank draws at load time comes from its rank-offset RNG: a fresh LoRA adapter's A matrix,
    the rows a grown embedding gains. Unsynchronised, each rank would keep its shard of a different
    model; with rank 0's, the run starts where the one-process run (seeded like rank 0) starts.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor, src=0)


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks, found by the class names HF lists in ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])  # an HF attribute; other modules lack it
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(f"{type(model).__name__} names no decoder-block class (_no_split_modules), so it "
                          "cannot be sharded or compiled block by block; run it on one process (no torchrun) "
                          "with model.compile=false")
    return blocks


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (0: no clipping) and return it as a plain tensor on every rank."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def loss_scale(rt: Runtime) -> float:
    """Multiplier on a rank's globally normalised loss so FSDP's gradient average becomes the sum."""
    return float(rt.world_size)


# --------------------------------------------------------------------------------------------------------
# Splitting work and adding results


def check_divisible(name: str, size: int, per_pass: int, rt: Runtime) -> None:
    """``size`` items per step must split into whole micro-batches of ``per_pass`` on every rank."""
    if size % (per_pass * rt.world_size):
        raise ConfigError(f"{name}={size} does not split over {rt.world_size} ranks x {per_pass} per pass; "
                          f"make it a multiple of {per_pass * rt.world_size}")


def shard(items: list[T], rt: Runtime) -> list[T]:
    """This rank's contiguous share of ``items`` (whose length the world size divides)."""
    per = len(items) // rt.world_size
    return items[rt.rank * per:(rt.rank + 1) * per]


def all_sum(*values: float) -> list[float]:
    """Sums of each value over ranks (float64, so token counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64)
    if active():
        dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    return all_sum(float(flag))[0] > 0


def pad_passes(passes: list[list[int]]) -> list[list[int]]:
    """Pad this rank's micro-batches with empty ones up to the most any rank has (FSDP passes are collective)."""
    if not active():
        return passes
    most = torch.tensor([len(passes)])
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return passes + [[] for _ in range(int(most) - len(passes))]


def rank_passes(n: int, rt: Runtime) -> list[int | None]:
    """This rank's share of ``n`` no-gradient passes (evaluation): every world_size-th index from its rank,
    then None up to the most any rank has, since FSDP's passes are collective. A None pass must still run
    the model (on any batch) and discard its result. One process: ``0..n-1``."""
    mine: list[int | None] = list(range(rt.rank, n, rt.world_size))
    return mine + [None] * (-(-n // rt.world_size) - len(mine))


def reshard(model: torch.nn.Module) -> None:
    """Put FSDP2 modules back to their sharded parameters after no-gradient passes.

    The root FSDP module keeps its parameters unsharded after a forward (a backward normally follows at
    once); after an evaluation nothing reshards them, and the optimizer state dict, which maps the
    optimizer's sharded parameters to the module's, then fails (``KeyError``). No-op without FSDP.
    """
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def gather_lists(items: list[T]) -> list[T]:
    """Every rank's list, concatenated in rank order, on every rank (for metrics and dumps; small objects)."""
    if not active():
        return items
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


# --------------------------------------------------------------------------------------------------------
# State dicts (collective: every rank calls; rank 0 gets the tensors)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (empty on the other ranks)."""
    return get_model_state_dict(model, options=GATHER_TO_RANK0)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, gathered whole onto rank 0 (empty elsewhere)."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER_TO_RANK0)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a name-keyed full optimizer state, re-sharding it to this run's ranks (any number)."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
