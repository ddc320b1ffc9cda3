"""oneDNN products (``thinktune.modeling.onednn``) equal torch's to fp32 rounding, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from thinktune.modeling import onednn

pytestmark = pytest.mark.skipif(not onednn.usable(torch.zeros(1)), reason="this torch build has no oneDNN")


def test_packed_linear_and_fused_residual_match_torch():
    torch.manual_seed(0)
    w, b = torch.randn(48, 32), torch.randn(48)  # [out, in], [out]
    packed = onednn.pack(w, 8)
    for rows in (1, 8, 33):  # the packing's row hint does not limit the rows
        x, other = torch.randn(rows, 32), torch.randn(rows, 48)
        torch.testing.assert_close(onednn.linear(x, packed), x @ w.t())
        torch.testing.assert_close(onednn.linear(x, packed, b), x @ w.t() + b)
        torch.testing.assert_close(onednn.linear_add(x, other, packed, b), other + x @ w.t() + b)


def _grads(module: torch.nn.Linear, x: torch.Tensor, routed: bool) -> list[torch.Tensor]:
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    if routed:
        with onednn.linears():
            y = module(x)
    else:
        y = module(x)
    y.square().sum().backward()
    return [y.detach(), x.grad, module.weight.grad, module.bias.grad]


def test_linears_matches_f_linear_values_and_gradients():
    torch.manual_seed(0)
    module, x = torch.nn.Linear(32, 48), torch.randn(3, 5, 32)  # [B, T, in]: flattened inside, shape kept
    for ours, ref in zip(_grads(module, x, True), _grads(module, x, False), strict=True):
        torch.testing.assert_close(ours, ref)


def test_linears_routes_cpu_fp32_only():
    calls = []
    apply = onednn._Linear.apply
    onednn._Linear.apply = lambda *a: calls.append(1) or apply(*a)
    try:
        with onednn.linears():
            torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
            torch.nn.functional.linear(torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    finally:
        onednn._Linear.apply = apply
    assert len(calls) == 1  # fp64 and autocast take F.linear's own path


def test_checkpoint_recomputes_under_the_same_routing():
    torch.manual_seed(0)
    module, x = torch.nn.Linear(16, 24), torch.randn(6, 16, requires_grad=True)
    with onednn.linears():  # without context_fn the recompute (outside the context) saves other tensors: an error
        y = checkpoint(module, x, use_reentrant=False, context_fn=onednn.checkpoint_contexts)
    y.sum().backward()
    torch.testing.assert_close(module.weight.grad, torch.ones(24, 6) @ x.detach())
