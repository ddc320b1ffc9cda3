"""The Llama-family architectures thinktune runs itself, as one table of facts, and their decoder block, written once.

``ARCH_SPECS`` maps an HF ``config.model_type`` to an ``ArchSpec``: how the attention and MLP projections are
laid out (fused or split, under which module names), whether q and k get a per-head RMSNorm, which rope
scalings, partial rotary and sliding windows the math handles, where the q/k/v biases come from. Every
path that runs the math reads the spec, never ``hasattr`` on the modules:

- ``thinktune.rollout.lean``: prefill and the GPU decode step (``decoder_block`` over the decoder's own
  weight copies or views) and the CPU decode step (the same steps into preallocated scratch);
- ``thinktune.modeling.unpadded``: the training forward over unpadded tokens (``decoder_block`` over the
  HF modules themselves, so autocast, oneDNN routing and peft's adapters apply as in the HF forward).

``unsupported_reason`` says, naming the model_type and the supported ones, why a model is outside the
table; the callers then fall back to the HF forward or ``generate``.

Every architecture here ties or unties its embeddings by ``tie_word_embeddings`` alone, and the paths read
the head through ``get_output_embeddings()``, so tying needs no column; every one uses SiLU-gated MLPs
(``hidden_act`` is checked, not assumed).

How to add an architecture: read its HF modeling file for the facts above, add one ``ARCH_SPECS`` row, and
one row to ``ARCHS`` in ``tests/unit/test_arch.py`` with a tiny config that turns on its quirks (biases,
norms, partial rotary...). The parity tests there then check the training forward's log-probs, the lean
decoder's logits and greedy sampling against the HF model. No row without its passing test row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

# Rope scalings whose rotation of a position does not depend on the sequence's length: a table computed
# once serves every step. "dynamic" rescales as the sequence grows; "longrope" switches factors past
# ``original_max_position_embeddings`` (so it is static below it, see ``_rope_reason``).
STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})


@dataclass(frozen=True)
class ArchSpec:
    """What the decoder block of one ``model_type`` needs to know that its config does not say.

    The module names are attributes of ``layer.self_attn`` (``qkv``, ``o``, ``qk_norm``) and ``layer.mlp``
    (``gate_up``, ``down``); a tuple of one name is a fused projection whose output is the pieces in order.
    """

    qkv: tuple[str, ...]  # ("qkv_proj",) fused, or ("q_proj", "k_proj", "v_proj")
    gate_up: tuple[str, ...]  # ("gate_up_proj",) fused [gate; up], or ("gate_proj", "up_proj")
    qk_norm: tuple[str, str] | None  # per-head RMSNorm of q and k before rotary (Qwen3), or None
    attention_bias: str  # q/k/v biases: "always" (Qwen2), "config" (``attention_bias``), "never"
    rope_types: frozenset[str]  # rope scalings handled (a static table; see STATIC_ROPE)
    partial_rotary: bool  # ``partial_rotary_factor`` < 1 handled (rotary on the first dims of each head)
    sliding_window: bool  # the config may set ``sliding_window`` (handled while the sequence fits in it)
    head_dim_in_config: bool  # ``config.head_dim``, else hidden_size / num_attention_heads
    o: str = "o_proj"
    down: str = "down_proj"


_SPLIT = dict(qkv=("q_proj", "k_proj", "v_proj"), gate_up=("gate_proj", "up_proj"))

ARCH_SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec(**_SPLIT, qk_norm=None, attention_bias="config", rope_types=STATIC_ROPE,
                      partial_rotary=False, sliding_window=False, head_dim_in_config=True),
    "qwen2": ArchSpec(**_SPLIT, qk_norm=None, attention_bias="always", rope_types=STATIC_ROPE,
                      partial_rotary=False, sliding_window=True, head_dim_in_config=False),
    "qwen3": ArchSpec(**_SPLIT, qk_norm=("q_norm", "k_norm"), attention_bias="config", rope_types=STATIC_ROPE,
                      partial_rotary=False, sliding_window=True, head_dim_in_config=True),
    "phi3": ArchSpec(qkv=("qkv_proj",), gate_up=("gate_up_proj",), qk_norm=None, attention_bias="never",
                     rope_types=STATIC_ROPE | {"longrope"}, partial_rotary=True, sliding_window=True,
                     head_dim_in_config=False),
    # Llama's math with a sliding window on every layer (4096 by default).
    "mistral": ArchSpec(**_SPLIT, qk_norm=None, attention_bias="never", rope_types=STATIC_ROPE,
                        partial_rotary=False, sliding_window=True, head_dim_in_config=True),
}


def spec_for(model: torch.nn.Module) -> ArchSpec:
    """The table row of ``model``'s ``config.model_type``.

    Raises:
        KeyError: an architecture outside the table (``unsupported_reason`` says so without raising).
    """
    return ARCH_SPECS[model.config.model_type]


def head_dim(config) -> int:
    """Each attention head's size D."""
    spec = ARCH_SPECS[config.model_type]
    return config.head_dim if spec.head_dim_in_config else config.hidden_size // config.num_attention_heads


