"""A training forward over unpadded tokens for the Llama family (Llama, Qwen2, Qwen3, Phi3), on cached prompts.

A padded batch ``[B, T]`` spends the projections and the MLP (most of the FLOPs) on padding, and a long
RL batch split into small micro-batches pays the per-call overhead many times. Here every real token of
the batch sits in one ``[N, hidden]`` matrix: the model's own embedding, norms, projections and MLP run
on it once, and only attention sees the sequences, scattered into ``[B, heads, T, D]`` (padding exists
in attention alone) and gathered back. It is what verl calls "remove padding", without flash-attn's
varlen kernels, which CPUs lack.

Each sequence is the continuation of one cached prompt: its queries attend to that prompt's cached
keys and values (``prefix``) and causally to its own tokens. Rotary, scaling and projections are the HF
modules' own (``apply_rotary_pos_emb`` from the model's modeling file, ``rotary_emb``, ``q_proj`` ...),
so the result equals the HF forward to float rounding (``tests/unit/test_logprobs.py``).

``unsupported_reason`` says when this path cannot run (a wrapped model such as peft's LoRA, another
architecture, a sliding window shorter than the sequence, attention dropout in training, weights sharded
by FSDP, whose hooks fire only on a full module call); the caller then uses the HF forward.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from thinktune.rollout import lean


def unsupported_reason(model: torch.nn.Module, max_len: int) -> str | None:
    """Why ``forward`` cannot run ``model`` on sequences of up to ``max_len`` tokens (None: it can)."""
    if not isinstance(model, PreTrainedModel):  # e.g. a peft wrapper: its adapters live in its own forward
        return f"{type(model).__name__} is not a plain Hugging Face model"
    reason = lean.unsupported_reason(model, max_len)
    if reason:
        return reason
    if model.training and getattr(model.config, "attention_dropout", 0.0):
        return "attention dropout in training"
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return "parameters sharded by FSDP"
    return None


def _qkv(attn: torch.nn.Module, x: torch.Tensor, heads: int, kv_heads: int, dim: int):
    """[N, heads, D], [N, kv_heads, D], [N, kv_heads, D] from the attention block's own projections."""
    if hasattr(attn, "qkv_proj"):  # Phi3 ships them fused
        q, k, v = attn.qkv_proj(x).split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    else:
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    n = x.shape[0]
    q, k, v = q.view(n, heads, dim), k.view(n, kv_heads, dim), v.view(n, kv_heads, dim)
    if hasattr(attn, "q_norm"):  # Qwen3: an RMSNorm over each head's queries and keys, before rotary
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


def forward(model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor, row: torch.Tensor,
            col: torch.Tensor, width: int, prefix: list[tuple[torch.Tensor, torch.Tensor]],
            prefix_mask: torch.Tensor | None) -> torch.Tensor:
    """Final hidden states of every token of a batch of sequences that continue cached prompts: the input of
    ``model.lm_head``, which the caller applies (``logprobs.chunked_score`` does, a chunk of tokens at a time).

    Args:
        model: a Llama/Qwen2/Qwen3/Phi3 ``*ForCausalLM`` that ``unsupported_reason`` accepts.
        tokens: [N] every real token of the batch, sequence after sequence.
        positions: [N] each token's position in its full sequence (prompt included).
        row, col: [N] each token's sequence b < B and its index within that sequence (< ``width``).
        width: T, the longest sequence.
        prefix: per layer, (keys, values) [B, kv_heads, L, D] of each sequence's prompt, rotary applied.
        prefix_mask: [B, L] bool, True on the prompt's real (not padding) columns; None when every column is
            real for every sequence (their prompts are equally long). Then attention needs no mask: it runs as
            square causal attention over ``prefix + sequence``, with L zero queries in front whose outputs
            are dropped, which lets CUDA use its flash kernel (a mask rules it out, and at 32k tokens the
            mask itself is gigabytes); the Phi-4 configs' one-sequence micro-batches always take this path.

    Returns:
        [N, hidden] states after the final norm.
    """
    cfg, inner = model.config, model.model
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rotate = sys.modules[type(inner.layers[0].self_attn).__module__].apply_rotary_pos_emb
    batch, length = prefix[0][0].shape[0], prefix[0][0].shape[2]  # B, L

    h = inner.embed_tokens(tokens)  # [N, hidden]
    cos, sin = inner.rotary_emb(h, positions)  # [N, R] each
    mask = None
    if prefix_mask is not None:
        causal = torch.ones(width, width, dtype=torch.bool, device=h.device).tril()  # [T, T]
        valid = torch.zeros(batch, width, dtype=torch.bool, device=h.device)  # [B, T]
        valid[row, col] = True
        own = causal & valid[:, None, :]  # [B, T, T]: earlier real tokens of the same sequence
        # A padding query also sees itself (a zero key) so no softmax row is empty: no NaN, even in backward.
        own = own | torch.eye(width, dtype=torch.bool, device=h.device)
        mask = torch.cat([prefix_mask[:, None, :].expand(-1, width, -1), own], dim=-1)[:, None]  # [B, 1, T, L+T]
    # Without a mask, a real query never sees a padding key: padding sits after every real token of its row.

    def padded(x: torch.Tensor) -> torch.Tensor:  # [N, H, D] -> [B, H, T, D], zeros where no token is
        out = x.new_zeros(batch, width, *x.shape[1:])
        return out.index_put((row, col), x).transpose(1, 2)

    for layer, (prefix_k, prefix_v) in zip(inner.layers, prefix, strict=True):
        attn = layer.self_attn
        q, k, v = _qkv(attn, layer.input_layernorm(h), heads, kv_heads, dim)
        q, k = rotate(q, k, cos, sin, unsqueeze_dim=1)
        keys = torch.cat([prefix_k, padded(k)], dim=2)  # [B, K, L+T, D]
        values = torch.cat([prefix_v, padded(v)], dim=2)
        if mask is None:  # L zero queries in front make it square: top-left causal is then the right one
            queries = torch.cat([q.new_zeros(batch, heads, length, dim), padded(q)], dim=2)  # [B, H, L+T, D]
            out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, scale=attn.scaling,
                                                 enable_gqa=heads != kv_heads)[:, :, length:]  # [B, H, T, D]
        else:
            out = F.scaled_dot_product_attention(padded(q), keys, values, attn_mask=mask, scale=attn.scaling,
                                                 enable_gqa=heads != kv_heads)  # [B, H, T, D]
        h = h + attn.o_proj(out.transpose(1, 2)[row, col].reshape(-1, heads * dim))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return inner.norm(h)  # [N, hidden]


@functools.cache
def compiled_forward():
    """``forward`` under ``torch.compile`` (dynamic shapes: batches differ in size every step), compiled on
    first call and shared by every caller in the process."""
    return torch.compile(forward, dynamic=True)
