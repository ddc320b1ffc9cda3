"""A lean decoder for the Llama family (the rows of ``thinktune.modeling.arch.ARCH_SPECS``: Llama, Qwen2,
Qwen3, Phi3, Mistral) with a static, preallocated KV cache.

Why it exists: ``model.generate`` on a small model spends most of each decode step in Python (cache
objects, mask builders, logits processors, ~100 dispatched ops per layer). This decoder reads the HF
model's own weight tensors and runs the same math in about 25 ops per layer. The architecture's quirks
(fused or split projections and their names, q/k norm, partial rotary...) come from its ``ArchSpec``; the
block is ``arch.decoder_block``, shared with the training forward (``thinktune.modeling.unpadded``), for
prefill and the GPU decode step, and the CPU decode step (``_decode_cpu``) runs the same steps into
preallocated scratch:

- one matmul for q, k and v (Phi3's fused ``qkv_proj``; Llama/Qwen2's three projections are
  concatenated on CPU, where per-op overhead dominates, and kept separate on CUDA, where CUDA graphs
  remove that overhead and a copy would cost memory);
- Qwen3's RMSNorm over each head's queries and keys (``q_norm``, ``k_norm``) before rotary;
- rotary on q and k together. On the CPU copy path (fp32) the q/k rows of the weight are permuted so
  each rotary pair ``(i, i + R/2)`` sits side by side; rotary is then one complex multiply, and q.k is
  unchanged because q and k are permuted alike (the cache holds k in that order). Otherwise it is
  ``x * cos + x[perm] * sin`` with the sign of rotate-half folded into ``sin``. Partial rotary (some Phi3
  configs) leaves the pass-through dims at rotation 1;
- the residual adds fused into the output matmuls (``addmm``), and on CPU the RMSNorm gains folded
  into the next weight;
- k and v written in place into one preallocated cache ``[rows, layers, 2 * kv_heads, max_len, head_dim]``,
  so nothing is reallocated or concatenated while decoding, and moving a row moves every layer at once;
- on CPU (``_decode_cpu``), every intermediate written with ``out=`` into preallocated scratch and the
  residual adds done in place: a step allocates almost nothing.

Measured on the demo's tiny Phi3 (2-core CPU, 1 thread): about 1.5 ms per decode step at batch 16, of
which attention is a third (the CPU flash kernel costs ~1.5 us per row and head whatever the length) and
the matmuls another third (the 4 MB of fp32 weights are read from memory every step); see
``benchmarks/rollout.py`` for the comparison with ``generate``.

Rows are left padded; ``pad[b]`` is row ``b``'s number of pad columns, its positions are ``column - pad``
(what HF derives from the attention mask) and ``key_valid[b, j]`` masks the pad keys.

Active rows always occupy ``[0, n)``: when rows finish, ``reorder`` moves the last live rows into the holes
(a copy of those rows only), so a finished row costs nothing in later steps.

Weights are read, not copied (except the CPU concatenation above), and ``refresh_weights`` re-reads them,
so the decoder follows the policy as the optimizer updates it in place.

peft LoRA linears: on the CPU copy path each projection's weight is its base plus every active adapter's
``scaling * B @ A``, folded in when the weights are (re)read, so a step costs nothing more. On the view path
(GPU, CUDA graphs) a folded copy would double the adapted weights' memory, so each adapter is applied as the
step runs, ``scaling * (x @ A^T) @ B^T`` in the adapter's dtype as peft does, from views of its parameters:
nothing is copied, and the optimizer's in-place updates reach the captured graphs.

Anything this file does not implement (an architecture outside the table, dynamic rope scaling, a sliding
window shorter than the sequence: ``arch.unsupported_reason``; quantized linears, LoRA variants such as DoRA:
checked here) is reported by ``unsupported_reason`` and the sampler falls back to the generic HF path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from thinktune.modeling import arch, lora, onednn
from thinktune.modeling.arch import ARCH_SPECS, decoder_block, qk_norm

ARCHS = set(ARCH_SPECS)  # the model_types this decoder runs: the architecture table's rows
LowRank = tuple[torch.Tensor, torch.Tensor, float]  # one LoRA adapter of a linear: A^T [in, r], B^T [r, out], scaling


def unsupported_reason(model: torch.nn.Module, max_len: int) -> str | None:
    """Why the lean decoder cannot run ``model`` for sequences of up to ``max_len`` tokens (None: it can): the
    architecture table's check (``arch.unsupported_reason``), then every linear it reads must be a plain
    ``nn.Linear`` or a peft LoRA linear whose adapters it can fold (``lora.linears_reason``)."""
    return arch.unsupported_reason(model, max_len) or lora.linears_reason(model)


def cache_bytes(model: torch.nn.Module, rows: int, max_len: int) -> int:
    """Bytes of the decoder's KV cache for ``rows`` rows of ``max_len`` tokens, in the model's dtype."""
    cfg = model.config
    head_dim = arch.head_dim(cfg)
    itemsize = model.get_input_embeddings().weight.element_size()
    return rows * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * max_len * head_dim * itemsize


def adapter_state(model: torch.nn.Module) -> tuple:
    """What each peft LoRA linear applies besides its weights' values: merged or not, disabled or not, which
    adapters are active, their scaling. peft changes these without bumping a parameter's ``_version``
    (``merge_adapter`` writes the base through ``.data``), so the decoder watches them too."""
    return tuple((m.merged, m.disable_adapters, tuple(m.active_adapters), tuple(map(m.scaling.get, m.active_adapters)))
                 for m in model.modules() if lora.is_lora_linear(m))


def low_rank_terms(module: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """A linear's LoRA adapters as ``(A^T [in, r], B^T [r, out], scaling)`` views, for ``x @ A^T @ B^T`` (none
    for a plain linear)."""
    if not lora.is_lora_linear(module):
        return []
    return [(module.lora_A[name].weight.t(), module.lora_B[name].weight.t(), module.scaling[name])
            for name in lora.active_adapters(module)]


def effective_weight(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) that a linear applies: for a LoRA linear, its base plus each active adapter's
    ``scaling * B @ A`` (unless merged into the base already, or disabled)."""
    if not lora.is_lora_linear(module):
        return module.weight, module.bias
    weight = module.base_layer.weight
    for name in lora.active_adapters(module):
        weight = weight + module.get_delta_weight(name)
    return weight, module.base_layer.bias


