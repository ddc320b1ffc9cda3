"""Log-probs of sampled completions under a model, each prompt forwarded once.

An RL update scores G completions of every prompt. Forwarding each ``prompt + completion`` as its own
row repeats the prompt G times and pads every row to the longest sequence of the batch. ``PromptCache``
does the same math with less work:

1. every prompt except its last token goes through the model once (left padded) and its keys and values
   are kept;
2. each completion, preceded by its prompt's last token (whose logits predict the first completion
   token) and without its own last token (which predicts nothing), is forwarded on top of its prompt's
   cached keys and values; ``length_sorted_chunks`` groups completions of similar length into
   micro-batches, so little padding is computed;
3. with gradients, a micro-batch's backward stops at detached copies of the cached keys and values,
   whose gradients accumulate across micro-batches; ``backward_prompts`` then sends them through the
   prompt forward once;
4. log-probs and entropies are taken a chunk of tokens at a time (``chunked_score``), so memory grows with
   the micro-batch's tokens times the hidden size, not times the vocabulary: on the unpadded path the
   output head itself runs per chunk, on the others the model's logits are scored per chunk without
   float32 copies of them all.

Log-probs and gradients equal those of a full forward of every ``prompt + completion`` (tested to float
rounding). ``share_prompt=False`` does exactly that full forward instead, for models whose attention
cannot take a ready-made cache; it is also what runs with gradient checkpointing (HF then runs without a
cache) and under FSDP2 (see ``_cache_unusable``). The output layout is the same. That path, and SFT's and
DPO's losses (``next_token_logps``), go through ``model_logps``: for the architectures whose forward returns
its head's output untouched, the head is swapped for the one call for ``_ScoringHead``, which scores the
hidden states a chunk at a time inside the forward (where FSDP has the head's weight gathered), so the
model never makes its [B, T, V] logits.

Output layout: ``[B, T]`` with T the longest completion of the micro-batch; column k is
``log p(completion[k] | prompt, completion[:k])`` and ``mask`` is 1 on real tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import DynamicCache

from thinktune.data.chat import IGNORE_INDEX
from thinktune.modeling import onednn, unpadded
from thinktune.modeling.arch import ARCH_SPECS
from thinktune.modeling.hf_compat import forward_with_cache
from thinktune.train.losses import CHUNK_BYTES, chunked_score, shift_labels


def length_sorted_chunks(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices of ``lengths`` in micro-batches of ``size``, longest first, so rows in a micro-batch have
    similar lengths and padding is small (the longest first also makes a too-large micro-batch fail at once).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + size] for i in range(0, len(order), size)]


def right_padded(rows: Sequence[Sequence[float]], pad: float, device: torch.device, dtype: torch.dtype = torch.long,
                 width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` right padded with ``pad`` to ``width`` (default: the longest), and the 0/1 mask of real
    entries: ([B, W] of ``dtype``, [B, W] long)."""
    width = max(len(r) for r in rows) if width is None else width
    out = torch.full((len(rows), width), pad, dtype=dtype)  # [B, W]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, W]
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.tensor(r, dtype=dtype)
        mask[b, :len(r)] = 1
    return out.to(device), mask.to(device)


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model itself: a peft wrapper's base model, else ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do; a remote-code model
    may not)."""
    return "logits_to_keep" in inspect.signature(type(_hf_model(model)).forward).parameters


# Causal LMs whose forward returns ``lm_head``'s output untouched as its logits, each checked in the tests
# against its own logits: the ones ``thinktune.modeling.unpadded`` implements, and common students it does not. Not
# Gemma 2/3 (soft-capped logits) or Granite (scaled): they take the logits path.
PLAIN_HEAD_ARCHS = set(ARCH_SPECS) | {"mistral", "qwen3_moe", "olmo2"}


def _plain_head(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward returns ``lm_head``'s output untouched as its logits (no soft-capping or
    scaling after it), so that a stand-in head may return log-probs in their place: an architecture of
    ``PLAIN_HEAD_ARCHS`` with a plain linear head."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)  # None: not a transformers model
    return model_type in PLAIN_HEAD_ARCHS and type(getattr(model, "lm_head", None)) is torch.nn.Linear


def _no_router_logits(model: torch.nn.Module) -> dict:
    """Forward arguments that turn off a mixture-of-experts model's router logits where its config asks for them:
    thinktune trains with no load-balancing loss, and with a cached prompt the auxiliary loss transformers
    computes from them fails (its attention mask spans the prompt's columns, the router logits only the new
    tokens)."""
    return {"output_router_logits": False} if getattr(getattr(model, "config", None), "output_router_logits",
                                                      False) else {}


class _ScoringHead(torch.nn.Module):
    """Stands in for ``lm_head`` during one forward: from the final hidden states [B, W, H] it takes each
    target's predicting column (``pick``: [B, W, H] -> [B, T, H]), scores the targets with the real head, a
    chunk at a time (``chunked_score``), and returns [B, T, 1] log-probs, or [B, T, 2] with the entropy, as
    "logits". It runs inside the model's forward, where FSDP has the head's weight gathered; under
    checkpointing the backward recomputes each chunk after FSDP's pre-backward hook has gathered it again."""

    def __init__(self, head: torch.nn.Linear, pick, targets: torch.Tensor, temperature: float,
                 need_entropy: bool | str, chunk_bytes: int) -> None:
        super().__init__()
        self.head, self.pick, self.targets = head, pick, targets
        self.temperature, self.need_entropy, self.chunk_bytes = temperature, need_entropy, chunk_bytes

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        picked = self.pick(hidden)  # [B, T, H]
        logps, entropy = chunked_score(picked.flatten(0, 1), self.targets.flatten(), self.temperature,
                                       self.need_entropy, self.head, self.chunk_bytes)  # [B*T] each
        parts = [logps] if entropy is None else [logps, entropy]
        # Reshape before stacking, so the result is stack's fresh tensor: FSDP2 warns on a view returned here.
        return torch.stack([part.view(self.targets.shape) for part in parts], dim=-1)  # [B, T, 1 or 2]


