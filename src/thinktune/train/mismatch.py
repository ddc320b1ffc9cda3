"""How far a sampler's token log-probs are from the training forward's, on the same tokens.

GRPO takes the sampler's log-probs as the old policy's. When the sampler's kernels differ from the trainer's
(bf16 against fp32, a fused decode step, CUDA graphs, vLLM), the two disagree, the importance ratio of the
first pass is not 1, and the update clips or pushes tokens for numerical reasons alone, silently. These
figures measure the gap; ``thinktune check-logprobs`` (``recipes/check_logprobs.py``) computes them on a
model and judges them against a threshold.

All figures are over the tokens where ``mask`` is 1; the values elsewhere (padding) are never read, so they
may be anything, inf or nan included. With ``sampler_logps`` = log q(x) (the distribution the tokens were
drawn from) and ``logps`` = log p(x) (the trainer's), per token:

- ``mismatch/abs_mean``: the mean of |log p(x) - log q(x)|;
- ``mismatch/abs_max``: its maximum;
- ``mismatch/kl_k3``: the mean of k3 = exp(r) - r - 1 with r = log p(x) - log q(x) (trainer minus sampler).

The k3 direction: the tokens are drawn from the sampler, x ~ q, and for x ~ q, E_q[p/q] = 1, so
E_q[exp(r) - 1] = 0 and E_q[k3] = E_q[-r] = E_q[log q - log p] = KL(q || p). So with r = trainer - sampler,
k3 is an unbiased, per-token non-negative estimate of KL(sampler || trainer) (Schulman's k3, "Approximating
KL divergence", 2020). The other direction, r = sampler - trainer, would need tokens drawn from the trainer to
be unbiased. It is the orientation of GRPO's KL term too, and its math is that term's, ``losses.kl_k3`` (d = ref
- policy, tokens from the policy), called with the sampler in the policy's place and the trainer in the
reference's.
"""

from __future__ import annotations

import torch

from thinktune.train.losses import kl_k3

FIGURES = ("mismatch/abs_mean", "mismatch/abs_max", "mismatch/kl_k3")


def _checked(sampler_logps: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(r = logps - sampler_logps, the boolean mask), both [B, T], in float64 and 0 off the mask.

    float64: the figures of an fp32 pair are ~1e-7, where the float32 subtraction and mean would round away
    what they measure; and exp(r) stays finite up to r = 709 (float32 overflows past 88).

    Raises:
        ValueError: shapes that differ, or a mask with no token.
    """
    if not sampler_logps.shape == logps.shape == mask.shape:
        raise ValueError(f"shapes differ: sampler {tuple(sampler_logps.shape)}, trainer {tuple(logps.shape)}, "
                         f"mask {tuple(mask.shape)}")
    keep = mask.bool()  # [B, T]
    if not keep.any():
        raise ValueError("the mask selects no token: nothing to compare")
    r = torch.where(keep, logps.double() - sampler_logps.double(), 0.0)  # [B, T]
    return r, keep


def abs_diff(sampler_logps: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token |logps - sampler_logps|, 0 off the mask.

    Args:
        sampler_logps: [B, T] log-probs the sampler gave for its tokens.
        logps: [B, T] log-probs of the same tokens under the training forward.
        mask: [B, T] 1 on real tokens, 0 on padding.

    Returns:
        [B, T] float64.
    """
    r, _ = _checked(sampler_logps, logps, mask)
    return r.abs()  # [B, T]


def k3(sampler_logps: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = exp(r) - r - 1, r = logps - sampler_logps (see the module docstring), 0 off the mask.

    Args:
        sampler_logps: [B, T] log q(x), the distribution the tokens were drawn from.
        logps: [B, T] log p(x) under the training forward.
        mask: [B, T] 1 on real tokens, 0 on padding.

    Returns:
        [B, T] float64, each >= 0; its mean over the mask estimates KL(sampler || trainer).
    """
    _, keep = _checked(sampler_logps, logps, mask)
    # losses.kl_k3(pi, ref) is exp(d) - d - 1 with d = ref - pi: here d = logps - sampler_logps, in float64.
    return torch.where(keep, kl_k3(sampler_logps.double(), logps.double()), 0.0)  # [B, T]


def mismatch_figures(sampler_logps: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The named figures (``FIGURES``) over the masked tokens, each token counting once.

    Args:
        sampler_logps: [B, T] log-probs the sampler gave for its tokens.
        logps: [B, T] log-probs of the same tokens under the training forward.
        mask: [B, T] 1 on real tokens, 0 on padding.

    Returns:
        {"mismatch/abs_mean", "mismatch/abs_max", "mismatch/kl_k3"} as floats.

    Raises:
        ValueError: shapes that differ, or a mask with no token.
    """
    gap = abs_diff(sampler_logps, logps, mask)  # [B, T], 0 off the mask
    count = mask.bool().sum()
    return {"mismatch/abs_mean": float(gap.sum() / count),
            "mismatch/abs_max": float(gap.max()),
            "mismatch/kl_k3": float(k3(sampler_logps, logps, mask).sum() / count)}


def worst_token(sampler_logps: torch.Tensor, logps: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the masked token with the largest |logps - sampler_logps| (the first, on ties)."""
    gap = abs_diff(sampler_logps, logps, mask)  # [B, T]
    flat = int(gap.flatten().argmax())
    return divmod(flat, gap.shape[1])