@dataclass(frozen=True)
class _RMSNorm:
    """The decoder's RMSNorm. With a gain: ``F.rms_norm``. Without (the copy path folded the gain and sqrt(H)
    into the next weight): x * rsqrt(sum(x^2) + H*eps) = x / rms(x) / sqrt(H), 5 cheap ops where F.rms_norm's
    CPU composite (mean = sum + div, dtype checks) costs 3x."""

    hidden: int
    eps: float
    scaled_eps: torch.Tensor  # H * eps as a tensor: adding a Python float converts it to a tensor on every call

    def __call__(self, x: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        if gain is not None:
            return F.rms_norm(x, (self.hidden,), gain, self.eps)
        return x * torch.rsqrt(torch.sum(x * x, dim=-1, keepdim=True).add_(self.scaled_eps))


@dataclass
class _Layer:
    """One layer's weights as ``_prepare`` leaves them, and the steps ``arch.decoder_block`` calls on them
    (``arch.BlockWeights``)."""

    rms: _RMSNorm
    ln1: torch.Tensor | None  # None: folded into the next weight
    ln2: torch.Tensor | None
    qkv_weights: list[torch.Tensor]  # [hidden, (H+2K)*D] fused, or q, k, v (all as [in, out])
    qkv_bias: list[torch.Tensor | None]
    o: torch.Tensor
    o_bias: torch.Tensor | None
    qk_gains: tuple[torch.Tensor, torch.Tensor] | None  # [D] each: Qwen3's q/k norm gains, None for the others
    qk_eps: float  # (on the copy path, the gains in its rotary-paired order)
    gate_up_weights: list[torch.Tensor]  # [hidden, 2I] fused, or gate, up
    gate_up_bias: list[torch.Tensor | None]
    down: torch.Tensor
    down_bias: torch.Tensor | None
    # The view path's LoRA adapters, applied as the step runs (``low_rank_terms``), per weight of each group above;
    # empty on the copy path, which folds them into its weights.
    qkv_lora: list[list[LowRank]] = field(default_factory=list)
    o_lora: list[LowRank] = field(default_factory=list)
    gate_up_lora: list[list[LowRank]] = field(default_factory=list)
    down_lora: list[LowRank] = field(default_factory=list)

    def norm1(self, x: torch.Tensor) -> torch.Tensor:
        return self.rms(x, self.ln1)

    def norm2(self, x: torch.Tensor) -> torch.Tensor:
        return self.rms(x, self.ln2)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        outs = _products(x, self.qkv_weights, self.qkv_bias, self.qkv_lora)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # [N, (H+2K)*D]

    def gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = _products(x, self.gate_up_weights, self.gate_up_bias, self.gate_up_lora)
        return tuple(outs) if len(outs) == 2 else outs[0].chunk(2, -1)  # [N, I] each

    def o_add(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return _residual(x, a, self.o, self.o_bias, self.o_lora)

    def down_add(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return _residual(x, a, self.down, self.down_bias, self.down_lora)


def _prepare(weights: list[torch.Tensor], biases: list[torch.Tensor | None], gain: torch.Tensor | None,
             copy: bool, rows: torch.Tensor | None = None,
             ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor | None]:
    """Weights as ``[in, out]`` matrices for ``x @ w``.

    ``copy=False``: transposed views of the model's own tensors (no memory, always current).
    ``copy=True``: one matrix: the projections concatenated, output ``rows`` reordered if given, and the
    RMSNorm ``gain`` folded into its input side, so a CPU step does one matmul and one multiply fewer; the
    returned gain is then None. The matrix is packed for oneDNN where it can be (``onednn.pack``: 2-3x
    MKL's fp32 rate on this project's CPU), else ``[in, out]`` contiguous for ``torch.mm``.
    """
    if not copy:
        return [w.t() for w in weights], biases, gain
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0])
                          for w, b in zip(weights, biases, strict=True)])
    fused = torch.cat(weights)  # [out, in]
    if rows is not None:
        fused, bias = fused[rows], None if bias is None else bias[rows]
    if gain is not None:  # _norm without a gain returns x / rms(x) / sqrt(hidden): put sqrt(hidden) back here
        fused = fused * (gain * gain.numel() ** 0.5)
    return [onednn.pack(fused) if onednn.usable(fused) else fused.t().contiguous()], [bias], None


