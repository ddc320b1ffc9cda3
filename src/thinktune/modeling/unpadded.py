"""A training forward over unpadded tokens for the Llama family (``arch.ARCH_SPECS``), on cached prompts.

A padded batch ``[B, T]`` spends the projections and the MLP (most of the FLOPs) on padding, and a long
RL batch split into small micro-batches pays the per-call overhead many times. Here every real token of
the batch sits in one ``[N, hidden]`` matrix: the model's own embedding, norms, projections and MLP run
on it once, and only attention sees the sequences, scattered into ``[B, heads, T, D]`` (padding exists
in attention alone) and gathered back. It is what verl calls "remove padding", without flash-attn's
varlen kernels, which CPUs lack.

Each sequence is the continuation of one cached prompt: its queries attend to that prompt's cached
keys and values (``prefix``) and causally to its own tokens. The block is ``arch.decoder_block``, the one the
lean decoder runs, read through the architecture table (``arch.ARCH_SPECS``); its projections and RMSNorms
are the HF modules themselves (``q_proj``, ``input_layernorm`` ...: autocast, oneDNN routing and peft's
adapters apply as in the HF forward) and its rotary tables the model's ``rotary_emb``, so the result equals the
HF forward to float rounding (``tests/unit/test_logprobs.py``, ``tests/unit/test_arch.py``).

``unsupported_reason`` says when this path cannot run (a wrapped model such as peft's LoRA, another
architecture, a sliding window shorter than the sequence, attention dropout in training, weights sharded
by FSDP, whose hooks fire only on a full module call); the caller then uses the HF forward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from thinktune.modeling import arch, lora


def unsupported_reason(model: torch.nn.Module, max_len: int) -> str | None:
    """Why ``forward`` cannot run ``model`` on sequences of up to ``max_len`` tokens (None: it can): the
    architecture table's check (``arch.unsupported_reason``), the linears' (``lora.linears_reason``), and what
    the training forward adds."""
    if not isinstance(model, PreTrainedModel):  # e.g. a peft wrapper: its adapters live in its own forward
        return f"{type(model).__name__} is not a plain Hugging Face model"
    reason = arch.unsupported_reason(model, max_len) or lora.linears_reason(model)
    if reason:
        return reason
    if model.training and getattr(model.config, "attention_dropout", 0.0):
        return "attention dropout in training"
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return "parameters sharded by FSDP"
    return None


@dataclass
class _Modules:
    """One HF decoder layer as ``arch.decoder_block`` reads it (``arch.BlockWeights``): its own modules, found by
    the spec's names, so the products keep the HF forward's autograd, autocast and adapters."""

    layer: torch.nn.Module
    qkv_mods: list[torch.nn.Module]
    o_mod: torch.nn.Module
    gate_up_mods: list[torch.nn.Module]
    down_mod: torch.nn.Module
    qk_gains: tuple[torch.Tensor, torch.Tensor] | None
    qk_eps: float

    @classmethod
    def of(cls, spec: arch.ArchSpec, layer: torch.nn.Module) -> _Modules:
        qkv_mods, o_mod = arch.attention_modules(spec, layer.self_attn)
        gate_up_mods, down_mod = arch.mlp_modules(spec, layer.mlp)
        norms = arch.qk_norm_modules(spec, layer.self_attn)  # Qwen3
        gains, eps = (None, 0.0) if norms is None else ((norms[0].weight, norms[1].weight), norms[0].variance_epsilon)
        return cls(layer, qkv_mods, o_mod, gate_up_mods, down_mod, gains, eps)

    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.input_layernorm(x)

    def norm2(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.post_attention_layernorm(x)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.qkv_mods]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # [N, (H+2K)*D]

    def gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m(x) for m in self.gate_up_mods]
        return tuple(outs) if len(outs) == 2 else outs[0].chunk(2, dim=-1)  # [N, I] each

    def o_add(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return x + self.o_mod(a)

    def down_add(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return x + self.down_mod(a)


def forward(model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor, row: torch.Tensor,
            col: torch.Tensor, width: int, prefix: list[tuple[torch.Tensor, torch.Tensor]],
            prefix_mask: torch.Tensor | None) -> torch.Tensor:
    """Final hidden states of every token of a batch of sequences that continue cached prompts: the input of
    ``model.lm_head``, which the caller applies (``logprobs.chunked_score`` does, a chunk of tokens at a time).

    Args:
        model: a ``*ForCausalLM`` of the architecture table that ``unsupported_reason`` accepts.
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
    cfg, inner, spec = model.config, model.model, arch.spec_for(model)
    heads, kv_heads, dim = cfg.num_attention_heads, cfg.num_key_value_heads, arch.head_dim(cfg)
    batch, length = prefix[0][0].shape[0], prefix[0][0].shape[2]  # B, L

    h = inner.embed_tokens(tokens)  # [N, hidden]
    # As one row of N tokens: the rotary modules of older transformers (5.16) take only [B, T] position ids.
    cos, sin = inner.rotary_emb(h[None], positions[None])  # [1, N, R] each
    cos, sin = cos[0], sin[0]  # [N, R]
    layout = arch.head_layout(cfg, cos.shape[-1], h.device)
    rope = tuple(t[:, None] for t in arch.fold_rope(cos, sin, dim))  # [N, 1, D] each: HF's rotation, rotate-half
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

    def attend(prefix_k: torch.Tensor, prefix_v: torch.Tensor, scaling: float, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> torch.Tensor:  # q [N, H, D]; k, v [N, K, D]; prefix [B, K, L, D] -> [N, H*D]
        keys = torch.cat([prefix_k, padded(k)], dim=2)  # [B, K, L+T, D]
        values = torch.cat([prefix_v, padded(v)], dim=2)
        if mask is None:  # L zero queries in front make it square: top-left causal is then the right one
            queries = torch.cat([q.new_zeros(batch, heads, length, dim), padded(q)], dim=2)  # [B, H, L+T, D]
            out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, scale=scaling,
                                                 enable_gqa=heads != kv_heads)[:, :, length:]  # [B, H, T, D]
        else:
            out = F.scaled_dot_product_attention(padded(q), keys, values, attn_mask=mask, scale=scaling,
                                                 enable_gqa=heads != kv_heads)  # [B, H, T, D]
        return out.transpose(1, 2)[row, col].reshape(-1, heads * dim)  # [N, H*D]

    for layer, (prefix_k, prefix_v) in zip(inner.layers, prefix, strict=True):
        attention = functools.partial(attend, prefix_k, prefix_v, layer.self_attn.scaling)
        h = arch.decoder_block(h, _Modules.of(spec, layer), layout, rope, attention)  # [N, hidden]
    return inner.norm(h)  # [N, hidden]


@functools.cache
def compiled_forward():
    """``forward`` under ``torch.compile`` (dynamic shapes: batches differ in size every step), compiled on
    first call and shared by every caller in the process."""
    return torch.compile(forward, dynamic=True)
