"""float32 matmuls on CPU through oneDNN's prepacked GEMM instead of ``torch.mm``'s BLAS (MKL).

Why: on the 2-core AMD EPYC (Zen, AVX-512) this project is measured on, MKL's sgemm runs at 90-200 GFLOP/s
while oneDNN's JIT kernels, on the same fp32 inputs with fp32 accumulation, run at 350-490 GFLOP/s: 2-3x
for every shape a 135M model decodes (32 rows against a 576 x 49152 head: 100 vs 350 GFLOP/s). MKL picks
its slower code paths on non-Intel CPUs. The results are IEEE fp32 sums in another order (max deviation
from a float64 product about 1e-4 on sums of 576-3072 unit normals, as MKL's own), not bf16 or tf32.

``pack`` reorders a weight once into oneDNN's blocked layout (an opaque ``torch._mkldnn`` tensor, as large
as the weight); ``linear`` and ``linear_add`` multiply by it. Both ops are PyTorch's own
(``torch.ops.mkldnn``, what ``torch.compile`` uses on CPU for frozen linears); ``usable`` says where they
exist and apply (a CPU fp32 tensor in a build with oneDNN).

Training: ``linears()`` is a context in which every ``F.linear`` on CPU fp32 tensors (each ``nn.Linear`` of
an HF model, peft's adapters, the output head) runs as ``_Linear``: the forward and both backward products
(``grad @ W`` and ``grad^T @ x``) through oneDNN, the same saved tensors as ``F.linear`` (x and W). The
backward runs wherever autograd runs it, inside the context or not. Elsewhere (CUDA, bf16, autocast, FSDP's
DTensors) ``F.linear`` runs as usual.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode


def usable(weight: torch.Tensor) -> bool:
    """Whether ``weight`` (any shape) can go through oneDNN here: a CPU float32 tensor and a build with it."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack(weight: torch.Tensor, rows_hint: int | None = None) -> torch.Tensor:
    """``weight`` ``[out, in]`` (``nn.Linear``'s layout) reordered for ``linear``; ``rows_hint``: the typical
    row count of the inputs (oneDNN may pick the blocking for it; any row count works)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows_hint)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``: ``x`` ``[..., in]``, ``weight`` ``[out, in]`` packed or plain (a plain one is
    reordered on every call, which costs little next to a large product); returns ``[..., out]``."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear_add(x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
               ) -> torch.Tensor:
    """``other + x @ weight.T + bias`` in one op (a residual add fused into the product), a new tensor."""
    return torch.ops.mkldnn._linear_pointwise(x, other, weight, bias, "add")


class _Linear(torch.autograd.Function):
    """``F.linear`` with its forward and backward products on oneDNN (weights unpacked: they change every step)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear(x, weight, bias)  # [..., out]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])  # [M, out]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = linear(flat, weight.t()).view(x.shape)  # [M, in]: grad @ W, W^T read as an [in, out] weight
        if ctx.needs_input_grad[1]:
            gw = linear(flat.t(), x.reshape(-1, x.shape[-1]).t())  # [out, in]: grad^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = flat.sum(0)  # [out]
        return gx, gw, gb


def _routable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Plain CPU fp32 tensors (no DTensor or other subclass), outside autocast and ``torch.compile`` (inductor
    picks its own kernels and cannot lower these ops from a traced graph), with rows to multiply."""
    tensors = [x, weight] if bias is None else [x, weight, bias]
    return (not torch.compiler.is_compiling() and all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.dtype == torch.float32 for t in tensors)
            and usable(weight) and x.device.type == "cpu" and x.dim() >= 2 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu"))


class linears(TorchFunctionMode):  # noqa: N801 - used as a context, like torch.no_grad
    """Within it, ``F.linear`` on CPU fp32 tensors runs as ``_Linear`` (see the module docstring)."""

    depth = 0  # contexts open now (all threads): what ``checkpoint_contexts`` reads

    def __enter__(self):
        linears.depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        linears.depth -= 1
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _routable(x, weight, bias):
                return _Linear.apply(x, weight, bias)
        return func(*args, **kwargs)


def checkpoint_contexts() -> tuple[AbstractContextManager, AbstractContextManager]:
    """``context_fn`` for ``torch.utils.checkpoint``: the recompute, which runs in the backward, routes
    ``F.linear`` as the forward did (inside ``linears()`` or not); otherwise the recomputed graph saves other
    tensors than the forward's and checkpoint refuses it."""
    return nullcontext(), (linears() if linears.depth else nullcontext())