def unsupported_reason(model: torch.nn.Module, max_len: int) -> str | None:
    """Why the table's block math cannot run ``model`` on sequences of up to ``max_len`` tokens (None: it can).

    Checks the architecture only; each path adds what its own way of reading the weights needs.
    """
    cfg = model.config
    spec = ARCH_SPECS.get(cfg.model_type)
    if spec is None:
        return f"model_type {cfg.model_type!r} is not one of {sorted(ARCH_SPECS)} (thinktune.modeling.arch)"
    if cfg.hidden_act != "silu":
        return f"hidden_act {cfg.hidden_act!r} (only silu)"
    if reason := _rope_reason(model, spec, max_len):
        return reason
    window = cfg.sliding_window if spec.sliding_window else None  # None also where the config turns it off
    if window is not None and max_len > window:
        return f"sliding window {window} < sequence length {max_len}"
    if type(model.get_input_embeddings()) is not torch.nn.Embedding:
        return f"the input embedding is a {type(model.get_input_embeddings()).__name__}, not a plain nn.Embedding"
    return None


def _rope_reason(model: torch.nn.Module, spec: ArchSpec, max_len: int) -> str | None:
    rope, params = model.model.rotary_emb.rope_type, model.config.rope_parameters
    if rope not in spec.rope_types:
        return f"rope_type {rope!r} on {model.config.model_type} (handled: {sorted(spec.rope_types)})"
    if rope == "longrope" and max_len > params["original_max_position_embeddings"]:
        return "longrope past original_max_position_embeddings switches factors mid-sequence"
    if params.get("partial_rotary_factor", 1.0) < 1 and not spec.partial_rotary:
        return f"partial rotary on {model.config.model_type}"
    return None


# ------------------------------------------------------------------------------------------------------------
# The block math. Tokens are rows: x [N, hidden], whatever batch and sequence they come from; attention, the
# one step that needs the sequences, is the caller's (``attend``).


@dataclass(frozen=True)
class HeadLayout:
    """The attention heads of a model: H query heads, K key/value heads of size D, and the rotary pairing."""

    heads: int
    kv_heads: int
    dim: int
    perm: torch.Tensor | None  # [D] the partner of each dim in rotate-half (None: full rotary, a roll by D/2)


def head_layout(config, rotary_dims: int, device: torch.device) -> HeadLayout:
    """``rotary_dims`` R: the size of the model's rotary tables (D, or less for partial rotary)."""
    d, half = head_dim(config), rotary_dims // 2
    perm = None
    if rotary_dims != d:
        perm = torch.cat([torch.arange(half, rotary_dims), torch.arange(half), torch.arange(rotary_dims, d)])
        perm = perm.to(device)
    return HeadLayout(config.num_attention_heads, config.num_key_value_heads, d, perm)


