"""Parity of every row of the architecture table (``thinktune.modeling.arch.ARCH_SPECS``) with its HF model.

Each test case is a tiny random model built from its HF config with the features that change the math
turned on: Llama with attention and MLP biases, one kv head and untied embeddings; Qwen2 with its q/k/v
biases, grouped-query attention and tied embeddings; Qwen3 with its per-head q/k RMSNorm and a head size that
is not hidden / heads; Phi3 with fused qkv/gate_up, with full and with partial rotary; Mistral (Llama's math
under a sliding window longer than the sequences). Biases and norm gains are randomised (HF starts them at 0
and 1, which would hide them). For each case:

- the training forward (``thinktune.modeling.unpadded`` through ``PromptCache``) gives the log-probs and
  gradients of the HF forward's log-softmax;
- the lean decoder's logits, prefill and decode steps, on both weight paths, equal the HF forward's;
- greedy sampling (``decoder="lean"``) of prompts of different lengths, left padded in one batch, equals
  ``model.generate(do_sample=False)`` of each prompt alone;
- the spec's facts hold for the HF model (bias layout, module names).

Adding an architecture: one ``ARCH_SPECS`` row plus one ``CASES`` row here. ``tests/unit/test_rollout_lean.py``
reuses these cases for the decoder's own features (groups, reorder, CUDA-graph step, bf16, LoRA).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from thinktune.modeling import arch, unpadded
from thinktune.modeling.models import IM_END
from thinktune.rollout.lean import LeanDecoder
from thinktune.rollout.lean import unsupported_reason as lean_unsupported_reason
from thinktune.rollout.sampler import SamplingParams, sample
from thinktune.train.logprobs import PromptCache
from thinktune.train.losses import token_logps

VOCAB = 40
BASE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
            max_position_embeddings=128, bos_token_id=None, eos_token_id=1, pad_token_id=0)
CASES = {  # case: (model_type, config over BASE)
    "llama": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, attention_bias=True, mlp_bias=True,
                            tie_word_embeddings=False)),
    "qwen2": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    # q_norm/k_norm (randomised with the other norms), and a head size of its own (4 x 16 > hidden 32)
    "qwen3": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
    "phi3": ("phi3", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "phi3_partial": ("phi3", dict(num_attention_heads=4, num_key_value_heads=4, partial_rotary_factor=0.5)),
    "mistral": ("mistral", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=64)),
}


def tiny(case: str, **overrides) -> torch.nn.Module:
    model_type, config = CASES[case]
    config = AutoConfig.for_model(model_type, **BASE | config | overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:  # HF starts them at 0 and 1: make them matter
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(case):
    return tiny(case)


PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
NEXT = [[20, 21, 22], [23, 24, 25], [26, 27, 28]]  # tokens fed to the decode steps


def reference_logits(model, prompt: list[int], steps: list[int]) -> torch.Tensor:
    """HF logits predicting each step's input: [len(steps) + 1, V]."""
    ids = torch.tensor([prompt + steps])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, len(prompt) - 1:].float()


