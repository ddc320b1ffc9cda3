"""Optimizer and learning-rate schedule shared by every training recipe."""

from __future__ import annotations

import math

import torch
from torch.autograd.graph import increment_version

from thinktune.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (norm gains, biases and 1-d params are not decayed).

    The fused kernel (one pass per parameter instead of ~10 foreach ops; about 3x faster on a CPU) runs
    where every parameter is a plain floating-point tensor; FSDP's sharded DTensors take the foreach path.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(type(p) is torch.nn.Parameter and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)
    if fused:
        # The fused kernel writes the parameters without bumping their version counters (torch 2.13), which
        # the rollout decoder reads to know its weight copies are stale, and autograd to catch in-place writes.
        optimizer.register_step_post_hook(lambda opt, args, kwargs: increment_version(params))
    return optimizer


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier on cfg.lr at optimizer step ``step`` (0-based): linear warm-up, then the chosen decay.

    Warm-up rises linearly, (step + 1) / warmup_steps, reaching 1.0 at step ``warmup_steps - 1``; from step
    ``warmup_steps`` the decay runs from 1.0 to ``min_lr_ratio`` at the last step (cosine or linear), or
    stays at 1.0 (constant).
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