def fold_rope(cos: torch.Tensor, sin: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's rotary tables ``[..., R]`` as ``[..., D]`` for ``rotate``: the sign of rotate-half folded into
    ``sin``, and the D - R pass-through dims of partial rotary at cos 1, sin 0."""
    rot = cos.shape[-1]
    half, rest = rot // 2, (*cos.shape[:-1], dim - rot)
    cos = torch.cat([cos, cos.new_ones(rest)], dim=-1)  # [..., D]
    sin = torch.cat([-sin[..., :half], sin[..., half:], sin.new_zeros(rest)], dim=-1)  # [..., D]
    return cos, sin


def rotate(qk: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor | None], perm: torch.Tensor | None
           ) -> torch.Tensor:
    """Rotary on ``qk`` ``[N, heads, D]``; ``rope`` broadcasts as ``[N, 1, ...]``.

    ``(cos, sin)`` from ``fold_rope``: ``x * cos + x[perm] * sin``, HF's ``x * cos + rotate_half(x) * sin``.
    ``(freqs, None)``, complex ``[..., D/2]``: the lean CPU path's weights pair dims ``(i, i + R/2)`` side by
    side, and a pair rotates as one complex multiply.
    """
    n, heads, d = qk.shape
    cos, sin = rope
    if sin is None:
        return torch.view_as_real(torch.view_as_complex(qk.view(n, heads, d // 2, 2)) * cos).view(n, heads, d)
    rotated = qk.roll(d // 2, -1) if perm is None else qk[..., perm]  # [N, heads, D]
    return torch.addcmul(qk * cos, rotated, sin)


def qk_norm(qk: torch.Tensor, gains: tuple[torch.Tensor, torch.Tensor] | None, eps: float, heads: int
            ) -> torch.Tensor:
    """Qwen3's RMSNorm of each head's queries and keys: ``qk`` ``[N, H+K, D]``, the first ``heads`` of them
    queries; unchanged where ``gains`` is None (the other architectures)."""
    if gains is None:
        return qk
    q, k = qk.split([heads, qk.shape[1] - heads], 1)
    d = (qk.shape[-1],)
    return torch.cat([F.rms_norm(q, d, gains[0], eps), F.rms_norm(k, d, gains[1], eps)], 1)  # [N, H+K, D]


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The MLP's gated activation, ``silu(gate) * up`` (``hidden_act`` silu, checked by ``unsupported_reason``)."""
    return F.silu(gate) * up


class BlockWeights(Protocol):
    """One decoder layer's weights as the block math uses them. The lean decoder implements it over its
    prepared weights (``lean._Layer``), the training forward over the HF modules (``unpadded._Modules``)."""

    qk_gains: tuple[torch.Tensor, torch.Tensor] | None  # q_norm, k_norm gains [D] (Qwen3), or None
    qk_eps: float

    def norm1(self, x: torch.Tensor) -> torch.Tensor: ...  # input RMSNorm, [N, hidden]

    def qkv(self, x: torch.Tensor) -> torch.Tensor: ...  # [N, (H+2K)*D]: q, k, v heads

    def o_add(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor: ...  # x + o_proj(a), [N, hidden]

    def norm2(self, x: torch.Tensor) -> torch.Tensor: ...  # post-attention RMSNorm, [N, hidden]

    def gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...  # [N, I] each

    def down_add(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor: ...  # x + down_proj(a), [N, hidden]


# attend(q [N, H, D], k [N, K, D], v [N, K, D]) -> [N, H*D], keys and values rotated
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def decoder_block(x: torch.Tensor, layer: BlockWeights, heads: HeadLayout,
                  rope: tuple[torch.Tensor, torch.Tensor | None], attend: Attend) -> torch.Tensor:
    """One pre-norm decoder block on tokens ``x`` ``[N, hidden]``: norm -> q/k/v -> q/k norm -> rotary ->
    attention -> o_proj + residual -> norm -> gated MLP + residual. Returns ``[N, hidden]``."""
    n, h, kv, d = x.shape[0], heads.heads, heads.kv_heads, heads.dim
    qk, v = layer.qkv(layer.norm1(x)).split([(h + kv) * d, kv * d], 1)  # [N, (H+K)*D], [N, K*D]
    qk = rotate(qk_norm(qk.view(n, h + kv, d), layer.qk_gains, layer.qk_eps, h), rope, heads.perm)  # [N, H+K, D]
    q, k = qk.split([h, kv], 1)  # [N, H, D], [N, K, D]
    x = layer.o_add(x, attend(q, k, v.view(n, kv, d)))  # [N, hidden]
    return layer.down_add(x, swiglu(*layer.gate_up(layer.norm2(x))))  # [N, hidden]


def attention_modules(spec: ArchSpec, attn: torch.nn.Module) -> tuple[list[torch.nn.Module], torch.nn.Module]:
    """A layer's q/k/v projections (one fused module or three) and its output projection, by the spec's names."""
    return [getattr(attn, name) for name in spec.qkv], getattr(attn, spec.o)


def mlp_modules(spec: ArchSpec, mlp: torch.nn.Module) -> tuple[list[torch.nn.Module], torch.nn.Module]:
    """A layer's gate/up projections (one fused module or two) and its down projection."""
    return [getattr(mlp, name) for name in spec.gate_up], getattr(mlp, spec.down)


def qk_norm_modules(spec: ArchSpec, attn: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """A layer's q and k RMSNorms (Qwen3), or None."""
    return None if spec.qk_norm is None else (getattr(attn, spec.qk_norm[0]), getattr(attn, spec.qk_norm[1]))
