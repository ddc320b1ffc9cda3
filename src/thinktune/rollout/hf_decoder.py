"""The generic decoder: any HF causal LM with a KV cache, driven one token at a time.

It has the same interface as ``LeanDecoder`` (``prefill``, ``step``, ``reorder``), so the sampler's loop,
sampling, stop handling and log-probs are shared and both paths give the same outputs for the same model
and seed. It is no faster than ``model.generate`` (measured: docs/calibration.md); it exists so that
architectures the lean decoder does not implement still sample, with finished rows dropped from the
batch (``Cache.batch_select_indices``) rather than decoded to the end.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from thinktune.modeling.hf_compat import forward_with_cache


class HFDecoder:
    """Prefill and decode steps through ``model.forward`` with a ``DynamicCache``.

    Args:
        model: any HF causal LM.
        max_batch: the most rows a batch may have.
        max_len: prompt plus new tokens.
    """

    def __init__(self, model: torch.nn.Module, max_batch: int, max_len: int) -> None:
        self.model, self.max_batch, self.max_len = model, max_batch, max_len
        self.device = next(model.parameters()).device
        self.columns = torch.arange(max_len, device=self.device)  # [T]
        self.cache: DynamicCache | None = None
        self.t = 0

    def refresh_weights(self) -> None:
        """Nothing to do: every step calls the model itself."""

    def prefill(self, input_ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Start a batch: ``input_ids`` ``[n, P]`` left padded by ``pad`` ``[n]``; returns logits ``[n, V]``."""
        n, p = input_ids.shape
        if n > self.max_batch or p >= self.max_len:
            raise ValueError(f"batch {n}x{p} does not fit {self.max_batch}x{self.max_len}")
        self.pad = pad.clone()  # [n]
        self.attention = (self.columns[None] >= pad[:, None]).long()  # [n, T]
        positions = (self.columns[None, :p] - pad[:, None]).clamp(min=0)  # [n, P]
        self.cache = DynamicCache(config=self.model.config)
        logits, _ = forward_with_cache(self.model, self.cache, input_ids=input_ids,
                                       attention_mask=self.attention[:, :p], position_ids=positions,
                                       logits_to_keep=1)  # [n, 1, V]
        self.t = p
        return logits[:, -1].float()  # [n, V]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode one token for the ``n`` live rows (``tokens`` ``[n]``); returns logits ``[n, V]``."""
        t = self.t
        logits, _ = forward_with_cache(self.model, self.cache, input_ids=tokens[:, None],
                                       attention_mask=self.attention[:, :t + 1],
                                       position_ids=(t - self.pad)[:, None])  # [n, 1, V]
        self.t = t + 1
        return logits[:, -1].float()  # [n, V]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` ``[m]`` as the new rows ``0..m-1``."""
        self.cache.batch_select_indices(index)
        self.pad = self.pad[index]
        self.attention = self.attention[index]