def lean_logits(decoder, prompts, steps, **prefill) -> torch.Tensor:
    """Prefill left-padded prompts, then decode ``steps`` column by column: [B, S + 1, V]."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    pad = torch.tensor([width - len(p) for p in prompts])
    with torch.inference_mode():
        out = [decoder.prefill(ids, pad, **prefill)]
        for s in range(len(steps[0])):
            out.append(decoder.step(torch.tensor([row[s] for row in steps])))
    return torch.stack(out, dim=1)


def test_every_table_row_has_a_parity_case():
    assert {model_type for model_type, _ in CASES.values()} == set(arch.ARCH_SPECS)


def test_the_specs_facts_hold_for_the_hf_model(case, model):
    spec = arch.spec_for(model)
    assert arch.unsupported_reason(model, 32) is None
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    qkv, o = arch.attention_modules(spec, attn)
    gate_up, down = arch.mlp_modules(spec, mlp)
    cfg = model.config
    d = arch.head_dim(cfg)
    assert sum(m.out_features for m in qkv) == (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d
    assert sum(m.out_features for m in gate_up) == 2 * cfg.intermediate_size
    assert o.in_features == cfg.num_attention_heads * d and down.in_features == cfg.intermediate_size
    biased = {"always": True, "never": False, "config": getattr(cfg, "attention_bias", False)}[spec.attention_bias]
    assert all((m.bias is not None) == biased for m in qkv)
    assert (arch.qk_norm_modules(spec, attn) is not None) == hasattr(attn, "q_norm")  # the table, not hasattr


def test_training_forward_logps_and_gradients_equal_hf(model):
    """Completions of prompts of 1, 3 and 6 tokens scored through the unpadded training forward, against the
    HF forward's log-softmax of each prompt + completion alone."""
    prompts = [[5], [6, 7, 8], [9, 10, 11, 12, 13, 14]]
    completions = [[20, 21, 22, 23], [24, 25], [26, 27, 28, 29, 30]]
    assert unpadded.unsupported_reason(model, 16) is None
    refs = []
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = torch.tensor([prompt + completion])  # [1, S]
        refs.append(token_logps(model(input_ids=ids).logits.float(), ids)[0, len(prompt) - 1:])  # [C]
    torch.stack([r.sum() for r in refs]).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    cache = PromptCache(model, prompts, pad_id=0, unpadded_forward=True)
    logps, _, mask = cache.logps([0, 1, 2], completions)  # [B, T]
    (logps * mask).sum().backward()
    cache.backward_prompts()
    for b, ref in enumerate(refs):
        torch.testing.assert_close(logps[b, :len(ref)], ref, atol=1e-4, rtol=1e-4)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], atol=1e-4, rtol=1e-3, msg=name)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fuse", [True, False], ids=["cpu-copies", "views"])
def test_lean_logits_equal_hf(model, fuse):
    assert lean_unsupported_reason(model, 32) is None
    got = lean_logits(LeanDecoder(model, 4, 32, fuse=fuse), PROMPTS, NEXT)  # [B, S+1, V]
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        torch.testing.assert_close(got[i], reference_logits(model, prompt, steps), atol=2e-5, rtol=1e-4)


def test_lean_greedy_sampling_equals_generate(case, char_tokenizer):
    """Prompts of 12, 3 and 11 tokens, left padded in one lean batch, 10 tokens each (no early EOS on either
    side, so every token is compared), against ``generate`` of each prompt alone. Weights drawn 20x wider
    than HF's default: at std 0.02 a tiny model repeats one token whatever its input, which would compare
    little."""
    eos = char_tokenizer.convert_tokens_to_ids(IM_END)
    model = tiny(case, vocab_size=len(char_tokenizer), eos_token_id=eos, pad_token_id=char_tokenizer.pad_token_id,
                 initializer_range=0.4)
    prompts = [char_tokenizer(t)["input_ids"] for t in ["What is 2+3?", "7*8", "Be brief. Q"]]
    assert len({len(p) for p in prompts}) == len(prompts)
    new = 10
    out = sample(model, char_tokenizer, prompts, SamplingParams(greedy=True, max_new_tokens=new, min_new_tokens=new),
                 show_progress=False, decoder="lean")
    for prompt, (completion,) in zip(prompts, out, strict=True):
        with torch.no_grad():
            ref = model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=new,
                                 min_new_tokens=new, eos_token_id=eos, pad_token_id=char_tokenizer.pad_token_id)
        assert completion.token_ids == ref[0, len(prompt):].tolist()
    assert len({tuple(c.token_ids) for (c,) in out}) == len(prompts)  # the output depends on the input


def test_unsupported_architectures_and_rope_are_named():
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", vocab_size=VOCAB, n_embd=16, n_layer=1,
                                                                 n_head=2))
    reason = arch.unsupported_reason(gpt2, 32)
    assert "'gpt2'" in reason and all(repr(model_type) in reason for model_type in arch.ARCH_SPECS)
    dynamic = tiny("llama", rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=10000.0))
    assert "'dynamic'" in arch.unsupported_reason(dynamic, 32)
    assert "sliding window 64" in arch.unsupported_reason(tiny("mistral"), 65)