def model_logps(model: torch.nn.Module, inputs: dict, targets: torch.Tensor, columns=None, temperature: float = 1.0,
                need_entropy: bool | str = False, chunk_bytes: int = CHUNK_BYTES
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model(**inputs)``, and the log-prob of ``targets[b, t]`` under the output at column ``columns(W)[b, t]``
    of the W the model returned (``columns`` None: column t), with the entropy there if asked.

    Where the head is plain (``_plain_head``) a stand-in head scores inside the forward, a chunk of tokens at a
    time, so no [B, W, V] logits exist (under FSDP the head's weight is gathered only inside the forward);
    otherwise the model's logits are scored a chunk at a time. The caller sets autocast. No KV cache is built
    (unless ``inputs`` asks for one): it would hold every layer's keys and values, and under block-wise
    ``torch.compile`` its update guards on the layer index, so each block recompiled until dynamo's limit (8)
    left the rest eager.

    Returns:
        (log-probs [B, T], entropy [B, T] or None).
    """
    inputs = {"use_cache": False, **inputs, **_no_router_logits(model)}

    def pick(x: torch.Tensor) -> torch.Tensor:  # [B, W, C] -> [B, T, C]
        if columns is None:
            return x[:, :targets.shape[1]]
        cols = columns(x.shape[1])
        return x.gather(1, cols[..., None].expand(-1, -1, x.shape[-1]))

    base = _hf_model(model)
    if _plain_head(base):
        head = _ScoringHead(base.lm_head, pick, targets, temperature, need_entropy, chunk_bytes)
        base.lm_head = head
        try:
            with _products(model):  # CPU fp32 products on oneDNN (2x MKL's rate here); elsewhere a no-op
                scored = model(**inputs).logits  # [B, T, 1 or 2]: log-prob (, entropy)
        finally:
            base.lm_head = head.head
        return scored[..., 0], (scored[..., 1] if need_entropy else None)
    with _products(model):
        logits = model(**inputs).logits  # [B, W, V]
    return _score_logits(pick(logits), targets, temperature, need_entropy, chunk_bytes)


def _products(model: torch.nn.Module) -> AbstractContextManager:
    """``onednn.linears()`` for a forward, except under HF gradient checkpointing: its recompute runs in the
    backward, outside this context, so it would save other tensors than the forward did and checkpoint
    would refuse it. (Any module may come here, an FSDP or peft wrapper too; HF marks each checkpointed
    block with ``gradient_checkpointing``, which is what its own deprecated ``is_gradient_checkpointing`` reads.)"""
    checkpointed = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    return nullcontext() if checkpointed else onednn.linears()


def _score_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float, need_entropy: bool | str,
                  chunk_bytes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``chunked_score`` of [B, T, V] logits against [B, T] targets: ([B, T], [B, T] or None)."""
    flat_logps, flat_entropy = chunked_score(logits.flatten(0, 1), targets.flatten(), temperature, need_entropy,
                                             chunk_bytes=chunk_bytes)  # [B*T] each
    return flat_logps.view_as(targets), None if flat_entropy is None else flat_entropy.view_as(targets)


def next_token_logps(model: torch.nn.Module, inputs: dict, labels: torch.Tensor, chunk_bytes: int = CHUNK_BYTES
                     ) -> torch.Tensor:
    """[B, T]: entry t is log p(labels[:, t+1]) under ``model(**inputs)`` where that label is set, else 0
    (``IGNORE_INDEX``: prompt, padding, and the last column). SFT's loss is minus its sum; DPO's sequence
    log-prob is its sum over a row. No [B, T, V] logits exist where the head is plain (``model_logps``)."""
    target = shift_labels(labels)  # [B, T]
    logps, _ = model_logps(model, inputs, target.clamp(min=0), chunk_bytes=chunk_bytes)
    return torch.where(target != IGNORE_INDEX, logps, 0.0)


def _cache_unusable(model: torch.nn.Module) -> bool:
    """Gradient checkpointing runs HF models without a cache; under FSDP2 the cached keys' backward would
    enter decoder blocks without passing their outputs, where FSDP's hooks unshard the weights."""
    return isinstance(model, FSDPModule) or any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


class PromptCache:
    """Score completions of ``prompts`` with ``model``; see the module docstring.

    Args:
        model: an HF causal LM (its mode, train or eval, is the caller's).
        prompts: token ids of each prompt, every one at least one token long.
        pad_id: the id written in padding (never attended to).
        share_prompt: forward each prompt once and reuse its keys and values (default), or forward
            every ``prompt + completion`` whole.
        autocast_dtype: run the forward under autocast to this dtype (None: no autocast).
        unpadded_forward: with ``share_prompt``, run completions through ``thinktune.modeling.unpadded`` (every real
            token in one matrix, padding only inside attention) where the model allows it, else through
            the HF forward on the cache.
        compile: run the unpadded forward under ``torch.compile`` (``model.compile``; the first call
            compiles, tens of seconds on a CPU).
        chunk_bytes: the most float32 logits held at once while scoring (see ``chunked_score``).

    The prompt forward runs at construction, with gradients when they are enabled, so build one per
    optimisation pass (the weights change between passes).
    """

    def __init__(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int,
                 share_prompt: bool = True, autocast_dtype: torch.dtype | None = None,
                 unpadded_forward: bool = True, compile: bool = False, chunk_bytes: int = CHUNK_BYTES) -> None:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("PromptCache: every prompt needs at least one token")
        self.model, self.prompts, self.pad_id = model, [list(p) for p in prompts], pad_id
        self.device = model.get_input_embeddings().weight.device
        self.autocast_dtype = autocast_dtype
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, [P, K, L, D], graph attached
        self.leaves: list[tuple[torch.Tensor, torch.Tensor]] = []  # detached copies the completions read
        self.share = share_prompt and max(len(p) for p in self.prompts) > 1 and not _cache_unusable(model)
        self.unpadded = unpadded_forward
        self.unpadded_fn = unpadded.compiled_forward() if compile else unpadded.forward
        self.chunk_bytes = chunk_bytes
        if self.share:
            self._forward_prompts()

    def _autocast(self):
        """Autocast to ``autocast_dtype`` if set, else fp32 with the CPU products on oneDNN (``onednn.linears``)."""
        if self.autocast_dtype is None:
            return onednn.linears()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @staticmethod
    def _eager():
        """Where the HF forward runs on a KV cache: the decoder blocks that ``model.compile`` compiled run eager
        there. Each block's cache update guards on its own layer's cache entry, so a cached forward compiled
        once per layer (4 graphs for 4 layers, and past torch's recompile limit of 8, eager anyway)."""
        return torch.compiler.set_stance("force_eager")

    def _forward_prompts(self) -> None:
        heads = [p[:-1] for p in self.prompts]
        self.width = max(len(h) for h in heads)  # L
        ids = torch.full((len(heads), self.width), self.pad_id, dtype=torch.long)  # [P, L]
        self.head_mask = torch.zeros((len(heads), self.width), dtype=torch.long)  # [P, L]
        for i, h in enumerate(heads):  # left padded: every prompt ends at column L-1
            ids[i, self.width - len(h):] = torch.tensor(h, dtype=torch.long)
            self.head_mask[i, self.width - len(h):] = 1
        self.head_mask = self.head_mask.to(self.device)
        positions = (self.head_mask.cumsum(-1) - 1).clamp(min=0)  # [P, L], what HF derives from the mask
        with self._autocast(), self._eager():
            _, cache = forward_with_cache(self.model, None, input_ids=ids.to(self.device),
                                          attention_mask=self.head_mask, position_ids=positions, logits_to_keep=1,
                                          **_no_router_logits(self.model))
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        grad = torch.is_grad_enabled()
        self.leaves = [(k.detach().requires_grad_(grad), v.detach().requires_grad_(grad)) for k, v in self.kv]

    def logps(self, prompt_index: Sequence[int], completions: Sequence[Sequence[int]], temperature: float = 1.0,
              need_entropy: bool | str = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Per-token log-probs of ``completions[b]`` after prompt ``prompt_index[b]``, at ``temperature``.

        ``need_entropy``: False, True (the entropy as a number to log, no graph) or "grad" (differentiable,
        for an entropy bonus in the loss).

        Returns:
            (logps [B, T], entropy [B, T] of the policy at each predicting position or None, mask [B, T]).
        """
        if any(len(c) == 0 for c in completions):
            raise ValueError("PromptCache.logps: empty completion")
        longest = max(len(self.prompts[p]) + len(c) for p, c in zip(prompt_index, completions, strict=True))
        if self.share and self.unpadded and not unpadded.unsupported_reason(self.model, longest):
            return self._logps_unpadded(prompt_index, completions, temperature, need_entropy)
        if self.share:
            return self._logps_cached(prompt_index, completions, temperature, need_entropy)
        return self._logps_whole(prompt_index, completions, temperature, need_entropy)

    def _logps_cached(self, prompt_index: Sequence[int], completions: Sequence[Sequence[int]], temperature: float,
                      need_entropy: bool | str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Completions through the HF forward on the prompts' cached keys and values, padded to the longest."""
        # Column k of row b: the token before completion token k.
        rows = [self.prompts[p][-1:] + list(c[:-1]) for p, c in zip(prompt_index, completions, strict=True)]
        ids, mask = right_padded(rows, self.pad_id, self.device)  # [B, T]
        index = torch.tensor(list(prompt_index), device=self.device)
        heads = [len(self.prompts[p]) - 1 for p in prompt_index]
        positions = torch.tensor(heads, device=self.device)[:, None] + torch.arange(ids.shape[1], device=self.device)
        cache = DynamicCache(ddp_cache_data=[(k.index_select(0, index), v.index_select(0, index))
                                             for k, v in self.leaves])
        attention = torch.cat([self.head_mask[index], mask], dim=1)  # [B, L+T]
        with self._autocast(), self._eager():
            picked, _ = forward_with_cache(self.model, cache, input_ids=ids, attention_mask=attention,
                                           position_ids=positions,
                                           **_no_router_logits(self.model))  # [B, T, V]: column k predicts token k
        targets, mask = right_padded([list(c) for c in completions], self.pad_id, self.device)  # [B, T]
        logps, entropy = _score_logits(picked, targets, temperature, need_entropy, self.chunk_bytes)
        mask = mask.float()
        return logps * mask, entropy, mask

    def _logps_whole(self, prompt_index: Sequence[int], completions: Sequence[Sequence[int]], temperature: float,
                     need_entropy: bool | str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Each ``prompt + completion`` forwarded whole (FSDP, gradient checkpointing, ``share_prompt=False``)."""
        rows = [self.prompts[p] + list(c) for p, c in zip(prompt_index, completions, strict=True)]
        ids, _ = right_padded(rows, self.pad_id, self.device)  # right padding needs no attention mask
        targets, mask = right_padded([list(c) for c in completions], self.pad_id, self.device)  # [B, T]
        starts = [len(self.prompts[p]) - 1 for p in prompt_index]  # the column predicting completion token 0
        width = targets.shape[1]  # T
        # Outputs from the first predicting column on only: the prompts' other columns predict nothing.
        keep = {"logits_to_keep": ids.shape[1] - min(starts)} if _takes_logits_to_keep(self.model) else {}

        def columns(kept: int) -> torch.Tensor:  # [B, T]: where each completion token's prediction is among the kept
            start = torch.tensor(starts, device=self.device) - (ids.shape[1] - kept)
            return (start[:, None] + torch.arange(width, device=self.device)).clamp(max=kept - 1)

        with self._autocast():
            logps, entropy = model_logps(self.model, {"input_ids": ids, **keep}, targets, columns, temperature,
                                         need_entropy, self.chunk_bytes)  # [B, T] each
        mask = mask.float()
        return logps * mask, entropy, mask

    def _logps_unpadded(self, prompt_index: Sequence[int], completions: Sequence[Sequence[int]], temperature: float,
                        need_entropy: bool | str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        # Row b: the prompt's last token, then completion b but its last token; token j predicts completion token j.
        rows = [self.prompts[p][-1:] + list(c[:-1]) for p, c in zip(prompt_index, completions, strict=True)]
        lengths = torch.tensor([len(r) for r in rows], device=self.device)  # [B]
        row = torch.repeat_interleave(torch.arange(len(rows), device=self.device), lengths)  # [N]
        starts = torch.cumsum(lengths, 0) - lengths  # [B]
        col = torch.arange(row.shape[0], device=self.device) - starts[row]  # [N]
        heads = torch.tensor([len(self.prompts[p]) - 1 for p in prompt_index], device=self.device)  # [B]
        tokens = torch.tensor([t for r in rows for t in r], device=self.device)  # [N]
        targets = torch.tensor([t for c in completions for t in c], device=self.device)  # [N]
        index = torch.tensor(list(prompt_index), device=self.device)
        prefix = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.leaves]
        prefix_mask = self.head_mask.index_select(0, index).bool()  # [B, L]
        real = {len(self.prompts[p]) - 1 for p in prompt_index}
        if len(real) == 1:  # equally long prompts: keep their real columns (left padded: the last ones), no mask
            start = self.width - real.pop()
            prefix, prefix_mask = [(k[:, :, start:], v[:, :, start:]) for k, v in prefix], None
        with self._autocast():
            hidden = self.unpadded_fn(self.model, tokens, heads[row] + col, row, col, int(lengths.max()), prefix,
                                      prefix_mask)  # [N, hidden]
            flat_logps, flat_entropy = chunked_score(hidden, targets, temperature, need_entropy,
                                                     self.model.get_output_embeddings(), self.chunk_bytes)  # [N] each

        def padded(x: torch.Tensor) -> torch.Tensor:  # [N] -> [B, T]
            return x.new_zeros(len(rows), int(lengths.max())).index_put((row, col), x)

        entropy = None if flat_entropy is None else padded(flat_entropy)
        return padded(flat_logps), entropy, padded(torch.ones_like(flat_logps))

    def backward_prompts(self) -> None:
        """Send the gradients accumulated on the cached keys and values through the prompt forward."""
        pairs = [(t, leaf.grad) for kv, leaves in zip(self.kv, self.leaves, strict=True)
                 for t, leaf in zip(kv, leaves, strict=True) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        self.kv, self.leaves = [], []
