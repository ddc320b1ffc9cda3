"""PromptCache: completion log-probs and their gradients equal those of forwarding each sequence alone."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from reference import entropy_from_logits
from thinktune.data.chat import IGNORE_INDEX
from thinktune.modeling import hf_compat
from thinktune.modeling.models import build_tiny_model
from thinktune.train import logprobs
from thinktune.train.logprobs import PromptCache, length_sorted_chunks, next_token_logps
from thinktune.train.losses import (
    CHUNK_BYTES,
    chunked_score,
    score_tokens,
    sequence_logps,
    sft_nll_sum,
    token_logps,
)

SHAPE = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
             max_position_embeddings=128)


def _case(vocab: int, seed: int = 0):
    """Prompts of very different lengths (1 and 2 tokens among them) and 3 completions of each."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (1, 2, 9, 17)]
    index = [p for p in range(len(prompts)) for _ in range(3)]
    completions = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 12))] for _ in index]
    return prompts, index, completions


def _alone(model, prompts, index, completions, temperature):
    """The reference: each prompt + completion forwarded as its own unpadded row."""
    logps, entropies = [], []
    for p, c in zip(index, completions, strict=True):
        ids = torch.tensor([prompts[p] + c])  # [1, S]
        logits = model(input_ids=ids).logits.float() / temperature  # [1, S, V]
        start = len(prompts[p]) - 1  # the position whose logits predict completion token 0
        logps.append(token_logps(logits, ids)[0, start:])
        entropies.append(entropy_from_logits(logits[:, start:-1])[0])
    return logps, entropies


