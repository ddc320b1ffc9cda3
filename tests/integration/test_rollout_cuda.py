"""The CUDA decode path: lean decoder + CUDA graphs, in bf16 and fp32, against the eager paths and HF.

Skipped without CUDA. The same static-shape step runs eagerly on CPU in tests/unit/test_rollout_lean.py,
so what only this file checks is the capture itself: graphs replay the right values as tokens, columns,
buckets and live rows change, and bf16 log-probs stay close to a teacher-forced pass.
"""

from __future__ import annotations

import pytest
import torch

from thinktune.modeling.models import build_tiny_model
from thinktune.rollout.sampler import RolloutEngine, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
             max_position_embeddings=1024)


def model_on_cuda(tokenizer, dtype):
    return build_tiny_model("qwen2", tokenizer, **SMALL).to("cuda", dtype).eval()


def prompts_of(tokenizer):
    return [tokenizer(t)["input_ids"] for t in ["What is 2+3?", "7*8", "Be brief. Q", "1+1"]]


def teacher_forced(model, prompt, tokens):
    ids = torch.tensor([prompt + tokens], device="cuda")
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
    return logps.gather(1, torch.tensor(tokens, device="cuda")[:, None]).squeeze(1).cpu()


def test_graphs_match_eager_in_fp32(char_tokenizer):
    model = model_on_cuda(char_tokenizer, torch.float32)
    prompts = prompts_of(char_tokenizer)
    params = SamplingParams(n=5, temperature=2.0, max_new_tokens=300)  # rows finish at different steps
    graphs = RolloutEngine(model, char_tokenizer)
    assert graphs.cuda_graphs
    a = graphs.sample(prompts, params, seed=1, batch_size=16, show_progress=False)
    assert graphs.stats["decoder"] == "CudaGraphDecoder"
    b = RolloutEngine(model, char_tokenizer, cuda_graphs=False).sample(prompts, params, seed=1, batch_size=16,
                                                                      show_progress=False)
    for ga, gb, prompt in zip(a, b, prompts, strict=True):
        for x, y in zip(ga, gb, strict=True):
            assert x.token_ids == y.token_ids
            torch.testing.assert_close(torch.tensor(x.logprobs), teacher_forced(model, prompt, x.token_ids),
                                       atol=2e-4, rtol=1e-4)
    again = graphs.sample(prompts, params, seed=1, batch_size=16, show_progress=False)  # graphs reused
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in a]


def test_bf16_logprobs_track_teacher_forcing(char_tokenizer):
    model = model_on_cuda(char_tokenizer, torch.bfloat16)
    prompts = prompts_of(char_tokenizer)
    out = RolloutEngine(model, char_tokenizer).sample(
        prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=64), seed=0, show_progress=False)
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            ref = teacher_forced(model, prompt, c.token_ids)
            assert (torch.tensor(c.logprobs) - ref).abs().mean() < 0.05  # bf16 rounding, not a wrong token


def test_weight_updates_reach_the_graphs(char_tokenizer):
    model = model_on_cuda(char_tokenizer, torch.float32)
    prompts = prompts_of(char_tokenizer)
    engine = RolloutEngine(model, char_tokenizer)
    params = SamplingParams(greedy=True, max_new_tokens=16)
    engine.sample(prompts, params, show_progress=False)  # captures the graphs
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # in place, like an optimizer step
    after = engine.sample(prompts, params, show_progress=False)
    fresh = RolloutEngine(model, char_tokenizer, cuda_graphs=False).sample(prompts, params, show_progress=False)
    assert [[c.token_ids for c in g] for g in after] == [[c.token_ids for c in g] for g in fresh]


def test_a_lora_policy_samples_through_the_graphs_and_sees_adapter_updates(char_tokenizer):
    """LoRA on the GPU: the graphs apply each adapter from views of its weights (no folded copy), so the log-probs
    are the peft model's, and an in-place adapter update reaches the captured graphs."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model_on_cuda(char_tokenizer, torch.float32),
                                LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).eval()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.2)  # a fresh adapter's B is zero, which would leave the test blind
    prompts = prompts_of(char_tokenizer)
    engine = RolloutEngine(peft_model.get_base_model(), char_tokenizer)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=48)
    out = engine.sample(prompts, params, seed=0, show_progress=False)
    assert engine.stats["decoder"] == "CudaGraphDecoder"
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            torch.testing.assert_close(torch.tensor(c.logprobs), teacher_forced(peft_model, prompt, c.token_ids),
                                       atol=2e-4, rtol=1e-4)
    greedy = SamplingParams(greedy=True, max_new_tokens=16)
    before = engine.sample(prompts, greedy, show_progress=False)  # captures the graphs these 4 rows replay
    captured = set(engine._decoder.graphs)
    with torch.no_grad():
        for p in lora_b:
            p.mul_(-1.0)  # in place, like an optimizer step
    after = engine.sample(prompts, greedy, show_progress=False)
    assert set(engine._decoder.graphs) == captured  # replayed, not captured again
    fresh = RolloutEngine(peft_model.get_base_model(), char_tokenizer, cuda_graphs=False).sample(
        prompts, greedy, show_progress=False)
    tokens = [[c.token_ids for c in g] for g in after]
    assert tokens == [[c.token_ids for c in g] for g in fresh]
    assert tokens != [[c.token_ids for c in g] for g in before]  # the update changed what the graphs compute