def _low_rank(out: torch.Tensor, x: torch.Tensor, terms: list[LowRank]) -> torch.Tensor:
    """``out`` plus each adapter's ``scaling * (x @ A^T) @ B^T``, computed in the adapter's dtype as peft does
    (it keeps adapters in float32 under a bf16 base)."""
    for a, b, scale in terms:
        out = out + ((x.to(a.dtype) @ a @ b) * scale).to(out.dtype)
    return out


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, out: torch.Tensor | None = None
        ) -> torch.Tensor:
    """``x @ w + b`` for a weight from ``_prepare``: oneDNN-packed (``[out, in]``, a new tensor; ``out`` is
    not used) or ``[in, out]`` (into ``out`` if given)."""
    if w.is_mkldnn:
        return onednn.linear(x, w, b)
    return torch.mm(x, w, out=out) if b is None else torch.addmm(b, x, w, out=out)


def _mm_add_(x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x + a @ w + b``: in place into ``x`` for a plain weight, a new tensor for a oneDNN-packed one."""
    if w.is_mkldnn:
        return onednn.linear_add(a, x, w, b)
    x.addmm_(a, w)
    return x if b is None else x.add_(b)


def _products(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None],
              lora: list[list[LowRank]]) -> list[torch.Tensor]:
    """``x @ w + b`` for each weight of a group (one fused weight, or the split projections)."""
    outs = [_mm(x, w, b) for w, b in zip(weights, biases, strict=True)]
    if lora:  # the view path's adapters, per weight
        outs = [_low_rank(out, x, terms) for out, terms in zip(outs, lora, strict=True)]
    return outs


def _residual(x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
              lora: list[LowRank] = ()) -> torch.Tensor:
    if w.is_mkldnn:  # the copy path: no adapters (folded into w)
        return onednn.linear_add(a, x, w, b)  # [N, hidden]
    out = _low_rank(torch.addmm(x, a, w), a, lora)  # [N, hidden]: x + a @ w in one op, plus the adapters
    return out if b is None else out + b


class LeanDecoder:
    """Prefill and one-token decode steps for up to ``max_batch`` rows of up to ``max_len`` tokens.

    Args:
        model: a ``*ForCausalLM`` of the architecture table that ``unsupported_reason`` accepts.
        max_batch: rows the cache holds.
        max_len: prompt plus new tokens, the cache's time dimension.
        fuse: work on private copies of the weights (concatenated, gains folded, ``[in, out]``
            contiguous, q/k rows paired for complex rotary in fp32): worth it on CPU, where op count and
            layout dominate; on GPU it would cost memory, and CUDA graphs remove the per-op overhead anyway.
    """

    def __init__(self, model: torch.nn.Module, max_batch: int, max_len: int, fuse: bool) -> None:
        cfg = model.config
        self.model, self.fuse, self.spec = model, fuse, arch.spec_for(model)
        self.max_batch, self.max_len = max_batch, max_len
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = arch.head_dim(cfg)
        self.hidden = cfg.hidden_size
        embed = model.get_input_embeddings().weight
        self.device, self.dtype = embed.device, embed.dtype
        eps = model.model.norm.variance_epsilon
        self.rms = _RMSNorm(self.hidden, eps, torch.tensor(self.hidden * eps, dtype=self.dtype, device=self.device))
        self.complex_rope = fuse and self.dtype in (torch.float32, torch.float64)
        self._rope_tables()
        self._stamp: tuple[tuple[int, int], ...] | None = None
        self._store: dict[str, torch.Tensor] = {}  # CPU path scratch for max_batch rows
        self._scratch: dict[int, dict] = {}  # per live-row count: views of _store, per-layer tuples
        self.refresh_weights()
        # Zeros, not empty: masked keys get weight 0 in attention, and 0 * NaN garbage would still be NaN.
        # One [rows, layers, 2K, T, D] tensor: per layer a [rows, 2K, T, D] view, k heads then v heads, so the
        # CPU path writes both in one copy, and ``reorder`` moves a row of every layer in one copy.
        self.kv = torch.zeros(max_batch, len(self.layers), 2 * self.kv_heads, max_len, self.head_dim,
                              dtype=self.dtype, device=self.device)
        self.kv_cache = list(self.kv.unbind(1))
        self.k_cache = [c[:, :self.kv_heads] for c in self.kv_cache]  # [Bmax, K, T, D] views
        self.v_cache = [c[:, self.kv_heads:] for c in self.kv_cache]
        self.pad = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # [Bmax]
        self.key_valid = torch.ones(max_batch, max_len, dtype=torch.bool, device=self.device)  # [Bmax, T]
        self.columns = torch.arange(max_len, device=self.device)  # [T]
        self.t = 0  # the next column to write
        self.padded = False  # whether any live row has pad columns (else decode needs no mask)

    def refresh_weights(self) -> None:
        """Re-read the model's weights if any changed since the last read (an optimizer step, a load).

        A change is seen through each parameter's storage address and its ``_version``, the counter
        PyTorch bumps on every in-place write (optimizer steps write in place), and through the LoRA adapters'
        state (``adapter_state``), so repeated sampling from an unchanged model (evaluation) does not rebuild
        the CPU copies every call.
        """
        stamp = tuple((p.data_ptr(), p._version) for p in self.model.parameters()), adapter_state(self.model)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self._scratch = {}  # its per-layer tuples hold the old weights
        inner = self.model.model
        self.embed = inner.embed_tokens.weight
        (lm_head,), _, (self.lm_head_lora,) = self._read([self.model.get_output_embeddings()])
        (self.lm_head,), _, self.final_norm = _prepare([lm_head], [None], inner.norm.weight, self.fuse)
        self.layers = [self._layer(block) for block in inner.layers]

    def _layer(self, block: torch.nn.Module) -> _Layer:
        attn, mlp = block.self_attn, block.mlp
        qkv_mods, o_mod = arch.attention_modules(self.spec, attn)  # Phi3 ships q/k/v and gate/up already fused
        gu_mods, down_mod = arch.mlp_modules(self.spec, mlp)
        qkv_w, qkv_b, qkv_lora = self._read(qkv_mods)
        gu_w, gu_b, gu_lora = self._read(gu_mods)
        (o_w,), (o_b,), (o_lora,) = self._read([o_mod])
        (down_w,), (down_b,), (down_lora,) = self._read([down_mod])
        qkv, qkv_b, ln1 = _prepare(list(qkv_w), list(qkv_b), block.input_layernorm.weight, self.fuse, self.qkv_rows)
        gu, gu_b, ln2 = _prepare(list(gu_w), list(gu_b), block.post_attention_layernorm.weight, self.fuse)
        (o,), _, _ = _prepare([o_w], [None], None, self.fuse)
        (down,), _, _ = _prepare([down_w], [None], None, self.fuse)
        qk_gains, qk_eps = None, 0.0
        if norms := arch.qk_norm_modules(self.spec, attn):  # Qwen3
            qk_gains, qk_eps = (norms[0].weight, norms[1].weight), norms[0].variance_epsilon
            if self.complex_rope:  # the copy path pairs each head's rotary dims: pair the gains alike
                qk_gains = (qk_gains[0][self.head_order], qk_gains[1][self.head_order])
        lora = {}
        if not self.fuse and any(qkv_lora + gu_lora + [o_lora, down_lora]):
            lora = dict(qkv_lora=qkv_lora, o_lora=o_lora, gate_up_lora=gu_lora, down_lora=down_lora)
        return _Layer(rms=self.rms, ln1=ln1, ln2=ln2, qkv_weights=qkv, qkv_bias=qkv_b, o=o, o_bias=o_b,
                      qk_gains=qk_gains, qk_eps=qk_eps, gate_up_weights=gu, gate_up_bias=gu_b, down=down,
                      down_bias=down_b, **lora)

    def _read(self, modules: list[torch.nn.Module]) -> tuple[list, list, list[list[LowRank]]]:
        """Weights, biases and LoRA terms of ``modules``: adapters folded into the weights on the copy path, kept
        apart (``low_rank_terms``) on the view path, whose weights are then the base layers' own."""
        if self.fuse:
            weights, biases = zip(*map(effective_weight, modules), strict=True)
            return list(weights), list(biases), [[] for _ in modules]
        bases = [getattr(m, "base_layer", m) for m in modules]
        return [m.weight for m in bases], [m.bias for m in bases], [low_rank_terms(m) for m in modules]

    def _rope_tables(self) -> None:
        """Rotations for every position, from the model's own rotary module (so every static rope type works)."""
        positions = torch.arange(self.max_len, device=self.device)[None]  # [1, T]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        cos, sin = self.model.model.rotary_emb(probe, positions)  # [1, T, R] each, R = rotary dims
        cos, sin = cos[0], sin[0]  # [T, R]
        rot, d, t = cos.shape[-1], self.head_dim, self.max_len
        half = rot // 2
        pair = torch.stack([torch.arange(half), torch.arange(half, rot)], dim=1).flatten()  # [R] i, i+R/2, ...
        head_order = torch.cat([pair, torch.arange(rot, d)])  # [D] rotary pairs side by side
        self.head_order = head_order
        self.layout = arch.head_layout(self.model.config, rot, self.device)
        self.qkv_rows = None
        if self.complex_rope:
            qk_heads = self.heads + self.kv_heads
            q_k = (torch.arange(qk_heads)[:, None] * d + head_order).flatten()  # [(H+K)*D]
            self.qkv_rows = torch.cat([q_k, torch.arange(qk_heads * d, (qk_heads + self.kv_heads) * d)])
            ones = torch.ones(t, (d - rot) // 2, dtype=cos.dtype, device=self.device)
            self.freqs = torch.complex(torch.cat([cos[:, :half], ones], 1),
                                       torch.cat([sin[:, :half], ones * 0], 1))  # [T, D/2]
            # For the CPU decode step: v heads rotated by 1, so one multiply handles q, k and v together.
            # [T, H+2K, D/2] complex: small for the CPU-sized models this path serves.
            qk_heads = self.heads + self.kv_heads
            self.freqs_all = torch.cat([self.freqs[:, None].expand(t, qk_heads, d // 2),
                                        torch.ones(t, self.kv_heads, d // 2, dtype=self.freqs.dtype)], dim=1)
            return
        self.cos, self.sin = arch.fold_rope(cos, sin, d)  # [T, D] each

    def rope_at(self, positions: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rotation of ``positions`` (a tensor of any shape ``[...]``, or one int for every row):
        ``(freqs [..., D/2], None)`` in complex mode, else ``(cos, sin)`` ``[..., D]``."""
        if isinstance(positions, int):
            positions = slice(positions, positions + 1)
        if self.complex_rope:
            return self.freqs[positions], None
        return self.cos[positions], self.sin[positions]

    # ----------------------------------------------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor | None],
                 mask: torch.Tensor, rows: torch.Tensor, cols: slice) -> torch.Tensor:
        """Prefill: run ``tokens`` ``[n, S]`` (cache rows ``rows`` ``[n]``, columns ``cols``, S of them) through
        the layers and write their k/v. ``rope`` broadcasts as ``[n*S, 1, ...]``; ``mask`` ``[n, 1, S, S]``
        (True: attend). Returns the final hidden state of the last column, ``[n, hidden]``.
        """
        n, s = tokens.shape
        h_, k_, d = self.heads, self.kv_heads, self.head_dim

        def attend(kc: torch.Tensor, vc: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                   ) -> torch.Tensor:  # q [N, H, D]; k, v [N, K, D]; kc, vc [Bmax, K, T, D] -> [N, H*D]
            q = q.reshape(n, s, h_, d).transpose(1, 2)  # [n, H, S, D]
            k, v = (t.reshape(n, s, k_, d).transpose(1, 2) for t in (k, v))  # [n, K, S, D]
            kc[rows, :, cols] = k
            vc[rows, :, cols] = v
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k_ != h_)  # [n, H, S, D]
            return a.transpose(1, 2).reshape(n * s, h_ * d)

        x = F.embedding(tokens.reshape(-1), self.embed)  # [N, hidden], N = n*S
        for layer, kc, vc in zip(self.layers, self.k_cache, self.v_cache, strict=True):
            x = decoder_block(x, layer, self.layout, rope, partial(attend, kc, vc))  # [N, hidden]
        return x.view(n, s, self.hidden)[:, -1]  # [n, hidden]

    def decode_forward(self, tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor | None],
                       write: int | torch.Tensor, mask: torch.Tensor | None, kv_len: int) -> torch.Tensor:
        """One new token for each of rows ``0..n-1``: ``tokens`` ``[n]``, written at cache column ``write``
        (an int, or a ``[1]`` device tensor for CUDA graphs); attends to columns ``0..kv_len-1`` where
        ``mask`` ``[n, 1, 1, kv_len]`` allows (None: all). Returns logits ``[n, V]`` float32.

        The same math as ``_forward`` (the logits tests check both against HF), written for the fewest
        dispatched ops: at decode time per-op overhead, not arithmetic, is the cost.
        """
        n = tokens.shape[0]
        h_, k_, d = self.heads, self.kv_heads, self.head_dim
        graph = isinstance(write, torch.Tensor)
        rope = (rope[0].unsqueeze(-2), None if rope[1] is None else rope[1].unsqueeze(-2))  # [n or 1, 1, ...]

        def attend(kc: torch.Tensor, vc: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                   ) -> torch.Tensor:  # q [n, H, D]; k, v [n, K, D]; kc, vc [n, K, T, D] live rows -> [n, H*D]
            if graph:
                kc.index_copy_(2, write, k.unsqueeze(2))
                vc.index_copy_(2, write, v.unsqueeze(2))
            else:
                kc.select(2, write).copy_(k)
                vc.select(2, write).copy_(v)
            # The G query heads that share a kv head go in as G queries of that head: plain multi-head
            # attention with no GQA expansion, on every backend (the mask broadcasts over them).
            a = F.scaled_dot_product_attention(q.view(n, k_, h_ // k_, d), kc.narrow(2, 0, kv_len),
                                               vc.narrow(2, 0, kv_len), attn_mask=mask)  # [n, K, G, D]
            # reshape, not view: CUDA kernels may return the output in [n, G, K, D] memory order
            return a.reshape(n, h_ * d)

        # Tensor methods with one-dimension arguments (narrow, select, split) rather than x[:, a:b]
        # indexing: Python-side index parsing costs as much as a small kernel here.
        x = F.embedding(tokens, self.embed)  # [n, hidden]
        for layer, kc, vc in zip(self.layers, self.k_cache, self.v_cache, strict=True):
            x = decoder_block(x, layer, self.layout, rope, partial(attend, kc.narrow(0, 0, n), vc.narrow(0, 0, n)))
        return self._logits(x)

    def _buffers(self, n: int) -> dict[str, torch.Tensor]:
        """Views of preallocated scratch for ``n`` rows (the CPU path writes into them with ``out=``)."""
        if n not in self._scratch:
            h_, k_, d, b = self.heads, self.kv_heads, self.head_dim, self.max_batch
            if not self._store:
                inter = self.model.config.intermediate_size
                real = dict(dtype=self.dtype, device=self.device)
                self._store = dict(
                    qkv=torch.empty(b, (h_ + 2 * k_) * d, **real), s=torch.empty(b, 1, **real),
                    rot=torch.empty(b, h_ + 2 * k_, d // 2, dtype=self.freqs.dtype, device=self.device),
                    h=torch.empty(b, self.hidden, **real), gu=torch.empty(b, 2 * inter, **real),
                    act=torch.empty(b, inter, **real))
            st = {k: v[:n] for k, v in self._store.items()}
            rot = torch.view_as_real(st["rot"]).view(n, h_ + 2 * k_, d)  # [n, H+2K, D]: q, k, v
            kv = [c.narrow(0, 0, n) for c in self.kv_cache]  # [n, 2K, T, D] each
            self._scratch[n] = dict(
                st, q=rot[:, :h_].view(n, k_, h_ // k_, d), kv=rot[:, h_:],
                layers=[(layer, c, c[:, :k_], c[:, k_:]) for layer, c in zip(self.layers, kv, strict=True)])
        return self._scratch[n]

    def _norm_into(self, x: torch.Tensor, buf: dict[str, torch.Tensor]) -> torch.Tensor:
        """``_norm`` in 4 ops into scratch: r = rsqrt(|x|^2 + H*eps), then x * r."""
        r = buf["s"]
        torch.linalg.vector_norm(x, dim=-1, keepdim=True, out=r)
        torch.addcmul(self.rms.scaled_eps, r, r, out=r).rsqrt_()
        return torch.mul(x, r, out=buf["h"])

    def _decode_cpu(self, tokens: torch.Tensor, freqs: torch.Tensor, write: int, mask: torch.Tensor | None,
                    kv_len: int) -> torch.Tensor:
        """``decode_forward`` for the CPU copy path (fused weights, complex rotary, int column).

        Every intermediate goes into preallocated scratch through ``out=`` (but the products with
        oneDNN-packed weights, which return new tensors), the residual adds are in place (or fused into
        the product), and q, k, v are rotated together (v by 1) so k and v reach the cache in one copy:
        ~22 ops per layer instead of ~40. ``freqs`` ``[n or 1, H+2K, D/2]`` (rows of ``freqs_all``).

        Why it does not call ``arch.decoder_block``: that function returns a new tensor from every step, and
        at a CPU decode step (a few rows) allocation and dispatch, not arithmetic, are the cost; writing
        each step into scratch is what ``benchmarks/rollout.py`` measures. It runs the same block on the same
        ``_Layer`` weights, read through the same ``ArchSpec``, and shares ``arch.qk_norm``; the tests check
        its logits against HF's for every architecture in the table.
        """
        n = tokens.shape[0]
        buf = self._buffers(n)
        rot, kv_rows, q, act = buf["rot"], buf["kv"], buf["q"], buf["act"]
        norm, mul, sdpa = self._norm_into, torch.mul, F.scaled_dot_product_attention
        x = F.embedding(tokens, self.embed)  # [n, hidden], a fresh tensor the in-place adds may update
        for layer, kv, kc, vc in buf["layers"]:  # kv [n, 2K, T, D]; kc, vc its k and v halves
            qkv = _mm(norm(x, buf), layer.qkv_weights[0], layer.qkv_bias[0], out=buf["qkv"])  # [n, (H+2K)*D]
            if layer.qk_gains is not None:  # Qwen3: normalise q and k in place, where the rotary reads them
                qk = qkv.view(n, -1, self.head_dim).narrow(1, 0, self.heads + self.kv_heads)  # [n, H+K, D]
                qk.copy_(qk_norm(qk, layer.qk_gains, layer.qk_eps, self.heads))
            mul(torch.view_as_complex(qkv.view(n, -1, self.head_dim // 2, 2)), freqs, out=rot)  # q, k rotated, v x 1
            kv.select(2, write).copy_(kv_rows)
            a = sdpa(q, kc.narrow(2, 0, kv_len), vc.narrow(2, 0, kv_len), attn_mask=mask)  # [n, K, G, D]
            x = _mm_add_(x, a.reshape(n, -1), layer.o, layer.o_bias)  # [n, hidden]
            g, u = _mm(norm(x, buf), layer.gate_up_weights[0], layer.gate_up_bias[0], out=buf["gu"]).chunk(2, 1)
            mul(F.silu(g, inplace=True), u, out=act)  # arch.swiglu into scratch; g, u [n, I]
            x = _mm_add_(x, act, layer.down, layer.down_bias)  # [n, hidden]
        return _mm(norm(x, buf), self.lm_head).float()  # [n, V]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rms(x, self.final_norm)
        return _low_rank(_mm(h, self.lm_head), h, self.lm_head_lora).float()  # [n, V]

    def prefill(self, input_ids: torch.Tensor, pad: torch.Tensor, max_tokens: int = 8192) -> torch.Tensor:
        """Start a batch: ``input_ids`` ``[n, P]`` left padded by ``pad`` ``[n]``; returns logits ``[n, V]``.

        Rows of like length are prefilled together (``prefill_groups``), each group from its longest row's
        first column on: the pad columns before it are never computed, and a group holds about
        ``max_tokens`` tokens at most, which bounds activation memory.
        """
        n, p = input_ids.shape
        if n > self.max_batch or p >= self.max_len:
            raise ValueError(f"batch {n}x{p} does not fit the cache {self.max_batch}x{self.max_len}")
        self.pad.zero_()  # rows past n stay valid positions for the CUDA-graph path
        self.pad[:n] = pad
        self.padded = bool(pad.any())
        self.key_valid.fill_(True)  # unused rows stay finite
        self.key_valid[:n] = self.columns[None] >= pad[:, None]  # [n, T]
        cols = self.columns[:p]  # [P]
        causal = cols[None, :] <= cols[:, None]  # [P, P]
        # A pad query attends to itself only, so its softmax row is never empty (no NaN).
        itself = torch.eye(p, dtype=torch.bool, device=self.device)  # [P, P]
        last = torch.empty(n, self.hidden, dtype=self.dtype, device=self.device)  # [n, hidden]
        lengths = (p - pad).tolist()  # one read of the device; the groups' windows come from this list
        for group in prefill_groups(lengths, max_tokens):
            rows = torch.tensor(group, device=self.device)  # [g]
            window = slice(p - max(lengths[i] for i in group), p)  # columns before it are pad in every row
            mask = (causal[window, window] & self.key_valid[rows, None, None, window]) | itself[window, window]
            positions = (cols[window][None] - self.pad[rows, None]).clamp(min=0).flatten()  # [g*S]
            rope = self.rope_at(positions)
            rope = (rope[0][:, None], None if rope[1] is None else rope[1][:, None])  # [g*S, 1, ...]
            last[rows] = self._forward(input_ids[rows, window], rope, mask, rows, window)  # mask [g, 1, S, S]
        self.t = p
        return self._logits(last)  # [n, V]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode one token for the ``n`` live rows (``tokens`` ``[n]``); returns logits ``[n, V]``."""
        n, t = tokens.shape[0], self.t
        # Without pad columns every row is at position t: one table row for all, and no mask.
        positions = t - self.pad[:n] if self.padded else t  # [n] or int
        mask = self.key_valid[:n, None, None, :t + 1] if self.padded else None  # [n, 1, 1, t+1]
        if self.complex_rope:
            freqs = self.freqs_all[positions] if self.padded else self.freqs_all[t:t + 1]  # [n or 1, H+2K, D/2]
            logits = self._decode_cpu(tokens, freqs, t, mask, t + 1)
        else:
            logits = self.decode_forward(tokens, self.rope_at(positions), t, mask, t + 1)
        self.t = t + 1
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` ``[m]`` as the new rows ``0..m-1``, moving only the rows that change place.

        Only the columns written so far move (later ones are written before they are read); without pad
        columns every row's ``pad`` and ``key_valid`` are alike, so they stay.
        """
        written = self.kv.narrow(3, 0, max(self.t, 1))  # [rows, layers, 2K, t, D]
        move_rows([written, self.pad, self.key_valid] if self.padded else [written], index)


# A prefill group's fixed cost in tokens' worth of compute: ~15 dispatched ops per layer (about 20 tokens of
# a 135M model's matmuls on a CPU), and smaller products run below the matmul's best rate.
GROUP_COST = 64


def prefill_groups(lengths: list[int], max_tokens: int, group_cost: int = GROUP_COST) -> list[list[int]]:
    """Split rows of ``lengths`` tokens into prefill groups of like length.

    A group is computed as wide as its longest row (the rest are padded to it), so the rows are taken
    longest first and cut into consecutive runs that minimise the padded tokens plus ``group_cost`` per
    group (exactly, by dynamic programming over the cut points), with at most ``max_tokens`` padded tokens
    in a group unless one row alone is longer.

    Returns:
        The groups, as lists of row indices into ``lengths``.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # longest first; ties keep their order
    width = [lengths[i] for i in order]
    best = [0] + [float("inf")] * len(order)  # best[j]: the cheapest split of the first j rows
    cut = [0] * (len(order) + 1)  # cut[j]: where the last group of that split starts
    for j in range(1, len(order) + 1):
        for i in range(j - 1, -1, -1):  # the last group is rows i..j-1, as wide as row i
            if (j - i) * width[i] > max_tokens and j - i > 1:
                break  # a longer run back is wider and longer still
            cost = best[i] + (j - i) * width[i] + group_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def move_rows(tensors: list[torch.Tensor], index: torch.Tensor) -> None:
    """In place, make row ``i`` of every tensor its old row ``index[i]`` (``index`` ``[m]``), copying only
    the rows that change place. Rows ``m`` and later keep stale values; callers treat them as free."""
    m = index.shape[0]
    dst = torch.nonzero(index != torch.arange(m, device=index.device)).squeeze(1)  # [moved]
    if dst.numel() == 0:
        return
    src = index[dst]  # [moved]
    for t in tensors:
        t.index_copy_(0, dst, t.index_select(0, src))
