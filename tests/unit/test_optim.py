"""Tests for thinktune.train.optim: the learning-rate schedule against hand-worked values, and the optimizer groups.

lr_factor(step) for 0-based optimizer steps, with w = warmup_steps, T = total_steps, r = min_lr_ratio:
    step < w:  (step + 1) / w
    else:      progress p = min(1, (step - w) / max(1, T - w - 1))
               cosine: r + (1 - r) * 0.5 * (1 + cos(pi * p));  linear: r + (1 - r) * (1 - p);  constant: 1
The cases below use w = 4, T = 15 (so the decay spans 10 steps: p = (step - 4) / 10) and r = 0.1.
"""

from __future__ import annotations

import math

import pytest
import torch

from thinktune.config import OptimConfig
from thinktune.train.optim import build_optimizer, build_scheduler, lr_factor

W, T, R = 4, 15, 0.1

# cos(0.2 pi) = (1 + sqrt 5) / 4 = 0.809017; cosine shape at p = 0.2: 0.5 * 1.809017 = 0.9045085
COS_02 = 0.1 + 0.9 * 0.5 * (1 + (1 + math.sqrt(5)) / 4)

CASES = {
    "cosine": {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 6: COS_02, 9: 0.55, 14: 0.1, 30: 0.1},
    # linear at p = 0.2: 0.1 + 0.9 * 0.8 = 0.82; at p = 0.5: 0.1 + 0.45 = 0.55
    "linear": {0: 0.25, 2: 0.75, 4: 1.0, 6: 0.82, 9: 0.55, 14: 0.1, 30: 0.1},
    "constant": {0: 0.25, 3: 1.0, 4: 1.0, 9: 1.0, 14: 1.0, 30: 1.0},
}


@pytest.mark.parametrize(("schedule", "step", "expected"),
                         [(s, k, v) for s, table in CASES.items() for k, v in table.items()])
def test_lr_factor_matches_hand_worked_values(schedule: str, step: int, expected: float) -> None:
    cfg = OptimConfig(warmup_steps=W, schedule=schedule, min_lr_ratio=R)
    assert lr_factor(step, T, cfg) == pytest.approx(expected, abs=1e-12)


def test_cosine_quarter_and_three_quarter_points() -> None:
    """p = 0.25 and 0.75 need a decay span divisible by 4: w = 0, T = 9 gives span 8, so steps 2 and 6.
    cos(pi/4) = sqrt(2)/2: shape (1 +- sqrt(2)/2) / 2; with r = 0 the factor is the shape itself."""
    cfg = OptimConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    assert lr_factor(0, 9, cfg) == pytest.approx(1.0)
    assert lr_factor(2, 9, cfg) == pytest.approx((1 + math.sqrt(2) / 2) / 2)
    assert lr_factor(6, 9, cfg) == pytest.approx((1 - math.sqrt(2) / 2) / 2)
    assert lr_factor(8, 9, cfg) == pytest.approx(0.0, abs=1e-12)


def test_warmup_never_gives_a_zero_learning_rate_and_is_linear() -> None:
    cfg = OptimConfig(warmup_steps=10, schedule="constant")
    factors = [lr_factor(s, 100, cfg) for s in range(10)]
    assert factors == pytest.approx([0.1 * (s + 1) for s in range(10)])


def test_schedule_is_monotone_after_warmup() -> None:
    for schedule in ("cosine", "linear"):
        cfg = OptimConfig(warmup_steps=W, schedule=schedule, min_lr_ratio=R)
        f = [lr_factor(s, T, cfg) for s in range(W, T)]
        assert all(a >= b for a, b in zip(f, f[1:], strict=False)), schedule


def test_decay_with_total_steps_at_most_warmup_stays_finite() -> None:
    """T - w - 1 <= 0 would divide by zero; the span is clamped to 1."""
    cfg = OptimConfig(warmup_steps=5, schedule="linear", min_lr_ratio=R)
    assert lr_factor(5, 5, cfg) == pytest.approx(1.0)
    assert lr_factor(6, 5, cfg) == pytest.approx(0.1)


def test_scheduler_applies_lr_factor_per_optimizer_step() -> None:
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.01, warmup_steps=W, schedule="linear", min_lr_ratio=R)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, T)
    seen = []
    for _ in range(T):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.01 * lr_factor(s, T, cfg) for s in range(T)])
    assert seen[0] == pytest.approx(0.0025) and seen[-1] == pytest.approx(0.001)


def test_weight_decay_only_on_matrices() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    cfg = OptimConfig(weight_decay=0.5, betas=[0.8, 0.9])
    opt = build_optimizer(model, cfg)
    decay, no_decay = opt.param_groups
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 3)]
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(4,), (4,), (4,)]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.5, 0.0)
    assert decay["betas"] == (0.8, 0.9)


def test_optimizer_steps_like_reference_adamw() -> None:
    """The (fused) optimizer takes the same steps as torch's single-tensor AdamW with the same groups."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    reference = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    reference.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=0.05, weight_decay=0.3, betas=[0.8, 0.9])
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"]
    ref_opt = torch.optim.AdamW([{"params": [reference[0].weight], "weight_decay": 0.3},
                                 {"params": [reference[0].bias, *reference[1].parameters()], "weight_decay": 0.0}],
                                lr=0.05, betas=(0.8, 0.9), foreach=False)
    x = torch.randn(8, 5)
    for _ in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_optimizer_step_bumps_parameter_versions() -> None:
    """A step must mark every parameter as written: the rollout decoder re-reads weights whose version moved."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimConfig(lr=0.1))
    model(torch.randn(2, 3)).sum().backward()
    before = [p._version for p in model.parameters()]
    opt.step()
    assert all(p._version > v for p, v in zip(model.parameters(), before, strict=True))
