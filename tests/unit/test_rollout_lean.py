"""Tests for the lean decoder's own features on tiny random models, one per case of ``test_arch.CASES``.

The architecture parity (the decoder's logits equal HF's for every row of the architecture table, on both
weight paths) is in ``tests/unit/test_arch.py``; this file reuses its cases and helpers for what the decoder
adds: length-grouped prefill, the unmasked path, row reordering, the static-shape step that CUDA graphs
replay (run eagerly on CPU), bf16, and peft LoRA adapters (folded into the weights on the CPU copy path,
applied as the step runs on the view path): the decoder's logits equal the peft model's.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_arch import CASES, NEXT, PROMPTS, VOCAB, lean_logits, reference_logits, tiny
from transformers import AutoConfig, AutoModelForCausalLM

from thinktune.rollout.cuda_graphs import CudaGraphDecoder
from thinktune.rollout.lean import LeanDecoder, _low_rank, prefill_groups, unsupported_reason


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(case):
    return tiny(case)


@pytest.mark.parametrize("fuse", [True, False], ids=["cpu-copies", "views"])
def test_prefill_in_groups_of_like_length_equals_hf(model, fuse):
    """Rows of 6, 2 and 4 tokens under a cap of 8 tokens a group: {0} and {2, 1} (6 + 2 * 4 padded tokens
    plus two groups' cost of 64, 142, against 204 for three groups; {0, 2} would be 12 tokens, over the
    cap). The second group is computed from row 2's first real column with row 1 padded inside it; the
    logits must not change."""
    assert prefill_groups([len(p) for p in PROMPTS], max_tokens=8) == [[0], [2, 1]]
    got = lean_logits(LeanDecoder(model, 4, 32, fuse=fuse), PROMPTS, NEXT, max_tokens=8)  # [B, S+1, V]
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        torch.testing.assert_close(got[i], reference_logits(model, prompt, steps), atol=2e-5, rtol=1e-4)


def test_prefill_groups_minimise_padded_tokens_plus_a_cost_per_group():
    # Longest first: 100 (row 1), 99 (4), 98 (2), 12 (3), 10 (0). {1, 4, 2} + {3, 0} costs 3*100 + 2*12 + 2*5
    # = 334; one group 5*100 + 5 = 505; each row alone 319 + 25 = 344; {1, 4, 2} {3} {0} 300 + 22 + 15 = 337.
    assert prefill_groups([10, 100, 98, 12, 99], max_tokens=1000, group_cost=5) == [[1, 4, 2], [3, 0]]
    # A high cost per group: one group, as wide as the longest row.
    assert prefill_groups([10, 100, 98, 12, 99], max_tokens=1000, group_cost=1000) == [[1, 4, 2, 3, 0]]
    # The cap: no group over 20 padded tokens, so five rows of 10 need three groups of at most two.
    groups = prefill_groups([10] * 5, max_tokens=20, group_cost=1)
    assert len(groups) == 3 and max(map(len, groups)) == 2 and sorted(sum(groups, [])) == list(range(5))
    # A row longer than the cap is a group of its own, not an error.
    assert prefill_groups([50, 3], max_tokens=20, group_cost=0) == [[0], [1]]


def test_equal_length_prompts_take_the_unmasked_path(model):
    prompts = [p[:2] for p in PROMPTS]
    decoder = LeanDecoder(model, 4, 32, fuse=True)
    got = lean_logits(decoder, prompts, NEXT)
    assert not decoder.padded
    for i, (prompt, steps) in enumerate(zip(prompts, NEXT, strict=True)):
        torch.testing.assert_close(got[i], reference_logits(model, prompt, steps), atol=2e-5, rtol=1e-4)


def test_reorder_keeps_rows_with_their_cache(model):
    decoder = LeanDecoder(model, 4, 32, fuse=True)
    width = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    with torch.inference_mode():
        decoder.prefill(ids, torch.tensor([width - len(p) for p in PROMPTS]))
        decoder.reorder(torch.tensor([2, 1]))  # row 0 finished: row 2 moves into its slot
        logits = decoder.step(torch.tensor([NEXT[2][0], NEXT[1][0]]))  # [2, V]
    torch.testing.assert_close(logits[0], reference_logits(model, PROMPTS[2], NEXT[2][:1])[1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], reference_logits(model, PROMPTS[1], NEXT[1][:1])[1], atol=2e-5, rtol=1e-4)


def test_static_step_for_cuda_graphs_equals_lean(model):
    """The step the graphs capture (bucketed rows and key length, mask, device-side column), run eagerly."""
    static = CudaGraphDecoder(LeanDecoder(model, 4, 40, fuse=False), capture=False)
    static.min_rows, static.min_keys = 2, 8  # small buckets, so these few steps cross several of them
    plain = LeanDecoder(model, 4, 40, fuse=False)
    long_steps = [[(7 * s + i) % (VOCAB - 2) + 2 for s in range(30)] for i in range(3)]
    torch.testing.assert_close(lean_logits(static, PROMPTS, long_steps), lean_logits(plain, PROMPTS, long_steps),
                               atol=2e-5, rtol=1e-4)


def test_unsupported_models_are_named():
    assert "model_type" in unsupported_reason(AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "gpt2", vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2)), 32)
    windowed = tiny("phi3", sliding_window=16)
    assert unsupported_reason(windowed, 16) is None
    assert "sliding window" in unsupported_reason(windowed, 17)


def test_bf16_cpu_copies_use_rotate_half_and_track_hf(case):
    """bf16 has no complex type: the copy path falls back to rotate-half, and agrees with HF's bf16 logits."""
    half = tiny(case).to(torch.bfloat16)
    decoder = LeanDecoder(half, 4, 32, fuse=True)
    assert not decoder.complex_rope
    got = lean_logits(decoder, PROMPTS, NEXT)
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        ref = reference_logits(half, prompt, steps)
        assert (got[i] - ref).abs().max() < 0.1 * ref.abs().max()
        assert (got[i].argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75


def with_lora(case: str, targets: str | list[str] = "all-linear", **lora_kwargs):
    """``tiny(case)`` with LoRA adapters whose B matrices are random (a fresh adapter's B is zero, which
    would leave the logits unchanged and the test blind)."""
    peft_model = get_peft_model(tiny(case), LoraConfig(r=4, lora_alpha=8, target_modules=targets, **lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return peft_model.eval()


@pytest.mark.parametrize("fuse", [True, False], ids=["cpu-copies", "views"])
def test_lean_folds_lora_adapters(case, fuse):
    peft_model = with_lora(case)
    inner = peft_model.get_base_model()  # what the rollout engine samples from: LoRA layers in place
    assert unsupported_reason(inner, 32) is None
    got = lean_logits(LeanDecoder(inner, 4, 32, fuse=fuse), PROMPTS, NEXT)
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        torch.testing.assert_close(got[i], reference_logits(peft_model, prompt, steps), atol=2e-5, rtol=1e-4)
    with peft_model.disable_adapter():  # the adapters change the logits, so the equality above means something
        assert not torch.allclose(got[0], reference_logits(peft_model, PROMPTS[0], NEXT[0]), atol=1e-3)


@pytest.mark.parametrize("fuse", [True, False], ids=["cpu-copies", "views"])
def test_lora_on_the_output_head_and_some_projections(fuse):
    peft_model = with_lora("llama", targets=["q_proj", "v_proj", "down_proj", "lm_head"])
    got = lean_logits(LeanDecoder(peft_model.get_base_model(), 4, 32, fuse=fuse), PROMPTS, NEXT)
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        torch.testing.assert_close(got[i], reference_logits(peft_model, prompt, steps), atol=2e-5, rtol=1e-4)


def test_an_adapter_update_is_seen_at_the_next_refresh():
    peft_model = with_lora("qwen2")
    decoder = LeanDecoder(peft_model.get_base_model(), 4, 32, fuse=True)
    before = lean_logits(decoder, PROMPTS, NEXT)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.mul_(-2.0)  # in place, as an optimizer step writes
    decoder.refresh_weights()
    after = lean_logits(decoder, PROMPTS, NEXT)
    assert not torch.allclose(before, after, atol=1e-3)
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        torch.testing.assert_close(after[i], reference_logits(peft_model, prompt, steps), atol=2e-5, rtol=1e-4)


def test_view_path_applies_adapters_as_it_runs_and_sees_in_place_updates():
    """The GPU's view path applies each adapter from views of its parameters, copying nothing: an in-place update
    (what the optimizer does) reaches the next step with no refresh, as it must inside captured CUDA graphs. The
    static step those graphs replay (run eagerly here) gives the same logits."""
    peft_model = with_lora("qwen2")
    inner = peft_model.get_base_model()
    decoder = LeanDecoder(inner, 4, 40, fuse=False)
    lora_params = {id(p) for n, p in peft_model.named_parameters() if "lora_" in n}
    before = lean_logits(decoder, PROMPTS, NEXT)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.mul_(-2.0)
    after = lean_logits(decoder, PROMPTS, NEXT)  # no refresh_weights
    assert not torch.allclose(before, after, atol=1e-3)
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        torch.testing.assert_close(after[i], reference_logits(peft_model, prompt, steps), atol=2e-5, rtol=1e-4)
    static = CudaGraphDecoder(LeanDecoder(inner, 4, 40, fuse=False), capture=False)
    static.min_rows, static.min_keys = 2, 8
    torch.testing.assert_close(lean_logits(static, PROMPTS, NEXT), after, atol=2e-5, rtol=1e-4)
    # the adapters' own tensors, not copies, are what the view path holds
    held = {id(t._base) for layer in decoder.layers for terms in layer.qkv_lora for a, b, _ in terms for t in (a, b)}
    assert held and held <= lora_params


def test_bf16_view_path_casts_to_the_adapters_float32_as_peft_does():
    """peft keeps adapters in float32 under a bf16 base and runs them on float32 input; so does the view path."""
    base = tiny("llama").to(torch.bfloat16)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.eval()
    assert {p.dtype for n, p in peft_model.named_parameters() if "lora_" in n} == {torch.float32}
    got = lean_logits(LeanDecoder(peft_model.get_base_model(), 4, 32, fuse=False), PROMPTS, NEXT)
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        ref = reference_logits(peft_model, prompt, steps)
        with peft_model.disable_adapter():
            off = reference_logits(peft_model, prompt, steps)
        assert (got[i] - ref).abs().max() < 0.2 * (got[i] - off).abs().max()  # nearer peft with adapters than without


@pytest.mark.parametrize("fuse", [True, False], ids=["cpu-copies", "views"])
def test_merged_or_disabled_adapters_are_seen_at_the_next_refresh(fuse):
    """peft merges an adapter by writing the base through .data (no _version bump) and disables one with a flag:
    the decoder watches both, or it would apply a merged adapter a second time, or a disabled one."""
    peft_model = with_lora("qwen2")
    decoder = LeanDecoder(peft_model.get_base_model(), 4, 32, fuse=fuse)
    lean_logits(decoder, PROMPTS, NEXT)
    peft_model.merge_adapter()
    decoder.refresh_weights()
    merged = lean_logits(decoder, PROMPTS, NEXT)
    peft_model.unmerge_adapter()
    with peft_model.disable_adapter():
        decoder.refresh_weights()
        disabled = lean_logits(decoder, PROMPTS, NEXT)
        base = [reference_logits(peft_model, prompt, steps) for prompt, steps in zip(PROMPTS, NEXT, strict=True)]
    for i, (prompt, steps) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        torch.testing.assert_close(merged[i], reference_logits(peft_model, prompt, steps), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(disabled[i], base[i], atol=2e-5, rtol=1e-4)


def test_graphs_are_dropped_when_the_adapters_ops_change():
    static = CudaGraphDecoder(LeanDecoder(with_lora("qwen2").get_base_model(), 4, 40, fuse=False), capture=False)
    static.graphs[(8, 256)] = "captured"  # stands for a graph captured with the adapters' ops in it
    static.refresh_weights()
    assert static.graphs  # nothing changed: the graphs stay
    static.lean.model.model.layers[0].self_attn.q_proj.enable_adapters(False)  # what peft's disable_adapter does
    static.refresh_weights()
    assert not static.graphs


def test_adapter_terms_run_in_the_adapters_dtype():
    """peft runs a float32 adapter on float32 input under a bf16 base, and casts the result back; so does the view
    path (in bf16 the rounding differs, so equality pins it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, generator=g).bfloat16()
    a, b = torch.randn(8, 2, generator=g), torch.randn(2, 5, generator=g)
    out = torch.randn(3, 5, generator=g).bfloat16()
    got = _low_rank(out, x, [(a, b, 0.5)])
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, out + ((x.float() @ a @ b) * 0.5).bfloat16())


def test_lora_variants_are_refused():
    dora = with_lora("llama", use_dora=True).get_base_model()
    assert "LoRA variant" in unsupported_reason(dora, 32)
