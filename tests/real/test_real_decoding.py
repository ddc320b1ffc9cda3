"""thinktune's lean decoder on real weights against Hugging Face's own forward pass and ``generate``.

SmolLM2 is a Llama, so ``RolloutEngine``'s default ``auto`` decoder takes the lean path (its own static KV
cache, fused q/k/v, folded norms, left-padded batches). Its numbers must be the HF model's: sampled tokens'
log-probs equal a teacher-forced forward pass, and greedy decoding is token for token ``generate``.
"""

from __future__ import annotations

import pytest
import torch

from thinktune.data.chat import render_prompt
from thinktune.rollout.sampler import RolloutEngine, SamplingParams

pytestmark = pytest.mark.real

# Three prompts of different lengths (after the chat markup: about 37, 42 and 46 tokens), batched together
# so that the shorter ones are left padded.
QUESTIONS = ["816+948", "What is the capital of France? Answer in one word.",
             "Write a haiku about the sea, then explain each line of it briefly."]

# fp32 tolerance on per-token log-probs. The lean decoder computes the same function as HF in a different
# order (one fused q/k/v matmul, RMSNorm gains folded into the next weight, its own attention over a padded
# static cache), so the two differ by rounding only: fp32 keeps ~7 digits, and 30 layers of 576-wide sums
# over activations of magnitude ~10 leave about 1e-5 absolute on logits of magnitude ~30 (2e-5 measured on
# this model). 1e-4 leaves 5x headroom for other CPUs' kernels, yet a real error (a position off by one,
# a pad key attended to, a stale cache row) moves log-probs by 1e-2 or more; the test checks that a
# completion placed one position late (a pad column counted as a position) does fail it.
LOGP_ATOL = 1e-4


def prompts_for(tok) -> list[list[int]]:
    return [render_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]


def teacher_forced(model, prompt: list[int], tokens: list[int], gap: int = 0) -> torch.Tensor:
    """log_softmax of one unpadded HF forward at each sampled token: [len(tokens)]. ``gap`` leaves that many
    positions between prompt and completion (a deliberately wrong reference, to show the tolerance can fail;
    a uniform shift would not, since rotary attention sees only relative positions)."""
    ids = torch.tensor([prompt + tokens])  # [1, T]
    positions = torch.arange(ids.shape[1])[None]  # [1, T]
    positions[:, len(prompt):] += gap
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=positions).logits[0, len(prompt) - 1:-1]  # [n, V]
    return torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


def test_sampled_logprobs_equal_a_teacher_forced_hf_forward(smollm2):
    tok, model, _ = smollm2
    prompts = prompts_for(tok)
    engine = RolloutEngine(model, tok)
    out = engine.sample(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=24), seed=0,
                        show_progress=False)
    assert engine.stats["decoder"] == "LeanDecoder"  # the path under test, not the HF fallback
    worst = 0.0
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            assert len(c.logprobs) == len(c.token_ids) >= 1
            got = torch.tensor(c.logprobs)
            worst = max(worst, (got - teacher_forced(model, prompt, c.token_ids)).abs().max().item())
    assert worst <= LOGP_ATOL, worst
    # Against a completion placed one position late, the log-probs are far outside the tolerance.
    c = out[2][0]
    late = (torch.tensor(c.logprobs) - teacher_forced(model, prompts[2], c.token_ids, gap=1)).abs().max().item()
    assert late > 10 * LOGP_ATOL, late


def test_greedy_batch_is_token_identical_to_generate(smollm2):
    tok, model, _ = smollm2
    prompts = prompts_for(tok)
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths, so padding is exercised
    engine = RolloutEngine(model, tok)
    ours = engine.sample(prompts, SamplingParams(greedy=True, max_new_tokens=20), show_progress=False)
    assert engine.stats["decoder"] == "LeanDecoder"
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    for prompt, (c,) in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt])  # [1, T]
        with torch.no_grad():
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=20)[0, len(prompt):].tolist()
        assert c.token_ids == ref, (tok.decode(c.token_ids), tok.decode(ref))
        assert c.finished == (ref[-1] == eos)
    # The batch holds a reply that stops at <|im_end|> and one cut at the budget, so both endings are compared.
    assert {c.finish_reason for (c,) in ours} == {"eos", "length"}
