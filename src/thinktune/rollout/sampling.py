"""Token selection: temperature, top-k, top-p and greedy on a batch of next-token logits.

One function, ``select_tokens``, turns logits ``[B, V]`` into the next tokens and two log-probabilities
per token:

- ``logps``: ``log softmax(logits)[token]``, the model's own distribution at temperature 1 with no filter.
  This is what a teacher-forced forward pass of the same model returns for the same token, so GRPO can use
  it as the old policy's log-prob.
- ``sampling_logps``: the log-prob under the distribution the token was actually drawn from: logits divided
  by the temperature, then top-k and top-p applied and renormalised (0 for greedy). With ``top_k=0`` and
  ``top_p=1`` this is ``log softmax(logits / T)[token]``, the temperature-scaled policy that TRL and verl
  score with.

Drawing uses the Gumbel-max trick (the exponential race): ``argmax(logits / T + G)`` with
``G = -log(-log U)`` picks token ``i`` with probability ``softmax(logits / T)_i``. ``U`` is uniform on
``[0, 1)``; ``U = 0`` gives ``G = -inf`` (that token loses, never a NaN), and a filtered-out logit
(``-inf``) never wins. It needs one random tensor and one argmax per step and no sort. The noise does not
depend on the logits, so the sampler may draw it for several steps at once (``gumbel_noise``): fewer,
larger random calls, the same distribution.
"""

from __future__ import annotations

import torch


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log U)`` of ``shape``, U uniform on [0, 1)."""
    return torch.rand(shape, generator=generator, device=device).log_().neg_().log_().neg_()


def select_tokens(logits: torch.Tensor, *, greedy: bool, temperature: float, top_k: int, top_p: float,
                  generator: torch.Generator | None, banned: torch.Tensor | None = None,
                  gumbel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the next token of every row.

    Args:
        logits: ``[B, V]`` float32 next-token logits; not modified.
        greedy: take the argmax (temperature and filters are ignored).
        temperature: > 0; the logits are divided by it before the filters.
        top_k: keep the ``top_k`` largest logits (0: no filter).
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p`` (1: no filter).
        generator: the random source (on the logits' device), for reproducible draws.
        banned: ``[K]`` token ids that must not be drawn (end-of-sequence ids before ``min_new_tokens``);
            they are removed from the sampling distribution but still count in ``logps``.
        gumbel: ``[B, V]`` noise from ``gumbel_noise`` to use instead of drawing it here.

    Returns:
        ``(tokens [B] int64, logps [B], sampling_logps [B])`` as described in the module docstring.
    """
    model_logps = torch.log_softmax(logits, dim=-1)  # [B, V]
    work = logits
    if banned is not None:
        work = logits.index_fill(1, banned, float("-inf"))  # [B, V]
    if greedy:
        tokens = work.argmax(dim=-1)  # [B]
        logps = model_logps.gather(1, tokens.unsqueeze(1)).squeeze(1)  # [B]
        return tokens, logps, torch.zeros_like(logps)
    if temperature != 1.0:
        work = work / temperature  # [B, V]
    if top_k > 0 and top_k < work.shape[-1]:
        work = _top_k_filter(work, top_k)
    if top_p < 1.0:
        work = _top_p_filter(work, top_p)
    if gumbel is None:
        gumbel = gumbel_noise(work.shape, generator, work.device)  # [B, V]
    index = (work + gumbel).argmax(dim=-1).unsqueeze(1)  # [B, 1]
    logps = model_logps.gather(1, index).squeeze(1)  # [B]
    if work is logits:  # T=1, no filter, nothing banned: the sampling distribution is the model's
        return index.squeeze(1), logps, logps
    sampling_logps = torch.log_softmax(work, dim=-1).gather(1, index).squeeze(1)  # [B]
    return index.squeeze(1), logps, sampling_logps


def _top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))  # [B, V]


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep token ``i`` (in descending order) while the mass of the tokens before it is below ``top_p``."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    probs = sorted_logits.softmax(dim=-1)  # [B, V]
    mass_before = probs.cumsum(dim=-1) - probs  # [B, V]
    drop_sorted = mass_before >= top_p  # [B, V]; the most likely token is always kept
    drop = drop_sorted.scatter(1, order, drop_sorted)  # [B, V] back in vocabulary order
    return logits.masked_fill(drop, float("-inf"))  # [B, V]