@pytest.mark.parametrize("arch", ["phi3", "qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("layout", ["unpadded", "hf_cache", "full"])
@pytest.mark.parametrize("chunk_rows", [None, 3])  # None: every micro-batch in one chunk; 3: many chunks
def test_logps_entropy_and_gradients_match_forwarding_each_sequence_alone(char_tokenizer, arch, layout, chunk_rows):
    model = build_tiny_model(arch, char_tokenizer, **SHAPE).float()
    prompts, index, completions = _case(len(char_tokenizer))
    temperature = 0.7

    ref_logps, ref_entropy = _alone(model, prompts, index, completions, temperature)
    torch.stack([lp.sum() for lp in ref_logps]).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    chunk_bytes = CHUNK_BYTES if chunk_rows is None else chunk_rows * 4 * len(char_tokenizer)
    cache = PromptCache(model, prompts, char_tokenizer.pad_token_id, share_prompt=layout != "full",
                        unpadded_forward=layout == "unpadded", chunk_bytes=chunk_bytes)
    got_logps, got_entropy = {}, {}
    for chunk in length_sorted_chunks([len(c) for c in completions], 5):  # 12 completions: 5 + 5 + 2
        logps, entropy, mask = cache.logps([index[i] for i in chunk], [completions[i] for i in chunk],
                                           temperature, need_entropy="grad")
        assert mask.sum(-1).tolist() == [len(completions[i]) for i in chunk]
        assert (logps[mask == 0] == 0).all()
        (logps * mask).sum().backward()
        for b, i in enumerate(chunk):
            got_logps[i], got_entropy[i] = logps[b, :len(completions[i])], entropy[b, :len(completions[i])]
    cache.backward_prompts()

    for i in range(len(completions)):
        torch.testing.assert_close(got_logps[i], ref_logps[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_entropy[i], ref_entropy[i], atol=1e-5, rtol=1e-5)
    assert got_entropy[0].requires_grad
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["phi3", "qwen2", "qwen3"])
def test_micro_batches_of_equally_long_prompts_run_without_a_mask_and_match(char_tokenizer, arch):
    """A micro-batch whose prompts are equally long (the Phi-4 configs' single sequences, or one prompt's
    samples) runs the unpadded forward with no attention mask (square causal attention over prompt +
    completion), with the same log-probs, entropies and gradients; prompts of 1 token (no cached columns at
    all), 2, 9 and 17 tokens, in a cache padded to 16 columns."""
    model = build_tiny_model(arch, char_tokenizer, **SHAPE).float()
    prompts, index, completions = _case(len(char_tokenizer), seed=3)
    ref_logps, ref_entropy = _alone(model, prompts, index, completions, 0.7)
    torch.stack([lp.sum() for lp in ref_logps]).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    cache = PromptCache(model, prompts, char_tokenizer.pad_token_id)
    masks = []
    inner = cache.unpadded_fn
    cache.unpadded_fn = lambda *args: masks.append(args[-1]) or inner(*args)
    for p in range(len(prompts)):
        chunk = [i for i in range(len(index)) if index[i] == p]  # one prompt's 3 completions
        logps, entropy, mask = cache.logps([p] * len(chunk), [completions[i] for i in chunk], 0.7, "grad")
        (logps * mask).sum().backward()
        for b, i in enumerate(chunk):
            n = len(completions[i])
            torch.testing.assert_close(logps[b, :n], ref_logps[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(entropy[b, :n], ref_entropy[i], atol=1e-5, rtol=1e-5)
    cache.backward_prompts()
    assert masks == [None] * len(prompts)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("scoring_head", [True, False])
def test_whole_sequence_forward_keeps_only_the_completions_columns(char_tokenizer, monkeypatch, scoring_head):
    """Without a prompt cache (FSDP, gradient checkpointing) each sequence is forwarded whole, from the first
    predicting column on only (``logits_to_keep``), one sequence per micro-batch as in the Phi-4 configs. With
    a plain head (this architecture) a stand-in head scores inside the forward, in 2-token chunks here, so no
    [B, W, V] logits exist; otherwise the logits are scored. Log-probs, entropies and gradients are unchanged,
    and the model has its own head back afterwards."""
    if not scoring_head:
        monkeypatch.setattr(logprobs, "_plain_head", lambda model: False)
    model = build_tiny_model("qwen2", char_tokenizer, **SHAPE).float()
    head = model.lm_head
    prompts, index, completions = _case(len(char_tokenizer), seed=4)
    ref_logps, ref_entropy = _alone(model, prompts, index, completions, 0.7)
    torch.stack([lp.sum() for lp in ref_logps]).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    kept = []
    forward = model.forward
    model.forward = lambda *args, **kw: kept.append(kw.get("logits_to_keep")) or forward(*args, **kw)
    cache = PromptCache(model, prompts, char_tokenizer.pad_token_id, share_prompt=False,
                        chunk_bytes=2 * 4 * len(char_tokenizer))
    for i in range(len(completions)):
        logps, entropy, mask = cache.logps([index[i]], [completions[i]], 0.7, "grad")
        (logps * mask).sum().backward()
        torch.testing.assert_close(logps[0], ref_logps[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy[0], ref_entropy[i], atol=1e-5, rtol=1e-5)
    assert kept == [len(c) + 1 for c in completions]  # the prompt's last column, then every completion token
    assert model.lm_head is head
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("scoring_head", [True, False])
def test_next_token_logps_give_the_sft_and_dpo_losses_of_the_logits(char_tokenizer, monkeypatch, scoring_head):
    """SFT's summed NLL and DPO's sequence log-probs from ``next_token_logps`` (stand-in head, or the logits where
    the head is not plain; 3-token chunks) equal ``sft_nll_sum`` and ``sequence_logps`` of the model's logits,
    gradients included, on a right-padded batch whose labels skip a prompt and the padding."""
    if not scoring_head:
        monkeypatch.setattr(logprobs, "_plain_head", lambda model: False)
    model = build_tiny_model("phi3", char_tokenizer, **SHAPE).float()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(char_tokenizer), (3, 10), generator=g)  # [B, T]
    attention = torch.ones_like(ids)
    attention[1, 7:] = 0  # row 1: 7 real tokens, then padding
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX  # a 4-token prompt
    labels[attention == 0] = IGNORE_INDEX
    inputs = {"input_ids": ids, "attention_mask": attention}

    logits = model(**inputs).logits
    ref_nll, ref_count = sft_nll_sum(logits, labels)
    ref_seq = sequence_logps(logits, ids, (labels != IGNORE_INDEX).long())
    ref_grads = torch.autograd.grad(ref_nll + ref_seq.sum(), list(model.parameters()))

    logps = next_token_logps(model, inputs, labels, chunk_bytes=3 * 4 * len(char_tokenizer))  # [B, T]
    torch.testing.assert_close(-logps.sum(), ref_nll)
    assert int((labels[:, 1:] != IGNORE_INDEX).sum()) == ref_count
    torch.testing.assert_close(logps.sum(-1), ref_seq)
    grads = torch.autograd.grad(-logps.sum() + logps.sum(-1).sum(), list(model.parameters()))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)


@pytest.mark.parametrize("arch", sorted(logprobs.PLAIN_HEAD_ARCHS - {"llama", "qwen2", "phi3"}) + ["granite"])
def test_each_plain_head_architecture_scores_its_own_logits_through_the_stand_in_head(arch):
    """An architecture listed as plain-headed gives, through the stand-in head, the log-probs and gradients of
    its own logits; Granite, which scales its logits after the head, is not listed and takes the logits path."""
    config = AutoConfig.for_model(arch, vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, logits_scaling=4.0,
                                  **(MOE if arch.endswith("moe") else {}))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float()
    assert logprobs._plain_head(model) == (arch != "granite")
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(1))  # [B, T]
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    ref = sequence_logps(model(input_ids=ids).logits, ids, (labels != IGNORE_INDEX).long())  # [B]
    ref_grads = torch.autograd.grad(ref.sum(), list(model.parameters()), allow_unused=True)
    got = next_token_logps(model, {"input_ids": ids}, labels, chunk_bytes=3 * 4 * 40).sum(-1)  # [B]
    torch.testing.assert_close(got, ref)
    grads = torch.autograd.grad(got.sum(), list(model.parameters()), allow_unused=True)
    for g, want in zip(grads, ref_grads, strict=True):
        assert (g is None) == (want is None)
        if g is not None:
            torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_a_moe_model_returning_router_logits_scores_like_forwarding_each_sequence_alone(char_tokenizer, share_prompt):
    """Qwen3-MoE configured to return its router logits: with a cached prompt transformers' load-balancing loss
    would fail (its mask spans the prompt, the router logits only the completion); thinktune turns them off."""
    config = AutoConfig.for_model("qwen3_moe", vocab_size=len(char_tokenizer), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                  max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                  output_router_logits=True, **MOE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float()
    prompts, index, completions = _case(len(char_tokenizer))
    ref_logps, _ = _alone(model, prompts, index, completions, 1.0)
    cache = PromptCache(model, prompts, char_tokenizer.pad_token_id, share_prompt=share_prompt, unpadded_forward=False)
    logps, _, mask = cache.logps(index, completions)
    for b, ref in enumerate(ref_logps):
        torch.testing.assert_close(logps[b, :len(completions[b])], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scoring_head", [True, False])
def test_training_forwards_build_no_kv_cache(char_tokenizer, monkeypatch, scoring_head):
    # A cache costs every layer's keys and values, and under block-wise torch.compile each block recompiled on it.
    if not scoring_head:
        monkeypatch.setattr(logprobs, "_plain_head", lambda model: False)
    model = build_tiny_model("qwen2", char_tokenizer, **SHAPE).float()
    assert model.config.use_cache  # what HF would do unasked
    caches = []
    model.register_forward_hook(lambda module, args, out: caches.append(hf_compat.output_cache(out)))
    ids = torch.randint(3, len(char_tokenizer), (2, 8), generator=torch.Generator().manual_seed(0))
    next_token_logps(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids).sum().backward()
    assert caches == [None]


@pytest.mark.parametrize("unpadded_forward", [True, False])
def test_cached_forwards_never_compile_the_blocks_per_layer(char_tokenizer, unpadded_forward):
    # model.compile compiles each decoder block; on a KV cache each block guarded on its own layer's cache entry
    # and compiled once per layer. The prompts' forward (and the HF completions' forward) now runs them eager.
    from torch._dynamo.utils import counters

    model = build_tiny_model("qwen2", char_tokenizer, **SHAPE).float()
    for block in model.model.layers:
        block.compile()
    prompts, index, completions = _case(len(char_tokenizer))
    torch._dynamo.reset()
    counters.clear()
    cache = PromptCache(model, prompts, char_tokenizer.pad_token_id, unpadded_forward=unpadded_forward)
    logps, _, mask = cache.logps(index[:5], completions[:5], 0.7)
    (logps * mask).sum().backward()
    cache.backward_prompts()
    assert counters["frames"]["total"] == 0
    block = model.model.layers[0]
    block(torch.randn(1, 3, SHAPE["hidden_size"]), position_embeddings=model.model.rotary_emb(
        torch.zeros(1), torch.arange(3)[None]))  # outside them the blocks still compile
    assert counters["frames"]["total"] > 0


def test_a_lora_reference_view_scores_through_the_stand_in_head(char_tokenizer, monkeypatch):
    """DPO's and GRPO's reference for a LoRA policy (the policy with its adapters disabled) scores through the
    stand-in head of the model under the adapters, with the values its logits give; the adapters matter."""
    from peft import LoraConfig, get_peft_model

    from thinktune.modeling.lora import ReferenceView

    policy = get_peft_model(build_tiny_model("qwen2", char_tokenizer, **SHAPE).float(),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    reference = ReferenceView(policy)
    ids = torch.randint(3, len(char_tokenizer), (2, 8), generator=torch.Generator().manual_seed(0))
    inputs, labels = {"input_ids": ids}, ids.clone()
    labels[:, :3] = IGNORE_INDEX

    scored = []
    head_forward = logprobs._ScoringHead.forward
    monkeypatch.setattr(logprobs._ScoringHead, "forward", lambda self, h: scored.append(1) or head_forward(self, h))
    got = next_token_logps(reference, inputs, labels)
    assert scored and type(policy.get_base_model().lm_head) is torch.nn.Linear  # used, then given back
    monkeypatch.setattr(logprobs, "_plain_head", lambda model: False)
    torch.testing.assert_close(got, next_token_logps(reference, inputs, labels))  # through the logits
    assert not torch.allclose(got, next_token_logps(policy, inputs, labels).detach(), atol=1e-4)


def test_without_backward_prompts_the_prompt_part_of_the_gradient_is_missing(char_tokenizer):
    """The prompt forward's share of the gradient arrives only through backward_prompts: a check that the
    test above cannot pass with the prompt gradient silently dropped."""
    model = build_tiny_model("qwen2", char_tokenizer, **SHAPE).float()
    prompts, index, completions = _case(len(char_tokenizer))
    ref_logps, _ = _alone(model, prompts, index, completions, 1.0)
    torch.stack([lp.sum() for lp in ref_logps]).sum().backward()
    ref = model.model.layers[0].self_attn.k_proj.weight.grad.clone()
    model.zero_grad()
    cache = PromptCache(model, prompts, char_tokenizer.pad_token_id)
    logps, _, mask = cache.logps(index, completions)
    (logps * mask).sum().backward()
    partial = model.model.layers[0].self_attn.k_proj.weight.grad.clone()
    assert not torch.allclose(partial, ref, atol=1e-4)
    cache.backward_prompts()
    torch.testing.assert_close(model.model.layers[0].self_attn.k_proj.weight.grad, ref, atol=1e-5, rtol=1e-4)


def test_no_grad_cache_scores_without_building_a_graph(char_tokenizer):
    model = build_tiny_model("phi3", char_tokenizer, **SHAPE).float()
    prompts, index, completions = _case(len(char_tokenizer), seed=1)
    with torch.no_grad():
        logps, entropy, _ = PromptCache(model, prompts, char_tokenizer.pad_token_id).logps(index, completions)
    assert entropy is None and not logps.requires_grad
    logps_grad, entropy, _ = PromptCache(model, prompts, char_tokenizer.pad_token_id).logps(
        index, completions, need_entropy=True)
    assert logps_grad.requires_grad and not entropy.requires_grad  # logged, not differentiated
    ref, _ = _alone(model, prompts, index, completions, 1.0)
    for b, lp in enumerate(ref):
        torch.testing.assert_close(logps[b, :len(lp)], lp.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_head", [True, False])
@pytest.mark.parametrize("need_entropy", [False, True, "grad"])
def test_chunked_score_equals_scoring_all_rows_at_once(with_head, need_entropy):
    """Values, entropies and gradients (of the rows and of the head's weight and bias) match ``score_tokens`` on
    the whole [N, V] logits, with N = 11 rows in chunks of 4, 4 and 3."""
    torch.manual_seed(0)
    n, hidden, vocab, temperature = 11, 6, 9, 0.7
    head = torch.nn.Linear(hidden, vocab) if with_head else None
    x = torch.randn(n, hidden if with_head else vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))

    def loss_and_grads(fn):
        logps, entropy = fn()
        loss = logps.sum() + (entropy.sum() if need_entropy == "grad" else 0)
        params = [x] + (list(head.parameters()) if head else [])
        return logps, entropy, torch.autograd.grad(loss, params)

    ref = loss_and_grads(lambda: score_tokens(head(x) if head else x, targets, temperature, need_entropy))
    got = loss_and_grads(lambda: chunked_score(x, targets, temperature, need_entropy, head, chunk_bytes=4 * 4 * vocab))
    torch.testing.assert_close(got[0], ref[0])
    if need_entropy:
        torch.testing.assert_close(got[1], ref[1])
        assert got[1].requires_grad == (need_entropy == "grad")
    else:
        assert got[1] is None
    for g, r in zip(got[2], ref[2], strict=True):
        torch.testing.assert_close(g, r)


def test_chunked_score_keeps_no_full_vocabulary_tensor_for_backward():
    """The memory claim itself: everything autograd saves while scoring N rows in chunks of 4 is at most a
    chunk's [4, V] (the rows alone, under checkpointing), where scoring at once saves [N, V] tensors."""
    torch.manual_seed(0)
    n, hidden, vocab = 64, 8, 50
    head = torch.nn.Linear(hidden, vocab, bias=False)
    x = torch.randn(n, hidden, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))

    def largest_saved(**kw) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            chunked_score(x, targets, 1.0, "grad", head, **kw)[0].sum().backward()
        return max(sizes)

    assert largest_saved(chunk_bytes=4 * 4 * vocab) <= 4 * vocab
    assert largest_saved() >= n * vocab  # one chunk: the plain path, which saves the whole log-softmax


def test_length_sorted_chunks_cover_every_index_once_longest_first():
    lengths = [3, 9, 1, 7, 7, 2, 5]
    chunks = length_sorted_chunks(lengths, 3)
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert sorted(i for c in chunks for i in c) == list(range(7))
    flat = [lengths[i] for c in chunks for i in c]
    assert flat == sorted(lengths, reverse=True)


def test_empty_prompt_or_completion_is_an_error(char_tokenizer):
    model = build_tiny_model("phi3", char_tokenizer, **SHAPE).float()
    with pytest.raises(ValueError, match="at least one token"):
        PromptCache(model, [[5], []], 0)
    with pytest.raises(ValueError, match="empty completion"):
        PromptCache(model, [[5, 6]], 0).logps([0], [[]])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_compiled_unpadded_forward_matches_eager(char_tokenizer, arch):
    """model.compile runs the unpadded forward under torch.compile (dynamic shapes): the same log-probs as
    eager, for a second batch of another shape too, and for one prompt's samples (no mask)."""
    model = build_tiny_model(arch, char_tokenizer, **SHAPE).float()
    prompts, index, completions = _case(len(char_tokenizer), seed=2)
    one_prompt = [i for i in range(12) if index[i] == 2]
    for chunk in (list(range(12)), list(range(5)), one_prompt):  # the second reuses the dynamic graph
        args = ([index[i] for i in chunk], [completions[i] for i in chunk], 0.7)
        eager = PromptCache(model, prompts, char_tokenizer.pad_token_id).logps(*args)[0]
        compiled = PromptCache(model, prompts, char_tokenizer.pad_token_id, compile=True).logps(*args)[0]
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
